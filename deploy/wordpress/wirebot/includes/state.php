<?php
/**
 * Desired state per user (contract §3, §7): status active|suspended|deleted, tier = the highest over the user's
 * active memberships through the admin map (membership_id → shared|dedicated), else the default tier. Enqueues an
 * event only when the state (or, for member.updated, the email/display name) changed, with the per-user seq bumped
 * atomically (compare-and-swap on {prefix}wirebot_members, safe on MySQL and SQLite).
 */

defined('ABSPATH') || exit;

const WIREBOT_TIER_RANK = ['none' => 0, 'shared' => 1, 'dedicated' => 2];

/** The site as the supervisor knows it (its secrets file names the same URL). */
function wirebot_site_url(): string
{
    return untrailingslashit((string) get_option('wirebot_site_url', home_url()));
}

/** @return array<int,string> membership_id → shared|dedicated */
function wirebot_tier_map(): array
{
    $map = get_option('wirebot_tier_map', []);
    return is_array($map) ? $map : [];
}

/**
 * Ids of the user's active memberships: MemberPress when present, adjustable with the `wirebot_active_memberships` filter.
 * @return list<int>
 */
function wirebot_active_memberships(int $user_id): array
{
    $ids = [];
    if (class_exists('MeprUser')) {
        $user = new MeprUser($user_id);
        $ids = array_map('intval', (array) $user->active_product_subscriptions('ids'));
    }
    return array_values(array_map('intval', (array) apply_filters('wirebot_active_memberships', $ids, $user_id)));
}

/** The highest tier over the user's active memberships, or the default tier when none is mapped. */
function wirebot_user_tier(int $user_id): string
{
    $map = wirebot_tier_map();
    $best = null;
    foreach (wirebot_active_memberships($user_id) as $membership_id) {
        $tier = $map[$membership_id] ?? null;
        if ($tier !== null && ($best === null || WIREBOT_TIER_RANK[$tier] > WIREBOT_TIER_RANK[$best])) {
            $best = $tier;
        }
    }
    $default = (string) get_option('wirebot_default_tier', 'none');
    return $best ?? (isset(WIREBOT_TIER_RANK[$default]) ? $default : 'none');
}

/** True when the user holds at least one mapped, active membership. */
function wirebot_has_mapped_membership(int $user_id): bool
{
    $map = wirebot_tier_map();
    foreach (wirebot_active_memberships($user_id) as $membership_id) {
        if (isset($map[$membership_id])) {
            return true;
        }
    }
    return false;
}

/** @return array{status:string,tier:string} */
function wirebot_user_state(int $user_id): array
{
    $suspended = get_user_meta($user_id, 'wirebot_moderated', true) || get_user_meta($user_id, 'wirebot_expired', true);
    return ['status' => $suspended ? 'suspended' : 'active', 'tier' => wirebot_user_tier($user_id)];
}

/** @return array<string,mixed> the `user` object of the body. */
function wirebot_user_object(int $user_id, ?WP_User $user = null): array
{
    $user ??= get_userdata($user_id) ?: null;
    $object = ['wp_user_id' => $user_id];
    $ring_leader = apply_filters('wirebot_ring_leader_id', get_user_meta($user_id, 'ring_leader_id', true) ?: null, $user_id);
    if (is_string($ring_leader) && $ring_leader !== '') {
        $object['ring_leader_id'] = $ring_leader;
    }
    if ($user) {
        if ($user->user_email !== '') {
            $object['email'] = $user->user_email;
        }
        if ($user->display_name !== '') {
            $object['display_name'] = $user->display_name;
        }
    }
    return $object;
}

/** @return array{seq:int,status:string,tier:string,attrs_hash:string}|null what was last enqueued for the user. */
function wirebot_last_sent(int $user_id): ?array
{
    global $wpdb;
    $table = wirebot_members_table();
    $row = $wpdb->get_row($wpdb->prepare("SELECT seq, status, tier, attrs_hash FROM $table WHERE wp_user_id = %d", $user_id), ARRAY_A);
    return $row ? ['seq' => (int) $row['seq'], 'status' => $row['status'], 'tier' => $row['tier'], 'attrs_hash' => $row['attrs_hash']] : null;
}

/**
 * Takes the next seq for the user and records the state it will carry: compare-and-swap, so two concurrent requests
 * never get the same seq.
 */
