//! End-to-end: the worker hot-reloads its agent list on SIGHUP without dropping other agents' connections.
//! A shard as the supervisor writes it: one agent per member, `session.store` and `memorySearch.store.path` with
//! `{agentId}` under each member's own directory.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tests::fake_provider::{FakeProvider, Reply, Rule};
use tests::worker::{
    DEADLINE, TOKEN, Worker, WorkerOpts, WsClient, basic_config, chat_text, config_hash,
    write_config,
};

/// The shard's `clawdbot.json` for `ids` under `data/users/<id>/`. Agent `b` answers through the OpenAI model, so a
/// run of b can be made slow on its own.
fn shard_config(fake: &FakeProvider, data: &Path, ids: &[&str]) -> Value {
    let users = data.join("users");
    let mut c = basic_config(TOKEN, fake);
    c["agents"]["list"] = ids
        .iter()
        .map(|id| {
            let mut a = json!({"id": id,
                "workspace": users.join(id).join("workspace"),
                "agentDir": users.join(id).join("agents/main/agent")});
            if *id == "b" {
                a["model"] = json!("openai/gpt-fake");
            }
            a
        })
        .collect();
    c["session"] = json!({"store": format!("{}/{{agentId}}/agents/main/sessions/sessions.json", users.display())});
    c["agents"]["defaults"]["memorySearch"] =
        json!({"store": {"path": format!("{}/{{agentId}}/memory/main.sqlite", users.display())}});
    c
}

/// Sends `text` on `agent`'s main session and returns the run id.
async fn send(c: &mut WsClient, agent: &str, text: &str, run: &str) -> String {
    let p = c
        .call_ok(
            "chat.send",
            json!({"sessionKey": format!("agent:{agent}:main"), "message": text, "idempotencyKey": run}),
        )
        .await;
    assert_eq!(p["status"], "started", "{p}");
    run.to_string()
}

