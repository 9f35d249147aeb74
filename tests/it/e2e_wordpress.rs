//! End-to-end: real WordPress 6.1.9 (PHP 8.2, SQLite) with the `deploy/wordpress/wirebot` plugin drives the real
//! `wirebot serve` daemon through its `[webhooks] listen` address: a new WordPress user becomes a shared member served
//! by a shard, a MemberPress purchase moves it live to its own dedicated worker, deliveries made while the daemon is down
//! are retried by the plugin and converge, and deleting the WordPress user archives and tombstones the member.

use serde_json::Value;
use tests::supervisor::{Options, Supervisor};

use crate::e2e_lifecycle::{eventually, state_root, worker_of};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn text(row: &Value, key: &str) -> String {
    match &row[key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The daemon on `dir`, its webhook listener on `port`, trusting `site` with [`SECRET`].
fn daemon(dir: &std::path::Path, port: u16, secrets: &std::path::Path) -> Supervisor {
    Supervisor::start_with(
        dir,
        Options::default()
            .set(
                "webhooks.secrets_file",
                &format!("{:?}", secrets.display().to_string()),
            )
            .set("webhooks.listen", &format!("\"127.0.0.1:{port}\"")),
    )
}

/// A member's token (the webhook never carries one: the operator issues it) and one request through the proxy.
fn served(sup: &Supervisor, id: &str) -> u16 {
    let out = sup.cli(["user", "token", id, "--rotate"]);
    let token = out
        .ok()
        .stdout
        .rsplit(": ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    sup.proxy(
        "GET",
        &format!("/u/{id}/healthz"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .status
}

#[test]
fn wordpress_drives_the_real_daemon_create_tier_move_outage_and_delete() {
    tests::require_root!();
    if let Err(reason) = tests::wordpress::prepared() {
        eprintln!("SKIP wordpress_drives_the_real_daemon…: {reason}");
        return;
    }
    // The plugin needs the receiver URL at install, the daemon needs the site URL in its secrets: pick the port first.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let wp = tests::wordpress::WordPress::install(
        &format!("http://127.0.0.1:{port}/v1/webhooks/wordpress"),
        SECRET,
    )
    .unwrap();
    wp.php("update_option('wirebot_tier_map', [15 => 'dedicated', 16 => 'shared']);")
        .unwrap();
    let dir = state_root();
    let secrets = dir.path().join("webhook-secrets.toml");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&secrets)
            .unwrap();
        write!(
            f,
            "[[sites]]\nurl = \"{}\"\nsecrets = [\"{SECRET}\"]\n",
            wp.url
        )
        .unwrap();
    }
    let mut sup = daemon(dir.path(), port, &secrets);

    // 1. A new WordPress user → signed member.created → a shared member on a shard, reachable through the proxy.
    let ann: u64 = wp
        .php("echo wp_create_user('ann', 'ann-password', 'ann@example.com');")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wp.run_cron().unwrap(), 200);
    let rows = wp.outbox().unwrap();
    assert_eq!(
        (text(&rows[0], "status"), text(&rows[0], "last_code")),
        ("delivered".into(), "202".into()),
        "{rows:?}"
    );
    let ann_id = format!("wp{ann}");
    eventually("ann is a shared member", || {
        sup.registry_users() == vec![(ann_id.clone(), "shared".to_owned())]
    });
    eventually("a shard serves ann", || {
        worker_of(&sup, "wb-shard-0").is_some()
    });
    eventually("ann answers through the proxy", || {
        served(&sup, &ann_id) == 200
    });

    // 2. MemberPress: ann buys the dedicated product → member.tier_changed → her own worker, same directory.
    wp.php(&format!(
        "wirebot_test_mepr({ann}, [16, 15], 'mepr-event-transaction-completed', 15, 1);"
    ))
    .unwrap();
    assert_eq!(wp.run_cron().unwrap(), 200);
    eventually("ann moved to dedicated with her own worker", || {
        sup.registry_users() == vec![(ann_id.clone(), "dedicated".to_owned())]
            && worker_of(&sup, &ann_id)
                .is_some_and(|w| w["state"] == "ready" || w["state"] == "running")
    });
    assert_eq!(served(&sup, &ann_id), 200);

    // 3. The daemon is down: the plugin keeps the delivery and retries it; once back, the member converges.
    sup.kill9();
    let bob: u64 = wp
        .php("echo wp_create_user('bob', 'bob-password', 'bob@example.com');")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wp.run_cron().unwrap(), 200);
    let bob_row = wp
        .outbox()
        .unwrap()
        .into_iter()
        .find(|r| text(r, "wp_user_id") == bob.to_string())
        .unwrap();
    assert_eq!(text(&bob_row, "status"), "pending", "{bob_row}");
    let sup = daemon(dir.path(), port, &secrets);
    let bob_id = format!("wp{bob}");
    eventually("the plugin's retry reaches the new daemon", || {
        wp.run_cron().unwrap();
        wp.outbox()
            .unwrap()
            .iter()
            .any(|r| text(r, "wp_user_id") == bob.to_string() && text(r, "status") == "delivered")
    });
    eventually("bob is a member", || {
        sup.registry_users().iter().any(|(id, _)| *id == bob_id)
    });

    // 4. Deleting ann in WordPress archives her directory and tombstones her id.
    wp.php(&format!(
        "require_once ABSPATH . 'wp-admin/includes/user.php'; var_export(wp_delete_user({ann}));"
    ))
    .unwrap();
    assert_eq!(wp.run_cron().unwrap(), 200);
    eventually("ann is archived and gone", || {
        !sup.user_dir(&ann_id).exists() && !sup.registry_users().iter().any(|(id, _)| *id == ann_id)
    });
    let archives = std::fs::read_dir(sup.data_dir().join("archive"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&ann_id))
        .count();
    assert_eq!(archives, 1);
    let tombstones: i64 = sup
        .registry()
        .query_row(
            "SELECT COUNT(*) FROM webhook_tombstones WHERE user_id = ?1",
            [&ann_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tombstones, 1);
}
