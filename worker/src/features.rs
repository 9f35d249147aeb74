//! The gateway's wiring of cron, skills and memory: the cron service and its executor (system events in the main
//! session, isolated agent turns), per-agent lazily opened memory indexes, the skills snapshot for a run, and
//! the queued system events a main session's next turn picks up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::agent_id::AgentId;
use crate::chat_run::{self, StartRun, Started};
use crate::config::AgentConfig;
use crate::cron::{self, CronService, CronStore, Job, Payload, SessionTarget, WakeMode};
use crate::hub::Audience;
use crate::memory::{MemoryConfig, MemoryIndex};
use crate::runs;
use crate::skills::{self, GateEnv, Skill, SkillDirs, SkillsConfig};
use crate::state::Gateway;

/// The prompt of a turn a `wakeMode: now` system event starts (Clawdbot's heartbeat prompt, shortened).
pub const HEARTBEAT_PROMPT: &str = "A scheduled event arrived (see the System lines above). Act on it now; if nothing needs attention, reply HEARTBEAT_OK.";
/// Default time a cron agent turn may take.
const CRON_TURN_TIMEOUT: Duration = Duration::from_secs(600);
/// Run-log summaries keep this many characters of the reply.
const SUMMARY_CHARS: usize = 200;

/// Feature state hung off the [`Gateway`].
#[derive(Debug)]
pub struct Features {
    /// Set once at start unless cron is disabled.
    pub cron: OnceLock<Arc<CronService>>,
    pub skills_cfg: SkillsConfig,
    /// `CLAWDBOT_BUNDLED_SKILLS_DIR`, or none.
    pub bundled_skills: Option<PathBuf>,
    /// The member's time zone (`agents.defaults.userTimezone`, else UTC): "today" for daily logs.
    pub timezone: Tz,
    memory: Mutex<HashMap<AgentId, MemoryIndex>>,
    /// System events waiting for a session's next turn, by session key.
    system_events: Mutex<HashMap<String, Vec<String>>>,
}

impl Features {
    pub fn new(parsed: &Value) -> Self {
        let skills_cfg = parsed
            .get("skills")
            .map(|v| {
                SkillsConfig::from_json(v).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "skills config does not parse; using defaults");
                    SkillsConfig::default()
                })
            })
            .unwrap_or_default();
        let timezone = parsed
            .pointer("/agents/defaults/userTimezone")
            .and_then(Value::as_str)
            .and_then(|z| z.parse::<Tz>().ok())
            .unwrap_or(Tz::UTC);
        Features {
            cron: OnceLock::new(),
            skills_cfg,
            bundled_skills: std::env::var_os("CLAWDBOT_BUNDLED_SKILLS_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            timezone,
            memory: Mutex::new(HashMap::new()),
            system_events: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `text` for the next turn of session `key`.
    pub fn push_system_event(&self, key: &str, text: String) {
        let mut q = self.system_events.lock().unwrap_or_else(|p| p.into_inner());
        q.entry(key.to_string()).or_default().push(text);
    }

    /// Takes the queued system events of session `key`.
    pub fn take_system_events(&self, key: &str) -> Vec<String> {
        let mut q = self.system_events.lock().unwrap_or_else(|p| p.into_inner());
        q.remove(key).unwrap_or_default()
    }

    /// Drops `agent`'s open memory index (removed or changed by a reload); the next use opens it per the new config.
    pub fn forget_memory(&self, agent: &AgentId) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent);
    }

    /// Today in the member's time zone.
    pub fn today(&self) -> chrono::NaiveDate {
        chrono::Utc::now()
            .with_timezone(&self.timezone)
            .date_naive()
    }
}

/// `memorySearch` for `agent`: `agents.defaults.memorySearch` merged (object keys, recursively) with the agent's own.
fn memory_config(gw: &Gateway, agent: &AgentConfig) -> Result<MemoryConfig, serde_json::Error> {
    let cfg = gw.cfg();
    let mut merged = cfg
        .parsed
        .pointer("/agents/defaults/memorySearch")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let own = cfg
        .parsed
        .pointer("/agents/list")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|a| a.get("id").and_then(Value::as_str) == Some(agent.id.as_str()))
        })
        .and_then(|a| a.get("memorySearch"));
    if let Some(own) = own {
        merge(&mut merged, own);
    }
    MemoryConfig::from_json(&merged)
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `agent`'s memory index, opened on first use (and synced once then); `None` when memory is disabled or cannot
/// open (logged).
pub async fn memory_index(gw: &Gateway, agent: &AgentConfig) -> Option<MemoryIndex> {
    if let Some(ix) = gw
        .features
        .memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&agent.id)
    {
        return Some(ix.clone());
    }
    let cfg = match memory_config(gw, agent) {
        Ok(c) if c.enabled => c,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(agent = %agent.id, error = %e, "memorySearch config does not parse; memory is off");
            return None;
        }
    };
    let index = match MemoryIndex::open(
        &gw.cfg().state_dir,
        agent.id.as_str(),
        &agent.workspace,
        cfg,
    ) {
        Ok(ix) => ix,
        Err(e) => {
            tracing::warn!(agent = %agent.id, error = %e, "opening the memory index failed; memory is off");
            return None;
        }
    };
    if let Err(e) = index.sync().await {
        tracing::warn!(agent = %agent.id, error = %e, "first memory sync failed");
    }
    let mut map = gw.features.memory.lock().unwrap_or_else(|p| p.into_inner());
    Some(map.entry(agent.id.clone()).or_insert(index).clone())
}

