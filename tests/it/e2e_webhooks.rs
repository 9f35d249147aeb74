//! Signed WordPress webhooks through the real daemon: `[webhooks] secrets_file` mounts the receiver on the admin
//! socket, a signed `member.created` is accepted (202), the reconciler provisions the member with its worker and
//! route, a `member.suspended` unbinds it, and a `member.deleted` archives it; each operation ends `done`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::json;
use tests::supervisor::{Options, Supervisor};

use crate::e2e_lifecycle::{alive, eventually, state_root, worker_of};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const SITE: &str = "https://network.example";

/// Standard Webhooks v1, written out independently of the receiver.
fn sign(id: &str, ts: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn deliver(sup: &Supervisor, n: u64, kind: &str, seq: u64, status: &str, tier: &str) -> u16 {
    let body = json!({"type": kind, "timestamp": "2026-11-24T10:58:35Z",
        "data": {"site": SITE, "user": {"wp_user_id": 42, "email": "m42@example.com"},
                 "seq": seq, "state": {"status": status, "tier": tier}}})
    .to_string();
    let id = format!("evt_01JDQ{n:021}");
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = sign(&id, ts, body.as_bytes());
    let ts = ts.to_string();
    let answer = sup.api_raw(
        "POST",
        "/v1/webhooks/wordpress",
        &[
            ("content-type", "application/json"),
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &signature),
        ],
        body.as_bytes(),
    );
    answer.status
}

fn operations_done(sup: &Supervisor, expected: i64) -> bool {
    let done: i64 = sup
        .registry()
        .query_row(
            "SELECT COUNT(*) FROM webhook_operations WHERE state = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    done == expected
}

fn write_secrets(path: &std::path::Path) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    write!(f, "[[sites]]\nurl = \"{SITE}\"\nsecrets = [\"{SECRET}\"]\n").unwrap();
    f.sync_all().unwrap();
}

/// The daemon on `dir` with the receiver mounted on its admin socket (secrets in `dir`).
fn with_webhooks(dir: &std::path::Path) -> Supervisor {
    let secrets = dir.join("webhook-secrets.toml");
    write_secrets(&secrets);
    Supervisor::start_with(
        dir,
        Options::default().set(
            "webhooks.secrets_file",
            &format!("{:?}", secrets.display().to_string()),
        ),
    )
}

#[test]
fn the_separate_webhook_listener_serves_only_the_webhook_routes() {
    let dir = state_root();
    let secrets = dir.path().join("webhook-secrets.toml");
    write_secrets(&secrets);
    let sup = Supervisor::start_with(
        dir.path(),
        Options::default()
            .set(
                "webhooks.secrets_file",
                &format!("{:?}", secrets.display().to_string()),
            )
            .set("webhooks.listen", "\"127.0.0.1:0\""),
    );
    let get = |path: &str| {
        let stream = std::net::TcpStream::connect(sup.addr("webhooks")).unwrap();
        tests::supervisor::http_exchange(stream, "GET", path, &[], b"")
    };
    assert_eq!(get("/v1/webhooks/wordpress/ping").status, 200);
    // The tunnel's api. host reaches the receiver, never the admin API.
    assert_eq!(get("/v1/users").status, 404);
    assert_eq!(get("/v1/status").status, 404);
}

