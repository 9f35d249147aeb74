<?php
/**
 * Delivery (contract §5): one wp-cron attempt per outbox row, signed fresh each time with the same webhook-id; classify
 * the answer — 2xx done; transport error, timeout, 3xx, 408, 425, 429, 5xx retry with back-off + jitter and Retry-After;
 * 400/401/403/404/409/413/415/422 (and any other 4xx) dead letter + admin notice; 410 stop and flag the endpoint.
 */

defined('ABSPATH') || exit;

/** Delay before attempt n+1 after attempt n failed (seconds): 0, 30 s, 2 m, 10 m, 30 m, 1 h, 2 h, 4 h, 8 h, 12 h, 24 h. */
const WIREBOT_RETRY_SCHEDULE = [0, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400];
/** Give up (dead letter) once the first attempt is this old. */
const WIREBOT_GIVE_UP_AFTER = 72 * HOUR_IN_SECONDS;
/** Never wait longer than this for a Retry-After. */
const WIREBOT_MAX_RETRY_AFTER = DAY_IN_SECONDS;

add_action('wirebot_deliver', 'wirebot_deliver', 10, 2);

/** How an HTTP answer is handled: 'done', 'retry', 'dead' or 'disable'. */
function wirebot_classify(int $code): string
{
    return match (true) {
        $code >= 200 && $code < 300 => 'done',
        $code === 410 => 'disable',
        $code >= 300 && $code < 400, in_array($code, [408, 425, 429], true), $code >= 500 => 'retry',
        default => 'dead',
    };
}

/** Seconds to wait after $attempts failed attempts: the schedule with ±20 % jitter, at least the Retry-After. */
function wirebot_retry_delay(int $attempts, ?int $retry_after): int
{
    $schedule = (array) apply_filters('wirebot_retry_schedule', WIREBOT_RETRY_SCHEDULE);
    $base = (int) ($schedule[min($attempts, count($schedule) - 1)] ?? 0);
    $jitter = $base > 0 ? random_int((int) -($base / 5), (int) ($base / 5)) : 0;
    $delay = max(0, $base + $jitter);
    if ($retry_after !== null) {
        $delay = max($delay, min($retry_after, WIREBOT_MAX_RETRY_AFTER));
    }
    return $delay;
}

/** Retry-After as seconds (delta-seconds or an HTTP date), or null. */
function wirebot_parse_retry_after(string $value): ?int
{
    $value = trim($value);
    if ($value === '') {
        return null;
    }
    if (ctype_digit($value)) {
        return (int) $value;
    }
    $when = strtotime($value);
    return $when === false ? null : max(0, $when - time());
}

/**
 * Lets wp_safe_remote_post reach exactly the configured endpoint when it is on loopback, a private address or an
 * unusual port (wp_http_validate_url refuses those otherwise); nothing else is widened.
 */
function wirebot_allow_endpoint(string $url): callable
{
    $host = (string) wp_parse_url($url, PHP_URL_HOST);
    $port = (int) (wp_parse_url($url, PHP_URL_PORT) ?: 0);
    $external = static fn ($is_external, $h) => ($h === $host) ? true : $is_external;
    $ports = static function ($allowed, $h = null, $u = null) use ($port, $url) {
        if ($port > 0 && $u === $url) {
            $allowed[] = $port;
        }
        return $allowed;
    };
    add_filter('http_request_host_is_external', $external, 10, 2);
    add_filter('http_allowed_safe_ports', $ports, 10, 3);
    return static function () use ($external, $ports): void {
        remove_filter('http_request_host_is_external', $external, 10);
        remove_filter('http_allowed_safe_ports', $ports, 10);
    };
}

/**
 * Sends one signed attempt. @return array{code:int,error:string,retry_after:?int} code 0 = transport failure.
 */
