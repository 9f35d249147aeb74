//! `cron::Error`: bad jobs and schedules (the caller's fault) and store failures (ours), each naming what failed.

use std::path::PathBuf;

/// Errors of the cron store, schedules and method handlers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on jobs.json, its backup or a run log failed.
    #[error("cron: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// jobs.json exists but is not a version-1 job file; it is left untouched.
    #[error("cron: {path} is not a valid jobs file")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Method params or a job did not match the schema (`what` says which field).
    #[error("cron: invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A cron expression or time zone could not be parsed.
    #[error("cron: invalid schedule {expr:?}: {reason}")]
    Schedule { expr: String, reason: String },
    /// No job has this id.
    #[error("cron: no job with id {id:?}")]
    UnknownJob { id: String },
    /// The method name is not a cron method.
    #[error("cron: unknown method {method:?}")]
    UnknownMethod { method: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// The gateway protocol error code for this error: the caller's mistakes are `INVALID_REQUEST`,
    /// storage failures `UNAVAILABLE`.
    pub fn protocol_code(&self) -> &'static str {
        match self {
            Error::Io { .. } | Error::Corrupt { .. } => "UNAVAILABLE",
            Error::Invalid { .. }
            | Error::Schedule { .. }
            | Error::UnknownJob { .. }
            | Error::UnknownMethod { .. } => "INVALID_REQUEST",
        }
    }
}
