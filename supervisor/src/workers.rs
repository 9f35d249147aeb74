//! The daemon's side of the worker lifecycle: builds a [`WorkerSpec`] from a registry row and the tier config,
//! converts lifecycle records to and from `workers` rows, re-adopts or starts workers at daemon start, records every
//! [`LifecycleEvent`] (registry `workers` row, `events` audit log, proxy upstream), and answers the proxy's wake and
//! idle-stop requests. Owns no process itself: [`crate::lifecycle::Manager`] does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use provisioning::{Tier, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Runtime as ConfigRuntime};
use crate::daemon::App;
use crate::error::Error;
use crate::lifecycle::{
    self, Adoption, LifecycleEvent, Manager, ManagerConfig, Policy, Runtime, WorkerSpec,
    WorkerState,
};
use crate::proxy::{StopRequest, UpstreamState, WakeError, WakeRequest};
use crate::registry::{self, Outcome, UserRow, UserStatus};
use crate::sandbox::{Identity, PortRange, ResourceLimits, Rlimits};

/// Size of each worker's private `/tmp` (a tmpfs in its own mount namespace).
const PRIVATE_TMP_BYTES: u64 = 64 << 20;

/// The `wirebot-worker` executable: from config, else the sibling of the running `wirebot` binary.
pub fn worker_program(config: &Config) -> Result<PathBuf, Error> {
    if let Some(program) = &config.lifecycle.worker_program {
        return Ok(program.clone());
    }
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        op: "find the running executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    Ok(exe.with_file_name("wirebot-worker"))
}

/// A cgroup group name that is stable for one data dir (a restarted daemon finds its workers) and distinct between
/// daemons on one host: `wb-<first 12 hex digits of sha256(data_dir)>`.
pub fn cgroup_group(data_dir: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    format!("wb-{}", &hex::encode(digest)[..12])
}

/// The lifecycle manager's settings from the daemon config.
pub fn manager_config(config: &Config, stop_all_on_exit: bool) -> ManagerConfig {
    let defaults = Policy::default();
    // A private /tmp hides the real one: state under /tmp would vanish for the worker, so only then go without.
    let under_tmp = config.data_dir.starts_with("/tmp") || config.runtime_dir.starts_with("/tmp");
    if under_tmp {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "state is under /tmp: workers run without a private /tmp"
        );
    }
    ManagerConfig {
        logs_dir: config.data_dir.join("logs"),
        worker_ports: PortRange {
            first: config.ports.first,
            last: config.ports.last,
        },
        // An explicit allow-list: a few Landlock rules instead of one per port outside the worker range.
        egress_ports: Some(config.lifecycle.egress_ports.clone()),
        policy: Policy {
            start_timeout: config.lifecycle.start_timeout,
            stop_grace: config.lifecycle.stop_grace,
            health_interval: config.lifecycle.health_interval,
            ..defaults
        },
        private_tmp_bytes: (!under_tmp).then_some(PRIVATE_TMP_BYTES),
        cgroup_group: cgroup_group(&config.data_dir),
        stop_all_on_exit,
    }
}

fn unavailable(user: &UserId, reason: impl Into<String>) -> Error {
    Error::WorkerUnavailable {
        user: user.clone(),
        reason: reason.into(),
    }
}

/// The runtime a member's worker runs: the member's own choice, else its tier's.
pub fn runtime_of(app: &App, row: &UserRow) -> ConfigRuntime {
    row.runtime
        .unwrap_or(app.config.tiers.get(row.tier).runtime)
}

