<?php
/**
 * Test-only mu-plugin (installed by tests/wordpress/install-site.sh, never shipped): retries are due at once, so a
 * test drives the retry schedule by calling wp-cron.php instead of waiting 30 s.
 */
add_filter('wirebot_retry_schedule', static fn () => [0]);
