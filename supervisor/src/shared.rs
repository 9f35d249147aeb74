//! The shared tier: shared members are agents of multi-agent "shard" workers (one `wirebot-worker` per shard, at most
//! `[shared] max_agents_per_worker` members each, all running as the shared uid). Owns shard keys, shard state dirs and
//! their `clawdbot.json`, member placement (through the registry), live agent-list changes (rewrite the file
//! atomically, SIGHUP, wait until the worker's `/healthz` reports the new `configHash`), a member's rewritten cron
//! jobs (SIGHUP, wait for one more applied reload; `cron.store` names each member's own `cron/jobs.json`), and shards
//! at daemon start.
//!
//! Isolation inside a shard is the worker's agent scoping: the proxy checks the member's own token and talks to the
//! shard with the shard's internal token plus `x-wirebot-agent`. The shard's config names a default agent of its own
//! (the shard key), never a member, so no member inherits another member's credentials (`agentDir` fallback).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use provisioning::{Owner, Secret, UserId};
use serde_json::{Value, json};

use crate::daemon::App;
use crate::error::Error;
use crate::lifecycle::{self, Adoption, Runtime, WorkerSpec};
use crate::proxy::UpstreamState;
use crate::registry::{self, ShardRow};
use crate::sandbox::{Identity, ResourceLimits, Rlimits};

/// Shard workers are keyed `wb-shard-<n>` in the lifecycle manager, logs and audit log; member ids may not take it.
pub const SHARD_PREFIX: &str = "wb-shard-";

/// How long a shard may take to apply a rewritten agent list.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `id` is reserved for shard workers (refused as a member id).
pub fn is_reserved(id: &UserId) -> bool {
    id.as_str().starts_with(SHARD_PREFIX)
}

/// The lifecycle key of shard `n`.
pub fn shard_key(n: u32) -> UserId {
    #[allow(clippy::expect_used)]
    // "wb-shard-" followed by digits always matches [a-z0-9][a-z0-9_-]{0,62}.
    format!("{SHARD_PREFIX}{n}")
        .parse()
        .expect("a shard key is a valid id")
}

/// The shard number of a lifecycle key, if it is one.
pub fn shard_of_key(id: &UserId) -> Option<u32> {
    id.as_str().strip_prefix(SHARD_PREFIX)?.parse().ok()
}

/// `<data_dir>/shared/<n>`: the shard's own state (its `clawdbot.json`, cron store, indexes of its default agent).
pub fn shard_dir(app: &App, n: u32) -> PathBuf {
    app.config.data_dir.join("shared").join(n.to_string())
}

/// `<runtime_dir>/shared/<n>`: the shard's `gateway.env` (provider keys, operator-managed).
fn shard_runtime_dir(app: &App, n: u32) -> PathBuf {
    app.config.runtime_dir.join("shared").join(n.to_string())
}

/// Who owns shared members' trees and shard dirs: the shared uid as root, the caller otherwise.
pub fn owner(app: &App) -> Option<Owner> {
    app.tenancy.uids().map(|_| Owner {
        uid: app.config.shared.uid,
        gid: app.config.shared.uid,
    })
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)?
}

