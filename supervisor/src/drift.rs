//! `wirebot reconcile`: the drift between the registry, the disk (`<data_dir>/users/`), the worker processes and
//! their cgroups, found read-only by [`find`] (with or without a running daemon) and repaired by [`repair`] through
//! `users.rs`, `workers.rs` and `routes.rs` (daemon only). The route table is derived from the registry, so a repair
//! always rebuilds it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use provisioning::{Layout, Tier, UserId};
use serde::{Deserialize, Serialize};

use crate::daemon::App;
use crate::error::Error;
use crate::registry::{Registry, UserRow, UserStatus, WorkerRecord};
use crate::sandbox::cgroup::{CgroupLayout, existing_worker_cgroups};

const ACTOR: &str = "reconcile";

/// One disagreement between what the registry says and what is on disk or running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// A state directory no registry row owns (repair: archive, then remove).
    OrphanDir { user_id: UserId, path: PathBuf },
    /// A member whose state directory is gone (repair: provision it again; this issues a new gateway token).
    MissingDir { user_id: UserId, path: PathBuf },
    /// A recorded worker whose process is gone (pid and start time no longer match; repair: start it).
    WorkerNotRunning {
        user_id: UserId,
        pid: Option<i32>,
        state: String,
    },
    /// An active dedicated member whose worker the daemon does not supervise (repair: start it).
    WorkerNotSupervised { user_id: UserId },
    /// A worker cgroup of this data dir that no registry record owns (repair: kill its processes, remove it).
    UnknownCgroup { name: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::OrphanDir { user_id, path } => {
                write!(
                    f,
                    "orphan-dir {user_id}: {} has no registry row",
                    path.display()
                )
            }
            Drift::MissingDir { user_id, path } => {
                write!(
                    f,
                    "missing-dir {user_id}: {} does not exist",
                    path.display()
                )
            }
            Drift::WorkerNotRunning {
                user_id,
                pid,
                state,
            } => match pid {
                Some(pid) => write!(
                    f,
                    "worker-not-running {user_id}: recorded {state} as pid {pid}, which is gone"
                ),
                None => write!(
                    f,
                    "worker-not-running {user_id}: recorded {state}, no process"
                ),
            },
            Drift::WorkerNotSupervised { user_id } => {
                write!(
                    f,
                    "worker-not-supervised {user_id}: no worker is supervised for this member"
                )
            }
            Drift::UnknownCgroup { name } => {
                write!(f, "unknown-cgroup {name}: no registry record owns it")
            }
        }
    }
}

/// What `reconcile` found and (unless a dry run) did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub dry_run: bool,
    pub drift: Vec<Drift>,
    /// One line per repair done, in order.
    pub repaired: Vec<String>,
    /// One line per repair that failed (the drift stays).
    pub failed: Vec<String>,
}

/// States in which a recorded worker should have a live process.
fn should_run(state: &str) -> bool {
    matches!(state, "starting" | "ready" | "running")
}

/// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), or `None` if there is no such process
/// or it already exited (a zombie nobody reaped yet).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn alive(record: &WorkerRecord) -> bool {
    match (record.pid, record.pid_start_time) {
        (Some(pid), Some(recorded)) => start_time(pid) == Some(recorded),
        (Some(pid), None) => start_time(pid).is_some(),
        _ => false,
    }
}

/// Member ids with a directory under `<data_dir>/users/` (dot-entries and names that are no user id are skipped:
/// they are not member state).
fn user_dirs(layout: &Layout) -> Result<BTreeSet<UserId>, Error> {
    let parent = layout.users_dir();
    let entries = match std::fs::read_dir(&parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(Error::Io {
                op: "list the user directories",
                path: parent,
                source,
            });
        }
    };
    let mut out = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            op: "list the user directories",
            path: parent.clone(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        if let Ok(id) = name.parse::<UserId>() {
            out.insert(id);
        }
    }
    Ok(out)
}

/// Worker cgroups of this data dir (`<group>.<user id>`) as user-id suffixes with their full names.
fn worker_cgroups(group: &str) -> Vec<(String, String)> {
    let Ok(layout) = CgroupLayout::detect() else {
        return Vec::new();
    };
    let prefix = format!("{group}.");
    existing_worker_cgroups(&layout)
        .into_iter()
        .filter_map(|name| {
            let user = name.strip_prefix(&prefix)?.to_owned();
            Some((user, name))
        })
        .collect()
}

