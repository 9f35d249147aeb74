//! Idempotent provisioning of one user's state tree (with rollback of a failed first run) and gateway-token access.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::dir::Dir;
use crate::perms::{Change, ensure_dir};
use crate::template::{self, Managed};
use crate::{Error, Layout, Owner, Secret, Tier, UserId, atomic};

/// Mode of every directory in a user's tree.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file provisioning writes.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of `<data_dir>/users` and `<runtime_dir>/users` when provisioning creates them: tenants may traverse to
/// their own dir but not list the others.
pub(crate) const USERS_DIR_MODE: u32 = 0o711;

/// The directories of a user's tree, parents first, relative to `<data_dir>/users/<id>`.
pub(crate) const DIRS: &[&str] = &[
    "credentials",
    "cron",
    "devices",
    "identity",
    "sessions",
    "agents",
    "agents/main",
    "agents/main/agent",
    "agents/main/sessions",
    "workspace",
    "workspace/memory",
    "workspace/canvas",
    "workspace/skills",
];

/// `agents/main/agent/auth-profiles.json` as first written; provider keys go to `gateway.env`, not here.
const AUTH_PROFILES: &str = "{\"version\":1,\"profiles\":{}}\n";

/// What to provision for one user.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    /// Whose tree.
    pub user: UserId,
    /// Their tier (recorded by the caller; the tree is the same for both tiers).
    pub tier: Tier,
    /// Who owns the tree; `None` = the caller (not root).
    pub owner: Option<Owner>,
    /// Member e-mail, written into the starter `MEMORY.md` of a new user only.
    pub email: Option<String>,
    /// Member display name, written into the starter `MEMORY.md` of a new user only.
    pub display_name: Option<String>,
    /// `gateway.port` in `clawdbot.json`; `None` leaves an existing port alone.
    pub gateway_port: Option<u16>,
    /// Provider API keys by env var name (`ANTHROPIC_API_KEY` → key), written to `<runtime>/users/<id>/gateway.env`.
    /// Empty = keep whatever `gateway.env` holds (an empty one is created if missing); non-empty = exactly these.
    pub provider_keys: BTreeMap<String, Secret>,
}

/// The outcome of [`provision`].
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// `<data_dir>/users/<id>`.
    pub user_dir: PathBuf,
    /// The gateway token in `clawdbot.json` (kept from an existing file, generated otherwise).
    pub gateway_token: Secret,
    /// The tree did not exist before this call.
    pub created: bool,
    /// Anything on disk changed (a created path, a rewritten file, a fixed mode or owner).
    pub changed: bool,
}