/// The worker spec of a dedicated member (`None` for shared members, who have no worker of their own).
pub fn spec_for(app: &App, row: &UserRow) -> Result<Option<WorkerSpec>, Error> {
    if row.tier != Tier::Dedicated {
        return Ok(None);
    }
    let (Some(uid), Some(gid), Some(port)) = (row.uid, row.gid, row.port) else {
        return Err(unavailable(
            &row.id,
            "the member has no tenant uid or port (the daemon is not running as root)",
        ));
    };
    let tier = app.config.tiers.get(row.tier);
    let (runtime, start_timeout) = match runtime_of(app, row) {
        ConfigRuntime::Wirebot => (
            Runtime::Wirebot {
                program: app.worker_program.clone(),
                extra_args: Vec::new(),
            },
            None,
        ),
        ConfigRuntime::Clawdbot => {
            let claw = &app.config.clawdbot;
            // Config validation guarantees both for a tier running Clawdbot.
            let (Some(install_dir), Some(node), Some(entry)) =
                (&claw.install_dir, &claw.node, claw.entry())
            else {
                return Err(unavailable(
                    &row.id,
                    "runtime \"clawdbot\" needs [clawdbot] install_dir and node",
                ));
            };
            (
                Runtime::Clawdbot {
                    node: node.clone(),
                    entry,
                    install_dirs: vec![install_dir.clone()],
                },
                Some(claw.start_timeout),
            )
        }
    };
    Ok(Some(WorkerSpec {
        user_id: row.id.clone(),
        runtime,
        identity: Identity { uid, gid },
        user_dir: app.layout.user_dir(&row.id),
        runtime_dir: app.layout.runtime_user_dir(&row.id),
        env_file: app.layout.gateway_env(&row.id),
        port,
        limits: ResourceLimits {
            memory_bytes: Some(tier.memory_max.0),
            pids: Some(u64::from(tier.pids_max)),
            cpu_percent: Some(tier.cpu_quota_percent),
        },
        rlimits: Rlimits {
            nofile: 4096,
            nproc: 4096,
        },
        extra_rw_paths: Vec::new(),
        start_timeout,
    }))
}

/// The `workers` row of a lifecycle record.
pub fn to_row(record: &lifecycle::WorkerRecord) -> registry::WorkerRecord {
    registry::WorkerRecord {
        user_id: record.user_id.clone(),
        pid: record.pid,
        pid_start_time: record.pid_start_time,
        cgroup: record
            .cgroup
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok()),
        state: record.state.as_str().to_owned(),
        restarts: record.restarts,
        diagnosis_json: record
            .diagnosis
            .as_ref()
            .and_then(|d| serde_json::to_string(d).ok()),
        updated_at: String::new(),
    }
}

/// The lifecycle record of a `workers` row (what [`Manager::adopt`] verifies).
fn from_row(row: &registry::WorkerRecord, port: u16) -> lifecycle::WorkerRecord {
    lifecycle::WorkerRecord {
        user_id: row.user_id.clone(),
        pid: row.pid,
        pid_start_time: row.pid_start_time,
        cgroup: row
            .cgroup
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok()),
        port,
        state: parse_state(&row.state).unwrap_or(WorkerState::Stopped),
        restarts: row.restarts,
        diagnosis: row
            .diagnosis_json
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok()),
    }
}

fn parse_state(s: &str) -> Option<WorkerState> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

fn upstream_of(state: WorkerState, port: u16) -> UpstreamState {
    match state {
        WorkerState::Ready | WorkerState::Running => {
            UpstreamState::Running(SocketAddr::from(([127, 0, 0, 1], port)))
        }
        WorkerState::Starting | WorkerState::Backoff => UpstreamState::Starting,
        WorkerState::Stopping | WorkerState::Stopped => UpstreamState::Stopped,
        // Member-safe: the diagnosis stays for the operator (`wirebot user show`).
        WorkerState::Quarantined => UpstreamState::Quarantined {
            reason: "the worker is quarantined after repeated crashes".to_owned(),
        },
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)?
}

