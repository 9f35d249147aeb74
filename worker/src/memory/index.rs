//! `MemoryIndex`: one agent's SQLite index: open (schema, meta check), incremental sync from the workspace files,
//! hybrid search, reads and appends. SQLite work runs on tokio's blocking pool; embedding calls are async.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use chrono::NaiveDate;
use rusqlite::{Connection, OptionalExtension, params};

use super::chunk::{Chunk, chunk_id, chunk_markdown, sha256_hex};
use super::config::MemoryConfig;
use super::embed::{Embedder, normalize, to_blob};
use super::error::{Error, Result};
use super::files;
use super::keywords::KeywordIndex;
use super::schema::{self, IndexMeta};
use super::search::{Candidate, Hit, Ranking, build_fts_query, merge, query_tokens};
use super::vec_ext;
use super::vectors::VectorCache;

const SOURCE: &str = "memory";
const FTS_ONLY_MODEL: &str = "fts-only";

/// What one `sync` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStats {
    /// Files whose content changed (or are new) and were re-chunked.
    pub files_indexed: usize,
    /// Files seen with the same size, mtime or hash as indexed.
    pub files_unchanged: usize,
    /// Files gone from the workspace and removed from the index.
    pub files_removed: usize,
    pub chunks_indexed: usize,
    /// Embeddings fetched from the provider / found in the embedding cache.
    pub embeddings_fetched: usize,
    pub embeddings_cached: usize,
    /// The whole index was rebuilt (provider, model or chunking changed).
    pub full_reindex: bool,
}

/// Counts for `memory status`-like views.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexStatus {
    pub db_path: PathBuf,
    pub workspace: PathBuf,
    pub provider: String,
    pub model: String,
    pub files: usize,
    pub chunks: usize,
    pub vector_dims: Option<usize>,
}

/// A handle to one agent's memory index; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct MemoryIndex {
    inner: Arc<Inner>,
}

struct Inner {
    db_path: PathBuf,
    workspace: PathBuf,
    config: MemoryConfig,
    embedder: Option<Embedder>,
    conn: Mutex<Connection>,
    /// A second connection for searches: with WAL it reads the last committed state while a sync writes.
    reader: Mutex<Connection>,
    /// Bumped after every committed sync; the vector cache reloads when it lags.
    generation: std::sync::atomic::AtomicU64,
    vectors: Mutex<Option<Arc<VectorCache>>>,
    /// The in-RAM BM25 copy and the generation it was built at (`None` inside: FTS5 answers, see keywords.rs).
    keywords: Mutex<Option<(u64, Option<Arc<KeywordIndex>>)>>,
    /// One sync at a time; appends also take it so a read-modify-write never interleaves.
    sync_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for MemoryIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryIndex")
            .field("db_path", &self.inner.db_path)
            .field("workspace", &self.inner.workspace)
            .field("embeddings", &self.inner.embedder.is_some())
            .finish()
    }
}

/// Files to (re)index, computed without holding the connection while embedding.
struct Plan {
    changed: Vec<ChangedFile>,
    removed: Vec<String>,
    unchanged: usize,
    full_reindex: bool,
}

struct ChangedFile {
    rel: String,
    hash: String,
    mtime: i64,
    size: i64,
    chunks: Vec<(String, Chunk)>,
    /// Same content, new mtime/size: only the `files` row is updated.
    touched_only: bool,
    /// The index holds rows of an older version of this file, to delete first. FTS5 can find a file's rows only by
    /// scanning the whole table (`path` is an unindexed column in Clawdbot's schema), so a new file skips that.
    was_indexed: bool,
}

