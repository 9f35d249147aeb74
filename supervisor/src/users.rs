//! User operations that change the registry row and the state directory together, as one logical operation:
//! create, update (re-provision), rotate the gateway token, delete (archive first). Each appends to `events`.
//!
//! Consistency rule: an `active` row and a complete directory appear and disappear together.
//! - create: the row is reserved as `provisioning` (id, uid, port taken atomically), the tree is provisioned outside
//!   any registry transaction (so creates run in parallel), then the row becomes `active`; a provisioning failure
//!   deletes the reserved row (provisioning removes its own files), a failed activation also removes the new tree,
//!   and rows a crash left in `provisioning` are swept (tree archived) at the next start;
//! - update and token rotation re-provision inside a short registry transaction, rolled back if provisioning fails;
//! - delete archives and removes the tree first, outside any transaction, then deletes the row.
//!
//! A per-member claim ([`Busy`]) keeps two of these from running for the same member at once.
//! These functions are synchronous: the admin API runs them on a blocking thread.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use provisioning::{Owner, ProvisionSpec, Secret, Tier, UserId};
use serde::Serialize;

use crate::daemon::App;
use crate::error::Error;
use crate::registry::{NewUser, Outcome, UserRow, UserStatus, token_hash};

/// A checked request to create a member.
#[derive(Debug, Clone)]
pub struct CreateUser {
    pub id: UserId,
    pub tier: Tier,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// The member's own worker runtime (`None` = its tier's).
    pub runtime: Option<crate::config::Runtime>,
}

/// A checked partial update. `Some(None)` clears an optional field; `None` leaves it alone.
#[derive(Debug, Clone, Default)]
pub struct UpdateUser {
    pub tier: Option<Tier>,
    pub email: Option<Option<String>>,
    pub display_name: Option<Option<String>>,
    /// `Some(None)` goes back to the tier's runtime.
    pub runtime: Option<Option<crate::config::Runtime>>,
}

/// What a removal left behind.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub id: UserId,
    /// The `.tar.zst` archive of the whole state directory, written and fsynced before the directory was deleted;
    /// `None` when the directory was already gone (the row is removed anyway, so the registry matches the disk).
    pub archive: Option<PathBuf>,
}

/// Who owns a member's tree: a dedicated member's own uid, the shared uid for shared members (their shard runs as
/// it), the caller when not root.
pub fn owner_of(app: &App, row: &UserRow) -> Option<Owner> {
    match (row.tier, row.uid, row.gid) {
        (Tier::Shared, Some(_), _) => crate::shared::owner(app),
        (Tier::Dedicated, Some(uid), Some(gid)) => Some(Owner { uid, gid }),
        _ => None,
    }
}

fn spec_for(app: &App, row: &UserRow) -> ProvisionSpec {
    ProvisionSpec {
        user: row.id.clone(),
        tier: row.tier,
        owner: owner_of(app, row),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        gateway_port: row.port,
        provider_keys: Default::default(),
    }
}

/// Appends the audit event for `result` and passes it through. A failure to audit is logged, not returned: the action
/// itself already happened (or did not) and the caller must learn that.
fn audited<T>(
    app: &App,
    actor: &str,
    action: &str,
    user: &UserId,
    result: Result<T, Error>,
) -> Result<T, Error> {
    let (outcome, detail) = match &result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) => (Outcome::Error, Some(e.chain())),
    };
    if let Err(e) = app.registry.append_event(
        actor,
        action,
        Some(user.as_str()),
        outcome,
        detail.as_deref(),
    ) {
        tracing::error!(user_id = %user, action, error = %e.chain(), "cannot append to the audit log");
    }
    result
}

