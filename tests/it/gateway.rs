//! wirebot-worker end to end: protocol v3 conformance (every method and event, malformed frames), agent scoping,
//! sessions on disk, model failover and cooldowns, crash durability, HTTP surface — against the fake provider.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tests::fake_provider::{FakeProvider, Reply, Rule};
use tests::worker::*;

const T: Duration = Duration::from_secs(15);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn setup(
    config: impl FnOnce(&FakeProvider) -> Value,
) -> (FakeProvider, tempfile::TempDir, Worker) {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(&fake));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    (fake, dir, w)
}

async fn client(w: &Worker) -> WsClient {
    WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap()
}

fn send_params(key: &str, msg: &str, run: &str) -> Value {
    json!({"sessionKey": key, "message": msg, "idempotencyKey": run})
}

// ---------------------------------------------------------------- handshake and frames

#[tokio::test]
async fn hello_ok_advertises_methods_events_policy_and_session_defaults() {
    let (_f, dir, w) = setup(|f| basic_config(TOKEN, f)).await;
    let c = client(&w).await;
    let h = &c.hello;
    assert_eq!(h["type"], "hello-ok");
    assert_eq!(h["protocol"], 3);
    let methods: Vec<&str> = h["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "health",
        "status",
        "agents.list",
        "models.list",
        "config.get",
        "chat.send",
        "chat.history",
        "chat.abort",
        "sessions.list",
        "sessions.patch",
        "sessions.reset",
        "sessions.delete",
        "agent",
        "agent.wait",
    ] {
        assert!(methods.contains(&m), "{m} not advertised");
    }
    assert!(!methods.iter().any(|m| m.starts_with("memory")));
    assert!(
        !methods.contains(&"chat.inject"),
        "chat.inject is handled but not advertised"
    );
    let events = h["features"]["events"].as_array().unwrap();
    for e in [
        "connect.challenge",
        "agent",
        "chat",
        "presence",
        "tick",
        "shutdown",
        "health",
    ] {
        assert!(events.contains(&json!(e)), "{e} not advertised");
    }
    assert_eq!(
        h["policy"],
        json!({"maxPayload": 524288, "maxBufferedBytes": 1572864, "tickIntervalMs": 30000})
    );
    let d = &h["snapshot"]["sessionDefaults"];
    assert_eq!(d["defaultAgentId"], "main");
    assert_eq!(d["mainSessionKey"], "agent:main:main");
    assert_eq!(h["snapshot"]["stateDir"], json!(dir.path()));
    assert!(h.get("auth").is_none(), "no device ⇒ no device token");
}

#[tokio::test]
async fn challenge_comes_first_with_a_nonce() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    let nonce = raw.challenge().await;
    assert_eq!(nonce.len(), 36, "uuid nonce: {nonce}");
}

async fn refused(w: &Worker, first: &str) -> (Vec<Value>, (u16, String)) {
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    raw.challenge().await;
    raw.send_text(first).await.unwrap();
    let (close, seen) = raw.recv_until_close(T).await;
    (seen, close)
}

fn connect_frame(params: Value) -> String {
    json!({"type": "req", "id": "c1", "method": "connect", "params": params}).to_string()
}

