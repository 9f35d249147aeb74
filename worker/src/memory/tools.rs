//! The built-in agent tools the model router offers: `memory_search`, `memory_get`, `memory_append`,
//! `cron_list`, `cron_add`, `cron_remove`, `skill_read`: JSON-schema definitions and one executor.
//! Tool errors are the model's to read (bad input, unknown id), so they are plain, precise sentences.

use std::sync::Arc;

use chrono::Utc;
use chrono_tz::Tz;
use serde_json::{Value, json};

use super::MemoryIndex;
use crate::cron::{self, CronService, NewJob, Payload, Schedule, SessionTarget, WakeMode};
use crate::skills::{self, Skill};

/// A tool as offered to the model (Anthropic `tools[]`: name, description, input_schema; OpenAI
/// `tools[].function`: name, description, parameters).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub input_schema: Value,
}

/// What a tool call could not do; its `Display` is what the model sees in the error tool result.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool {name:?}")]
    UnknownTool { name: String },
    #[error("{tool}: invalid input: {reason}")]
    InvalidInput { tool: &'static str, reason: String },
    #[error("{tool}: {what} is not available in this session")]
    Unavailable {
        tool: &'static str,
        what: &'static str,
    },
    #[error("{tool}: {source}")]
    Memory {
        tool: &'static str,
        #[source]
        source: super::Error,
    },
    #[error("{tool}: {source}")]
    Cron {
        tool: &'static str,
        #[source]
        source: cron::Error,
    },
    #[error("{tool}: {source}")]
    Skills {
        tool: &'static str,
        #[source]
        source: skills::Error,
    },
}

/// The handles tools act on. Any of them may be absent (e.g. an isolated cron session without cron tools).
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub memory: Option<MemoryIndex>,
    pub cron: Option<Arc<CronService>>,
    /// Eligible skills (what the prompt lists); `skill_read` reads only these.
    pub skills: Vec<Skill>,
    /// The member's time zone: "today" for daily logs.
    pub timezone: Tz,
    /// Set on cron jobs the model creates (shared gateways run several agents).
    pub agent_id: Option<String>,
}

/// The names of every built-in tool.
pub const TOOL_NAMES: [&str; 7] = [
    "memory_search",
    "memory_get",
    "memory_append",
    "cron_list",
    "cron_add",
    "cron_remove",
    "skill_read",
];

fn schedule_schema() -> Value {
    json!({
        "description": "When to run. One of: {\"kind\":\"at\",\"at\":\"2026-01-05T09:00:00+01:00\"} (or \"atMs\": epoch ms) for once; {\"kind\":\"every\",\"everyMs\":3600000}; {\"kind\":\"cron\",\"expr\":\"0 9 * * 1-5\",\"tz\":\"Europe/Berlin\"} (standard 5-field cron, Sunday = 0).",
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["at", "every", "cron"]},
            "at": {"type": "string", "description": "RFC 3339 time with offset (kind at)"},
            "atMs": {"type": "integer"},
            "everyMs": {"type": "integer", "minimum": 1},
            "anchorMs": {"type": "integer"},
            "expr": {"type": "string"},
            "tz": {"type": "string", "description": "IANA time zone, e.g. America/New_York"}
        },
        "required": ["kind"]
    })
}