/// At daemon start, before the ready line: re-adopts every recorded worker of an active dedicated member (pid +
/// start time + cgroup), registers the rest, sweeps worker cgroups nobody owns, and then starts (in the background)
/// every dedicated worker that was not adopted and was not deliberately stopped.
pub async fn start_all(app: &Arc<App>) -> Result<(), Error> {
    let Some(manager) = app.workers.clone() else {
        return Ok(());
    };
    let (users, recorded) = blocking({
        let app = app.clone();
        move || Ok((app.registry.users()?, app.registry.workers()?))
    })
    .await?;
    let mut to_start = Vec::new();
    for row in users.iter().filter(|u| u.status == UserStatus::Active) {
        let spec = match spec_for(app, row) {
            Ok(Some(spec)) => spec,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(user_id = %row.id, error = %e.chain(), "cannot supervise this member's worker");
                continue;
            }
        };
        let port = spec.port;
        let record = recorded.iter().find(|w| w.user_id == row.id);
        let deliberately_stopped = record.is_some_and(|r| r.state == "stopped");
        let adopted = match record.filter(|r| r.pid.is_some()) {
            Some(r) => match manager.adopt(spec.clone(), &from_row(r, port)).await {
                Ok(Adoption::Adopted { pid }) => {
                    tracing::info!(user_id = %row.id, pid, "re-adopted worker");
                    audit(
                        app,
                        "worker.adopt",
                        &row.id,
                        Outcome::Ok,
                        format!("pid {pid}"),
                    )
                    .await;
                    crate::routes::set_upstream(
                        app,
                        &row.id,
                        UpstreamState::Running(SocketAddr::from(([127, 0, 0, 1], port))),
                    );
                    true
                }
                Ok(Adoption::Gone { reason }) => {
                    tracing::info!(user_id = %row.id, %reason, "recorded worker is gone; starting a new one");
                    false
                }
                Err(e) => {
                    tracing::error!(user_id = %row.id, error = %e, "adoption failed");
                    continue;
                }
            },
            None => false,
        };
        if !adopted {
            manager.register(spec).await;
            if !deliberately_stopped {
                to_start.push(row.id.clone());
            }
        }
    }
    // Shards are registered before the sweep, which kills every worker cgroup nobody registered.
    crate::shared::start_all(app).await?;
    let swept = manager.sweep_unknown().await;
    if !swept.is_empty() {
        tracing::warn!(cgroups = ?swept, "killed workers no record owns");
    }
    for user in to_start {
        let app2 = app.clone();
        app.tasks.spawn(async move {
            if let Some(manager) = app2.workers.clone()
                && let Err(e) = manager.ensure_running(&user).await
            {
                tracing::error!(user_id = %user, error = %e, "starting the worker at daemon start failed");
            }
        });
    }
    Ok(())
}

async fn audit(
    app: &Arc<App>,
    action: &'static str,
    user: &UserId,
    outcome: Outcome,
    detail: String,
) {
    let app = app.clone();
    let user = user.clone();
    let result = blocking(move || {
        app.registry.append_event(
            "daemon",
            action,
            Some(user.as_str()),
            outcome,
            Some(&detail),
        )
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e.chain(), "cannot append an audit event");
    }
}

/// Serves an active member: a dedicated member's worker is registered (or updated) and Ready, then the member is
/// taken off any shard (a move from the shared tier); a shared member is placed on a shard that serves it.
pub async fn ensure_ready(app: &Arc<App>, row: &UserRow) -> Result<(), Error> {
    if row.tier == Tier::Shared {
        let jobs_changed = crate::tier_move::prepare(app, row).await?;
        crate::shared::ensure_member(app, &row.id).await?;
        if jobs_changed {
            // The shard's config did not change, only the member's jobs file: a reload makes it re-read the file.
            crate::shared::reload_member_jobs(app, &row.id).await?;
        }
        return Ok(());
    }
    // A member moving from the shared tier leaves its shard first: one process writes its tree at a time.
    crate::shared::remove_member(app, &row.id).await?;
    let jobs_changed = crate::tier_move::prepare(app, row).await?;
    let Some(manager) = app.workers.clone() else {
        // Not root: members are provisioned but nobody can run their workers (logged once at start).
        return Ok(());
    };
    let Some(spec) = spec_for(app, row)? else {
        return Ok(());
    };
    if matches!(spec.runtime, Runtime::Clawdbot { .. }) {
        ensure_clawdbot_home(app, row).await?;
    }
    // The manager bounds the start itself (start timeout, back-off); ours only guards against a hang.
    let limit = spec
        .start_timeout
        .unwrap_or(app.config.lifecycle.start_timeout)
        * 3
        + Duration::from_secs(5);
    manager.register(spec).await;
    // A running worker keeps its cron store in memory: new default jobs need a restart to be read.
    let already_running = manager.status(&row.id).await.is_ok_and(|r| r.pid.is_some());
    let start = async {
        if jobs_changed && already_running {
            manager.restart(&row.id).await
        } else {
            manager.ensure_running(&row.id).await
        }
    };
    match tokio::time::timeout(limit, start).await {
        Ok(Ok(_addr)) => Ok(()),
        Ok(Err(e)) => Err(unavailable(&row.id, lifecycle_chain(&e))),
        Err(_) => Err(unavailable(&row.id, format!("not ready within {limit:?}"))),
    }
}

