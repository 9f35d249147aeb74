<?php
/**
 * Settings → Wirebot: endpoint URL, signing secret (masked; rotate = dual-sign for 7 days; finish rotation), default tier
 * and the membership → tier map, "send test" (webhook.test, sent at once), "full resync" (members.sync, ≤ 200 per
 * request), the delivery log with replay of dead letters, and re-enabling an endpoint that answered 410.
 * Every action checks manage_options and a nonce and goes through admin-post.php.
 */

defined('ABSPATH') || exit;

add_action('admin_menu', static function (): void {
    add_options_page('Wirebot', 'Wirebot', 'manage_options', 'wirebot', 'wirebot_settings_page');
});

/** whsec_abcd…wxyz */
function wirebot_mask_secret(string $secret): string
{
    return strlen($secret) > 14 ? substr($secret, 0, 10) . '…' . substr($secret, -4) : '(none)';
}

/** Parses "membership_id=tier" lines into the map; unknown tiers are skipped. @return array<int,string> */
function wirebot_parse_tier_map(string $text): array
{
    $map = [];
    foreach (preg_split('/\r\n|\r|\n/', $text) as $line) {
        if (preg_match('/^\s*(\d+)\s*=\s*(shared|dedicated)\s*$/', $line, $m)) {
            $map[(int) $m[1]] = $m[2];
        }
    }
    return $map;
}

function wirebot_settings_redirect(string $message): void
{
    wp_safe_redirect(add_query_arg(['page' => 'wirebot', 'wirebot_msg' => rawurlencode($message)], admin_url('options-general.php')));
    exit;
}

/** Runs an admin action after the capability and nonce checks. */
function wirebot_admin_action(string $action, callable $handler): void
{
    add_action("admin_post_wirebot_$action", static function () use ($action, $handler): void {
        if (!current_user_can('manage_options')) {
            wp_die(esc_html__('Not allowed.', 'wirebot'), 403);
        }
        check_admin_referer("wirebot_$action");
        wirebot_settings_redirect((string) $handler());
    });
}

wirebot_admin_action('save', static function (): string {
    $url = esc_url_raw(trim((string) wp_unslash($_POST['endpoint'] ?? '')));
    update_option('wirebot_endpoint', $url, false);
    $tier = (string) ($_POST['default_tier'] ?? 'none');
    update_option('wirebot_default_tier', isset(WIREBOT_TIER_RANK[$tier]) ? $tier : 'none', false);
    update_option('wirebot_tier_map', wirebot_parse_tier_map((string) wp_unslash($_POST['tier_map'] ?? '')), false);
    return 'Settings saved.';
});

wirebot_admin_action('rotate', static function (): string {
    wirebot_rotate_secret(7);
    set_transient('wirebot_reveal_secret_' . get_current_user_id(), 1, 10 * MINUTE_IN_SECONDS);
    return 'New secret generated: add it to the supervisor\'s secrets file. Both secrets sign for 7 days.';
});

wirebot_admin_action('finish_rotation', static function (): string {
    wirebot_finish_rotation();
    return 'Only the current secret signs now.';
});

wirebot_admin_action('test', static function (): string {
    $body = ['type' => 'webhook.test', 'timestamp' => gmdate('Y-m-d\TH:i:s\Z'), 'data' => ['site' => wirebot_site_url()]];
    $event_id = wirebot_outbox_add('webhook.test', 0, 0, $body);
    wirebot_deliver($event_id, 0);
    $row = wirebot_outbox_get($event_id);
    return sprintf('Test event %s: %s (HTTP %d) %s', $event_id, $row['status'] ?? '?', (int) ($row['last_code'] ?? 0), $row['last_error'] ?? '');
});

wirebot_admin_action('resync', static function (): string {
    return sprintf('Full resync queued: %d members.sync event(s).', count(wirebot_enqueue_full_sync()));
});

wirebot_admin_action('replay', static function (): string {
    $event_id = sanitize_text_field((string) wp_unslash($_POST['event_id'] ?? ''));
    return wirebot_outbox_replay($event_id) ? "Replaying $event_id with the same id and body." : "$event_id is not a dead letter.";
});

wirebot_admin_action('reenable', static function (): string {
    wirebot_reenable_endpoint();
    return 'Endpoint re-enabled; pending events are due now.';
});

function wirebot_action_button(string $action, string $label, array $hidden = []): string
{
    $html = '<form method="post" action="' . esc_url(admin_url('admin-post.php')) . '" style="display:inline">';
    $html .= '<input type="hidden" name="action" value="wirebot_' . esc_attr($action) . '">';
    $html .= wp_nonce_field("wirebot_$action", '_wpnonce', true, false);
    foreach ($hidden as $name => $value) {
        $html .= '<input type="hidden" name="' . esc_attr($name) . '" value="' . esc_attr($value) . '">';
    }
    return $html . get_submit_button($label, 'secondary', 'submit', false) . '</form> ';
}

