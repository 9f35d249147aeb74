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