#[tokio::test]
async fn bad_first_frames_get_the_contract_error_and_close() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;

    // Non-JSON and non-request first frames: no response, close 1008.
    for bad in [
        "this is not json",
        r#"{"type":"event","event":"x"}"#,
        r#"{"type":"req","id":"1"}"#,
    ] {
        let (seen, close) = refused(&w, bad).await;
        assert!(seen.is_empty(), "{bad}: {seen:?}");
        assert_eq!(close, (1008, "invalid request frame".into()), "{bad}");
    }

    // A request that is not connect: error res, then close 1008.
    let (seen, close) = refused(
        &w,
        r#"{"type":"req","id":"h","method":"health","params":{}}"#,
    )
    .await;
    assert_eq!(seen[0]["id"], "h");
    assert_eq!(seen[0]["ok"], false);
    assert_eq!(seen[0]["error"]["code"], "INVALID_REQUEST");
    assert_eq!(
        seen[0]["error"]["message"],
        "invalid handshake: first request must be connect"
    );
    assert_eq!(close.0, 1008);

    // Wrong protocol version: INVALID_REQUEST "protocol mismatch", close 1002.
    let mut p = connect_params(TOKEN);
    p["minProtocol"] = json!(1);
    p["maxProtocol"] = json!(2);
    let (seen, close) = refused(&w, &connect_frame(p)).await;
    assert_eq!(
        seen[0]["error"],
        json!({"code": "INVALID_REQUEST", "message": "protocol mismatch", "details": {"expectedProtocol": 3}})
    );
    assert_eq!(close, (1002, "protocol mismatch".into()));

    // Unknown connect field (strict params), missing client: INVALID_REQUEST, close 1008.
    let mut p = connect_params(TOKEN);
    p["tenant"] = json!("x");
    let (seen, close) = refused(&w, &connect_frame(p)).await;
    assert!(
        seen[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid connect params"),
        "{seen:?}"
    );
    assert_eq!(close.0, 1008);
    let mut p = connect_params(TOKEN);
    p.as_object_mut().unwrap().remove("client");
    let (seen, close) = refused(&w, &connect_frame(p)).await;
    assert!(
        seen[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client"),
        "{seen:?}"
    );
    assert_eq!(close.0, 1008);

    // Wrong token, no token.
    let (seen, close) = refused(&w, &connect_frame(connect_params("wrong"))).await;
    assert_eq!(seen[0]["error"]["code"], "INVALID_REQUEST");
    assert!(
        seen[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized: gateway token mismatch")
    );
    assert_eq!(close.0, 1008);
    let mut p = connect_params(TOKEN);
    p.as_object_mut().unwrap().remove("auth");
    let (seen, close) = refused(&w, &connect_frame(p)).await;
    assert!(
        seen[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized: gateway token missing")
    );
    assert_eq!(close.0, 1008);
}

#[tokio::test]
async fn malformed_frames_after_hello_get_errors_and_the_socket_stays_open() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    let cases: [(&str, &str, &str); 5] = [
        ("not json at all", "invalid", "invalid frame: not JSON"),
        (
            r#"{"type":"req","id":"u1","method":"no.such.method","params":{}}"#,
            "u1",
            "unknown method: no.such.method",
        ),
        (
            r#"{"type":"req","id":"m1","method":"chat.send","params":{"sessionKey":"main"}}"#,
            "m1",
            "invalid chat.send params: missing field",
        ),
        (
            r#"{"type":"req","id":"x1","method":"health","bogus":1}"#,
            "x1",
            "invalid request frame: unknown field `bogus`",
        ),
        (
            r#"{"type":"req","id":"c2","method":"connect","params":{}}"#,
            "c2",
            "connect is only valid as the first request",
        ),
    ];
    for (frame, id, msg) in cases {
        c.raw().send_text(frame).await.unwrap();
        let r = c.response(id, T).await;
        assert_eq!(r["ok"], false, "{frame}");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{frame}");
        assert!(
            r["error"]["message"].as_str().unwrap().starts_with(msg),
            "{frame}: {r}"
        );
    }
    // Still open and serving.
    assert_eq!(c.call_ok("health", json!({})).await["ok"], true);
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_smaller_frames_pass() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    // Just under the cap: an ordinary error for a huge message field, socket open.
    let big = "x".repeat(500 * 1024);
    let r = c
        .call(
            "chat.inject",
            json!({"sessionKey": "main", "message": big, "bogus": 1}),
        )
        .await;
    assert_eq!(r["ok"], false);
    let over = json!({"type": "req", "id": "big", "method": "health", "params": {"pad": "y".repeat(600 * 1024)}}).to_string();
    c.raw().send_text(&over).await.unwrap();
    let (close, _) = c.raw().recv_until_close(T).await;
    assert_eq!(close.0, 1009, "{close:?}");
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    raw.challenge().await;
    let started = std::time::Instant::now();
    let (close, seen) = raw.recv_until_close(Duration::from_secs(20)).await;
    assert!(seen.is_empty());
    assert_eq!(close, (1008, "handshake timeout".into()));
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn device_identity_signature_is_verified_and_device_token_works() {
    use base64::Engine;
    use ed25519_dalek::Signer;
    use sha2::Digest;
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let pk = sk.verifying_key().to_bytes();
    let id = hex::encode(sha2::Sha256::digest(pk));
    let connect = |nonce: &str, token: &str, tamper: bool| {
        let signed_at = now_ms();
        let payload =
            format!("v2|{id}|cli|cli|operator|operator.admin|{signed_at}|{token}|{nonce}");
        let mut sig = sk.sign(payload.as_bytes()).to_bytes();
        if tamper {
            sig[0] ^= 1;
        }
        json!({"minProtocol": 3, "maxProtocol": 3, "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"},
            "role": "operator", "scopes": ["operator.admin"], "auth": {"token": token},
            "device": {"id": id, "publicKey": b64(&pk), "signature": b64(&sig), "signedAt": signed_at, "nonce": nonce}})
    };
    // Valid signature + gateway token → hello-ok with a device token.
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    let nonce = raw.challenge().await;
    raw.send_json(&json!({"type": "req", "id": "c", "method": "connect", "params": connect(&nonce, TOKEN, false)})).await.unwrap();
    let Frame::Json(hello) = raw.recv(T).await else {
        panic!("no hello")
    };
    assert_eq!(hello["ok"], true, "{hello}");
    let device_token = hello["payload"]["auth"]["deviceToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(device_token, TOKEN);
    // The device token alone authenticates that device on a later connect.
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    let nonce = raw.challenge().await;
    raw.send_json(&json!({"type": "req", "id": "c", "method": "connect", "params": connect(&nonce, &device_token, false)})).await.unwrap();
    let Frame::Json(hello) = raw.recv(T).await else {
        panic!("no hello")
    };
    assert_eq!(hello["ok"], true, "{hello}");
    // A tampered signature is refused even with the right token.
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    let nonce = raw.challenge().await;
    raw.send_json(&json!({"type": "req", "id": "c", "method": "connect", "params": connect(&nonce, TOKEN, true)})).await.unwrap();
    let (close, seen) = raw.recv_until_close(T).await;
    assert_eq!(seen[0]["error"]["message"], "device signature invalid");
    assert_eq!(close.0, 1008);
    // A signature over another nonce (replay) is refused.
    let mut raw = RawWs::open(&w.ws_url(), None).await.unwrap();
    raw.challenge().await;
    raw.send_json(&json!({"type": "req", "id": "c", "method": "connect", "params": connect("old-nonce", TOKEN, false)})).await.unwrap();
    let (_, seen) = raw.recv_until_close(T).await;
    assert_eq!(seen[0]["error"]["message"], "device nonce mismatch");
}

// ---------------------------------------------------------------- read methods

#[tokio::test]
async fn health_status_agents_models_and_config_get() {
    let (_f, dir, w) = setup(|f| {
        let mut c = multi_agent_config(TOKEN, f, &["alpha", "beta"]);
        c["frobnicate"] = json!({"kept": true});
        c
    })
    .await;
    let mut c = client(&w).await;
    let h = c.call_ok("health", json!({})).await;
    assert_eq!(h["ok"], true);
    assert_eq!(h["defaultAgentId"], "alpha");
    let ids: Vec<_> = h["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].clone())
        .collect();
    assert_eq!(ids, [json!("alpha"), json!("beta")]);
    assert_eq!(h["agents"][0]["isDefault"], true);
    for k in [
        "ts",
        "durationMs",
        "channels",
        "channelOrder",
        "channelLabels",
        "heartbeatSeconds",
        "sessions",
    ] {
        assert!(h.get(k).is_some(), "health lacks {k}");
    }

    let s = c.call_ok("status", json!({})).await;
    assert_eq!(s["defaultAgentId"], "alpha");
    assert_eq!(s["runs"]["active"], 0);

    let a = c.call_ok("agents.list", json!({})).await;
    assert_eq!(a["defaultId"], "alpha");
    assert_eq!(a["mainKey"], "main");
    assert_eq!(a["scope"], "per-sender");
    assert_eq!(
        a["agents"],
        json!([{"id": "alpha", "name": "ALPHA"}, {"id": "beta", "name": "BETA"}])
    );

    let m = c.call_ok("models.list", json!({})).await;
    let models = m["models"].as_array().unwrap();
    assert!(
        models.contains(
            &json!({"id": "claude-fake", "name": "Claude Fake", "provider": "anthropic"})
        ),
        "{m}"
    );
    assert!(
        models
            .iter()
            .any(|x| x["id"] == "gpt-fake" && x["provider"] == "openai")
    );

    let cfg = c.call_ok("config.get", json!({})).await;
    assert_eq!(cfg["path"], json!(dir.path().join("clawdbot.json")));
    assert_eq!(cfg["exists"], true);
    assert_eq!(cfg["valid"], true);
    assert_eq!(
        cfg["config"]["frobnicate"],
        json!({"kept": true}),
        "unknown keys are kept"
    );
    assert!(
        cfg["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["path"] == "frobnicate")
    );
    assert_eq!(cfg["hash"].as_str().unwrap().len(), 64);

    // Bad params are precise.
    let r = c.call("health", json!({"bogus": true})).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid health params"),
        "{r}"
    );
}

#[tokio::test]
async fn later_features_answer_unavailable_naming_themselves() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    for m in ["memory.search", "memory.status"] {
        let r = c.call(m, json!({})).await;
        assert_eq!(r["ok"], false);
        assert_eq!(r["error"]["code"], "UNAVAILABLE", "{m}");
        assert!(r["error"]["message"].as_str().unwrap().contains(m), "{r}");
    }
}

#[tokio::test]
async fn read_only_scope_cannot_write() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut p = connect_params(TOKEN);
    p["scopes"] = json!(["operator.read"]);
    let mut c = WsClient::connect_with(&w.ws_url(), None, p).await.unwrap();
    assert_eq!(c.call_ok("health", json!({})).await["ok"], true);
    let r = c.call("chat.send", send_params("main", "hi", "r1")).await;
    assert_eq!(r["error"]["message"], "missing scope: operator.write");
    let r = c.call("config.get", json!({})).await;
    assert_eq!(r["error"]["message"], "missing scope: operator.admin");
}

// ---------------------------------------------------------------- chat

#[tokio::test]
async fn chat_send_acks_then_streams_cumulative_deltas_and_a_final() {
    let (fake, dir, w) = setup(|f| basic_config(TOKEN, f)).await;
    fake.set_default(Reply::text(
        "Hello from the mock model, streamed in many small pieces.",
        12,
        ms(40),
    ));
    let mut c = client(&w).await;
    let ack = c
        .call_ok("chat.send", send_params("main", "Say hello", "run-1"))
        .await;
    assert_eq!(ack, json!({"runId": "run-1", "status": "started"}));

    let start = c
        .next_event_where(T, |e| {
            e["event"] == "agent" && e["payload"]["stream"] == "lifecycle"
        })
        .await
        .unwrap();
    assert_eq!(start["payload"]["data"]["phase"], "start");
    assert_eq!(start["payload"]["sessionKey"], "agent:main:main");
    let fin = c.wait_chat("run-1", "final", T).await;
    let full = "Hello from the mock model, streamed in many small pieces.";
    assert_eq!(chat_text(&fin), full);
    assert_eq!(fin["message"]["role"], "assistant");
    assert_eq!(fin["sessionKey"], "agent:main:main");

    let events = c.drain_events(ms(50)).await;
    let deltas: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "chat" && e["payload"]["state"] == "delta")
        .map(|e| chat_text(&e["payload"]))
        .collect();
    assert!(!deltas.is_empty(), "no deltas");
    assert!(
        deltas.len() < 12,
        "deltas are throttled (150 ms): got {}",
        deltas.len()
    );
    for pair in deltas.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]),
            "deltas are cumulative: {pair:?}"
        );
    }
    assert!(full.starts_with(deltas.last().unwrap()));
    let assistant: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "agent" && e["payload"]["stream"] == "assistant")
        .collect();
    assert_eq!(assistant.len(), 12, "one agent assistant event per token");
    assert_eq!(assistant.last().unwrap()["payload"]["data"]["text"], full);
    // Event frames carry a per-connection seq that only grows.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[1] > p[0]), "{seqs:?}");
    // lifecycle end came before final (it was consumed or is buffered before it): it exists.
    assert!(
        events.iter().any(
            |e| e["payload"]["stream"] == "lifecycle" && e["payload"]["data"]["phase"] == "end"
        ),
        "lifecycle end missing"
    );

    // The provider saw the system prompt and the user message, with the configured key.
    let req = &fake.requests()[0];
    assert_eq!(req.api_key.as_deref(), Some("sk-fake-config"));
    assert_eq!(req.model, "claude-fake");
    assert_eq!(
        req.body["messages"].as_array().unwrap().last().unwrap()["content"][0]["text"],
        "Say hello"
    );
    assert!(req.body["system"].as_str().unwrap().contains("You are"));

    // History and the index on disk.
    let hist = c
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    assert_eq!(hist["sessionKey"], "agent:main:main");
    let msgs = hist["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["content"][0]["text"], full);
    assert_eq!(msgs[1]["provider"], "anthropic");
    // The run's metadata reaches the index within the flush interval (the messages were durable already).
    let deadline = std::time::Instant::now() + T;
    let index = loop {
        let index = sessions_index(dir.path(), "main");
        if index["agent:main:main"]["inputTokens"] == 12 || std::time::Instant::now() > deadline {
            break index;
        }
        tokio::time::sleep(ms(50)).await;
    };
    let e = &index["agent:main:main"];
    assert_eq!(e["sessionId"], hist["sessionId"]);
    assert_eq!(e["modelProvider"], "anthropic");
    assert_eq!(e["model"], "claude-fake");
    assert_eq!(e["inputTokens"], 12);
    assert_eq!(e["chatType"], "direct");
    assert_eq!(e["origin"]["provider"], "webchat");
    // The transcript is JSONL v3: header, then messages chained by parentId.
    let lines: Vec<Value> = std::fs::read_to_string(e["sessionFile"].as_str().unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "session");
    assert_eq!(lines[0]["version"], 3);
    assert_eq!(lines[2]["parentId"], lines[1]["id"]);
}