/// JSON-schema definitions of every built-in tool. Offer only those whose handle the `ToolContext` has
/// (`ToolContext::definitions`).
pub fn tool_definitions() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "memory_search",
            description: "Search the member's memory (MEMORY.md and memory/*.md daily logs) by meaning and keywords. Call before answering anything about past goals, decisions, people, numbers or commitments. Returns the best chunks with path, line range, score and snippet.",
            input_schema: json!({"type": "object", "properties": {
                "query": {"type": "string", "description": "What to look for, with the distinctive nouns (names, products, numbers)."}
            }, "required": ["query"]}),
        },
        ToolDef {
            name: "memory_get",
            description: "Read lines of a memory file (MEMORY.md or memory/**/*.md), e.g. around a memory_search hit.",
            input_schema: json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "Workspace-relative path from a search result, e.g. memory/2026-01-05.md"},
                "from": {"type": "integer", "minimum": 1, "description": "First line (1-based), default 1"},
                "lines": {"type": "integer", "minimum": 1, "description": "How many lines, default all"}
            }, "required": ["path"]}),
        },
        ToolDef {
            name: "memory_append",
            description: "Record something worth remembering. target \"daily\" (default) appends to today's log memory/YYYY-MM-DD.md (commitments, standups, events, numbers); target \"memory\" appends to MEMORY.md (durable goals, decisions with reasons, people, preferences).",
            input_schema: json!({"type": "object", "properties": {
                "text": {"type": "string", "description": "Markdown to append, complete sentences with names, dates and numbers."},
                "target": {"type": "string", "enum": ["daily", "memory"]}
            }, "required": ["text"]}),
        },
        ToolDef {
            name: "cron_list",
            description: "List scheduled jobs (standups, reflections, reminders) with their schedules and next run times.",
            input_schema: json!({"type": "object", "properties": {
                "includeDisabled": {"type": "boolean"}
            }}),
        },
        ToolDef {
            name: "cron_add",
            description: "Schedule a reminder or ritual. sessionTarget \"main\" (default) posts text into the member's main conversation; \"isolated\" runs a separate agent turn with text as the prompt.",
            input_schema: json!({"type": "object", "properties": {
                "name": {"type": "string"},
                "schedule": schedule_schema(),
                "text": {"type": "string", "description": "What to say (main) or the prompt to run (isolated) when it fires."},
                "sessionTarget": {"type": "string", "enum": ["main", "isolated"]},
                "wakeMode": {"type": "string", "enum": ["now", "next-heartbeat"], "description": "default now"},
                "deleteAfterRun": {"type": "boolean", "description": "For one-off jobs: delete after a successful run."},
                "description": {"type": "string"}
            }, "required": ["name", "schedule", "text"]}),
        },
        ToolDef {
            name: "cron_remove",
            description: "Delete a scheduled job by id (from cron_list).",
            input_schema: json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
        },
        ToolDef {
            name: "skill_read",
            description: "Load the full instructions (SKILL.md) of a skill listed in <available_skills>.",
            input_schema: json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
        },
    ]
}

impl ToolContext {
    /// The definitions this context can execute: memory tools need the index, cron tools the service,
    /// `skill_read` at least one skill.
    pub fn definitions(&self) -> Vec<ToolDef> {
        tool_definitions()
            .into_iter()
            .filter(|d| match d.name {
                n if n.starts_with("memory_") => self.memory.is_some(),
                n if n.starts_with("cron_") => self.cron.is_some(),
                _ => !self.skills.is_empty(),
            })
            .collect()
    }

    fn memory(&self, tool: &'static str) -> Result<&MemoryIndex, ToolError> {
        self.memory.as_ref().ok_or(ToolError::Unavailable {
            tool,
            what: "memory",
        })
    }

    fn cron(&self, tool: &'static str) -> Result<&CronService, ToolError> {
        self.cron.as_deref().ok_or(ToolError::Unavailable {
            tool,
            what: "the schedule",
        })
    }

    /// Today's date in the member's time zone.
    pub fn today(&self) -> chrono::NaiveDate {
        Utc::now().with_timezone(&self.timezone).date_naive()
    }
}

fn str_arg<'a>(tool: &'static str, input: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    input
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ToolError::InvalidInput {
            tool,
            reason: format!("{key} (a non-empty string) is required"),
        })
}

fn usize_arg(tool: &'static str, input: &Value, key: &str) -> Result<Option<usize>, ToolError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ToolError::InvalidInput {
                tool,
                reason: format!("{key} must be a positive integer"),
            }),
    }
}