/// `<user dir>/home`, the Clawdbot runtime's `HOME` (npm and node caches land there, never in a shared place).
async fn ensure_clawdbot_home(app: &Arc<App>, row: &UserRow) -> Result<(), Error> {
    let home = app.layout.user_dir(&row.id).join("home");
    let owner = crate::users::owner_of(app, row);
    blocking(move || {
        let io = |op| {
            let path = home.clone();
            move |source| Error::Io { op, path, source }
        };
        match std::fs::create_dir(&home) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create")(e)),
        }
        // The tenant owns its tree: never chmod through a symlink it planted.
        if !std::fs::symlink_metadata(&home)
            .map_err(io("inspect"))?
            .is_dir()
        {
            return Err(io("use as a directory")(std::io::Error::from(
                std::io::ErrorKind::AlreadyExists,
            )));
        }
        if let Some(o) = owner {
            std::os::unix::fs::lchown(&home, Some(o.uid), Some(o.gid)).map_err(io("chown"))?;
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod"))
    })
    .await
}

/// Stops a member's worker and forgets it, or takes a shared member off its shard (removal, suspension, a move to
/// the shared tier). Unknown members are fine.
pub async fn forget(app: &Arc<App>, user: &UserId) -> Result<(), Error> {
    crate::shared::remove_member(app, user).await?;
    let Some(manager) = app.workers.clone() else {
        return Ok(());
    };
    // Route first, then stop: a request arriving while the worker drains gets 503 + Retry-After (its wake finds no
    // worker to start), never a 502 from a closing listener.
    crate::routes::set_upstream(app, user, UpstreamState::Stopped);
    match manager.remove(user).await {
        Ok(()) | Err(lifecycle::Error::UnknownUser { .. }) => {}
        Err(e) => return Err(unavailable(user, lifecycle_chain(&e))),
    }
    let app2 = app.clone();
    let user2 = user.clone();
    blocking(move || app2.registry.clear_worker(&user2)).await?;
    crate::routes::forget_upstream(app, user);
    Ok(())
}

/// The manager, or the reason there is none.
pub fn manager(app: &App) -> Result<Manager, Error> {
    app.workers.clone().ok_or(Error::WorkersDisabled)
}

/// A lifecycle error as one line with its causes.
pub fn lifecycle_chain(e: &lifecycle::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Maps a lifecycle error of an admin action to the API error.
pub fn api_error(user: &UserId, e: lifecycle::Error) -> Error {
    match e {
        lifecycle::Error::UnknownUser { .. } => Error::NoWorker { user: user.clone() },
        other => unavailable(user, lifecycle_chain(&other)),
    }
}

/// Records every transition: the `workers` row (what re-adoption reads), the audit log, and the proxy upstream.
/// Runs until `stop` fires, then drains what is already queued (the final Stopped events of a stop-on-exit).
pub async fn record_events(
    app: Arc<App>,
    mut rx: mpsc::UnboundedReceiver<LifecycleEvent>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            ev = rx.recv() => ev,
            _ = stop.cancelled() => {
                while let Ok(ev) = rx.try_recv() {
                    record(&app, ev).await;
                }
                return;
            }
        };
        match event {
            Some(ev) => record(&app, ev).await,
            None => return,
        }
    }
}