fn valid_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl MemoryIndex {
    /// Opens (creating if needed) `<state_dir>/memory/<agent_id>.sqlite`, or `memorySearch.store.path` with
    /// `{agentId}` replaced, and clears it when it was built with another provider, model or chunking.
    /// Blocking (a few ms); call it before serving or from `spawn_blocking`.
    pub fn open(
        state_dir: &Path,
        agent_id: &str,
        workspace: &Path,
        config: MemoryConfig,
    ) -> Result<Self> {
        if !valid_agent_id(agent_id) {
            return Err(Error::BadAgentId {
                agent_id: agent_id.to_owned(),
            });
        }
        let db_path = match &config.store.path {
            Some(p) if !p.trim().is_empty() => PathBuf::from(p.replace("{agentId}", agent_id)),
            _ => state_dir.join("memory").join(format!("{agent_id}.sqlite")),
        };
        if let Some(dir) = db_path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create dir", dir))?;
        }
        let embedder = config.embedding_endpoint().map(Embedder::new).transpose()?;
        vec_ext::register();
        let conn = Connection::open(&db_path).map_err(Error::sql("open", &db_path))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600));
        }
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )
        .map_err(Error::sql("set pragmas", &db_path))?;
        conn.execute_batch(schema::SCHEMA)
            .map_err(Error::sql("create schema", &db_path))?;
        let reader = Connection::open(&db_path).map_err(Error::sql("open reader", &db_path))?;
        reader
            .execute_batch("PRAGMA busy_timeout=5000;")
            .map_err(Error::sql("set pragmas", &db_path))?;
        tracing::debug!(db = %db_path.display(), agent_id, embeddings = embedder.is_some(), "memory index open");
        Ok(MemoryIndex {
            inner: Arc::new(Inner {
                db_path,
                workspace: workspace.to_path_buf(),
                config,
                embedder,
                conn: Mutex::new(conn),
                reader: Mutex::new(reader),
                generation: std::sync::atomic::AtomicU64::new(0),
                vectors: Mutex::new(None),
                keywords: Mutex::new(None),
                sync_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    pub fn workspace(&self) -> &Path {
        &self.inner.workspace
    }

    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// True when searches use embeddings (an endpoint is configured), false for BM25 only.
    pub fn has_embeddings(&self) -> bool {
        self.inner.embedder.is_some()
    }

    fn wanted_meta(&self) -> IndexMeta {
        match &self.inner.embedder {
            Some(e) => IndexMeta {
                model: e.model().to_owned(),
                provider: e.provider().to_owned(),
                provider_key: e.provider_key(),
                chunk_tokens: self.inner.config.chunking.tokens,
                chunk_overlap: self.inner.config.chunking.overlap,
                vector_dims: None,
            },
            None => IndexMeta {
                model: FTS_ONLY_MODEL.to_owned(),
                provider: "none".to_owned(),
                provider_key: "none".to_owned(),
                chunk_tokens: self.inner.config.chunking.tokens,
                chunk_overlap: self.inner.config.chunking.overlap,
                vector_dims: None,
            },
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|source| Error::Task { op, source })?
    }

    /// Brings the index up to date with the workspace: new and changed files are re-chunked (and embedded,
    /// through the cache), deleted files are dropped, and a provider/model/chunking change rebuilds everything.
    pub async fn sync(&self) -> Result<SyncStats> {
        let _guard = self.inner.sync_lock.lock().await;
        let wanted = self.wanted_meta();
        let plan = {
            let wanted = wanted.clone();
            self.blocking("plan sync", move |inner| inner.plan(&wanted))
                .await?
        };
        let mut stats = SyncStats {
            files_indexed: plan.changed.iter().filter(|f| !f.touched_only).count(),
            files_unchanged: plan.unchanged,
            files_removed: plan.removed.len(),
            chunks_indexed: plan.changed.iter().map(|f| f.chunks.len()).sum(),
            full_reindex: plan.full_reindex,
            ..SyncStats::default()
        };
        let embeddings = match &self.inner.embedder {
            Some(embedder) if !plan.changed.is_empty() => {
                let (map, fetched, cached) = self.embed_chunks(embedder, &plan).await?;
                stats.embeddings_fetched = fetched;
                stats.embeddings_cached = cached;
                Some(map)
            }
            _ => None,
        };
        self.blocking("write index", move |inner| {
            inner.apply(&wanted, plan, embeddings)
        })
        .await?;
        tracing::info!(
            db = %self.inner.db_path.display(),
            indexed = stats.files_indexed,
            removed = stats.files_removed,
            chunks = stats.chunks_indexed,
            fetched = stats.embeddings_fetched,
            cached = stats.embeddings_cached,
            full = stats.full_reindex,
            "memory sync"
        );
        Ok(stats)
    }

    /// Embeddings for every distinct chunk hash in the plan: from the cache when present, else fetched and cached.
    async fn embed_chunks(
        &self,
        embedder: &Embedder,
        plan: &Plan,
    ) -> Result<(HashMap<String, Vec<f32>>, usize, usize)> {
        let mut texts: HashMap<String, String> = HashMap::new();
        for file in &plan.changed {
            for (_, chunk) in &file.chunks {
                texts
                    .entry(chunk.hash.clone())
                    .or_insert_with(|| chunk.text.clone());
            }
        }
        let hashes: Vec<String> = texts.keys().cloned().collect();
        let (provider, model, key) = (
            embedder.provider().to_owned(),
            embedder.model().to_owned(),
            embedder.provider_key(),
        );
        let cached = {
            let (provider, model, key) = (provider.clone(), model.clone(), key.clone());
            self.blocking("read embedding cache", move |inner| {
                inner.cached_embeddings(&provider, &model, &key, &hashes)
            })
            .await?
        };
        let missing: Vec<(String, String)> = texts
            .into_iter()
            .filter(|(h, _)| !cached.contains_key(h))
            .collect();
        let inputs: Vec<String> = missing.iter().map(|(_, t)| t.clone()).collect();
        let vectors = embedder.embed(&inputs).await?;
        let fresh: Vec<(String, Vec<f32>)> =
            missing.into_iter().map(|(h, _)| h).zip(vectors).collect();
        let fetched = fresh.len();
        let cached_count = cached.len();
        let mut all = cached;
        if !fresh.is_empty() {
            let to_store = fresh.clone();
            self.blocking("write embedding cache", move |inner| {
                inner.store_embeddings(&provider, &model, &key, &to_store)
            })
            .await?;
        }
        all.extend(fresh);
        Ok((all, fetched, cached_count))
    }

    /// Up to `maxResults` chunks for `query`, best first: hybrid when embeddings are configured (falling back to
    /// BM25 with a warning if the embedding call fails), BM25 alone otherwise.
    pub async fn search(&self, query: &str) -> Result<Vec<Hit>> {
        let query_vector = match &self.inner.embedder {
            Some(embedder) if !query.trim().is_empty() => {
                match embedder.embed(&[query.to_owned()]).await {
                    Ok(mut v) => v.pop(),
                    Err(error) => {
                        tracing::warn!(%error, "memory search: embedding the query failed; answering from BM25 only");
                        None
                    }
                }
            }
            _ => None,
        };
        self.search_with_vector(query, query_vector).await
    }

    /// `search` with the query embedding already computed (`None` = keyword only). Benchmarks and callers that
    /// batch their own embeddings use it.
    pub async fn search_with_vector(
        &self,
        query: &str,
        query_vector: Option<Vec<f32>>,
    ) -> Result<Vec<Hit>> {
        let query = query.to_owned();
        self.blocking("search", move |inner| inner.search(&query, query_vector))
            .await
    }

    /// `lines` lines of a memory file from 1-based `from_line`; only MEMORY.md / memory.md and `memory/**/*.md`
    /// inside the workspace are readable (no `..`, no symlink escapes).
    pub fn get(
        &self,
        path: &str,
        from_line: Option<usize>,
        lines: Option<usize>,
    ) -> Result<String> {
        files::read_lines(&self.inner.workspace, path, from_line, lines)
    }

    /// Appends `text` as a paragraph to `memory/YYYY-MM-DD.md` (created with a `# YYYY-MM-DD` heading), rewriting
    /// the file atomically; returns its absolute path. Run `sync` afterwards to make it searchable.
    pub async fn append_daily(&self, date: NaiveDate, text: &str) -> Result<PathBuf> {
        let rel = files::daily_log_path(date);
        let header = format!("# {}\n", date.format("%Y-%m-%d"));
        self.append(rel, header, text).await
    }

    /// Appends `text` to the curated long-term file (MEMORY.md, or memory.md when only that exists).
    pub async fn append_long_term(&self, text: &str) -> Result<PathBuf> {
        let existing = files::LONG_TERM_FILES
            .iter()
            .find(|n| self.inner.workspace.join(n).is_file());
        let rel = existing
            .copied()
            .unwrap_or(files::LONG_TERM_FILES[0])
            .to_owned();
        self.append(rel, "# Long-term memory\n".to_owned(), text)
            .await
    }

    async fn append(&self, rel: String, header: String, text: &str) -> Result<PathBuf> {
        let _guard = self.inner.sync_lock.lock().await;
        let text = text.to_owned();
        self.blocking("append", move |inner| {
            files::append_paragraph(&inner.workspace, &rel, &header, &text)
        })
        .await
    }

    /// Files and chunks currently indexed.
    pub fn status(&self) -> Result<IndexStatus> {
        let inner = &self.inner;
        let conn = inner.lock();
        let count = |sql: &str| -> Result<usize> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(Error::sql("count", &inner.db_path))
        };
        let meta = schema::read_meta(&conn).map_err(Error::sql("read meta", &inner.db_path))?;
        let wanted = self.wanted_meta();
        Ok(IndexStatus {
            db_path: inner.db_path.clone(),
            workspace: inner.workspace.clone(),
            provider: wanted.provider,
            model: wanted.model,
            files: count("SELECT count(*) FROM files")?,
            chunks: count("SELECT count(*) FROM chunks")?,
            vector_dims: meta.and_then(|m| m.vector_dims),
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back), so keep going.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_lock(&self) -> MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn plan(&self, wanted: &IndexMeta) -> Result<Plan> {
        let conn = self.lock();
        let stored = schema::read_meta(&conn).map_err(Error::sql("read meta", &self.db_path))?;
        let full_reindex = stored.as_ref().is_none_or(|m| !m.same_build(wanted));
        let mut indexed: HashMap<String, (String, i64, i64)> = HashMap::new();
        if !full_reindex {
            let mut stmt = conn
                .prepare("SELECT path, hash, mtime, size FROM files")
                .map_err(Error::sql("read files", &self.db_path))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        (
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ),
                    ))
                })
                .map_err(Error::sql("read files", &self.db_path))?;
            for row in rows {
                let (path, v) = row.map_err(Error::sql("read files", &self.db_path))?;
                indexed.insert(path, v);
            }
        }
        drop(conn);

        let mut plan = Plan {
            changed: Vec::new(),
            removed: Vec::new(),
            unchanged: 0,
            full_reindex,
        };
        let mut seen = HashSet::new();
        for (rel, abs) in files::list_memory_files(&self.workspace)? {
            let meta = std::fs::metadata(&abs).map_err(Error::io("stat", &abs))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
            seen.insert(rel.clone());
            if let Some((_, old_mtime, old_size)) = indexed.get(&rel)
                && *old_mtime == mtime
                && *old_size == size
            {
                plan.unchanged += 1;
                continue;
            }
            let bytes = std::fs::read(&abs).map_err(Error::io("read", &abs))?;
            let hash = sha256_hex(&bytes);
            if indexed
                .get(&rel)
                .is_some_and(|(old_hash, _, _)| *old_hash == hash)
            {
                // Touched but not changed: only the stat fields move.
                plan.changed.push(ChangedFile {
                    rel,
                    hash,
                    mtime,
                    size,
                    chunks: Vec::new(),
                    touched_only: true,
                    was_indexed: true,
                });
                plan.unchanged += 1;
                continue;
            }
            let content = String::from_utf8_lossy(&bytes);
            let chunks = chunk_markdown(
                &content,
                self.config.chunking.tokens,
                self.config.chunking.overlap,
            )
            .into_iter()
            .filter(|c| !c.text.trim().is_empty())
            .map(|c| (chunk_id(SOURCE, &rel, &c, &wanted.model), c))
            .collect();
            let was_indexed = indexed.contains_key(&rel);
            plan.changed.push(ChangedFile {
                rel,
                hash,
                mtime,
                size,
                chunks,
                touched_only: false,
                was_indexed,
            });
        }
        plan.removed = indexed
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        plan.removed.sort();
        Ok(plan)
    }

    fn cached_embeddings(
        &self,
        provider: &str,
        model: &str,
        key: &str,
        hashes: &[String],
    ) -> Result<HashMap<String, Vec<f32>>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT embedding FROM embedding_cache WHERE provider = ?1 AND model = ?2 AND provider_key = ?3 AND hash = ?4")
            .map_err(Error::sql("read embedding cache", &self.db_path))?;
        let mut out = HashMap::new();
        for hash in hashes {
            let found: Option<String> = stmt
                .query_row(params![provider, model, key, hash], |r| r.get(0))
                .optional()
                .map_err(Error::sql("read embedding cache", &self.db_path))?;
            if let Some(json) = found
                && let Ok(v) = serde_json::from_str::<Vec<f32>>(&json)
            {
                out.insert(hash.clone(), v);
            }
        }
        Ok(out)
    }

    fn store_embeddings(
        &self,
        provider: &str,
        model: &str,
        key: &str,
        items: &[(String, Vec<f32>)],
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(Error::sql("begin", &self.db_path))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO embedding_cache(provider, model, provider_key, hash, embedding, dims, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(provider, model, provider_key, hash) DO UPDATE SET embedding = excluded.embedding,
                       dims = excluded.dims, updated_at = excluded.updated_at",
                )
                .map_err(Error::sql("write embedding cache", &self.db_path))?;
            let now = now_ms();
            for (hash, v) in items {
                let json = serde_json::to_string(v).map_err(|source| Error::Json {
                    op: "encode embedding",
                    path: self.db_path.clone(),
                    source,
                })?;
                let dims = i64::try_from(v.len()).unwrap_or(0);
                stmt.execute(params![provider, model, key, hash, json, dims, now])
                    .map_err(Error::sql("write embedding cache", &self.db_path))?;
            }
        }
        tx.commit().map_err(Error::sql("commit", &self.db_path))
    }

    fn apply(
        &self,
        wanted: &IndexMeta,
        plan: Plan,
        embeddings: Option<HashMap<String, Vec<f32>>>,
    ) -> Result<()> {
        let changed = plan.full_reindex
            || !plan.removed.is_empty()
            || plan.changed.iter().any(|f| !f.touched_only);
        let mut conn = self.lock();
        let path = self.db_path.clone();
        let sql = |op| Error::sql(op, &path);
        let tx = conn.transaction().map_err(sql("begin"))?;
        let meta = schema::read_meta(&tx)
            .map_err(sql("read meta"))?
            .filter(|m| m.same_build(wanted) && !plan.full_reindex);
        let cleared = meta.is_none();
        if cleared {
            schema::clear_index(&tx).map_err(sql("clear index"))?;
        }
        let mut dims = meta.as_ref().and_then(|m| m.vector_dims);
        if let Some(map) = &embeddings
            && let Some(d) = map.values().next().map(Vec::len)
        {
            if dims.is_some_and(|old| old != d) {
                // The provider changed dimension under the same model name: rebuild vectors from scratch.
                tx.execute_batch("DROP TABLE IF EXISTS chunks_vec;")
                    .map_err(sql("drop vectors"))?;
            }
            dims = Some(d);
        }
        if let Some(d) = dims {
            schema::create_vec_table(&tx, d).map_err(sql("create vector table"))?;
        }
        let has_vec = schema::vec_table_exists(&tx).map_err(sql("check vector table"))?;
        {
            let mut del_vec = if has_vec {
                Some(tx.prepare_cached("DELETE FROM chunks_vec WHERE id IN (SELECT id FROM chunks WHERE path = ?1)").map_err(sql("prepare"))?)
            } else {
                None
            };
            let mut del_fts = tx
                .prepare_cached("DELETE FROM chunks_fts WHERE path = ?1")
                .map_err(sql("prepare"))?;
            let mut del_chunks = tx
                .prepare_cached("DELETE FROM chunks WHERE path = ?1")
                .map_err(sql("prepare"))?;
            let mut del_file = tx
                .prepare_cached("DELETE FROM files WHERE path = ?1")
                .map_err(sql("prepare"))?;
            let mut ins_chunk = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO chunks(id, path, source, start_line, end_line, hash, model, text, embedding, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(sql("prepare"))?;
            let mut ins_fts = tx
                .prepare_cached(
                    "INSERT INTO chunks_fts(text, id, path, source, model, start_line, end_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql("prepare"))?;
            let mut ins_vec = if has_vec {
                Some(
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO chunks_vec(id, embedding) VALUES (?1, ?2)",
                    )
                    .map_err(sql("prepare"))?,
                )
            } else {
                None
            };
            let mut upsert_file = tx
                .prepare_cached(
                    "INSERT INTO files(path, source, hash, mtime, size) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(path) DO UPDATE SET source = excluded.source, hash = excluded.hash, mtime = excluded.mtime, size = excluded.size",
                )
                .map_err(sql("prepare"))?;

            let remove = |rel: &str,
                          del_vec: &mut Option<rusqlite::CachedStatement<'_>>,
                          del_fts: &mut rusqlite::CachedStatement<'_>,
                          del_chunks: &mut rusqlite::CachedStatement<'_>|
             -> Result<()> {
                if let Some(stmt) = del_vec {
                    stmt.execute([rel]).map_err(sql("delete vectors"))?;
                }
                del_fts.execute([rel]).map_err(sql("delete fts rows"))?;
                del_chunks.execute([rel]).map_err(sql("delete chunks"))?;
                Ok(())
            };

            for rel in &plan.removed {
                remove(rel, &mut del_vec, &mut del_fts, &mut del_chunks)?;
                del_file.execute([rel]).map_err(sql("delete file row"))?;
            }
            let now = now_ms();
            for file in plan.changed {
                if !file.touched_only && file.was_indexed && !cleared {
                    remove(&file.rel, &mut del_vec, &mut del_fts, &mut del_chunks)?;
                }
                for (id, chunk) in &file.chunks {
                    let vector = embeddings.as_ref().and_then(|m| m.get(&chunk.hash));
                    let json = match vector {
                        Some(v) => serde_json::to_string(v).map_err(|source| Error::Json {
                            op: "encode embedding",
                            path: path.clone(),
                            source,
                        })?,
                        None => "[]".to_owned(),
                    };
                    let (start, end) = (
                        i64::try_from(chunk.start_line).unwrap_or(i64::MAX),
                        i64::try_from(chunk.end_line).unwrap_or(i64::MAX),
                    );
                    ins_chunk
                        .execute(params![
                            id,
                            file.rel,
                            SOURCE,
                            start,
                            end,
                            chunk.hash,
                            wanted.model,
                            chunk.text,
                            json,
                            now
                        ])
                        .map_err(sql("insert chunk"))?;
                    ins_fts
                        .execute(params![
                            chunk.text,
                            id,
                            file.rel,
                            SOURCE,
                            wanted.model,
                            start,
                            end
                        ])
                        .map_err(sql("insert fts row"))?;
                    if let (Some(stmt), Some(v)) = (ins_vec.as_mut(), vector) {
                        let mut unit = v.clone();
                        normalize(&mut unit);
                        stmt.execute(params![id, to_blob(&unit)])
                            .map_err(sql("insert vector"))?;
                    }
                }
                upsert_file
                    .execute(params![file.rel, SOURCE, file.hash, file.mtime, file.size])
                    .map_err(sql("upsert file row"))?;
            }
        }
        let new_meta = IndexMeta {
            vector_dims: dims,
            ..wanted.clone()
        };
        if meta.as_ref() != Some(&new_meta) {
            schema::write_meta(&tx, &new_meta).map_err(sql("write meta"))?;
        }
        tx.commit().map_err(sql("commit"))?;
        if changed {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    fn search(&self, query: &str, query_vector: Option<Vec<f32>>) -> Result<Vec<Hit>> {
        let q = &self.config.query;
        let (vector_weight, text_weight) = self.config.weights();
        let candidates = q
            .max_results
            .max(1)
            .saturating_mul(q.hybrid.candidate_multiplier.max(1));
        let conn = self.read_lock();
        let sql = |op| Error::sql(op, &self.db_path);

        let query_vector = query_vector.filter(|_| q.hybrid.enabled);
        let keywords = self.keyword_index(&conn)?;
        let keywords = keywords.as_deref();
        let cache = match &query_vector {
            Some(_) => Some(self.vector_cache(&conn)?),
            None => None,
        };
        // The two legs run at once: the vector scan in RAM on a scoped thread, FTS5 on this one. Below
        // `PARALLEL_MIN` vectors the scan is shorter than starting a thread.
        let (keyword, nearest) = match (query_vector, cache) {
            (Some(mut qv), Some(cache)) => {
                normalize(&mut qv);
                if cache.len() >= PARALLEL_MIN {
                    std::thread::scope(|s| {
                        let scan = s.spawn(|| cache.top_k(&qv, candidates));
                        let keyword = keyword_leg(&conn, keywords, query, candidates);
                        let nearest = scan
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (keyword, Some(nearest))
                    })
                } else {
                    let nearest = cache.top_k(&qv, candidates);
                    (
                        keyword_leg(&conn, keywords, query, candidates),
                        Some(nearest),
                    )
                }
            }
            _ => (keyword_leg(&conn, keywords, query, candidates), None),
        };
        let keyword = keyword.map_err(sql("keyword search"))?;

        let mut vector = None;
        if let Some(nearest) = nearest {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, path, start_line, end_line, text FROM chunks WHERE id = ?1",
                )
                .map_err(sql("prepare vector search"))?;
            let mut hits = Vec::with_capacity(nearest.len());
            for (id, cos) in nearest {
                // A keyword hit already carries the chunk: no second read.
                if let Some((c, _)) = keyword.iter().find(|(c, _)| c.id == id) {
                    hits.push((c.clone(), cos));
                } else if let Some(c) = stmt
                    .query_row([&id], candidate)
                    .optional()
                    .map_err(sql("vector search"))?
                {
                    hits.push((c, cos));
                }
            }
            vector = Some(hits);
        }
        Ok(merge(
            vector,
            keyword,
            Ranking {
                vector_weight,
                text_weight,
                max_results: q.max_results,
                min_score: q.min_score,
            },
        ))
    }

    /// The in-RAM BM25 copy for the current index generation (built from `conn` when it lags a sync); `None`
    /// when the chunks' text needs FTS5's own tokeniser.
    fn keyword_index(&self, conn: &Connection) -> Result<Option<Arc<KeywordIndex>>> {
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let mut slot = self
            .keywords
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built, index)) = slot.as_ref()
            && *built == generation
        {
            return Ok(index.clone());
        }
        let index = KeywordIndex::load(conn)
            .map_err(Error::sql("load keyword index", &self.db_path))?
            .map(Arc::new);
        tracing::debug!(
            chunks = index.as_ref().map(|i| i.len()),
            bytes = index.as_ref().map(|i| i.heap_bytes()),
            generation,
            "memory keyword index loaded"
        );
        *slot = Some((generation, index.clone()));
        Ok(index)
    }

    /// The in-RAM vector copy for the current index generation, loaded (from `conn`) when it lags a sync.
    fn vector_cache(&self, conn: &Connection) -> Result<Arc<VectorCache>> {
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let mut cache = self
            .vectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cache.as_ref() {
            Some(c) if c.generation == generation => Ok(Arc::clone(c)),
            _ => {
                let fresh = Arc::new(
                    VectorCache::load(conn, generation)
                        .map_err(Error::sql("load vectors", &self.db_path))?,
                );
                tracing::debug!(
                    vectors = fresh.len(),
                    bytes = fresh.heap_bytes(),
                    generation,
                    "memory vector cache loaded"
                );
                *cache = Some(Arc::clone(&fresh));
                Ok(fresh)
            }
        }
    }
}

