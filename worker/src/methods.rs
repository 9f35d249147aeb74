//! The method dispatcher: scope checks, strict params, and one handler per method. Adding a method = one arm in
//! [`dispatch`] plus its name in [`ADVERTISED`] (and in [`required_scope`] if it is not admin-only).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::agent_id::AgentId;
use crate::chat_run::{self, StartRun, Started};
use crate::hub::Outbox;
use crate::protocol::{self, ErrorShape};
use crate::runs::{self, Existing};
use crate::state::Gateway;

/// Methods listed in hello-ok `features.methods`.
pub const ADVERTISED: &[&str] = &[
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
    "cron.list",
    "cron.status",
    "cron.add",
    "cron.update",
    "cron.remove",
    "cron.run",
    "cron.runs",
    "skills.status",
];

/// Families a later feature brings: answered `UNAVAILABLE` naming the method until then, never advertised.
const NOT_YET: &[&str] = &["memory."];

/// Messages that abort the session's run instead of starting one (Clawdbot's stop words).
const STOP_WORDS: &[&str] = &["/stop", "stop", "esc", "abort", "wait", "exit", "interrupt"];

/// One authenticated connection, as handlers see it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: u64,
    /// `Some` for a connection scoped to one agent (`x-wirebot-agent`).
    pub scope: Option<AgentId>,
    pub role: String,
    pub scopes: Vec<String>,
    pub outbox: Outbox,
}

/// A handler's answer: one response frame, or "already sent" (methods that answer twice).
#[derive(Debug)]
pub enum Reply {
    Ok(Value),
    Err(ErrorShape),
    Sent,
}

