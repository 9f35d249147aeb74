//! The one task that owns a worker: its process, listening socket, state, back-off and crash window.
//!
//! Every state change goes through [`Worker::transition`], which emits a [`LifecycleEvent`] with the full record.
//! Commands arrive over an mpsc channel; when the channel closes (the `Manager` was dropped) the task detaches and
//! the process keeps running.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::Error;
use super::logs::{self, Follow};
use super::policy::{Backoff, CrashWindow, Policy};
use super::probe;
use super::spec::{Readiness, WorkerSpec};
use super::state::{Diagnosis, ExitCause, LifecycleEvent, WorkerRecord, WorkerState};
use crate::sandbox::{self, CgroupLayout, CgroupSet, ConnectGuard, PidFd};

/// Lines of log kept in a diagnosis.
const DIAGNOSIS_LINES: usize = 200;

pub(super) enum Command {
    Start {
        reply: oneshot::Sender<Result<SocketAddr, Error>>,
    },
    Restart {
        reply: oneshot::Sender<Result<SocketAddr, Error>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
        /// Why, first in the Stopped event's detail: an operator stop vs a supervisor exiting with stop-on-exit
        /// (which a next supervisor should start again) must be told apart in the audit log.
        why: &'static str,
    },
    Status {
        reply: oneshot::Sender<WorkerRecord>,
    },
    Update {
        spec: Arc<WorkerSpec>,
    },
    /// Sends a signal to the running instance through its pidfd (e.g. SIGHUP: reload the agent list).
    Signal {
        signal: nix::sys::signal::Signal,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// What every worker task shares (immutable).
#[derive(Debug)]
pub(super) struct Env {
    pub(super) policy: Policy,
    pub(super) logs_dir: PathBuf,
    pub(super) layout: CgroupLayout,
    pub(super) guard: Option<Arc<ConnectGuard>>,
    pub(super) private_tmp_bytes: Option<u64>,
    pub(super) cgroup_group: String,
    pub(super) events: mpsc::UnboundedSender<LifecycleEvent>,
}

/// One running process of the worker.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) pid: i32,
    pub(super) start_time: u64,
    pub(super) pidfd: AsyncFd<PidFd>,
    pub(super) cgroup: Option<CgroupSet>,
    /// When it became ready (or was adopted).
    pub(super) since: Instant,
}

#[derive(Debug)]
pub(super) struct Worker {
    env: Arc<Env>,
    spec: Arc<WorkerSpec>,
    state: WorkerState,
    inst: Option<Instance>,
    listener: Option<TcpListener>,
    backoff: Backoff,
    window: CrashWindow,
    restarts: u32,
    diagnosis: Option<Diagnosis>,
    waiters: Vec<oneshot::Sender<Result<SocketAddr, Error>>>,
    restart_at: Instant,
    health_failures: u32,
    /// Stopped for removal ([`super::manager::REMOVED`]): a start queued behind the stop (a proxy wake racing the
    /// removal) is refused instead of bringing back a worker nobody supervises any more.
    retired: bool,
}

enum Wait {
    Ready,
    NotReady(String),
    Exited,
    Timeout,
    Cmd(Option<Command>),
    Elapsed,
}

impl Worker {
    pub(super) fn new(env: Arc<Env>, spec: Arc<WorkerSpec>) -> Worker {
        Worker {
            backoff: Backoff::new(&env.policy),
            env,
            spec,
            state: WorkerState::Stopped,
            inst: None,
            listener: None,
            window: CrashWindow::default(),
            restarts: 0,
            diagnosis: None,
            waiters: Vec::new(),
            restart_at: Instant::now(),
            health_failures: 0,
            retired: false,
        }
    }

