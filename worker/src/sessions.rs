//! The session store: each agent's `sessions.json` (default `agents/<id>/sessions/`, or `session.store` with
//! `{agentId}`; Clawdbot's entry format, bounded) plus the transcripts beside it. Each index is loaded on first use,
//! so idle agents cost nothing, and cached by its path, so a reload that moves an agent's store reads the new one.
//! Every write is atomic. New sessions and client edits are written at once; the metadata a run updates (tokens,
//! model, `updatedAt`) is written at most once per [`FLUSH_INTERVAL`] (and at shutdown): what must survive a crash,
//! the acknowledged messages, is in the fsynced transcript already.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::config::AgentConfig;
use crate::session_key::SessionKey;
use crate::transcript;
use crate::{Error, atomic};

/// Entry fields Clawdbot grows without bound; dropped on load and never written (kept apart, not in the index).
const BLOB_FIELDS: &[&str] = &["skillsSnapshot", "systemPromptReport"];
/// Isolated cron sessions kept per agent; older ones are pruned from the index.
const MAX_CRON_SESSIONS: usize = 20;
/// How often indexes changed by [`SessionStore::update_deferred`] are written.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a session's transcript lives and how to chain the next entry.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    pub key: SessionKey,
    pub session_id: String,
    pub file: PathBuf,
}

#[derive(Debug, Default)]
struct AgentSessions {
    index: Map<String, Value>,
    /// sessionId → id of the transcript's last entry.
    tails: HashMap<String, Option<String>>,
    /// Changed in memory since the last write.
    dirty: bool,
}

/// All agents' session indexes, loaded lazily, by index path.
#[derive(Debug, Default)]
pub struct SessionStore {
    agents: Mutex<HashMap<PathBuf, AgentSessions>>,
}

impl SessionStore {
    fn with<T>(
        &self,
        agent: &AgentConfig,
        f: impl FnOnce(&mut AgentSessions) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut all = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let path = index_path(agent);
        let entry = match all.entry(path.to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(AgentSessions {
                index: load_index(path)?,
                tails: HashMap::new(),
                dirty: false,
            }),
        };
        f(entry)
    }

    /// The index entry for `key`, if any.
    pub fn entry(&self, agent: &AgentConfig, key: &SessionKey) -> Result<Option<Value>, Error> {
        self.with(agent, |s| Ok(s.index.get(key.as_str()).cloned()))
    }

    /// Returns the session, creating its index entry and transcript header (both durable) when new.
    pub fn ensure(
        &self,
        agent: &AgentConfig,
        key: &SessionKey,
        channel: &str,
    ) -> Result<SessionHandle, Error> {
        self.with(agent, |s| {
            if let Some(h) = handle(agent, key, s.index.get(key.as_str())) {
                if !h.file.exists() {
                    transcript::create(&h.file, &h.session_id, &agent.workspace)?;
                }
                return Ok(h);
            }
            let session_id = uuid::Uuid::new_v4().to_string();
            let file = agent.sessions_dir.join(format!("{session_id}.jsonl"));
            transcript::create(&file, &session_id, &agent.workspace)?;
            let chat_type = if key.kind() == "group" { "group" } else { "direct" };
            let entry = json!({
                "sessionId": session_id, "updatedAt": transcript::now_ms(), "systemSent": false, "abortedLastRun": false,
                "chatType": chat_type, "deliveryContext": {"channel": channel}, "lastChannel": channel,
                "origin": {"provider": channel, "surface": channel, "chatType": chat_type},
                "sessionFile": file, "compactionCount": 0,
            });
            s.index.insert(key.to_string(), entry);
            s.tails.insert(session_id.clone(), None);
            prune(&mut s.index);
            persist(index_path(agent), s)?;
            Ok(SessionHandle { key: key.clone(), session_id, file })
        })
    }

    /// Appends a transcript entry (fsync'd before returning) and returns its id.
    pub fn append(
        &self,
        agent: &AgentConfig,
        h: &SessionHandle,
        kind: &str,
        fields: Value,
    ) -> Result<String, Error> {
        self.with(agent, |s| {
            let parent = match s.tails.get(&h.session_id) {
                Some(p) => p.clone(),
                None => transcript::last_entry_id(&h.file)?,
            };
            let id = transcript::append(&h.file, parent.as_deref(), kind, fields)?;
            s.tails.insert(h.session_id.clone(), Some(id.clone()));
            Ok(id)
        })
    }

    /// Merges `fields` into the entry (if it still exists), bumps `updatedAt`, and persists the index.
    pub fn update(
        &self,
        agent: &AgentConfig,
        key: &SessionKey,
        fields: Map<String, Value>,
    ) -> Result<Option<Value>, Error> {
        self.with(agent, |s| {
            let out = merge_entry(s, key, fields);
            if out.is_some() {
                persist(index_path(agent), s)?;
            }
            Ok(out)
        })
    }

