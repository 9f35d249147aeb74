//! Memory, cron, skills and the tool loop through the real `wirebot-worker` binary: a `memory_search` tool round trip
//! written step by step to the transcript, a one-second cron job firing with `cron` events and a growing run log,
//! system events reaching the main session, `skills.status` and `<available_skills>` from templates/skills.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::fake_embeddings::FakeEmbeddings;
use tests::fake_provider::{FakeProvider, Reply};
use tests::worker::*;

const T: Duration = Duration::from_secs(20);

const WIREBOT_SKILLS: [&str; 4] = [
    "wirebot-core",
    "wirebot-accountability",
    "wirebot-memory",
    "wirebot-network",
];

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/skills")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    worker::atomic::write_file(path, text.as_bytes(), 0o600).unwrap();
}

/// Every transcript entry of `key` (agent `main`), as `message` objects in file order.
fn transcript_messages(state: &Path, key: &str) -> Vec<Value> {
    let index = sessions_index(state, "main");
    let file = index[key]["sessionFile"]
        .as_str()
        .unwrap_or_else(|| panic!("no session {key} in {index}"));
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "message")
        .map(|v| v["message"].clone())
        .collect()
}

/// Polls `check` until it returns `Some` or `T` passes.
async fn poll<X>(what: &str, mut check: impl FnMut() -> Option<X>) -> X {
    let deadline = Instant::now() + T;
    loop {
        if let Some(x) = check() {
            return x;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn memory_search_tool_round_trip_is_answered_and_transcribed() {
    let fake = FakeProvider::start().await;
    let emb = FakeEmbeddings::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = basic_config(TOKEN, &fake);
    cfg["agents"]["defaults"]["memorySearch"] =
        json!({"provider": "openai", "remote": {"baseUrl": emb.base_url, "apiKey": "sk-emb"}});
    write_config(dir.path(), &cfg);
    let ws = dir.path().join("workspace");
    write(
        &ws.join("MEMORY.md"),
        "# Decisions\n\nPricing: we settled on 49 dollars per month for the Pro plan after the Acme interviews.\n",
    );
    write(
        &ws.join("memory/2025-01-03.md"),
        "Standup: shipped the onboarding flow; next is the referral program.\n",
    );
    fake.next(Reply::ToolCall {
        text: String::new(),
        id: "toolu_mem1".into(),
        name: "memory_search".into(),
        input: json!({"query": "Pro plan pricing decision"}),
    });
    fake.next(Reply::text(
        "You chose 49 dollars per month.",
        3,
        Duration::from_millis(1),
    ));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    c.call_ok(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "What price did we pick?", "idempotencyKey": "tool-1"}),
    )
    .await;
    let fin = c.wait_chat("tool-1", "final", T).await;
    assert!(
        chat_text(&fin).ends_with("You chose 49 dollars per month."),
        "{fin}"
    );

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "one call for the tool, one for the answer");
    let first = &reqs[0].body;
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools offered: {first}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for t in ["memory_search", "memory_get", "memory_append", "cron_list"] {
        assert!(tools.contains(&t), "{t} not offered: {tools:?}");
    }
    // A main session's first turn starts with MEMORY.md in the system prompt.
    assert!(
        first["system"].to_string().contains("49 dollars per month"),
        "{}",
        first["system"]
    );
    // The second call carries the tool result with the MEMORY.md hit.
    let second = reqs[1].body["messages"].to_string();
    assert!(second.contains("toolu_mem1"), "{second}");
    assert!(second.contains("tool_result"), "{second}");
    assert!(second.contains("MEMORY.md"), "{second}");
    assert!(emb.requests() > 0, "the embedding server was never called");

    let msgs = transcript_messages(dir.path(), "agent:main:main");
    let roles: Vec<&str> = msgs.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(
        roles,
        ["user", "assistant", "toolResult", "assistant"],
        "{msgs:?}"
    );
    assert_eq!(
        msgs[0]["content"][0]["text"], "What price did we pick?",
        "{msgs:?}"
    );
    let call = &msgs[1]["content"][0];
    assert_eq!(call["type"], "toolCall");
    assert_eq!(call["name"], "memory_search");
    assert_eq!(call["id"], "toolu_mem1");
    assert_eq!(call["arguments"]["query"], "Pro plan pricing decision");
    assert_eq!(msgs[2]["toolCallId"], "toolu_mem1");
    assert_eq!(msgs[2]["isError"], false);
    assert!(
        msgs[2]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("MEMORY.md"),
        "{msgs:?}"
    );
    assert!(
        msgs[3]["content"][0]["text"]
            .as_str()
            .unwrap()
            .ends_with("You chose 49 dollars per month."),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn bad_tool_input_goes_back_to_the_model_as_an_error_result() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    fake.next(Reply::ToolCall {
        text: String::new(),
        id: "toolu_bad".into(),
        name: "memory_get".into(),
        input: json!({"path": "../../etc/passwd"}),
    });
    fake.next(Reply::text("Sorry.", 1, Duration::from_millis(1)));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    c.call_ok(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "read it", "idempotencyKey": "bad-1"}),
    )
    .await;
    c.wait_chat("bad-1", "final", T).await;
    let msgs = transcript_messages(dir.path(), "agent:main:main");
    let result = msgs
        .iter()
        .find(|m| m["role"] == "toolResult")
        .unwrap_or_else(|| panic!("no tool result: {msgs:?}"));
    assert_eq!(result["isError"], true, "{result}");
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("memory_get"),
        "{result}"
    );
    assert!(
        fake.requests()[1].body["messages"]
            .to_string()
            .contains("\"is_error\":true")
    );
}