#[tokio::test]
async fn idempotency_key_is_deduplicated() {
    let (fake, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    fake.set_default(Reply::text("one reply only", 4, ms(100)));
    let mut c = client(&w).await;
    assert_eq!(
        c.call_ok("chat.send", send_params("main", "hi", "dup"))
            .await["status"],
        "started"
    );
    assert_eq!(
        c.call_ok("chat.send", send_params("main", "hi", "dup"))
            .await["status"],
        "in_flight"
    );
    c.wait_chat("dup", "final", T).await;
    assert_eq!(
        c.call_ok("chat.send", send_params("main", "hi", "dup"))
            .await,
        json!({"runId": "dup", "status": "ok"})
    );
    assert_eq!(fake.requests().len(), 1);
    let hist = c
        .call_ok("chat.history", json!({"sessionKey": "agent:main:main"}))
        .await;
    assert_eq!(
        hist["messages"].as_array().unwrap().len(),
        2,
        "the user message is stored once"
    );
}

#[tokio::test]
async fn chat_abort_and_stop_words_end_the_run_as_aborted() {
    let (fake, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    fake.set_default(Reply::Stall);
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "think forever", "slow-1"))
        .await;
    c.next_event_where(T, |e| e["payload"]["stream"] == "lifecycle")
        .await
        .unwrap();
    let r = c.call_ok("chat.abort", json!({"sessionKey": "main"})).await;
    assert_eq!(
        r,
        json!({"ok": true, "aborted": true, "runIds": ["slow-1"]})
    );
    c.wait_chat("slow-1", "aborted", T).await;

    c.call_ok("chat.send", send_params("main", "again", "slow-2"))
        .await;
    let r = c
        .call_ok("chat.send", send_params("main", "/stop", "stop-1"))
        .await;
    assert_eq!(r["aborted"], true);
    assert_eq!(r["runIds"], json!(["slow-2"]));
    c.wait_chat("slow-2", "aborted", T).await;
    let r = c
        .call_ok("chat.abort", json!({"sessionKey": "main", "runId": "nope"}))
        .await;
    assert_eq!(r["aborted"], false);
}