/// Create or converge `<data_dir>/users/<id>/` and `<runtime_dir>/users/<id>/gateway.env` to `spec`.
///
/// Idempotent: a second call with the same spec changes no byte, mode, owner or mtime. It never clobbers user
/// data (`workspace/MEMORY.md`, `workspace/memory/`, sessions, credentials, `auth-profiles.json`), keeps the
/// existing gateway token and every key of `clawdbot.json` it does not manage, and fixes wrong modes and owners of
/// the paths it manages. It installs the Wirebot skills into `skills/` ([`crate::skills::install`]: changed
/// templates are updated, a member's own skills kept). It never follows a symlink planted inside the tree (a
/// managed path that is a symlink or of the wrong type is an [`Error::WrongFileType`]).
///
/// A first provision builds the tree in `<data_dir>/users/.staging-<id>` and renames it into place last, so it
/// either fully appears or, when any step fails, everything it created (staging tree, runtime dir) is removed and
/// the error names the operation and path. A failed re-provision leaves the existing tree and its data in place.
/// Callers serialise calls per user id.
///
/// # Injecting a real failure (rollback tests)
/// Works as root too (where modes do not stop anything): before provisioning user `<id>`, put a **regular file**
/// at `<runtime_dir>/users/<id>` (or at `<runtime_dir>/users`). The data tree is then complete in staging, the
/// runtime step fails with `Error::WrongFileType` ("… must be a directory, found a regular file"), and the call
/// returns with no `<data_dir>/users/<id>` (nor staging dir) left behind; the planted file itself is not touched.
pub fn provision(layout: &Layout, spec: &ProvisionSpec) -> Result<Provisioned, Error> {
    check_provider_keys(&spec.provider_keys)?;
    let users_dir = layout.users_dir();
    create_root(&users_dir)?;
    let user_dir = layout.user_dir(&spec.user);
    let span = tracing::info_span!("provision", user_id = %spec.user);
    let _enter = span.enter();
    match std::fs::symlink_metadata(&user_dir) {
        Ok(meta) if meta.is_dir() => {
            let (gateway_token, changed) = reprovision(layout, spec, &user_dir)?;
            if changed {
                tracing::info!(path = %user_dir.display(), "re-provisioned: fixed differences");
            }
            Ok(Provisioned {
                user_dir,
                gateway_token,
                created: false,
                changed,
            })
        }
        Ok(meta) => Err(crate::perms::wrong_type(&user_dir, "directory", &meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let gateway_token = first_provision(layout, spec, &user_dir)?;
            tracing::info!(path = %user_dir.display(), tier = %spec.tier, "provisioned");
            Ok(Provisioned {
                user_dir,
                gateway_token,
                created: true,
                changed: true,
            })
        }
        Err(source) => Err(Error::Io {
            op: "inspect",
            path: user_dir,
            source,
        }),
    }
}

/// Build the tree in staging, write the runtime env, rename into place; undo everything on failure.
fn first_provision(
    layout: &Layout,
    spec: &ProvisionSpec,
    user_dir: &Path,
) -> Result<Secret, Error> {
    let staging = layout.staging_dir(&spec.user);
    // A staging dir can only be left by a crash mid-provision (callers serialise per user): start over.
    remove_any(&staging)?;
    let mut runtime_created = false;
    let result = (|| {
        let token = Secret::generate();
        converge_tree(&staging, user_dir, spec, Some(token.clone()))?;
        converge_runtime(layout, spec, &mut runtime_created)?;
        // RENAME_NOREPLACE: a plain rename would silently replace an (empty) dir created meanwhile.
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staging,
            nix::fcntl::AT_FDCWD,
            user_dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| Error::Io {
            op: "rename staging tree into place",
            path: user_dir.to_owned(),
            source: e.into(),
        })?;
        atomic::sync_dir(&layout.users_dir())?;
        Ok(token)
    })();
    if let Err(err) = &result {
        tracing::warn!(error = %err, "first provision failed: rolling back");
        rollback(
            &staging,
            runtime_created.then(|| layout.runtime_user_dir(&spec.user)),
        );
    }
    result
}

/// Remove what a failed first provision created; failures here are logged, the original error is returned.
fn rollback(staging: &Path, runtime_user_dir: Option<PathBuf>) {
    for dir in std::iter::once(staging.to_owned()).chain(runtime_user_dir) {
        if let Err(err) = remove_any(&dir) {
            tracing::error!(error = %err, path = %dir.display(), "rollback left a path behind");
        }
    }
}

/// Converge an existing tree in place.
fn reprovision(
    layout: &Layout,
    spec: &ProvisionSpec,
    user_dir: &Path,
) -> Result<(Secret, bool), Error> {
    let (token, mut changed) = converge_tree(user_dir, user_dir, spec, None)?;
    let mut runtime_created = false;
    changed |= converge_runtime(layout, spec, &mut runtime_created)?;
    Ok((token, changed))
}