/// A directory with an exact mode and owner (created if missing; a symlink or file in its place is refused).
fn ensure_dir(path: &Path, mode: u32, owner: Option<Owner>) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::Io {
                op: "use as a directory (it is not one)",
                path: path.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(io_err("create", path))?;
        }
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    if let Some(o) = owner {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)).map_err(io_err("chown", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// Reads a file the shard (another uid) could have replaced: never through a symlink, at most 1 MiB.
pub(crate) fn read_nofollow(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The shard's internal gateway token: cached, else read from its `clawdbot.json`, else a new one.
fn internal_token(app: &App, n: u32) -> Secret {
    let mut tokens = app
        .shard_tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = tokens.get(&n) {
        return t.clone();
    }
    let from_file = read_nofollow(&shard_dir(app, n).join("clawdbot.json"))
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| {
            v.pointer("/gateway/auth/token")
                .and_then(Value::as_str)
                .filter(|t| t.len() >= 32)
                .map(|t| Secret::from(t.to_owned()))
        });
    let token = from_file.unwrap_or_else(Secret::generate);
    tokens.insert(n, token.clone());
    token
}

/// The internal token of shard `n`, for the proxy's shared routes.
pub fn route_token(app: &App, n: u32) -> Secret {
    internal_token(app, n)
}

/// Renders shard `n`'s `clawdbot.json` for `members` (sorted). Pure.
fn render(
    users_dir: &Path,
    dir: &Path,
    n: u32,
    port: u16,
    token: &Secret,
    members: &[UserId],
) -> Vec<u8> {
    let users = users_dir.display();
    let mut list = vec![json!({
        "id": shard_key(n).as_str(),
        "default": true,
        "workspace": dir.join("workspace"),
        "agentDir": dir.join("agents").join("shard").join("agent"),
    })];
    list.extend(members.iter().map(|m| {
        let home = users_dir.join(m.as_str());
        json!({
            "id": m.as_str(),
            "workspace": home.join("workspace"),
            "agentDir": home.join("agents").join("main").join("agent"),
        })
    }));
    let config = json!({
        "gateway": {
            "mode": "local",
            "bind": "loopback",
            "port": port,
            "auth": { "mode": "token", "token": token.expose() },
            "reload": { "mode": "off" },
        },
        "update": { "checkOnStart": false },
        "session": { "store": format!("{users}/{{agentId}}/agents/main/sessions/sessions.json") },
        // One cron store per agent, in the member's own dir: the same file its dedicated worker would use.
        "cron": { "store": format!("{users}/{{agentId}}/cron/jobs.json") },
        "agents": {
            "defaults": {
                "memorySearch": { "store": { "path": format!("{users}/{{agentId}}/memory/main.sqlite") } },
            },
            "list": list,
        },
    });
    let mut bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn hash_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes shard `n`'s dirs and `clawdbot.json` for its current members (from the registry). Returns the file's
/// sha256, which the worker reports as `configHash` once it runs on it. Blocking.
fn write_config(app: &App, shard: &ShardRow) -> Result<String, Error> {
    let n = shard.shard;
    let owner = owner(app);
    let shared_root = app.config.data_dir.join("shared");
    ensure_dir(&shared_root, 0o711, None)?;
    let dir = shard_dir(app, n);
    ensure_dir(&dir, 0o700, owner)?;
    for sub in ["workspace", "agents", "agents/shard", "agents/shard/agent"] {
        ensure_dir(&dir.join(sub), 0o700, owner)?;
    }
    // The Wirebot skills as the shard's managed skills (`<state>/skills`): every member agent sees them.
    provisioning::skills::install(&dir, owner).map_err(|source| Error::Provisioning {
        op: "install the Wirebot skills into the shard",
        user: shard_key(n),
        source,
    })?;
    let runtime_root = app.config.runtime_dir.join("shared");
    ensure_dir(&runtime_root, 0o711, None)?;
    let runtime = shard_runtime_dir(app, n);
    ensure_dir(&runtime, 0o700, owner)?;
    let env = runtime.join("gateway.env");
    if std::fs::symlink_metadata(&env).is_err() {
        provisioning::atomic::write_file_owned(&env, b"", 0o600, owner).map_err(|source| {
            Error::Provisioning {
                op: "write the shard's gateway.env",
                user: shard_key(n),
                source,
            }
        })?;
    }
    let members: Vec<UserId> = app
        .registry
        .shard_members()?
        .into_iter()
        .filter(|(_, s)| *s == n)
        .map(|(m, _)| m)
        .collect();
    let bytes = render(
        &app.layout.users_dir(),
        &dir,
        n,
        shard.port,
        &internal_token(app, n),
        &members,
    );
    let path = dir.join("clawdbot.json");
    let unchanged = read_nofollow(&path).is_some_and(|old| old.as_bytes() == bytes.as_slice());
    if !unchanged {
        provisioning::atomic::write_file_owned(&path, &bytes, 0o600, owner).map_err(|source| {
            Error::Provisioning {
                op: "write the shard's clawdbot.json",
                user: shard_key(n),
                source,
            }
        })?;
    }
    let hash = hash_hex(&bytes);
    app.shard_hashes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(n, hash.clone());
    Ok(hash)
}

/// The worker spec of shard `n` (`None` when not root: no workers at all then).
pub fn spec(app: &App, shard: &ShardRow) -> Option<WorkerSpec> {
    app.tenancy.uids()?;
    let tier = app.config.tiers.get(provisioning::Tier::Shared);
    let uid = app.config.shared.uid;
    Some(WorkerSpec {
        user_id: shard_key(shard.shard),
        runtime: Runtime::Wirebot {
            program: app.worker_program.clone(),
            extra_args: Vec::new(),
        },
        identity: Identity { uid, gid: uid },
        user_dir: shard_dir(app, shard.shard),
        runtime_dir: shard_runtime_dir(app, shard.shard),
        env_file: shard_runtime_dir(app, shard.shard).join("gateway.env"),
        port: shard.port,
        limits: ResourceLimits {
            memory_bytes: Some(tier.memory_max.0),
            pids: Some(u64::from(tier.pids_max)),
            cpu_percent: Some(tier.cpu_quota_percent),
        },
        rlimits: Rlimits {
            nofile: 16_384,
            nproc: 4096,
        },
        extra_rw_paths: vec![app.layout.users_dir()],
        start_timeout: None,
    })
}

/// A worker's `/healthz` payload (blocking, short timeouts; `None` when unreachable).
fn healthz(addr: SocketAddr) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.take(64 << 10).read_to_end(&mut buf).ok()?;
    let start = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(&buf[start..]).ok()
}

/// The `configHash` a worker's `/healthz` reports.
fn config_hash(addr: SocketAddr) -> Option<String> {
    healthz(addr)?
        .get("configHash")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// How many reloads a worker's `/healthz` says it applied.
fn reloads(addr: SocketAddr) -> Option<u64> {
    healthz(addr)?.get("reloads").and_then(Value::as_u64)
}

/// After a shared member's jobs file changed (its ritual settings): SIGHUP its shard and wait until the shard
/// applied one more reload, which re-reads every agent's cron store. A no-op for a member on no shard or without
/// workers (not root).
pub async fn reload_member_jobs(app: &Arc<App>, user: &UserId) -> Result<(), Error> {
    let Some(manager) = app.workers.clone() else {
        return Ok(());
    };
    let _serial = app.shard_lock.lock().await;
    let placed = blocking({
        let app = app.clone();
        let user = user.clone();
        move || {
            Ok(app
                .registry
                .shard_members()?
                .into_iter()
                .find(|(m, _)| *m == user)
                .map(|(_, n)| n))
        }
    })
    .await?;
    let Some(n) = placed else {
        return Ok(());
    };
    let key = shard_key(n);
    let unavailable = |reason: String| Error::WorkerUnavailable {
        user: key.clone(),
        reason,
    };
    let addr = manager
        .ensure_running(&key)
        .await
        .map_err(|e| unavailable(crate::workers::lifecycle_chain(&e)))?;
    let before = tokio::task::spawn_blocking(move || reloads(addr))
        .await
        .map_err(Error::Join)?
        .ok_or_else(|| unavailable("its /healthz does not answer".to_owned()))?;
    manager
        .signal(&key, nix::sys::signal::Signal::SIGHUP)
        .await
        .map_err(|e| unavailable(crate::workers::lifecycle_chain(&e)))?;
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        let now = tokio::task::spawn_blocking(move || reloads(addr))
            .await
            .map_err(Error::Join)?;
        if now.is_some_and(|r| r > before) {
            tracing::info!(user_id = %user, shard = n, "shard re-read the member's cron jobs");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(unavailable(format!(
                "the shard did not reload within {RELOAD_TIMEOUT:?} (reloads {before} → {now:?})"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Makes the running shard apply `hash`: starts it if needed (it then reads the file as written), else SIGHUP and
/// poll `/healthz` until it reports `hash` or the hash of a later write (which holds this change too: every write
/// renders the whole agent list from the registry under `shard_lock`).
async fn apply(app: &Arc<App>, n: u32, hash: String) -> Result<(), Error> {
    let Some(manager) = app.workers.clone() else {
        return Ok(());
    };
    let key = shard_key(n);
    let unavailable = |reason: String| Error::WorkerUnavailable {
        user: key.clone(),
        reason,
    };
    let addr = manager
        .ensure_running(&key)
        .await
        .map_err(|e| unavailable(crate::workers::lifecycle_chain(&e)))?;
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    let mut signalled = false;
    let mut pause = Duration::from_millis(2);
    loop {
        let current = tokio::task::spawn_blocking(move || config_hash(addr))
            .await
            .map_err(Error::Join)?;
        let latest = app
            .shard_hashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&n)
            .cloned();
        if current.is_some() && (current.as_deref() == Some(hash.as_str()) || current == latest) {
            return Ok(());
        }
        if !signalled {
            manager
                .signal(&key, nix::sys::signal::Signal::SIGHUP)
                .await
                .map_err(|e| unavailable(crate::workers::lifecycle_chain(&e)))?;
            signalled = true;
        }
        if Instant::now() > deadline {
            return Err(unavailable(format!(
                "the shard did not apply its new agent list within {RELOAD_TIMEOUT:?} (reports {current:?})"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Puts a shared member on a shard (placing it on one with room, or a new one) and returns once the shard serves it.
pub async fn ensure_member(app: &Arc<App>, user: &UserId) -> Result<(), Error> {
    let serial = app.shard_lock.lock().await;
    let (shard, created, hash) = blocking({
        let app = app.clone();
        let user = user.clone();
        move || {
            let (n, created) = app.registry.transaction(|tx| {
                tx.assign_shard(
                    &user,
                    app.config.shared.max_agents_per_worker,
                    app.config.ports,
                )
            })?;
            let shard = shard_row(&app, n)?;
            let hash = write_config(&app, &shard)?;
            Ok((shard, created, hash))
        }
    })
    .await?;
    if created {
        // Its worker's transitions (`worker.starting`, `worker.ready` of `wb-shard-<n>`) are its audit trail.
        tracing::info!(shard = shard.shard, port = shard.port, "new shard");
    }
    if let (Some(manager), Some(spec)) = (app.workers.clone(), spec(app, &shard)) {
        manager.register(spec).await;
    }
    crate::routes::rebuild_logged(app).await;
    drop(serial);
    apply(app, shard.shard, hash).await?;
    tracing::info!(user_id = %user, shard = shard.shard, "shared member served by its shard");
    Ok(())
}

/// Takes a member off its shard (removal, suspension, move to dedicated) and returns once the shard dropped it. A
/// no-op for members on no shard.
pub async fn remove_member(app: &Arc<App>, user: &UserId) -> Result<(), Error> {
    let serial = app.shard_lock.lock().await;
    let removed = blocking({
        let app = app.clone();
        let user = user.clone();
        move || {
            let Some(n) = app.registry.transaction(|tx| tx.unassign_shard(&user))? else {
                return Ok(None);
            };
            let shard = shard_row(&app, n)?;
            let hash = write_config(&app, &shard)?;
            Ok(Some((n, hash)))
        }
    })
    .await?;
    let Some((n, hash)) = removed else {
        return Ok(());
    };
    crate::routes::rebuild_logged(app).await;
    drop(serial);
    apply(app, n, hash).await?;
    tracing::info!(user_id = %user, shard = n, "shared member removed from its shard");
    Ok(())
}

fn shard_row(app: &App, n: u32) -> Result<ShardRow, Error> {
    app.registry
        .shards()?
        .into_iter()
        .find(|s| s.shard == n)
        .ok_or_else(|| Error::WorkerUnavailable {
            user: shard_key(n),
            reason: "the shard has no registry row".to_owned(),
        })
}

async fn audit(app: &Arc<App>, action: &'static str, key: &UserId, detail: String) {
    let app = app.clone();
    let key = key.clone();
    let result = blocking(move || {
        app.registry.append_event(
            "daemon",
            action,
            Some(key.as_str()),
            registry::Outcome::Ok,
            Some(&detail),
        )
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e.chain(), "cannot append an audit event");
    }
}

/// At daemon start (before the ready line): rewrites every shard's config from the registry, re-adopts its recorded
/// worker (pid + start time + cgroup) or starts it in the background.
pub async fn start_all(app: &Arc<App>) -> Result<(), Error> {
    let shards = blocking({
        let app = app.clone();
        move || {
            let shards = app.registry.shards()?;
            let mut out = Vec::with_capacity(shards.len());
            for shard in shards {
                let hash = write_config(&app, &shard)?;
                out.push((shard, hash));
            }
            Ok(out)
        }
    })
    .await?;
    let Some(manager) = app.workers.clone() else {
        return Ok(());
    };
    for (shard, hash) in shards {
        let Some(spec) = spec(app, &shard) else {
            continue;
        };
        let key = spec.user_id.clone();
        let record = lifecycle::WorkerRecord {
            user_id: key.clone(),
            pid: shard.pid,
            pid_start_time: shard.pid_start_time,
            cgroup: shard
                .cgroup
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok()),
            port: shard.port,
            state: serde_json::from_value(Value::String(shard.state.clone()))
                .unwrap_or(lifecycle::WorkerState::Stopped),
            restarts: shard.restarts,
            diagnosis: None,
        };
        let adopted = if shard.pid.is_some() {
            match manager.adopt(spec.clone(), &record).await {
                Ok(Adoption::Adopted { pid }) => {
                    tracing::info!(shard = shard.shard, pid, "re-adopted shard worker");
                    audit(app, "worker.adopt", &key, format!("pid {pid}")).await;
                    crate::routes::set_upstream(
                        app,
                        &key,
                        UpstreamState::Running(SocketAddr::from(([127, 0, 0, 1], shard.port))),
                    );
                    true
                }
                Ok(Adoption::Gone { reason }) => {
                    tracing::info!(shard = shard.shard, %reason, "recorded shard worker is gone; starting a new one");
                    false
                }
                Err(e) => {
                    tracing::error!(shard = shard.shard, error = %e, "shard adoption failed");
                    false
                }
            }
        } else {
            false
        };
        if !adopted {
            manager.register(spec).await;
        }
        // Adopted or not, bring it up on the config just written (an adopted one may predate member changes).
        let app2 = app.clone();
        let n = shard.shard;
        app.tasks.spawn(async move {
            if let Err(e) = apply(&app2, n, hash).await {
                tracing::error!(shard = n, error = %e.chain(), "starting the shard at daemon start failed");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_round_trip_and_are_reserved() {
        for n in [0, 7, u32::MAX] {
            let key = shard_key(n);
            assert_eq!(shard_of_key(&key), Some(n));
            assert!(is_reserved(&key));
        }
        let member: UserId = "alice".parse().unwrap();
        assert_eq!(shard_of_key(&member), None);
        assert!(!is_reserved(&member));
    }

    #[test]
    fn render_lists_members_after_the_shards_own_default_agent() {
        let token = Secret::from("t".repeat(43));
        let members: Vec<UserId> = vec!["a".parse().unwrap(), "b".parse().unwrap()];
        let bytes = render(
            Path::new("/d/users"),
            Path::new("/d/shared/3"),
            3,
            20060,
            &token,
            &members,
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let ids: Vec<&str> = v["agents"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["wb-shard-3", "a", "b"]);
        assert_eq!(v["agents"]["list"][0]["default"], true);
        assert_eq!(v["agents"]["list"][2]["workspace"], "/d/users/b/workspace");
        assert_eq!(
            v["session"]["store"],
            "/d/users/{agentId}/agents/main/sessions/sessions.json"
        );
        assert_eq!(v["cron"]["store"], "/d/users/{agentId}/cron/jobs.json");
        assert_eq!(v["gateway"]["port"], 20060);
        assert_eq!(hash_hex(&bytes).len(), 64);
    }
}