#[tokio::test]
async fn chat_inject_appends_an_assistant_note_without_a_model_call() {
    let (fake, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    let r = c
        .call_ok(
            "chat.inject",
            json!({"sessionKey": "main", "message": "note", "label": "ops"}),
        )
        .await;
    assert_eq!(r["ok"], true);
    let ev = c.next_event("chat", T).await.unwrap();
    assert_eq!(ev["payload"]["state"], "final");
    let hist = c
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    assert_eq!(hist["messages"][0]["content"][0]["text"], "[ops]\n\nnote");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn run_that_reaches_no_model_ends_with_a_chat_error() {
    let (fake, _d, w) = setup(|f| {
        let mut c = basic_config(TOKEN, f);
        c["agents"]["defaults"]["model"] =
            json!({"primary": "anthropic/claude-fake", "fallbacks": ["openai/gpt-fake"]});
        c
    })
    .await;
    fake.set_default(Reply::Status(401));
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "hello?", "doomed"))
        .await;
    let err = c.wait_chat("doomed", "error", T).await;
    let msg = err["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("anthropic/claude-fake") && msg.contains("openai/gpt-fake"),
        "{msg}"
    );
    let life = c
        .next_event_where(T, |e| {
            e["payload"]["stream"] == "lifecycle" && e["payload"]["data"]["phase"] == "error"
        })
        .await;
    assert!(life.is_some());
    // Both models were tried (auth failures fail over), each once.
    let models: Vec<String> = fake.requests().iter().map(|r| r.model.clone()).collect();
    assert_eq!(models, ["claude-fake", "gpt-fake"]);
    let r = c
        .call_ok("agent.wait", json!({"runId": "doomed", "timeoutMs": 1000}))
        .await;
    assert_eq!(r["status"], "error");
}

#[tokio::test]
async fn server_error_does_not_fail_over_and_a_cut_stream_is_an_error() {
    let (fake, _d, w) = setup(|f| {
        let mut c = basic_config(TOKEN, f);
        c["agents"]["defaults"]["model"] =
            json!({"primary": "anthropic/claude-fake", "fallbacks": ["openai/gpt-fake"]});
        c
    })
    .await;
    fake.next(Reply::Status(500));
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "a", "e500"))
        .await;
    c.wait_chat("e500", "error", T).await;
    assert_eq!(fake.requests().len(), 1, "500 is not a failover class");
    fake.next(Reply::cut("partial answer that breaks", 6, 3, ms(5)));
    c.call_ok("chat.send", send_params("main", "b", "cut"))
        .await;
    let err = c.wait_chat("cut", "error", T).await;
    assert!(
        err["errorMessage"].as_str().unwrap().contains("cut"),
        "{err}"
    );
}

#[tokio::test]
async fn openai_compatible_provider_streams_too() {
    let (fake, _d, w) = setup(|f| {
        let mut c = basic_config(TOKEN, f);
        c["models"]["providers"]["local"] =
            json!({"baseUrl": f.openai_base_url(), "api": "openai-completions", "apiKey": "sk-local", "models": [{"id": "llama", "name": "Llama"}]});
        c["agents"]["defaults"]["model"] = json!({"primary": "local/llama"});
        c
    })
    .await;
    fake.set_default(Reply::text("compatible answer", 3, ms(5)));
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "hi", "oa"))
        .await;
    let fin = c.wait_chat("oa", "final", T).await;
    assert_eq!(chat_text(&fin), "compatible answer");
    let req = &fake.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.api_key.as_deref(), Some("sk-local"));
    assert_eq!(req.body["messages"][0]["role"], "system");
    assert_eq!(req.body["stream"], true);
}

// ---------------------------------------------------------------- sessions and agent

