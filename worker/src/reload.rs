//! Hot reload (SIGHUP): re-reads `clawdbot.json` and the env file, and applies a valid config live: the agent
//! list (added, removed, changed), bindings, per-agent stores (sessions, memory, cron: a `{agentId}` cron store is
//! opened for an added agent and stopped for a removed one; every cron store re-reads its file if it was rewritten),
//! providers, hooks and session settings. A removed agent's scoped connections are closed (1008, "agent removed")
//! and its runs aborted; other connections are not touched. An invalid file changes nothing: the old config stays
//! applied and the error is exposed (`/healthz` `reloadError`, operators' `health`). Keys that cannot change in a
//! running process are listed as needing a restart.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::Error;
use crate::agent_id::AgentId;
use crate::config::{AgentConfig, Config, Env};
use crate::protocol::close;
use crate::state::Gateway;

/// Close reason sent to a removed agent's connections (with code 1008, as for an unknown agent at connect).
pub const AGENT_REMOVED_REASON: &str = "agent removed from this gateway";

/// Top-level JSON pointers whose changes take effect only after a restart (read once at start).
const RESTART_ONLY: &[&str] = &[
    "/gateway/port",
    "/gateway/bind",
    "/gateway/mode",
    "/gateway/auth",
    "/gateway/tls",
    "/cron",
    "/skills",
    "/agents/defaults/userTimezone",
];

/// What a successful reload changed.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub added: Vec<AgentId>,
    pub removed: Vec<AgentId>,
    pub changed: Vec<AgentId>,
    pub needs_restart: Vec<String>,
}

/// Reads the config again (the process environment overlaid by `env_file`) and applies it, or records why not.
/// Never fails the process: the outcome is logged and kept in [`Gateway::reload_status`].
pub fn reload_from_disk(gw: &Arc<Gateway>, env_file: Option<&Path>) -> Result<Applied, Error> {
    let state_dir = gw.cfg().state_dir.clone();
    let loaded = (|| {
        let mut env = Env::from_process();
        if let Some(f) = env_file {
            env.overlay_file(f)?;
        }
        Config::load(&state_dir, env)
    })();
    match loaded {
        Ok(cfg) => Ok(apply(gw, cfg)),
        Err(e) => {
            // Error messages name the file, key and position, never a value from the file or the env.
            tracing::error!(error = %e, "config reload refused; the previous config stays applied");
            let mut st = gw.reload_status.lock().unwrap_or_else(|p| p.into_inner());
            st.error = Some(e.to_string());
            Err(e)
        }
    }
}

/// Applies a valid config: swaps it in, then closes what belonged to removed agents and drops caches of changed ones.
pub fn apply(gw: &Arc<Gateway>, mut new: Config) -> Applied {
    let old = gw.cfg();
    let needs_restart: Vec<String> = RESTART_ONLY
        .iter()
        .filter(|p| old.parsed.pointer(p) != new.parsed.pointer(p))
        .map(|p| p.trim_start_matches('/').replace('/', "."))
        .collect();
    // What cannot change live keeps its running value.
    new.port = old.port;
    new.auth = old.auth.clone();

    let mut out = Applied {
        needs_restart,
        ..Applied::default()
    };
    for a in &new.agents {
        match old.agent(&a.id) {
            None => out.added.push(a.id.clone()),
            Some(o) if !same_agent(o, a) || agent_json(&old, &a.id) != agent_json(&new, &a.id) => {
                out.changed.push(a.id.clone())
            }
            Some(_) => {}
        }
    }
    out.removed = old
        .agents
        .iter()
        .filter(|a| new.agent(&a.id).is_none())
        .map(|a| a.id.clone())
        .collect();

    let hash = new.hash.clone();
    let agents = new.agents.len();
    let new = Arc::new(new);
    // Swap first: a scoped connect that races with this either sees the new list or is closed below.
    gw.swap_cfg(Arc::clone(&new));
    for id in &out.removed {
        let closed = gw.hub.close_agent(id, close::POLICY, AGENT_REMOVED_REASON);
        let aborted = gw.runs.abort_agent(id);
        tracing::info!(agent = %id, connections_closed = closed, runs_aborted = aborted, "agent removed");
    }
    for id in out.removed.iter().chain(&out.changed) {
        if let Some(o) = old.agent(id) {
            gw.sessions.forget(&o.store_path);
        }
        gw.features.forget_memory(id);
    }
    // Per-agent cron stores follow the agent list; every store re-reads a jobs file rewritten from outside.
    crate::agent_cron::sync_agents(gw);
    {
        let mut st = gw.reload_status.lock().unwrap_or_else(|p| p.into_inner());
        st.error = None;
        st.needs_restart = out.needs_restart.clone();
        st.applied += 1;
    }
    for key in &out.needs_restart {
        tracing::warn!(key = %key, "config key changed: needs restart (the running value is kept)");
    }
    tracing::info!(config_hash = %hash, agents, added = ?out.added, removed = ?out.removed,
        changed = ?out.changed, "config reloaded");
    out
}

