<?php
/**
 * MemberPress adapter (contract §7 decisions): a completed or resumed payment and `mepr-account-is-active` clear the
 * expiry suspension and recompute the tier; `subscription-expired` and `mepr-account-is-inactive` suspend (reason
 * expired) only when no mapped membership is left active, otherwise the tier is recomputed; `subscription-paused`
 * suspends the same way (reason payment_failed); `subscription-stopped` (a cancellation) changes nothing, because
 * access lasts until the paid period ends; `member-deleted` is covered by WordPress's delete_user.
 * Only hooks MemberPress's public actions, so nothing here runs when MemberPress is absent.
 */

defined('ABSPATH') || exit;

/** The WordPress user and MemberPress ids behind an event's transaction or subscription. */
function wirebot_mepr_subject($event_or_object): array
{
    $object = (is_object($event_or_object) && method_exists($event_or_object, 'get_data')) ? $event_or_object->get_data() : $event_or_object;
    $cause = ['source' => 'memberpress'];
    if (is_object($event_or_object) && isset($event_or_object->id) && method_exists($event_or_object, 'get_data')) {
        $cause['mepr_event_id'] = (int) $event_or_object->id;
    }
    if (is_object($object) && isset($object->product_id)) {
        $cause['membership_id'] = (int) $object->product_id;
    }
    return [is_object($object) ? (int) ($object->user_id ?? 0) : 0, $cause];
}

/** Access restored: clear the expiry flag, recompute, enqueue on change. */
function wirebot_mepr_active($event_or_object, string $event_name): void
{
    [$user_id, $cause] = wirebot_mepr_subject($event_or_object);
    if ($user_id <= 0) {
        return;
    }
    delete_user_meta($user_id, 'wirebot_expired');
    wirebot_enqueue($user_id, null, $cause + ['event' => $event_name]);
}

/** Access may have ended: suspend when no mapped membership is left, else only the tier changes. */
function wirebot_mepr_ended($event_or_object, string $event_name, string $reason): void
{
    [$user_id, $cause] = wirebot_mepr_subject($event_or_object);
    if ($user_id <= 0) {
        return;
    }
    if (!wirebot_has_mapped_membership($user_id)) {
        update_user_meta($user_id, 'wirebot_expired', $reason);
        $cause['reason'] = $reason;
    }
    wirebot_enqueue($user_id, null, $cause + ['event' => $event_name]);
}

add_action('mepr-event-transaction-completed', static fn ($event) => wirebot_mepr_active($event, 'transaction-completed'));
add_action('mepr-event-subscription-resumed', static fn ($event) => wirebot_mepr_active($event, 'subscription-resumed'));
add_action('mepr-account-is-active', static fn ($txn) => wirebot_mepr_active($txn, 'account-is-active'));
add_action('mepr-event-subscription-expired', static fn ($event) => wirebot_mepr_ended($event, 'subscription-expired', 'expired'));
add_action('mepr-event-transaction-expired', static fn ($event) => wirebot_mepr_ended($event, 'transaction-expired', 'expired'));
add_action('mepr-account-is-inactive', static fn ($txn) => wirebot_mepr_ended($txn, 'account-is-inactive', 'expired'));
add_action('mepr-event-subscription-paused', static fn ($event) => wirebot_mepr_ended($event, 'subscription-paused', 'payment_failed'));
// Decision (§7): a cancellation keeps access until the period ends, so it changes nothing.
add_action('mepr-event-subscription-stopped', static fn ($event) => null);