#[tokio::test]
async fn sessions_list_patch_reset_delete() {
    let (_fake, dir, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "one", "s1"))
        .await;
    c.wait_chat("s1", "final", T).await;
    c.call_ok(
        "chat.send",
        send_params("agent:main:telegram:dm:+1555", "two", "s2"),
    )
    .await;
    c.wait_chat("s2", "final", T).await;

    let l = c.call_ok("sessions.list", json!({})).await;
    assert_eq!(l["count"], 2);
    let keys: Vec<&str> = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["agent:main:telegram:dm:+1555", "agent:main:main"],
        "newest first"
    );
    assert_eq!(l["sessions"][0]["kind"], "direct");
    assert_eq!(l["defaults"]["model"], "claude-fake");
    assert_eq!(
        c.call_ok("sessions.list", json!({"limit": 1})).await["count"],
        1
    );
    assert_eq!(
        c.call_ok("sessions.list", json!({"search": "telegram"}))
            .await["count"],
        1
    );

    let p = c
        .call_ok(
            "sessions.patch",
            json!({"key": "main", "label": "Home", "thinkingLevel": "low"}),
        )
        .await;
    assert_eq!(p["entry"]["label"], "Home");
    assert_eq!(
        sessions_index(dir.path(), "main")["agent:main:main"]["label"],
        "Home"
    );
    assert_eq!(
        c.call_ok("sessions.list", json!({"label": "Home"})).await["count"],
        1
    );
    let h = c
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    assert_eq!(h["thinkingLevel"], "low");
    let p = c
        .call_ok("sessions.patch", json!({"key": "main", "label": null}))
        .await;
    assert!(p["entry"].get("label").is_none());
    let r = c
        .call("sessions.patch", json!({"key": "main", "colour": "red"}))
        .await;
    assert!(r["error"]["message"].as_str().unwrap().contains("colour"));

    let old = sessions_index(dir.path(), "main")["agent:main:main"]["sessionId"].clone();
    let r = c.call_ok("sessions.reset", json!({"key": "main"})).await;
    assert_ne!(r["entry"]["sessionId"], old);
    assert!(
        c.call_ok("chat.history", json!({"sessionKey": "main"}))
            .await["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let r = c.call("sessions.delete", json!({"key": "main"})).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot delete the main session")
    );
    let file = sessions_index(dir.path(), "main")["agent:main:telegram:dm:+1555"]["sessionFile"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .call_ok(
            "sessions.delete",
            json!({"key": "agent:main:telegram:dm:+1555"}),
        )
        .await;
    assert_eq!(r["deleted"], true);
    assert!(!Path::new(&file).exists());
    assert_eq!(c.call_ok("sessions.list", json!({})).await["count"], 1);
}

#[tokio::test]
async fn agent_answers_twice_and_agent_wait_reports_the_outcome() {
    let (fake, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    fake.set_default(Reply::text("agent reply", 3, ms(30)));
    let mut c = client(&w).await;
    let id = c
        .send(
            "agent",
            json!({"message": "do it", "idempotencyKey": "ag-1", "extraSystemPrompt": "Be terse."}),
        )
        .await;
    let first = c.response(&id, T).await;
    assert_eq!(first["payload"]["status"], "accepted");
    assert_eq!(first["payload"]["runId"], "ag-1");
    let wait_id = c
        .send("agent.wait", json!({"runId": "ag-1", "timeoutMs": 10000}))
        .await;
    let second = c.response(&id, T).await;
    assert_eq!(second["ok"], true);
    assert_eq!(second["payload"]["status"], "ok");
    assert_eq!(second["payload"]["summary"], "completed");
    assert_eq!(
        second["payload"]["result"]["payloads"][0]["text"],
        "agent reply"
    );
    let waited = c.response(&wait_id, T).await;
    assert_eq!(waited["payload"]["status"], "ok");
    assert!(
        waited["payload"]["endedAt"].as_i64().unwrap()
            >= waited["payload"]["startedAt"].as_i64().unwrap()
    );
    assert!(
        fake.requests()[0].body["system"]
            .as_str()
            .unwrap()
            .contains("Be terse.")
    );
    let r = c
        .call_ok(
            "agent.wait",
            json!({"runId": "never-started", "timeoutMs": 50}),
        )
        .await;
    assert_eq!(r["status"], "timeout");
}

// ---------------------------------------------------------------- scoping

#[tokio::test]
async fn scoped_connections_never_see_another_agents_sessions_or_events() {
    let (fake, _d, w) = setup(|f| multi_agent_config(TOKEN, f, &["alice", "bob"])).await;
    fake.set_default(Reply::text("private answer for alice", 6, ms(20)));
    let mut op = client(&w).await;
    let mut a = WsClient::connect(&w.ws_url(), TOKEN, Some("alice"))
        .await
        .unwrap();
    let mut b = WsClient::connect(&w.ws_url(), TOKEN, Some("bob"))
        .await
        .unwrap();
    assert_eq!(
        a.hello["snapshot"]["sessionDefaults"]["mainSessionKey"],
        "agent:alice:main"
    );
    assert_eq!(
        b.hello["snapshot"]["sessionDefaults"]["defaultAgentId"],
        "bob"
    );

    // Bare "main" on a scoped connection is that agent's main session.
    let ack = a
        .call_ok(
            "chat.send",
            send_params("main", "secret for alice", "alice-run"),
        )
        .await;
    assert_eq!(ack["status"], "started");
    let fin = a.wait_chat("alice-run", "final", T).await;
    assert_eq!(fin["sessionKey"], "agent:alice:main");
    op.wait_chat("alice-run", "final", T).await;

    // Bob saw nothing of it.
    let seen = b.drain_events(ms(300)).await;
    assert!(
        seen.iter().all(|e| !e.to_string().contains("alice")),
        "bob received alice's events: {seen:?}"
    );

    // Bob cannot name alice's session, nor list it, nor see alice in agents.list.
    let r = b
        .call("chat.history", json!({"sessionKey": "agent:alice:main"}))
        .await;
    assert_eq!(
        r["error"]["message"],
        "session agent:alice:main belongs to another agent"
    );
    let r = b
        .call("chat.send", send_params("agent:alice:main", "x", "b-1"))
        .await;
    assert_eq!(r["ok"], false);
    let r = b.call("sessions.list", json!({"agentId": "alice"})).await;
    assert_eq!(r["ok"], false);
    assert_eq!(b.call_ok("sessions.list", json!({})).await["count"], 0);
    assert_eq!(
        b.call_ok("agents.list", json!({})).await["agents"],
        json!([{"id": "bob", "name": "BOB"}])
    );
    let h = b.call_ok("health", json!({})).await;
    assert_eq!(h["agents"].as_array().unwrap().len(), 1);
    assert_eq!(b.call("config.get", json!({})).await["ok"], false);
    let r = b
        .call(
            "agent",
            json!({"message": "x", "idempotencyKey": "b-2", "agentId": "alice"}),
        )
        .await;
    assert_eq!(r["ok"], false);
    let r = b
        .call_ok(
            "agent.wait",
            json!({"runId": "alice-run", "timeoutMs": 100}),
        )
        .await;
    assert_eq!(r["status"], "timeout", "another agent's run looks unknown");
    let r = op
        .call_ok(
            "agent.wait",
            json!({"runId": "alice-run", "timeoutMs": 100}),
        )
        .await;
    assert_eq!(r["status"], "ok");
    // The operator sees both.
    assert_eq!(op.call_ok("sessions.list", json!({})).await["count"], 1);
    assert_eq!(
        op.call_ok("agents.list", json!({})).await["agents"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // An unknown agent in the scope header is refused.
    assert!(
        WsClient::connect(&w.ws_url(), TOKEN, Some("mallory"))
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------- failover and durability

#[tokio::test]
async fn failover_to_the_second_profile_and_cooldown_survives_a_restart() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = basic_config(TOKEN, &fake);
    cfg["models"]["providers"]["anthropic"]
        .as_object_mut()
        .unwrap()
        .remove("apiKey");
    write_config(dir.path(), &cfg);
    write_auth_profiles(
        dir.path(),
        "main",
        &json!({"version": 1,
            "profiles": {"anthropic:first": {"type": "api_key", "provider": "anthropic", "key": "sk-first"},
                         "anthropic:second": {"type": "api_key", "provider": "anthropic", "key": "sk-second"}},
            "order": {"anthropic": ["anthropic:first", "anthropic:second"]}}),
    );
    fake.on_key("sk-first", Reply::Status(429));
    fake.set_default(Reply::text("from the second profile", 3, ms(5)));
    let mut w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "hi", "fo-1"))
        .await;
    assert_eq!(
        chat_text(&c.wait_chat("fo-1", "final", T).await),
        "from the second profile"
    );
    let keys: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap())
        .collect();
    assert_eq!(keys, ["sk-first", "sk-second"]);

    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("agents/main/agent/auth-profiles.json")).unwrap(),
    )
    .unwrap();
    let first = &stored["usageStats"]["anthropic:first"];
    assert_eq!(first["errorCount"], 1);
    assert_eq!(first["failureCounts"]["rate_limit"], 1);
    let until = first["cooldownUntil"].as_i64().unwrap();
    let at = first["lastFailureAt"].as_i64().unwrap();
    assert_eq!(until - at, 60_000, "first cooldown is 1 minute");
    assert_eq!(stored["lastGood"]["anthropic"], "anthropic:second");
    assert_eq!(
        stored["profiles"]["anthropic:first"]["key"], "sk-first",
        "profiles round-trip"
    );

    // After a restart the cooldown still holds: the first profile is not even tried.
    drop(c);
    assert!(w.terminate().success());
    fake.clear_requests();
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "again", "fo-2"))
        .await;
    c.wait_chat("fo-2", "final", T).await;
    let keys: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap())
        .collect();
    assert_eq!(keys, ["sk-second"]);
}

