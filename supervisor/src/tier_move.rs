//! Carries a member's tree across a tier move before its new worker serves it: every path handed to the tier's
//! owner (a dedicated member's own uid, or the shared uid), and session keys renamed for the new agent id (a dedicated
//! worker calls its one agent `main`, a shard calls it by the member id), so sessions, memory and transcripts carry over.
//!
//! Also writes the member's default cron jobs (daily standup, weekly reflection) from its ritual settings into its own
//! store `<user dir>/cron/jobs.json`, which both tiers read (a dedicated worker as its store, a shard as the member's
//! per-agent store), retargeted to the tier's agent id so every job, its state and run log carry over.
//!
//! Runs while no worker writes the tree: a move to dedicated first takes the member off its shard, a move to shared
//! first stops the dedicated worker (`workers::forget`). Symlinks are never followed: `lchown` changes the link itself.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;

use provisioning::{Owner, Tier};
use serde_json::{Map, Value};

use crate::daemon::App;
use crate::error::Error;
use crate::registry::UserRow;

/// The agent id a member's sessions are keyed by on a worker of this tier.
fn agent_id(row: &UserRow) -> &str {
    match row.tier {
        Tier::Dedicated => "main",
        Tier::Shared => row.id.as_str(),
    }
}

/// Makes `row`'s tree fit its tier (owner, session keys, the default cron jobs of its ritual settings). Cheap when it
/// already does. Returns whether the cron jobs changed (a running dedicated worker must restart to read them; a shard
/// re-reads them on its next reload).
pub async fn prepare(app: &Arc<App>, row: &UserRow) -> Result<bool, Error> {
    let app = app.clone();
    let row = row.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&app, &row))
        .await
        .map_err(Error::Join)?
}

fn prepare_blocking(app: &App, row: &UserRow) -> Result<bool, Error> {
    rekey_and_chown(app, row)?;
    let schedule = app.registry.schedule(&row.id)?;
    let owner = crate::users::owner_of(app, row);
    let changed = provisioning::schedule::write_member_jobs(
        &app.layout,
        &row.id,
        agent_id(row),
        &schedule,
        owner,
    )
    .map_err(|source| Error::Provisioning {
        op: "write the member's default cron jobs",
        user: row.id.clone(),
        source,
    })?;
    if changed {
        tracing::info!(user_id = %row.id, "default cron jobs written from the member's ritual settings");
    }
    Ok(changed)
}

fn rekey_and_chown(app: &App, row: &UserRow) -> Result<(), Error> {
    let user_dir = app.layout.user_dir(&row.id);
    if let Some(owner) = crate::users::owner_of(app, row) {
        let mut changed = 0usize;
        for root in [user_dir.clone(), app.layout.runtime_user_dir(&row.id)] {
            changed += chown_tree(&root, owner)?;
        }
        if changed > 0 {
            tracing::info!(user_id = %row.id, uid = owner.uid, paths = changed, "tree handed to the tier's owner");
        }
    }
    let store = user_dir.join("agents/main/sessions/sessions.json");
    let target = agent_id(row);
    let Some(text) = crate::shared::read_nofollow(&store) else {
        return Ok(());
    };
    let Ok(Value::Object(entries)) = serde_json::from_str::<Value>(&text) else {
        tracing::warn!(user_id = %row.id, path = %store.display(), "sessions.json is not a JSON object; keys left as they are");
        return Ok(());
    };
    if let Some(rekeyed) = rekey(&entries, target) {
        let owner = crate::users::owner_of(app, row);
        provisioning::atomic::write_file_owned(
            &store,
            &serde_json::to_vec_pretty(&Value::Object(rekeyed)).unwrap_or_default(),
            0o600,
            owner,
        )
        .map_err(|source| Error::Provisioning {
            op: "rename session keys for the new tier",
            user: row.id.clone(),
            source,
        })?;
        tracing::info!(user_id = %row.id, agent = target, "session keys renamed for the new tier");
    }
    Ok(())
}

/// `agent:<other>:<rest>` keys (and the same strings inside entries) renamed to `agent:<target>:<rest>`; `None` when
/// every key already names `target`. A key of `target` that exists already wins over a renamed one. Pure.
fn rekey(entries: &Map<String, Value>, target: &str) -> Option<Map<String, Value>> {
    let rename = |key: &str| -> Option<String> {
        let rest = key.strip_prefix("agent:")?;
        let (agent, tail) = rest.split_once(':')?;
        (agent != target).then(|| format!("agent:{target}:{tail}"))
    };
    if !entries.keys().any(|k| rename(k).is_some()) {
        return None;
    }
    let mut out = Map::new();
    for (key, entry) in entries {
        if rename(key).is_none() {
            out.insert(key.clone(), entry.clone());
        }
    }
    for (key, entry) in entries {
        let Some(new_key) = rename(key) else {
            continue;
        };
        let mut entry = entry.clone();
        if let Value::Object(fields) = &mut entry {
            for value in fields.values_mut() {
                if value.as_str() == Some(key.as_str()) {
                    *value = Value::String(new_key.clone());
                }
            }
        }
        out.entry(new_key).or_insert(entry);
    }
    Some(out)
}

/// `lchown`s every path under `root` (root included) not already owned by `owner`; returns how many changed. A
/// missing root is fine (nothing to hand over).
fn chown_tree(root: &Path, owner: Owner) -> Result<usize, Error> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let mut changed = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("inspect", &path)(e)),
        };
        if meta.uid() != owner.uid || meta.gid() != owner.gid {
            std::os::unix::fs::lchown(&path, Some(owner.uid), Some(owner.gid))
                .map_err(io("chown", &path))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io("list", &path))? {
                stack.push(entry.map_err(io("list", &path))?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rekey_renames_other_agents_keys_and_inner_copies() {
        let entries = json!({
            "agent:main:main": {"sessionId": "s1", "key": "agent:main:main"},
            "agent:main:cron:x": {"sessionId": "s2"},
            "global": {"sessionId": "s3"}
        });
        let out = rekey(entries.as_object().unwrap(), "alice").unwrap();
        assert_eq!(out["agent:alice:main"]["sessionId"], "s1");
        assert_eq!(out["agent:alice:main"]["key"], "agent:alice:main");
        assert_eq!(out["agent:alice:cron:x"]["sessionId"], "s2");
        assert_eq!(out["global"]["sessionId"], "s3");
        assert_eq!(out.len(), 3);
        assert!(rekey(&out, "alice").is_none());
        let back = rekey(&out, "main").unwrap();
        assert_eq!(back["agent:main:main"]["key"], "agent:main:main");
    }

    #[test]
    fn rekey_keeps_an_existing_target_key() {
        let entries = json!({
            "agent:main:main": {"sessionId": "old"},
            "agent:alice:main": {"sessionId": "current"}
        });
        let out = rekey(entries.as_object().unwrap(), "alice").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out["agent:alice:main"]["sessionId"], "current");
    }
}
