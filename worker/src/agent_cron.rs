//! The gateway's cron services: one store for the whole gateway (`cron.store` a plain path, or `<state>/cron/jobs.json`),
//! or one store and runner per configured agent when `cron.store` contains `{agentId}` (a shard keeps each member's
//! jobs in the member's own dir). Owns starting them, adding and stopping per-agent ones when a reload changes the
//! agent list, forwarding `cron` events to the owning agent's connections, and the executor (system events in the
//! main session, isolated agent turns). The `cron.*` methods pick a service here (`methods.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agent_id::AgentId;
use crate::chat_run::{self, StartRun, Started};
use crate::config::{AgentConfig, Config};
use crate::cron::{self, CronService, CronStore, Job, Payload, SessionTarget, WakeMode};
use crate::hub::Audience;
use crate::runs;
use crate::state::Gateway;

/// The prompt of a turn a `wakeMode: now` system event starts (Clawdbot's heartbeat prompt, shortened).
pub const HEARTBEAT_PROMPT: &str = "A scheduled event arrived (see the System lines above). Act on it now; if nothing needs attention, reply HEARTBEAT_OK.";
/// Default time a cron agent turn may take.
const CRON_TURN_TIMEOUT: Duration = Duration::from_secs(600);
/// Run-log summaries keep this many characters of the reply.
const SUMMARY_CHARS: usize = 200;
/// The placeholder that makes `cron.store` per agent.
const AGENT_PLACEHOLDER: &str = "{agentId}";

/// The cron services of a gateway; set once at start (unset: cron is off).
#[derive(Debug, Default)]
pub struct AgentCron {
    mode: OnceLock<Mode>,
}

#[derive(Debug)]
enum Mode {
    /// One store for every agent (jobs name their agent with `agentId`).
    Single(Arc<CronService>),
    /// One store per agent at `template` with `{agentId}` replaced; its jobs run as that agent.
    PerAgent {
        template: String,
        services: Mutex<BTreeMap<AgentId, Running>>,
    },
}

/// A per-agent service and the token that stops its runner and event forwarding.
#[derive(Debug)]
struct Running {
    service: Arc<CronService>,
    stop: CancellationToken,
}

impl AgentCron {
    /// Whether cron runs in this gateway.
    pub fn enabled(&self) -> bool {
        self.mode.get().is_some()
    }

    /// `Some(template)` when each agent has its own store.
    pub fn per_agent_template(&self) -> Option<&str> {
        match self.mode.get()? {
            Mode::PerAgent { template, .. } => Some(template),
            Mode::Single(_) => None,
        }
    }

    /// The service `agent`'s jobs live in: the one store, or the agent's own (`None` when cron is off or the agent
    /// has no store, e.g. it is not configured or its store did not open).
    pub fn for_agent(&self, agent: &AgentId) -> Option<Arc<CronService>> {
        match self.mode.get()? {
            Mode::Single(svc) => Some(Arc::clone(svc)),
            Mode::PerAgent { services, .. } => {
                lock(services).get(agent).map(|r| Arc::clone(&r.service))
            }
        }
    }