#[tokio::test]
async fn billing_failure_disables_the_profile_for_five_hours() {
    let (fake, dir, w) = setup(|f| basic_config(TOKEN, f)).await;
    fake.on_key("sk-fake-config", Reply::Status(402));
    let mut c = client(&w).await;
    c.call_ok("chat.send", send_params("main", "hi", "bill"))
        .await;
    c.wait_chat("bill", "error", T).await;
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("agents/main/agent/auth-profiles.json")).unwrap(),
    )
    .unwrap();
    let s = &stored["usageStats"]["anthropic:config"];
    assert_eq!(s["disabledReason"], "billing");
    assert_eq!(
        s["disabledUntil"].as_i64().unwrap() - s["lastFailureAt"].as_i64().unwrap(),
        5 * 3600 * 1000
    );
}

#[tokio::test]
async fn stalled_stream_times_out_and_fails_over() {
    let (fake, _d, w) = setup(|f| {
        let mut c = basic_config(TOKEN, f);
        c["agents"]["defaults"]["timeoutSeconds"] = json!(1);
        c["agents"]["defaults"]["model"] =
            json!({"primary": "anthropic/claude-fake", "fallbacks": ["openai/gpt-fake"]});
        c
    })
    .await;
    fake.push(Rule {
        key: None,
        model: Some("claude-fake".into()),
        times: None,
        reply: Reply::Stall,
    });
    fake.set_default(Reply::text("fallback answer", 2, ms(1)));
    let mut c = client(&w).await;
    c.call_ok("chat.send", json!({"sessionKey": "main", "message": "hi", "idempotencyKey": "stall", "timeoutMs": 10000})).await;
    assert_eq!(
        chat_text(&c.wait_chat("stall", "final", T).await),
        "fallback answer"
    );
}

#[tokio::test]
async fn kill_9_during_a_streamed_reply_keeps_every_acknowledged_message() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    fake.set_default(Reply::text(&"long streamed answer ".repeat(20), 40, ms(50)));
    let mut w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = client(&w).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let msg = format!("durable message {i}");
        let ack = c
            .call_ok("chat.send", send_params("main", &msg, &format!("k-{i}")))
            .await;
        assert_eq!(ack["status"], "started");
        acked.push(msg);
    }
    // Mid-stream: wait for a delta, then crash.
    c.next_event_where(T, |e| {
        e["event"] == "chat" && e["payload"]["state"] == "delta"
    })
    .await
    .unwrap();
    w.kill9();
    let w = Worker::start(dir.path(), WorkerOpts::default());
    assert_eq!(
        transcript_user_texts(dir.path(), "main", "agent:main:main"),
        acked
    );
    let mut c = client(&w).await;
    let hist = c
        .call_ok("chat.history", json!({"sessionKey": "main"}))
        .await;
    let users: Vec<_> = hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .collect();
    assert_eq!(users.len(), 3);
    // The session keeps working after the crash.
    fake.set_default(Reply::text("back", 1, ms(1)));
    c.call_ok("chat.send", send_params("main", "after", "k-after"))
        .await;
    c.wait_chat("k-after", "final", T).await;
}

// ---------------------------------------------------------------- process