    /// A worker found running by [`super::Manager::adopt`]: starts in Running, not our child.
    pub(super) fn adopted(
        env: Arc<Env>,
        spec: Arc<WorkerSpec>,
        inst: Instance,
        record: &WorkerRecord,
    ) -> Worker {
        let mut w = Worker::new(env, spec);
        w.restarts = record.restarts;
        w.inst = Some(inst);
        w.transition(
            WorkerState::Running,
            "adopted after a supervisor restart".to_owned(),
        );
        w
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.spec.port))
    }

    fn log_path(&self) -> PathBuf {
        logs::log_path(&self.env.logs_dir, &self.spec.user_id)
    }

    pub(super) fn record(&self) -> WorkerRecord {
        WorkerRecord {
            user_id: self.spec.user_id.clone(),
            pid: self.inst.as_ref().map(|i| i.pid),
            pid_start_time: self.inst.as_ref().map(|i| i.start_time),
            cgroup: self.inst.as_ref().and_then(|i| i.cgroup.clone()),
            port: self.spec.port,
            state: self.state,
            restarts: self.restarts,
            diagnosis: self.diagnosis.clone(),
        }
    }

    fn transition(&mut self, to: WorkerState, detail: String) {
        let from = self.state;
        self.state = to;
        let user_id = self.spec.user_id.as_str();
        let pid = self.inst.as_ref().map(|i| i.pid);
        info!(user_id, ?pid, port = self.spec.port, %from, %to, %detail, "worker transition");
        if let Ok(file) = logs::open_append(&self.env.logs_dir, &self.spec.user_id) {
            let _ = logs::marker(&file, &format!("{from} -> {to}: {detail}"));
        }
        let event = LifecycleEvent {
            user_id: self.spec.user_id.clone(),
            from,
            to,
            detail,
            record: self.record(),
        };
        // The daemon may be gone (shutdown): events are then simply dropped.
        let _ = self.env.events.send(event);
    }

    fn answer_waiters(&mut self, result: impl Fn(&WorkerSpec) -> Result<SocketAddr, Error>) {
        for w in self.waiters.drain(..) {
            let _ = w.send(result(&self.spec));
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let open = match self.state {
                WorkerState::Starting => self.start(&mut rx).await,
                WorkerState::Ready | WorkerState::Running => self.supervise(&mut rx).await,
                WorkerState::Backoff => self.wait_backoff(&mut rx).await,
                WorkerState::Stopping => {
                    let detail = self.stop_instance().await;
                    self.transition(WorkerState::Stopped, detail);
                    true
                }
                WorkerState::Stopped | WorkerState::Quarantined => match rx.recv().await {
                    Some(cmd) => {
                        self.idle_command(cmd);
                        true
                    }
                    None => false,
                },
            };
            if !open {
                self.detach();
                return;
            }
        }
    }

    /// The manager is gone: leave the process running (it outlives the supervisor) and end the task.
    fn detach(&mut self) {
        if let Some(inst) = &self.inst {
            info!(
                user_id = self.spec.user_id.as_str(),
                pid = inst.pid,
                "supervisor detached; worker keeps running"
            );
        }
        self.answer_waiters(|s| {
            Err(Error::TaskGone {
                user_id: s.user_id.clone(),
            })
        });
    }

    fn status_or_update(&mut self, cmd: Command) -> Option<Command> {
        if let Command::Stop { why, .. } = &cmd
            && *why == super::manager::REMOVED
        {
            self.retired = true;
        }
        match cmd {
            Command::Status { reply } => {
                let _ = reply.send(self.record());
                None
            }
            Command::Update { spec } => {
                self.spec = spec;
                None
            }
            Command::Signal { signal, reply } => {
                let result = match &self.inst {
                    Some(inst) => {
                        inst.pidfd
                            .get_ref()
                            .send_signal(signal)
                            .map_err(|source| Error::Io {
                                user_id: self.spec.user_id.clone(),
                                op: "signal the worker",
                                path: PathBuf::new(),
                                source,
                            })
                    }
                    None => Err(Error::Stopped {
                        user_id: self.spec.user_id.clone(),
                    }),
                };
                let _ = reply.send(result);
                None
            }
            other => Some(other),
        }
    }

    fn idle_command(&mut self, cmd: Command) {
        let Some(cmd) = self.status_or_update(cmd) else {
            return;
        };
        match cmd {
            Command::Start { reply } | Command::Restart { reply } if self.retired => {
                let _ = reply.send(Err(Error::Stopped {
                    user_id: self.spec.user_id.clone(),
                }));
            }
            Command::Start { reply } if self.state == WorkerState::Quarantined => {
                let summary = self
                    .diagnosis
                    .as_ref()
                    .map(Diagnosis::summary)
                    .unwrap_or_default();
                let _ = reply.send(Err(Error::Quarantined {
                    user_id: self.spec.user_id.clone(),
                    summary,
                }));
            }
            Command::Start { reply } => {
                self.waiters.push(reply);
                self.reset_restart_accounting();
                self.transition(WorkerState::Starting, "start requested".to_owned());
            }
            Command::Restart { reply } => {
                self.waiters.push(reply);
                self.reset_restart_accounting();
                self.diagnosis = None;
                self.transition(
                    WorkerState::Starting,
                    "restart requested (quarantine cleared)".to_owned(),
                );
            }
            Command::Stop { reply, .. } => {
                let _ = reply.send(());
            }
            Command::Status { .. } | Command::Update { .. } | Command::Signal { .. } => {}
        }
    }

    fn reset_restart_accounting(&mut self) {
        self.window.clear();
        self.backoff = Backoff::new(&self.env.policy);
        self.restarts = 0;
    }

    /// Starting: bind (once), open the log, create the cgroup, spawn, wait for readiness.
    async fn start(&mut self, rx: &mut mpsc::Receiver<Command>) -> bool {
        let started = Instant::now();
        let (follow, listen_port, spawn_time) = match self.launch().await {
            Ok(v) => v,
            Err(e) => {
                let error = format!("{e}: {}", error_chain(&e));
                warn!(user_id = self.spec.user_id.as_str(), %error, "worker spawn failed");
                self.crash(ExitCause::SpawnFailed { error }).await;
                return true;
            }
        };
        let Some(pid) = self.inst.as_ref().map(|i| i.pid) else {
            return true;
        };
        let deadline = tokio::time::Instant::now()
            + self
                .spec
                .start_timeout
                .unwrap_or(self.env.policy.start_timeout);
        let readiness = self.spec.readiness();
        let addr = self.addr();
        let ready = async move {
            match readiness {
                Readiness::ReadyLine => probe::ready_line(follow, pid, listen_port).await,
                Readiness::TcpConnect => {
                    probe::tcp_connect_ready(addr).await;
                    Ok(())
                }
            }
        };
        tokio::pin!(ready);
        loop {
            let outcome = {
                let Some(inst) = self.inst.as_ref() else {
                    return true;
                };
                tokio::select! {
                    r = &mut ready => match r { Ok(()) => Wait::Ready, Err(e) => Wait::NotReady(e) },
                    () = wait_exit(&inst.pidfd) => Wait::Exited,
                    () = tokio::time::sleep_until(deadline) => Wait::Timeout,
                    cmd = rx.recv() => Wait::Cmd(cmd),
                }
            };
            match outcome {
                Wait::Ready => {
                    if let Some(inst) = self.inst.as_mut() {
                        inst.since = Instant::now();
                    }
                    self.health_failures = 0;
                    let ms = started.elapsed().as_millis();
                    self.transition(
                        WorkerState::Ready,
                        format!(
                            "ready in {ms} ms (sandboxed spawn {} ms)",
                            spawn_time.as_millis()
                        ),
                    );
                    let addr = self.addr();
                    self.answer_waiters(|_| Ok(addr));
                    return true;
                }
                Wait::NotReady(reason) => {
                    self.kill_instance().await;
                    self.crash(ExitCause::HealthFailed { detail: reason }).await;
                    return true;
                }
                Wait::Exited => {
                    let cause = self.exit_cause();
                    self.crash(cause).await;
                    return true;
                }
                Wait::Timeout => {
                    self.kill_instance().await;
                    self.crash(ExitCause::StartTimeout).await;
                    return true;
                }
                Wait::Cmd(None) => return false,
                Wait::Cmd(Some(cmd)) => match self.status_or_update(cmd) {
                    None => {}
                    Some(Command::Start { reply } | Command::Restart { reply }) => {
                        self.waiters.push(reply)
                    }
                    Some(Command::Stop { reply, why }) => {
                        let detail = format!("{why}: {}", self.stop_instance().await);
                        self.answer_waiters(|s| {
                            Err(Error::Stopped {
                                user_id: s.user_id.clone(),
                            })
                        });
                        self.transition(WorkerState::Stopped, detail);
                        let _ = reply.send(());
                        return true;
                    }
                    Some(
                        Command::Status { .. } | Command::Update { .. } | Command::Signal { .. },
                    ) => {}
                },
                Wait::Elapsed => {}
            }
        }
    }

    /// The spawn itself; on success `self.inst` is set. Returns the log follower and the expected port.
    async fn launch(&mut self) -> Result<(Follow, u16, Duration), Error> {
        let user_id = self.spec.user_id.clone();
        let io_err = |op, path: PathBuf| {
            let user_id = user_id.clone();
            move |source| Error::Io {
                user_id,
                op,
                path,
                source,
            }
        };
        let listen: Option<OwnedFd> = if self.spec.hands_over_socket() {
            if self.listener.is_none() {
                let l = TcpListener::bind(self.addr()).map_err(|source| Error::Bind {
                    user_id: user_id.clone(),
                    port: self.spec.port,
                    source,
                })?;
                self.listener = Some(l);
            }
            let dup = self.listener.as_ref().map(|l| l.try_clone()).transpose();
            dup.map_err(io_err("duplicate the listening socket", PathBuf::new()))?
                .map(OwnedFd::from)
        } else {
            None
        };
        let log_path = self.log_path();
        let log = logs::open_append(&self.env.logs_dir, &user_id)
            .map_err(io_err("open the log", log_path.clone()))?;
        logs::marker(&log, "starting").map_err(io_err("write the log", log_path.clone()))?;
        let follow =
            Follow::from_end(&log_path).map_err(io_err("follow the log", log_path.clone()))?;
        let log_dup = log
            .try_clone()
            .map_err(io_err("duplicate the log fd", log_path.clone()))?;
        let env = self.env.clone();
        let spec = self.spec.clone();
        let spawn_started = Instant::now();
        let spawned = tokio::task::spawn_blocking(move || {
            let name = format!("{}.{}", env.cgroup_group, spec.user_id);
            let cgroup = env.layout.create(&name, &spec.limits)?;
            let sandbox = spec.sandbox(
                log.into(),
                log_dup.into(),
                listen,
                cgroup.clone(),
                env.guard.clone(),
                env.private_tmp_bytes,
            );
            match sandbox::spawn(sandbox) {
                Ok(s) => Ok(s),
                Err(e) => {
                    let _ = cgroup.remove();
                    Err(e)
                }
            }
        })
        .await;
        let spawned = match spawned {
            Ok(r) => r.map_err(|source| Error::Sandbox {
                user_id: user_id.clone(),
                source,
            })?,
            Err(join) => {
                return Err(Error::Io {
                    user_id,
                    op: "join the spawn task",
                    path: PathBuf::new(),
                    source: std::io::Error::other(join.to_string()),
                });
            }
        };
        let pid = spawned.pid;
        let pidfd = spawned
            .pidfd
            .into_async()
            .map_err(io_err("register the pidfd", PathBuf::new()))?;
        self.inst = Some(Instance {
            pid,
            start_time: spawned.start_time,
            pidfd,
            cgroup: spawned.cgroup,
            since: Instant::now(),
        });
        info!(
            user_id = user_id.as_str(),
            worker_pid = pid,
            port = self.spec.port,
            "worker spawned"
        );
        Ok((follow, self.spec.port, spawn_started.elapsed()))
    }

    /// Ready/Running: watch for exit, run health checks, rotate logs, serve commands.
    async fn supervise(&mut self, rx: &mut mpsc::Receiver<Command>) -> bool {
        let interval = self.env.policy.health_interval;
        let outcome = {
            let Some(inst) = self.inst.as_ref() else {
                self.transition(WorkerState::Backoff, "no process".to_owned());
                return true;
            };
            tokio::select! {
                () = wait_exit(&inst.pidfd) => Wait::Exited,
                () = tokio::time::sleep(interval) => Wait::Elapsed,
                cmd = rx.recv() => Wait::Cmd(cmd),
            }
        };
        match outcome {
            Wait::Exited => {
                let cause = self.exit_cause();
                self.crash(cause).await;
            }
            Wait::Elapsed => {
                let result = self.health().await;
                self.on_health(result).await;
            }
            Wait::Cmd(None) => return false,
            Wait::Cmd(Some(cmd)) => self.running_command(cmd).await,
            _ => {}
        }
        true
    }

    async fn health(&self) -> Result<(), String> {
        let (addr, timeout) = (self.addr(), self.env.policy.health_timeout);
        match self.spec.readiness() {
            Readiness::ReadyLine => probe::healthz(addr, timeout).await,
            Readiness::TcpConnect => probe::tcp_alive(addr, timeout).await,
        }
    }

    async fn on_health(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.health_failures = 0;
                if self.state == WorkerState::Ready {
                    self.transition(
                        WorkerState::Running,
                        "first periodic health check passed".to_owned(),
                    );
                }
                let (path, policy) = (self.log_path(), &self.env.policy);
                if let Ok(true) =
                    logs::rotate_if_needed(&path, policy.log_max_bytes, policy.log_keep)
                {
                    info!(user_id = self.spec.user_id.as_str(), "worker log rotated");
                }
            }
            Err(detail) => {
                self.health_failures += 1;
                warn!(user_id = self.spec.user_id.as_str(), failures = self.health_failures, %detail, "health check failed");
                if self.health_failures >= self.env.policy.health_failures {
                    self.kill_instance().await;
                    self.crash(ExitCause::HealthFailed { detail }).await;
                }
            }
        }
    }

    async fn running_command(&mut self, cmd: Command) {
        let Some(cmd) = self.status_or_update(cmd) else {
            return;
        };
        match cmd {
            Command::Start { reply } => {
                let _ = reply.send(Ok(self.addr()));
            }
            Command::Restart { reply } => {
                let detail = self.stop_instance().await;
                self.waiters.push(reply);
                self.reset_restart_accounting();
                self.diagnosis = None;
                self.transition(
                    WorkerState::Starting,
                    format!("restart requested ({detail})"),
                );
            }
            Command::Stop { reply, why } => {
                let detail = format!("{why}: {}", self.stop_instance().await);
                self.listener = None;
                self.transition(WorkerState::Stopped, detail);
                let _ = reply.send(());
            }
            Command::Status { .. } | Command::Update { .. } | Command::Signal { .. } => {}
        }
    }

    async fn wait_backoff(&mut self, rx: &mut mpsc::Receiver<Command>) -> bool {
        let at = tokio::time::Instant::from_std(self.restart_at);
        let outcome = tokio::select! {
            () = tokio::time::sleep_until(at) => Wait::Elapsed,
            cmd = rx.recv() => Wait::Cmd(cmd),
        };
        match outcome {
            Wait::Elapsed => {
                self.restarts += 1;
                let n = self.restarts;
                self.transition(WorkerState::Starting, format!("automatic restart #{n}"));
            }
            Wait::Cmd(None) => return false,
            Wait::Cmd(Some(cmd)) => match self.status_or_update(cmd) {
                None => {}
                Some(Command::Start { reply }) => self.waiters.push(reply),
                Some(Command::Restart { reply }) => {
                    self.waiters.push(reply);
                    self.reset_restart_accounting();
                    self.diagnosis = None;
                    self.transition(
                        WorkerState::Starting,
                        "restart requested during back-off".to_owned(),
                    );
                }
                Some(Command::Stop { reply, why }) => {
                    self.listener = None;
                    self.answer_waiters(|s| {
                        Err(Error::Stopped {
                            user_id: s.user_id.clone(),
                        })
                    });
                    self.transition(
                        WorkerState::Stopped,
                        format!("{why}: stopped during back-off"),
                    );
                    let _ = reply.send(());
                }
                Some(Command::Status { .. } | Command::Update { .. } | Command::Signal { .. }) => {}
            },
            _ => {}
        }
        true
    }

    /// The exit status of the (exited) instance: reaped if it is our child, else unknown.
    fn exit_cause(&self) -> ExitCause {
        match self.inst.as_ref().map(|i| i.pidfd.get_ref().try_wait()) {
            Some(Ok(Some(WaitStatus::Exited(_, code)))) => ExitCause::Code { code },
            Some(Ok(Some(WaitStatus::Signaled(_, sig, _)))) => ExitCause::Signal {
                signal: sig.as_str().to_owned(),
            },
            _ => ExitCause::Unknown,
        }
    }

    /// Records a crash of the current instance: diagnosis, crash window, then Backoff or Quarantined.
    async fn crash(&mut self, cause: ExitCause) {
        let healthy_for = self
            .inst
            .as_ref()
            .map(|i| i.since.elapsed())
            .unwrap_or_default();
        let oom_kills = self.cleanup().await;
        let policy = &self.env.policy;
        let crashes = self.window.record(policy, Instant::now());
        let log_tail = logs::tail_lines(&self.log_path(), DIAGNOSIS_LINES).unwrap_or_default();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let diagnosis = Diagnosis {
            cause,
            oom_kills,
            crashes_in_window: crashes,
            log_tail,
            at,
        };
        let summary = diagnosis.summary();
        self.diagnosis = Some(diagnosis);
        if crashes >= policy.crash_limit {
            self.listener = None;
            self.transition(WorkerState::Quarantined, summary.clone());
            self.answer_waiters(|s| {
                Err(Error::Quarantined {
                    user_id: s.user_id.clone(),
                    summary: summary.clone(),
                })
            });
        } else {
            let delay = self.backoff.on_crash(policy, healthy_for);
            self.restart_at = Instant::now() + delay;
            self.transition(
                WorkerState::Backoff,
                format!("{summary}; restart in {} ms", delay.as_millis()),
            );
        }
    }

    /// SIGKILL of the whole cgroup (or the process when there is none), bounded wait for the exit.
    async fn kill_instance(&self) {
        let Some(inst) = self.inst.as_ref() else {
            return;
        };
        match inst.cgroup.clone() {
            Some(cg) => {
                let _ =
                    tokio::task::spawn_blocking(move || cg.kill_all(Duration::from_secs(5))).await;
            }
            None => {
                let _ = inst.pidfd.get_ref().send_signal(Signal::SIGKILL);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), wait_exit(&inst.pidfd)).await;
    }

    /// Graceful stop: SIGTERM, grace, then SIGKILL of the whole cgroup; always ends with the cgroup empty and removed.
    async fn stop_instance(&mut self) -> String {
        if self.inst.is_none() {
            return "not running".to_owned();
        }
        if self.state != WorkerState::Stopping {
            self.transition(WorkerState::Stopping, "SIGTERM".to_owned());
        }
        let Some(inst) = self.inst.as_ref() else {
            return String::new();
        };
        let grace = self.env.policy.stop_grace;
        let _ = inst.pidfd.get_ref().send_signal(Signal::SIGTERM);
        let detail = if tokio::time::timeout(grace, wait_exit(&inst.pidfd))
            .await
            .is_ok()
        {
            "exited after SIGTERM".to_owned()
        } else {
            self.kill_instance().await;
            format!(
                "still running {} ms after SIGTERM; SIGKILL of the whole cgroup",
                grace.as_millis()
            )
        };
        let cause = self.exit_cause();
        self.cleanup().await;
        format!("{detail} ({cause})")
    }

    /// After the main process exited: kill what is left in the cgroup, read OOM kills, remove the cgroup, reap.
    async fn cleanup(&mut self) -> u64 {
        let Some(inst) = self.inst.take() else {
            return 0;
        };
        let _ = inst.pidfd.get_ref().try_wait();
        let Some(cg) = inst.cgroup else { return 0 };
        let user_id = self.spec.user_id.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let oom = cg.oom_kills();
            if let Err(e) = cg
                .kill_all(Duration::from_secs(5))
                .and_then(|()| cg.remove())
            {
                warn!(user_id = user_id.as_str(), error = %e, "worker cgroup cleanup failed");
            }
            oom
        })
        .await;
        joined.unwrap_or(0)
    }
}

/// Resolves once the process behind the pidfd has exited (a pidfd polls readable from then on).
pub(super) async fn wait_exit(pidfd: &AsyncFd<PidFd>) {
    if let Ok(mut guard) = pidfd.readable().await {
        guard.retain_ready();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
