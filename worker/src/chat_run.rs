//! A chat run: persist the user message (durable before the ack), call the model router, stream `agent` and
//! `chat` events (cumulative deltas, at most one per 150 ms), run tool calls, and persist the reply.
//! Every entry point (WS `chat.send`/`agent`, hooks, `/v1/chat/completions`) starts runs through [`start`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::hub::Audience;
use crate::model_router::RouteRequest;
use crate::prompt::{self, PromptInput};
use crate::protocol::ErrorShape;
use crate::providers::{Block, Message, Role};
use crate::runs::{Existing, RunOutcome, RunSlot};
use crate::session_key::SessionKey;
use crate::sessions::SessionHandle;
use crate::state::Gateway;
use crate::transcript::{self, now_ms};

/// Minimum spacing of `chat` delta events per run.
pub const DELTA_INTERVAL: Duration = Duration::from_millis(150);
/// Tool-call rounds per run before the run is ended.
const MAX_TOOL_ROUNDS: usize = 8;
/// Transcript messages sent to the model as context.
const HISTORY_MESSAGES: usize = 100;

/// What to run.
#[derive(Debug)]
pub struct StartRun {
    pub run_id: String,
    pub agent: AgentConfig,
    pub key: SessionKey,
    pub message: String,
    /// Origin channel recorded on a new session (`webchat`, `hook`, `openai`).
    pub channel: &'static str,
    pub extra_system: Option<String>,
    pub timeout: Duration,
    /// Receives each streamed text increment (HTTP streaming).
    pub tap: Option<mpsc::UnboundedSender<String>>,
}

/// The answer to a start request.
#[derive(Debug)]
pub enum Started {
    New { run_id: String, started_at: i64 },
    Existing(Existing),
}

/// Registers the run (idempotency), makes the user message durable, then spawns the run. Returns once the
/// message is on disk: callers ack after this.
pub fn start(gw: &Arc<Gateway>, mut s: StartRun) -> Result<Started, ErrorShape> {
    // Run ids are client-chosen: one agent must not learn (or wait on) another agent's run by reusing its id.
    if gw
        .runs
        .session_of(&s.run_id)
        .is_some_and(|k| k.agent_id() != s.agent.id)
    {
        return Err(ErrorShape::invalid(
            "idempotencyKey is already in use; choose another",
        ));
    }
    let slot = match gw.runs.register(&s.run_id, &s.key) {
        Ok(slot) => slot,
        Err(existing) => return Ok(Started::Existing(existing)),
    };
    // Queued system events (cron) ride in front of the session's next user message, as Clawdbot does.
    let events = gw.features.take_system_events(s.key.as_str());
    if !events.is_empty() {
        let lines: Vec<String> = events.iter().map(|e| format!("System: {e}")).collect();
        s.message = format!("{}\n\n{}", lines.join("\n"), s.message);
    }
    let persisted = gw.sessions.ensure(&s.agent, &s.key, s.channel).and_then(|h| {
        let msg = json!({"role": "user", "content": [{"type": "text", "text": s.message}], "timestamp": now_ms()});
        gw.sessions.append(&s.agent, &h, "message", json!({"message": msg})).map(|_| h)
    });
    let handle = match persisted {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(agent = %s.agent.id, session = %s.key, error = %e, "persisting the user message failed");
            let msg = "could not persist the message".to_string();
            slot.done.send_replace(Some(RunOutcome {
                status: "error",
                ended_at: now_ms(),
                text: String::new(),
                error: Some(msg.clone()),
                provider: None,
                model: None,
            }));
            return Err(ErrorShape::unavailable(msg));
        }
    };
    let (run_id, started_at) = (slot.run_id.clone(), slot.started_at);
    let gw2 = Arc::clone(gw);
    gw.tasks
        .spawn(async move { execute(gw2, s, handle, slot).await });
    Ok(Started::New { run_id, started_at })
}

/// Emits a run's events with its per-run `seq`.
struct Emitter {
    gw: Arc<Gateway>,
    run_id: String,
    key: SessionKey,
    audience: Audience,
    seq: u64,
    text: String,
    last_delta: Option<Instant>,
    tap: Option<mpsc::UnboundedSender<String>>,
}

impl Emitter {
    fn agent(&mut self, stream: &str, data: Value, droppable: bool) {
        self.seq += 1;
        let p = json!({"runId": self.run_id, "seq": self.seq, "stream": stream, "ts": now_ms(), "data": data,
            "sessionKey": self.key});
        self.gw.hub.publish("agent", &p, &self.audience, droppable);
    }

