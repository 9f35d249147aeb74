<?php
/**
 * Test helpers loaded after wp-load.php by tests/src/wordpress.rs (`WordPress::php`): configure the plugin, inspect
 * the outbox. Not part of the plugin.
 */

/** Points the plugin at the receiver with a known secret and the default tier "shared". */
function wirebot_test_configure(string $endpoint, string $secret): void
{
    update_option('wirebot_endpoint', $endpoint, false);
    update_option('wirebot_secret', $secret, false);
    update_option('wirebot_default_tier', 'shared', false);
    echo 'configured';
}

/** The outbox rows as JSON lines (no body). */
function wirebot_test_outbox(): void
{
    global $wpdb;
    $rows = $wpdb->get_results("SELECT event_id, wp_user_id, seq, type, attempts, status, last_code, last_error FROM {$wpdb->prefix}wirebot_outbox ORDER BY id", ARRAY_A);
    foreach ($rows as $row) {
        echo wp_json_encode($row), "\n";
    }
}

/** The body of the newest outbox row. */
function wirebot_test_last_body(): void
{
    global $wpdb;
    echo $wpdb->get_var("SELECT body FROM {$wpdb->prefix}wirebot_outbox ORDER BY id DESC LIMIT 1");
}

/*
 * MemberPress stand-ins (MemberPress is commercial and in no reachable registry): just the surface the adapter uses.
 * A user's active memberships are the ids in the user meta `wirebot_test_memberships`.
 */
if (!class_exists('MeprUser')) {
    class MeprUser
    {
        public function __construct(public int $ID = 0)
        {
        }

        public function active_product_subscriptions(string $return = 'ids'): array
        {
            return array_map('intval', (array) get_user_meta($this->ID, 'wirebot_test_memberships', true));
        }
    }

    class MeprTransaction
    {
        public function __construct(public int $user_id = 0, public int $product_id = 0, public int $id = 0)
        {
        }
    }

    class MeprEvent
    {
        public function __construct(public int $id, private object $data)
        {
        }

        public function get_data(): object
        {
            return $this->data;
        }
    }
}

/** Sets the user's active memberships, then fires a MemberPress event about one of them. */
function wirebot_test_mepr(int $user_id, array $memberships, string $action, int $product_id, int $event_id): void
{
    update_user_meta($user_id, 'wirebot_test_memberships', $memberships);
    $txn = new MeprTransaction($user_id, $product_id, 1000 + $event_id);
    do_action($action, str_starts_with($action, 'mepr-event-') ? new MeprEvent($event_id, $txn) : $txn);
}
