//! Removing a user: archive the whole tree to `<data_dir>/archive/<id>-<utc>.tar.zst` (fsynced, read back), then
//! delete it; and restoring such an archive byte for byte.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};

use crate::dir::Dir;
use crate::provision::{DIR_MODE, remove_any};
use crate::{Error, Layout, UserId, atomic, perms};

/// zstd level: 3 is zstd's default, fast and ~3x on JSON and Markdown.
const ZSTD_LEVEL: i32 = 3;

/// Archive `<data_dir>/users/<id>` to `<data_dir>/archive/<id>-<UTC yyyymmddThhmmssZ>.tar.zst` and only then
/// delete it and `<runtime_dir>/users/<id>`.
///
/// Entries are `<id>/...` with modes, owners and mtimes; symlinks are stored as symlinks, sockets are skipped.
/// The archive is written to a temp file, fsynced, read back completely (every entry, every byte, zstd
/// checksums), hard-linked to its final name (never replacing an archive: a second removal in the same second gets
/// `-2`, `-3`... appended) and the archive dir fsynced. On any failure before that the user's tree is untouched.
pub fn deprovision(layout: &Layout, user: &UserId) -> Result<PathBuf, Error> {
    let user_dir = layout.user_dir(user);
    if !crate::layout::is_real_dir(&user_dir) {
        return Err(Error::NotProvisioned {
            user: user.clone(),
            path: user_dir,
        });
    }
    let archive_dir = layout.archive_dir();
    perms::ensure_dir(&archive_dir, DIR_MODE, None)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let tmp = archive_dir.join(format!(
        ".{user}-{stamp}.tar.zst.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = write_archive(&tmp, &user_dir, user).and_then(|written| {
        let read = count_entries(&tmp)?;
        if read != written {
            return Err(Error::ArchiveVerify {
                path: tmp.clone(),
                written,
                read,
            });
        }
        place(&tmp, &archive_dir, user, &stamp)
    });
    // The temp name goes away in every case (after a successful hard link the final name holds the data).
    let _ = std::fs::remove_file(&tmp);
    let archive = result?;
    atomic::sync_dir(&archive_dir)?;
    tracing::info!(user_id = %user, archive = %archive.display(), "archived; deleting the user's tree");

    std::fs::remove_dir_all(&user_dir).map_err(Error::io("remove directory", &user_dir))?;
    atomic::sync_dir(&layout.users_dir())?;
    remove_any(&layout.runtime_user_dir(user))?;
    Ok(archive)
}

/// Write the tar.zst of `user_dir` to a new file `tmp` (0600), fsynced; returns the number of entries.
fn write_archive(tmp: &Path, user_dir: &Path, user: &UserId) -> Result<usize, Error> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(tmp)
        .map_err(Error::io("create archive", tmp))?;
    let encoder =
        zstd::Encoder::new(file, ZSTD_LEVEL).map_err(Error::io("start zstd stream for", tmp))?;
    let mut builder = tar::Builder::new(encoder);
    let mut count = 0;
    append_tree(
        &mut builder,
        &Dir::open(user_dir)?,
        Path::new(user.as_str()),
        &mut count,
    )?;
    let encoder = builder
        .into_inner()
        .map_err(Error::io("finish tar stream for", tmp))?;
    let file = encoder
        .finish()
        .map_err(Error::io("finish zstd stream for", tmp))?;
    file.sync_all().map_err(Error::io("fsync", tmp))?;
    Ok(count)
}

