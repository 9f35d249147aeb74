//! End-to-end: the real daemon's shared tier: shared members become agents of a shard worker running as the shared uid
//! (more shards past `shared.max_agents_per_worker`), reached through the proxy with their own token only; adding and
//! removing members hot-reloads the shard without dropping other members' WebSockets; tier moves carry the member's
//! sessions both ways; a restarted daemon re-adopts the shard; a shared member's schedule becomes cron jobs in its own
//! dir that fire through the shard and follow it across tier moves.

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use serde_json::{Value, json};
use tests::supervisor::{Options, Supervisor};
use tests::worker::WsClient;

use crate::e2e_lifecycle::{alive, eventually, state_root, worker_of};

/// `user add <id> --tier <tier>`; the token the CLI printed once.
fn add(sup: &Supervisor, id: &str, tier: &str) -> String {
    let out = sup.cli(["user", "add", id, "--tier", tier]);
    out.ok();
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("gateway token (shown once): "))
        .unwrap_or_else(|| panic!("no token in: {}", out.stdout))
        .trim()
        .to_owned()
}

fn status_field(pid: i64, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap()
        .trim()
        .to_owned()
}

fn get(sup: &Supervisor, path: &str, token: &str) -> u16 {
    sup.proxy(
        "GET",
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .status
}

/// A protocol v3 client through the daemon's proxy on the member's path, as a browser would (`?token=`).
async fn ws(sup: &Supervisor, id: &str, token: &str) -> WsClient {
    let url = format!("ws://{}/u/{id}/?token={token}", sup.addr("proxy"));
    WsClient::connect(&url, token, None).await.unwrap()
}

fn agent_ids(list: &Value) -> Vec<String> {
    list["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("no agents in {list}"))
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_members_live_on_shards_reload_live_and_move_tiers_with_their_sessions() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start_with(
        dir.path(),
        Options::default().set("shared.max_agents_per_worker", "2"),
    );
    let ded = add(&sup, "ded", "dedicated");
    let s1 = add(&sup, "s1", "shared");
    let s2 = add(&sup, "s2", "shared");

    // One shard, running as the shared uid with every sandbox layer; members' trees belong to that uid.
    let shard = worker_of(&sup, "wb-shard-0").expect("the first shared member starts shard 0");
    let shard_pid = shard["pid"].as_i64().unwrap();
    let config = std::fs::read_to_string(sup.config_path()).unwrap();
    let uids_first: u32 = config
        .lines()
        .find_map(|l| l.strip_prefix("first = ").filter(|v| v.len() >= 6))
        .unwrap()
        .parse()
        .unwrap();
    let shared_uid = uids_first - 1;
    assert_eq!(
        status_field(shard_pid, "Uid").split('\t').next().unwrap(),
        shared_uid.to_string()
    );
    assert_eq!(status_field(shard_pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(shard_pid, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(shard_pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(shard_pid, "Seccomp"), "2");
    for id in ["s1", "s2"] {
        let meta = std::fs::metadata(sup.user_dir(id)).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (shared_uid, 0o700),
            "{id}"
        );
    }
    let ded_meta = std::fs::metadata(sup.user_dir("ded")).unwrap();
    assert_ne!(ded_meta.uid(), shared_uid);
    // DAC between the tiers: the shared uid cannot read a dedicated member's config, nor the reverse.
    for (uid, path) in [
        (shared_uid, sup.user_dir("ded").join("clawdbot.json")),
        (ded_meta.uid(), sup.user_dir("s1").join("clawdbot.json")),
    ] {
        let out = std::process::Command::new("setpriv")
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "cat".into(),
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "uid {uid} read {}", path.display());
    }

    // Routing: each member reaches only itself, by path or by token alone; no token opens another's agent.
    assert_eq!(get(&sup, "/u/s1/healthz", &s1), 200);
    assert_eq!(get(&sup, "/healthz", &s2), 200);
    for (path, token, who) in [
        ("/u/s1/healthz", &s2, "s2 on s1"),
        ("/u/s2/healthz", &s1, "s1 on s2"),
        ("/u/s1/healthz", &ded, "ded on s1"),
        ("/u/ded/healthz", &s1, "s1 on ded"),
        ("/u/s1/healthz", &"not-a-token".to_owned(), "a wrong token"),
    ] {
        let status = get(&sup, path, token);
        assert!([401, 403, 404].contains(&status), "{who}: {status}");
    }

    // A WebSocket of s1 sees only its own agent, and stays open while other members come and go.
    let mut c1 = ws(&sup, "s1", &s1).await;
    assert_eq!(
        agent_ids(&c1.call_ok("agents.list", json!({})).await),
        ["s1"]
    );
    c1.call_ok(
        "chat.inject",
        json!({"sessionKey": "main", "message": "remember: ship on friday"}),
    )
    .await;
    let s3 = add(&sup, "s3", "shared"); // shard 0 is full (2): shard 1 starts
    let shard1 = worker_of(&sup, "wb-shard-1").expect("a full shard makes a new one");
    assert_ne!(shard1["pid"], shard["pid"]);
    assert_eq!(get(&sup, "/u/s3/healthz", &s3), 200);
    sup.cli(["user", "remove", "s2"]).ok();
    let status = get(&sup, "/u/s2/healthz", &s2);
    assert!([401, 403, 404].contains(&status), "removed s2: {status}");
    let s4 = add(&sup, "s4", "shared"); // takes s2's place on shard 0, live
    assert_eq!(get(&sup, "/u/s4/healthz", &s4), 200);
    let mut c4 = ws(&sup, "s4", &s4).await;
    assert_eq!(
        agent_ids(&c4.call_ok("agents.list", json!({})).await),
        ["s4"]
    );
    assert_eq!(
        worker_of(&sup, "wb-shard-0").unwrap()["pid"],
        shard["pid"],
        "membership changes never restart the shard"
    );
    assert!(
        c1.closed.is_none(),
        "s1's socket was closed: {:?}",
        c1.closed
    );
    assert_eq!(
        agent_ids(&c1.call_ok("agents.list", json!({})).await),
        ["s1"]
    );
    let history = c1
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    assert!(history.to_string().contains("ship on friday"), "{history}");
    // s4 cannot reach s1's sessions through its own scoped connection.
    let other = c4
        .call("chat.history", json!({"sessionKey": "agent:s1:main"}))
        .await;
    assert_eq!(other["ok"], false, "{other}");
    drop(c4);

    // Tier move shared → dedicated: its own worker, its own uid, the same sessions; and back again.
    sup.cli(["user", "tier", "s1", "dedicated"]).ok();
    let own = worker_of(&sup, "s1").expect("a move to dedicated starts the member's worker");
    let own_pid = own["pid"].as_i64().unwrap();
    let meta = std::fs::metadata(sup.user_dir("s1").join("workspace")).unwrap();
    assert_ne!(
        meta.uid(),
        shared_uid,
        "the tree went to the member's own uid"
    );
    assert_eq!(get(&sup, "/u/s1/healthz", &s1), 200);
    let mut d1 = ws(&sup, "s1", &s1).await;
    assert_eq!(
        agent_ids(&d1.call_ok("agents.list", json!({})).await),
        ["main"]
    );
    let history = d1
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    assert!(
        history.to_string().contains("ship on friday"),
        "the session carried over to the dedicated worker: {history}"
    );
    drop(d1);
    sup.cli(["user", "tier", "s1", "shared"]).ok();
    eventually("s1's own worker stops", || !alive(own_pid));
    assert!(worker_of(&sup, "s1").is_none());
    let mut back = ws(&sup, "s1", &s1).await;
    let history = back
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    assert!(
        history.to_string().contains("ship on friday"),
        "and back to the shard: {history}"
    );
    drop(back);
    drop(c1);

    // kill -9 of the daemon: the shards keep running and the next daemon re-adopts them (same pids).
    let pids: Vec<Value> = ["wb-shard-0", "wb-shard-1"]
        .iter()
        .map(|k| worker_of(&sup, k).unwrap()["pid"].clone())
        .collect();
    let mut sup = sup;
    sup.kill9();
    for pid in &pids {
        assert!(
            alive(pid.as_i64().unwrap()),
            "shard {pid} died with the daemon"
        );
    }
    let sup = Supervisor::start_with(dir.path(), Options::default());
    for (k, pid) in ["wb-shard-0", "wb-shard-1"].iter().zip(&pids) {
        let w = worker_of(&sup, k).unwrap();
        assert_eq!(&w["pid"], pid, "{k} re-adopted, not restarted: {w}");
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while get(&sup, "/u/s3/healthz", &s3) != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("s3 served after the restart");
}

#[test]
fn shard_ids_are_reserved() {
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    let out = sup.cli(["user", "add", "wb-shard-0", "--tier", "shared"]);
    out.fails_with(65);
    assert!(
        out.stderr.contains("reserved"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    assert!(sup.registry_users().is_empty());
}

/// One status seen by the traffic loop: the status and whether a 503 carried `Retry-After`.
type Seen = (u16, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_tier_moves_under_traffic_lose_no_acknowledged_message_and_show_only_503_retry_after()
{
    tests::require_root!();
    let dir = state_root();
    // No per-member rate limit: this member's own traffic must not be what it measures.
    let sup = std::sync::Arc::new(Supervisor::start_with(
        dir.path(),
        Options::default().set("proxy.per_member_rps", "0"),
    ));
    let token = add(&sup, "mover", "shared");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // HTTP traffic through the proxy for the whole run.
    let http = {
        let (sup, stop, token) = (sup.clone(), stop.clone(), token.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<Seen> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = sup.proxy(
                    "GET",
                    "/u/mover/healthz",
                    &[("authorization", &format!("Bearer {token}"))],
                );
                seen.push((r.status, r.header("retry-after").is_some()));
            }
            seen
        })
    };
    // A WebSocket client sending chat messages; on a close it reconnects (a browser does the same).
    let chat = {
        let (sup, stop, token) = (sup.clone(), stop.clone(), token.clone());
        tokio::spawn(async move {
            let mut acked: Vec<String> = Vec::new();
            let mut reconnects = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let url = format!("ws://{}/u/mover/?token={token}", sup.addr("proxy"));
                let Ok(mut c) = WsClient::connect(&url, &token, None).await else {
                    reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let text = format!("note {i}");
                    let params = json!({"sessionKey": "main", "message": text, "idempotencyKey": format!("m{i}")});
                    match try_call(&mut c, &format!("m{i}"), "chat.send", params).await {
                        Some(res) if res["ok"] == true => acked.push(text),
                        _ => break, // closed or refused: reconnect
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                reconnects += 1;
            }
            (acked, reconnects)
        })
    };

    tokio::time::sleep(Duration::from_millis(400)).await;
    sup.cli(["user", "tier", "mover", "dedicated"]).ok();
    assert!(worker_of(&sup, "mover").is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    sup.cli(["user", "tier", "mover", "shared"]).ok();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = http.join().unwrap();
    let (acked, reconnects) = chat.await.unwrap();

    let ok = seen.iter().filter(|(s, _)| *s == 200).count();
    let flips = seen.iter().filter(|(s, _)| *s == 503).count();
    println!(
        "{} requests: {ok} × 200, {flips} × 503 (Retry-After); {} messages acknowledged, {reconnects} reconnects",
        seen.len(),
        acked.len()
    );
    for (status, retry_after) in &seen {
        assert!(
            *status == 200 || (*status == 503 && *retry_after),
            "a request saw {status} (Retry-After: {retry_after}) during the moves"
        );
    }
    assert!(ok > 10 && acked.len() > 10, "traffic really flowed");
    // Every acknowledged message is in the member's session, whichever worker took it.
    let mut c = ws(&sup, "mover", &token).await;
    let history = c
        .call_ok("chat.history", json!({"sessionKey": "main", "limit": 1000}))
        .await
        .to_string();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !history.contains(&format!("\"{t}\"")))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

/// A request whose answer may never come because the socket closes (a tier move): `None` then, never a panic.
async fn try_call(c: &mut WsClient, id: &str, method: &str, params: Value) -> Option<Value> {
    use tests::worker::Frame;
    let frame = json!({"type": "req", "id": id, "method": method, "params": params});
    c.raw().send_json(&frame).await.ok()?;
    loop {
        match c.raw().recv(Duration::from_secs(10)).await {
            Frame::Json(v) if v["type"] == "res" && v["id"] == id => return Some(v),
            Frame::Json(_) | Frame::Text(_) => continue,
            Frame::Close(..) | Frame::Ended => return None,
        }
    }
}

/// `cron.list` (disabled jobs too) through the proxy as the member: `(id, agentId)` pairs, sorted.
async fn cron_jobs(sup: &Supervisor, id: &str, token: &str) -> Vec<(String, String)> {
    let mut c = ws(sup, id, token).await;
    let listed = c
        .call_ok("cron.list", json!({"includeDisabled": true}))
        .await;
    let mut jobs: Vec<(String, String)> = listed["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_owned(),
                j["agentId"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    jobs.sort();
    jobs
}

/// The number of lines of a run log (0 when it does not exist yet).
fn run_count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_member_schedule_jobs_live_in_its_dir_fire_through_the_shard_and_follow_tier_moves()
{
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    let sa = add(&sup, "sa", "shared");
    let sb = add(&sup, "sb", "shared");
    let shard_pid = worker_of(&sup, "wb-shard-0").unwrap()["pid"]
        .as_i64()
        .unwrap();
    let jobs_file = sup.user_dir("sa").join("cron/jobs.json");

    let out = sup.cli([
        "user",
        "schedule",
        "sa",
        "--timezone",
        "Europe/Berlin",
        "--standup",
        "08:30",
        "--reflection",
        "fri 17:00",
    ]);
    out.ok();
    assert!(out.stdout.contains("cron jobs written"), "{}", out.stdout);
    // In the member's own dir, owned by the shared uid like the rest of its tree; the shard was reloaded, not restarted.
    let shard_uid = std::fs::metadata(sup.user_dir("sa")).unwrap().uid();
    assert_eq!(std::fs::metadata(&jobs_file).unwrap().uid(), shard_uid);
    assert_eq!(
        worker_of(&sup, "wb-shard-0").unwrap()["pid"].as_i64(),
        Some(shard_pid)
    );
    let want_shared = vec![
        ("wirebot-daily-standup-sa".to_owned(), "sa".to_owned()),
        ("wirebot-weekly-reflection-sa".to_owned(), "sa".to_owned()),
    ];
    assert_eq!(cron_jobs(&sup, "sa", &sa).await, want_shared);
    assert!(cron_jobs(&sup, "sb", &sb).await.is_empty());
    assert!(!sup.user_dir("sb").join("cron/jobs.json").exists());

    // A one-second job added by the member fires through the shard, its run log beside the member's jobs.
    let mut c = ws(&sup, "sa", &sa).await;
    let tick = c
        .call_ok(
            "cron.add",
            json!({"name": "tick", "schedule": {"kind": "every", "everyMs": 1000}, "sessionTarget": "main",
                "wakeMode": "next-heartbeat", "payload": {"kind": "systemEvent", "text": "tick"}}),
        )
        .await;
    drop(c);
    let tick_id = tick["id"].as_str().unwrap().to_owned();
    let log = sup
        .user_dir("sa")
        .join(format!("cron/runs/{tick_id}.jsonl"));
    eventually("the one-second job runs twice on the shard", || {
        run_count(&log) >= 2
    });
    let stored = std::fs::read_to_string(&jobs_file).unwrap();
    assert!(stored.contains(&tick_id), "{stored}");

    // Shared → dedicated: the same file, retargeted to `main`, read and run by the member's own worker.
    sup.cli(["user", "tier", "sa", "dedicated"]).ok();
    let own_uid = std::fs::metadata(sup.user_dir("sa")).unwrap().uid();
    assert_ne!(own_uid, shard_uid);
    assert_eq!(std::fs::metadata(&jobs_file).unwrap().uid(), own_uid);
    let mut want_dedicated = vec![
        ("wirebot-daily-standup-main".to_owned(), "main".to_owned()),
        (
            "wirebot-weekly-reflection-main".to_owned(),
            "main".to_owned(),
        ),
        (tick_id.clone(), "main".to_owned()),
    ];
    want_dedicated.sort();
    assert_eq!(cron_jobs(&sup, "sa", &sa).await, want_dedicated);
    let before = run_count(&log);
    eventually("the job keeps running on the dedicated worker", || {
        run_count(&log) > before + 1
    });

    // And back to the shard.
    sup.cli(["user", "tier", "sa", "shared"]).ok();
    let mut want_back = want_shared.clone();
    want_back.push((tick_id.clone(), "sa".to_owned()));
    want_back.sort();
    assert_eq!(cron_jobs(&sup, "sa", &sa).await, want_back);
    let before = run_count(&log);
    eventually("the job runs on the shard again", || {
        run_count(&log) > before + 1
    });

    // No rituals: the default jobs go, the member's own job stays.
    sup.cli(["user", "schedule", "sa"]).ok();
    assert_eq!(
        cron_jobs(&sup, "sa", &sa).await,
        vec![(tick_id, "sa".to_owned())]
    );
}
