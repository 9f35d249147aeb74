//! Benchmark driver for the webhook receiver (run by `tests/bench/webhooks.sh`): a burst of 1,000 `members.sync`
//! members in signed requests of 200, served on loopback into a real SQLite file, against a baseline of the same
//! 1,000 rows inserted unsigned, in 5 transactions of 200, into a plain SQLite table with the same pragmas. Also the
//! latency of one signed `member.created` → 202. Prints medians over rounds and the ratio; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::json;
use supervisor::webhook::{self, Store, WebhookState};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const SITE: &str = "https://network.example";
const MEMBERS: u64 = 1000;
const PER_REQUEST: u64 = 200;

fn sign(id: &str, ts: i64, body: &str) -> String {
    let key = STANDARD.decode(&SECRET[6..]).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Served {
    url: String,
    _dir: tempfile::TempDir,
    _rx: tokio::sync::mpsc::Receiver<webhook::ReconcileRequest>,
    server: tokio::task::JoinHandle<()>,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("registry.sqlite")).unwrap());
    let sites = webhook::secrets::parse_secrets(
        &format!("[[sites]]\nurl = \"{SITE}\"\nsecrets = [\"{SECRET}\"]\n"),
        std::path::Path::new("bench.toml"),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let state = WebhookState::new(store, sites, tx, tokio_util::sync::CancellationToken::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/webhooks/wordpress",
        listener.local_addr().unwrap()
    );
    let app = webhook::router(state);
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served {
        url,
        _dir: dir,
        _rx: rx,
        server,
    }
}

async fn post(http: &reqwest::Client, url: &str, id: &str, body: String) -> u16 {
    let ts = now();
    http.post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign(id, ts, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn sync_body(first: u64) -> String {
    let members: Vec<_> = (first..first + PER_REQUEST)
        .map(|wp| json!({"user": {"wp_user_id": wp, "email": format!("m{wp}@example.com"), "display_name": format!("Member {wp}")},
                         "seq": 1, "state": {"status": "active", "tier": if wp % 3 == 0 { "dedicated" } else { "shared" }}}))
        .collect();
    json!({"type": "members.sync", "timestamp": "2026-11-24T10:58:35Z", "data": {"site": SITE, "members": members}}).to_string()
}

/// Seconds to apply the 1,000-member burst through the receiver (bodies prepared beforehand).
async fn receiver_round(http: &reqwest::Client) -> f64 {
    let served = serve().await;
    let bodies: Vec<String> = (0..MEMBERS / PER_REQUEST)
        .map(|i| sync_body(1 + i * PER_REQUEST))
        .collect();
    let start = Instant::now();
    for (i, body) in bodies.into_iter().enumerate() {
        assert_eq!(
            post(http, &served.url, &format!("evt_sync{i}"), body).await,
            202
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    served.server.abort();
    elapsed
}

/// Seconds to insert the same 1,000 rows unsigned, 200 per transaction, with the store's pragmas.
fn baseline_round() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("baseline.sqlite")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE members (site TEXT, wp_user_id INTEGER, status TEXT, tier TEXT, seq INTEGER, PRIMARY KEY (site, wp_user_id))")
        .unwrap();
    let mut conn = conn;
    let start = Instant::now();
    for batch in 0..MEMBERS / PER_REQUEST {
        let tx = conn.transaction().unwrap();
        for wp in 1 + batch * PER_REQUEST..1 + (batch + 1) * PER_REQUEST {
            tx.execute(
                "INSERT INTO members VALUES (?1, ?2, 'active', 'shared', 1)",
                rusqlite::params![SITE, wp as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let _warmup = receiver_round(&http).await;
    let mut receiver = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..rounds {
        receiver.push(receiver_round(&http).await);
        baseline.push(baseline_round());
    }
    let (r, b) = (median(receiver), median(baseline));
    println!(
        "members.sync burst: {MEMBERS} members in {} signed requests of {PER_REQUEST}, {rounds} rounds (median)",
        MEMBERS / PER_REQUEST
    );
    println!(
        "  receiver  {:>9.0} members/s  ({:.1} ms per burst)",
        MEMBERS as f64 / r,
        r * 1e3
    );
    println!(
        "  baseline  {:>9.0} members/s  ({:.1} ms: unsigned inserts, 200 per transaction, same pragmas)",
        MEMBERS as f64 / b,
        b * 1e3
    );
    println!("  ratio     {:.2}x of the baseline", b / r);

    // One signed member.created → 202, sequentially, into one store.
    let served = serve().await;
    let mut latencies = Vec::new();
    for i in 0..300u64 {
        let body = json!({"type": "member.created", "timestamp": "2026-11-24T10:58:35Z",
                          "data": {"site": SITE, "user": {"wp_user_id": 10_000 + i}, "seq": 1, "state": {"status": "active", "tier": "shared"}}})
        .to_string();
        let start = Instant::now();
        assert_eq!(
            post(&http, &served.url, &format!("evt_created{i}"), body).await,
            202
        );
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "member.created → 202: p50 {:.2} ms, p99 {:.2} ms over {} sequential requests",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies.len()
    );
}