/// Append `dir` as `name` and everything below it (sorted, so archives are reproducible), counting entries.
/// Everything is opened relative to directory fds with `O_NOFOLLOW`: a tenant swapping a path for a symlink while
/// root archives cannot smuggle another file's content into its archive (the swap makes the removal fail instead).
fn append_tree<W: io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Dir,
    name: &Path,
    count: &mut usize,
) -> Result<(), Error> {
    let meta = std::fs::metadata(dir.proc_path()).map_err(Error::io("inspect", dir.path()))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    builder
        .append_data(&mut header, name, io::empty())
        .map_err(Error::io("archive", dir.path()))?;
    *count += 1;

    let mut entries = std::fs::read_dir(dir.proc_path())
        .and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(Error::io("list directory", dir.path()))?;
    entries.sort();
    for entry in entries {
        let Some(entry_name) = entry.to_str() else {
            tracing::warn!(path = %dir.path().join(&entry).display(), "skipping a non-UTF-8 name while archiving");
            continue;
        };
        let path = dir.path().join(entry_name);
        let child = name.join(entry_name);
        let st = nix::sys::stat::fstatat(
            dir.fd(),
            entry_name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::Io {
            op: "inspect",
            path: path.clone(),
            source: e.into(),
        })?;
        match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => append_tree(builder, &dir.open_dir(entry_name)?, &child, count)?,
            nix::libc::S_IFREG => {
                let file = dir.open_regular(entry_name)?;
                let meta = file.metadata().map_err(Error::io("inspect", &path))?;
                let mut header = tar::Header::new_gnu();
                header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                builder
                    .append_data(&mut header, &child, file)
                    .map_err(Error::io("archive", &path))?;
                *count += 1;
            }
            nix::libc::S_IFLNK => {
                let target =
                    nix::fcntl::readlinkat(dir.fd(), entry_name).map_err(|e| Error::Io {
                        op: "read link",
                        path: path.clone(),
                        source: e.into(),
                    })?;
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(st.st_mode & 0o7777);
                header.set_uid(u64::from(st.st_uid));
                header.set_gid(u64::from(st.st_gid));
                header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
                header.set_size(0);
                builder
                    .append_link(&mut header, &child, &target)
                    .map_err(Error::io("archive", &path))?;
                *count += 1;
            }
            // Sockets and FIFOs are live endpoints, not data (and tenants cannot create devices).
            _ => {
                tracing::warn!(path = %path.display(), "skipping a socket, FIFO or device while archiving")
            }
        }
    }
    Ok(())
}

/// Read the whole archive back (all data, so zstd and tar checksums are checked) and count its entries.
fn count_entries(archive: &Path) -> Result<usize, Error> {
    let read = || -> io::Result<usize> {
        let mut tar = tar::Archive::new(zstd::Decoder::new(File::open(archive)?)?);
        let mut count = 0;
        for entry in tar.entries()? {
            io::copy(&mut entry?, &mut io::sink())?;
            count += 1;
        }
        Ok(count)
    };
    read().map_err(Error::io("read back archive", archive))
}

/// Give `tmp` its final name `<id>-<stamp>[-n].tar.zst` without ever replacing an existing archive.
fn place(tmp: &Path, archive_dir: &Path, user: &UserId, stamp: &str) -> Result<PathBuf, Error> {
    for n in 1..1000 {
        let name = if n == 1 {
            format!("{user}-{stamp}.tar.zst")
        } else {
            format!("{user}-{stamp}-{n}.tar.zst")
        };
        let path = archive_dir.join(name);
        match std::fs::hard_link(tmp, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(Error::Io {
                    op: "name archive",
                    path,
                    source,
                });
            }
        }
    }
    Err(Error::Io {
        op: "name archive (999 archives in one second)",
        path: archive_dir.join(format!("{user}-{stamp}.tar.zst")),
        source: ErrorKind::AlreadyExists.into(),
    })
}