    /// Like [`SessionStore::update`], but the index is written by the next [`SessionStore::flush`] (a run's
    /// metadata: many runs per second must not each rewrite the whole index).
    pub fn update_deferred(
        &self,
        agent: &AgentConfig,
        key: &SessionKey,
        fields: Map<String, Value>,
    ) -> Result<Option<Value>, Error> {
        self.with(agent, |s| {
            let out = merge_entry(s, key, fields);
            s.dirty |= out.is_some();
            Ok(out)
        })
    }

    /// Writes every index changed by [`SessionStore::update_deferred`]; failures are logged and retried next time.
    pub fn flush(&self) {
        let mut all = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        for (path, s) in all.iter_mut().filter(|(_, s)| s.dirty) {
            if let Err(e) = persist(path, s) {
                tracing::error!(path = %path.display(), error = %e, "writing the session index failed");
            }
        }
    }

    /// All entries of one agent, newest first.
    pub fn list(&self, agent: &AgentConfig) -> Result<Vec<(String, Value)>, Error> {
        self.with(agent, |s| {
            let mut v: Vec<_> = s
                .index
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            v.sort_by_key(|(_, e)| {
                std::cmp::Reverse(e.get("updatedAt").and_then(Value::as_i64).unwrap_or(0))
            });
            Ok(v)
        })
    }

    /// Starts a fresh transcript for `key` (the old file is kept); returns the new entry.
    pub fn reset(&self, agent: &AgentConfig, key: &SessionKey) -> Result<Value, Error> {
        self.with(agent, |s| {
            let session_id = uuid::Uuid::new_v4().to_string();
            let file = agent.sessions_dir.join(format!("{session_id}.jsonl"));
            transcript::create(&file, &session_id, &agent.workspace)?;
            let mut e = match s.index.remove(key.as_str()) {
                Some(Value::Object(e)) => e,
                _ => Map::new(),
            };
            for k in [
                "inputTokens",
                "outputTokens",
                "totalTokens",
                "abortedLastRun",
                "systemSent",
            ] {
                e.remove(k);
            }
            e.insert("sessionId".into(), json!(session_id));
            e.insert("sessionFile".into(), json!(file));
            e.insert("updatedAt".into(), json!(transcript::now_ms()));
            let out = Value::Object(e.clone());
            s.index.insert(key.to_string(), Value::Object(e));
            s.tails.insert(session_id, None);
            persist(index_path(agent), s)?;
            Ok(out)
        })
    }

    /// Removes the entry; with `delete_transcript` the `.jsonl` goes too. Returns whether it existed.
    pub fn delete(
        &self,
        agent: &AgentConfig,
        key: &SessionKey,
        delete_transcript: bool,
    ) -> Result<bool, Error> {
        self.with(agent, |s| {
            let Some(e) = s.index.remove(key.as_str()) else {
                return Ok(false);
            };
            persist(index_path(agent), s)?;
            if delete_transcript && let Some(h) = handle(agent, key, Some(&e)) {
                s.tails.remove(&h.session_id);
                match std::fs::remove_file(&h.file) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(Error::io("delete transcript", &h.file, err)),
                }
            }
            Ok(true)
        })
    }

    /// The session's id and its last `limit` transcript messages.
    pub fn history(
        &self,
        agent: &AgentConfig,
        key: &SessionKey,
        limit: usize,
    ) -> Result<(Option<String>, Vec<Value>), Error> {
        let entry = self.entry(agent, key)?;
        let Some(h) = handle(agent, key, entry.as_ref()) else {
            return Ok((None, Vec::new()));
        };
        Ok((Some(h.session_id), transcript::messages(&h.file, limit)?))
    }

    /// Drops the cached index at `store_path` (an agent removed or moved by a reload), freeing its memory. A
    /// run still writing there loads it again from disk.
    pub fn forget(&self, store_path: &Path) {
        let mut all = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut s) = all.remove(store_path)
            && s.dirty
            && let Err(e) = persist(store_path, &mut s)
        {
            tracing::error!(path = %store_path.display(), error = %e, "writing the session index failed");
        }
    }
}

/// Merges `fields` into `key`'s entry (null removes a field) and bumps `updatedAt`; the entry after, if it exists.
fn merge_entry(
    s: &mut AgentSessions,
    key: &SessionKey,
    fields: Map<String, Value>,
) -> Option<Value> {
    let Some(Value::Object(e)) = s.index.get_mut(key.as_str()) else {
        return None;
    };
    for (k, v) in fields {
        if v.is_null() {
            e.remove(&k);
        } else {
            e.insert(k, v);
        }
    }
    e.insert("updatedAt".into(), json!(transcript::now_ms()));
    Some(Value::Object(e.clone()))
}

fn index_path(agent: &AgentConfig) -> &Path {
    &agent.store_path
}

