//! Worker lifecycle: one owning task per worker (state machine, readiness, health, back-off, quarantine, stop),
//! the [`Manager`] over all of them, re-adoption after a supervisor restart, and worker log files.
//!
//! Layout:
//! - `state.rs`     `WorkerState`, `LifecycleEvent`, `WorkerRecord` (what the daemon persists), `Diagnosis`;
//! - `policy.rs`    timeouts, back-off (0.5 s doubling to 30 s, reset after 60 s healthy), crash window (5 in 5 min);
//! - `spec.rs`      `WorkerSpec` + `Runtime` (wirebot / clawdbot) → `SandboxSpec`;
//! - `logs.rs`      `<logs_dir>/<id>.log`: open, supervisor marker lines, tail, copytruncate rotation;
//! - `probe.rs`     readiness (ready line in the log, `GET /healthz`, TCP connect) and periodic health;
//! - `worker.rs`    the per-worker task;
//! - `manager.rs`   `Manager`: registry of handles, `ensure_running`, `stop`, `restart`, `list`, `adopt`, `shutdown`.
//!
//! Decisions:
//! - **Logs survive the supervisor.** The worker's stdout and stderr ARE the log file (opened `O_APPEND` by the
//!   supervisor, root-owned 0600 in a 0700 root dir, passed as fds 1 and 2). A pipe through the supervisor would
//!   hand the worker EPIPE/SIGPIPE on its next write once the supervisor dies, and an adopted worker's output would
//!   be lost. Rotation is copytruncate by the supervisor (with `O_APPEND` the worker's next write lands at the new
//!   end); lines written between copy and truncate can be lost, which is the known cost of copytruncate.
//! - **Readiness** is the worker's ready line (`wirebot-worker ready port=<p> pid=<pid>`, pid must match), read
//!   back from the log file from the offset at spawn; for the Clawdbot runtime a TCP connect to its own `--port`.
//!   (A TCP connect cannot be readiness for the wirebot runtime: the supervisor-bound socket accepts into the
//!   backlog before the worker runs.)
//! - **Exit detection** is a pidfd for spawned and adopted workers alike (an adopted worker is not our child:
//!   its exit status is unknowable, the cgroup still tells OOM kills).
//! - **Workers outlive the supervisor**: own session, no parent-death signal, and dropping the `Manager` detaches;
//!   only [`Manager::shutdown`] with `stop_all_on_exit` stops them.
//! - The supervisor keeps each worker's listening socket open across restarts, so connections made during a
//!   back-off queue in the backlog instead of being refused.

mod logs;
mod manager;
mod policy;
mod probe;
mod spec;
mod state;
mod worker;

use std::io;
use std::path::PathBuf;

use provisioning::UserId;

pub use logs::{log_path, tail_lines};
pub use manager::{Adoption, Manager, ManagerConfig, STOP_ON_EXIT, STOP_REQUESTED};
pub use policy::{Backoff, CrashWindow, Policy};
pub use spec::{Runtime, WorkerSpec};
pub use state::{Diagnosis, ExitCause, LifecycleEvent, WorkerRecord, WorkerState};

/// Everything the lifecycle reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("worker {user_id}: sandbox")]
    Sandbox {
        user_id: UserId,
        #[source]
        source: crate::sandbox::Error,
    },
    #[error("worker {user_id}: {op} {}", path.display())]
    Io {
        user_id: UserId,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("worker {user_id}: binding 127.0.0.1:{port}")]
    Bind {
        user_id: UserId,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("no worker is registered for {user_id}")]
    UnknownUser { user_id: UserId },
    #[error(
        "worker {user_id} is quarantined ({summary}); `wirebot worker restart {user_id}` clears it"
    )]
    Quarantined { user_id: UserId, summary: String },
    #[error("worker {user_id} did not become ready: {reason}")]
    NotReady { user_id: UserId, reason: String },
    #[error("worker {user_id} was stopped")]
    Stopped { user_id: UserId },
    #[error("worker {user_id} already has a managed worker; refusing a second one")]
    AlreadyManaged { user_id: UserId },
    #[error("supervisor setup: {op}")]
    Setup {
        op: &'static str,
        #[source]
        source: crate::sandbox::Error,
    },
    #[error("the task of worker {user_id} has ended")]
    TaskGone { user_id: UserId },
}