/// Restore an archive written by [`deprovision`] to `<users_dir>/<id>` (which must not exist) and return that path.
///
/// Every entry must be `<id>` or below it, for one valid [`UserId`], with no `..`, absolute path or link pointing
/// outside (checked before anything is written). Contents, modes and mtimes are restored exactly; owners too when
/// running as root. Extraction happens in `<users_dir>/.restore-<id>` and is renamed into place, so a failure leaves
/// nothing behind.
pub fn restore_archive(archive: &Path, users_dir: &Path) -> Result<PathBuf, Error> {
    let user = check_archive(archive)?;
    let target = users_dir.join(user.as_str());
    match std::fs::symlink_metadata(&target) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Ok(_) => {
            return Err(Error::Io {
                op: "restore into existing",
                path: target,
                source: ErrorKind::AlreadyExists.into(),
            });
        }
        Err(source) => {
            return Err(Error::Io {
                op: "inspect",
                path: target,
                source,
            });
        }
    }
    let staging = users_dir.join(format!(".restore-{user}"));
    remove_any(&staging)?;
    perms::ensure_dir(&staging, DIR_MODE, None)?;
    let result = (|| {
        let unpack = || -> io::Result<()> {
            let mut tar = tar::Archive::new(zstd::Decoder::new(File::open(archive)?)?);
            tar.set_preserve_permissions(true);
            tar.set_preserve_mtime(true);
            tar.set_preserve_ownerships(nix::unistd::geteuid().is_root());
            tar.set_unpack_xattrs(false);
            tar.set_overwrite(false);
            tar.unpack(&staging)
        };
        unpack().map_err(Error::io("unpack archive", archive))?;
        let restored = staging.join(user.as_str());
        sync_tree(&restored)?;
        std::fs::rename(&restored, &target)
            .map_err(Error::io("rename restored tree into place", &target))?;
        atomic::sync_dir(users_dir)
    })();
    if let Err(err) = remove_any(&staging) {
        tracing::warn!(error = %err, "restore left its staging dir behind");
    }
    result?;
    tracing::info!(user_id = %user, archive = %archive.display(), "restored");
    Ok(target)
}

/// fsync every regular file and directory below `path` (children first), so a restored tree is durable before it
/// is renamed into place. Only used on trees this process just unpacked (no tenant can race it).
fn sync_tree(path: &Path) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("inspect", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(Error::io("list directory", path))? {
            sync_tree(&entry.map_err(Error::io("list directory", path))?.path())?;
        }
    } else if !meta.is_file() {
        return Ok(());
    }
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("fsync", path))
}

/// Check every entry of an archive is under one `<id>/` and return that id.
fn check_archive(archive: &Path) -> Result<UserId, Error> {
    let invalid = |detail: String| Error::InvalidArchive {
        path: archive.to_owned(),
        detail,
    };
    let mut tar = tar::Archive::new(
        zstd::Decoder::new(File::open(archive).map_err(Error::io("open archive", archive))?)
            .map_err(Error::io("read archive", archive))?,
    );
    let mut user: Option<UserId> = None;
    for entry in tar.entries().map_err(Error::io("read archive", archive))? {
        let entry = entry.map_err(Error::io("read archive", archive))?;
        let path = entry
            .path()
            .map_err(Error::io("read archive entry of", archive))?
            .into_owned();
        let shown = path.display().to_string();
        let mut comps = path.components();
        let first = match comps.next() {
            Some(Component::Normal(c)) => c.to_str().unwrap_or_default().to_owned(),
            _ => {
                return Err(invalid(format!(
                    "entry {shown:?} does not start with a user id"
                )));
            }
        };
        if comps.any(|c| !matches!(c, Component::Normal(_))) {
            return Err(invalid(format!(
                "entry {shown:?} is not a plain relative path"
            )));
        }
        let id: UserId = first
            .parse()
            .map_err(|e: crate::InvalidUserId| invalid(format!("entry {shown:?}: {e}")))?;
        match &user {
            Some(u) if *u != id => return Err(invalid(format!("entries for both {u} and {id}"))),
            Some(_) => {}
            None => user = Some(id),
        }
        if let Some(link) = entry
            .link_name()
            .map_err(Error::io("read archive entry of", archive))?
            && entry.header().entry_type().is_hard_link()
            && !link.starts_with(
                path.components()
                    .next()
                    .map(|c| c.as_os_str())
                    .unwrap_or_default(),
            )
        {
            return Err(invalid(format!(
                "hard link {shown:?} points outside the user's tree"
            )));
        }
    }
    user.ok_or_else(|| invalid("it has no entries".into()))
}