#[tokio::test]
async fn cron_every_second_job_fires_with_events_and_a_growing_run_log() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    fake.set_default(Reply::text("Standup noted.", 2, Duration::from_millis(1)));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let added = c
        .call_ok(
            "cron.add",
            json!({"name": "tick", "schedule": {"kind": "every", "everyMs": 1000},
                "sessionTarget": "isolated", "payload": {"kind": "agentTurn", "message": "Run the standup."}}),
        )
        .await;
    let id = added["id"]
        .as_str()
        .or_else(|| added["job"]["id"].as_str())
        .unwrap_or_else(|| panic!("no id in {added}"))
        .to_string();
    let ev = c
        .next_event_where(T, |e| {
            e["event"] == "cron"
                && e["payload"]["jobId"] == id
                && e["payload"]["action"] == "finished"
        })
        .await
        .unwrap_or_else(|| panic!("no cron finished event for {id}"));
    assert_eq!(ev["payload"]["status"], "ok", "{ev}");
    let log = dir.path().join("cron/runs").join(format!("{id}.jsonl"));
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let n1 = poll("the first run log line", || {
        Some(lines(&log)).filter(|n| *n >= 1)
    })
    .await;
    poll("the run log to grow", || {
        Some(lines(&log)).filter(|n| *n > n1)
    })
    .await;
    let entry: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(entry["status"], "ok", "{entry}");
    let list = c.call_ok("cron.list", json!({})).await;
    let jobs = list["jobs"].as_array().unwrap();
    assert!(
        jobs.iter().any(|j| j["id"] == id && j["name"] == "tick"),
        "{list}"
    );
    // The isolated turn ran in session cron:<jobId> with the job's message.
    let key = format!("agent:main:cron:{id}");
    let texts = transcript_user_texts(dir.path(), "main", &key);
    assert!(texts.iter().all(|t| t == "Run the standup."), "{texts:?}");
    assert!(!texts.is_empty());
    c.call_ok("cron.remove", json!({"id": id})).await;
    let list = c
        .call_ok("cron.list", json!({"includeDisabled": true}))
        .await;
    assert!(list["jobs"].as_array().unwrap().is_empty(), "{list}");
}

