<?php
/**
 * Plugin Name:       Wirebot
 * Description:       Tells the Wirebot supervisor about member lifecycle changes (MemberPress, BuddyBoss, WordPress users) with signed Standard Webhooks, through a durable outbox with retries.
 * Version:           0.1.0
 * Requires at least: 6.1
 * Requires PHP:      8.2
 * License:           MIT
 *
 * Bootstrap: constants, includes, activation (outbox tables, signing secret, schedules) and deactivation.
 * Contract: shared/contracts/webhooks.md (§2 request, §3 body, §5 sender retry semantics, §7 decisions).
 */

defined('ABSPATH') || exit;

const WIREBOT_VERSION = '0.1.0';
const WIREBOT_DB_VERSION = '1';

require_once __DIR__ . '/includes/signer.php';
require_once __DIR__ . '/includes/outbox.php';
require_once __DIR__ . '/includes/state.php';
require_once __DIR__ . '/includes/dispatcher.php';
require_once __DIR__ . '/includes/hooks-core.php';
require_once __DIR__ . '/includes/hooks-memberpress.php';
if (is_admin()) {
    require_once __DIR__ . '/admin/settings.php';
}

register_activation_hook(__FILE__, 'wirebot_activate');
register_deactivation_hook(__FILE__, 'wirebot_deactivate');

/** Creates the tables, generates the first signing secret, and schedules the daily sweep and the hourly outbox kick. */
function wirebot_activate(): void
{
    wirebot_install_tables();
    if (!get_option('wirebot_secret')) {
        update_option('wirebot_secret', wirebot_generate_secret(), false);
    }
    add_option('wirebot_endpoint', '', '', false);
    add_option('wirebot_default_tier', 'none', '', false);
    add_option('wirebot_tier_map', [], '', false);
    if (!wp_next_scheduled('wirebot_sweep')) {
        wp_schedule_event(time() + HOUR_IN_SECONDS, 'daily', 'wirebot_sweep');
    }
    if (!wp_next_scheduled('wirebot_outbox_kick')) {
        wp_schedule_event(time() + 300, 'hourly', 'wirebot_outbox_kick');
    }
}

/** Unschedules everything; the outbox and settings stay (uninstall.php removes them). */
function wirebot_deactivate(): void
{
    wp_clear_scheduled_hook('wirebot_sweep');
    wp_clear_scheduled_hook('wirebot_outbox_kick');
    wp_unschedule_hook('wirebot_deliver');
}

/** Upgrades the tables when the plugin is updated without re-activation. */
add_action('plugins_loaded', static function (): void {
    if (get_option('wirebot_db_version') !== WIREBOT_DB_VERSION) {
        wirebot_install_tables();
    }
});
