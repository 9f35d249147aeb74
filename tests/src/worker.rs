//! Harness for the real `wirebot-worker`: state-dir fixtures, `Worker::start` (port 0, ready line read with a
//! deadline, killed and reaped on drop), and a protocol v3 WebSocket client (`WsClient`) plus a raw socket
//! (`RawWs`) for malformed-frame tests.
//!
//! ```text
//! let fake = FakeProvider::start().await;
//! let dir = tempfile::tempdir().unwrap();
//! write_config(dir.path(), &basic_config(TOKEN, &fake));
//! let w = Worker::start(dir.path(), WorkerOpts::default());
//! let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
//! let health = c.call_ok("health", json!({})).await;
//! c.call_ok("chat.send", json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "r1"})).await;
//! let fin = c.wait_chat("r1", "final", Duration::from_secs(10)).await;
//! ```

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::bin_path;
use crate::fake_provider::FakeProvider;

/// Gateway token the fixtures use.
pub const TOKEN: &str = "wirebot-test-token-123";
/// Deadline for the ready line and for each awaited frame unless a test says otherwise.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A minimal `clawdbot.json`: token auth, one agent `main`, providers `anthropic` and `openai` pointing at the fake
/// (with config API keys `sk-fake-config` / `sk-fake-openai`), primary model `anthropic/claude-fake`.
/// Valid for the real Clawdbot too (contract §6 example a).
pub fn basic_config(token: &str, fake: &FakeProvider) -> Value {
    json!({
        "gateway": {"mode": "local", "port": 18789, "bind": "loopback", "auth": {"mode": "token", "token": token}},
        "update": {"checkOnStart": false},
        "models": {"providers": {
            "anthropic": {"baseUrl": fake.base_url(), "api": "anthropic-messages", "apiKey": "sk-fake-config",
                "models": [{"id": "claude-fake", "name": "Claude Fake"}]},
            "openai": {"baseUrl": fake.openai_base_url(), "api": "openai-completions", "apiKey": "sk-fake-openai",
                "models": [{"id": "gpt-fake", "name": "GPT Fake"}]}}},
        "agents": {"defaults": {"model": {"primary": "anthropic/claude-fake"}}, "list": [{"id": "main", "default": true}]}
    })
}

/// Like [`basic_config`] with the agents `ids` (the first is the default).
pub fn multi_agent_config(token: &str, fake: &FakeProvider, ids: &[&str]) -> Value {
    let mut c = basic_config(token, fake);
    c["agents"]["list"] = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "default": i == 0, "name": id.to_uppercase()}))
        .collect();
    c
}

/// Writes `<dir>/clawdbot.json`.
pub fn write_config(dir: &Path, config: &Value) {
    worker::atomic::write_json(&dir.join("clawdbot.json"), config).expect("write clawdbot.json");
}

/// sha256 (hex) of `<dir>/clawdbot.json`'s bytes: what `/healthz` reports as `configHash` once applied.
pub fn config_hash(dir: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(dir.join("clawdbot.json")).expect("read clawdbot.json");
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// Writes `<dir>/agents/<agent>/agent/auth-profiles.json`.
pub fn write_auth_profiles(dir: &Path, agent: &str, profiles: &Value) {
    let p = dir
        .join("agents")
        .join(agent)
        .join("agent")
        .join("auth-profiles.json");
    worker::atomic::write_json(&p, profiles).expect("write auth-profiles.json");
}

/// How to start a worker beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct WorkerOpts {
    /// Extra environment (the environment is otherwise cleared except PATH and WIREBOT_LOG).
    pub env: Vec<(String, String)>,
    pub env_file: Option<PathBuf>,
    /// Use this port instead of 0.
    pub port: Option<u16>,
}

/// A running `wirebot-worker`, SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Worker {
    child: Option<Child>,
    pub port: u16,
    pub pid: u32,
    pub state_dir: PathBuf,
    /// Start-to-ready time as measured by the harness.
    pub ready_after: Duration,
    stdout_rest: mpsc::Receiver<String>,
}