/// Creates a member: registry row (uid/port allocated) and state directory, or neither. Returns the row and the
/// gateway token (shown to the caller once).
///
/// Three short steps, so that creates of different users provision in parallel (provisioning is fsync-bound): reserve
/// the row as `provisioning` (id, uid and port taken atomically), provision without holding the registry lock, then
/// activate the row. A failed provisioning deletes the reserved row; a failed activation also removes the new tree.
pub fn create(app: &App, actor: &str, req: CreateUser) -> Result<(UserRow, Secret), Error> {
    let id = req.id.clone();
    let result = create_steps(app, req);
    if let Ok((row, _)) = &result {
        tracing::info!(user_id = %row.id, tier = %row.tier, uid = ?row.uid, port = ?row.port, actor, "user created");
    }
    audited(app, actor, "user.create", &id, result)
}

fn create_steps(app: &App, req: CreateUser) -> Result<(UserRow, Secret), Error> {
    let id = req.id.clone();
    if crate::shared::is_reserved(&id) {
        return Err(Error::InvalidField {
            pointer: "/id".to_owned(),
            detail: format!(
                "ids starting with {:?} are reserved for shard workers",
                crate::shared::SHARD_PREFIX
            ),
        });
    }
    let _claim = app.busy.claim(&id)?;
    let new = NewUser {
        id: req.id,
        tier: req.tier,
        email: req.email,
        display_name: req.display_name,
        token_hash: String::new(),
        runtime: req.runtime,
    };
    let reserved = app
        .registry
        .transaction(|tx| tx.insert_user(&new, app.tenancy.uids(), app.config.ports))?;
    let provisioned = match provisioning::provision(&app.layout, &spec_for(app, &reserved)) {
        Ok(provisioned) => provisioned,
        Err(source) => {
            // provision() removed whatever it created; give the id, uid and port back.
            forget_reserved(app, &id);
            return Err(Error::Provisioning {
                op: "provision the state directory",
                user: id,
                source,
            });
        }
    };
    let hash = token_hash(&provisioned.gateway_token);
    match app.registry.transaction(|tx| tx.activate_user(&id, &hash)) {
        Ok(row) => Ok((row, provisioned.gateway_token)),
        Err(e) => {
            if provisioned.created {
                remove_new_tree(app, &id);
            }
            forget_reserved(app, &id);
            Err(e)
        }
    }
}

fn forget_reserved(app: &App, id: &UserId) {
    if let Err(e) = app.registry.transaction(|tx| tx.delete_user(id)) {
        tracing::error!(user_id = %id, error = %e.chain(), "cannot delete a reserved row; it is swept at the next start");
    }
}

/// Sweeps creates a previous daemon left half-done (rows still `provisioning`). Run once at start, before serving.
///
/// The tree may be a partial new one or one the create was adopting (e.g. restored from an archive by an operator), so
/// it is archived before it is removed, like every removal: nothing is lost, and disk matches the registry again.
pub fn recover_interrupted_creates(app: &App) -> Result<(), Error> {
    for id in app.registry.interrupted_creates()? {
        tracing::warn!(user_id = %id, "undoing a create interrupted by a daemon stop");
        let detail = if app.layout.user_dir(&id).exists() {
            match provisioning::deprovision(&app.layout, &id) {
                Ok(archive) => format!(
                    "create interrupted by a daemon stop; its tree was archived to {} and removed",
                    archive.display()
                ),
                Err(e) => {
                    remove_new_tree(app, &id);
                    format!(
                        "create interrupted by a daemon stop; its tree could not be archived ({e}) and was removed"
                    )
                }
            }
        } else {
            remove_new_tree(app, &id);
            "create interrupted by a daemon stop before its tree existed".to_owned()
        };
        app.registry.transaction(|tx| tx.delete_user(&id))?;
        app.registry.append_event(
            "daemon",
            "user.create.recover",
            Some(id.as_str()),
            Outcome::Error,
            Some(&detail),
        )?;
    }
    Ok(())
}

/// Refuses to touch a user whose create is still running (provisioning is serialised per user id).
fn settled(row: UserRow) -> Result<UserRow, Error> {
    if row.status == UserStatus::Provisioning {
        Err(Error::UserBusy { user: row.id })
    } else {
        Ok(row)
    }
}