function wirebot_settings_page(): void
{
    if (!current_user_can('manage_options')) {
        return;
    }
    $secret = (string) get_option('wirebot_secret', '');
    $reveal = get_transient('wirebot_reveal_secret_' . get_current_user_id());
    delete_transient('wirebot_reveal_secret_' . get_current_user_id());
    $map_text = '';
    foreach (wirebot_tier_map() as $id => $tier) {
        $map_text .= "$id=$tier\n";
    }
    echo '<div class="wrap"><h1>Wirebot</h1>';
    if (isset($_GET['wirebot_msg'])) {
        echo '<div class="notice notice-info"><p>' . esc_html(rawurldecode((string) wp_unslash($_GET['wirebot_msg']))) . '</p></div>';
    }
    echo '<form method="post" action="' . esc_url(admin_url('admin-post.php')) . '">';
    echo '<input type="hidden" name="action" value="wirebot_save">';
    wp_nonce_field('wirebot_save');
    echo '<table class="form-table">';
    echo '<tr><th>Supervisor endpoint</th><td><input class="regular-text" name="endpoint" value="' . esc_attr((string) get_option('wirebot_endpoint', '')) . '" placeholder="https://api.example/v1/webhooks/wordpress"></td></tr>';
    echo '<tr><th>Site URL sent</th><td><code>' . esc_html(wirebot_site_url()) . '</code> (the supervisor\'s secrets file must name this URL)</td></tr>';
    echo '<tr><th>Default tier</th><td><select name="default_tier">';
    foreach (array_keys(WIREBOT_TIER_RANK) as $tier) {
        echo '<option value="' . esc_attr($tier) . '"' . selected(get_option('wirebot_default_tier', 'none'), $tier, false) . '>' . esc_html($tier) . '</option>';
    }
    echo '</select> for users without a mapped active membership</td></tr>';
    echo '<tr><th>Membership → tier</th><td><textarea name="tier_map" rows="5" cols="40" placeholder="15=dedicated">' . esc_textarea($map_text) . '</textarea><br>One <code>membership_id=shared|dedicated</code> per line; the highest active one wins.</td></tr>';
    echo '</table>';
    submit_button('Save settings');
    echo '</form>';

    echo '<h2>Signing secret</h2><p>';
    echo $reveal ? 'New secret (copy it now): <code>' . esc_html($secret) . '</code>' : 'Current: <code>' . esc_html(wirebot_mask_secret($secret)) . '</code>';
    $until = (int) get_option('wirebot_secret_previous_until', 0);
    if ($until > time()) {
        echo '<br>Dual-signing with the previous secret until ' . esc_html(gmdate('Y-m-d H:i', $until)) . ' UTC.';
    }
    echo '</p>' . wirebot_action_button('rotate', 'Rotate secret');
    if ($until > time()) {
        echo wirebot_action_button('finish_rotation', 'Stop signing with the old secret');
    }

    echo '<h2>Deliveries</h2><p>' . wirebot_action_button('test', 'Send test') . wirebot_action_button('resync', 'Full resync');
    if (get_option('wirebot_endpoint_disabled')) {
        echo wirebot_action_button('reenable', 'Re-enable endpoint (it answered 410)');
    }
    echo '</p><table class="widefat striped"><thead><tr><th>Event</th><th>Type</th><th>User</th><th>Seq</th><th>Status</th><th>Attempts</th><th>Last code</th><th>Last error</th><th>Updated (UTC)</th><th></th></tr></thead><tbody>';
    foreach (wirebot_outbox_recent(50) as $row) {
        echo '<tr><td><code>' . esc_html($row['event_id']) . '</code></td><td>' . esc_html($row['type']) . '</td><td>' . (int) $row['wp_user_id']
            . '</td><td>' . (int) $row['seq'] . '</td><td>' . esc_html($row['status']) . '</td><td>' . (int) $row['attempts'] . '</td><td>' . (int) $row['last_code']
            . '</td><td>' . esc_html($row['last_error']) . '</td><td>' . esc_html(gmdate('Y-m-d H:i:s', (int) $row['updated_at'])) . '</td><td>'
            . ($row['status'] === 'dead' ? wirebot_action_button('replay', 'Replay', ['event_id' => $row['event_id']]) : '') . '</td></tr>';
    }
    echo '</tbody></table></div>';
}