#[tokio::test]
async fn cron_system_event_with_wake_now_reaches_the_main_session() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let at = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 500;
    let added = c
        .call_ok(
            "cron.add",
            json!({"name": "nudge", "schedule": {"kind": "at", "atMs": at}, "sessionTarget": "main",
                "wakeMode": "now", "payload": {"kind": "systemEvent", "text": "Time for the weekly reflection."}}),
        )
        .await;
    let id = added["id"].as_str().unwrap().to_string();
    let ev = c
        .next_event_where(T, |e| {
            e["event"] == "cron"
                && e["payload"]["jobId"] == id
                && e["payload"]["action"] == "finished"
        })
        .await
        .unwrap_or_else(|| panic!("no cron finished event for {id}"));
    assert_eq!(ev["payload"]["status"], "ok", "{ev}");
    let texts = transcript_user_texts(dir.path(), "main", "agent:main:main");
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with("System: Time for the weekly reflection."),
        "{texts:?}"
    );
}

#[tokio::test]
async fn cron_can_be_turned_off_by_config() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = basic_config(TOKEN, &fake);
    cfg["cron"] = json!({"enabled": false});
    write_config(dir.path(), &cfg);
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let r = c.call("cron.list", json!({})).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert!(!dir.path().join("cron/jobs.json").exists());
}

#[tokio::test]
async fn wirebot_skills_show_in_status_and_in_the_system_prompt() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let opts = WorkerOpts {
        env: vec![(
            "CLAWDBOT_BUNDLED_SKILLS_DIR".into(),
            templates().display().to_string(),
        )],
        ..WorkerOpts::default()
    };
    let w = Worker::start(dir.path(), opts);
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let st = c.call_ok("skills.status", json!({})).await;
    let skills = st["skills"].as_array().unwrap();
    for name in WIREBOT_SKILLS {
        let s = skills
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {st}"));
        assert_eq!(s["eligible"], true, "{s}");
        assert_eq!(s["source"], "clawdbot-bundled", "{s}");
    }
    c.call_ok(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hello", "idempotencyKey": "sk-1"}),
    )
    .await;
    c.wait_chat("sk-1", "final", T).await;
    let system = fake.requests()[0].body["system"].to_string();
    assert!(system.contains("<available_skills>"), "{system}");
    for name in WIREBOT_SKILLS {
        assert!(system.contains(&format!("<name>{name}</name>")), "{name}");
    }
    let tools = fake.requests()[0].body["tools"].to_string();
    assert!(tools.contains("skill_read"), "{tools}");
}

#[tokio::test]
async fn hello_advertises_cron_and_skills_methods() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let methods: Vec<&str> = c.hello["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in worker::cron::methods::METHODS
        .iter()
        .copied()
        .chain(["skills.status"])
    {
        assert!(methods.contains(&m), "{m} not advertised: {methods:?}");
    }
    let events = c.hello["features"]["events"].to_string();
    assert!(events.contains("\"cron\""), "{events}");
}

