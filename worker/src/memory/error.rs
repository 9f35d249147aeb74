//! `memory::Error`: every failure of indexing, search, file access and embedding calls, naming the operation and path.

use std::path::PathBuf;

/// Errors of the memory index, its files and the embedding client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on a memory file, the index directory or a temp file failed.
    #[error("memory: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed while doing `op` on the index at `path`.
    #[error("memory index {path}: {op}")]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The embedding endpoint could not be reached or answered with a malformed body.
    #[error("memory embeddings: {op} {url}")]
    EmbedHttp {
        op: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The embedding endpoint answered with a non-success status (body trimmed, never echoes the request).
    #[error("memory embeddings: {url} answered {status}: {body}")]
    EmbedStatus {
        url: String,
        status: u16,
        body: String,
    },
    /// The embedding endpoint answered 2xx but the payload does not match the request.
    #[error("memory embeddings: {url}: {reason}")]
    EmbedShape { url: String, reason: String },
    /// A path asked for by a tool or caller is not one of the workspace memory files.
    #[error("memory: {path:?} is not a memory file ({reason})")]
    NotMemoryPath { path: String, reason: &'static str },
    /// The agent id cannot be used as a file name.
    #[error("memory: agent id {agent_id:?} is not a safe file name ([a-z0-9_-], 1..=64)")]
    BadAgentId { agent_id: String },
    /// A JSON value stored in the index could not be (de)serialised.
    #[error("memory index {path}: {op}")]
    Json {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A blocking index task panicked or was cancelled.
    #[error("memory index task {op} did not finish")]
    Task {
        op: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
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

    pub(crate) fn sql(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(rusqlite::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Sqlite { op, path, source }
    }
}