/// The user texts of `agent`'s main session, read from its own member directory.
fn member_user_texts(data: &Path, agent: &str) -> Vec<String> {
    let dir = data.join("users").join(agent).join("agents/main/sessions");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sessions.json")).unwrap()).unwrap();
    let file = index[format!("agent:{agent}:main")]["sessionFile"]
        .as_str()
        .unwrap_or_else(|| panic!("no main session for {agent}: {index}"))
        .to_string();
    assert!(
        Path::new(&file).starts_with(&dir),
        "{agent}'s transcript {file} is outside {}",
        dir.display()
    );
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "message" && v["message"]["role"] == "user")
        .map(|v| {
            v["message"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn sighup_adds_and_removes_agents_without_touching_the_others() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let state = data.path().join("shard");
    write_config(&state, &shard_config(&fake, data.path(), &["a", "b"]));
    let first_hash = config_hash(&state);
    let w = Worker::start(&state, WorkerOpts::default());
    let h = w.healthz().await;
    assert_eq!(
        (&h["configHash"], &h["agents"], &h["reloadError"]),
        (&json!(first_hash), &json!(2), &Value::Null)
    );

    let mut op = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let mut a = WsClient::connect(&w.ws_url(), TOKEN, Some("a"))
        .await
        .unwrap();
    let mut b = WsClient::connect(&w.ws_url(), TOKEN, Some("b"))
        .await
        .unwrap();
    let run = send(&mut a, "a", "one", "a-1").await;
    a.wait_chat(&run, "final", DEADLINE).await;

    // In flight across the reload: a slow run of b (to be aborted) and one of a (must finish on a's socket).
    fake.push(Rule {
        key: None,
        model: Some("gpt-fake".into()),
        times: None,
        reply: Reply::text(&"slow ".repeat(100), 100, Duration::from_millis(100)),
    });
    let b_run = send(&mut b, "b", "doomed", "b-1").await;
    op.next_event_where(DEADLINE, |e| {
        e["event"] == "agent"
            && e["payload"]["runId"] == b_run
            && e["payload"]["stream"] == "assistant"
    })
    .await
    .expect("b's run streams before the reload");
    let across = "streamed across the reload ".repeat(3);
    fake.push(Rule {
        key: None,
        model: Some("claude-fake".into()),
        times: Some(1),
        reply: Reply::text(&across, 30, Duration::from_millis(50)),
    });
    let a_run = send(&mut a, "a", "two", "a-2").await;

    write_config(&state, &shard_config(&fake, data.path(), &["a", "c"]));
    let second_hash = config_hash(&state);
    assert_ne!(second_hash, first_hash);
    w.reload();
    let h = w.wait_config_hash().await;
    assert_eq!((&h["agents"], &h["reloadError"]), (&json!(2), &Value::Null));

    // b: its open socket is closed with a clear reason, its run aborted, a new scoped connect refused.
    assert_eq!(b.next_event("no-such-event", DEADLINE).await, None);
    let (code, reason) = b.closed.clone().expect("b's socket closed");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("agent removed"), "{reason}");
    let aborted = op.wait_chat(&b_run, "aborted", DEADLINE).await;
    assert_eq!(aborted["sessionKey"], "agent:b:main");
    let refused = WsClient::connect(&w.ws_url(), TOKEN, Some("b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("unknown agent"), "{refused}");

    // a: never closed; the run that spanned the reload streamed to the end, and a new one works.
    let fin = a.wait_chat(&a_run, "final", DEADLINE).await;
    assert_eq!(chat_text(&fin), across);
    let run = send(&mut a, "a", "three", "a-3").await;
    let fin = a.wait_chat(&run, "final", DEADLINE).await;
    assert_eq!(chat_text(&fin), "Hello from the fake provider.");
    assert_eq!(a.closed, None);

    // c: added live, scoped and chatting.
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, Some("c"))
        .await
        .unwrap();
    assert_eq!(
        c.hello["snapshot"]["sessionDefaults"]["defaultAgentId"],
        "c"
    );
    let run = send(&mut c, "c", "hello c", "c-1").await;
    c.wait_chat(&run, "final", DEADLINE).await;
    let agents = c.call_ok("agents.list", json!({})).await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1);

    // Each member's sessions and transcripts are in its own directory, none in the shard's state dir.
    assert_eq!(member_user_texts(data.path(), "a"), ["one", "two", "three"]);
    assert_eq!(member_user_texts(data.path(), "c"), ["hello c"]);
    assert_eq!(member_user_texts(data.path(), "b"), ["doomed"]);
    assert!(
        !state.join("agents").exists(),
        "nothing under the shard's own agents/"
    );

    // Operators see the applied config in `health` too.
    let health = op.call_ok("health", json!({})).await;
    assert_eq!(health["configHash"], second_hash);
    assert_eq!(health["agentCount"], 2);

    // A broken file: the old config stays applied, the error is exposed, service continues.
    worker::atomic::write_file(
        &state.join("clawdbot.json"),
        b"{ agents: { list: [ {id: \"a\"} ",
        0o600,
    )
    .unwrap();
    w.reload();
    let h = w
        .wait_healthz("a reload error", |h| !h["reloadError"].is_null())
        .await;
    assert_eq!(h["configHash"], second_hash);
    assert_eq!(h["agents"], 2);
    let err = h["reloadError"].as_str().unwrap();
    assert!(err.contains("syntax error"), "{err}");
    let run = send(&mut a, "a", "four", "a-4").await;
    a.wait_chat(&run, "final", DEADLINE).await;
    let run = send(&mut c, "c", "still here", "c-2").await;
    c.wait_chat(&run, "final", DEADLINE).await;
    assert_eq!((a.closed.clone(), c.closed.clone()), (None, None));
    assert_eq!(
        op.call_ok("health", json!({})).await["reloadError"],
        json!(err)
    );

    // Fixed again: applied, error cleared.
    write_config(&state, &shard_config(&fake, data.path(), &["a", "c"]));
    w.reload();
    w.wait_healthz("the error cleared", |h| h["reloadError"].is_null())
        .await;
}

#[tokio::test]
async fn sighup_rereads_the_env_file() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let env_file = dir.path().join("gateway.env");
    let write_env = |name: &str| {
        worker::atomic::write_file(&env_file, format!("MEMBER_NAME={name}\n").as_bytes(), 0o600)
            .unwrap()
    };
    write_env("Alice");
    let mut cfg = basic_config(TOKEN, &fake);
    cfg["agents"]["list"] = json!([{"id": "main", "name": "${MEMBER_NAME}"}]);
    write_config(&state, &cfg);
    let w = Worker::start(
        &state,
        WorkerOpts {
            env_file: Some(env_file.clone()),
            ..WorkerOpts::default()
        },
    );
    let mut op = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let name = |v: &Value| v["agents"][0]["name"].clone();
    assert_eq!(name(&op.call_ok("agents.list", json!({})).await), "Alice");

    // Same clawdbot.json, new env file: the reload applies it (same configHash, one more reload).
    write_env("Alicia");
    w.reload();
    w.wait_healthz("the second reload", |h| h["reloads"] == 1)
        .await;
    assert_eq!(name(&op.call_ok("agents.list", json!({})).await), "Alicia");

    // An env file that no longer defines the variable: refused, the old value stays.
    worker::atomic::write_file(&env_file, b"OTHER=1\n", 0o600).unwrap();
    w.reload();
    let h = w
        .wait_healthz("a reload error", |h| !h["reloadError"].is_null())
        .await;
    assert!(
        h["reloadError"].as_str().unwrap().contains("MEMBER_NAME"),
        "{h}"
    );
    assert_eq!(name(&op.call_ok("agents.list", json!({})).await), "Alicia");
}
