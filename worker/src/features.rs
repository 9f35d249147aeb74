//! The gateway's wiring of skills and memory, and the handle of its cron services (`agent_cron.rs` starts them):
//! per-agent lazily opened memory indexes, the skills snapshot for a run, and the queued system events a main
//! session's next turn picks up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::agent_cron::AgentCron;
use crate::agent_id::AgentId;
use crate::config::AgentConfig;
use crate::memory::{MemoryConfig, MemoryIndex};
use crate::skills::{self, GateEnv, Skill, SkillDirs, SkillsConfig};
use crate::state::Gateway;

/// Feature state hung off the [`Gateway`].
#[derive(Debug)]
pub struct Features {
    /// The cron services (one store, or one per agent); set once at start unless cron is disabled.
    pub cron: AgentCron,
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
            cron: AgentCron::default(),
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