#[test]
fn a_signed_member_created_provisions_a_served_member_and_delete_archives_it() {
    tests::require_root!();
    let dir = state_root();
    let sup = with_webhooks(dir.path());

    // A forged signature changes nothing.
    let body = b"{}";
    let forged = sup.api_raw(
        "POST",
        "/v1/webhooks/wordpress",
        &[
            ("content-type", "application/json"),
            ("webhook-id", "evt_01JDQ000000000000000000099"),
            ("webhook-timestamp", "1"),
            ("webhook-signature", "v1,AAAA"),
        ],
        body,
    );
    assert!(
        forged.status == 401 || forged.status == 400,
        "{}",
        forged.status
    );

    assert_eq!(
        deliver(&sup, 1, "member.created", 1, "active", "dedicated"),
        202
    );
    eventually("the member is provisioned with a ready worker", || {
        worker_of(&sup, "wp42").is_some_and(|w| w["state"] == "ready" || w["state"] == "running")
    });
    eventually("the operation is done", || operations_done(&sup, 1));
    let users = sup.cli(["user", "list"]).ok().stdout.clone();
    assert!(users.contains("wp42"), "{users}");

    // Its route answers (the operator issues a token; the webhook never carries one).
    let out = sup.cli(["user", "token", "wp42", "--rotate"]);
    let token = out
        .ok()
        .stdout
        .rsplit(": ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let health = sup.proxy(
        "GET",
        "/u/wp42/healthz",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(
        health.status,
        200,
        "{}",
        String::from_utf8_lossy(&health.body)
    );
    let pid = worker_of(&sup, "wp42").unwrap()["pid"].as_i64().unwrap();

    // Suspended: the worker stops and the route is gone, the data stays.
    assert_eq!(
        deliver(&sup, 2, "member.suspended", 2, "suspended", "dedicated"),
        202
    );
    eventually("the suspend operation is done", || operations_done(&sup, 2));
    assert!(!alive(pid));
    let r = sup.proxy(
        "GET",
        "/u/wp42/healthz",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert!(
        [401, 403, 404].contains(&r.status),
        "suspended member: {}",
        r.status
    );
    assert!(sup.user_dir("wp42").exists());

    // Deleted: archived, removed, tombstoned.
    assert_eq!(
        deliver(&sup, 3, "member.deleted", 3, "deleted", "dedicated"),
        202
    );
    eventually("the delete operation is done", || operations_done(&sup, 3));
    assert!(!sup.user_dir("wp42").exists());
    let users = sup.cli(["user", "list"]).ok().stdout.clone();
    assert!(!users.contains("wp42"), "{users}");
    let tombstones: i64 = sup
        .registry()
        .query_row("SELECT COUNT(*) FROM webhook_tombstones", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tombstones, 1);
}

#[test]
fn a_failed_operation_is_retried_with_back_off_and_shown_in_status_until_it_succeeds() {
    let dir = state_root();
    let sup = with_webhooks(dir.path());
    // A real provisioning failure: a regular file where the member's runtime dir must go.
    let users_run = sup.runtime_dir().join("users");
    std::fs::create_dir_all(&users_run).unwrap();
    let planted = users_run.join("wp42");
    std::fs::File::create(&planted).unwrap();

    assert_eq!(
        deliver(&sup, 1, "member.created", 1, "active", "shared"),
        202
    );
    eventually("status shows the failed operation", || {
        let status = sup.cli(["status"]).ok().stdout.clone();
        status.contains("webhook ops:  1 failed") && status.contains("wp42")
    });
    let json = sup.api("GET", "/v1/status", None).ok_json();
    let failure = &json["reconcile"]["recent_failures"][0];
    assert_eq!(failure["user_id"], "wp42", "{json}");
    assert!(
        failure["last_error"]
            .as_str()
            .unwrap()
            .contains("must be a directory"),
        "{failure}"
    );
    assert!(
        sup.registry_users().is_empty(),
        "the failed create left no row"
    );
    let attempts_then = failure["attempts"].as_i64().unwrap();

    // The operation itself, by id: `op list` finds it, `op show` says why it failed and when it retries.
    let listed = sup
        .cli(["op", "list", "--user", "wp42", "--json"])
        .ok()
        .json();
    let op_id = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let shown = sup.cli(["op", "show", &op_id]).ok().stdout.clone();
    assert!(shown.contains("state:        failed"), "{shown}");
    assert!(
        shown.contains("desired:      active shared (seq 1)"),
        "{shown}"
    );
    assert!(shown.contains("must be a directory"), "{shown}");
    assert!(shown.contains("next attempt: "), "{shown}");
    // Bad ids are refused with the reason; an unknown one is a 404.
    let bad = sup
        .cli(["op", "show", "not-a-uuid"])
        .fails_with(65)
        .stderr
        .clone();
    assert!(bad.contains("is not an operation id"), "{bad}");
    let unknown = sup
        .cli(["op", "show", "0193a0c4-0000-7000-8000-000000000000"])
        .fails_with(65)
        .stderr
        .clone();
    assert!(unknown.contains("no operation"), "{unknown}");
    assert_eq!(sup.api("GET", "/v1/operations/nobody", None).status, 400);

    // The cause goes away; the next retry (back-off 1 s, 2 s, …) converges without a new delivery.
    std::fs::remove_file(&planted).unwrap();
    eventually("the retry provisions the member", || {
        sup.registry_users() == vec![("wp42".to_owned(), "shared".to_owned())]
    });
    eventually("the operation is done", || operations_done(&sup, 1));
    let attempts: i64 = sup
        .registry()
        .query_row("SELECT attempts FROM webhook_operations", [], |r| r.get(0))
        .unwrap();
    assert!(
        attempts > attempts_then.max(1) - 1 && attempts >= 2,
        "{attempts}"
    );
    let status = sup.cli(["status"]).ok().stdout.clone();
    assert!(status.contains("webhook ops:  0 failed"), "{status}");
    let done = sup.cli(["op", "show", &op_id, "--json"]).ok().json();
    assert_eq!(done["state"], "done", "{done}");
    assert!(done["next_attempt_at"].is_null(), "{done}");
    assert!(done["last_error"].is_null(), "{done}");
}

#[test]
fn a_restarted_daemon_keeps_the_persisted_retry_schedule_of_a_failed_operation() {
    let dir = state_root();
    let secrets = dir.path().join("webhook-secrets.toml");
    write_secrets(&secrets);
    let mut sup = Supervisor::start_with(
        dir.path(),
        Options::default().set(
            "webhooks.secrets_file",
            &format!("{:?}", secrets.display().to_string()),
        ),
    );
    let users_run = sup.runtime_dir().join("users");
    std::fs::create_dir_all(&users_run).unwrap();
    let planted = users_run.join("wp42");
    std::fs::File::create(&planted).unwrap();
    assert_eq!(
        deliver(&sup, 1, "member.created", 1, "active", "shared"),
        202
    );
    let row = |sup: &Supervisor| -> (String, i64, Option<i64>) {
        sup.registry()
            .query_row(
                "SELECT state, attempts, next_attempt_at FROM webhook_operations",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    };
    eventually(
        "the first attempt failed with a next attempt recorded",
        || {
            let (state, _, next) = row(&sup);
            state == "failed" && next.is_some()
        },
    );
    sup.kill9();
    // What a long back-off looks like on disk: the next attempt is 4 s away.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let due = now + 4;
    rusqlite::Connection::open(sup.data_dir().join("wirebot.db"))
        .unwrap()
        .execute("UPDATE webhook_operations SET next_attempt_at = ?1", [due])
        .unwrap();
    let (_, attempts_before, _) = row(&sup);
    std::fs::remove_file(&planted).unwrap();
    let sup = sup.restart_after_kill();
    // The restarted daemon waits for the persisted time instead of retrying at once.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (state, attempts, _) = row(&sup);
    assert_eq!(
        (state.as_str(), attempts),
        ("failed", attempts_before),
        "retried before its persisted next attempt"
    );
    eventually("the retry at the persisted time converges", || {
        operations_done(&sup, 1)
    });
    let finished_at: i64 = sup
        .registry()
        .query_row("SELECT updated_at FROM webhook_operations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(finished_at >= due, "done at {finished_at}, due at {due}");
    assert_eq!(
        sup.registry_users(),
        vec![("wp42".to_owned(), "shared".to_owned())]
    );
}

/// Operations of different members converge concurrently, one member's run one at a time in arrival order: a
/// `members.sync` of 24 members (16 shared, 8 dedicated) and, right behind it, two changes of one member (to
/// dedicated, then back to shared) end with every operation done or superseded, every member where its last desired
/// state puts it, and no drift.
#[test]
fn a_sync_burst_converges_concurrently_and_a_members_last_change_wins() {
    tests::require_root!();
    let dir = state_root();
    let sup = with_webhooks(dir.path());
    let tier = |wp: u64| {
        if wp.is_multiple_of(3) {
            "dedicated"
        } else {
            "shared"
        }
    };
    let members: Vec<serde_json::Value> = (100..124)
        .map(|wp| json!({"user": {"wp_user_id": wp}, "seq": 1, "state": {"status": "active", "tier": tier(wp)}}))
        .collect();
    let post = |id: &str, body: String| {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signature = sign(id, ts, body.as_bytes());
        let ts = ts.to_string();
        sup.api_raw(
            "POST",
            "/v1/webhooks/wordpress",
            &[
                ("content-type", "application/json"),
                ("webhook-id", id),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &signature),
            ],
            body.as_bytes(),
        )
        .status
    };
    let sync = json!({"type": "members.sync", "timestamp": "2026-12-07T08:00:00Z",
        "data": {"site": SITE, "members": members}});
    assert!([200, 202].contains(&post("evt_01JDQ000000000000000000500", sync.to_string())));
    // wp101 (shared) changes twice while the burst converges: dedicated, then shared again.
    for (n, seq, t) in [(501, 2, "dedicated"), (502, 3, "shared")] {
        let change = json!({"type": "member.updated", "timestamp": "2026-12-07T08:00:01Z",
            "data": {"site": SITE, "user": {"wp_user_id": 101}, "seq": seq, "state": {"status": "active", "tier": t}}});
        assert_eq!(post(&format!("evt_01JDQ{n:021}"), change.to_string()), 202);
    }
    let states = || -> Vec<(String, i64)> {
        let db = sup.registry();
        let mut stmt = db
            .prepare("SELECT state, COUNT(*) FROM webhook_operations GROUP BY state ORDER BY state")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    eventually("every operation is done or superseded", || {
        states()
            .iter()
            .all(|(s, _)| s == "done" || s == "superseded")
    });
    let states = states();
    let total: i64 = states.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 26, "{states:?}");
    let placed: Vec<String> = {
        let db = sup.registry();
        let mut stmt = db.prepare("SELECT user_id FROM shard_members").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for wp in 100..124u64 {
        let id = format!("wp{wp}");
        let worker = worker_of(&sup, &id);
        if tier(wp) == "dedicated" {
            assert!(
                worker
                    .as_ref()
                    .is_some_and(|w| w["state"] == "ready" || w["state"] == "running"),
                "{id}: {worker:?}"
            );
            assert!(!placed.contains(&id), "{id} is on a shard");
        } else {
            assert!(placed.contains(&id), "{id} is not on a shard: {placed:?}");
            assert!(worker.is_none(), "{id} kept a dedicated worker: {worker:?}");
        }
    }
    eventually("no drift is left", || {
        sup.cli(["reconcile", "--dry-run"]).ok().stdout.trim() == "no drift"
    });
}