/// Runs one tool call. The result JSON goes back to the model as the tool result.
pub async fn execute(ctx: &ToolContext, name: &str, input: Value) -> Result<Value, ToolError> {
    match name {
        "memory_search" => {
            const T: &str = "memory_search";
            let query = str_arg(T, &input, "query")?;
            let index = ctx.memory(T)?;
            // Pick up edits made since the last call; a failed sync still lets us search what is indexed.
            if let Err(error) = index.sync().await {
                tracing::warn!(%error, "memory_search: sync failed; searching the existing index");
            }
            let results = index
                .search(query)
                .await
                .map_err(|source| ToolError::Memory { tool: T, source })?;
            Ok(
                json!({"results": results, "mode": if index.has_embeddings() { "hybrid" } else { "bm25" }}),
            )
        }
        "memory_get" => {
            const T: &str = "memory_get";
            let path = str_arg(T, &input, "path")?;
            let from = usize_arg(T, &input, "from")?;
            let lines = usize_arg(T, &input, "lines")?;
            let text = ctx
                .memory(T)?
                .get(path, from, lines)
                .map_err(|source| ToolError::Memory { tool: T, source })?;
            Ok(json!({"path": path, "from": from.unwrap_or(1), "text": text}))
        }
        "memory_append" => {
            const T: &str = "memory_append";
            let text = str_arg(T, &input, "text")?;
            let index = ctx.memory(T)?;
            let written = match input
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or("daily")
            {
                "daily" => index.append_daily(ctx.today(), text).await,
                "memory" => index.append_long_term(text).await,
                other => {
                    return Err(ToolError::InvalidInput {
                        tool: T,
                        reason: format!("target {other:?} (expected daily or memory)"),
                    });
                }
            }
            .map_err(|source| ToolError::Memory { tool: T, source })?;
            if let Err(error) = index.sync().await {
                tracing::warn!(%error, "memory_append: reindex failed; the text is saved and will be indexed later");
            }
            let rel = written
                .strip_prefix(index.workspace())
                .unwrap_or(&written)
                .to_string_lossy()
                .into_owned();
            Ok(json!({"ok": true, "path": rel}))
        }
        "cron_list" => {
            const T: &str = "cron_list";
            cron::methods::list(ctx.cron(T)?, &input)
                .map_err(|source| ToolError::Cron { tool: T, source })
        }
        "cron_add" => {
            const T: &str = "cron_add";
            let service = ctx.cron(T)?;
            let new = new_job_from_tool(ctx, &input)?;
            let job = service
                .add(new)
                .map_err(|source| ToolError::Cron { tool: T, source })?;
            serde_json::to_value(job).map_err(|e| ToolError::InvalidInput {
                tool: T,
                reason: e.to_string(),
            })
        }
        "cron_remove" => {
            const T: &str = "cron_remove";
            let id = str_arg(T, &input, "id")?;
            let removed = ctx
                .cron(T)?
                .remove(id)
                .map_err(|source| ToolError::Cron { tool: T, source })?;
            if !removed {
                return Err(ToolError::Cron {
                    tool: T,
                    source: cron::Error::UnknownJob { id: id.to_owned() },
                });
            }
            Ok(json!({"ok": true, "removed": id}))
        }
        "skill_read" => {
            const T: &str = "skill_read";
            let name = str_arg(T, &input, "name")?;
            let text = skills::read_skill(&ctx.skills, name)
                .map_err(|source| ToolError::Skills { tool: T, source })?;
            Ok(json!({"name": name, "content": text}))
        }
        other => Err(ToolError::UnknownTool {
            name: other.to_owned(),
        }),
    }
}

