//! `worker::Error`: every failure the worker library reports, naming the operation and the path it concerned.

use std::path::PathBuf;

/// One error type for the worker library; `main.rs` adds context with anyhow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path} as JSON5: {message}")]
    ConfigSyntax { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    ConfigInvalid { path: PathBuf, message: String },
    #[error("config {path}: missing environment variable {var} (referenced as ${{{var}}})")]
    MissingEnvVar { path: PathBuf, var: String },
    #[error("env file {path} line {line}: expected KEY=value")]
    EnvFileSyntax { path: PathBuf, line: usize },
    #[error("parse {path} as JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid session key {key:?}: {reason}")]
    SessionKey { key: String, reason: &'static str },
    #[error("invalid agent id {id:?}: expected [a-z0-9][a-z0-9_-]{{0,63}}")]
    AgentId { id: String },
    #[error("listening socket from the parent (LISTEN_FDS): {message}")]
    ListenFd { message: String },
    #[error("bind 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("build the HTTP client for model providers")]
    HttpClient(#[source] reqwest::Error),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