fn same_agent(a: &AgentConfig, b: &AgentConfig) -> bool {
    a.name == b.name
        && a.identity == b.identity
        && a.workspace == b.workspace
        && a.agent_dir == b.agent_dir
        && a.store_path == b.store_path
        && a.model == b.model
}

/// The agent's own entry in `agents.list` (memorySearch, tools, … that the typed view does not hold).
fn agent_json<'a>(cfg: &'a Config, id: &AgentId) -> Option<&'a Value> {
    cfg.parsed
        .pointer("/agents/list")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|a| a.get("id").and_then(Value::as_str) == Some(id.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    fn cfg(dir: &Path, v: Value) -> Config {
        let raw = v.to_string();
        Config::from_value(dir.join("clawdbot.json"), dir, Some(raw), v, Env::default()).unwrap()
    }

    fn ids(v: &[AgentId]) -> Vec<&str> {
        v.iter().map(AgentId::as_str).collect()
    }

    #[tokio::test]
    async fn agents_added_removed_changed_and_restart_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let gw = Gateway::new(
            cfg(
                d,
                json!({"gateway": {"port": 1, "auth": {"token": "t1"}},
                "agents": {"list": [{"id": "a"}, {"id": "b"}, {"id": "c", "model": "x/y"}]}}),
            ),
            CancellationToken::new(),
        )
        .unwrap();
        let out = apply(
            &gw,
            cfg(
                d,
                json!({"gateway": {"port": 2, "auth": {"token": "t2"}},
                "agents": {"list": [{"id": "a"}, {"id": "c", "model": "x/z"}, {"id": "d"}]}}),
            ),
        );
        assert_eq!(ids(&out.added), ["d"]);
        assert_eq!(ids(&out.removed), ["b"]);
        assert_eq!(ids(&out.changed), ["c"]);
        assert_eq!(out.needs_restart, ["gateway.port", "gateway.auth"]);
        // The running token is kept until a restart; the agent list is live.
        assert!(gw.token_ok(Some("t1"), None));
        assert!(!gw.token_ok(Some("t2"), None));
        assert!(gw.agent(&AgentId::parse("d").unwrap()).is_some());
        assert!(gw.agent(&AgentId::parse("b").unwrap()).is_none());
        assert_eq!(gw.reload_status().applied, 1);
    }

    #[tokio::test]
    async fn an_invalid_file_keeps_the_old_config_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        crate::atomic::write_file(
            &d.join("clawdbot.json"),
            b"{agents: {list: [{id: \"a\"}]}}",
            0o600,
        )
        .unwrap();
        let gw = Gateway::new(
            Config::load(d, Env::default()).unwrap(),
            CancellationToken::new(),
        )
        .unwrap();
        let hash = gw.cfg().hash.clone();
        crate::atomic::write_file(&d.join("clawdbot.json"), b"{agents: [", 0o600).unwrap();
        assert!(reload_from_disk(&gw, None).is_err());
        assert_eq!(gw.cfg().hash, hash);
        assert!(
            gw.reload_status()
                .error
                .is_some_and(|e| e.contains("syntax error"))
        );
        crate::atomic::write_file(
            &d.join("clawdbot.json"),
            b"{agents: {list: [{id: \"b\"}]}}",
            0o600,
        )
        .unwrap();
        let out = reload_from_disk(&gw, None).unwrap();
        assert_eq!(ids(&out.removed), ["a"]);
        assert_ne!(gw.cfg().hash, hash);
        assert_eq!(gw.reload_status().error, None);
    }
}