/// `cron_add` input → `cron.add` params: `text` becomes a systemEvent (main) or agentTurn (isolated) payload,
/// and a schedule `{"kind":"at","at":"<RFC 3339>"}` becomes `atMs`.
fn new_job_from_tool(ctx: &ToolContext, input: &Value) -> Result<NewJob, ToolError> {
    const T: &str = "cron_add";
    let invalid = |reason: String| ToolError::InvalidInput { tool: T, reason };
    let name = str_arg(T, input, "name")?.to_owned();
    let text = str_arg(T, input, "text")?.to_owned();
    let mut schedule = input
        .get("schedule")
        .cloned()
        .ok_or_else(|| invalid("schedule is required".into()))?;
    if schedule.get("kind").and_then(Value::as_str) == Some("at")
        && schedule.get("atMs").is_none()
        && let Some(at) = schedule.get("at").and_then(Value::as_str)
    {
        let t = chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|e| invalid(format!("schedule.at {at:?}: {e}")))?;
        schedule = json!({"kind": "at", "atMs": t.timestamp_millis()});
    }
    let schedule: Schedule =
        serde_json::from_value(schedule).map_err(|e| invalid(format!("schedule: {e}")))?;
    let session_target = match input
        .get("sessionTarget")
        .and_then(Value::as_str)
        .unwrap_or("main")
    {
        "main" => SessionTarget::Main,
        "isolated" => SessionTarget::Isolated,
        other => {
            return Err(invalid(format!(
                "sessionTarget {other:?} (expected main or isolated)"
            )));
        }
    };
    let wake_mode = match input
        .get("wakeMode")
        .and_then(Value::as_str)
        .unwrap_or("now")
    {
        "now" => WakeMode::Now,
        "next-heartbeat" => WakeMode::NextHeartbeat,
        other => {
            return Err(invalid(format!(
                "wakeMode {other:?} (expected now or next-heartbeat)"
            )));
        }
    };
    let payload = match session_target {
        SessionTarget::Main => Payload::SystemEvent { text },
        SessionTarget::Isolated => Payload::AgentTurn {
            message: text,
            model: None,
            thinking: None,
            timeout_seconds: None,
            deliver: None,
            channel: None,
            to: None,
        },
    };
    Ok(NewJob {
        name,
        schedule,
        session_target,
        wake_mode,
        payload,
        agent_id: ctx.agent_id.clone(),
        enabled: Some(true),
        delete_after_run: input.get("deleteAfterRun").and_then(Value::as_bool),
        description: input
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        isolation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::{CronStore, Executor, RunOutcome};
    use crate::memory::MemoryConfig;

    fn ctx(state: &std::path::Path, ws: &std::path::Path) -> ToolContext {
        let exec: Executor = Arc::new(|_job| Box::pin(async { RunOutcome::ok(None) }));
        ToolContext {
            memory: Some(MemoryIndex::open(state, "main", ws, MemoryConfig::default()).unwrap()),
            cron: Some(CronService::new(CronStore::open(state).unwrap(), exec)),
            skills: Vec::new(),
            timezone: Tz::UTC,
            agent_id: Some("main".into()),
        }
    }

    #[test]
    fn definitions_are_valid_object_schemas_and_follow_the_context() {
        let defs = tool_definitions();
        assert_eq!(defs.iter().map(|d| d.name).collect::<Vec<_>>(), TOOL_NAMES);
        for d in &defs {
            assert_eq!(d.input_schema["type"], "object", "{}", d.name);
        }
        let empty = ToolContext {
            memory: None,
            cron: None,
            skills: Vec::new(),
            timezone: Tz::UTC,
            agent_id: None,
        };
        assert!(empty.definitions().is_empty());
    }

    #[tokio::test]
    async fn append_then_search_then_get_round_trip() {
        let (state, ws) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ctx = ctx(state.path(), ws.path());
        let out = execute(
            &ctx,
            "memory_append",
            json!({"text": "Decision: hire a contract designer for the landing page."}),
        )
        .await
        .unwrap();
        let path = out["path"].as_str().unwrap().to_owned();
        assert!(
            path.starts_with("memory/") && path.ends_with(".md"),
            "{path}"
        );
        let found = execute(
            &ctx,
            "memory_search",
            json!({"query": "who designs the landing page?"}),
        )
        .await
        .unwrap();
        assert_eq!(found["mode"], "bm25");
        assert_eq!(found["results"][0]["path"], path.as_str());
        let got = execute(
            &ctx,
            "memory_get",
            json!({"path": path, "from": 3, "lines": 1}),
        )
        .await
        .unwrap();
        assert_eq!(
            got["text"],
            "Decision: hire a contract designer for the landing page."
        );
        execute(
            &ctx,
            "memory_append",
            json!({"text": "Goal: 100 customers", "target": "memory"}),
        )
        .await
        .unwrap();
        assert!(
            std::fs::read_to_string(ws.path().join("MEMORY.md"))
                .unwrap()
                .contains("Goal: 100 customers")
        );
        let err = execute(&ctx, "memory_get", json!({"path": "../../etc/passwd"}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a memory file"), "{err}");
        let err = execute(&ctx, "memory_search", json!({})).await.unwrap_err();
        assert!(matches!(err, ToolError::InvalidInput { .. }));
    }

    #[tokio::test]
    async fn cron_tools_add_list_remove() {
        let (state, ws) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ctx = ctx(state.path(), ws.path());
        let job = execute(
            &ctx,
            "cron_add",
            json!({"name": "investor update", "text": "Send the investor update",
            "schedule": {"kind": "at", "at": "2099-01-05T09:00:00+01:00"}}),
        )
        .await
        .unwrap();
        assert_eq!(job["schedule"]["atMs"], 4_071_283_200_000_i64);
        assert_eq!(
            job["payload"],
            json!({"kind": "systemEvent", "text": "Send the investor update"})
        );
        assert_eq!(job["agentId"], "main");
        let iso = execute(
            &ctx,
            "cron_add",
            json!({"name": "weekly", "text": "Summarise the week", "sessionTarget": "isolated",
            "schedule": {"kind": "cron", "expr": "0 17 * * 5", "tz": "Europe/Berlin"}}),
        )
        .await
        .unwrap();
        assert_eq!(iso["payload"]["kind"], "agentTurn");
        let list = execute(&ctx, "cron_list", json!({})).await.unwrap();
        assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
        execute(&ctx, "cron_remove", json!({"id": job["id"]}))
            .await
            .unwrap();
        let err = execute(&ctx, "cron_remove", json!({"id": job["id"]}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no job"), "{err}");
        let err = execute(
            &ctx,
            "cron_add",
            json!({"name": "x", "text": "y", "schedule": {"kind": "cron", "expr": "bad"}}),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("invalid schedule"), "{err}");
        assert!(matches!(
            execute(&ctx, "nope", json!({})).await.unwrap_err(),
            ToolError::UnknownTool { .. }
        ));
    }
}
