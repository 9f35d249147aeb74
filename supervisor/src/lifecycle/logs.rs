//! Worker log files `<logs_dir>/<id>.log`: root-owned 0600 in a root 0700 dir (the tenant can write only through
//! the fds it was given, never open the file), supervisor marker lines, tail, copytruncate rotation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use provisioning::UserId;

/// `<logs_dir>/<id>.log`.
pub fn log_path(logs_dir: &Path, user: &UserId) -> PathBuf {
    logs_dir.join(format!("{user}.log"))
}

/// Opens (creating 0600) the worker's log for appending; makes sure dir and file are private to root.
pub(super) fn open_append(logs_dir: &Path, user: &UserId) -> io::Result<File> {
    fs::create_dir_all(logs_dir)?;
    fs::set_permissions(logs_dir, fs::Permissions::from_mode(0o700))?;
    let path = log_path(logs_dir, user);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)?;
    // An existing file keeps its old mode on open: enforce it.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Appends one supervisor line (`[wirebot] …`) to the worker's log.
pub(super) fn marker(mut file: &File, text: &str) -> io::Result<()> {
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    file.write_all(format!("[wirebot {stamp}] {text}\n").as_bytes())
}

/// The last `n` lines of `path` (reads at most the last 1 MiB).
pub fn tail_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // partial first line
    }
    Ok(lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect())
}

/// Rotates by copytruncate once `path` exceeds `max_bytes`: `.2`→`.3`, `.1`→`.2`, copy → `.1`, truncate in place
/// (the worker keeps writing to the same open file; `O_APPEND` puts its next line at offset 0). Returns whether it
/// rotated.
pub(super) fn rotate_if_needed(path: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes || keep == 0 {
        return Ok(false);
    }
    let numbered = |i: u32| PathBuf::from(format!("{}.{i}", path.display()));
    for i in (1..keep).rev() {
        let from = numbered(i);
        if from.exists() {
            fs::rename(&from, numbered(i + 1))?;
        }
    }
    let first = numbered(1);
    fs::copy(path, &first)?;
    fs::set_permissions(&first, fs::Permissions::from_mode(0o600))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Reads what was appended to a log since `offset`, line by line (for the ready line).
#[derive(Debug)]
pub(super) struct Follow {
    file: File,
    offset: u64,
    partial: String,
}

impl Follow {
    pub(super) fn from_end(path: &Path) -> io::Result<Follow> {
        let file = File::open(path)?;
        let offset = file.metadata()?.len();
        Ok(Follow {
            file,
            offset,
            partial: String::new(),
        })
    }

    /// Complete new lines since the last call.
    pub(super) fn new_lines(&mut self) -> io::Result<Vec<String>> {
        let len = self.file.metadata()?.len();
        if len < self.offset {
            self.offset = 0; // truncated (rotation)
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        (&self.file).take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            lines.push(self.partial[..i].to_owned());
            self.partial.drain(..=i);
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_three_and_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let user: UserId = "ann".parse().unwrap();
        let path = log_path(dir.path(), &user);
        let f = open_append(dir.path(), &user).unwrap();
        for round in 0..5 {
            (&f).write_all(format!("round {round}\n").repeat(100).as_bytes())
                .unwrap();
            assert!(rotate_if_needed(&path, 100, 3).unwrap());
        }
        (&f).write_all(b"after\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "after\n",
            "O_APPEND writes land at the new end"
        );
        assert!(
            fs::read_to_string(format!("{}.1", path.display()))
                .unwrap()
                .starts_with("round 4")
        );
        assert!(
            fs::read_to_string(format!("{}.3", path.display()))
                .unwrap()
                .starts_with("round 2")
        );
        assert!(!Path::new(&format!("{}.4", path.display())).exists());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tail_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let user: UserId = "bob".parse().unwrap();
        let path = log_path(dir.path(), &user);
        let f = open_append(dir.path(), &user).unwrap();
        (&f).write_all(b"one\ntwo\n").unwrap();
        let mut follow = Follow::from_end(&path).unwrap();
        (&f).write_all(b"three\nfou").unwrap();
        assert_eq!(follow.new_lines().unwrap(), ["three"]);
        (&f).write_all(b"r\n").unwrap();
        assert_eq!(follow.new_lines().unwrap(), ["four"]);
        assert_eq!(tail_lines(&path, 2).unwrap(), ["three", "four"]);
    }
}
