//! Atomic file replacement (temp file in the same dir, fsync, rename, fsync dir) and durable appends.
//! The worker's only writers: it does not depend on `provisioning`, so it carries its own small copy.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::Error;

/// Replaces `path` with `bytes` so that readers see either the old or the new content, never a mix.
/// Parent directories are created (mode 0700); the file gets `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create temp file", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write temp file", &tmp, e))?;
        f.sync_all()
            .map_err(|e| Error::io("fsync temp file", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename temp file onto", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Serialises `value` as pretty JSON and writes it atomically (mode 0600).
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })?;
    bytes.push(b'\n');
    write_file(path, &bytes, 0o600)
}

/// Appends `line` + `\n` to `path` and fsyncs before returning: once this returns, the line survives a crash.
/// A new file also gets its directory entry fsynced.
pub fn append_line(path: &Path, line: &str) -> Result<(), Error> {
    let existed = path.exists();
    if !existed && let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("open for append", path, e))?;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    f.write_all(&buf)
        .map_err(|e| Error::io("append to", path, e))?;
    f.sync_data().map_err(|e| Error::io("fsync", path, e))?;
    if !existed && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `mkdir -p` with mode 0700 for the directories it creates.
pub fn create_dir_all(dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/x.json");
        write_file(&p, b"one", 0o600).unwrap();
        write_file(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn append_line_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        append_line(&p, "a").unwrap();
        append_line(&p, "b").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "a\nb\n");
    }
}
