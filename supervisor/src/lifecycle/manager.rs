//! [`Manager`]: owns every worker task (one per user), answers `ensure_running` / `stop` / `restart` / `list`,
//! re-adopts workers a previous supervisor left running, and kills worker cgroups nobody knows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provisioning::UserId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::spec::{Readiness, WorkerSpec};
use super::state::{LifecycleEvent, WorkerRecord};
use super::worker::{Command, Env, Instance, Worker};
use super::{Error, Policy, probe};
use crate::sandbox::{self, CgroupLayout, ConnectGuard, PidFd, PortRange, procfs};

/// First words of the Stopped event's detail for an explicit stop (`worker stop`, user removed).
pub const STOP_REQUESTED: &str = "stop requested";
/// First word of the Stopped event's detail when the user is removed (or moved off the tier): the task refuses any
/// later start.
pub(super) const REMOVED: &str = "removed";
/// First words of the Stopped event's detail when the supervisor exits with `stop_all_on_exit`: a next supervisor
/// should start these workers again (unlike an operator's stop).
pub const STOP_ON_EXIT: &str = "supervisor exiting (stop-workers-on-exit)";

/// Commands queued per worker before senders wait.
const COMMAND_QUEUE: usize = 16;

/// Construction arguments of a [`Manager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// `<data_dir>/logs`: one `<id>.log` per worker (created 0700 root).
    pub logs_dir: PathBuf,
    /// The worker port range: workers may bind only their own port and connect to none in this range.
    pub worker_ports: PortRange,
    /// TCP ports workers may connect to. `None`: every port outside `worker_ports` (complete, ~60 ms extra per
    /// spawn); `Some(list)`: only these (e.g. 443, 80, 53 + LLM provider ports from config; no spawn cost).
    pub egress_ports: Option<Vec<u16>>,
    pub policy: Policy,
    /// Size of each worker's private `/tmp`; `None` disables the private mount namespace.
    pub private_tmp_bytes: Option<u64>,
    /// Worker cgroups are named `<cgroup_group>.<user id>`: keep it stable across restarts (e.g. derived from the
    /// data dir) so a restarted supervisor finds its workers, and distinct per supervisor instance on one host so
    /// two never touch each other's workers. `[a-z0-9-]+`.
    pub cgroup_group: String,
    /// `serve --stop-workers-on-exit`: [`Manager::shutdown`] stops every worker instead of leaving them running.
    pub stop_all_on_exit: bool,
}

/// Result of [`Manager::adopt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// The recorded process is ours, alive and healthy: it is supervised again, not restarted.
    Adopted { pid: i32 },
    /// The record does not name a live, healthy worker of ours (the reason says why); start a new one.
    Gone { reason: String },
}

/// Owns all worker tasks. Cheap to clone (one shared inner); dropping every clone detaches the workers.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    env: Arc<Env>,
    workers: Mutex<HashMap<UserId, mpsc::Sender<Command>>>,
    tracker: TaskTracker,
    stop_all_on_exit: bool,
}

