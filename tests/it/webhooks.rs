//! Signed WordPress webhooks against the receiver on a real loopback port with a real SQLite file: every status code of
//! the contract, the test vector (and the PyPI `standardwebhooks` oracle), rotation, replay, dedup, `seq` ordering,
//! `members.sync`, and end to end from a real WordPress 6.1.9 with the `deploy/wordpress/wirebot` plugin.
//!
//! The receiver runs in-process (axum on 127.0.0.1:0) until the daemon mounts it; hostile requests are checked to leave
//! every webhook table byte-for-byte unchanged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use supervisor::webhook::{self, ReconcileRequest, Store, WebhookState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SITE: &str = "https://network.example";

/// The receiver served on a loopback port, with its SQLite file and the reconciler's end of the channel.
struct Receiver {
    addr: SocketAddr,
    db: PathBuf,
    state: WebhookState,
    store: Arc<Store>,
    reconcile: mpsc::Receiver<ReconcileRequest>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A response as the sender sees it.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts a problem+json answer with this status and code, and returns its detail.
    fn problem(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(
            body["type"],
            format!("https://wirebot/errors/{code}"),
            "{body}"
        );
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            !self.text.contains("C2FVsBQIhrscChlQIMV") && !self.text.contains("whsec_"),
            "secret echoed: {}",
            self.text
        );
        body["detail"].as_str().unwrap().to_owned()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard Webhooks v1 written out here, independently of the code under test.
fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn secrets_toml(secrets: &[&str]) -> String {
    let list: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[sites]]\nurl = \"{SITE}\"\nsecrets = [{}]\n",
        list.join(", ")
    )
}

fn write_private(path: &Path, text: &str, mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
}

fn event_id(n: u64) -> String {
    // evt_ + 26 Crockford base32 characters, like the plugin's ULIDs
    format!("evt_01JDQ{:021}", n)
}

fn member_event(kind: &str, wp_user_id: u64, seq: u64, status: &str, tier: &str) -> String {
    json!({"type": kind, "timestamp": "2026-11-24T10:58:35Z",
           "data": {"site": SITE, "user": {"wp_user_id": wp_user_id, "email": format!("u{wp_user_id}@example.com")},
                    "seq": seq, "state": {"status": status, "tier": tier}}})
    .to_string()
}

impl Receiver {
    async fn start(secrets: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let secrets_file = dir.path().join("webhook-secrets.toml");
        write_private(&secrets_file, &secrets_toml(secrets), 0o600);
        let sites = webhook::load_secrets(&secrets_file).unwrap();
        let db = dir.path().join("registry.sqlite");
        let store = Arc::new(Store::open(&db).unwrap());
        let (tx, reconcile) = mpsc::channel(4096);
        let shutdown = CancellationToken::new();
        let state = WebhookState::new(Arc::clone(&store), sites, tx, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = webhook::router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Receiver {
            addr,
            db,
            state,
            store,
            reconcile,
            shutdown,
            server,
            http,
            _dir: dir,
        }
    }

    /// Stops serving (connections refused from now on); the store and channel stay.
    fn stop(&mut self) {
        self.server.abort();
    }

    /// Serves again on the same address, with the same store, secrets and channel.
    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let app = webhook::router(self.state.clone());
        self.server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
    }

    fn url(&self) -> String {
        format!("http://{}/v1/webhooks/wordpress", self.addr)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        Answer {
            status,
            content_type,
            retry_after,
            text,
        }
    }

