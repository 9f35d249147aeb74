<?php
/**
 * WordPress core and BuddyBoss hooks: user_register → member.created, profile_update (email or display name) →
 * member.updated, delete_user (snapshot taken before the row goes) → member.deleted, BuddyBoss suspend/unsuspend →
 * member.suspended (moderation) / member.reactivated. Handlers only write the outbox.
 */

defined('ABSPATH') || exit;

add_action('user_register', static function (int $user_id): void {
    wirebot_enqueue($user_id, 'member.created', ['source' => 'wordpress', 'event' => 'user_register']);
}, 20);

add_action('profile_update', static function (int $user_id, $old_user = null): void {
    $user = get_userdata($user_id);
    if (!$user || !$old_user instanceof WP_User) {
        return;
    }
    if ($user->user_email !== $old_user->user_email || $user->display_name !== $old_user->display_name) {
        wirebot_enqueue($user_id, 'member.updated', ['source' => 'wordpress', 'event' => 'profile_update']);
    }
}, 20, 2);

// delete_user fires before the row is removed: the snapshot still has the email and display name.
add_action('delete_user', static function (int $user_id): void {
    $snapshot = get_userdata($user_id) ?: null;
    wirebot_enqueue(
        $user_id,
        'member.deleted',
        ['source' => 'wordpress', 'event' => 'delete_user'],
        ['status' => 'deleted', 'tier' => 'none'],
        $snapshot
    );
}, 20);

add_action('bp_suspend_user_suspended', static function ($user_id): void {
    $user_id = (int) $user_id;
    update_user_meta($user_id, 'wirebot_moderated', 1);
    wirebot_enqueue($user_id, null, ['source' => 'buddyboss', 'event' => 'suspended', 'reason' => 'moderation']);
}, 20);

add_action('bp_suspend_user_unsuspended', static function ($user_id): void {
    $user_id = (int) $user_id;
    delete_user_meta($user_id, 'wirebot_moderated');
    wirebot_enqueue($user_id, null, ['source' => 'buddyboss', 'event' => 'unsuspended']);
}, 20);