impl Manager {
    /// Detects the cgroup layout and builds the shared Landlock connect guard (blocking, ~tens of ms).
    /// Transitions of every worker are sent on the returned channel.
    pub fn new(
        config: ManagerConfig,
    ) -> Result<(Manager, mpsc::UnboundedReceiver<LifecycleEvent>), Error> {
        let group = &config.cgroup_group;
        if group.is_empty()
            || !group
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Setup {
                op: "check cgroup_group",
                source: sandbox::Error::InvalidSpec {
                    field: "cgroup_group",
                    reason: format!("{group:?} is not [a-z0-9-]+"),
                },
            });
        }
        let layout = CgroupLayout::detect().map_err(|source| Error::Setup {
            op: "detect cgroups",
            source,
        })?;
        let guard = match &config.egress_ports {
            None => ConnectGuard::new(config.worker_ports),
            Some(ports) => ConnectGuard::allow_only(ports, config.worker_ports),
        }
        .map_err(|source| Error::Setup {
            op: "build the Landlock connect guard",
            source,
        })?;
        let (events, rx) = mpsc::unbounded_channel();
        let env = Env {
            policy: config.policy,
            logs_dir: config.logs_dir,
            layout,
            guard: Some(Arc::new(guard)),
            private_tmp_bytes: config.private_tmp_bytes,
            cgroup_group: config.cgroup_group,
            events,
        };
        let inner = Inner {
            env: Arc::new(env),
            workers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            stop_all_on_exit: config.stop_all_on_exit,
        };
        Ok((
            Manager {
                inner: Arc::new(inner),
            },
            rx,
        ))
    }

    fn workers(&self) -> MutexGuard<'_, HashMap<UserId, mpsc::Sender<Command>>> {
        // A poisoned map is still a consistent map: every insert/remove is a single operation.
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sender(&self, user: &UserId) -> Result<mpsc::Sender<Command>, Error> {
        self.workers()
            .get(user)
            .cloned()
            .ok_or_else(|| Error::UnknownUser {
                user_id: user.clone(),
            })
    }

    /// Registers (or updates) the spec of a user's worker. A new worker starts Stopped; an update applies at the next
    /// start.
    pub async fn register(&self, spec: WorkerSpec) {
        let spec = Arc::new(spec);
        let existing = self.workers().get(&spec.user_id).cloned();
        match existing {
            Some(tx) => {
                let _ = tx.send(Command::Update { spec }).await;
            }
            None => self.insert(
                Worker::new(self.inner.env.clone(), spec.clone()),
                &spec.user_id,
            ),
        }
    }

    fn insert(&self, worker: Worker, user: &UserId) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        self.workers().insert(user.clone(), tx);
        self.inner.tracker.spawn(worker.run(rx));
    }

    async fn ask<T>(
        &self,
        user: &UserId,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let tx = self.sender(user)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.map_err(|_| Error::TaskGone {
            user_id: user.clone(),
        })?;
        rx.await.map_err(|_| Error::TaskGone {
            user_id: user.clone(),
        })
    }

    /// Starts the user's worker if needed and returns its address once Ready (the proxy's wake path). Fails at once
    /// for a quarantined worker; waits through back-off otherwise (callers bound it with their own timeout).
    pub async fn ensure_running(&self, user: &UserId) -> Result<SocketAddr, Error> {
        self.ask(user, |reply| Command::Start { reply }).await?
    }

    /// Graceful stop (SIGTERM, grace, SIGKILL of the cgroup). The worker stays registered, Stopped.
    pub async fn stop(&self, user: &UserId) -> Result<(), Error> {
        self.ask(user, |reply| Command::Stop {
            reply,
            why: STOP_REQUESTED,
        })
        .await
    }

    /// Stops (if running) and starts again; clears a quarantine and the restart counters.
    pub async fn restart(&self, user: &UserId) -> Result<SocketAddr, Error> {
        self.ask(user, |reply| Command::Restart { reply }).await?
    }

    /// Signals the running worker (through its pidfd, so never a process that reused its pid).
    pub async fn signal(
        &self,
        user: &UserId,
        signal: nix::sys::signal::Signal,
    ) -> Result<(), Error> {
        self.ask(user, |reply| Command::Signal { signal, reply })
            .await?
    }

    pub async fn status(&self, user: &UserId) -> Result<WorkerRecord, Error> {
        self.ask(user, |reply| Command::Status { reply }).await
    }

    /// Every registered worker's record, sorted by user id.
    pub async fn list(&self) -> Vec<WorkerRecord> {
        let mut users: Vec<UserId> = self.workers().keys().cloned().collect();
        users.sort();
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            if let Ok(r) = self.status(&u).await {
                out.push(r);
            }
        }
        out
    }

    /// Stops the worker and forgets the user (user removed).
    pub async fn remove(&self, user: &UserId) -> Result<(), Error> {
        self.ask(user, |reply| Command::Stop {
            reply,
            why: REMOVED,
        })
        .await?;
        self.workers().remove(user);
        Ok(())
    }

    /// Re-adopts a worker recorded by a previous supervisor: verified by pidfd + start time + cgroup membership
    /// (never the pid alone), then health-checked. A live but unhealthy worker of ours is killed (`Gone`).
    /// Refuses when this manager already runs a worker for the user, so there are never two.
    pub async fn adopt(&self, spec: WorkerSpec, record: &WorkerRecord) -> Result<Adoption, Error> {
        if self.workers().contains_key(&spec.user_id) {
            return Err(Error::AlreadyManaged {
                user_id: spec.user_id.clone(),
            });
        }
        let user_id = spec.user_id.clone();
        let (pidfd, cgroup, pid, start_time) = match verify(record) {
            Ok(v) => v,
            Err(reason) => {
                info!(user_id = user_id.as_str(), %reason, "recorded worker not adopted");
                return Ok(Adoption::Gone { reason });
            }
        };
        let policy = &self.inner.env.policy;
        let addr = SocketAddr::from(([127, 0, 0, 1], spec.port));
        let mut last = String::new();
        let deadline = Instant::now() + policy.start_timeout.min(Duration::from_secs(5));
        let healthy = loop {
            let r = match spec.readiness() {
                Readiness::ReadyLine => probe::healthz(addr, policy.health_timeout).await,
                Readiness::TcpConnect => probe::tcp_alive(addr, policy.health_timeout).await,
            };
            match r {
                Ok(()) => break true,
                Err(e) if Instant::now() < deadline => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    last = e;
                    break false;
                }
            }
        };
        if !healthy {
            warn!(user_id = user_id.as_str(), pid, reason = %last, "recorded worker alive but unhealthy; killing it");
            let cg = cgroup.clone();
            let _ = tokio::task::spawn_blocking(move || {
                cg.kill_all(Duration::from_secs(5))
                    .and_then(|()| cg.remove())
            })
            .await;
            return Ok(Adoption::Gone {
                reason: format!("alive but unhealthy ({last}); killed"),
            });
        }
        let pidfd = pidfd.into_async().map_err(|source| Error::Io {
            user_id: user_id.clone(),
            op: "register the pidfd",
            path: PathBuf::new(),
            source,
        })?;
        let inst = Instance {
            pid,
            start_time,
            pidfd,
            cgroup: Some(cgroup),
            since: Instant::now(),
        };
        let worker = Worker::adopted(self.inner.env.clone(), Arc::new(spec), inst, record);
        self.insert(worker, &user_id);
        Ok(Adoption::Adopted { pid })
    }

    /// Kills and removes worker cgroups that no registered worker owns (orphans of a lost record). Call after
    /// adoption, before starting missing workers. Returns the cgroup names it cleaned.
    pub async fn sweep_unknown(&self) -> Vec<String> {
        let known: Vec<String> = self
            .list()
            .await
            .into_iter()
            .filter(|r| r.pid.is_some())
            .map(|r| r.user_id.to_string())
            .collect();
        let env = self.inner.env.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let mut swept = Vec::new();
            let prefix = format!("{}.", env.cgroup_group);
            for name in sandbox::cgroup::existing_worker_cgroups(&env.layout) {
                let Some(user) = name.strip_prefix(&prefix) else {
                    continue;
                };
                if known.iter().any(|k| k == user) {
                    continue;
                }
                match env.layout.handle(&name) {
                    Ok(cg) => {
                        if cg
                            .kill_all(Duration::from_secs(5))
                            .and_then(|()| cg.remove())
                            .is_ok()
                        {
                            swept.push(name);
                        }
                    }
                    Err(e) => {
                        warn!(cgroup = %name, error = %e, "cannot sweep unknown worker cgroup")
                    }
                }
            }
            swept
        })
        .await;
        swept.unwrap_or_default()
    }

    /// Ends supervision: with `stop_all_on_exit` every worker is stopped first, otherwise they keep running
    /// (re-adopted by the next supervisor). Waits for every worker task to finish.
    pub async fn shutdown(self) {
        if self.inner.stop_all_on_exit {
            let users: Vec<UserId> = self.workers().keys().cloned().collect();
            let stops = users.iter().map(|u| {
                self.ask(u, |reply| Command::Stop {
                    reply,
                    why: STOP_ON_EXIT,
                })
            });
            for r in futures_util::future::join_all(stops).await {
                if let Err(e) = r {
                    warn!(error = %e, "stopping a worker on exit failed");
                }
            }
        }
        self.workers().clear();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// pidfd first, then start time and cgroup membership of the process that pidfd names: no pid-reuse window.
fn verify(record: &WorkerRecord) -> Result<(PidFd, sandbox::CgroupSet, i32, u64), String> {
    let (Some(pid), Some(start), Some(cgroup)) =
        (record.pid, record.pid_start_time, record.cgroup.clone())
    else {
        return Err("record has no pid, start time or cgroup".to_owned());
    };
    let pidfd = PidFd::open(pid).map_err(|e| format!("pid {pid}: {e}"))?;
    match procfs::start_time(pid) {
        Ok(Some(t)) if t == start => {}
        Ok(Some(t)) => {
            return Err(format!(
                "pid {pid} was reused: start time {t}, recorded {start}"
            ));
        }
        Ok(None) => return Err(format!("pid {pid} has exited")),
        Err(e) => return Err(format!("pid {pid}: {e}")),
    }
    match cgroup.contains(pid) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "pid {pid} is not in the recorded cgroup {}",
                cgroup.display_path().display()
            ));
        }
        Err(e) => return Err(format!("recorded cgroup: {e}")),
    }
    // Still alive after the checks (the pidfd would be readable otherwise).
    if matches!(pidfd.try_wait(), Ok(Some(_))) {
        return Err(format!("pid {pid} exited during adoption"));
    }
    Ok((pidfd, cgroup, pid, start))
}