impl Worker {
    /// Spawns the worker on `state_dir` with `--port 0` and waits for its ready line.
    pub fn start(state_dir: &Path, opts: WorkerOpts) -> Worker {
        Self::try_start(state_dir, opts).expect("start wirebot-worker")
    }

    pub fn try_start(state_dir: &Path, opts: WorkerOpts) -> anyhow::Result<Worker> {
        let mut cmd = Command::new(bin_path("wirebot-worker"));
        cmd.arg("--state-dir")
            .arg(state_dir)
            .arg("--port")
            .arg(opts.port.unwrap_or(0).to_string());
        if let Some(f) = &opts.env_file {
            cmd.arg("--env-file").arg(f);
        }
        cmd.env_clear();
        if let Ok(p) = std::env::var("PATH") {
            cmd.env("PATH", p);
        }
        cmd.env(
            "WIREBOT_LOG",
            std::env::var("WIREBOT_LOG").unwrap_or_else(|_| "warn".into()),
        );
        cmd.envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("spawn wirebot-worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!(
                    "wirebot-worker printed no ready line within {DEADLINE:?} (exit: {status:?})"
                );
            }
        };
        let ready_after = t0.elapsed();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let (Some(port), Some(pid)) = (field("port"), field("pid")) else {
            bail!("unexpected ready line {line:?}");
        };
        Ok(Worker {
            child: Some(child),
            port: u16::try_from(port)?,
            pid,
            state_dir: state_dir.to_path_buf(),
            ready_after,
            stdout_rest: rx,
        })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL and reap (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to the deadline) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("worker already stopped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = c.try_wait().expect("wait worker") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("worker did not exit within {DEADLINE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGHUP: the worker re-reads `clawdbot.json` and its env file (see [`Worker::wait_config_hash`]).
    pub fn reload(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("send SIGHUP");
    }

    /// `GET /healthz` as JSON.
    pub async fn healthz(&self) -> Value {
        reqwest::get(self.http_url("/healthz"))
            .await
            .expect("GET /healthz")
            .json()
            .await
            .expect("healthz JSON")
    }

    /// Polls `/healthz` until `pred` holds (as the supervisor does after a SIGHUP); returns that payload.
    pub async fn wait_healthz(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let h = self.healthz().await;
            if pred(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "healthz never showed {what}: {h}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/healthz` reports `configHash` = sha256 of `<state>/clawdbot.json` as it is now.
    pub async fn wait_config_hash(&self) -> Value {
        let want = config_hash(&self.state_dir);
        self.wait_healthz(&format!("configHash {want}"), |h| h["configHash"] == want)
            .await
    }

    /// Stdout lines printed after the ready line (it should print none).
    pub fn extra_stdout(&self) -> Vec<String> {
        self.stdout_rest.try_iter().collect()
    }

    /// Resident set size in KiB (from /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One inbound thing on a raw socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Json(Value),
    Text(String),
    Close(u16, String),
    /// The TCP stream ended (or errored) without a close frame.
    Ended,
}

/// A WebSocket with no protocol logic, for handshake and malformed-frame tests.
#[derive(Debug)]
pub struct RawWs {
    ws: Socket,
}

impl RawWs {
    /// Opens a socket (optionally with the `x-wirebot-agent` scope header). Nothing is sent.
    pub async fn open(url: &str, scope: Option<&str>) -> anyhow::Result<RawWs> {
        let mut req = url.into_client_request()?;
        if let Some(s) = scope {
            req.headers_mut().insert("x-wirebot-agent", s.parse()?);
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(64 << 20));
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(config), false).await?;
        Ok(RawWs { ws })
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, v: &Value) -> anyhow::Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// The next frame within `timeout` (pings skipped). Panics on timeout.
    pub async fn recv(&mut self, timeout: Duration) -> Frame {
        let fut = async {
            loop {
                return match self.ws.next().await {
                    None | Some(Err(_)) => Frame::Ended,
                    Some(Ok(Message::Text(t))) => match serde_json::from_str(&t) {
                        Ok(v) => Frame::Json(v),
                        Err(_) => Frame::Text(t.to_string()),
                    },
                    Some(Ok(Message::Close(c))) => {
                        let (code, reason) = c
                            .map(|c: CloseFrame| (u16::from(c.code), c.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        Frame::Close(code, reason)
                    }
                    Some(Ok(_)) => continue,
                };
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .expect("no frame before the deadline")
    }

    /// Reads frames until a close frame (or end); returns the close code and reason, and the frames before it.
    pub async fn recv_until_close(&mut self, timeout: Duration) -> ((u16, String), Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Frame::Json(v) => seen.push(v),
                Frame::Text(t) => seen.push(Value::String(t)),
                Frame::Close(c, r) => return ((c, r), seen),
                Frame::Ended => return ((1006, String::new()), seen),
            }
        }
    }

    /// Reads the `connect.challenge` event and returns its nonce.
    pub async fn challenge(&mut self) -> String {
        match self.recv(DEADLINE).await {
            Frame::Json(v) if v["event"] == "connect.challenge" => {
                v["payload"]["nonce"].as_str().unwrap().to_string()
            }
            other => panic!("expected connect.challenge, got {other:?}"),
        }
    }

    /// The underlying socket (to send binary frames, pings, …).
    pub fn socket(&mut self) -> &mut Socket {
        &mut self.ws
    }
}

/// `connect` params as the supervisor sends them (`gateway-client`/`backend`/operator, admin scope).
pub fn connect_params(token: &str) -> Value {
    json!({"minProtocol": 3, "maxProtocol": 3,
        "client": {"id": "gateway-client", "version": "0.1.0", "platform": "linux", "mode": "backend"},
        "role": "operator", "scopes": ["operator.admin"], "auth": {"token": token}})
}

/// A protocol v3 client: handshake done, requests by id, events buffered until asked for.
#[derive(Debug)]
pub struct WsClient {
    raw: RawWs,
    /// The hello-ok payload.
    pub hello: Value,
    events: VecDeque<Value>,
    responses: VecDeque<Value>,
    next_id: u64,
    /// Set once the server closed the socket: (code, reason).
    pub closed: Option<(u16, String)>,
}

impl WsClient {
    /// Connects and completes the handshake with `token` (and the agent scope header when given).
    pub async fn connect(url: &str, token: &str, scope: Option<&str>) -> anyhow::Result<WsClient> {
        Self::connect_with(url, scope, connect_params(token)).await
    }

    /// Connects with explicit `connect` params; fails unless hello-ok comes back.
    pub async fn connect_with(
        url: &str,
        scope: Option<&str>,
        params: Value,
    ) -> anyhow::Result<WsClient> {
        let mut raw = RawWs::open(url, scope).await?;
        raw.challenge().await;
        raw.send_json(
            &json!({"type": "req", "id": "connect-1", "method": "connect", "params": params}),
        )
        .await?;
        loop {
            match raw.recv(DEADLINE).await {
                Frame::Json(v) if v["type"] == "res" && v["id"] == "connect-1" => {
                    if v["ok"] != true {
                        bail!("connect refused: {v}");
                    }
                    let hello = v["payload"].clone();
                    return Ok(WsClient {
                        raw,
                        hello,
                        events: VecDeque::new(),
                        responses: VecDeque::new(),
                        next_id: 0,
                        closed: None,
                    });
                }
                Frame::Json(_) => continue,
                other => bail!("connect failed: {other:?}"),
            }
        }
    }

    async fn pump(&mut self, timeout: Duration) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let fut = self.raw.ws.next();
        let Ok(next) = tokio::time::timeout(timeout, fut).await else {
            return false;
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("server sent non-JSON");
                match v["type"].as_str() {
                    Some("event") => self.events.push_back(v),
                    Some("res") => self.responses.push_back(v),
                    _ => panic!("unexpected frame {v}"),
                }
            }
            Some(Ok(Message::Close(c))) => {
                self.closed = Some(
                    c.map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((1005, String::new())),
                );
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => self.closed = Some((1006, String::new())),
        }
        true
    }

    /// Sends a request and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> String {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.raw
            .send_json(&json!({"type": "req", "id": id, "method": method, "params": params}))
            .await
            .expect("send request");
        id
    }

    /// The next response frame with `id` (whole frame: `ok`, `payload`, `error`).
    pub async fn response(&mut self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.responses.iter().position(|r| r["id"] == id) {
                return self.responses.remove(i).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (!self.pump(left).await && self.closed.is_some()) {
                panic!(
                    "no response {id} within {timeout:?} (closed: {:?})",
                    self.closed
                );
            }
        }
    }

    /// Calls `method` and returns the whole response frame.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.response(&id, DEADLINE).await
    }

    /// Calls `method` and returns its payload, panicking on an error response.
    pub async fn call_ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        assert_eq!(r["ok"], true, "{method} failed: {r}");
        r["payload"].clone()
    }

    /// The next event named `name` (whole frame), or `None` after `timeout`. Other events stay buffered.
    pub async fn next_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        self.next_event_where(timeout, |e| e["event"] == name).await
    }

    /// The next event matching `pred` (whole frame), or `None` after `timeout`.
    pub async fn next_event_where(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&pred) {
                return self.events.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (!self.pump(left).await && self.closed.is_some()) {
                return None;
            }
        }
    }

    /// Waits for the `chat` event of `run_id` in `state` (`final`, `error`, `aborted`) and returns its payload.
    pub async fn wait_chat(&mut self, run_id: &str, state: &str, timeout: Duration) -> Value {
        let ev = self
            .next_event_where(timeout, |e| {
                e["event"] == "chat"
                    && e["payload"]["runId"] == run_id
                    && e["payload"]["state"] == state
            })
            .await;
        ev.unwrap_or_else(|| {
            panic!(
                "no chat {state} for {run_id} within {timeout:?}; buffered: {:?}",
                self.events
            )
        })["payload"]
            .clone()
    }

    /// All buffered events so far (drains the buffer), after reading whatever arrives within `settle`.
    pub async fn drain_events(&mut self, settle: Duration) -> Vec<Value> {
        let deadline = Instant::now() + settle;
        while !deadline.saturating_duration_since(Instant::now()).is_zero() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.pump(left).await {
                break;
            }
        }
        self.events.drain(..).collect()
    }

    /// The raw socket, for sending malformed frames after the handshake.
    pub fn raw(&mut self) -> &mut RawWs {
        &mut self.raw
    }
}

/// The text of a chat event's message (cumulative for deltas).
pub fn chat_text(payload: &Value) -> String {
    payload["message"]["content"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|x| x["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

/// Reads `<state>/agents/<agent>/sessions/sessions.json`.
pub fn sessions_index(state_dir: &Path, agent: &str) -> Value {
    let p = state_dir
        .join("agents")
        .join(agent)
        .join("sessions")
        .join("sessions.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
    )
    .unwrap()
}

/// The user texts in a session's transcript, in order.
pub fn transcript_user_texts(state_dir: &Path, agent: &str, key: &str) -> Vec<String> {
    let index = sessions_index(state_dir, agent);
    let file = index[key]["sessionFile"]
        .as_str()
        .unwrap_or_else(|| panic!("no session {key} in {index}"));
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "message" && v["message"]["role"] == "user")
        .map(|v| {
            v["message"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Wall-clock milliseconds since the epoch, the unit of `nextRunAtMs`, `ts` and cron fields.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
