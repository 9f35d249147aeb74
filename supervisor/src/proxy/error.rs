//! `proxy::Error`: what can go wrong setting the proxy up (bad config, bad route table, unreadable cron file).
//! Per-request failures are not errors of this kind: they are [`super::fault::Fault`]s answered to the client.

use std::path::PathBuf;

use provisioning::UserId;

/// A failure building or configuring the proxy; the message names the operation and the user or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ProxyConfig::validate` found problems; all of them are listed.
    #[error("invalid [proxy] config: {}", problems.join("; "))]
    InvalidConfig { problems: Vec<String> },
    /// A binding is malformed (e.g. a host pattern without `{id}`, a path prefix not starting with `/`).
    #[error("route for user {user_id}: invalid binding {binding:?}: {reason}")]
    InvalidBinding {
        user_id: UserId,
        binding: String,
        reason: &'static str,
    },
    /// Two routes claim the same host, path prefix or token.
    #[error("route for user {user_id}: {what} {value:?} is already bound to user {other}")]
    DuplicateBinding {
        user_id: UserId,
        other: UserId,
        what: &'static str,
        value: String,
    },
    /// A token hash is not 64 hex digits.
    #[error("route for user {user_id}: token hash is not 64 hex digits")]
    InvalidTokenHash { user_id: UserId },
    /// Reading `<user dir>/cron/jobs.json` failed.
    #[error("reading cron jobs of user {user_id} at {path}")]
    ReadCronJobs {
        user_id: UserId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `<user dir>/cron/jobs.json` is not the Clawdbot jobs document.
    #[error("parsing cron jobs of user {user_id} at {path}")]
    ParseCronJobs {
        user_id: UserId,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