function wirebot_next_seq(int $user_id, array $state, string $attrs_hash): int
{
    global $wpdb;
    $table = wirebot_members_table();
    for ($try = 0; $try < 20; $try++) {
        $last = wirebot_last_sent($user_id);
        if ($last === null) {
            $inserted = $wpdb->query($wpdb->prepare(
                "INSERT IGNORE INTO $table (wp_user_id, seq, status, tier, attrs_hash, updated_at) VALUES (%d, 1, %s, %s, %s, %d)",
                $user_id,
                $state['status'],
                $state['tier'],
                $attrs_hash,
                time()
            ));
            if ($inserted === 1) {
                return 1;
            }
            continue;
        }
        $next = $last['seq'] + 1;
        $swapped = $wpdb->query($wpdb->prepare(
            "UPDATE $table SET seq = %d, status = %s, tier = %s, attrs_hash = %s, updated_at = %d WHERE wp_user_id = %d AND seq = %d",
            $next,
            $state['status'],
            $state['tier'],
            $attrs_hash,
            time(),
            $user_id,
            $last['seq']
        ));
        if ($swapped === 1) {
            return $next;
        }
    }
    throw new RuntimeException("wirebot: could not take a seq for user $user_id");
}

/** A body per contract §3. */
function wirebot_member_body(string $type, array $user, int $seq, array $state, ?array $previous, ?array $cause): array
{
    $data = ['site' => wirebot_site_url(), 'user' => $user, 'seq' => $seq, 'state' => $state];
    if ($previous !== null) {
        $data['previous'] = $previous;
    }
    if ($cause !== null) {
        $data['cause'] = $cause;
    }
    return ['type' => $type, 'timestamp' => gmdate('Y-m-d\TH:i:s\Z'), 'data' => $data];
}

/**
 * Recomputes the user's state and enqueues an event when it changed. The type is derived from the change unless
 * $type is given (member.created, member.updated, member.deleted). Returns the event id, or null when nothing changed.
 */
function wirebot_enqueue(int $user_id, ?string $type = null, ?array $cause = null, ?array $state = null, ?WP_User $snapshot = null): ?string
{
    if ($user_id <= 0) {
        return null;
    }
    $state ??= wirebot_user_state($user_id);
    $user = wirebot_user_object($user_id, $snapshot);
    $attrs_hash = hash('sha256', ($user['email'] ?? '') . "\0" . ($user['display_name'] ?? '') . "\0" . ($user['ring_leader_id'] ?? ''));
    $last = wirebot_last_sent($user_id);
    $previous = $last && $last['status'] !== '' ? ['status' => $last['status'], 'tier' => $last['tier']] : null;
    if ($type === 'member.created' && $last !== null) {
        $type = null; // already announced: describe the change instead
    }
    if ($last && $last['status'] === 'deleted') {
        return null; // a deleted user never comes back under the same wp_user_id
    }
    if ($previous === $state && ($type === null || $type === 'member.created' || ($type === 'member.updated' && $last['attrs_hash'] === $attrs_hash))) {
        return null;
    }
    $type ??= match (true) {
        $previous === null && $state['status'] === 'active' => 'member.created',
        $previous === null => 'member.suspended',
        $state['status'] === 'suspended' && $previous['status'] !== 'suspended' => 'member.suspended',
        $state['status'] === 'active' && $previous['status'] === 'suspended' => 'member.reactivated',
        $state['tier'] !== $previous['tier'] => 'member.tier_changed',
        default => 'member.updated',
    };
    $seq = wirebot_next_seq($user_id, $state, $attrs_hash);
    $body = wirebot_member_body($type, $user, $seq, $state, $type === 'member.created' ? null : $previous, $cause);
    return wirebot_outbox_add($type, $user_id, $seq, $body);
}

/**
 * Full resync: one members.sync event per 200 users with their current state and current seq (not bumped: a member
 * whose last event was lost carries a seq the supervisor has not applied yet; the others are harmlessly stale).
 * @return list<string> the event ids
 */
function wirebot_enqueue_full_sync(): array
{
    $ids = [];
    $page = 1;
    do {
        $users = get_users(['fields' => 'all', 'number' => 200, 'paged' => $page, 'orderby' => 'ID', 'order' => 'ASC']);
        $members = [];
        foreach ($users as $user) {
            $state = wirebot_user_state($user->ID);
            $last = wirebot_last_sent($user->ID);
            $changed = $last === null || $last['status'] !== $state['status'] || $last['tier'] !== $state['tier'];
            $seq = $changed ? wirebot_next_seq($user->ID, $state, $last['attrs_hash'] ?? '') : $last['seq'];
            $members[] = ['user' => wirebot_user_object($user->ID, $user), 'seq' => $seq, 'state' => $state];
        }
        if ($members) {
            $body = ['type' => 'members.sync', 'timestamp' => gmdate('Y-m-d\TH:i:s\Z'), 'data' => ['site' => wirebot_site_url(), 'members' => $members]];
            $ids[] = wirebot_outbox_add('members.sync', 0, 0, $body);
        }
        $page++;
    } while (count($users) === 200);
    return $ids;
}

add_action('wirebot_sweep', 'wirebot_enqueue_full_sync');
