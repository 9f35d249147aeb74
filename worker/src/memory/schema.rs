//! The index's SQLite schema, identical to Clawdbot's `memory-schema.js`, and the `memory_index_meta_v1` record.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub(crate) const META_KEY: &str = "memory_index_meta_v1";

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
  path TEXT PRIMARY KEY,
  source TEXT NOT NULL DEFAULT 'memory',
  hash TEXT NOT NULL,
  mtime INTEGER NOT NULL,
  size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
  id TEXT PRIMARY KEY,
  path TEXT NOT NULL,
  source TEXT NOT NULL DEFAULT 'memory',
  start_line INTEGER NOT NULL,
  end_line INTEGER NOT NULL,
  hash TEXT NOT NULL,
  model TEXT NOT NULL,
  text TEXT NOT NULL,
  embedding TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS embedding_cache (
  provider TEXT NOT NULL,
  model TEXT NOT NULL,
  provider_key TEXT NOT NULL,
  hash TEXT NOT NULL,
  embedding TEXT NOT NULL,
  dims INTEGER,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (provider, model, provider_key, hash)
);
CREATE INDEX IF NOT EXISTS idx_embedding_cache_updated_at ON embedding_cache(updated_at);
CREATE INDEX IF NOT EXISTS idx_chunks_path ON chunks(path);
CREATE INDEX IF NOT EXISTS idx_chunks_source ON chunks(source);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
  text,
  id UNINDEXED,
  path UNINDEXED,
  source UNINDEXED,
  model UNINDEXED,
  start_line UNINDEXED,
  end_line UNINDEXED
);
";

/// What the index was built with; any difference except `vectorDims` forces a full reindex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexMeta {
    pub(crate) model: String,
    pub(crate) provider: String,
    pub(crate) provider_key: String,
    pub(crate) chunk_tokens: usize,
    pub(crate) chunk_overlap: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vector_dims: Option<usize>,
}

impl IndexMeta {
    pub(crate) fn same_build(&self, other: &IndexMeta) -> bool {
        self.model == other.model
            && self.provider == other.provider
            && self.provider_key == other.provider_key
            && self.chunk_tokens == other.chunk_tokens
            && self.chunk_overlap == other.chunk_overlap
    }
}

pub(crate) fn read_meta(conn: &Connection) -> rusqlite::Result<Option<IndexMeta>> {
    let raw: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [META_KEY], |r| {
            r.get(0)
        })
        .optional()?;
    // An unreadable record is treated as absent: the caller rebuilds.
    Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
}

pub(crate) fn write_meta(conn: &Connection, meta: &IndexMeta) -> rusqlite::Result<()> {
    let value = serde_json::to_string(meta)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.execute("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [META_KEY, &value])?;
    Ok(())
}

pub(crate) fn vec_table_exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'chunks_vec'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

pub(crate) fn create_vec_table(conn: &Connection, dims: usize) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vec USING vec0(id TEXT PRIMARY KEY, embedding FLOAT[{dims}]);"))
}

/// Empties everything derived from the files (the embedding cache stays: it is keyed by provider and model).
pub(crate) fn clear_index(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("DELETE FROM files; DELETE FROM chunks; DELETE FROM chunks_fts; DROP TABLE IF EXISTS chunks_vec;")
}