function wirebot_send(string $event_id, string $body): array
{
    $url = (string) get_option('wirebot_endpoint', '');
    if ($url === '') {
        return ['code' => 0, 'error' => 'no endpoint configured', 'retry_after' => null];
    }
    if (!wirebot_signing_secrets()) {
        return ['code' => 0, 'error' => 'no valid signing secret', 'retry_after' => null];
    }
    $restore = wirebot_allow_endpoint($url);
    try {
        $response = wp_safe_remote_post($url, [
            'timeout' => 15,
            'redirection' => 0,
            'headers' => wirebot_signed_headers($event_id, time(), $body),
            'body' => $body,
            'data_format' => 'body',
        ]);
    } finally {
        $restore();
    }
    if (is_wp_error($response)) {
        return ['code' => 0, 'error' => $response->get_error_message(), 'retry_after' => null];
    }
    $code = (int) wp_remote_retrieve_response_code($response);
    $retry_after = wirebot_parse_retry_after((string) wp_remote_retrieve_header($response, 'retry-after'));
    $error = '';
    if ($code < 200 || $code >= 300) {
        // The problem+json detail says why (never a secret); keep it short for the log.
        $problem = json_decode((string) wp_remote_retrieve_body($response), true);
        $error = is_array($problem) ? (string) ($problem['code'] ?? '') . ': ' . (string) ($problem['detail'] ?? '') : "HTTP $code";
    }
    return ['code' => $code, 'error' => $error, 'retry_after' => $retry_after];
}

/** The wp-cron handler: one attempt for one event, then done, rescheduled, dead-lettered or endpoint disabled. */
function wirebot_deliver(string $event_id, int $attempt = 0): void
{
    if (get_option('wirebot_endpoint_disabled')) {
        return; // 410 seen: everything waits until an admin re-enables the endpoint
    }
    if (!wirebot_outbox_claim($event_id)) {
        return; // delivered, dead, or another cron run is sending it
    }
    $row = wirebot_outbox_get($event_id);
    if ($row === null) {
        return;
    }
    $result = wirebot_send($event_id, (string) $row['body']);
    $attempts = (int) $row['attempts'] + 1;
    $outcome = $result['code'] === 0 ? 'retry' : wirebot_classify($result['code']);
    $fields = ['attempts' => $attempts, 'last_code' => $result['code'], 'last_error' => $result['error']];
    if ($outcome === 'retry' && time() - (int) $row['created_at'] >= WIREBOT_GIVE_UP_AFTER) {
        $outcome = 'dead';
        $fields['last_error'] = 'gave up after 72 h: ' . $result['error'];
    }
    switch ($outcome) {
        case 'done':
            wirebot_outbox_update($event_id, $fields + ['status' => 'delivered']);
            break;
        case 'disable':
            update_option('wirebot_endpoint_disabled', time(), false);
            wirebot_outbox_update($event_id, $fields + ['status' => 'pending']);
            break;
        case 'dead':
            wirebot_outbox_update($event_id, $fields + ['status' => 'dead']);
            break;
        default:
            $next = time() + wirebot_retry_delay($attempts, $result['retry_after']);
            wirebot_outbox_update($event_id, $fields + ['status' => 'pending', 'next_at' => $next]);
            wirebot_schedule_attempt($event_id, $attempts, $next);
    }
    do_action('wirebot_delivered', $event_id, $outcome, $result['code']);
}

/** After an admin re-enables a 410-disabled endpoint: every pending row is due now. */
function wirebot_reenable_endpoint(): void
{
    global $wpdb;
    delete_option('wirebot_endpoint_disabled');
    $table = wirebot_outbox_table();
    $now = time();
    $rows = $wpdb->get_results("SELECT event_id, attempts FROM $table WHERE status = 'pending'", ARRAY_A) ?: [];
    foreach ($rows as $row) {
        wirebot_schedule_attempt($row['event_id'], (int) $row['attempts'], $now);
    }
}

/** Dead letters and a disabled endpoint are shown to administrators on every admin page. */
add_action('admin_notices', static function (): void {
    if (!current_user_can('manage_options')) {
        return;
    }
    $link = esc_url(admin_url('options-general.php?page=wirebot'));
    $dead = wirebot_outbox_dead_count();
    if ($dead > 0) {
        printf(
            '<div class="notice notice-error"><p>%s <a href="%s">%s</a></p></div>',
            esc_html(sprintf(_n('Wirebot: %d event could not be delivered and needs attention.', 'Wirebot: %d events could not be delivered and need attention.', $dead, 'wirebot'), $dead)),
            $link,
            esc_html__('Open the delivery log', 'wirebot')
        );
    }
    if (get_option('wirebot_endpoint_disabled')) {
        printf(
            '<div class="notice notice-error"><p>%s <a href="%s">%s</a></p></div>',
            esc_html__('Wirebot: the supervisor answered 410 Gone; deliveries are stopped.', 'wirebot'),
            $link,
            esc_html__('Review the endpoint', 'wirebot')
        );
    }
});