impl From<Result<Value, ErrorShape>> for Reply {
    fn from(r: Result<Value, ErrorShape>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Read,
    Write,
    Admin,
}

fn required_scope(method: &str) -> Scope {
    match method {
        "health" | "status" | "models.list" | "agents.list" | "sessions.list" | "chat.history"
        | "cron.list" | "cron.status" | "cron.runs" | "skills.status" => Scope::Read,
        "chat.send" | "chat.abort" | "chat.inject" | "agent" | "agent.wait" => Scope::Write,
        _ => Scope::Admin,
    }
}

fn allowed(conn: &Conn, method: &str) -> Result<(), ErrorShape> {
    if conn.role != "operator" {
        return Err(ErrorShape::invalid(format!(
            "unauthorized role: {}",
            conn.role
        )));
    }
    let has = |s: &str| conn.scopes.iter().any(|x| x == s);
    if has("operator.admin") {
        return Ok(());
    }
    let ok = match required_scope(method) {
        Scope::Read => has("operator.read") || has("operator.write"),
        Scope::Write => has("operator.write"),
        Scope::Admin => false,
    };
    if ok {
        Ok(())
    } else {
        let need = match required_scope(method) {
            Scope::Read => "operator.read",
            Scope::Write => "operator.write",
            Scope::Admin => "operator.admin",
        };
        Err(ErrorShape::invalid(format!("missing scope: {need}")))
    }
}

fn params<T: serde::de::DeserializeOwned>(method: &str, p: Option<Value>) -> Result<T, ErrorShape> {
    let v = match p {
        None | Some(Value::Null) => json!({}),
        Some(v) => v,
    };
    serde_json::from_value(v)
        .map_err(|e| ErrorShape::invalid(format!("invalid {method} params: {e}")))
}

/// Runs one request. The caller writes the returned reply (unless `Sent`).
pub async fn dispatch(
    gw: &Arc<Gateway>,
    conn: &Conn,
    id: &str,
    method: &str,
    p: Option<Value>,
) -> Reply {
    if NOT_YET.iter().any(|prefix| method.starts_with(prefix)) {
        return Reply::Err(ErrorShape::unavailable(format!(
            "{method} is not available in this worker yet"
        )));
    }
    let known = ADVERTISED.contains(&method) || method == "chat.inject";
    if !known {
        return Reply::Err(ErrorShape::invalid(format!("unknown method: {method}")));
    }
    if let Err(e) = allowed(conn, method) {
        return Reply::Err(e);
    }
    match method {
        "health" => health(gw, conn, p).into(),
        "status" => status(gw, conn, p).into(),
        "agents.list" => agents_list(gw, conn, p).into(),
        "models.list" => models_list(gw, p).into(),
        "config.get" => config_get(gw, conn, p).into(),
        "chat.send" => chat_send(gw, conn, p).into(),
        "chat.history" => chat_history(gw, conn, p).into(),
        "chat.abort" => chat_abort(gw, conn, p).into(),
        "chat.inject" => chat_inject(gw, conn, p).into(),
        "sessions.list" => sessions_list(gw, conn, p).into(),
        "sessions.patch" => sessions_patch(gw, conn, p).into(),
        "sessions.reset" => sessions_reset(gw, conn, p).into(),
        "sessions.delete" => sessions_delete(gw, conn, p).into(),
        "agent" => agent(gw, conn, id, p),
        "agent.wait" => agent_wait(gw, conn, p).await.into(),
        m if crate::cron::methods::METHODS.contains(&m) => cron_method(gw, conn, m, p).await.into(),
        "skills.status" => skills_status(gw, conn, p).into(),
        _ => Reply::Err(ErrorShape::invalid(format!("unknown method: {method}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthParams {
    #[serde(default)]
    #[allow(dead_code)]
    probe: Option<bool>,
}

fn health(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let _: HealthParams = params("health", p)?;
    Ok(gw.health(conn.scope.as_ref()))
}

fn status(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let _: Map<String, Value> = params("status", p)?;
    let health = gw.health(conn.scope.as_ref());
    Ok(
        json!({"ts": Gateway::now_ms(), "uptimeMs": u64::try_from(gw.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "linkChannel": null, "heartbeatSeconds": 0, "defaultAgentId": health["defaultAgentId"],
        "agents": health["agents"].as_array().map(|a| a.iter().map(|x| x["agentId"].clone()).collect::<Vec<_>>()),
        "sessions": health["sessions"], "runs": {"active": gw.runs.active()},
        "connections": if conn.scope.is_none() { json!(gw.hub.count()) } else { Value::Null },
        "server": {"name": "wirebot-worker", "version": env!("CARGO_PKG_VERSION")}}),
    )
}

fn agents_list(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let _: Map<String, Value> = params("agents.list", p)?;
    let cfg = gw.cfg();
    let agents: Vec<Value> = cfg
        .agents
        .iter()
        .filter(|a| conn.scope.as_ref().is_none_or(|s| *s == a.id))
        .map(|a| {
            let mut v = json!({"id": a.id});
            if let Some(n) = &a.name {
                v["name"] = json!(n);
            }
            if let Some(i) = &a.identity {
                v["identity"] = i.clone();
            }
            v
        })
        .collect();
    let default = conn.scope.as_ref().unwrap_or(&cfg.default_agent);
    Ok(
        json!({"defaultId": default, "mainKey": cfg.session.main_key,
        "scope": if cfg.session.global { "global" } else { "per-sender" }, "agents": agents}),
    )
}

fn models_list(gw: &Gateway, p: Option<Value>) -> Result<Value, ErrorShape> {
    let _: Map<String, Value> = params("models.list", p)?;
    let mut models: Vec<Value> = Vec::new();
    let mut push = |provider: &str, id: &str, name: Option<&str>, ctx: Option<&Value>| {
        if !models
            .iter()
            .any(|m| m["provider"] == provider && m["id"] == id)
        {
            let mut m = json!({"id": id, "name": name.unwrap_or(id), "provider": provider});
            if let Some(c) = ctx {
                m["contextWindow"] = c.clone();
            }
            models.push(m);
        }
    };
    let cfg = gw.cfg();
    for (pid, p) in &cfg.providers {
        for m in &p.models {
            if let Some(id) = m.get("id").and_then(Value::as_str) {
                push(
                    pid,
                    id,
                    m.get("name").and_then(Value::as_str),
                    m.get("contextWindow"),
                );
            }
        }
    }
    for a in &cfg.agents {
        let choice = cfg.model_for(a);
        for r in choice.primary.iter().chain(choice.fallbacks.iter()) {
            let (pid, id) = crate::model_router::parse_model_ref(r);
            push(pid, id, None, None);
        }
    }
    Ok(json!({"models": models}))
}

fn config_get(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let _: Map<String, Value> = params("config.get", p)?;
    if conn.scope.is_some() {
        return Err(ErrorShape::invalid(
            "config.get is not available to agent-scoped connections",
        ));
    }
    let cfg = gw.cfg();
    let warnings: Vec<Value> = cfg
        .unmodelled
        .iter()
        .map(|k| json!({"path": k, "message": "kept as-is; not used by wirebot-worker"}))
        .collect();
    Ok(
        json!({"path": cfg.path, "exists": cfg.raw.is_some(), "raw": cfg.raw, "parsed": cfg.parsed,
        "valid": true, "config": cfg.parsed, "hash": cfg.hash, "issues": [], "warnings": warnings,
        "legacyIssues": []}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChatSendParams {
    session_key: String,
    message: String,
    idempotency_key: String,
    #[serde(default)]
    #[allow(dead_code)]
    thinking: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    deliver: Option<bool>,
    #[serde(default)]
    attachments: Option<Vec<Value>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn run_timeout(gw: &Gateway, ms: Option<u64>) -> Duration {
    ms.filter(|m| *m > 0)
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(gw.cfg().timeout_seconds.max(1)))
}

fn chat_send(gw: &Arc<Gateway>, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: ChatSendParams = params("chat.send", p)?;
    let (key, agent) = gw.resolve_key(&p.session_key, conn.scope.as_ref())?;
    if p.idempotency_key.trim().is_empty() {
        return Err(ErrorShape::invalid(
            "invalid chat.send params: idempotencyKey must be non-empty",
        ));
    }
    let attachment_bytes: usize = p
        .attachments
        .iter()
        .flatten()
        .filter_map(|a| a.get("content").and_then(Value::as_str))
        .map(|c| c.len() * 3 / 4)
        .sum();
    if attachment_bytes > 5 * 1024 * 1024 {
        return Err(ErrorShape::invalid("attachments exceed 5 MB"));
    }
    if STOP_WORDS.contains(&p.message.trim().to_ascii_lowercase().as_str()) {
        let ids = gw.runs.abort(&key, None);
        return Ok(json!({"ok": true, "aborted": !ids.is_empty(), "runIds": ids}));
    }
    if p.message.trim().is_empty() && attachment_bytes == 0 {
        return Err(ErrorShape::invalid(
            "invalid chat.send params: message must be non-empty",
        ));
    }
    let started = chat_run::start(
        gw,
        StartRun {
            run_id: p.idempotency_key.clone(),
            agent: agent.clone(),
            key,
            message: p.message,
            channel: "webchat",
            extra_system: None,
            timeout: run_timeout(gw, p.timeout_ms),
            tap: None,
        },
    )?;
    Ok(match started {
        Started::New { run_id, .. } => json!({"runId": run_id, "status": "started"}),
        Started::Existing(Existing::InFlight) => {
            json!({"runId": p.idempotency_key, "status": "in_flight"})
        }
        Started::Existing(Existing::Finished(o)) => {
            json!({"runId": p.idempotency_key, "status": o.status})
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HistoryParams {
    session_key: String,
    #[serde(default)]
    limit: Option<usize>,
}

fn chat_history(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: HistoryParams = params("chat.history", p)?;
    let (key, agent) = gw.resolve_key(&p.session_key, conn.scope.as_ref())?;
    let limit = p.limit.unwrap_or(200).clamp(1, 1000);
    let (session_id, mut messages) = gw.sessions.history(&agent, &key, limit).map_err(internal)?;
    for m in messages.iter_mut() {
        if m["role"] == "user"
            && let Some(blocks) = m.get_mut("content").and_then(Value::as_array_mut)
        {
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    b["text"] = json!(chat_run::strip_envelope(t));
                }
            }
        }
    }
    // Stay under the 6 MB response cap: drop the oldest messages first.
    while messages.len() > 1
        && serde_json::to_vec(&messages).map(|v| v.len()).unwrap_or(0) > 6 * 1024 * 1024
    {
        messages.remove(0);
    }
    let entry = gw.sessions.entry(&agent, &key).map_err(internal)?;
    let thinking = entry
        .as_ref()
        .and_then(|e| e.get("thinkingLevel"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(
        json!({"sessionKey": key, "sessionId": session_id, "messages": messages, "thinkingLevel": thinking}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AbortParams {
    session_key: String,
    #[serde(default)]
    run_id: Option<String>,
}

fn chat_abort(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: AbortParams = params("chat.abort", p)?;
    let (key, _) = gw.resolve_key(&p.session_key, conn.scope.as_ref())?;
    let ids = gw.runs.abort(&key, p.run_id.as_deref());
    Ok(json!({"ok": true, "aborted": !ids.is_empty(), "runIds": ids}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InjectParams {
    session_key: String,
    message: String,
    #[serde(default)]
    label: Option<String>,
}

fn chat_inject(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: InjectParams = params("chat.inject", p)?;
    let (key, agent) = gw.resolve_key(&p.session_key, conn.scope.as_ref())?;
    let h = gw
        .sessions
        .ensure(&agent, &key, "webchat")
        .map_err(internal)?;
    let text = match &p.label {
        Some(l) if !l.is_empty() => format!("[{l}]\n\n{}", p.message),
        _ => p.message.clone(),
    };
    let msg = json!({"role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": Gateway::now_ms(),
        "stopReason": "injected", "usage": {"input": 0, "output": 0, "totalTokens": 0}, "api": "openai-responses",
        "provider": "clawdbot", "model": "gateway-injected"});
    let id = gw
        .sessions
        .append(&agent, &h, "message", json!({"message": msg}))
        .map_err(internal)?;
    let run_id = format!("inject-{}", uuid::Uuid::new_v4());
    let payload =
        json!({"runId": run_id, "sessionKey": key, "seq": 0, "state": "final", "message": msg});
    gw.hub.publish(
        "chat",
        &payload,
        &crate::hub::Audience::Agent(agent.id.clone()),
        false,
    );
    Ok(json!({"ok": true, "messageId": id}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SessionsListParams {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    active_minutes: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    include_global: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    include_unknown: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    include_derived_titles: Option<bool>,
    #[serde(default)]
    include_last_message: Option<bool>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    spawned_by: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    search: Option<String>,
}

fn sessions_list(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: SessionsListParams = params("sessions.list", p)?;
    let filter_agent = match (&conn.scope, &p.agent_id) {
        (Some(s), Some(a)) if a.to_ascii_lowercase() != s.as_str() => {
            return Err(ErrorShape::invalid(format!(
                "agent {a:?} is not this connection's agent"
            )));
        }
        (Some(s), _) => Some(s.clone()),
        (None, Some(a)) => Some(AgentId::parse(a).map_err(|e| ErrorShape::invalid(e.to_string()))?),
        (None, None) => None,
    };
    let now = Gateway::now_ms();
    let mut out = Vec::new();
    let cfg = gw.cfg();
    for a in cfg
        .agents
        .iter()
        .filter(|a| filter_agent.as_ref().is_none_or(|f| *f == a.id))
    {
        for (key, e) in gw.sessions.list(a).map_err(internal)? {
            let updated = e.get("updatedAt").and_then(Value::as_i64).unwrap_or(0);
            if p.active_minutes.is_some_and(|m| now - updated > m * 60_000) {
                continue;
            }
            if p.label
                .as_ref()
                .is_some_and(|l| e.get("label").and_then(Value::as_str) != Some(l))
            {
                continue;
            }
            if p.spawned_by
                .as_ref()
                .is_some_and(|s| e.get("spawnedBy").and_then(Value::as_str) != Some(s))
            {
                continue;
            }
            if let Some(q) = &p.search {
                let q = q.to_lowercase();
                let label = e
                    .get("label")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase();
                if !key.contains(&q) && !label.contains(&q) {
                    continue;
                }
            }
            let kind = crate::session_key::SessionKey::resolve(&key, &a.id, &cfg.session.main_key)
                .map(|k| k.kind())
                .unwrap_or("unknown");
            let mut row = json!({"key": key, "kind": kind});
            if let (Some(r), Value::Object(e)) = (row.as_object_mut(), &e) {
                for (k, v) in e {
                    r.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            if p.include_last_message == Some(true)
                && let Ok(k) =
                    crate::session_key::SessionKey::resolve(&key, &a.id, &cfg.session.main_key)
                && let Ok((_, msgs)) = gw.sessions.history(a, &k, 1)
                && let Some(m) = msgs.last()
            {
                row["lastMessagePreview"] = json!(
                    crate::transcript::message_text(m)
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
            }
            out.push(row);
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r["updatedAt"].as_i64().unwrap_or(0)));
    if let Some(l) = p.limit {
        out.truncate(l);
    }
    let default_agent = filter_agent.as_ref().unwrap_or(&cfg.default_agent);
    let (provider, model) = cfg
        .agent(default_agent)
        .and_then(|a| cfg.model_for(a).primary)
        .map(|r| {
            let (p, m) = crate::model_router::parse_model_ref(&r);
            (p.to_string(), m.to_string())
        })
        .unwrap_or_default();
    let path = cfg.agent(default_agent).map(|a| a.store_path.clone());
    Ok(json!({"ts": now, "path": path, "count": out.len(),
        "defaults": {"modelProvider": provider, "model": model, "contextTokens": null}, "sessions": out}))
}

/// `sessions.patch` fields that may be set (or cleared with `null`).
const PATCHABLE: &[&str] = &[
    "label",
    "thinkingLevel",
    "verboseLevel",
    "reasoningLevel",
    "responseUsage",
    "elevatedLevel",
    "model",
    "sendPolicy",
    "groupActivation",
    "spawnedBy",
    "execHost",
    "execSecurity",
    "execAsk",
    "execNode",
];

fn sessions_patch(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let mut p: Map<String, Value> = params("sessions.patch", p)?;
    let raw_key = match p.remove("key") {
        Some(Value::String(k)) => k,
        _ => {
            return Err(ErrorShape::invalid(
                "invalid sessions.patch params: key (string) is required",
            ));
        }
    };
    if let Some(bad) = p.keys().find(|k| !PATCHABLE.contains(&k.as_str())) {
        return Err(ErrorShape::invalid(format!(
            "invalid sessions.patch params: unknown field {bad:?}"
        )));
    }
    let (key, agent) = gw.resolve_key(&raw_key, conn.scope.as_ref())?;
    gw.sessions
        .ensure(&agent, &key, "webchat")
        .map_err(internal)?;
    let entry = gw.sessions.update(&agent, &key, p).map_err(internal)?;
    Ok(
        json!({"ok": true, "path": agent.sessions_dir.join("sessions.json"), "key": key, "entry": entry}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyParams {
    key: String,
    #[serde(default)]
    delete_transcript: Option<bool>,
}

fn sessions_reset(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: KeyParams = params("sessions.reset", p)?;
    let (key, agent) = gw.resolve_key(&p.key, conn.scope.as_ref())?;
    gw.runs.abort(&key, None);
    let entry = gw.sessions.reset(&agent, &key).map_err(internal)?;
    Ok(json!({"ok": true, "key": key, "entry": entry}))
}

fn sessions_delete(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: KeyParams = params("sessions.delete", p)?;
    let (key, agent) = gw.resolve_key(&p.key, conn.scope.as_ref())?;
    if key == crate::session_key::SessionKey::main(&agent.id, &gw.cfg().session.main_key) {
        return Err(ErrorShape::invalid(format!(
            "cannot delete the main session ({key})"
        )));
    }
    gw.runs.abort(&key, None);
    let deleted = gw
        .sessions
        .delete(&agent, &key, p.delete_transcript.unwrap_or(true))
        .map_err(internal)?;
    Ok(json!({"ok": true, "key": key, "deleted": deleted}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentParams {
    message: String,
    idempotency_key: String,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    extra_system_prompt: Option<String>,
}

/// `agent`: answers `accepted` at once, then a second `res` with the same id when the run ends.
fn agent(gw: &Arc<Gateway>, conn: &Conn, id: &str, p: Option<Value>) -> Reply {
    let p: AgentParams = match params("agent", p) {
        Ok(p) => p,
        Err(e) => return Reply::Err(e),
    };
    let agent_id = match (&p.agent_id, &conn.scope) {
        (Some(a), _) => match AgentId::parse(a) {
            Ok(a) => Some(a),
            Err(e) => return Reply::Err(ErrorShape::invalid(e.to_string())),
        },
        (None, s) => s.clone(),
    };
    if let (Some(a), Some(s)) = (&agent_id, &conn.scope)
        && a != s
    {
        return Reply::Err(ErrorShape::invalid(format!(
            "agent {a} is not this connection's agent"
        )));
    }
    let agent_id = agent_id.unwrap_or_else(|| gw.cfg().default_agent.clone());
    let raw_key = p
        .session_key
        .clone()
        .unwrap_or_else(|| format!("agent:{agent_id}:{}", gw.cfg().session.main_key));
    let (key, agent) = match gw.resolve_key(&raw_key, Some(&agent_id)) {
        Ok(x) => x,
        Err(e) => return Reply::Err(e),
    };
    if p.message.trim().is_empty() {
        return Reply::Err(ErrorShape::invalid(
            "invalid agent params: message must be non-empty",
        ));
    }
    let timeout = run_timeout(gw, p.timeout.map(|s| s * 1000));
    let started = chat_run::start(
        gw,
        StartRun {
            run_id: p.idempotency_key.clone(),
            agent: agent.clone(),
            key: key.clone(),
            message: p.message,
            channel: "webchat",
            extra_system: p.extra_system_prompt,
            timeout,
            tap: None,
        },
    );
    let run_id = p.idempotency_key;
    match started {
        Err(e) => Reply::Err(e),
        Ok(Started::Existing(Existing::InFlight)) => {
            Reply::Ok(json!({"runId": run_id, "status": "in_flight"}))
        }
        Ok(Started::Existing(Existing::Finished(o))) => Reply::Ok(final_payload(&run_id, &o)),
        Ok(Started::New { started_at, .. }) => {
            conn.outbox.send_text(protocol::res_ok(
                id,
                json!({"runId": run_id, "status": "accepted", "acceptedAt": started_at}),
            ));
            let Some((rx, _)) = gw.runs.watch(&run_id) else {
                return Reply::Sent;
            };
            let outbox = conn.outbox.clone();
            let id = id.to_string();
            let shutdown = gw.shutdown.clone();
            gw.tasks.spawn(async move {
                let outcome = tokio::select! {
                    o = runs::wait(rx, Duration::from_secs(24 * 3600)) => o,
                    _ = shutdown.cancelled() => None,
                };
                let Some(o) = outcome else { return };
                let frame = if o.status == "ok" {
                    protocol::res_ok(&id, final_payload(&run_id, &o))
                } else {
                    let msg = o
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("run {}", o.status));
                    protocol::res_err_with(
                        &id,
                        json!({"runId": run_id, "status": o.status, "summary": msg}),
                        &ErrorShape::unavailable(msg.clone()),
                    )
                };
                outbox.send_text(frame);
            });
            Reply::Sent
        }
    }
}

fn final_payload(run_id: &str, o: &runs::RunOutcome) -> Value {
    json!({"runId": run_id, "status": o.status, "summary": "completed",
        "result": {"payloads": [{"text": o.text}], "meta": {"agentMeta": {"provider": o.provider, "model": o.model}}}})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WaitParams {
    run_id: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn agent_wait(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: WaitParams = params("agent.wait", p)?;
    // A scoped connection only learns about its own agent's runs; others look unknown.
    if let (Some(scope), Some(key)) = (&conn.scope, gw.runs.session_of(&p.run_id))
        && key.agent_id() != *scope
    {
        return Ok(json!({"runId": p.run_id, "status": "timeout"}));
    }
    let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(30_000));
    let Some((rx, started_at)) = gw.runs.watch(&p.run_id) else {
        return Ok(json!({"runId": p.run_id, "status": "timeout"}));
    };
    Ok(match runs::wait(rx, timeout).await {
        Some(o) => {
            json!({"runId": p.run_id, "status": o.status, "startedAt": started_at, "endedAt": o.ended_at, "error": o.error})
        }
        None => json!({"runId": p.run_id, "status": "timeout"}),
    })
}

/// `cron.*`. With per-agent stores (`cron.store` with `{agentId}`) a method acts on one agent's store: the
/// connection's agent when it is scoped, else the `agentId` param; an operator naming no agent sees every store
/// (`cron.list` merges them, a job id is looked up in each, `cron.add` goes to the default agent). With one shared
/// store, a connection scoped to one agent sees and changes only that agent's jobs.
async fn cron_method(
    gw: &Gateway,
    conn: &Conn,
    method: &str,
    p: Option<Value>,
) -> Result<Value, ErrorShape> {
    if !gw.features.cron.enabled() {
        return Err(ErrorShape::unavailable(format!(
            "{method}: cron is disabled in this worker"
        )));
    }
    let p = p.unwrap_or(Value::Null);
    if gw.features.cron.per_agent_template().is_some() {
        return per_agent_cron_method(gw, conn, method, p).await;
    }
    let Some(svc) = gw.features.cron.for_agent(&gw.cfg().default_agent) else {
        return Err(ErrorShape::unavailable(format!(
            "{method}: cron is disabled in this worker"
        )));
    };
    let mut p = p;
    if let Some(scope) = &conn.scope {
        let owner = |job: &crate::cron::Job| {
            job.agent_id
                .as_deref()
                .and_then(|a| AgentId::parse(a).ok())
                .unwrap_or_else(|| gw.cfg().default_agent.clone())
        };
        match method {
            "cron.add" => {
                if p.is_null() {
                    p = json!({});
                }
                if let Some(o) = p.as_object_mut() {
                    o.insert("agentId".into(), json!(scope));
                }
            }
            "cron.update" | "cron.remove" | "cron.run" | "cron.runs" => {
                let id = cron_job_id(&p);
                if let Some(job) = svc.store().get(id)
                    && owner(&job) != *scope
                {
                    return Err(ErrorShape::invalid(format!("unknown cron job id {id:?}")));
                }
            }
            _ => {}
        }
        let mut v = crate::cron::methods::handle(&svc, method, &p)
            .await
            .map_err(cron_error)?;
        if method == "cron.list"
            && let Some(jobs) = v.get_mut("jobs").and_then(Value::as_array_mut)
        {
            jobs.retain(|j| {
                let a = j.get("agentId").and_then(Value::as_str);
                a.map_or(gw.cfg().default_agent == *scope, |a| a == scope.as_str())
            });
        }
        return Ok(v);
    }
    crate::cron::methods::handle(&svc, method, &p)
        .await
        .map_err(cron_error)
}

/// `{id}` or `{jobId}` of a cron method's params ("" when absent: the handler reports it).
fn cron_job_id(p: &Value) -> &str {
    ["id", "jobId"]
        .iter()
        .find_map(|k| p.get(k).and_then(Value::as_str))
        .unwrap_or_default()
}

/// Every job of a per-agent store names its store's agent (a job carried over from a dedicated worker says `main`).
fn stamp_agent(v: &mut Value, agent: &AgentId) {
    let jobs = match v.get_mut("jobs").and_then(Value::as_array_mut) {
        Some(jobs) => jobs,
        None => return,
    };
    for j in jobs {
        if let Some(o) = j.as_object_mut() {
            o.insert("agentId".into(), json!(agent));
        }
    }
}

async fn per_agent_cron_method(
    gw: &Gateway,
    conn: &Conn,
    method: &str,
    mut p: Value,
) -> Result<Value, ErrorShape> {
    let named = p.get("agentId").and_then(Value::as_str).map(AgentId::parse);
    let target = match (&conn.scope, named) {
        (Some(scope), _) => Some(scope.clone()),
        (None, Some(a)) => Some(a.map_err(|e| ErrorShape::invalid(e.to_string()))?),
        (None, None) => None,
    };
    let cron = &gw.features.cron;
    let one = |agent: &AgentId| {
        cron.for_agent(agent).ok_or_else(|| {
            ErrorShape::invalid(format!("{method}: agent {agent} has no cron store here"))
        })
    };
    let (agent, svc) = match (target, method) {
        (Some(agent), _) => {
            let svc = one(&agent)?;
            // Another agent's job id looks unknown (as it does in a single store), not merely "not removed".
            let id = cron_job_id(&p);
            if matches!(
                method,
                "cron.update" | "cron.remove" | "cron.run" | "cron.runs"
            ) && svc.store().get(id).is_none()
            {
                return Err(ErrorShape::invalid(format!("unknown cron job id {id:?}")));
            }
            (agent, svc)
        }
        (None, "cron.list") => {
            let mut jobs = Vec::new();
            for (agent, svc) in cron.all() {
                let mut v = crate::cron::methods::handle(&svc, method, &p)
                    .await
                    .map_err(cron_error)?;
                if let Some(agent) = &agent {
                    stamp_agent(&mut v, agent);
                }
                if let Some(Value::Array(list)) = v.get_mut("jobs").map(Value::take) {
                    jobs.extend(list);
                }
            }
            let key = |j: &Value| {
                let disabled = j.get("enabled").and_then(Value::as_bool) == Some(false);
                let next = j
                    .pointer("/state/nextRunAtMs")
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MAX);
                (disabled, next)
            };
            jobs.sort_by_key(key);
            return Ok(json!({ "jobs": jobs }));
        }
        (None, "cron.status") => {
            let all = cron.all();
            let jobs: usize = all.iter().map(|(_, s)| s.store().jobs().len()).sum();
            let next = all.iter().filter_map(|(_, s)| s.next_wake_at_ms()).min();
            return Ok(json!({
                "enabled": true,
                "storePath": cron.per_agent_template(),
                "agents": all.len(),
                "jobs": jobs,
                "nextWakeAtMs": next,
            }));
        }
        (None, "cron.add") => {
            let agent = gw.cfg().default_agent.clone();
            let svc = one(&agent)?;
            (agent, svc)
        }
        (None, _) => {
            let id = cron_job_id(&p);
            let found = cron
                .all()
                .into_iter()
                .find_map(|(a, s)| s.store().get(id).and(a.map(|a| (a, s))));
            match found {
                Some(found) => found,
                None => {
                    return Err(ErrorShape::invalid(format!("unknown cron job id {id:?}")));
                }
            }
        }
    };
    if method == "cron.add" {
        if p.is_null() {
            p = json!({});
        }
        if let Some(o) = p.as_object_mut() {
            o.insert("agentId".into(), json!(agent));
        }
    }
    let mut v = crate::cron::methods::handle(&svc, method, &p)
        .await
        .map_err(cron_error)?;
    match method {
        "cron.list" => stamp_agent(&mut v, &agent),
        "cron.status" => v["agentId"] = json!(agent),
        _ => {}
    }
    Ok(v)
}

fn cron_error(e: crate::cron::Error) -> ErrorShape {
    if e.protocol_code() == "UNAVAILABLE" {
        ErrorShape::unavailable(e.to_string())
    } else {
        ErrorShape::invalid(e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SkillsStatusParams {
    #[serde(default)]
    agent_id: Option<String>,
}

/// `skills.status {agentId?}`: every skill the agent's directories hold, with gating and eligibility.
fn skills_status(gw: &Gateway, conn: &Conn, p: Option<Value>) -> Result<Value, ErrorShape> {
    let p: SkillsStatusParams = params("skills.status", p)?;
    let id = match (p.agent_id, &conn.scope) {
        (Some(a), _) => AgentId::parse(&a).map_err(|e| ErrorShape::invalid(e.to_string()))?,
        (None, Some(s)) => s.clone(),
        (None, None) => gw.cfg().default_agent.clone(),
    };
    if let Some(s) = &conn.scope
        && *s != id
    {
        return Err(ErrorShape::invalid(format!(
            "agent {id} is not this connection's agent"
        )));
    }
    let agent = gw
        .agent(&id)
        .ok_or_else(|| ErrorShape::invalid(format!("unknown agent {id:?}")))?;
    Ok(crate::features::skills_status(gw, &agent))
}

fn internal(e: crate::Error) -> ErrorShape {
    tracing::error!(error = %e, "request failed");
    ErrorShape::unavailable("internal error (see the worker log)")
}
