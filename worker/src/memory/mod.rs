//! Markdown memory: the workspace's MEMORY.md and `memory/**/*.md` indexed into `<state>/memory/<agentId>.sqlite`
//! (Clawdbot's schema: FTS5 + sqlite-vec), hybrid search, safe reads and atomic appends, and the agent tools
//! (memory_*, cron_*, skill_read) the model router calls. Knows nothing of the gateway or the protocol.

pub(crate) mod atomic;
mod chunk;
mod config;
mod embed;
mod error;
mod files;
mod hamming;
mod index;
mod keywords;
mod rotation;
mod schema;
mod search;
pub mod tools;
mod vec_ext;
mod vectors;

pub use chunk::{Chunk, chunk_markdown};
pub use config::{
    ChunkingConfig, EmbeddingEndpoint, HybridConfig, MemoryConfig, QueryConfig, RemoteConfig,
    Secret, StoreConfig,
};
pub use error::{Error, Result};
pub use files::{daily_log_path, session_start_context};
pub use index::{IndexStatus, MemoryIndex, SyncStats};
pub use search::{Hit, build_fts_query};