/// Whether memory tools are offered to `agent` (config says enabled and parses).
pub fn memory_enabled(gw: &Gateway, agent: &AgentConfig) -> bool {
    memory_config(gw, agent).is_ok_and(|c| c.enabled)
}

/// Skill directories for `agent`.
pub fn skill_dirs(gw: &Gateway, agent: &AgentConfig) -> SkillDirs {
    SkillDirs::new(
        &gw.cfg().state_dir,
        &agent.workspace,
        &gw.features.skills_cfg,
        gw.features.bundled_skills.clone(),
    )
}

/// Every loaded skill for `agent` (errors logged, none returned).
pub fn all_skills(gw: &Gateway, agent: &AgentConfig) -> Vec<Skill> {
    skills::load_skills(&skill_dirs(gw, agent)).unwrap_or_else(|e| {
        tracing::warn!(agent = %agent.id, error = %e, "loading skills failed");
        Vec::new()
    })
}

/// The skills `agent`'s runs may use.
pub fn eligible_skills(gw: &Gateway, agent: &AgentConfig) -> Vec<Skill> {
    let env = GateEnv::from_process(gw.cfg().parsed.clone());
    skills::eligible_skills(&all_skills(gw, agent), &gw.features.skills_cfg, &env)
}

/// The `skills.status` payload for `agent`.
pub fn skills_status(gw: &Gateway, agent: &AgentConfig) -> Value {
    let env = GateEnv::from_process(gw.cfg().parsed.clone());
    skills::skills_status(
        &skill_dirs(gw, agent),
        &all_skills(gw, agent),
        &gw.features.skills_cfg,
        &env,
    )
}

fn cron_disabled(gw: &Gateway) -> bool {
    gw.cfg()
        .parsed
        .pointer("/cron/enabled")
        .and_then(Value::as_bool)
        == Some(false)
        || std::env::var("CLAWDBOT_SKIP_CRON").is_ok_and(|v| v == "1")
}

/// Opens the cron store and starts the scheduler and its event forwarding on the gateway's tasks. Does nothing when
/// cron is disabled; a store that does not open is logged and cron stays off (the `cron.*` methods say so).
pub fn start(gw: &Arc<Gateway>) {
    if cron_disabled(gw) {
        tracing::info!("cron disabled");
        return;
    }
    let cfg = gw.cfg();
    let store = match cfg
        .parsed
        .pointer("/cron/store")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    {
        Some(path) => CronStore::open_at(std::path::Path::new(path)),
        None => CronStore::open(&cfg.state_dir),
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "opening the cron store failed; cron is off");
            return;
        }
    };
    let weak = Arc::downgrade(gw);
    let executor: cron::Executor = Arc::new(move |job: Job| {
        let weak = weak.clone();
        Box::pin(async move { execute_job(weak, job).await })
    });
    let svc = CronService::new(store, executor);
    if gw.features.cron.set(Arc::clone(&svc)).is_err() {
        return;
    }
    let mut events = svc.subscribe();
    let g = Arc::clone(gw);
    let stop = gw.shutdown.child_token();
    let stop2 = stop.clone();
    gw.tasks.spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop2.cancelled() => return,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(ev) => {
                    let audience = g
                        .features
                        .cron
                        .get()
                        .and_then(|c| c.store().get(&ev.job_id))
                        .and_then(|j| j.agent_id)
                        .and_then(|a| AgentId::parse(&a).ok())
                        .map_or(
                            Audience::Agent(g.cfg().default_agent.clone()),
                            Audience::Agent,
                        );
                    let payload = serde_json::to_value(&ev).unwrap_or(Value::Null);
                    g.hub.publish("cron", &payload, &audience, false);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cron events lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    gw.tasks.spawn(svc.run(stop));
}

/// The agent a job runs as: its `agentId` when configured, else the default agent. With an explicit
/// `agents.list` (a multi-agent shard) a job naming an agent that is not listed (a member removed by a reload) does
/// not run at all: falling back would run it as another member. A single implicit agent (a dedicated worker, whose
/// jobs name the member) takes every job.
fn job_agent(gw: &Gateway, job: &Job) -> Option<AgentConfig> {
    let cfg = gw.cfg();
    let named = job.agent_id.as_deref();
    if let Some(a) = named.and_then(|a| AgentId::parse(a).ok())
        && let Some(agent) = cfg.agent(&a)
    {
        return Some(agent.clone());
    }
    let explicit_list = cfg
        .parsed
        .pointer("/agents/list")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    if named.is_some() && explicit_list {
        return None;
    }
    cfg.agent(&cfg.default_agent).cloned()
}