    /// Every service with the agent it belongs to (`None`: the single store of all agents).
    pub fn all(&self) -> Vec<(Option<AgentId>, Arc<CronService>)> {
        match self.mode.get() {
            None => Vec::new(),
            Some(Mode::Single(svc)) => vec![(None, Arc::clone(svc))],
            Some(Mode::PerAgent { services, .. }) => lock(services)
                .iter()
                .map(|(id, r)| (Some(id.clone()), Arc::clone(&r.service)))
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cron_disabled(cfg: &Config) -> bool {
    cfg.parsed.pointer("/cron/enabled").and_then(Value::as_bool) == Some(false)
        || std::env::var("CLAWDBOT_SKIP_CRON").is_ok_and(|v| v == "1")
}

/// `cron.store` resolved like `session.store`: `~` is `HOME`, a relative path is taken from the state dir.
/// `None` when unset or blank.
fn store_setting(cfg: &Config) -> Option<String> {
    let raw = cfg
        .parsed
        .pointer("/cron/store")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    let home = cfg.env.get("HOME").map(|h| h.expose().to_string());
    let expanded = match (raw.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{home}{rest}")
        }
        _ => raw.to_string(),
    };
    Some(if Path::new(&expanded).is_absolute() {
        expanded
    } else {
        cfg.state_dir.join(expanded).display().to_string()
    })
}

/// The jobs file of `agent` under a per-agent template.
pub fn agent_store_path(template: &str, agent: &AgentId) -> PathBuf {
    PathBuf::from(template.replace(AGENT_PLACEHOLDER, agent.as_str()))
}

/// Opens the store(s) and starts the runner(s) and their event forwarding on the gateway's tasks. Does nothing when
/// cron is disabled; a store that does not open is logged and stays off (the whole service for a single store, that
/// agent's for a per-agent one).
pub fn start(gw: &Arc<Gateway>) {
    let cfg = gw.cfg();
    if cron_disabled(&cfg) {
        tracing::info!("cron disabled");
        return;
    }
    match store_setting(&cfg) {
        Some(template) if template.contains(AGENT_PLACEHOLDER) => {
            let mode = Mode::PerAgent {
                template,
                services: Mutex::new(BTreeMap::new()),
            };
            if gw.features.cron.mode.set(mode).is_err() {
                return;
            }
            sync_agents(gw);
        }
        setting => {
            let store = match setting {
                Some(path) => CronStore::open_at(Path::new(&path)),
                None => CronStore::open(&cfg.state_dir),
            };
            let store = match store {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "opening the cron store failed; cron is off");
                    return;
                }
            };
            let svc = CronService::new(store, executor(gw, None));
            if gw
                .features
                .cron
                .mode
                .set(Mode::Single(Arc::clone(&svc)))
                .is_err()
            {
                return;
            }
            spawn(gw, &svc, None, gw.shutdown.child_token());
        }
    }
}

/// After a reload: with per-agent stores, opens and starts the store of each agent that has none and stops those of
/// agents no longer configured (their files stay). Then every store adopts its file if someone rewrote it (the
/// supervisor writes a member's default jobs and then signals a reload). Connections are not touched.
pub fn sync_agents(gw: &Arc<Gateway>) {
    let Some(mode) = gw.features.cron.mode.get() else {
        return;
    };
    if let Mode::PerAgent { template, services } = mode {
        let cfg = gw.cfg();
        let mut services = lock(services);
        let stale: Vec<AgentId> = services
            .keys()
            .filter(|id| cfg.agent(id).is_none())
            .cloned()
            .collect();
        for id in stale {
            if let Some(r) = services.remove(&id) {
                r.stop.cancel();
                tracing::info!(agent = %id, "cron store of a removed agent stopped");
            }
        }
        for agent in &cfg.agents {
            if services.contains_key(&agent.id) {
                continue;
            }
            let path = agent_store_path(template, &agent.id);
            let store = match CronStore::open_at(&path) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(agent = %agent.id, error = %e, "opening the agent's cron store failed; its cron is off");
                    continue;
                }
            };
            let service = CronService::new(store, executor(gw, Some(agent.id.clone())));
            let stop = gw.shutdown.child_token();
            spawn(gw, &service, Some(agent.id.clone()), stop.clone());
            services.insert(agent.id.clone(), Running { service, stop });
        }
    }
    for (agent, svc) in gw.features.cron.all() {
        if let Err(e) = svc.refresh() {
            tracing::warn!(agent = ?agent.map(|a| a.to_string()), error = %e, "re-reading a cron store failed; its jobs in memory stay");
        }
    }
}

fn executor(gw: &Arc<Gateway>, owner: Option<AgentId>) -> cron::Executor {
    let weak = Arc::downgrade(gw);
    Arc::new(move |job: Job| {
        let weak = weak.clone();
        let owner = owner.clone();
        Box::pin(async move { execute_job(weak, job, owner).await })
    })
}