#[tokio::test]
async fn scoped_clients_see_only_their_agents_cron_jobs() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &multi_agent_config(TOKEN, &fake, &["alice", "bob"]),
    );
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut a = WsClient::connect(&w.ws_url(), TOKEN, Some("alice"))
        .await
        .unwrap();
    let mut b = WsClient::connect(&w.ws_url(), TOKEN, Some("bob"))
        .await
        .unwrap();
    let job = json!({"name": "later", "schedule": {"kind": "every", "everyMs": 3_600_000},
        "sessionTarget": "isolated", "payload": {"kind": "agentTurn", "message": "hi"}});
    let added = a.call_ok("cron.add", job).await;
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(added["agentId"], "alice", "{added}");
    let la = a.call_ok("cron.list", json!({})).await;
    assert_eq!(la["jobs"].as_array().unwrap().len(), 1, "{la}");
    let lb = b.call_ok("cron.list", json!({})).await;
    assert!(lb["jobs"].as_array().unwrap().is_empty(), "{lb}");
    let r = b.call("cron.remove", json!({"id": id})).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        a.call_ok("cron.list", json!({})).await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn per_agent_cron_stores_live_in_each_agents_dir_and_scope_the_methods() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let mut cfg = multi_agent_config(TOKEN, &fake, &["alice", "bob"]);
    cfg["cron"] = json!({"store": format!("{}/{{agentId}}/cron/jobs.json", users.display())});
    write_config(dir.path(), &cfg);
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut a = WsClient::connect(&w.ws_url(), TOKEN, Some("alice"))
        .await
        .unwrap();
    let mut b = WsClient::connect(&w.ws_url(), TOKEN, Some("bob"))
        .await
        .unwrap();
    let mut op = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let job = |name: &str| {
        json!({"name": name, "schedule": {"kind": "every", "everyMs": 1000}, "sessionTarget": "main",
            "wakeMode": "next-heartbeat", "payload": {"kind": "systemEvent", "text": name}})
    };
    // A scoped client's agentId param cannot reach another agent's store.
    let mut for_bob = job("alice-tick");
    for_bob["agentId"] = json!("bob");
    let ja = a.call_ok("cron.add", for_bob).await;
    assert_eq!(ja["agentId"], "alice", "{ja}");
    let jb = b.call_ok("cron.add", job("bob-tick")).await;
    let (ida, idb) = (ja["id"].as_str().unwrap(), jb["id"].as_str().unwrap());

    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                format!(
                    "{}:{}",
                    j["agentId"].as_str().unwrap(),
                    j["name"].as_str().unwrap()
                )
            })
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&a.call_ok("cron.list", json!({})).await),
        ["alice:alice-tick"]
    );
    assert_eq!(
        names(&b.call_ok("cron.list", json!({})).await),
        ["bob:bob-tick"]
    );
    assert_eq!(
        names(&op.call_ok("cron.list", json!({})).await),
        ["alice:alice-tick", "bob:bob-tick"]
    );
    assert_eq!(
        names(&op.call_ok("cron.list", json!({"agentId": "bob"})).await),
        ["bob:bob-tick"]
    );
    let st = a.call_ok("cron.status", json!({})).await;
    assert_eq!(
        st["storePath"],
        json!(users.join("alice/cron/jobs.json")),
        "{st}"
    );
    let r = b.call("cron.remove", json!({"id": ida})).await;
    assert_eq!(r["ok"], false, "{r}");

    // Both fire on their own, each run logged in its own agent's dir.
    let deadline = Instant::now() + T;
    for (agent, id) in [("alice", ida), ("bob", idb)] {
        let log = users.join(agent).join(format!("cron/runs/{id}.jsonl"));
        while !log.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(!users.join(format!("alice/cron/runs/{idb}.jsonl")).exists());
    let runs = op.call_ok("cron.runs", json!({"id": idb})).await;
    assert!(!runs["entries"].as_array().unwrap().is_empty(), "{runs}");
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(users.join("bob/cron/jobs.json")).unwrap())
            .unwrap();
    assert_eq!(stored["jobs"].as_array().unwrap().len(), 1, "{stored}");
    assert!(!dir.path().join("cron/jobs.json").exists());
}

#[tokio::test]
async fn openai_tool_calls_round_trip_appends_to_todays_log() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = basic_config(TOKEN, &fake);
    cfg["agents"]["defaults"]["model"]["primary"] = json!("openai/gpt-fake");
    write_config(dir.path(), &cfg);
    fake.next(Reply::ToolCall {
        text: "Noting that.".into(),
        id: "call_app1".into(),
        name: "memory_append".into(),
        input: json!({"text": "Committed to ship the referral program by Friday."}),
    });
    fake.next(Reply::text("Logged.", 1, Duration::from_millis(1)));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    c.call_ok(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "Remember my commitment", "idempotencyKey": "oa-1"}),
    )
    .await;
    c.wait_chat("oa-1", "final", T).await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[0].path.contains("chat/completions"),
        "{}",
        reqs[0].path
    );
    let tools = reqs[0].body["tools"].to_string();
    assert!(
        tools.contains("\"function\"") && tools.contains("memory_append"),
        "{tools}"
    );
    let second = reqs[1].body["messages"].to_string();
    assert!(
        second.contains("\"tool_call_id\":\"call_app1\""),
        "{second}"
    );
    // The log written is today's (UTC, the default zone) under memory/.
    let logs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("workspace/memory"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(
        text.contains("Committed to ship the referral program by Friday."),
        "{text}"
    );
    let msgs = transcript_messages(dir.path(), "agent:main:main");
    let roles: Vec<&str> = msgs.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(
        roles,
        ["user", "assistant", "toolResult", "assistant"],
        "{msgs:?}"
    );
    assert_eq!(msgs[1]["content"][0]["text"], "Noting that.", "{msgs:?}");
    assert_eq!(msgs[1]["content"][1]["name"], "memory_append", "{msgs:?}");
    assert_eq!(msgs[3]["content"][0]["text"], "Logged.", "{msgs:?}");
}

