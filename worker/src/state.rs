//! `Gateway`: the shared runtime state of one worker (config, sessions, router, clients, runs) and the
//! cancellation/tracking handles every task hangs off. The applied config is a snapshot replaced whole on reload
//! (`reload.rs`); readers take it once per request with [`Gateway::cfg`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::agent_id::AgentId;
use crate::config::{AgentConfig, Config, GatewayAuth};
use crate::hub::Hub;
use crate::model_router::ModelRouter;
use crate::protocol::ErrorShape;
use crate::runs::Runs;
use crate::session_key::SessionKey;
use crate::sessions::SessionStore;

/// The outcome of the last reload, for `/healthz` and operators' `health`.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// Why the last reload was refused (the old config stays applied); `None` after a successful one.
    pub error: Option<String>,
    /// Dotted keys changed in the file that only take effect after a restart.
    pub needs_restart: Vec<String>,
    /// Reloads applied since start.
    pub applied: u64,
}

/// Everything a connection, an HTTP handler or a run needs; shared as `Arc<Gateway>`.
#[derive(Debug)]
pub struct Gateway {
    /// The applied config. Written only by a reload; see [`Gateway::cfg`].
    cfg: arc_swap::ArcSwap<Config>,
    /// What the last reload said (error, keys that need a restart).
    pub reload_status: Mutex<ReloadStatus>,
    pub sessions: SessionStore,
    pub router: ModelRouter,
    pub hub: Hub,
    pub runs: Runs,
    pub started: Instant,
    /// Cancelled when the process is asked to stop.
    pub shutdown: CancellationToken,
    /// Every spawned task (connections, runs, timers) is tracked here so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub host: String,
    /// Cron, skills and memory wiring.
    pub features: crate::features::Features,
}

impl Gateway {
    pub fn new(cfg: Config, shutdown: CancellationToken) -> Result<Arc<Self>, Error> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let features = crate::features::Features::new(&cfg.parsed);
        Ok(Arc::new(Gateway {
            features,
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            reload_status: Mutex::new(ReloadStatus::default()),
            sessions: SessionStore::default(),
            router: ModelRouter::new()?,
            hub: Hub::default(),
            runs: Runs::default(),
            started: Instant::now(),
            shutdown,
            tasks: TaskTracker::new(),
            host,
        }))
    }

    /// The config currently applied. A reload replaces the snapshot whole, so one request sees one consistent
    /// config: take it once and borrow from it. Lock-free (an `ArcSwap` load).
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    /// Replaces the applied config (reload only).
    pub(crate) fn swap_cfg(&self, new: Arc<Config>) -> Arc<Config> {
        self.cfg.swap(new)
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks a bearer/connect token (or password) against `gateway.auth`.
    pub fn token_ok(&self, token: Option<&str>, password: Option<&str>) -> bool {
        match &self.cfg().auth {
            GatewayAuth::Token(t) => token.is_some_and(|x| t.matches(x)),
            GatewayAuth::Password(p) => password.or(token).is_some_and(|x| p.matches(x)),
            GatewayAuth::None => token.or(password).is_some_and(|x| !x.is_empty()),
        }
    }

    /// The secret device tokens are derived from.
    pub fn device_secret(&self) -> String {
        let cfg = self.cfg();
        match &cfg.auth {
            GatewayAuth::Token(t) | GatewayAuth::Password(t) => t.expose().to_string(),
            GatewayAuth::None => cfg.state_dir.display().to_string(),
        }
    }

    /// The agent's current config (a copy: it stays valid across a reload).
    pub fn agent(&self, id: &AgentId) -> Option<AgentConfig> {
        self.cfg().agent(id).cloned()
    }

    /// Resolves a client-supplied session key for a connection with `scope`, refusing other agents' sessions
    /// and unknown agents.
    pub fn resolve_key(
        &self,
        raw: &str,
        scope: Option<&AgentId>,
    ) -> Result<(SessionKey, AgentConfig), ErrorShape> {
        let cfg = self.cfg();
        let default = scope.unwrap_or(&cfg.default_agent);
        let key = SessionKey::resolve(raw, default, &cfg.session.main_key)
            .map_err(|e| ErrorShape::invalid(e.to_string()))?;
        let agent_id = key.agent_id();
        if let Some(s) = scope
            && *s != agent_id
        {
            return Err(ErrorShape::invalid(format!(
                "session {key} belongs to another agent"
            )));
        }
        let agent = self
            .agent(&agent_id)
            .ok_or_else(|| ErrorShape::invalid(format!("unknown agent {agent_id:?}")))?;
        Ok((key, agent))
    }

    /// The agentDirs credentials come from: the agent's own, then the default agent's (inherited profiles).
    pub fn credential_dirs(&self, agent: &AgentConfig) -> Vec<std::path::PathBuf> {
        let cfg = self.cfg();
        let mut dirs = vec![agent.agent_dir.clone()];
        if let Some(d) = cfg.agent(&cfg.default_agent)
            && d.id != agent.id
        {
            dirs.push(d.agent_dir.clone());
        }
        dirs
    }

    pub fn now_ms() -> i64 {
        crate::transcript::now_ms()
    }

    /// The `health` payload; `scope` limits it to one agent.
    pub fn health(&self, scope: Option<&AgentId>) -> Value {
        let t0 = Instant::now();
        let cfg = self.cfg();
        let mut agents = Vec::new();
        let mut total = 0usize;
        let mut recent_all = Vec::new();
        for a in cfg
            .agents
            .iter()
            .filter(|a| scope.is_none_or(|s| *s == a.id))
        {
            let list = self.sessions.list(a).unwrap_or_default();
            total += list.len();
            let now = Self::now_ms();
            let recent: Vec<Value> = list
                .iter()
                .take(5)
                .map(|(k, e)| {
                    let u = e.get("updatedAt").and_then(Value::as_i64).unwrap_or(0);
                    json!({"key": k, "updatedAt": u, "age": now - u})
                })
                .collect();
            recent_all.extend(recent.iter().cloned());
            let path = &a.store_path;
            agents.push(json!({"agentId": a.id, "isDefault": a.id == cfg.default_agent,
                "heartbeat": {"enabled": false, "every": "0", "everyMs": 0, "prompt": "", "target": "none", "ackMaxChars": 0},
                "sessions": {"path": path, "count": list.len(), "recent": recent}}));
        }
        let default = scope.unwrap_or(&cfg.default_agent);
        let default_path = cfg.agent(default).map(|a| a.store_path.clone());
        recent_all.truncate(10);
        let mut out = json!({"ok": true, "ts": Self::now_ms(), "durationMs": u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "channels": {}, "channelOrder": [], "channelLabels": {}, "heartbeatSeconds": 0,
            "defaultAgentId": default, "agents": agents,
            "sessions": {"path": default_path, "count": total, "recent": recent_all}});
        // Operators also see which config is applied (the supervisor waits for its hash after a reload).
        if scope.is_none() {
            let st = self.reload_status();
            out["configHash"] = json!(cfg.hash);
            out["agentCount"] = json!(cfg.agents.len());
            out["reloadError"] = json!(st.error);
            out["needsRestart"] = json!(st.needs_restart);
        }
        out
    }
}