/// Make `root` (which will live at `final_dir`) the user's tree; returns the gateway token and whether anything
/// changed. `new_token` is set for a fresh tree; otherwise the existing token is kept (or generated if missing).
/// Everything below `root` goes through directory fds, never re-resolving a path the tenant could swap.
fn converge_tree(
    root: &Path,
    final_dir: &Path,
    spec: &ProvisionSpec,
    new_token: Option<Secret>,
) -> Result<(Secret, bool), Error> {
    let owner = spec.owner;
    let mut changed = ensure_dir(root, DIR_MODE, owner)?.changed();
    let root_dir = Dir::open(root)?;
    // Directories by relative path ("" = root); DIRS lists parents first.
    let mut dirs: BTreeMap<&str, Dir> = BTreeMap::new();
    // Directories whose entries changed (a subdirectory was created): fsynced at the end unless an atomic write
    // into them already did it.
    let mut unsynced: BTreeSet<&str> = BTreeSet::new();
    for rel in DIRS {
        let (parent_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = if parent_rel.is_empty() {
            &root_dir
        } else {
            dir_of(&dirs, parent_rel)?
        };
        let (dir, change) = parent.ensure_dir(name, DIR_MODE, owner)?;
        if change == Change::Created {
            unsynced.insert(parent_rel);
        }
        changed |= change.changed();
        dirs.insert(rel, dir);
    }

    let config_path = root.join("clawdbot.json");
    let old = match root_dir.read("clawdbot.json")? {
        Some(bytes) => Some(template::parse(
            &config_path,
            &String::from_utf8_lossy(&bytes),
        )?),
        None => None,
    };
    let token = match (new_token, old.as_ref().and_then(template::token)) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => Secret::generate(),
    };
    let mut config = match &old {
        Some(parsed) => parsed.clone(),
        None => template::template()?,
    };
    // Clawdbot resolves a relative workspace against the worker's cwd: always write an absolute path.
    let workspace = final_dir.join("workspace");
    let workspace =
        std::path::absolute(&workspace).map_err(Error::io("make absolute", &workspace))?;
    template::apply(
        &config_path,
        &mut config,
        &Managed {
            token: &token,
            port: spec.gateway_port,
            workspace: &workspace,
        },
    )?;
    if old.as_ref() == Some(&config) {
        changed |= root_dir.fix_file("clawdbot.json", FILE_MODE, owner)?;
    } else {
        let bytes = template::to_bytes(&config_path, &config)?;
        root_dir.write_atomic("clawdbot.json", &bytes, FILE_MODE, owner)?;
        unsynced.remove("");
        changed = true;
    }

    for (dir_rel, name, bytes) in [
        (
            "agents/main/agent",
            "auth-profiles.json",
            AUTH_PROFILES.to_owned(),
        ),
        ("workspace", "MEMORY.md", starter_memory(spec)),
    ] {
        let change = write_if_missing(dir_of(&dirs, dir_rel)?, name, bytes.as_bytes(), owner)?;
        if change == Change::Created {
            unsynced.remove(dir_rel);
        }
        changed |= change.changed();
    }
    // The Wirebot skills in the managed skills dir `<state>/skills` (a member's own skills there are kept).
    let (skills_changed, skills_created) = crate::skills::install_into(&root_dir, owner)?;
    changed |= skills_changed;
    if skills_created {
        unsynced.insert("");
    }
    for rel in unsynced {
        if rel.is_empty() {
            root_dir.sync()?
        } else {
            dir_of(&dirs, rel)?.sync()?
        }
    }
    Ok((token, changed))
}

/// The already-opened directory `rel` (DIRS lists parents first, so it is always there).
fn dir_of<'d>(dirs: &'d BTreeMap<&str, Dir>, rel: &str) -> Result<&'d Dir, Error> {
    dirs.get(rel).ok_or_else(|| Error::Io {
        op: "find parent directory (DIRS must list parents first)",
        path: PathBuf::from(rel),
        source: ErrorKind::NotFound.into(),
    })
}

/// Ensure `<runtime>/users/<id>/gateway.env`; sets `created` as soon as the user's runtime dir is created.
fn converge_runtime(
    layout: &Layout,
    spec: &ProvisionSpec,
    created: &mut bool,
) -> Result<bool, Error> {
    let users = layout.runtime_users_dir();
    create_root(&users)?;
    let users_dir = Dir::open(&users)?;
    let (dir, dir_change) = users_dir.ensure_dir(spec.user.as_str(), DIR_MODE, spec.owner)?;
    if dir_change == Change::Created {
        *created = true;
        users_dir.sync()?;
    }
    let changed = if spec.provider_keys.is_empty() {
        write_if_missing(&dir, "gateway.env", b"", spec.owner)?.changed()
    } else {
        let mut text = String::new();
        for (name, key) in &spec.provider_keys {
            text.push_str(name);
            text.push('=');
            text.push_str(key.expose());
            text.push('\n');
        }
        match dir.read("gateway.env")? {
            Some(old) if old == text.as_bytes() => {
                dir.fix_file("gateway.env", FILE_MODE, spec.owner)?
            }
            _ => {
                dir.write_atomic("gateway.env", text.as_bytes(), FILE_MODE, spec.owner)?;
                true
            }
        }
    };
    Ok(dir_change.changed() | changed)
}

/// Write `bytes` to `dir/name` unless something is already there (then it must be a regular file, and only its
/// mode and owner are fixed). This is how user data (MEMORY.md, auth-profiles.json) is never clobbered.
fn write_if_missing(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    owner: Option<Owner>,
) -> Result<Change, Error> {
    if dir.exists(name)? {
        Ok(if dir.fix_file(name, FILE_MODE, owner)? {
            Change::Fixed
        } else {
            Change::Unchanged
        })
    } else {
        dir.write_atomic(name, bytes, FILE_MODE, owner)?;
        Ok(Change::Created)
    }
}