/// The drift visible from the registry, the disk, `/proc` and the cgroup tree. Read-only; blocking.
pub fn find(registry: &Registry, layout: &Layout, cgroup_group: &str) -> Result<Vec<Drift>, Error> {
    let users = registry.users()?;
    let workers = registry.workers()?;
    let dirs = user_dirs(layout)?;
    let mut drift = Vec::new();
    for id in &dirs {
        if !users.iter().any(|u| &u.id == id) {
            drift.push(Drift::OrphanDir {
                user_id: id.clone(),
                path: layout.user_dir(id),
            });
        }
    }
    for user in users
        .iter()
        .filter(|u| u.status != UserStatus::Provisioning)
    {
        if !dirs.contains(&user.id) {
            drift.push(Drift::MissingDir {
                user_id: user.id.clone(),
                path: layout.user_dir(&user.id),
            });
        }
    }
    for record in &workers {
        let served = users
            .iter()
            .any(|u| u.id == record.user_id && served_dedicated(u));
        if served && should_run(&record.state) && !alive(record) {
            drift.push(Drift::WorkerNotRunning {
                user_id: record.user_id.clone(),
                pid: record.pid,
                state: record.state.clone(),
            });
        }
    }
    let shards = registry.shards()?;
    for (user, name) in worker_cgroups(cgroup_group) {
        let shard_owns = user
            .parse()
            .ok()
            .and_then(|key| crate::shared::shard_of_key(&key))
            .is_some_and(|n| shards.iter().any(|s| s.shard == n && s.pid.is_some()));
        if !shard_owns
            && !workers
                .iter()
                .any(|w| w.user_id.as_str() == user && w.pid.is_some())
        {
            drift.push(Drift::UnknownCgroup { name });
        }
    }
    Ok(drift)
}

fn served_dedicated(user: &UserRow) -> bool {
    user.status == UserStatus::Active && user.tier == Tier::Dedicated
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)?
}

/// Finds the drift as the daemon sees it (adds members whose worker it does not supervise) and, unless `dry_run`,
/// repairs each item; the route table is rebuilt from the registry afterwards.
pub async fn reconcile(app: &Arc<App>, dry_run: bool) -> Result<Report, Error> {
    let (mut drift, users) = blocking({
        let app = app.clone();
        move || {
            let group = crate::workers::cgroup_group(&app.config.data_dir);
            Ok((
                find(&app.registry, &app.layout, &group)?,
                app.registry.users()?,
            ))
        }
    })
    .await?;
    if let Some(manager) = app.workers.clone() {
        for user in users.iter().filter(|u| served_dedicated(u)) {
            let listed = drift.iter().any(
                |d| matches!(d, Drift::WorkerNotRunning { user_id, .. } if user_id == &user.id),
            );
            if !listed && manager.status(&user.id).await.is_err() {
                drift.push(Drift::WorkerNotSupervised {
                    user_id: user.id.clone(),
                });
            }
        }
    }
    let mut report = Report {
        dry_run,
        drift,
        repaired: Vec::new(),
        failed: Vec::new(),
    };
    if dry_run {
        return Ok(report);
    }
    let mut sweep = false;
    for item in report.drift.clone() {
        let result = match &item {
            Drift::OrphanDir { user_id, .. } => {
                let app = app.clone();
                let id = user_id.clone();
                blocking(move || crate::users::archive_orphan(&app, ACTOR, &id))
                    .await
                    .map(|archive| format!("{item}: archived to {}, removed", archive.display()))
            }
            Drift::MissingDir { user_id, .. } => {
                let app = app.clone();
                let id = user_id.clone();
                blocking(move || crate::users::reprovision(&app, ACTOR, &id))
                    .await
                    .map(|()| format!("{item}: provisioned again (new gateway token)"))
            }
            Drift::WorkerNotRunning { user_id, .. } | Drift::WorkerNotSupervised { user_id } => {
                match users.iter().find(|u| &u.id == user_id) {
                    Some(row) => crate::workers::ensure_ready(app, row)
                        .await
                        .map(|()| format!("{item}: started, ready")),
                    None => continue,
                }
            }
            Drift::UnknownCgroup { .. } => {
                sweep = true;
                continue;
            }
        };
        match result {
            Ok(line) => report.repaired.push(line),
            Err(e) => report.failed.push(format!("{item}: {}", e.chain())),
        }
    }
    if sweep && let Some(manager) = app.workers.clone() {
        for name in manager.sweep_unknown().await {
            report
                .repaired
                .push(format!("unknown-cgroup {name}: killed, removed"));
        }
    }
    let rebuilt = {
        let app = app.clone();
        blocking(move || crate::routes::rebuild(&app)).await
    };
    match rebuilt {
        Ok(()) => report
            .repaired
            .push("routes: table rebuilt from the registry".to_owned()),
        Err(e) => report.failed.push(format!("routes: {}", e.chain())),
    }
    Ok(report)
}
