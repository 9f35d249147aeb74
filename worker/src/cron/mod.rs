//! Cron engine, compatible with Clawdbot's `cron/jobs.json`: the job model, pure schedule math (at / every /
//! cron + time zone, heartbeat interval), the atomic store and run logs, the runner task, the `cron.*` method
//! handlers, and the agent heartbeat. The gateway supplies the executor (an agent turn or a system event).
//! The member's default standup and reflection jobs are written by `provisioning::schedule`.

mod error;
pub mod heartbeat;
mod job;
pub mod methods;
mod runner;
mod schedule;
mod store;

pub use error::{Error, Result};
pub use job::{
    Job, JobState, JobsFile, NewJob, Payload, RunStatus, Schedule, SessionTarget, WakeMode,
};
pub use runner::{CronAction, CronEvent, CronService, Executor, NotRun, RunOutcome};
pub use schedule::{
    CronExpr, DEFAULT_HEARTBEAT, heartbeat_interval, next_heartbeat_at_ms, next_run_at_ms,
    parse_cron,
};
pub use store::{CronStore, RunLogEntry};