/// Create `<data_dir>/users` or `<runtime_dir>/users` (and missing parents) if missing; an existing one is left as
/// it is (the operator may have chosen its mode), but it must be a real directory.
fn create_root(dir: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(crate::perms::wrong_type(dir, "directory", &meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
            }
            if ensure_dir(dir, USERS_DIR_MODE, None)? == Change::Created
                && let Some(parent) = dir.parent()
            {
                atomic::sync_dir(parent)?;
            }
            Ok(())
        }
        Err(source) => Err(Error::Io {
            op: "inspect",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Remove whatever is at `path` (a tree, a file, a symlink itself); nothing there is fine.
pub(crate) fn remove_any(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).map_err(Error::io("remove directory", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(Error::io("remove", path)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "inspect",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Provider key names must be env var names and values single-line, so `gateway.env` stays `KEY=value` lines.
fn check_provider_keys(keys: &BTreeMap<String, Secret>) -> Result<(), Error> {
    for (name, key) in keys {
        let bad = |reason| {
            Err(Error::InvalidProviderKey {
                name: name.clone(),
                reason,
            })
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return bad("the name is empty"),
            Some(c) if !(c.is_ascii_uppercase() || c == '_') => {
                return bad("the name must start with A-Z or '_'");
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            return bad("the name may only hold A-Z, 0-9 and '_'");
        }
        let value = key.expose();
        if value.is_empty() {
            return bad("the value is empty");
        }
        if value.contains(['\n', '\r', '\0']) {
            return bad("the value contains a line break or NUL");
        }
    }
    Ok(())
}

/// The first `MEMORY.md`: a short note, plus who the member is when known (control characters flattened).
fn starter_memory(spec: &ProvisionSpec) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
    };
    let mut text = String::from(
        "# Memory\n\nLong-term notes about the member and what matters to them. Add to this file freely: \
         provisioning never overwrites it.\n",
    );
    match (spec.display_name.as_deref(), spec.email.as_deref()) {
        (Some(name), Some(email)) => {
            text.push_str(&format!("\n- Member: {} <{}>\n", clean(name), clean(email)))
        }
        (Some(name), None) => text.push_str(&format!("\n- Member: {}\n", clean(name))),
        (None, Some(email)) => text.push_str(&format!("\n- Member e-mail: {}\n", clean(email))),
        (None, None) => {}
    }
    text
}

/// The gateway token of a provisioned user, read from `clawdbot.json` (`gateway.auth.token`).
pub fn gateway_token(layout: &Layout, user: &UserId) -> Result<Secret, Error> {
    let (_, config) = read_config(layout, user)?;
    template::token(&config).ok_or_else(|| Error::ConfigShape {
        path: layout.clawdbot_json(user),
        detail: "`gateway.auth.token` is missing or not a non-empty string".into(),
    })
}

/// Replace the gateway token with a fresh one (atomic rewrite of `clawdbot.json`, every other key kept) and
/// return it. The caller restarts the worker so the new token takes effect (`gateway.reload.mode` is `off`).
pub fn rotate_gateway_token(
    layout: &Layout,
    user: &UserId,
    owner: Option<Owner>,
) -> Result<Secret, Error> {
    let path = layout.clawdbot_json(user);
    let (dir, mut config) = read_config(layout, user)?;
    let token = Secret::generate();
    let set = |c: &mut serde_json::Value| -> Option<()> {
        let auth = c.get_mut("gateway")?.get_mut("auth")?.as_object_mut()?;
        auth.insert("token".into(), token.expose().into());
        Some(())
    };
    set(&mut config).ok_or_else(|| Error::ConfigShape {
        path: path.clone(),
        detail: "`gateway.auth` is missing or not an object (re-provision the user)".into(),
    })?;
    dir.write_atomic(
        "clawdbot.json",
        &template::to_bytes(&path, &config)?,
        FILE_MODE,
        owner,
    )?;
    tracing::info!(user_id = %user, "gateway token rotated");
    Ok(token)
}

/// The user dir (opened) and its parsed `clawdbot.json`; `NotProvisioned` when the user dir is missing.
fn read_config(layout: &Layout, user: &UserId) -> Result<(Dir, serde_json::Value), Error> {
    let user_dir = layout.user_dir(user);
    if !crate::layout::is_real_dir(&user_dir) {
        return Err(Error::NotProvisioned {
            user: user.clone(),
            path: user_dir,
        });
    }
    let dir = Dir::open(&user_dir)?;
    let path = layout.clawdbot_json(user);
    let bytes = dir.read("clawdbot.json")?.ok_or_else(|| Error::Io {
        op: "read",
        path: path.clone(),
        source: ErrorKind::NotFound.into(),
    })?;
    let config = template::parse(&path, &String::from_utf8_lossy(&bytes))?;
    Ok((dir, config))
}
