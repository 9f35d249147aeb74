//! Modes and owners: `Owner`, exact mode/owner fixes through an open fd, and `ensure_dir` for the root-owned dirs
//! above tenant trees (`users/`, `archive/`, staging). Inside a tenant tree use `Dir` (fd-relative) instead.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

use crate::Error;

/// The uid/gid a tenant's tree belongs to. When running as root each tenant has its own pair (no passwd entry needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Tenant uid.
    pub uid: u32,
    /// Tenant gid.
    pub gid: u32,
}

/// What [`ensure_dir`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The directory was created.
    Created,
    /// It existed; its mode or owner was fixed.
    Fixed,
    /// It existed exactly as wanted.
    Unchanged,
}

impl Change {
    /// Anything on disk changed.
    pub(crate) fn changed(self) -> bool {
        self != Change::Unchanged
    }
}

/// Ensure `path` is a real directory (created if missing, never through a symlink) with exactly `mode` and `owner`.
pub(crate) fn ensure_dir(path: &Path, mode: u32, owner: Option<Owner>) -> Result<Change, Error> {
    let created = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => false,
        Ok(meta) => return Err(wrong_type(path, "directory", &meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(mode & 0o7777).create(path) {
                Ok(()) => true,
                // Created concurrently (e.g. `users/` by another provision): check what is there now.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match std::fs::symlink_metadata(path) {
                        Ok(meta) if meta.is_dir() => false,
                        Ok(meta) => return Err(wrong_type(path, "directory", &meta)),
                        Err(source) => {
                            return Err(Error::Io {
                                op: "inspect",
                                path: path.to_owned(),
                                source,
                            });
                        }
                    }
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "create directory",
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Err(e) => {
            return Err(Error::Io {
                op: "inspect",
                path: path.to_owned(),
                source: e,
            });
        }
    };
    let dir = open_nofollow(path, nix::libc::O_DIRECTORY)?;
    let fixed = fix(&dir, path, mode, owner)?;
    Ok(if created {
        Change::Created
    } else if fixed {
        Change::Fixed
    } else {
        Change::Unchanged
    })
}

/// Set mode and owner through an open fd, touching only what differs (so a correct tree keeps its ctime too);
/// returns whether anything was fixed.
pub(crate) fn fix(
    file: &File,
    path: &Path,
    mode: u32,
    owner: Option<Owner>,
) -> Result<bool, Error> {
    let meta = file.metadata().map_err(Error::io("inspect", path))?;
    let mut fixed = false;
    if let Some(owner) = owner
        && (meta.uid() != owner.uid || meta.gid() != owner.gid)
    {
        // chown before chmod: chown clears setuid/setgid bits, chmod sets the exact mode afterwards.
        chown_fd(file, path, owner)?;
        fixed = true;
    }
    if fixed || meta.mode() & 0o7777 != mode & 0o7777 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(Error::io("chmod", path))?;
        fixed = true;
    }
    Ok(fixed)
}

/// fchown an open file to `owner`.
pub(crate) fn chown_fd(file: &File, path: &Path, owner: Owner) -> Result<(), Error> {
    std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid)).map_err(|source| {
        Error::Chown {
            path: path.to_owned(),
            uid: owner.uid,
            gid: owner.gid,
            source,
        }
    })
}

/// Open `path` read-only without following a symlink in its last component.
fn open_nofollow(path: &Path, flags: i32) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | flags)
        .open(path)
        .map_err(Error::io("open", path))
}

/// `Error::WrongFileType` for `meta` found at `path`.
pub(crate) fn wrong_type(path: &Path, expected: &'static str, meta: &Metadata) -> Error {
    wrong_type_mode(path, expected, meta.mode())
}

/// `Error::WrongFileType` for a raw `st_mode` found at `path`.
pub(crate) fn wrong_type_mode(path: &Path, expected: &'static str, st_mode: u32) -> Error {
    Error::WrongFileType {
        path: path.to_owned(),
        expected,
        found: type_name(st_mode),
    }
}

/// A human name for the file type in `st_mode`.
fn type_name(st_mode: u32) -> &'static str {
    use nix::libc::{S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};
    match st_mode & S_IFMT {
        S_IFLNK => "a symbolic link",
        S_IFDIR => "a directory",
        S_IFREG => "a regular file",
        S_IFIFO => "a FIFO",
        S_IFSOCK => "a socket",
        _ => "a device",
    }
}