/// Vector counts from which the two search legs run on two threads.
const PARALLEL_MIN: usize = 20_000;

/// The `limit` best BM25 matches for `query`: from the in-RAM index when it can answer exactly, else from
/// FTS5 (ordering by the `bm25()` expression lets SQLite keep a bounded top-`limit` heap; FTS5's hidden
/// `rank` column sorts every match and measured slower).
fn keyword_leg(
    conn: &Connection,
    keywords: Option<&KeywordIndex>,
    query: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(Candidate, f64)>> {
    let tokens = query_tokens(query);
    if let Some(top) = keywords.and_then(|k| k.search(&tokens, limit)) {
        let mut stmt = conn.prepare_cached(
            "SELECT id, path, start_line, end_line, text FROM chunks_fts WHERE rowid = ?1",
        )?;
        let mut out = Vec::with_capacity(top.len());
        for (rowid, score) in top {
            if let Some(c) = stmt.query_row([rowid], candidate).optional()? {
                out.push((c, score));
            }
        }
        return Ok(out);
    }
    let Some(fts) = build_fts_query(query) else {
        return Ok(Vec::new());
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT id, path, start_line, end_line, text, bm25(chunks_fts) AS score FROM chunks_fts
         WHERE chunks_fts MATCH ?1 ORDER BY score LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![fts, limit], |r| {
        Ok((candidate(r)?, r.get::<_, f64>(5)?))
    })?;
    rows.collect()
}

fn candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
    let line = |v: i64| usize::try_from(v).unwrap_or(0);
    Ok(Candidate {
        id: r.get(0)?,
        path: r.get(1)?,
        start_line: line(r.get(2)?),
        end_line: line(r.get(3)?),
        text: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        crate::memory::atomic::write_atomic(&path, text.as_bytes(), 0o600).unwrap();
    }

    fn paths(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.path.as_str()).collect()
    }

    #[tokio::test]
    async fn bm25_only_index_is_incremental_and_follows_edits_and_deletes() {
        let state = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        write(
            ws.path(),
            "MEMORY.md",
            "# Goals\nReach 100 paying customers by June.\n",
        );
        write(
            ws.path(),
            "memory/2026-01-05.md",
            "# 2026-01-05\nDecided to price the Pro plan at 49 dollars.\n",
        );
        write(
            ws.path(),
            "memory/people/ana.md",
            "Ana is our designer; she prefers async standups.\n",
        );
        let index =
            MemoryIndex::open(state.path(), "main", ws.path(), MemoryConfig::default()).unwrap();
        assert!(!index.has_embeddings());

        let first = index.sync().await.unwrap();
        assert_eq!(
            (first.files_indexed, first.files_removed, first.full_reindex),
            (3, 0, true)
        );
        assert_eq!(
            paths(
                &index
                    .search("what price did we pick for Pro?")
                    .await
                    .unwrap()
            )[0],
            "memory/2026-01-05.md"
        );
        let again = index.sync().await.unwrap();
        assert_eq!((again.files_indexed, again.files_unchanged), (0, 3));

        write(
            ws.path(),
            "memory/2026-01-05.md",
            "# 2026-01-05\nSwitched the Pro plan to usage-based billing.\n",
        );
        std::fs::remove_file(ws.path().join("memory/people/ana.md")).unwrap();
        let edit = index.sync().await.unwrap();
        assert_eq!(
            (edit.files_indexed, edit.files_removed, edit.full_reindex),
            (1, 1, false)
        );
        assert_eq!(
            paths(&index.search("usage-based billing").await.unwrap()),
            ["memory/2026-01-05.md"]
        );
        assert!(index.search("49 dollars").await.unwrap().is_empty());
        assert!(index.search("designer standups").await.unwrap().is_empty());

        let status = index.status().unwrap();
        assert_eq!(
            (status.files, status.chunks, status.provider.as_str()),
            (2, 2, "none")
        );
        drop(index);

        // A chunking change forces a full rebuild on the next sync.
        let mut config = MemoryConfig::default();
        config.chunking.tokens = 100;
        let index = MemoryIndex::open(state.path(), "main", ws.path(), config).unwrap();
        let rebuilt = index.sync().await.unwrap();
        assert!(rebuilt.full_reindex);
        assert_eq!(rebuilt.files_indexed, 2);
    }

    #[tokio::test]
    async fn append_daily_then_sync_makes_it_searchable() {
        let state = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let index =
            MemoryIndex::open(state.path(), "alice", ws.path(), MemoryConfig::default()).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 2, 3).unwrap();
        let path = index
            .append_daily(day, "Standup: shipped the onboarding checklist.")
            .await
            .unwrap();
        assert_eq!(path, ws.path().join("memory/2026-02-03.md"));
        index.sync().await.unwrap();
        let hits = index.search("onboarding checklist").await.unwrap();
        assert_eq!(paths(&hits), ["memory/2026-02-03.md"]);
        assert_eq!((hits[0].start_line, hits[0].score), (1, 1.0));
        assert!(state.path().join("memory/alice.sqlite").is_file());
        assert!(matches!(
            MemoryIndex::open(state.path(), "../evil", ws.path(), MemoryConfig::default())
                .unwrap_err(),
            Error::BadAgentId { .. }
        ));
    }
}
