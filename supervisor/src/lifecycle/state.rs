//! The worker state machine's states, the transition events the daemon audits, and the persisted worker record.

use provisioning::UserId;
use serde::{Deserialize, Serialize};

use crate::sandbox::CgroupSet;

/// One worker's state. Starting → Ready → Running → (crash) Backoff → Starting …; ≥ N crashes in the window →
/// Quarantined (no restarts until `restart`); stop: Stopping → Stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Starting,
    Ready,
    Running,
    Backoff,
    Quarantined,
    Stopping,
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Running => "running",
            WorkerState::Backoff => "backoff",
            WorkerState::Quarantined => "quarantined",
            WorkerState::Stopping => "stopping",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a worker instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitCause {
    /// Exited by itself with this code.
    Code { code: i32 },
    /// Killed by a signal (e.g. SIGKILL from the OOM killer or an operator).
    Signal { signal: String },
    /// An adopted worker (not our child) exited: the kernel keeps its status from us.
    Unknown,
    /// No readiness within the start timeout (it was killed).
    StartTimeout,
    /// Consecutive health checks failed (it was killed).
    HealthFailed { detail: String },
    /// The sandbox could not start it at all.
    SpawnFailed { error: String },
}

impl std::fmt::Display for ExitCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitCause::Code { code } => write!(f, "exit code {code}"),
            ExitCause::Signal { signal } => write!(f, "killed by {signal}"),
            ExitCause::Unknown => f.write_str("exited (status unknown: adopted)"),
            ExitCause::StartTimeout => f.write_str("not ready within the start timeout"),
            ExitCause::HealthFailed { detail } => write!(f, "health checks failed: {detail}"),
            ExitCause::SpawnFailed { error } => write!(f, "could not start: {error}"),
        }
    }
}

/// What a quarantined (or last crashed) worker leaves behind for the operator (`wirebot user show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub cause: ExitCause,
    /// OOM kills inside the worker's cgroup during that instance.
    pub oom_kills: u64,
    /// Crashes inside the crash window when this was recorded.
    pub crashes_in_window: u32,
    /// The last lines of the worker's log (up to 200).
    pub log_tail: Vec<String>,
    /// Unix seconds.
    pub at: u64,
}

impl Diagnosis {
    /// One line: cause, OOM kills, crash count.
    pub fn summary(&self) -> String {
        let oom = if self.oom_kills > 0 {
            format!(", {} OOM kill(s)", self.oom_kills)
        } else {
            String::new()
        };
        format!(
            "{}{oom}, {} crash(es) in the window",
            self.cause, self.crashes_in_window
        )
    }
}

/// The persisted row of one worker (`workers(user_id, pid, pid_start_time, cgroup, state, restarts, diagnosis_json)`),
/// emitted with every transition; [`crate::lifecycle::Manager::adopt`] takes it back after a supervisor restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub user_id: UserId,
    pub pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat`: pid + start time name one process (a reused pid has another start time).
    pub pid_start_time: Option<u64>,
    /// The worker's cgroup in every hierarchy (serialise with serde_json for the `cgroup` column).
    pub cgroup: Option<CgroupSet>,
    pub port: u16,
    pub state: WorkerState,
    /// Automatic restarts since the last explicit start/restart.
    pub restarts: u32,
    pub diagnosis: Option<Diagnosis>,
}

/// One state transition, for the `events` audit log and the `workers` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub user_id: UserId,
    pub from: WorkerState,
    pub to: WorkerState,
    /// Human-readable reason ("ready in 12 ms", "exit code 3", "SIGTERM ignored, SIGKILL after 5 s", …).
    pub detail: String,
    /// The record as of this transition (upsert it).
    pub record: WorkerRecord,
}