async fn record(app: &Arc<App>, ev: LifecycleEvent) {
    let port = ev.record.port;
    let shard = crate::shared::shard_of_key(&ev.user_id);
    crate::routes::set_upstream(app, &ev.user_id, upstream_of(ev.to, port));
    if shard.is_some() {
        // Every member of the shard routes to it: rebuild their routes with the shard's new upstream.
        crate::routes::rebuild_logged(app).await;
    }
    let outcome = match ev.to {
        WorkerState::Backoff | WorkerState::Quarantined => Outcome::Error,
        _ => Outcome::Ok,
    };
    let detail = match &ev.record.pid {
        Some(pid) => format!("{} → {} (pid {pid}): {}", ev.from, ev.to, ev.detail),
        None => format!("{} → {}: {}", ev.from, ev.to, ev.detail),
    };
    tracing::info!(user_id = %ev.user_id, from = %ev.from, to = %ev.to, detail = %ev.detail, "worker transition");
    let row = to_row(&ev.record);
    let action = match ev.to {
        WorkerState::Starting => "worker.starting",
        WorkerState::Ready => "worker.ready",
        WorkerState::Running => "worker.running",
        WorkerState::Backoff => "worker.backoff",
        WorkerState::Quarantined => "worker.quarantined",
        WorkerState::Stopping => "worker.stopping",
        WorkerState::Stopped => "worker.stopped",
    };
    let app2 = app.clone();
    let user = ev.user_id.clone();
    let shutting_down = app.shutdown.is_cancelled();
    let to = ev.to;
    let result = blocking(move || {
        // A member removed meanwhile has no row to attach a worker to (foreign key): only audit then. A stop on
        // daemon exit (`--stop-workers-on-exit`) keeps the last running record: the next daemon finds the pid gone
        // and starts the worker again, whereas a recorded `stopped` means an operator or idle stop (stays stopped).
        let exiting = shutting_down && matches!(to, WorkerState::Stopping | WorkerState::Stopped);
        if !exiting {
            if let Some(n) = shard {
                app2.registry.record_shard_worker(n, &row)?;
            } else if app2.registry.user(&user)?.is_some() {
                app2.registry.record_worker(&row)?;
            }
        }
        app2.registry.append_event(
            "daemon",
            action,
            Some(user.as_str()),
            outcome,
            Some(&detail),
        )?;
        Ok(())
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(user_id = %ev.user_id, error = %e.chain(), "cannot record a worker transition");
    }
}

/// Answers the proxy's wake requests (a request for a stopped worker, or a due cron job) with `ensure_running`.
pub async fn serve_wakes(app: Arc<App>, mut rx: mpsc::Receiver<WakeRequest>) {
    loop {
        let request = tokio::select! {
            r = rx.recv() => r,
            _ = app.shutdown.cancelled() => return,
        };
        let Some(WakeRequest { user_id, reply }) = request else {
            return;
        };
        let app2 = app.clone();
        app.tasks.spawn(async move {
            let answer = match app2.workers.clone() {
                None => Err(WakeError::StartFailed {
                    reason: "workers are disabled on this daemon".to_owned(),
                }),
                Some(manager) => match manager.ensure_running(&user_id).await {
                    Ok(addr) => Ok(addr),
                    Err(lifecycle::Error::Quarantined { .. }) => Err(WakeError::Quarantined {
                        reason: "the worker is quarantined after repeated crashes".to_owned(),
                    }),
                    Err(e) => {
                        tracing::warn!(user_id = %user_id, error = %lifecycle_chain(&e), "wake failed");
                        Err(WakeError::StartFailed {
                            reason: "the worker could not be started".to_owned(),
                        })
                    }
                },
            };
            let _ = reply.send(answer);
        });
    }
}

/// Stops workers the proxy found idle: the route is marked Stopped first, so the next request wakes it.
pub async fn serve_stops(app: Arc<App>, mut rx: mpsc::Receiver<StopRequest>) {
    loop {
        let request = tokio::select! {
            r = rx.recv() => r,
            _ = app.shutdown.cancelled() => return,
        };
        let Some(StopRequest { user_id, reason }) = request else {
            return;
        };
        let Some(manager) = app.workers.clone() else {
            continue;
        };
        crate::routes::set_upstream(&app, &user_id, UpstreamState::Stopped);
        app.tasks.spawn(async move {
            tracing::info!(user_id = %user_id, ?reason, "stopping idle worker");
            if let Err(e) = manager.stop(&user_id).await {
                tracing::warn!(user_id = %user_id, error = %lifecycle_chain(&e), "idle stop failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_group_is_stable_and_valid() {
        let a = cgroup_group(Path::new("/var/lib/wirebot"));
        assert_eq!(a, cgroup_group(Path::new("/var/lib/wirebot")));
        assert_ne!(a, cgroup_group(Path::new("/srv/wirebot")));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }

    #[test]
    fn every_state_name_parses_back() {
        for s in [
            WorkerState::Starting,
            WorkerState::Ready,
            WorkerState::Running,
            WorkerState::Backoff,
            WorkerState::Quarantined,
            WorkerState::Stopping,
            WorkerState::Stopped,
        ] {
            assert_eq!(parse_state(s.as_str()), Some(s));
        }
    }
}
