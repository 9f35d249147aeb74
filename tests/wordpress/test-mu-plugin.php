<?php
/**
 * Test-only mu-plugin (installed by tests/wordpress/install-site.sh, never shipped): retries are due at once, so a
 * test drives the retry schedule by calling wp-cron.php instead of waiting 30 s; and WordPress's own HTTP requests
 * (update checks, HTTPS detection, loopback health checks against the single-threaded `php -S`) fail at once instead of
 * timing out, while requests to the configured Wirebot endpoint go through untouched.
 */
add_filter('wirebot_retry_schedule', static fn () => [0]);
add_filter('pre_http_request', static function ($preempt, $args, $url) {
    $endpoint = (string) get_option('wirebot_endpoint', '');
    if ($endpoint !== '' && str_starts_with($url, $endpoint)) {
        return $preempt;
    }
    return new WP_Error('wirebot_test_offline', 'offline test site: only the Wirebot endpoint is reachable');
}, 10, 3);