fn remove_new_tree(app: &App, id: &UserId) {
    for dir in [app.layout.user_dir(id), app.layout.runtime_user_dir(id)] {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(user_id = %id, path = %dir.display(), error = %e, "cannot remove a rolled-back tree");
        }
    }
}

/// Updates tier, e-mail or display name and re-provisions (idempotent: unchanged values change nothing on disk).
pub fn update(app: &App, actor: &str, id: &UserId, patch: UpdateUser) -> Result<UserRow, Error> {
    let claim = app.busy.claim(id);
    let result = claim.and_then(|_claim| {
        app.registry.transaction(|tx| {
            let current = settled(
                tx.user(id)?
                    .ok_or_else(|| Error::UserNotFound { user: id.clone() })?,
            )?;
            let tier = patch.tier.unwrap_or(current.tier);
            let email = patch.email.clone().unwrap_or(current.email);
            let display_name = patch.display_name.clone().unwrap_or(current.display_name);
            let row = tx.update_user(
                id,
                tier,
                email.as_deref(),
                display_name.as_deref(),
                app.config.ports,
            )?;
            let row = match patch.runtime {
                Some(runtime) => {
                    tx.set_runtime(id, runtime)?;
                    tx.user(id)?
                        .ok_or_else(|| Error::UserNotFound { user: id.clone() })?
                }
                None => row,
            };
            provisioning::provision(&app.layout, &spec_for(app, &row)).map_err(|source| {
                Error::Provisioning {
                    op: "re-provision the state directory",
                    user: id.clone(),
                    source,
                }
            })?;
            Ok(row)
        })
    });
    if let Ok(row) = &result {
        tracing::info!(user_id = %row.id, tier = %row.tier, port = ?row.port, actor, "user updated");
    }
    audited(app, actor, "user.update", id, result)
}

/// Stores a member's ritual settings (standup, reflection, time zone); the caller then serves the member again
/// (`workers::ensure_ready`), which writes the matching default cron jobs.
pub fn set_schedule(
    app: &App,
    actor: &str,
    id: &UserId,
    schedule: &provisioning::MemberSchedule,
) -> Result<UserRow, Error> {
    let result = (|| {
        let _claim = app.busy.claim(id)?;
        let row = settled(
            app.registry
                .user(id)?
                .ok_or_else(|| Error::UserNotFound { user: id.clone() })?,
        )?;
        app.registry.set_schedule(id, schedule)?;
        Ok(row)
    })();
    if result.is_ok() {
        tracing::info!(user_id = %id, actor, schedule = %schedule, "ritual settings stored");
    }
    audited(app, actor, "user.schedule", id, result)
}

/// Issues a new gateway token (written to `clawdbot.json`, hash to the registry) and returns it once.
pub fn rotate_token(app: &App, actor: &str, id: &UserId) -> Result<Secret, Error> {
    let claim = app.busy.claim(id);
    let result = claim.and_then(|_claim| {
        app.registry.transaction(|tx| {
            let row = settled(
                tx.user(id)?
                    .ok_or_else(|| Error::UserNotFound { user: id.clone() })?,
            )?;
            let token = provisioning::rotate_gateway_token(&app.layout, id, owner_of(app, &row))
                .map_err(|source| Error::Provisioning {
                    op: "rotate the gateway token",
                    user: id.clone(),
                    source,
                })?;
            tx.set_token_hash(id, &token_hash(&token))?;
            Ok(token)
        })
    });
    if result.is_ok() {
        tracing::info!(user_id = %id, actor, "gateway token rotated");
    }
    audited(app, actor, "user.token.rotate", id, result)
}

/// Removes a member: archives and deletes the directory, then deletes the row (uid, port, bindings freed).
/// If archiving fails nothing is deleted and the row stays.
///
/// Archiving can take seconds for a big tree, so it runs outside any registry transaction (the registry file is
/// shared with the webhook store, whose writers must not wait that long); the per-user claim keeps a concurrent
/// create, update or removal of the same member out meanwhile.
pub fn delete(app: &App, actor: &str, id: &UserId) -> Result<Removed, Error> {
    let result = delete_steps(app, id);
    if let Ok(removed) = &result {
        tracing::info!(user_id = %id, archive = ?removed.archive, actor, "user removed");
    }
    audited(app, actor, "user.delete", id, result)
}

