//! `Dir`: a directory opened without following symlinks, and every operation below it done relative to that fd
//! (`openat`, `mkdirat`, `fstatat`, `renameat`, all `O_NOFOLLOW`).
//!
//! A tenant owns its tree and may run processes while root re-provisions or archives it. Path-based calls would
//! follow a symlink swapped in after a check (`workspace -> /etc`); fd-relative calls cannot be redirected.

use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use crate::perms::{Change, chown_fd, fix, wrong_type_mode};
use crate::{Error, Owner};

/// An open directory and the path it was opened as (for messages only; never re-resolved).
#[derive(Debug)]
pub(crate) struct Dir {
    file: File,
    path: PathBuf,
}

/// `nix` error → `Error::Io`.
fn io(op: &'static str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> Error {
    let path = path.to_owned();
    move |errno| Error::Io {
        op,
        path,
        source: errno.into(),
    }
}

impl Dir {
    /// Open `path` as a directory; a symlink as its last component is refused.
    pub(crate) fn open(path: &Path) -> Result<Dir, Error> {
        let fd =
            nix::fcntl::open(path, dir_flags(), Mode::empty()).map_err(|e| not_a_dir(path, e))?;
        Ok(Dir {
            file: File::from(fd),
            path: path.to_owned(),
        })
    }

