<?php
/**
 * The outbox: table {prefix}wirebot_outbox holds every event until the supervisor acknowledged it. Hook handlers only
 * INSERT here (never HTTP during a checkout); the dispatcher sends from wp-cron. Also installs the plugin's tables.
 *
 * Row status: pending (waiting for an attempt) | sending (claimed by one cron run) | delivered | dead (no retry; an
 * admin can replay it with the same id and body).
 */

defined('ABSPATH') || exit;

function wirebot_outbox_table(): string
{
    global $wpdb;
    return $wpdb->prefix . 'wirebot_outbox';
}

function wirebot_members_table(): string
{
    global $wpdb;
    return $wpdb->prefix . 'wirebot_members';
}

/** Creates or upgrades both tables with dbDelta. */
function wirebot_install_tables(): void
{
    global $wpdb;
    require_once ABSPATH . 'wp-admin/includes/upgrade.php';
    $charset = $wpdb->get_charset_collate();
    $outbox = wirebot_outbox_table();
    $members = wirebot_members_table();
    dbDelta("CREATE TABLE $outbox (
  id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  event_id varchar(40) NOT NULL,
  wp_user_id bigint(20) unsigned NOT NULL DEFAULT 0,
  seq bigint(20) unsigned NOT NULL DEFAULT 0,
  type varchar(40) NOT NULL,
  body longtext NOT NULL,
  attempts int(11) NOT NULL DEFAULT 0,
  next_at bigint(20) NOT NULL DEFAULT 0,
  status varchar(16) NOT NULL DEFAULT 'pending',
  last_code int(11) NOT NULL DEFAULT 0,
  last_error varchar(255) NOT NULL DEFAULT '',
  created_at bigint(20) NOT NULL DEFAULT 0,
  updated_at bigint(20) NOT NULL DEFAULT 0,
  PRIMARY KEY  (id),
  UNIQUE KEY event_id (event_id),
  KEY status_next (status,next_at)
) $charset;");
    dbDelta("CREATE TABLE $members (
  wp_user_id bigint(20) unsigned NOT NULL,
  seq bigint(20) unsigned NOT NULL DEFAULT 0,
  status varchar(16) NOT NULL DEFAULT '',
  tier varchar(16) NOT NULL DEFAULT '',
  attrs_hash varchar(64) NOT NULL DEFAULT '',
  updated_at bigint(20) NOT NULL DEFAULT 0,
  PRIMARY KEY  (wp_user_id)
) $charset;");
    update_option('wirebot_db_version', WIREBOT_DB_VERSION, false);
}

/**
 * Stores one event and schedules its first attempt now. Returns the event id.
 * The event id is in the cron args, so two events never collapse into one (wp_schedule_single_event drops an identical
 * hook + args within 10 minutes).
 */
function wirebot_outbox_add(string $type, int $wp_user_id, int $seq, array $payload): string
{
    global $wpdb;
    $event_id = wirebot_event_id();
    $now = time();
    $body = wp_json_encode($payload, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    $wpdb->insert(wirebot_outbox_table(), [
        'event_id' => $event_id,
        'wp_user_id' => $wp_user_id,
        'seq' => $seq,
        'type' => $type,
        'body' => $body,
        'attempts' => 0,
        'next_at' => $now,
        'status' => 'pending',
        'created_at' => $now,
        'updated_at' => $now,
    ]);
    wirebot_schedule_attempt($event_id, 0, $now);
    return $event_id;
}

/** Schedules attempt number $attempt of an event at $when. */
function wirebot_schedule_attempt(string $event_id, int $attempt, int $when): void
{
    wp_schedule_single_event($when, 'wirebot_deliver', [$event_id, $attempt]);
}

/** @return array<string,mixed>|null */
function wirebot_outbox_get(string $event_id): ?array
{
    global $wpdb;
    $table = wirebot_outbox_table();
    $row = $wpdb->get_row($wpdb->prepare("SELECT * FROM $table WHERE event_id = %s", $event_id), ARRAY_A);
    return $row ?: null;
}

/** Atomically claims a pending row for one sender; false if another cron run has it or it is no longer pending. */
function wirebot_outbox_claim(string $event_id): bool
{
    global $wpdb;
    $table = wirebot_outbox_table();
    $claimed = $wpdb->query($wpdb->prepare(
        "UPDATE $table SET status = 'sending', updated_at = %d WHERE event_id = %s AND status = 'pending'",
        time(),
        $event_id
    ));
    return $claimed === 1;
}

/** Records the outcome of an attempt. */
function wirebot_outbox_update(string $event_id, array $fields): void
{
    global $wpdb;
    $fields['updated_at'] = time();
    if (isset($fields['last_error'])) {
        $fields['last_error'] = substr((string) $fields['last_error'], 0, 255);
    }
    $wpdb->update(wirebot_outbox_table(), $fields, ['event_id' => $event_id]);
}

/** Dead letters (for the admin notice and the settings page). */
function wirebot_outbox_dead_count(): int
{
    global $wpdb;
    $table = wirebot_outbox_table();
    return (int) $wpdb->get_var("SELECT COUNT(*) FROM $table WHERE status = 'dead'");
}

/** @return list<array<string,mixed>> the newest rows, for the delivery log. */
function wirebot_outbox_recent(int $limit = 50): array
{
    global $wpdb;
    $table = wirebot_outbox_table();
    return $wpdb->get_results($wpdb->prepare(
        "SELECT event_id, wp_user_id, seq, type, attempts, status, last_code, last_error, created_at, updated_at
         FROM $table ORDER BY id DESC LIMIT %d",
        $limit
    ), ARRAY_A) ?: [];
}

/** Manual replay of a dead letter: same id and body, attempts from zero, due now. */
function wirebot_outbox_replay(string $event_id): bool
{
    global $wpdb;
    $table = wirebot_outbox_table();
    $now = time();
    $changed = $wpdb->query($wpdb->prepare(
        "UPDATE $table SET status = 'pending', attempts = 0, next_at = %d, created_at = %d, updated_at = %d
         WHERE event_id = %s AND status = 'dead'",
        $now,
        $now,
        $now,
        $event_id
    ));
    if ($changed === 1) {
        wirebot_schedule_attempt($event_id, 0, $now);
        return true;
    }
    return false;
}

/**
 * Hourly: re-arm pending rows whose cron event was lost, and release rows stuck in 'sending' (a crashed cron run).
 */
add_action('wirebot_outbox_kick', 'wirebot_outbox_kick');
function wirebot_outbox_kick(): void
{
    global $wpdb;
    $table = wirebot_outbox_table();
    $now = time();
    $wpdb->query($wpdb->prepare(
        "UPDATE $table SET status = 'pending' WHERE status = 'sending' AND updated_at < %d",
        $now - 10 * MINUTE_IN_SECONDS
    ));
    if (get_option('wirebot_endpoint_disabled')) {
        return;
    }
    $rows = $wpdb->get_results($wpdb->prepare(
        "SELECT event_id, attempts FROM $table WHERE status = 'pending' AND next_at < %d LIMIT 500",
        $now - 10 * MINUTE_IN_SECONDS
    ), ARRAY_A) ?: [];
    foreach ($rows as $row) {
        if (!wp_next_scheduled('wirebot_deliver', [$row['event_id'], (int) $row['attempts']])) {
            wirebot_schedule_attempt($row['event_id'], (int) $row['attempts'], $now);
        }
    }
}