fn handle(agent: &AgentConfig, key: &SessionKey, entry: Option<&Value>) -> Option<SessionHandle> {
    let e = entry?;
    let session_id = e.get("sessionId")?.as_str()?.to_string();
    let file = e
        .get("sessionFile")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| agent.sessions_dir.join(format!("{session_id}.jsonl")));
    Some(SessionHandle {
        key: key.clone(),
        session_id,
        file,
    })
}

fn load_index(path: &Path) -> Result<Map<String, Value>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(Error::io("read session index", path, e)),
    };
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })?;
    let Value::Object(mut index) = v else {
        return Ok(Map::new());
    };
    for (_, e) in index.iter_mut() {
        if let Value::Object(e) = e {
            for f in BLOB_FIELDS {
                e.remove(*f);
            }
        }
    }
    prune(&mut index);
    Ok(index)
}

/// Keeps only the newest [`MAX_CRON_SESSIONS`] isolated cron sessions.
fn prune(index: &mut Map<String, Value>) {
    let mut cron: Vec<(String, i64)> = index
        .iter()
        .filter(|(k, _)| k.split(':').nth(2) == Some("cron"))
        .map(|(k, e)| {
            (
                k.clone(),
                e.get("updatedAt").and_then(Value::as_i64).unwrap_or(0),
            )
        })
        .collect();
    if cron.len() <= MAX_CRON_SESSIONS {
        return;
    }
    cron.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    for (k, _) in cron.into_iter().skip(MAX_CRON_SESSIONS) {
        index.remove(&k);
    }
}

/// Writes the index (without copying it) and clears its dirty mark.
fn persist(path: &Path, s: &mut AgentSessions) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec_pretty(&s.index).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })?;
    bytes.push(b'\n');
    atomic::write_file(path, &bytes, 0o600)?;
    s.dirty = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_id::AgentId;
    use crate::config::ModelChoice;

    fn agent(dir: &Path) -> AgentConfig {
        AgentConfig {
            id: AgentId::main(),
            name: None,
            identity: None,
            workspace: dir.join("ws"),
            agent_dir: dir.join("agents/main/agent"),
            store_path: dir.join("agents/main/sessions/sessions.json"),
            sessions_dir: dir.join("agents/main/sessions"),
            model: ModelChoice::default(),
        }
    }

    #[test]
    fn ensure_append_history_reset_delete() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        let key = SessionKey::main(&a.id, "main");
        let store = SessionStore::default();
        let h = store.ensure(&a, &key, "webchat").unwrap();
        store
            .append(
                &a,
                &h,
                "message",
                json!({"message": {"role": "user", "content": [{"type": "text", "text": "hi"}]}}),
            )
            .unwrap();
        // A second store (a restart) sees the entry and the message.
        let again = SessionStore::default();
        let (sid, msgs) = again.history(&a, &key, 10).unwrap();
        assert_eq!(sid.as_deref(), Some(h.session_id.as_str()));
        assert_eq!(msgs.len(), 1);
        let e = again.reset(&a, &key).unwrap();
        assert_ne!(e["sessionId"], json!(h.session_id));
        assert!(again.history(&a, &key, 10).unwrap().1.is_empty());
        assert!(again.delete(&a, &key, true).unwrap());
        assert!(again.list(&a).unwrap().is_empty());
    }

    #[test]
    fn deferred_updates_reach_disk_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        let key = SessionKey::main(&a.id, "main");
        let store = SessionStore::default();
        store.ensure(&a, &key, "webchat").unwrap();
        let mut f = Map::new();
        f.insert("inputTokens".into(), json!(7));
        store.update_deferred(&a, &key, f).unwrap().unwrap();
        // Served from memory at once; on disk only after the flush.
        assert_eq!(store.entry(&a, &key).unwrap().unwrap()["inputTokens"], 7);
        assert!(
            SessionStore::default()
                .entry(&a, &key)
                .unwrap()
                .unwrap()
                .get("inputTokens")
                .is_none()
        );
        store.flush();
        assert_eq!(
            SessionStore::default().entry(&a, &key).unwrap().unwrap()["inputTokens"],
            7
        );
    }

    #[test]
    fn load_drops_blobs_and_prunes_cron_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        let mut index = Map::new();
        index.insert(
            "agent:main:main".into(),
            json!({"sessionId": "s", "updatedAt": 1, "skillsSnapshot": {"big": 1}}),
        );
        for i in 0..30 {
            index.insert(
                format!("agent:main:cron:j{i}"),
                json!({"sessionId": format!("c{i}"), "updatedAt": i}),
            );
        }
        atomic::write_json(index_path(&a), &Value::Object(index)).unwrap();
        let store = SessionStore::default();
        let list = store.list(&a).unwrap();
        assert_eq!(list.len(), 1 + MAX_CRON_SESSIONS);
        let main = store
            .entry(&a, &SessionKey::main(&a.id, "main"))
            .unwrap()
            .unwrap();
        assert!(main.get("skillsSnapshot").is_none());
        assert!(list.iter().all(|(k, _)| k != "agent:main:cron:j0"));
    }
}
