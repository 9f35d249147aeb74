//! `supervisor::Error`, the crate's one error type, and its one `IntoResponse`: the table from failure to HTTP status and
//! `application/problem+json` body. Causes of 5xx are logged here once and never sent.

use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use provisioning::UserId;
use serde::Serialize;

use crate::config::ConfigErrors;

/// Everything that can go wrong in the supervisor. Variants name the operation and carry the user id or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(ConfigErrors),

    #[error("registry: cannot {op}")]
    Registry {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "registry schema version {found} is newer than this binary knows ({known}); upgrade wirebot"
    )]
    RegistryTooNew { found: i64, known: i64 },

    #[error("user {user} already exists")]
    UserExists { user: UserId },

    #[error("user {user} is still being provisioned; retry when the create has finished")]
    UserBusy { user: UserId },

    #[error("user {user} does not exist")]
    UserNotFound { user: UserId },

    #[error("{kind} binding {value:?} is already taken")]
    BindingTaken { kind: &'static str, value: String },

    #[error("no free tenant uid left in {first}..={last} (see [uids] in wirebot.toml)")]
    UidsExhausted { first: u32, last: u32 },

    #[error("no free worker port left in {first}..={last} (see [ports] in wirebot.toml)")]
    PortsExhausted { first: u16, last: u16 },

    #[error("cannot {op} for user {user}")]
    Provisioning {
        op: &'static str,
        user: UserId,
        #[source]
        source: provisioning::Error,
    },

    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("another wirebot daemon is running: {detail}")]
    AlreadyRunning { detail: String },

    #[error("malformed request body: {detail}")]
    Malformed { detail: String },

    #[error("invalid field {pointer}: {detail}")]
    InvalidField { pointer: String, detail: String },

    #[error("unsupported content type {found:?}: send application/json")]
    UnsupportedMediaType { found: String },

    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    #[error("missing or wrong bearer token")]
    Unauthorized,

    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },

    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },

    #[error("a blocking task failed")]
    Join(#[source] tokio::task::JoinError),

    #[error("the worker of {user} is not available: {reason}")]
    WorkerUnavailable { user: UserId, reason: String },

    #[error("no operation {id} (operation ids come from webhook answers; see `wirebot op list`)")]
    OperationNotFound { id: String },

    #[error("user {user} has no worker (shared members and unknown users have none)")]
    NoWorker { user: UserId },

    #[error("this daemon runs no workers (it is not running as root)")]
    WorkersDisabled,

    #[error("cannot set up worker supervision")]
    WorkerSetup {
        #[source]
        source: crate::lifecycle::Error,
    },

    #[error("webhook store")]
    Webhook {
        #[source]
        source: crate::webhook::Error,
    },

    #[error("cannot rebuild the proxy route table")]
    Routes {
        #[source]
        source: crate::proxy::Error,
    },
}

impl Error {
    /// Shorthand for a 422 on one field.
    pub fn invalid(pointer: &str, detail: impl Into<String>) -> Error {
        Error::InvalidField {
            pointer: pointer.to_owned(),
            detail: detail.into(),
        }
    }

    /// Status, problem slug and title: the one table of HTTP semantics.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Error::Malformed { .. } => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            Error::InvalidField { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                "Invalid field",
            ),
            Error::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported content type",
            ),
            Error::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Error::UserNotFound { .. } => {
                (StatusCode::NOT_FOUND, "user-not-found", "User not found")
            }
            Error::NoRoute { .. } => (StatusCode::NOT_FOUND, "no-route", "No such endpoint"),
            Error::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Error::UserBusy { .. } => (StatusCode::CONFLICT, "user-busy", "User is busy"),
            Error::UserExists { .. } => {
                (StatusCode::CONFLICT, "user-exists", "User already exists")
            }
            Error::BindingTaken { .. } => (
                StatusCode::CONFLICT,
                "binding-taken",
                "Binding already taken",
            ),
            Error::UidsExhausted { .. } | Error::PortsExhausted { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity-exhausted",
                "Capacity exhausted",
            ),
            Error::Provisioning { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "provisioning-failed",
                "Provisioning failed",
            ),
            Error::WorkerUnavailable { .. } | Error::WorkersDisabled => (
                StatusCode::SERVICE_UNAVAILABLE,
                "worker-unavailable",
                "Worker unavailable",
            ),
            Error::NoWorker { .. } => (StatusCode::NOT_FOUND, "no-worker", "No such worker"),
            Error::OperationNotFound { .. } => (
                StatusCode::NOT_FOUND,
                "operation-not-found",
                "Operation not found",
            ),
            Error::Config(_)
            | Error::Routes { .. }
            | Error::Webhook { .. }
            | Error::WorkerSetup { .. }
            | Error::Registry { .. }
            | Error::RegistryTooNew { .. }
            | Error::Io { .. }
            | Error::AlreadyRunning { .. }
            | Error::Join(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The message with its whole `#[source]` chain, for logs and operator-facing details.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            source = cause.source();
        }
        out
    }
}

/// The `application/problem+json` body (RFC 9457) plus `pointer` for 422s.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.classify();
        let detail = match &self {
            // Operator-facing and free of secrets: the provisioning chain names the step and the path that failed.
            Error::Provisioning { .. } => {
                tracing::error!(error = %self.chain(), "request failed");
                self.chain()
            }
            _ if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE => {
                tracing::error!(error = %self.chain(), "request failed");
                "internal error; the daemon log has the cause".to_owned()
            }
            _ => self.to_string(),
        };
        let pointer = match &self {
            Error::InvalidField { pointer, .. } => Some(pointer.clone()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("urn:wirebot:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail,
            pointer,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