#[tokio::test]
async fn sigterm_sends_shutdown_to_clients_and_exits_zero() {
    let (_f, dir, mut w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = w.terminate();
        (s, w)
    });
    let ev = c.next_event("shutdown", T).await.expect("shutdown event");
    assert!(ev["payload"]["reason"].is_string());
    let (status, w) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(w.extra_stdout().is_empty(), "only the ready line on stdout");
    // Nothing but our own files in the state dir.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["clawdbot.json"]);
}

#[tokio::test]
async fn config_substitution_env_file_and_unknown_keys() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = basic_config("${GW_TOKEN}", &fake);
    cfg["models"]["providers"]["anthropic"]
        .as_object_mut()
        .unwrap()
        .remove("apiKey");
    cfg["gateway"]["tenant"] = json!("unknown keys never brick a start");
    cfg["someFutureSection"] = json!({"x": 1});
    write_config(dir.path(), &cfg);
    let env_file = dir.path().join("worker.env");
    worker::atomic::write_file(
        &env_file,
        b"# provider keys\nANTHROPIC_API_KEY=sk-from-env-file\nGW_TOKEN=tok-from-env\n",
        0o600,
    )
    .unwrap();
    let w = Worker::start(
        dir.path(),
        WorkerOpts {
            env_file: Some(env_file),
            ..Default::default()
        },
    );
    assert!(WsClient::connect(&w.ws_url(), TOKEN, None).await.is_err());
    let mut c = WsClient::connect(&w.ws_url(), "tok-from-env", None)
        .await
        .unwrap();
    c.call_ok("chat.send", send_params("main", "hi", "env-1"))
        .await;
    c.wait_chat("env-1", "final", T).await;
    assert_eq!(
        fake.requests()[0].api_key.as_deref(),
        Some("sk-from-env-file")
    );

    // A missing variable is a config error: exit 64 with its name, and no ready line.
    write_config(dir.path(), &basic_config("${NOT_SET_ANYWHERE}", &fake));
    let out = std::process::Command::new(tests::bin_path("wirebot-worker"))
        .args(["--state-dir", dir.path().to_str().unwrap(), "--port", "0"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_SET_ANYWHERE"));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn takes_over_a_listening_socket_passed_as_fd_3() {
    let (_f, dir, w0) = setup(|f| basic_config(TOKEN, f)).await;
    drop(w0);
    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!(
            "SKIP takes_over_a_listening_socket_passed_as_fd_3: systemd-socket-activate not installed"
        );
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // systemd-socket-activate binds, listens, and execs the worker with LISTEN_FDS=1 / LISTEN_PID / fd 3.
    let mut child = std::process::Command::new(activate)
        .args(["-l", &format!("127.0.0.1:{port}"), "-E", "WIREBOT_LOG=warn"])
        .arg(tests::bin_path("wirebot-worker"))
        .args(["--state-dir", dir.path().to_str().unwrap(), "--port", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // systemd-socket-activate execs the program on the first connection; this one waits in the backlog.
    let deadline = std::time::Instant::now() + T;
    let _trigger = loop {
        // Poll until systemd-socket-activate has bound the port.
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "socket never bound: {e}"
            ),
        }
        std::thread::sleep(ms(20));
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with(&format!("wirebot-worker ready port={port} ")),
        "{line}"
    );
    let mut c = WsClient::connect(&format!("ws://127.0.0.1:{port}/"), TOKEN, None)
        .await
        .unwrap();
    assert_eq!(c.call_ok("health", json!({})).await["ok"], true);
    let _ = child.kill();
    let _ = child.wait();
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

// ---------------------------------------------------------------- HTTP surface

#[tokio::test]
async fn healthz_and_webchat_page() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let r = reqwest::get(w.http_url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["agents"], 1);
    let page = reqwest::get(w.http_url("/")).await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("chat.send") && html.contains("connect.challenge"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
    assert_eq!(
        reqwest::get(w.http_url("/nope")).await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn openai_chat_completions_stream_and_not() {
    let (fake, _d, w) = setup(|f| multi_agent_config(TOKEN, f, &["main", "helper"])).await;
    fake.set_default(Reply::text("completion text", 3, ms(5)));
    let http = reqwest::Client::new();
    let url = w.http_url("/v1/chat/completions");
    let body = json!({"model": "agent:helper", "messages": [{"role": "user", "content": "hi"}]});
    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": {"message": "Unauthorized", "type": "unauthorized"}})
    );

    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "completion text");

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["user"] = json!("u1");
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("x-clawdbot-agent-id", "helper")
        .json(&sbody)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "completion text");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // The runs landed in the helper agent's sessions.
    let mut c = client(&w).await;
    let l = c
        .call_ok("sessions.list", json!({"agentId": "helper"}))
        .await;
    let keys: Vec<&str> = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"agent:helper:openai-user:u1"), "{keys:?}");

    // A scope header pins the agent.
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("x-wirebot-agent", "main")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn hooks_check_token_method_size_and_start_runs() {
    let (fake, _d, w) = setup(|f| {
        let mut c = basic_config(TOKEN, f);
        c["hooks"] = json!({"enabled": true, "token": "hook-secret"});
        c
    })
    .await;
    fake.set_default(Reply::text("hooked", 1, ms(1)));
    let http = reqwest::Client::new();
    let wake = w.http_url("/hooks/wake");
    assert_eq!(
        http.post(&wake)
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(&wake)
            .bearer_auth("wrong")
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(&wake)
            .bearer_auth("hook-secret")
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let big = json!({"text": "z".repeat(300 * 1024)});
    assert_eq!(
        http.post(&wake)
            .bearer_auth("hook-secret")
            .json(&big)
            .send()
            .await
            .unwrap()
            .status(),
        413
    );
    let r = http
        .post(&wake)
        .header("x-clawdbot-token", "hook-secret")
        .json(&json!({"text": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"ok": true, "mode": "now"})
    );

    let mut c = client(&w).await;
    let r = http
        .post(format!("{}?token=hook-secret", w.http_url("/hooks/agent")))
        .json(&json!({"message": "summarise", "name": "Gmail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let run_id = v["runId"].as_str().unwrap().to_string();
    let fin = c.wait_chat(&run_id, "final", T).await;
    assert!(
        fin["sessionKey"]
            .as_str()
            .unwrap()
            .starts_with("agent:main:hook:"),
        "{fin}"
    );
    assert_eq!(chat_text(&fin), "hooked");
}

#[tokio::test]
async fn hooks_are_off_unless_enabled() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let r = reqwest::Client::new()
        .post(w.http_url("/hooks/wake"))
        .bearer_auth("x")
        .json(&json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

// ---------------------------------------------------------------- presence and slow consumers

#[tokio::test]
async fn operators_get_presence_events_and_scoped_clients_stay_out_of_presence() {
    let (_f, _d, w) = setup(|f| multi_agent_config(TOKEN, f, &["main", "tenant"])).await;
    let mut op = client(&w).await;
    let mut p = connect_params(TOKEN);
    p["client"] = json!({"id": "cli", "displayName": "second-operator", "version": "9", "platform": "linux", "mode": "cli"});
    let _second = WsClient::connect_with(&w.ws_url(), None, p).await.unwrap();
    let ev = op
        .next_event_where(T, |e| {
            e["event"] == "presence" && e.to_string().contains("second-operator")
        })
        .await
        .expect("presence event for the new operator");
    assert!(
        ev["payload"]["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["host"] == "second-operator" && p["mode"] == "cli")
    );
    let mut scoped = WsClient::connect(&w.ws_url(), TOKEN, Some("tenant"))
        .await
        .unwrap();
    assert_eq!(
        scoped.hello["snapshot"]["presence"],
        json!([]),
        "tenants do not see who else is connected"
    );
    let seen = scoped.drain_events(ms(200)).await;
    assert!(seen.iter().all(|e| e["event"] != "presence"), "{seen:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let (fake, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    // Each run's final carries 2 MiB of text. Finals are never dropped, so a client that reads nothing passes
    // maxBufferedBytes once the kernel's socket buffers are full, and is closed; streamed deltas alone would not
    // do it (they are skipped while much is queued).
    fake.set_default(Reply::text(&"abcd".repeat(512 * 1024), 1, ms(0)));
    let mut op = client(&w).await;
    let mut slow = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    const RUNS: usize = 12;
    for i in 0..RUNS {
        let run = format!("flood-{i}");
        op.call_ok(
            "chat.send",
            send_params(&format!("flood{i}"), "flood me", &run),
        )
        .await;
        // The operator that keeps reading gets everything.
        op.wait_chat(&run, "final", T).await;
    }
    let (close, frames) = slow.raw().recv_until_close(Duration::from_secs(60)).await;
    assert_eq!(close, (1008, "slow consumer".into()));
    let finals = frames
        .iter()
        .filter(|f| f["event"] == "chat" && f["payload"]["state"] == "final")
        .count();
    assert!(
        finals < RUNS,
        "finals after the close were not queued for the slow client"
    );
}

#[tokio::test]
async fn tick_events_arrive_on_the_advertised_interval() {
    let (_f, _d, w) = setup(|f| basic_config(TOKEN, f)).await;
    let mut c = client(&w).await;
    let tick = c
        .next_event("tick", Duration::from_secs(40))
        .await
        .expect("a tick within tickIntervalMs (+10 s slack)");
    assert!(tick["payload"]["ts"].as_i64().unwrap() > 0);
    assert!(tick["seq"].as_u64().unwrap() >= 1);
}

/// An OpenAI-compatible provider that answers every request with `tokens` in ONE write (the whole SSE body at once,
/// as tests/bench/worker.sh's provider does): the worker parses thousands of events without waiting on the network.
async fn burst_provider(tokens: Vec<String>) -> (String, tokio::task::JoinHandle<()>) {
    let chunk = |delta: Value, fin: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]})
        )
    };
    let mut body = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for t in &tokens {
        body.push_str(&chunk(json!({"content": t}), Value::Null));
    }
    body.push_str(&chunk(json!({}), json!("stop")));
    body.push_str("data: [DONE]\n\n");
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-type", "text/event-stream")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, task)
}

#[tokio::test]
async fn a_reading_client_gets_every_token_of_a_long_burst() {
    // 2,000 tokens arriving at once: the cumulative `agent` events alone add up to ~20 MB, far over
    // maxBufferedBytes, yet a client that keeps reading is not a slow consumer and gets the whole reply
    // (tests/bench/worker.sh hung here: the final event closed the socket as "slow consumer").
    let tokens: Vec<String> = (0..2000).map(|i| format!("tok{i:04} ")).collect();
    let (base, _provider) = burst_provider(tokens.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &json!({"gateway": {"auth": {"mode": "token", "token": TOKEN}},
            "models": {"providers": {"burst": {"baseUrl": base, "apiKey": "k", "api": "openai-completions",
                "models": [{"id": "m"}]}}},
            "agents": {"defaults": {"model": {"primary": "burst/m"}}}}),
    );
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = client(&w).await;
    for run in ["long-1", "long-2"] {
        c.call_ok("chat.send", send_params("main", "flood", run))
            .await;
        let fin = c.wait_chat(run, "final", Duration::from_secs(60)).await;
        assert_eq!(chat_text(&fin), tokens.concat());
        assert_eq!(c.closed, None);
    }
}

#[tokio::test]
async fn a_run_id_of_one_agent_is_not_usable_by_another() {
    let (_f, _d, w) = setup(|f| multi_agent_config(TOKEN, f, &["main", "tenant"])).await;
    let mut main = WsClient::connect(&w.ws_url(), TOKEN, Some("main"))
        .await
        .unwrap();
    let mut tenant = WsClient::connect(&w.ws_url(), TOKEN, Some("tenant"))
        .await
        .unwrap();
    main.call_ok("chat.send", send_params("main", "secret plans", "run-1"))
        .await;
    main.wait_chat("run-1", "final", T).await;
    // The same idempotency key from another agent: refused, and nothing of the first run comes back.
    for method in ["agent", "chat.send"] {
        let p = json!({"sessionKey": "main", "message": "hi", "idempotencyKey": "run-1"});
        let r = tenant.call(method, p).await;
        assert_eq!(r["ok"], false, "{method}: {r}");
        assert!(
            !r.to_string().contains("fake provider"),
            "{method} leaked the other agent's reply: {r}"
        );
    }
    // Its own ids work.
    tenant
        .call_ok("chat.send", send_params("main", "hello", "run-2"))
        .await;
    tenant.wait_chat("run-2", "final", T).await;
}