    /// Open `path` as a directory, following symlinks (for paths the caller chose, e.g. `atomic::write_file`).
    pub(crate) fn open_following(path: &Path) -> Result<Dir, Error> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd =
            nix::fcntl::open(path, flags, Mode::empty()).map_err(io("open directory", path))?;
        Ok(Dir {
            file: File::from(fd),
            path: path.to_owned(),
        })
    }

    /// The open directory, for `*at` calls.
    pub(crate) fn fd(&self) -> &File {
        &self.file
    }

    /// The path this directory was opened as.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Make this directory's own mode and owner exact; returns whether anything was fixed.
    pub(crate) fn fix_self(&self, mode: u32, owner: Option<Owner>) -> Result<bool, Error> {
        fix(&self.file, &self.path, mode, owner)
    }

    /// Ensure `name` is a real subdirectory with exactly `mode` and `owner`, creating it if missing.
    pub(crate) fn ensure_dir(
        &self,
        name: &str,
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(Dir, Change), Error> {
        let path = self.path.join(name);
        let created = match nix::sys::stat::mkdirat(
            &self.file,
            name,
            Mode::from_bits_truncate(mode & 0o7777),
        ) {
            Ok(()) => true,
            Err(nix::errno::Errno::EEXIST) => false,
            Err(e) => return Err(io("create directory", &path)(e)),
        };
        let fd = nix::fcntl::openat(&self.file, name, dir_flags(), Mode::empty())
            .map_err(|e| self.not_a_dir(name, e))?;
        let dir = Dir {
            file: File::from(fd),
            path,
        };
        let fixed = dir.fix_self(mode, owner)?;
        let change = if created {
            Change::Created
        } else if fixed {
            Change::Fixed
        } else {
            Change::Unchanged
        };
        Ok((dir, change))
    }

    /// Open the regular file `name` read-only (`None` when nothing is there); anything else is `WrongFileType`.
    fn open_file(&self, name: &str) -> Result<Option<File>, Error> {
        let path = self.path.join(name);
        // O_NONBLOCK: a FIFO planted here must not hang us; O_NOFOLLOW: a symlink fails with ELOOP.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY;
        let file = match nix::fcntl::openat(&self.file, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(nix::errno::Errno::ELOOP) => return Err(self.wrong_type(name, "regular file")),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let meta = file.metadata().map_err(Error::io("inspect", &path))?;
        if !meta.is_file() {
            return Err(crate::perms::wrong_type(&path, "regular file", &meta));
        }
        Ok(Some(file))
    }

    /// The bytes of the regular file `name`, or `None` when nothing is there.
    pub(crate) fn read(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(mut file) = self.open_file(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(Error::io("read", self.path.join(name)))?;
        Ok(Some(bytes))
    }

    /// Make the existing regular file `name` have exactly `mode` and `owner`; returns whether anything was fixed.
    pub(crate) fn fix_file(
        &self,
        name: &str,
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<bool, Error> {
        let path = self.path.join(name);
        let file = self.open_file(name)?.ok_or_else(|| Error::Io {
            op: "open",
            path: path.clone(),
            source: ErrorKind::NotFound.into(),
        })?;
        fix(&file, &path, mode, owner)
    }

    /// Whether anything (of any type, symlinks included) is at `name`.
    pub(crate) fn exists(&self, name: &str) -> Result<bool, Error> {
        match nix::sys::stat::fstatat(&self.file, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(io("inspect", &self.path.join(name))(e)),
        }
    }

    /// Atomically replace `name` with `bytes`: temp file (`O_EXCL`, exact mode and owner before the first byte),
    /// fsync, `renameat` over, fsync this directory.
    pub(crate) fn write_atomic(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), Error> {
        let tmp = format!(
            ".{name}.tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let tmp_path = self.path.join(&tmp);
        let result = self
            .write_tmp(&tmp, &tmp_path, bytes, mode, owner)
            .and_then(|()| {
                nix::fcntl::renameat(&self.file, tmp.as_str(), &self.file, name)
                    .map_err(io("rename into place", &self.path.join(name)))
            });
        if result.is_err() {
            // Best effort: the temp file may not exist (create failed); the original error is the one to report.
            let _ = nix::unistd::unlinkat(
                &self.file,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        result?;
        self.sync()
    }

    fn write_tmp(
        &self,
        tmp: &str,
        tmp_path: &Path,
        bytes: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), Error> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd: OwnedFd = nix::fcntl::openat(
            &self.file,
            tmp,
            flags,
            Mode::from_bits_truncate(mode & 0o7777),
        )
        .map_err(io("create temp file", tmp_path))?;
        let mut file = File::from(fd);
        // The umask may have cleared bits of `mode`; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(Error::io("chmod", tmp_path))?;
        if let Some(owner) = owner {
            chown_fd(&file, tmp_path, owner)?;
        }
        file.write_all(bytes)
            .map_err(Error::io("write", tmp_path))?;
        file.sync_all().map_err(Error::io("fsync", tmp_path))
    }

    /// fsync this directory (makes creations and renames in it durable).
    pub(crate) fn sync(&self) -> Result<(), Error> {
        self.file
            .sync_all()
            .map_err(Error::io("fsync directory", &self.path))
    }

    /// A path under which this directory's entries can be listed without re-resolving `self.path`
    /// (`/proc/self/fd/<n>` names the open directory itself).
    pub(crate) fn proc_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Rename `from` to `to` within this directory unless something is at `to` already; returns whether it moved.
    /// A missing `from` is not an error.
    pub(crate) fn rename_if_free(&self, from: &str, to: &str) -> Result<bool, Error> {
        if !self.exists(from)? || self.exists(to)? {
            return Ok(false);
        }
        nix::fcntl::renameat(&self.file, from, &self.file, to)
            .map_err(io("rename", &self.path.join(from)))?;
        self.sync()?;
        Ok(true)
    }

    /// Open the existing subdirectory `name` (never through a symlink).
    pub(crate) fn open_dir(&self, name: &str) -> Result<Dir, Error> {
        let fd = nix::fcntl::openat(&self.file, name, dir_flags(), Mode::empty())
            .map_err(|e| self.not_a_dir(name, e))?;
        Ok(Dir {
            file: File::from(fd),
            path: self.path.join(name),
        })
    }

    /// Open the existing regular file `name` (never through a symlink, never a FIFO or device).
    pub(crate) fn open_regular(&self, name: &str) -> Result<File, Error> {
        self.open_file(name)?.ok_or_else(|| Error::Io {
            op: "open",
            path: self.path.join(name),
            source: ErrorKind::NotFound.into(),
        })
    }

    /// The error for `name` not being a directory (or not openable as one).
    fn not_a_dir(&self, name: &str, errno: nix::errno::Errno) -> Error {
        match errno {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                self.wrong_type(name, "directory")
            }
            e => io("open", &self.path.join(name))(e),
        }
    }

    /// `WrongFileType` for `name`, naming what is actually there.
    fn wrong_type(&self, name: &str, expected: &'static str) -> Error {
        let path = self.path.join(name);
        match nix::sys::stat::fstatat(&self.file, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => wrong_type_mode(&path, expected, st.st_mode),
            Err(e) => io("inspect", &path)(e),
        }
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The error for `path` not being openable as a directory.
fn not_a_dir(path: &Path, errno: nix::errno::Errno) -> Error {
    match errno {
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) => crate::perms::wrong_type(path, "directory", &meta),
                Err(source) => Error::Io {
                    op: "inspect",
                    path: path.to_owned(),
                    source,
                },
            }
        }
        e => io("open", path)(e),
    }
}