/// The runner and the event forwarding of `svc` until `stop` (or the gateway's shutdown, its parent).
fn spawn(
    gw: &Arc<Gateway>,
    svc: &Arc<CronService>,
    owner: Option<AgentId>,
    stop: CancellationToken,
) {
    let mut events = svc.subscribe();
    let g = Arc::clone(gw);
    let stop2 = stop.clone();
    gw.tasks.spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop2.cancelled() => return,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(ev) => {
                    let audience = match &owner {
                        Some(agent) => Audience::Agent(agent.clone()),
                        None => g
                            .features
                            .cron
                            .for_agent(&g.cfg().default_agent)
                            .and_then(|c| c.store().get(&ev.job_id))
                            .and_then(|j| j.agent_id)
                            .and_then(|a| AgentId::parse(&a).ok())
                            .map_or(
                                Audience::Agent(g.cfg().default_agent.clone()),
                                Audience::Agent,
                            ),
                    };
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
    gw.tasks.spawn(Arc::clone(svc).run(stop));
}

/// The agent a job runs as. A per-agent store's jobs run as its agent, whatever `agentId` they carry (a member's
/// jobs written on a dedicated worker name `main`), and not at all once it is no longer configured. In a single
/// store: its `agentId` when configured, else the default agent; with an explicit `agents.list` (a multi-agent
/// shard) a job naming an agent that is not listed does not run at all: falling back would run it as another
/// member. A single implicit agent (a dedicated worker, whose jobs name the member) takes every job.
fn job_agent(gw: &Gateway, job: &Job, owner: Option<&AgentId>) -> Option<AgentConfig> {
    let cfg = gw.cfg();
    if let Some(owner) = owner {
        return cfg.agent(owner).cloned();
    }
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

async fn execute_job(weak: Weak<Gateway>, job: Job, owner: Option<AgentId>) -> cron::RunOutcome {
    let Some(gw) = weak.upgrade() else {
        return cron::RunOutcome::skipped("gateway stopping");
    };
    let Some(agent) = job_agent(&gw, &job, owner.as_ref()) else {
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
    use crate::config::Env;
    use serde_json::json;

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
        let id = |g: &Gateway, j: &Job, o: Option<&str>| {
            let o = o.map(|o| AgentId::parse(o).unwrap());
            job_agent(g, j, o.as_ref()).map(|a| a.id.to_string())
        };
        assert_eq!(id(&shard, &job(Some("c")), None).as_deref(), Some("c"));
        assert_eq!(id(&shard, &job(Some("b")), None), None);
        assert_eq!(id(&shard, &job(None), None).as_deref(), Some("a"));
        // A per-agent store's jobs run as its agent, whatever they name; a removed agent's not at all.
        assert_eq!(
            id(&shard, &job(Some("main")), Some("c")).as_deref(),
            Some("c")
        );
        assert_eq!(id(&shard, &job(Some("c")), Some("b")), None);
        // A dedicated worker (no agents.list) runs its member's jobs as `main`.
        let dedicated = gateway(json!({}));
        assert_eq!(
            id(&dedicated, &job(Some("alice")), None).as_deref(),
            Some("main")
        );
    }

    #[test]
    fn the_store_setting_resolves_like_session_store() {
        let g = gateway(json!({"cron": {"store": "crons/{agentId}/jobs.json"}}));
        let t = store_setting(&g.cfg()).unwrap();
        assert_eq!(t, "/s/crons/{agentId}/jobs.json");
        assert_eq!(
            agent_store_path(&t, &AgentId::parse("bob").unwrap()),
            Path::new("/s/crons/bob/jobs.json")
        );
        assert_eq!(
            store_setting(&gateway(json!({"cron": {"store": " "}})).cfg()),
            None
        );
    }

    fn shard_cfg(dir: &Path, ids: &[&str]) -> Config {
        let v = json!({
            "cron": {"store": format!("{}/users/{{agentId}}/cron/jobs.json", dir.display())},
            "agents": {"list": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()},
        });
        Config::from_value(dir.join("clawdbot.json"), dir, None, v, Env::default()).unwrap()
    }

    fn every_second(name: &str) -> cron::NewJob {
        serde_json::from_value(json!({"name": name, "schedule": {"kind": "every", "everyMs": 1000},
            "sessionTarget": "main", "wakeMode": "next-heartbeat", "payload": {"kind": "systemEvent", "text": name}}))
        .unwrap()
    }

    async fn finished(
        rx: &mut tokio::sync::broadcast::Receiver<cron::CronEvent>,
    ) -> cron::CronEvent {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = rx.recv().await.unwrap();
                if e.action == cron::CronAction::Finished {
                    return e;
                }
            }
        })
        .await
        .expect("no run finished within 10 s")
    }

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn per_agent_stores_fire_independently_and_follow_the_agent_list() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let gw = Gateway::new(shard_cfg(d, &["a", "b"]), CancellationToken::new()).unwrap();
        start(&gw);
        let cron = &gw.features.cron;
        let (a, b) = (
            cron.for_agent(&id("a")).unwrap(),
            cron.for_agent(&id("b")).unwrap(),
        );
        assert_eq!(a.store().path(), d.join("users/a/cron/jobs.json"));
        assert_eq!(b.store().path(), d.join("users/b/cron/jobs.json"));
        assert!(cron.for_agent(&id("zed")).is_none());

        let (mut ra, mut rb) = (a.subscribe(), b.subscribe());
        let ja = a.add(every_second("tick-a")).unwrap();
        let jb = b.add(every_second("tick-b")).unwrap();
        let (ea, eb) = (finished(&mut ra).await, finished(&mut rb).await);
        assert_eq!(
            (ea.job_id.as_str(), eb.job_id.as_str()),
            (ja.id.as_str(), jb.id.as_str())
        );
        // Each run went to its own agent's main session and its own run log; neither store holds the other's job.
        let queued_a = gw.features.take_system_events("agent:a:main");
        assert!(
            queued_a.iter().all(|t| t == "tick-a") && !queued_a.is_empty(),
            "{queued_a:?}"
        );
        assert!(
            d.join(format!("users/a/cron/runs/{}.jsonl", ja.id))
                .exists()
        );
        assert!(
            d.join(format!("users/b/cron/runs/{}.jsonl", jb.id))
                .exists()
        );
        assert!(
            !d.join(format!("users/a/cron/runs/{}.jsonl", jb.id))
                .exists()
        );
        assert_eq!(a.store().jobs().len(), 1);
        assert_eq!(b.store().jobs().len(), 1);

        // A reload removes b (its runner stops, its file stays) and adds c.
        crate::reload::apply(&gw, shard_cfg(d, &["a", "c"]));
        assert!(cron.for_agent(&id("b")).is_none());
        let c = cron.for_agent(&id("c")).unwrap();
        assert!(Arc::ptr_eq(&cron.for_agent(&id("a")).unwrap(), &a));
        assert!(d.join("users/b/cron/jobs.json").exists());
        let runs_b = b.store().runs(&jb.id, 100).unwrap().len();
        finished(&mut ra).await;
        finished(&mut ra).await;
        assert_eq!(
            b.store().runs(&jb.id, 100).unwrap().len(),
            runs_b,
            "b's runner still runs"
        );

        // c's file written from outside (the supervisor's default jobs) is adopted on the next reload and fires.
        let file = json!({"version": 1, "jobs": [{"id": "wirebot-daily-standup-c", "agentId": "main", "name": "standup",
            "enabled": true, "createdAtMs": 0, "updatedAtMs": 0, "schedule": {"kind": "every", "everyMs": 1000},
            "sessionTarget": "main", "wakeMode": "next-heartbeat", "payload": {"kind": "systemEvent", "text": "standup"},
            "state": {}}]});
        crate::atomic::write_json(&d.join("users/c/cron/jobs.json"), &file).unwrap();
        let mut rc = c.subscribe();
        crate::reload::apply(&gw, shard_cfg(d, &["a", "c"]));
        assert_eq!(finished(&mut rc).await.job_id, "wirebot-daily-standup-c");
        assert!(
            gw.features
                .take_system_events("agent:c:main")
                .contains(&"standup".to_string())
        );
        gw.shutdown.cancel();
    }
}
