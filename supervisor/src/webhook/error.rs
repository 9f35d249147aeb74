//! The webhook module's one error enum and its only HTTP mapping: status code, `code`, `Retry-After` and the
//! `application/problem+json` body. Causes are logged once here and never sent; details never echo secrets or payloads.

use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong loading webhook secrets, verifying a delivery, or storing it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading webhook secrets file {path}")]
    SecretsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "webhook secrets file {path} has mode {mode:o}; it must not be accessible by group or others (chmod 600)"
    )]
    SecretsPermissions { path: PathBuf, mode: u32 },
    #[error("parsing webhook secrets file {path}")]
    SecretsParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("webhook secrets file {path}: {reason}")]
    SecretsInvalid { path: PathBuf, reason: String },
    #[error("malformed webhook secret: {reason}")]
    MalformedSecret { reason: &'static str },

    #[error("method not allowed: use POST")]
    MethodNotAllowed,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("reading the request body")]
    BodyRead {
        #[source]
        source: axum::BoxError,
    },
    #[error("invalid signature: {reason}")]
    InvalidSignature { reason: &'static str },
    #[error(
        "webhook-timestamp is {skew_secs} s away from now (tolerance {tolerance_secs} s); check the sender's clock"
    )]
    TimestampOutOfWindow { skew_secs: i64, tolerance_secs: i64 },
    #[error("body is not valid JSON: {source}")]
    MalformedJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("{pointer}: {reason}")]
    InvalidPayload { pointer: String, reason: String },
    #[error("webhook-id {webhook_id} was already used with a different body")]
    IdempotencyKeyReused { webhook_id: String },
    #[error("identity conflict for user {user_id}: {reason}")]
    IdentityConflict {
        user_id: String,
        reason: &'static str,
    },

    #[error("too many webhook deliveries in flight")]
    Overloaded,
    #[error("the webhook store is busy")]
    StoreBusy {
        #[source]
        source: rusqlite::Error,
    },
    #[error("the webhook store did not answer in time")]
    StoreTimeout,
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    #[error("opening the webhook store {path}")]
    StoreOpen {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("webhook store: {op}")]
    Store {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("webhook store task failed")]
    StoreTask {
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// Wraps a SQLite error from `op`, classifying lock contention as a temporary `StoreBusy` (503).
    pub(crate) fn store(op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Error::StoreBusy { source }
            }
            _ => Error::Store { op, source },
        }
    }

    /// The HTTP status, the stable `code` and a `Retry-After` in seconds for temporary failures.
    pub fn classify(&self) -> (StatusCode, &'static str, Option<u32>) {
        match self {
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
            Error::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            Error::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None)
            }
            Error::BodyRead { .. } => (StatusCode::BAD_REQUEST, "body_read_failed", None),
            Error::InvalidSignature { .. } => (StatusCode::UNAUTHORIZED, "invalid_signature", None),
            Error::TimestampOutOfWindow { .. } => {
                (StatusCode::UNAUTHORIZED, "timestamp_out_of_window", None)
            }
            Error::MalformedJson { .. } => (StatusCode::BAD_REQUEST, "malformed_json", None),
            Error::InvalidPayload { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", None)
            }
            Error::IdempotencyKeyReused { .. } => {
                (StatusCode::CONFLICT, "idempotency_key_reused", None)
            }
            Error::IdentityConflict { .. } => (StatusCode::CONFLICT, "identity_conflict", None),
            Error::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded", Some(1)),
            Error::StoreBusy { .. } | Error::StoreTimeout => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_busy", Some(1))
            }
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", Some(5)),
            Error::SecretsRead { .. }
            | Error::SecretsPermissions { .. }
            | Error::SecretsParse { .. }
            | Error::SecretsInvalid { .. }
            | Error::MalformedSecret { .. }
            | Error::StoreOpen { .. }
            | Error::Store { .. }
            | Error::StoreTask { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

fn title(code: &str) -> &'static str {
    match code {
        "method_not_allowed" => "Method not allowed",
        "unsupported_media_type" => "Unsupported media type",
        "payload_too_large" => "Payload too large",
        "body_read_failed" => "Body could not be read",
        "invalid_signature" => "Invalid signature",
        "timestamp_out_of_window" => "Timestamp out of window",
        "malformed_json" => "Malformed JSON",
        "invalid_payload" => "Invalid payload",
        "idempotency_key_reused" => "Idempotency key reused",
        "identity_conflict" => "Identity conflict",
        "overloaded" => "Too many requests",
        "store_busy" => "Temporarily unavailable",
        "shutting_down" => "Shutting down",
        _ => "Internal error",
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, retry_after) = self.classify();
        let detail = if status.is_server_error() && retry_after.is_none() {
            tracing::error!(error = %DisplayChain(&self), "webhook delivery failed inside the supervisor");
            "internal error; see the supervisor log".to_owned()
        } else {
            if retry_after.is_some() {
                tracing::warn!(error = %DisplayChain(&self), "webhook delivery deferred");
            }
            self.to_string()
        };
        let body = serde_json::json!({
            "type": format!("https://wirebot/errors/{code}"),
            "title": title(code),
            "status": status.as_u16(),
            "code": code,
            "detail": detail,
        });
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

/// Formats an error with its `source` chain on one line, for logs.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}
