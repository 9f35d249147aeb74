<?php
/**
 * Uninstall: drops the outbox and member-state tables, deletes the plugin's options and user meta, and unschedules
 * its cron events. Runs only from WordPress's uninstall flow.
 */

defined('WP_UNINSTALL_PLUGIN') || exit;

global $wpdb;
$wpdb->query("DROP TABLE IF EXISTS {$wpdb->prefix}wirebot_outbox");
$wpdb->query("DROP TABLE IF EXISTS {$wpdb->prefix}wirebot_members");
foreach (['wirebot_secret', 'wirebot_secret_previous', 'wirebot_secret_previous_until', 'wirebot_endpoint', 'wirebot_endpoint_disabled',
          'wirebot_default_tier', 'wirebot_tier_map', 'wirebot_site_url', 'wirebot_db_version'] as $option) {
    delete_option($option);
}
foreach (['wirebot_moderated', 'wirebot_expired'] as $meta) {
    delete_metadata('user', 0, $meta, '', true);
}
wp_clear_scheduled_hook('wirebot_sweep');
wp_clear_scheduled_hook('wirebot_outbox_kick');
wp_unschedule_hook('wirebot_deliver');