async fn execute_job(weak: Weak<Gateway>, job: Job) -> cron::RunOutcome {
    let Some(gw) = weak.upgrade() else {
        return cron::RunOutcome::skipped("gateway stopping");
    };
    let Some(agent) = job_agent(&gw, &job) else {
        return cron::RunOutcome::error("the job's agent is not configured");
    };
    match (&job.session_target, &job.payload) {
        (SessionTarget::Main, Payload::SystemEvent { text }) => {
            let raw = format!("agent:{}:{}", agent.id, gw.cfg().session.main_key);
            let Ok((key, _)) = gw.resolve_key(&raw, Some(&agent.id)) else {
                return cron::RunOutcome::error(format!("bad main session key {raw}"));
            };
            gw.features.push_system_event(key.as_str(), text.clone());
            tracing::info!(job = %job.id, agent = %agent.id, "cron system event queued");
            if job.wake_mode == WakeMode::Now {
                turn(
                    &gw,
                    agent,
                    key,
                    HEARTBEAT_PROMPT.to_string(),
                    CRON_TURN_TIMEOUT,
                )
                .await
            } else {
                cron::RunOutcome::ok(Some(text.chars().take(SUMMARY_CHARS).collect()))
            }
        }
        (
            SessionTarget::Isolated,
            Payload::AgentTurn {
                message,
                timeout_seconds,
                ..
            },
        ) => {
            let raw = format!("cron:{}", job.id);
            let key = match gw.resolve_key(&raw, Some(&agent.id)) {
                Ok((k, _)) => k,
                Err(e) => return cron::RunOutcome::error(e.message),
            };
            let timeout = timeout_seconds
                .filter(|s| *s > 0)
                .map_or(CRON_TURN_TIMEOUT, Duration::from_secs);
            turn(&gw, agent, key, message.clone(), timeout).await
        }
        _ => cron::RunOutcome::error("payload does not match the session target"),
    }
}

/// Runs one agent turn and waits for it.
async fn turn(
    gw: &Arc<Gateway>,
    agent: AgentConfig,
    key: crate::session_key::SessionKey,
    message: String,
    timeout: Duration,
) -> cron::RunOutcome {
    let run_id = format!("cron-{}", uuid::Uuid::new_v4());
    let started = chat_run::start(
        gw,
        StartRun {
            run_id: run_id.clone(),
            agent,
            key,
            message,
            channel: "cron",
            extra_system: None,
            timeout,
            tap: None,
        },
    );
    match started {
        Err(e) => return cron::RunOutcome::error(e.message),
        Ok(Started::Existing(_)) => return cron::RunOutcome::error("run id collision"),
        Ok(Started::New { .. }) => {}
    }
    let Some((rx, _)) = gw.runs.watch(&run_id) else {
        return cron::RunOutcome::error("run vanished");
    };
    match runs::wait(rx, timeout + Duration::from_secs(5)).await {
        Some(o) if o.status == "ok" => {
            cron::RunOutcome::ok(Some(o.text.chars().take(SUMMARY_CHARS).collect()))
        }
        Some(o) => cron::RunOutcome::error(o.error.unwrap_or_else(|| format!("run {}", o.status))),
        None => cron::RunOutcome::error("run timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use tokio_util::sync::CancellationToken;

    fn gateway(v: Value) -> Arc<Gateway> {
        let cfg = Config::from_value(
            "/s/clawdbot.json".into(),
            std::path::Path::new("/s"),
            None,
            v,
            Env::default(),
        )
        .unwrap();
        Gateway::new(cfg, CancellationToken::new()).unwrap()
    }

    fn job(agent: Option<&str>) -> Job {
        let mut j = json!({"id": "j", "name": "j", "enabled": true, "createdAtMs": 0, "updatedAtMs": 0,
            "schedule": {"kind": "every", "everyMs": 60000}, "sessionTarget": "main", "wakeMode": "next-heartbeat",
            "payload": {"kind": "systemEvent", "text": "t"}});
        if let Some(a) = agent {
            j["agentId"] = json!(a);
        }
        serde_json::from_value(j).unwrap()
    }

    #[tokio::test]
    async fn a_job_of_a_removed_shard_member_runs_as_nobody() {
        let shard = gateway(json!({"agents": {"list": [{"id": "a"}, {"id": "c"}]}}));
        let id = |g: &Gateway, j: &Job| job_agent(g, j).map(|a| a.id.to_string());
        assert_eq!(id(&shard, &job(Some("c"))).as_deref(), Some("c"));
        assert_eq!(id(&shard, &job(Some("b"))), None);
        assert_eq!(id(&shard, &job(None)).as_deref(), Some("a"));
        // A dedicated worker (no agents.list) runs its member's jobs as `main`.
        let dedicated = gateway(json!({}));
        assert_eq!(id(&dedicated, &job(Some("alice"))).as_deref(), Some("main"));
    }
}
