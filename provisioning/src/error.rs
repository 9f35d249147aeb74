//! `provisioning::Error`: every failure names the operation and the path or user id it concerns.

use std::io;
use std::path::PathBuf;

use crate::UserId;

/// Everything provisioning can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Changing the owner of a path failed (running as root is required to give a tree to another uid).
    #[error("cannot chown {} to {uid}:{gid}", path.display())]
    Chown {
        /// The path.
        path: PathBuf,
        /// Wanted owner uid.
        uid: u32,
        /// Wanted owner gid.
        gid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A path that must be a real directory or regular file is something else (a symlink, a file, a device...).
    /// Provisioning never follows or replaces such a path.
    #[error("{} must be a {expected}, found {found}", path.display())]
    WrongFileType {
        /// The path.
        path: PathBuf,
        /// "directory" or "regular file".
        expected: &'static str,
        /// What is there instead.
        found: &'static str,
    },
    /// The user has no state directory.
    #[error("user {user} is not provisioned ({} does not exist)", path.display())]
    NotProvisioned {
        /// The user.
        user: UserId,
        /// Their (missing) state dir.
        path: PathBuf,
    },
    /// An existing `clawdbot.json` is neither JSON nor JSON5; it is left as it is.
    #[error("cannot parse {} as JSON or JSON5: {detail}", path.display())]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// The JSON5 parser's message (line and column).
        detail: String,
    },
    /// An existing `clawdbot.json` has a shape provisioning cannot merge into (e.g. `gateway` is not an object,
    /// or there is no `gateway.auth.token`).
    #[error("{}: {detail}", path.display())]
    ConfigShape {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        detail: String,
    },
    /// The embedded `templates/clawdbot.json` does not parse (a build defect, caught by a unit test).
    #[error("the embedded clawdbot.json template is not valid JSON")]
    Template(#[source] serde_json::Error),
    /// A provider key name or value cannot be written as a `KEY=value` line.
    #[error("provider key {name:?} is invalid: {reason}")]
    InvalidProviderKey {
        /// The env var name (never the value).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A member schedule setting (time zone, standup or reflection time) or the agent id it is for is malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidSchedule {
        /// Which setting, e.g. "standup time".
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// An existing `cron/jobs.json` cannot be merged into (not JSON, not version 1, `jobs` not an array, a job
    /// that is not an object); it is left as it is.
    #[error("{}: {detail}", path.display())]
    JobsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An archive to restore is not a single-user archive of the expected shape.
    #[error("archive {} is invalid: {detail}", path.display())]
    InvalidArchive {
        /// The archive file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        detail: String,
    },
    /// A just-written archive did not read back completely; the user dir was left in place.
    #[error("archive {} failed verification: wrote {written} entries, read back {read}", path.display())]
    ArchiveVerify {
        /// The archive file (removed again).
        path: PathBuf,
        /// Entries written.
        written: usize,
        /// Entries read back.
        read: usize,
    },
}

impl Error {
    /// `Error::Io` for `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