    /// POSTs `body` signed with `secrets` (all listed in webhook-signature) at timestamp `ts`.
    async fn post_signed_at(&self, secrets: &[&str], id: &str, ts: i64, body: &str) -> Answer {
        let signature: Vec<String> = secrets
            .iter()
            .map(|s| sign(s, id, ts, body.as_bytes()))
            .collect();
        self.send(
            self.http
                .post(self.url())
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature.join(" "))
                .body(body.to_owned()),
        )
        .await
    }

    async fn post(&self, id: &str, body: &str) -> Answer {
        self.post_signed_at(&[SECRET], id, now(), body).await
    }

    /// Every webhook table, row by row, as text: equal dumps mean the store is unchanged.
    fn dump(&self) -> String {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'webhook_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tables.sort();
        assert_eq!(tables.len(), 5, "{tables:?}");
        let mut out = String::new();
        for table in tables {
            out.push_str(&format!("== {table}\n"));
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
                .unwrap();
            let columns = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    Ok((0..columns)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap();
            for row in rows {
                out.push_str(&row.unwrap());
                out.push('\n');
            }
        }
        out
    }

    fn count(&self, sql: &str) -> i64 {
        rusqlite::Connection::open(&self.db)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    /// Receives the next reconcile request (the receiver sends it before answering).
    fn next_request(&mut self) -> ReconcileRequest {
        self.reconcile
            .try_recv()
            .expect("a reconcile request was sent before the answer")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Sends `send` and asserts it changed no webhook table.
async fn unchanged<F: std::future::Future<Output = Answer>>(
    receiver: &Receiver,
    send: F,
) -> Answer {
    let before = receiver.dump();
    let answer = send.await;
    assert_eq!(
        receiver.dump(),
        before,
        "a rejected delivery changed the store: {answer:?}"
    );
    answer
}

#[test]
fn contract_test_vector_signs_as_documented() {
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let expected = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    assert_eq!(
        sign(SECRET, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
        expected
    );
    let secret = webhook::Secret::parse(SECRET).unwrap();
    assert_eq!(
        webhook::signature::sign(&secret, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
        expected
    );
}

#[test]
fn signatures_agree_with_the_pypi_standardwebhooks_oracle() {
    let Some(python) = tests::wordpress::python_oracle() else {
        eprintln!(
            "SKIP signatures_agree_with_the_pypi_standardwebhooks_oracle: PyPI standardwebhooks 1.1.0 unavailable"
        );
        return;
    };
    let ts = now();
    let body = member_event("member.created", 42, 1, "active", "shared");
    let ours = webhook::signature::sign(
        &webhook::Secret::parse(NEW_SECRET).unwrap(),
        "evt_oracle",
        ts,
        body.as_bytes(),
    );
    // The oracle verifies our signature, then signs the same message for us to verify.
    let script = r#"
import sys, json
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, sig, body = sys.argv[1:6]
wh = Webhook(secret)
wh.verify(body, {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig})
from datetime import datetime, timezone
print(wh.sign(msg_id, datetime.fromtimestamp(int(ts), tz=timezone.utc), body))
"#;
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            script,
            NEW_SECRET,
            "evt_oracle",
            &ts.to_string(),
            &ours,
            &body,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "oracle rejected our signature: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(theirs, ours);
    let sites = vec![webhook::SiteSecrets {
        url: SITE.into(),
        secrets: vec![webhook::Secret::parse(NEW_SECRET).unwrap()],
    }];
    webhook::signature::verify(
        &sites,
        "evt_oracle",
        &ts.to_string(),
        &theirs,
        body.as_bytes(),
    )
    .unwrap();
}

#[tokio::test]
async fn accepted_then_replayed_then_reused_then_stale() {
    let mut receiver = Receiver::start(&[SECRET]).await;
    let created = member_event("member.created", 42, 1, "active", "shared");

    let first = receiver.post(&event_id(1), &created).await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.content_type, "application/json");
    let body = first.json();
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["event_id"], event_id(1));
    assert_eq!(body["user_id"], "wp42");
    let request = receiver.next_request();
    assert_eq!(request.user_id.as_str(), "wp42");
    assert_eq!(body["operation_id"], request.operation_id.to_string());
    assert_eq!(
        request.desired,
        webhook::DesiredState {
            status: webhook::Status::Active,
            tier: webhook::Tier::Shared
        }
    );

    // A retry: same id and body, fresh timestamp → the stored answer, nothing new enqueued.
    let retry = unchanged(&receiver, receiver.post(&event_id(1), &created)).await;
    assert_eq!((retry.status, retry.json()), (202, body.clone()));
    assert!(receiver.reconcile.try_recv().is_err());

    // The same id with another body.
    let other = member_event("member.created", 42, 2, "active", "dedicated");
    let detail = unchanged(&receiver, receiver.post(&event_id(1), &other))
        .await
        .problem(409, "idempotency_key_reused");
    assert!(detail.contains(&event_id(1)), "{detail}");

    // Out of order: seq 3 arrives, then seq 2.
    let tier3 = member_event("member.tier_changed", 42, 3, "active", "dedicated");
    assert_eq!(receiver.post(&event_id(3), &tier3).await.status, 202);
    let op3 = receiver.next_request();
    let tier2 = member_event("member.tier_changed", 42, 2, "active", "none");
    let stale = receiver.post(&event_id(2), &tier2).await;
    assert_eq!(stale.status, 200, "{}", stale.text);
    assert_eq!(stale.json()["status"], "stale_ignored");
    assert!(receiver.reconcile.try_recv().is_err());
    let (desired, seq) = receiver
        .store
        .desired(&"wp42".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((desired.tier, seq), (webhook::Tier::Dedicated, 3));

    // The first operation was superseded by the second; once the reconciler finishes, an unchanged state is "applied".
    assert_eq!(
        receiver.count("SELECT COUNT(*) FROM webhook_operations WHERE state = 'superseded'"),
        1
    );
    assert!(
        receiver
            .store
            .start_operation(op3.operation_id, now())
            .unwrap()
    );
    assert!(
        !receiver
            .store
            .start_operation(request.operation_id, now())
            .unwrap(),
        "superseded ops are skipped"
    );
    receiver
        .store
        .finish_operation(op3.operation_id, Ok(()), None, now())
        .unwrap();
    let updated = member_event("member.updated", 42, 4, "active", "dedicated");
    let applied = receiver.post(&event_id(4), &updated).await;
    assert_eq!(applied.status, 200, "{}", applied.text);
    assert_eq!(applied.json()["status"], "applied");
    assert!(receiver.reconcile.try_recv().is_err());
}

#[tokio::test]
async fn hostile_requests_get_their_status_code_and_change_nothing() {
    let receiver = Receiver::start(&[SECRET]).await;
    assert_eq!(
        receiver
            .post(
                &event_id(1),
                &member_event("member.created", 7, 1, "active", "shared")
            )
            .await
            .status,
        202
    );
    let body = member_event("member.created", 8, 1, "active", "shared");
    let ts = now();
    let id = event_id(2);
    let sig = sign(SECRET, &id, ts, body.as_bytes());
    let post = || {
        receiver
            .http
            .post(receiver.url())
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", &sig)
    };

    // 405
    let answer = unchanged(&receiver, receiver.send(receiver.http.get(receiver.url()))).await;
    answer.problem(405, "method_not_allowed");
    // 415: no content type, then text/plain
    unchanged(&receiver, receiver.send(post().body(body.clone())))
        .await
        .problem(415, "unsupported_media_type");
    let plain = post()
        .header("content-type", "text/plain")
        .body(body.clone());
    unchanged(&receiver, receiver.send(plain))
        .await
        .problem(415, "unsupported_media_type");
    // 413, declared by Content-Length
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let oversize = post().header("content-type", "application/json").body(big);
    unchanged(&receiver, receiver.send(oversize))
        .await
        .problem(413, "payload_too_large");
    // 413, chunked without Content-Length: refused while streaming
    let chunked = unchanged(&receiver, chunked_post(receiver.addr, 70 * 1024)).await;
    chunked.problem(413, "payload_too_large");
    // 401 invalid_signature: wrong secret, tampered body, empty signature, missing header
    let json = |b: reqwest::RequestBuilder| b.header("content-type", "application/json");
    let wrong = json(receiver.http.post(receiver.url()))
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            sign(NEW_SECRET, &id, ts, body.as_bytes()),
        )
        .body(body.clone());
    unchanged(&receiver, receiver.send(wrong))
        .await
        .problem(401, "invalid_signature");
    let tampered = json(post()).body(body.replace("shared", "dedicated"));
    unchanged(&receiver, receiver.send(tampered))
        .await
        .problem(401, "invalid_signature");
    let empty = json(receiver.http.post(receiver.url()))
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", "v1,")
        .body(body.clone());
    let detail = unchanged(&receiver, receiver.send(empty))
        .await
        .problem(401, "invalid_signature");
    assert!(detail.contains("no v1 signature"), "{detail}");
    let unsigned = json(receiver.http.post(receiver.url()))
        .header("webhook-id", &id)
        .body(body.clone());
    let detail = unchanged(&receiver, receiver.send(unsigned))
        .await
        .problem(401, "invalid_signature");
    assert!(detail.contains("webhook-timestamp"), "{detail}");
    // 401 timestamp_out_of_window, both ways
    for skew in [-301, 301] {
        let answer = unchanged(
            &receiver,
            receiver.post_signed_at(&[SECRET], &id, now() + skew, &body),
        )
        .await;
        let detail = answer.problem(401, "timestamp_out_of_window");
        assert!(detail.contains("300 s"), "{detail}");
    }
    // 400 malformed_json (signed, so it reaches step 4)
    unchanged(&receiver, receiver.post(&id, "{\"type\": "))
        .await
        .problem(400, "malformed_json");
    unchanged(&receiver, receiver.post(&id, "not json at all"))
        .await
        .problem(400, "malformed_json");
    // 422 invalid_payload with pointers
    for (bad, pointer) in [
        (
            member_event("member.created", 8, 1, "active", "gold"),
            "/data/state/tier",
        ),
        (
            member_event("member.created", 8, 1, "paused", "shared"),
            "/data/state/status",
        ),
        (
            member_event("member.created", 8, 1, "suspended", "shared"),
            "/data/state/status",
        ),
        (
            member_event("member.exploded", 8, 1, "active", "shared"),
            "/type",
        ),
        (
            member_event("member.created", 8, 1, "active", "shared")
                .replace(SITE, "https://other.example"),
            "/data/site",
        ),
        (
            member_event("member.created", 8, 1, "active", "shared")
                .replace("\"seq\":1", "\"seq\":\"1\""),
            "/data/seq",
        ),
    ] {
        let detail = unchanged(&receiver, receiver.post(&id, &bad))
            .await
            .problem(422, "invalid_payload");
        assert!(detail.starts_with(pointer), "{pointer}: {detail}");
        assert!(
            !detail.contains("gold") && !detail.contains("paused"),
            "value echoed: {detail}"
        );
    }
    // 503 store_busy with Retry-After while another writer holds the database (the registry mid-migration, say)
    let blocker = rusqlite::Connection::open(&receiver.db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let answer = unchanged(&receiver, receiver.post(&id, &body)).await;
    answer.problem(503, "store_busy");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    // 503 with Retry-After while shutting down
    receiver.shutdown.cancel();
    let answer = unchanged(&receiver, receiver.post(&id, &body)).await;
    answer.problem(503, "shutting_down");
    assert_eq!(answer.retry_after.as_deref(), Some("5"));
}

/// A POST with a chunked body of `size` bytes and no Content-Length, on a raw socket.
async fn chunked_post(addr: SocketAddr, size: usize) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/webhooks/wordpress HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         webhook-id: evt_chunked\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,AAAA\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        now()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 8192];
    for _ in 0..size / chunk.len() + 1 {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break; // the server answered and closed early: exactly what a size cap does
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Answer {
        status,
        content_type,
        retry_after: None,
        text: body,
    }
}

#[tokio::test]
async fn identity_conflicts_are_refused_and_change_nothing() {
    let mut receiver = Receiver::start(&[SECRET]).await;
    let with_leader = |wp: u64, seq: u64, leader: &str| {
        json!({"type": "member.updated", "timestamp": "2026-11-24T10:58:35Z",
               "data": {"site": SITE, "user": {"wp_user_id": wp, "ring_leader_id": leader},
                        "seq": seq, "state": {"status": "active", "tier": "shared"}}})
        .to_string()
    };
    assert_eq!(
        receiver
            .post(&event_id(1), &with_leader(42, 1, "rl_7f3a"))
            .await
            .status,
        202
    );
    assert_eq!(
        receiver
            .post(&event_id(2), &with_leader(43, 1, "rl_other"))
            .await
            .status,
        202
    );
    // wp 42 rebound to another ring leader; wp 44 claiming wp 42's ring leader
    let detail = unchanged(
        &receiver,
        receiver.post(&event_id(3), &with_leader(42, 2, "rl_other2")),
    )
    .await
    .problem(409, "identity_conflict");
    assert!(
        detail.contains("wp42") && detail.contains("another ring_leader_id"),
        "{detail}"
    );
    let detail = unchanged(
        &receiver,
        receiver.post(&event_id(4), &with_leader(44, 1, "rl_7f3a")),
    )
    .await
    .problem(409, "identity_conflict");
    assert!(detail.contains("another wp_user_id"), "{detail}");

    // Delete wp 43; once the reconciler has archived it (tombstone), a late created with a higher seq is refused.
    let deleted = member_event("member.deleted", 43, 5, "deleted", "none");
    assert_eq!(receiver.post(&event_id(5), &deleted).await.status, 202);
    let created = member_event("member.created", 43, 6, "active", "shared");
    unchanged(&receiver, receiver.post(&event_id(6), &created))
        .await
        .problem(409, "identity_conflict");
    while receiver.reconcile.try_recv().is_ok() {}
    receiver
        .store
        .write_tombstone(&"wp43".parse().unwrap(), now())
        .unwrap();
    let detail = unchanged(&receiver, receiver.post(&event_id(7), &created))
        .await
        .problem(409, "identity_conflict");
    assert!(detail.contains("tombstoned"), "{detail}");
    // A late created with an older seq is merely stale.
    let late = member_event("member.created", 43, 1, "active", "shared");
    assert_eq!(
        receiver.post(&event_id(8), &late).await.json()["status"],
        "stale_ignored"
    );
}

#[tokio::test]
async fn rotation_accepts_dual_signed_then_only_the_new_secret() {
    let receiver = Receiver::start(&[SECRET]).await;
    let body = |seq| member_event("member.updated", 9, seq, "active", "shared");
    // 1. The supervisor adds the new secret: old-only, new-only and dual-signed deliveries all verify.
    receiver.state.set_sites(sites(&[SECRET, NEW_SECRET]));
    assert_eq!(
        receiver
            .post_signed_at(&[SECRET], &event_id(1), now(), &body(1))
            .await
            .status,
        202
    );
    assert_eq!(
        receiver
            .post_signed_at(&[SECRET, NEW_SECRET], &event_id(2), now(), &body(2))
            .await
            .status,
        202
    );
    assert_eq!(
        receiver
            .post_signed_at(&[NEW_SECRET], &event_id(3), now(), &body(3))
            .await
            .status,
        202
    );
    // 2. The old secret is removed: dual-signed and new-only still verify, old-only does not.
    receiver.state.set_sites(sites(&[NEW_SECRET]));
    assert_eq!(
        receiver
            .post_signed_at(&[SECRET, NEW_SECRET], &event_id(4), now(), &body(4))
            .await
            .status,
        202
    );
    assert_eq!(
        receiver
            .post_signed_at(&[NEW_SECRET], &event_id(5), now(), &body(5))
            .await
            .status,
        202
    );
    let old = unchanged(
        &receiver,
        receiver.post_signed_at(&[SECRET], &event_id(6), now(), &body(6)),
    )
    .await;
    old.problem(401, "invalid_signature");
}

fn sites(secrets: &[&str]) -> Vec<webhook::SiteSecrets> {
    webhook::secrets::parse_secrets(&secrets_toml(secrets), Path::new("test.toml")).unwrap()
}

#[tokio::test]
async fn a_replayed_old_delivery_is_refused_but_its_fresh_retry_is_answered() {
    let receiver = Receiver::start(&[SECRET]).await;
    let body = member_event("member.created", 11, 1, "active", "dedicated");
    // Captured 10 minutes ago with a valid signature: outside the window.
    let old = unchanged(
        &receiver,
        receiver.post_signed_at(&[SECRET], &event_id(1), now() - 600, &body),
    )
    .await;
    old.problem(401, "timestamp_out_of_window");
    // The sender's retry carries a fresh timestamp and the same id: accepted once, then replayed.
    let fresh = receiver.post(&event_id(1), &body).await;
    assert_eq!(fresh.status, 202, "{}", fresh.text);
    let again = receiver.post(&event_id(1), &body).await;
    assert_eq!(again.json(), fresh.json());
}

#[tokio::test]
async fn members_sync_applies_two_hundred_per_request_and_reports_each() {
    let mut receiver = Receiver::start(&[SECRET]).await;
    // wp 1 is already known at seq 5 → stale in the sync; the rest are new.
    assert_eq!(
        receiver
            .post(
                &event_id(1),
                &member_event("member.created", 1, 5, "active", "shared")
            )
            .await
            .status,
        202
    );
    receiver.next_request();
    let members: Vec<Value> = (1..=200)
        .map(|wp| json!({"user": {"wp_user_id": wp}, "seq": 1, "state": {"status": "active", "tier": if wp % 2 == 0 { "dedicated" } else { "shared" }}}))
        .collect();
    let sync = json!({"type": "members.sync", "timestamp": "2026-11-24T10:58:35Z", "data": {"site": SITE, "members": members}}).to_string();
    let answer = receiver.post(&event_id(2), &sync).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let results = answer.json()["members"].as_array().unwrap().clone();
    assert_eq!(results.len(), 200);
    assert_eq!(results[0]["status"], "stale_ignored");
    assert!(
        results[1..].iter().all(|r| r["status"] == "accepted"),
        "{results:?}"
    );
    let mut requests = 0;
    while receiver.reconcile.try_recv().is_ok() {
        requests += 1;
    }
    assert_eq!(requests, 199);
    assert_eq!(receiver.count("SELECT COUNT(*) FROM webhook_desired"), 200);
    // 201 members is one too many.
    let too_many: Vec<Value> =
        (1..=201).map(|wp| json!({"user": {"wp_user_id": wp}, "seq": 9, "state": {"status": "active", "tier": "none"}})).collect();
    let sync = json!({"type": "members.sync", "timestamp": "2026-11-24T10:58:35Z", "data": {"site": SITE, "members": too_many}}).to_string();
    let detail = unchanged(&receiver, receiver.post(&event_id(3), &sync))
        .await
        .problem(422, "invalid_payload");
    assert!(detail.starts_with("/data/members"), "{detail}");
}

#[tokio::test]
async fn webhook_test_and_ping_answer_without_state_changes() {
    let receiver = Receiver::start(&[SECRET]).await;
    let ping = receiver
        .send(receiver.http.get(format!(
            "http://{}/v1/webhooks/wordpress/ping",
            receiver.addr
        )))
        .await;
    assert_eq!(
        (ping.status, ping.json()["status"].clone()),
        (200, json!("ok"))
    );
    let test = json!({"type": "webhook.test", "timestamp": "2026-11-24T10:58:35Z", "data": {"site": SITE}}).to_string();
    let answer = receiver.post(&event_id(1), &test).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["status"], "ok");
    assert_eq!(receiver.count("SELECT COUNT(*) FROM webhook_members"), 0);
}

#[test]
fn a_secrets_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    write_private(&path, &secrets_toml(&[SECRET]), 0o644);
    let err = webhook::load_secrets(&path).unwrap_err().to_string();
    assert!(
        err.contains("mode 644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("C2FV"), "{err}");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(webhook::load_secrets(&path).unwrap()[0].secrets.len(), 1);
}

/// A JSON field as text, whether the database driver returned it as a number or a string.
fn text(row: &Value, key: &str) -> String {
    match &row[key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordpress_users_reach_the_receiver_and_converge_after_an_outage() {
    if let Err(reason) = tests::wordpress::prepared() {
        eprintln!("SKIP wordpress_users_reach_the_receiver_and_converge_after_an_outage: {reason}");
        return;
    }
    let mut receiver = Receiver::start(&[SECRET]).await;
    let wp = tests::wordpress::WordPress::install(&receiver.url(), NEW_SECRET).unwrap();
    // The supervisor's secrets file names the site by the URL the plugin sends in data.site.
    let site = format!(
        "[[sites]]\nurl = \"{}\"\nsecrets = [\"{NEW_SECRET}\"]\n",
        wp.url
    );
    receiver
        .state
        .set_sites(webhook::secrets::parse_secrets(&site, Path::new("test.toml")).unwrap());

    // 1. A new WordPress user → outbox → wp-cron → signed member.created → 202 → a reconcile request.
    let ann: u64 = wp
        .php("echo wp_create_user('ann', 'ann-password', 'ann@example.com');")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rows = wp.outbox().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (text(&rows[0], "type"), text(&rows[0], "status")),
        ("member.created".into(), "pending".into())
    );
    assert_eq!(wp.run_cron().unwrap(), 200);
    let rows = wp.outbox().unwrap();
    assert_eq!(
        (text(&rows[0], "status"), text(&rows[0], "last_code")),
        ("delivered".into(), "202".into()),
        "{rows:?}"
    );
    let ann_id = text(&rows[0], "event_id");
    assert!(ann_id.starts_with("evt_") && ann_id.len() == 30, "{ann_id}");
    let request = receiver.next_request();
    assert_eq!(request.user_id.as_str(), format!("wp{ann}"));
    assert_eq!(
        request.desired,
        webhook::DesiredState {
            status: webhook::Status::Active,
            tier: webhook::Tier::Shared
        }
    );

    // 2. The receiver is down: the attempt fails and is kept for a retry.
    receiver.stop();
    let bob: u64 = wp
        .php("echo wp_create_user('bob', 'bob-password', 'bob@example.com');")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wp.run_cron().unwrap(), 200);
    let rows = wp.outbox().unwrap();
    let bob_row = rows
        .iter()
        .find(|r| text(r, "wp_user_id") == bob.to_string())
        .unwrap()
        .clone();
    assert_eq!(
        (
            text(&bob_row, "status"),
            text(&bob_row, "attempts"),
            text(&bob_row, "last_code")
        ),
        ("pending".into(), "1".into(), "0".into()),
        "{bob_row}"
    );
    assert!(!text(&bob_row, "last_error").is_empty(), "{bob_row}");
    let bob_id = text(&bob_row, "event_id");
    assert_eq!(
        receiver.count(&format!(
            "SELECT COUNT(*) FROM webhook_dedup WHERE webhook_id = '{bob_id}'"
        )),
        0
    );

    // 3. Back up: the retry carries the same webhook-id (a fresh timestamp and signature) and converges.
    receiver.restart().await;
    assert_eq!(wp.run_cron().unwrap(), 200);
    let rows = wp.outbox().unwrap();
    let bob_row = rows.iter().find(|r| text(r, "event_id") == bob_id).unwrap();
    assert_eq!(
        (
            text(bob_row, "status"),
            text(bob_row, "attempts"),
            text(bob_row, "last_code")
        ),
        ("delivered".into(), "2".into(), "202".into()),
        "{bob_row}"
    );
    assert_eq!(
        receiver.count(&format!(
            "SELECT COUNT(*) FROM webhook_dedup WHERE webhook_id = '{bob_id}' AND status = 202"
        )),
        1
    );
    assert_eq!(receiver.next_request().user_id.as_str(), format!("wp{bob}"));

    // 4. Deleting ann sends member.deleted with a higher seq; the desired state becomes deleted.
    wp.php(&format!(
        "require_once ABSPATH . 'wp-admin/includes/user.php'; var_export(wp_delete_user({ann}));"
    ))
    .unwrap();
    assert_eq!(wp.run_cron().unwrap(), 200);
    let rows = wp.outbox().unwrap();
    let deleted = rows
        .iter()
        .find(|r| text(r, "type") == "member.deleted")
        .unwrap();
    assert_eq!(
        (text(deleted, "status"), text(deleted, "seq")),
        ("delivered".into(), "2".into()),
        "{deleted}"
    );
    let (desired, seq) = receiver
        .store
        .desired(&format!("wp{ann}").parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((desired.status, seq), (webhook::Status::Deleted, 2));
}

/// Installs WordPress delivering to `receiver` (which accepts `secrets` for the site), or prints why it must skip.
async fn wordpress_for(
    receiver: &Receiver,
    plugin_secret: &str,
    accepted: &[&str],
    test: &str,
) -> Option<tests::wordpress::WordPress> {
    if let Err(reason) = tests::wordpress::prepared() {
        eprintln!("SKIP {test}: {reason}");
        return None;
    }
    let wp = tests::wordpress::WordPress::install(&receiver.url(), plugin_secret).unwrap();
    receiver.state.set_sites(site_secrets(&wp.url, accepted));
    Some(wp)
}

fn site_secrets(url: &str, secrets: &[&str]) -> Vec<webhook::SiteSecrets> {
    let list: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    let text = format!(
        "[[sites]]\nurl = \"{url}\"\nsecrets = [{}]\n",
        list.join(", ")
    );
    webhook::secrets::parse_secrets(&text, Path::new("test.toml")).unwrap()
}

/// The newest outbox row of a type.
fn newest(wp: &tests::wordpress::WordPress, kind: &str) -> Value {
    wp.outbox()
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| text(r, "type") == kind)
        .unwrap_or_else(|| panic!("no {kind} row"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordpress_plugin_signs_classifies_and_rotates_per_the_contract() {
    let mut receiver = Receiver::start(&[SECRET]).await;
    let Some(wp) = wordpress_for(
        &receiver,
        SECRET,
        &[SECRET],
        "wordpress_plugin_signs_classifies_and_rotates_per_the_contract",
    )
    .await
    else {
        return;
    };
    // The PHP signer reproduces the contract's test vector; event ids are evt_ + a 26-character ULID.
    let php_sig = wp
        .php(r#"echo wirebot_signature('whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD', 'msg_27UH4WbU6Z5A5EzD8u03UvzRbpk', 1649367553, '{"email":"test@example.com","username":"test_user"}');"#)
        .unwrap();
    assert_eq!(php_sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    let id = wp.php("echo wirebot_event_id();").unwrap();
    assert!(
        id.len() == 30
            && id.starts_with("evt_")
            && id[4..]
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
        "{id}"
    );
    // §5 classification, one answer per status code.
    let classes = wp
        .php("foreach ([200,202,204,301,302,400,401,403,404,408,409,410,413,415,422,425,429,500,502,503,504] as $c) echo $c, '=', wirebot_classify($c), ' ';")
        .unwrap();
    assert_eq!(
        classes.trim(),
        "200=done 202=done 204=done 301=retry 302=retry 400=dead 401=dead 403=dead 404=dead 408=retry 409=dead 410=disable \
         413=dead 415=dead 422=dead 425=retry 429=retry 500=retry 502=retry 503=retry 504=retry"
    );

    // A 401 (the supervisor does not know the plugin's secret) is a dead letter with an admin notice, not a retry.
    receiver
        .state
        .set_sites(site_secrets(&wp.url, &[NEW_SECRET]));
    let carol: u64 = wp
        .php("echo wp_create_user('carol', 'pw-carol', 'carol@example.com');")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wp.run_cron().unwrap();
    let row = newest(&wp, "member.created");
    assert_eq!(
        (text(&row, "status"), text(&row, "last_code")),
        ("dead".into(), "401".into()),
        "{row}"
    );
    assert!(
        text(&row, "last_error").starts_with("invalid_signature"),
        "{row}"
    );
    assert_eq!(wp.php("echo wirebot_outbox_dead_count();").unwrap(), "1");
    let notice = wp
        .php("wp_set_current_user(1); do_action('admin_notices');")
        .unwrap();
    assert!(
        notice.contains("1 event could not be delivered"),
        "{notice}"
    );
    // The operator fixes the secret and replays: same id, same body, delivered.
    receiver.state.set_sites(site_secrets(&wp.url, &[SECRET]));
    let carol_id = text(&row, "event_id");
    assert_eq!(
        wp.php(&format!("var_export(wirebot_outbox_replay('{carol_id}'));"))
            .unwrap(),
        "true"
    );
    wp.run_cron().unwrap();
    let row = newest(&wp, "member.created");
    assert_eq!(
        (
            text(&row, "event_id"),
            text(&row, "status"),
            text(&row, "last_code")
        ),
        (carol_id, "delivered".into(), "202".into())
    );
    assert_eq!(
        receiver.next_request().user_id.as_str(),
        format!("wp{carol}")
    );

    // Rotation: the plugin dual-signs; the supervisor first knows only the old secret, then only the new one.
    let new_secret = wp.php("echo wirebot_rotate_secret(7);").unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != SECRET);
    let update =
        |name: &str| format!("wp_update_user(['ID' => {carol}, 'display_name' => '{name}']);");
    wp.php(&update("Carol One")).unwrap();
    wp.run_cron().unwrap();
    assert_eq!(text(&newest(&wp, "member.updated"), "last_code"), "202");
    receiver
        .state
        .set_sites(site_secrets(&wp.url, &[&new_secret]));
    wp.php(&update("Carol Two")).unwrap();
    wp.run_cron().unwrap();
    assert_eq!(text(&newest(&wp, "member.updated"), "last_code"), "202");
    wp.php("wirebot_finish_rotation();").unwrap();
    wp.php(&update("Carol Three")).unwrap();
    wp.run_cron().unwrap();
    let row = newest(&wp, "member.updated");
    assert_eq!(
        (text(&row, "status"), text(&row, "seq")),
        ("delivered".into(), "4".into()),
        "{row}"
    );

    // 503 with Retry-After while the supervisor shuts down: kept for a retry no sooner than Retry-After.
    receiver.shutdown.cancel();
    wp.php(&update("Carol Four")).unwrap();
    wp.run_cron().unwrap();
    let row = newest(&wp, "member.updated");
    assert_eq!(
        (text(&row, "status"), text(&row, "last_code")),
        ("pending".into(), "503".into()),
        "{row}"
    );
    let wait: i64 = wp
        .php(&format!(
            "global $wpdb; echo $wpdb->get_var(\"SELECT next_at - updated_at FROM {{$wpdb->prefix}}wirebot_outbox WHERE event_id = '{}'\");",
            text(&row, "event_id")
        ))
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 5, "Retry-After 5 ignored: next attempt in {wait} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordpress_memberpress_and_buddyboss_events_drive_tier_and_status() {
    let mut receiver = Receiver::start(&[SECRET]).await;
    let test = "wordpress_memberpress_and_buddyboss_events_drive_tier_and_status";
    let Some(wp) = wordpress_for(&receiver, SECRET, &[SECRET], test).await else {
        return;
    };
    wp.php("update_option('wirebot_tier_map', [15 => 'dedicated', 16 => 'shared']); update_option('wirebot_default_tier', 'none');").unwrap();
    let dan: u64 = wp
        .php("echo wp_create_user('dan', 'pw-dan', 'dan@example.com');")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wp.run_cron().unwrap();
    let desired = |receiver: &Receiver| {
        receiver
            .store
            .desired(&format!("wp{dan}").parse().unwrap())
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        desired(&receiver).0,
        webhook::DesiredState {
            status: webhook::Status::Active,
            tier: webhook::Tier::None
        }
    );
    receiver.next_request();

    // Buying membership 16 (shared) then 15 (dedicated): the highest active one wins.
    let mepr = |memberships: &str, action: &str, product: u32, event: u32| {
        wp.php(&format!(
            "wirebot_test_mepr({dan}, [{memberships}], '{action}', {product}, {event});"
        ))
        .unwrap();
        wp.run_cron().unwrap();
    };
    mepr("16", "mepr-event-transaction-completed", 16, 1);
    assert_eq!(desired(&receiver).0.tier, webhook::Tier::Shared);
    mepr("16, 15", "mepr-event-transaction-completed", 15, 2);
    let body: Value = serde_json::from_str(&wp.php("wirebot_test_last_body();").unwrap()).unwrap();
    assert_eq!(body["type"], "member.tier_changed");
    assert_eq!(
        body["data"]["previous"],
        json!({"status": "active", "tier": "shared"})
    );
    assert_eq!(body["data"]["cause"]["mepr_event_id"], 2);
    assert_eq!(desired(&receiver).0.tier, webhook::Tier::Dedicated);
    // A cancellation changes nothing (access lasts until the period ends).
    let rows_before = wp.outbox().unwrap().len();
    mepr("16, 15", "mepr-event-subscription-stopped", 15, 3);
    assert_eq!(wp.outbox().unwrap().len(), rows_before);
    // 15 expires: back to shared; then 16 expires too: suspended, reason expired.
    mepr("16", "mepr-event-subscription-expired", 15, 4);
    assert_eq!(
        desired(&receiver).0,
        webhook::DesiredState {
            status: webhook::Status::Active,
            tier: webhook::Tier::Shared
        }
    );
    mepr("", "mepr-event-subscription-expired", 16, 5);
    let body: Value = serde_json::from_str(&wp.php("wirebot_test_last_body();").unwrap()).unwrap();
    assert_eq!(
        (
            body["type"].as_str(),
            body["data"]["cause"]["reason"].as_str()
        ),
        (Some("member.suspended"), Some("expired"))
    );
    assert_eq!(desired(&receiver).0.status, webhook::Status::Suspended);
    // Paying again reactivates.
    mepr("15", "mepr-account-is-active", 15, 6);
    assert_eq!(
        desired(&receiver).0,
        webhook::DesiredState {
            status: webhook::Status::Active,
            tier: webhook::Tier::Dedicated
        }
    );
    // BuddyBoss moderation suspends and unsuspends.
    wp.php(&format!("do_action('bp_suspend_user_suspended', {dan});"))
        .unwrap();
    wp.run_cron().unwrap();
    let body: Value = serde_json::from_str(&wp.php("wirebot_test_last_body();").unwrap()).unwrap();
    assert_eq!(body["data"]["cause"]["reason"], "moderation");
    assert_eq!(desired(&receiver).0.status, webhook::Status::Suspended);
    wp.php(&format!("do_action('bp_suspend_user_unsuspended', {dan});"))
        .unwrap();
    wp.run_cron().unwrap();
    assert_eq!(newest(&wp, "member.reactivated")["status"], "delivered");
    let (state, seq) = desired(&receiver);
    assert_eq!((state.status, seq), (webhook::Status::Active, 8));

    // A full resync reports every user at their current seq: dan is stale for the supervisor, while the admin (created
    // before the plugin was active, so never announced) is new: the sweep repairs what events missed.
    wp.php("wirebot_enqueue_full_sync();").unwrap();
    wp.run_cron().unwrap();
    let row = newest(&wp, "members.sync");
    assert_eq!(
        (text(&row, "status"), text(&row, "last_code")),
        ("delivered".into(), "202".into()),
        "{row}"
    );
    assert_eq!(desired(&receiver).1, 8);
    let admin = receiver
        .store
        .desired(&"wp1".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        admin,
        (
            webhook::DesiredState {
                status: webhook::Status::Active,
                tier: webhook::Tier::None
            },
            1
        )
    );
    while receiver.reconcile.try_recv().is_ok() {}
}