#[tokio::test]
async fn a_skill_whose_binary_is_missing_stays_out_of_the_prompt() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let skills = dir.path().join("workspace/skills");
    write(
        &skills.join("needs-tool/SKILL.md"),
        "---\nname: needs-tool\ndescription: Uses a tool nobody has.\nmetadata: {\"clawdbot\":{\"requires\":{\"bins\":[\"wirebot-no-such-binary-4711\"]}}}\n---\n# needs-tool\n",
    );
    write(
        &skills.join("plain/SKILL.md"),
        "---\nname: plain\ndescription: Needs nothing.\n---\n# plain\n",
    );
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let st = c.call_ok("skills.status", json!({})).await;
    let needs = st["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "needs-tool")
        .unwrap_or_else(|| panic!("{st}"))
        .clone();
    assert_eq!(needs["eligible"], false, "{needs}");
    assert!(
        needs["missing"]
            .to_string()
            .contains("wirebot-no-such-binary-4711"),
        "{needs}"
    );
    c.call_ok(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "gate-1"}),
    )
    .await;
    c.wait_chat("gate-1", "final", T).await;
    let system = fake.requests()[0].body["system"].to_string();
    assert!(system.contains("<name>plain</name>"), "{system}");
    assert!(!system.contains("needs-tool"), "{system}");
}

#[tokio::test]
async fn a_job_missed_while_stopped_runs_once_after_start() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let hour = 3_600_000;
    // Due three hours ago (three slots missed): one catch-up run, not three.
    let jobs = json!({"version": 1, "jobs": [{"id": "missed", "name": "missed standup", "enabled": true,
        "createdAtMs": now - 4 * hour, "updatedAtMs": now - 4 * hour,
        "schedule": {"kind": "every", "everyMs": hour, "anchorMs": now - 4 * hour},
        "sessionTarget": "isolated", "wakeMode": "now",
        "payload": {"kind": "agentTurn", "message": "Catch up."},
        "state": {"nextRunAtMs": now - 3 * hour}}]});
    worker::atomic::write_json(&dir.path().join("cron/jobs.json"), &jobs).unwrap();
    let w = Worker::start(dir.path(), WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let log = dir.path().join("cron/runs/missed.jsonl");
    poll("the catch-up run", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.lines().count() >= 1)
    })
    .await;
    let list = c.call_ok("cron.list", json!({})).await;
    let job = &list["jobs"][0];
    assert_eq!(job["state"]["lastStatus"], "ok", "{list}");
    assert!(
        job["state"]["nextRunAtMs"].as_i64().unwrap() > now,
        "{list}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    let texts = transcript_user_texts(dir.path(), "main", "agent:main:cron:missed");
    assert_eq!(texts, ["Catch up."]);
}

#[tokio::test]
async fn clawdbot_skip_cron_turns_cron_off() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let opts = WorkerOpts {
        env: vec![("CLAWDBOT_SKIP_CRON".into(), "1".into())],
        ..WorkerOpts::default()
    };
    let w = Worker::start(dir.path(), opts);
    let mut c = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();
    let r = c
        .call(
            "cron.add",
            json!({"name": "x", "schedule": {"kind": "every", "everyMs": 1000},
                "sessionTarget": "main", "payload": {"kind": "systemEvent", "text": "x"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("cron.add"),
        "{r}"
    );
    assert!(!dir.path().join("cron/jobs.json").exists());
}