    fn chat(&self, state: &str, extra: Value, droppable: bool) {
        let mut p =
            json!({"runId": self.run_id, "sessionKey": self.key, "seq": self.seq, "state": state});
        if let (Some(o), Value::Object(e)) = (p.as_object_mut(), extra) {
            o.extend(e);
        }
        self.gw.hub.publish("chat", &p, &self.audience, droppable);
    }

    fn on_text(&mut self, delta: &str) {
        self.text.push_str(delta);
        if let Some(tap) = &self.tap {
            let _ = tap.send(delta.to_string());
        }
        self.agent(
            "assistant",
            json!({"text": self.text, "delta": delta}),
            true,
        );
        if self
            .last_delta
            .is_none_or(|t| t.elapsed() >= DELTA_INTERVAL)
        {
            self.last_delta = Some(Instant::now());
            self.chat(
                "delta",
                json!({"message": assistant_message(&self.text)}),
                true,
            );
        }
    }
}

fn assistant_message(text: &str) -> Value {
    json!({"role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": now_ms()})
}

enum End {
    Done,
    Aborted,
    Failed(String),
}

async fn execute(gw: Arc<Gateway>, s: StartRun, handle: SessionHandle, slot: RunSlot) {
    let mut em = Emitter {
        gw: Arc::clone(&gw),
        run_id: slot.run_id.clone(),
        key: s.key.clone(),
        audience: Audience::Agent(s.agent.id.clone()),
        seq: 0,
        text: String::new(),
        last_delta: None,
        tap: s.tap,
    };
    em.agent(
        "lifecycle",
        json!({"phase": "start", "startedAt": slot.started_at}),
        false,
    );
    let mut messages = match gw.sessions.history(&s.agent, &s.key, HISTORY_MESSAGES) {
        Ok((_, msgs)) => msgs.iter().filter_map(to_model_message).collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the transcript failed; sending only the new message");
            vec![Message::text(Role::User, s.message.clone())]
        }
    };
    let mut sections = Vec::new();
    let skills_block =
        crate::skills::available_skills_block(&crate::features::eligible_skills(&gw, &s.agent));
    if !skills_block.is_empty() {
        sections.push(("Skills".to_string(), skills_block));
    }
    // A main session's first turn starts with MEMORY.md and today's and yesterday's logs.
    if s.key.rest() == gw.cfg().session.main_key && messages.len() <= 1 {
        let ctx = crate::memory::session_start_context(&s.agent.workspace, gw.features.today());
        if !ctx.is_empty() {
            sections.push(("Memory".to_string(), ctx));
        }
    }
    let system = prompt::build(
        &s.agent,
        &PromptInput {
            extra: s.extra_system.as_deref(),
            sections,
        },
    );
    let tools = crate::tools::specs(&gw, &s.agent);
    // One config snapshot for the whole run (a reload mid-run does not change its models or credentials).
    let cfg = gw.cfg();
    let credential_dirs = gw.credential_dirs(&s.agent);
    let deadline = tokio::time::Instant::now() + s.timeout;
    let idle = Duration::from_secs(cfg.timeout_seconds.max(1)).min(s.timeout);
    let mut routed_meta: Option<(String, String, &'static str)> = None;
    let mut usage = crate::providers::Usage::default();
    let mut stop_reason = String::from("stop");
    let mut end = End::Done;
    // Where the current round's text starts in `em.text`: earlier rounds' text is already in the transcript
    // (with their tool calls), so the final assistant message holds only the last round's.
    let mut round_start = 0;
    for round in 0..=MAX_TOOL_ROUNDS {
        round_start = em.text.len();
        let req = RouteRequest {
            agent_dirs: credential_dirs.iter().map(|p| p.as_path()).collect(),
            models: cfg.model_for(&s.agent),
            system: system.clone(),
            messages: messages.clone(),
            tools: tools.clone(),
            max_tokens: 4096,
            idle_timeout: idle,
        };
        let result = {
            let mut sink = |t: &str| em.on_text(t);
            let fut = gw.router.complete(&cfg, req, &mut sink);
            tokio::select! {
                _ = slot.cancel.cancelled() => None,
                _ = tokio::time::sleep_until(deadline) => Some(Err(format!("run timed out after {} ms", s.timeout.as_millis()))),
                r = fut => Some(r.map_err(|e| e.to_string())),
            }
        };
        let routed = match result {
            None => {
                end = End::Aborted;
                break;
            }
            Some(Err(e)) => {
                end = End::Failed(e);
                break;
            }
            Some(Ok(r)) => r,
        };
        usage.input += routed.completion.usage.input;
        usage.output += routed.completion.usage.output;
        usage.cache_read += routed.completion.usage.cache_read;
        usage.cache_write += routed.completion.usage.cache_write;
        stop_reason = routed.completion.stop_reason.clone();
        routed_meta = Some((
            routed.provider.clone(),
            routed.model.clone(),
            routed.api.as_str(),
        ));
        if routed.completion.tool_calls.is_empty() {
            break;
        }
        if round == MAX_TOOL_ROUNDS {
            end = End::Failed(format!("stopped after {MAX_TOOL_ROUNDS} tool rounds"));
            break;
        }
        let mut content: Vec<Block> = Vec::new();
        if !routed.completion.text.is_empty() {
            content.push(Block::Text(routed.completion.text.clone()));
        }
        let mut results = Vec::new();
        let mut result_entries = Vec::new();
        for (id, name, input) in &routed.completion.tool_calls {
            content.push(Block::ToolUse {
                id: id.clone(),
                name: name.clone(),
                input: input.clone(),
            });
            em.agent(
                "tool",
                json!({"phase": "start", "name": name, "toolCallId": id}),
                true,
            );
            let (text, is_error) = match crate::tools::call(&gw, &s.agent, name, input).await {
                Ok(t) => (t, false),
                Err(t) => (t, true),
            };
            em.agent(
                "tool",
                json!({"phase": "result", "name": name, "toolCallId": id, "isError": is_error}),
                true,
            );
            result_entries.push(json!({"role": "toolResult", "toolCallId": id, "toolName": name,
                "content": [{"type": "text", "text": text}], "isError": is_error, "timestamp": now_ms()}));
            results.push(Block::ToolResult {
                tool_use_id: id.clone(),
                content: text,
                is_error,
            });
        }
        persist(
            &gw,
            &s.agent,
            &handle,
            json!({"role": "assistant", "content": content.iter().map(block_json).collect::<Vec<_>>(),
            "stopReason": "toolUse", "timestamp": now_ms()}),
        );
        // The call is on disk before its results, in the order a reader replays them.
        for entry in result_entries {
            persist(&gw, &s.agent, &handle, entry);
        }
        messages.push(Message {
            role: Role::Assistant,
            content,
        });
        messages.push(Message {
            role: Role::User,
            content: results,
        });
    }
    let text = em.text.clone();
    let ended_at = now_ms();
    let (provider, model, api) = routed_meta.clone().unwrap_or_default();
    let outcome = match end {
        End::Done => {
            let total = usage.input + usage.output + usage.cache_read + usage.cache_write;
            let usage_json = json!({"input": usage.input, "output": usage.output, "cacheRead": usage.cache_read,
                "cacheWrite": usage.cache_write, "totalTokens": total,
                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": 0}});
            let mut msg = assistant_message(em.text.get(round_start..).unwrap_or(&text));
            msg["api"] = json!(api);
            msg["provider"] = json!(provider);
            msg["model"] = json!(model);
            msg["usage"] = usage_json.clone();
            msg["stopReason"] = json!(stop_reason);
            persist(&gw, &s.agent, &handle, msg.clone());
            let mut f = Map::new();
            f.insert("inputTokens".into(), json!(usage.input));
            f.insert("outputTokens".into(), json!(usage.output));
            f.insert("totalTokens".into(), json!(total));
            f.insert("modelProvider".into(), json!(provider));
            f.insert("model".into(), json!(model));
            f.insert("abortedLastRun".into(), json!(false));
            f.insert("systemSent".into(), json!(true));
            update(&gw, &s.agent, &s.key, f);
            em.agent(
                "lifecycle",
                json!({"phase": "end", "endedAt": ended_at}),
                false,
            );
            em.chat(
                "final",
                json!({"message": msg, "usage": usage_json, "stopReason": stop_reason}),
                false,
            );
            RunOutcome {
                status: "ok",
                ended_at,
                text,
                error: None,
                provider: Some(provider),
                model: Some(model),
            }
        }
        End::Aborted => {
            if !text.is_empty() {
                let mut msg = assistant_message(&text);
                msg["stopReason"] = json!("aborted");
                persist(&gw, &s.agent, &handle, msg);
            }
            let mut f = Map::new();
            f.insert("abortedLastRun".into(), json!(true));
            update(&gw, &s.agent, &s.key, f);
            em.agent(
                "lifecycle",
                json!({"phase": "end", "endedAt": ended_at, "aborted": true}),
                false,
            );
            let extra = if text.is_empty() {
                json!({})
            } else {
                json!({"message": assistant_message(&text)})
            };
            em.chat("aborted", extra, false);
            RunOutcome {
                status: "aborted",
                ended_at,
                text,
                error: None,
                provider: None,
                model: None,
            }
        }
        End::Failed(error) => {
            tracing::warn!(agent = %s.agent.id, session = %s.key, run = %slot.run_id, "run failed: {error}");
            em.agent(
                "lifecycle",
                json!({"phase": "error", "endedAt": ended_at, "error": error}),
                false,
            );
            em.chat("error", json!({"errorMessage": error}), false);
            RunOutcome {
                status: "error",
                ended_at,
                text,
                error: Some(error),
                provider: None,
                model: None,
            }
        }
    };
    slot.done.send_replace(Some(outcome));
}

fn persist(gw: &Gateway, agent: &AgentConfig, h: &SessionHandle, message: Value) {
    if let Err(e) = gw
        .sessions
        .append(agent, h, "message", json!({"message": message}))
    {
        tracing::error!(agent = %agent.id, session = %h.key, error = %e, "appending to the transcript failed");
    }
}

/// The run's metadata in the session index (written within `sessions::FLUSH_INTERVAL`; the messages themselves are
/// in the fsynced transcript).
fn update(gw: &Gateway, agent: &AgentConfig, key: &SessionKey, fields: Map<String, Value>) {
    if let Err(e) = gw.sessions.update_deferred(agent, key, fields) {
        tracing::error!(agent = %agent.id, session = %key, error = %e, "updating the session index failed");
    }
}

fn block_json(b: &Block) -> Value {
    match b {
        Block::Text(t) => json!({"type": "text", "text": t}),
        Block::ToolUse { id, name, input } => {
            json!({"type": "toolCall", "id": id, "name": name, "arguments": input})
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => {
            json!({"type": "toolResult", "toolCallId": tool_use_id, "content": content, "isError": is_error})
        }
    }
}

/// Converts a transcript message (pi format) to a model message; unknown roles are skipped.
pub fn to_model_message(m: &Value) -> Option<Message> {
    let role = m.get("role").and_then(Value::as_str)?;
    match role {
        "user" => {
            let text = strip_envelope(&transcript::message_text(m));
            (!text.is_empty()).then(|| Message::text(Role::User, text))
        }
        "assistant" => {
            let mut content = Vec::new();
            for b in m
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => content.push(Block::Text(
                        b["text"].as_str().unwrap_or_default().to_string(),
                    )),
                    Some("toolCall") => content.push(Block::ToolUse {
                        id: b["id"].as_str().unwrap_or_default().to_string(),
                        name: b["name"].as_str().unwrap_or_default().to_string(),
                        input: b.get("arguments").cloned().unwrap_or(json!({})),
                    }),
                    _ => {}
                }
            }
            if let Some(Value::String(s)) = m.get("content") {
                content.push(Block::Text(s.clone()));
            }
            content.retain(|b| !matches!(b, Block::Text(t) if t.is_empty()));
            (!content.is_empty()).then_some(Message {
                role: Role::Assistant,
                content,
            })
        }
        "toolResult" => Some(Message {
            role: Role::User,
            content: vec![Block::ToolResult {
                tool_use_id: m["toolCallId"].as_str().unwrap_or_default().to_string(),
                content: transcript::message_text(m),
                is_error: m["isError"].as_bool().unwrap_or(false),
            }],
        }),
        _ => None,
    }
}

/// Removes Clawdbot's `[message_id: …]` envelope lines from user text.
pub fn strip_envelope(text: &str) -> String {
    text.lines()
        .filter(|l| !(l.trim_start().starts_with("[message_id:") && l.trim_end().ends_with(']')))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_messages_convert() {
        let u = json!({"role": "user", "content": [{"type": "text", "text": "hi\n[message_id: run-1]"}]});
        assert_eq!(to_model_message(&u), Some(Message::text(Role::User, "hi")));
        let a = json!({"role": "assistant", "content": [{"type": "text", "text": "yo"}, {"type": "toolCall", "id": "t", "name": "n", "arguments": {"a": 1}}]});
        let m = to_model_message(&a).unwrap();
        assert_eq!(m.content.len(), 2);
        assert_eq!(
            to_model_message(&json!({"role": "system", "content": "x"})),
            None
        );
    }
}