fn delete_steps(app: &App, id: &UserId) -> Result<Removed, Error> {
    let _claim = app.busy.claim(id)?;
    settled(
        app.registry
            .user(id)?
            .ok_or_else(|| Error::UserNotFound { user: id.clone() })?,
    )?;
    let archive = match provisioning::deprovision(&app.layout, id) {
        Ok(archive) => Some(archive),
        Err(provisioning::Error::NotProvisioned { path, .. }) => {
            tracing::warn!(user_id = %id, path = %path.display(), "no state directory to archive; removing the row");
            remove_new_tree(app, id); // the runtime dir, if any
            None
        }
        Err(source) => {
            return Err(Error::Provisioning {
                op: "archive and remove the state directory",
                user: id.clone(),
                source,
            });
        }
    };
    // The tree is archived and gone; a failure here leaves a row without a tree, which the next removal clears.
    app.registry.transaction(|tx| tx.delete_user(id))?;
    Ok(Removed {
        id: id.clone(),
        archive,
    })
}

/// Members with an operation in flight in this daemon: at most one create, update, token rotation or removal per
/// member at a time (provisioning is serialised per user id). A second request gets 409 `user-busy`.
#[derive(Debug, Default)]
pub struct Busy(Mutex<HashSet<UserId>>);

/// Holds a member's claim; released on drop.
#[derive(Debug)]
pub struct Claim<'a> {
    busy: &'a Busy,
    id: UserId,
}

impl Busy {
    /// Claims `id`, or fails with `UserBusy` if another operation holds it.
    pub fn claim(&self, id: &UserId) -> Result<Claim<'_>, Error> {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if set.insert(id.clone()) {
            Ok(Claim {
                busy: self,
                id: id.clone(),
            })
        } else {
            Err(Error::UserBusy { user: id.clone() })
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.busy
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Archives, then removes, a state directory no registry row owns (`wirebot reconcile`). Refuses when the member has
/// a row after all (it is not an orphan then). Returns the archive.
pub fn archive_orphan(app: &App, actor: &str, id: &UserId) -> Result<PathBuf, Error> {
    let result = (|| {
        let _claim = app.busy.claim(id)?;
        if app.registry.user(id)?.is_some() {
            return Err(Error::UserExists { user: id.clone() });
        }
        let archive =
            provisioning::deprovision(&app.layout, id).map_err(|source| Error::Provisioning {
                op: "archive and remove the orphan state directory",
                user: id.clone(),
                source,
            })?;
        remove_new_tree(app, id); // its runtime dir, if any
        Ok(archive)
    })();
    if let Ok(archive) = &result {
        tracing::warn!(user_id = %id, archive = %archive.display(), actor, "orphan state directory archived and removed");
    }
    audited(app, actor, "user.orphan.archive", id, result)
}

/// Provisions a member's vanished state directory again (`wirebot reconcile`). The new tree has a new gateway token,
/// whose hash replaces the registry's (the old token died with the directory).
pub fn reprovision(app: &App, actor: &str, id: &UserId) -> Result<(), Error> {
    let result = (|| {
        let _claim = app.busy.claim(id)?;
        let row = app
            .registry
            .user(id)?
            .ok_or_else(|| Error::UserNotFound { user: id.clone() })?;
        let provisioned =
            provisioning::provision(&app.layout, &spec_for(app, &row)).map_err(|source| {
                Error::Provisioning {
                    op: "provision the missing state directory",
                    user: id.clone(),
                    source,
                }
            })?;
        let hash = token_hash(&provisioned.gateway_token);
        app.registry.transaction(|tx| tx.set_token_hash(id, &hash))
    })();
    audited(app, actor, "user.reprovision", id, result)
}
