//! The one way files are written, by path: temp file in the same dir, fsync, rename over, fsync the dir.
//!
//! A reader (or a crash) sees either the old bytes or the new ones, never a mix, and the temp file is created
//! with `O_EXCL` (so a planted symlink is never followed) and gets its final mode and owner before the first byte.
//! Inside a tenant's tree provisioning uses the same writer through an open directory fd (`Dir::write_atomic`).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::dir::Dir;
use crate::{Error, Owner};

/// Atomically replace `path` with `bytes`, mode `mode` (exact, umask ignored), owned by the caller.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    write_file_owned(path, bytes, mode, None)
}

/// [`write_file`], with the file handed to `owner` (needs root when it is another uid) before it becomes visible.
pub fn write_file_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), Error> {
    let (dir, name) = split(path)?;
    Dir::open_following(&dir)?.write_atomic(&name, bytes, mode, owner)
}

/// fsync a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}

/// `(parent dir, file name)` of `path`; the parent of a bare name is `.`.
fn split(path: &Path) -> Result<(PathBuf, String), Error> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Io {
            op: "write (path has no UTF-8 file name)",
            path: path.to_owned(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn writes_exact_mode_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_file(&path, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        write_file(&path, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        write_file(&target, b"keep", 0o600).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_file(&link, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/f");
        let err = write_file(&path, b"x", 0o600).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "cannot open directory {}",
                dir.path().join("nope").display()
            )
        );
    }
}
