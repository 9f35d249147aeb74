<?php
/**
 * Standard Webhooks v1 signing (HMAC-SHA256 over "id.timestamp.body", key = base64-decoded bytes after "whsec_"),
 * the signing secrets with rotation (dual-sign while the previous secret is still valid), and ULID event ids.
 */

defined('ABSPATH') || exit;

/** A new secret: whsec_ + base64 of 32 random bytes. */
function wirebot_generate_secret(): string
{
    return 'whsec_' . base64_encode(random_bytes(32));
}

/** The raw HMAC key of a whsec_ secret, or null when it is malformed. */
function wirebot_secret_key(string $secret): ?string
{
    if (!str_starts_with($secret, 'whsec_')) {
        return null;
    }
    $key = base64_decode(substr($secret, 6), true);
    return ($key === false || strlen($key) < 24 || strlen($key) > 64) ? null : $key;
}

/**
 * The secrets to sign with now: the current one, plus the previous one while a rotation's dual-sign period lasts.
 * @return list<string>
 */
function wirebot_signing_secrets(): array
{
    $secrets = [(string) get_option('wirebot_secret', '')];
    $previous = (string) get_option('wirebot_secret_previous', '');
    if ($previous !== '' && time() < (int) get_option('wirebot_secret_previous_until', 0)) {
        $secrets[] = $previous;
    }
    return array_values(array_filter($secrets, static fn ($s) => wirebot_secret_key($s) !== null));
}

/** Starts a rotation: a new current secret; the old one keeps signing (dual-sign) for $days days. Returns the new secret. */
function wirebot_rotate_secret(int $days = 7): string
{
    $new = wirebot_generate_secret();
    update_option('wirebot_secret_previous', (string) get_option('wirebot_secret', ''), false);
    update_option('wirebot_secret_previous_until', time() + $days * DAY_IN_SECONDS, false);
    update_option('wirebot_secret', $new, false);
    return $new;
}

/** Ends the dual-sign period at once (after the supervisor dropped the old secret). */
function wirebot_finish_rotation(): void
{
    delete_option('wirebot_secret_previous');
    delete_option('wirebot_secret_previous_until');
}

/** "v1,<b64>" for one secret. */
function wirebot_signature(string $secret, string $id, int $timestamp, string $body): string
{
    $key = wirebot_secret_key($secret) ?? '';
    return 'v1,' . base64_encode(hash_hmac('sha256', "$id.$timestamp.$body", $key, true));
}

/**
 * The Standard Webhooks headers for one attempt (the timestamp is new on every attempt, the id never changes).
 * @return array<string,string>
 */
function wirebot_signed_headers(string $id, int $timestamp, string $body): array
{
    $signatures = array_map(static fn ($s) => wirebot_signature($s, $id, $timestamp, $body), wirebot_signing_secrets());
    return [
        'Content-Type' => 'application/json',
        'webhook-id' => $id,
        'webhook-timestamp' => (string) $timestamp,
        'webhook-signature' => implode(' ', $signatures),
        'User-Agent' => 'Wirebot-WP/' . WIREBOT_VERSION . ' (WordPress/' . get_bloginfo('version') . ')',
    ];
}

/** A ULID (26 Crockford base32 characters: 48-bit milliseconds + 80 random bits). */
function wirebot_ulid(): string
{
    $alphabet = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    $ms = (int) floor(microtime(true) * 1000);
    $time = '';
    for ($i = 0; $i < 10; $i++) {
        $time = $alphabet[$ms % 32] . $time;
        $ms = intdiv($ms, 32);
    }
    $random = '';
    foreach (str_split(random_bytes(16)) as $byte) {
        $random .= $alphabet[ord($byte) % 32]; // 256 is a multiple of 32: uniform
    }
    return $time . $random;
}

/** A new event id: evt_<ULID>; it is the webhook-id of every attempt. */
function wirebot_event_id(): string
{
    return 'evt_' . wirebot_ulid();
}
