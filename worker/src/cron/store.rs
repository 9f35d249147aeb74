//! `CronStore`: `cron/jobs.json` (version 1) held in memory and rewritten atomically on every change, the previous
//! file kept as `jobs.json.bak`, and the per-job run logs `cron/runs/<jobId>.jsonl`. A file replaced by someone else
//! (the supervisor writing a member's default jobs) is noticed by its identity (inode, size, times) and adopted
//! before the next change and on [`CronStore::refresh`], so the store never writes over an external edit it has not read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::job::{Job, JobsFile, RunStatus};
use crate::memory::atomic::write_atomic;

/// Run logs are trimmed to their last `RUN_LOG_KEEP_LINES` lines once they pass `RUN_LOG_MAX_BYTES` (Clawdbot's limits).
const RUN_LOG_MAX_BYTES: u64 = 2 * 1024 * 1024;
const RUN_LOG_KEEP_LINES: usize = 2_000;

/// One line of `cron/runs/<jobId>.jsonl` (Clawdbot's `run-log.js` shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunLogEntry {
    pub ts: i64,
    pub job_id: String,
    pub action: String,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub run_at_ms: i64,
    pub duration_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at_ms: Option<i64>,
}

/// The job file of one state directory (or of one agent, with a per-agent `cron.store`).
#[derive(Debug)]
pub struct CronStore {
    path: PathBuf,
    runs_dir: PathBuf,
    file: Mutex<Loaded>,
}

/// The jobs in memory and the identity of the file they were read from or last written to.
#[derive(Debug)]
struct Loaded {
    jobs: JobsFile,
    seen: Option<FileId>,
}

/// What tells one version of the jobs file from another without reading it: an atomic rewrite makes a new inode,
/// and the times and size change with it. `None` (no file) is a state of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn file_id(path: &Path) -> Result<Option<FileId>> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("inspect", path)(e)),
    }
}

/// Reads and checks a jobs file; a missing file is an empty store.
fn read_jobs(path: &Path) -> Result<JobsFile> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let file: JobsFile =
                serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })?;
            if file.version != 1 {
                return Err(Error::Invalid {
                    what: "jobs.json version",
                    reason: format!("{} (expected 1)", file.version),
                });
            }
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JobsFile {
            version: 1,
            jobs: Vec::new(),
            extra: Default::default(),
        }),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

/// Job ids become file names of run logs: keep them to a safe alphabet.
pub(crate) fn valid_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl CronStore {
    /// Opens `<state_dir>/cron/jobs.json` (a missing file is an empty store; it is written on the first change).
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::open_at(&state_dir.join("cron").join("jobs.json"))
    }

    /// Opens a jobs file at an explicit path (`cron.store` in clawdbot.json); run logs go to `runs/` beside it.
    /// A file that exists but does not parse is an error and is never overwritten.
    pub fn open_at(path: &Path) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let seen = file_id(path)?;
        let jobs = read_jobs(path)?;
        Ok(CronStore {
            path: path.to_path_buf(),
            runs_dir: dir.join("runs"),
            file: Mutex::new(Loaded { jobs, seen }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// All jobs (a snapshot).
    pub fn jobs(&self) -> Vec<Job> {
        self.lock().jobs.jobs.clone()
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock().jobs.jobs.iter().find(|j| j.id == id).cloned()
    }

    /// Adopts the file if someone else replaced it since it was read or written here; returns whether the jobs
    /// changed. A replaced file that does not parse is an error and the jobs in memory stay as they were.
    pub fn refresh(&self) -> Result<bool> {
        let mut loaded = self.lock();
        self.adopt_external(&mut loaded)
    }

    fn adopt_external(&self, loaded: &mut Loaded) -> Result<bool> {
        let now = file_id(&self.path)?;
        if now == loaded.seen {
            return Ok(false);
        }
        let jobs = read_jobs(&self.path)?;
        let changed = jobs.jobs != loaded.jobs.jobs;
        tracing::info!(path = %self.path.display(), jobs = jobs.jobs.len(), changed, "cron: jobs file changed on disk; adopted");
        loaded.jobs = jobs;
        loaded.seen = now;
        Ok(changed)
    }

    /// Runs `change` on the jobs and, if it returns `Ok`, writes the file; on a write error the in-memory jobs are
    /// rolled back so memory and disk never disagree.
    /// An external rewrite of the file is adopted first, so the change applies to what is on disk.
    pub fn modify<T>(&self, change: impl FnOnce(&mut Vec<Job>) -> Result<T>) -> Result<T> {
        let mut loaded = self.lock();
        self.adopt_external(&mut loaded)?;
        let before = loaded.jobs.jobs.clone();
        let out = match change(&mut loaded.jobs.jobs) {
            Ok(out) => out,
            Err(e) => {
                loaded.jobs.jobs = before;
                return Err(e);
            }
        };
        if loaded.jobs.jobs != before {
            match self.persist(&loaded.jobs) {
                Ok(()) => loaded.seen = file_id(&self.path)?,
                Err(e) => {
                    loaded.jobs.jobs = before;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Adds each of `jobs` whose id is not present yet (provisioning's default jobs: idempotent, never overwrites
    /// a job the member changed). Returns how many were added.
    pub fn insert_missing(&self, jobs: Vec<Job>) -> Result<usize> {
        for job in &jobs {
            job.validate()?;
        }
        self.modify(|existing| {
            let mut added = 0;
            for job in jobs {
                if !existing.iter().any(|j| j.id == job.id) {
                    existing.push(job);
                    added += 1;
                }
            }
            Ok(added)
        })
    }

    fn persist(&self, file: &JobsFile) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(Error::io("create dir", dir))?;
        let bytes = serde_json::to_vec_pretty(file).map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let bak = self.path.with_extension("json.bak");
        match std::fs::read(&self.path) {
            Ok(previous) => {
                write_atomic(&bak, &previous, 0o600).map_err(Error::io("write backup", &bak))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read", &self.path)(e)),
        }
        write_atomic(&self.path, &bytes, 0o600).map_err(Error::io("write", &self.path))
    }

    fn run_log_path(&self, job_id: &str) -> Result<PathBuf> {
        if !valid_job_id(job_id) {
            return Err(Error::Invalid {
                what: "id",
                reason: format!("{job_id:?} is not a valid job id"),
            });
        }
        Ok(self.runs_dir.join(format!("{job_id}.jsonl")))
    }

    /// Appends one line to the job's run log (trimming it when it grows past 2 MB).
    pub fn append_run(&self, entry: &RunLogEntry) -> Result<()> {
        let path = self.run_log_path(&entry.job_id)?;
        std::fs::create_dir_all(&self.runs_dir).map_err(Error::io("create dir", &self.runs_dir))?;
        let mut line = serde_json::to_vec(entry).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        line.push(b'\n');
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(Error::io("open run log", &path))?;
            file.write_all(&line)
                .map_err(Error::io("append run log", &path))?;
            if file.metadata().map(|m| m.len()).unwrap_or(0) <= RUN_LOG_MAX_BYTES {
                return Ok(());
            }
        }
        let text = std::fs::read_to_string(&path).map_err(Error::io("read run log", &path))?;
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines[lines.len().saturating_sub(RUN_LOG_KEEP_LINES)..].join("\n") + "\n";
        write_atomic(&path, kept.as_bytes(), 0o600).map_err(Error::io("trim run log", &path))
    }

    /// The last `limit` entries of a job's run log, oldest first (unparsable lines, e.g. a torn last line, skipped).
    pub fn runs(&self, job_id: &str, limit: usize) -> Result<Vec<RunLogEntry>> {
        let path = self.run_log_path(job_id)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read run log", &path)(e)),
        };
        let entries: Vec<RunLogEntry> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(entries[entries.len().saturating_sub(limit)..].to_vec())
    }

    /// Deletes a removed job's run log.
    pub(crate) fn remove_runs(&self, job_id: &str) -> Result<()> {
        let path = self.run_log_path(job_id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove run log", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::job::NewJob;

    fn job(id: &str) -> Job {
        let new: NewJob = serde_json::from_value(serde_json::json!({"name": id, "schedule": {"kind":"every","everyMs":1000},
            "sessionTarget":"isolated","wakeMode":"now","payload":{"kind":"agentTurn","message":"ping"}}))
        .unwrap();
        Job::create(new, id.into(), 1).unwrap()
    }

    #[test]
    fn writes_version_1_with_backup_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = CronStore::open(dir.path()).unwrap();
        store
            .modify(|jobs| {
                jobs.push(job("a"));
                Ok(())
            })
            .unwrap();
        store
            .modify(|jobs| {
                jobs.push(job("b"));
                Ok(())
            })
            .unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("cron/jobs.json")).unwrap())
                .unwrap();
        assert_eq!(raw["version"], 1);
        assert_eq!(raw["jobs"].as_array().unwrap().len(), 2);
        let bak: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("cron/jobs.json.bak")).unwrap())
                .unwrap();
        assert_eq!(bak["jobs"].as_array().unwrap().len(), 1);
        let reopened = CronStore::open(dir.path()).unwrap();
        assert_eq!(reopened.jobs(), store.jobs());
    }

    #[test]
    fn insert_missing_is_idempotent_and_keeps_member_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = CronStore::open(dir.path()).unwrap();
        assert_eq!(store.insert_missing(vec![job("a"), job("b")]).unwrap(), 2);
        store
            .modify(|jobs| {
                jobs[0].name = "renamed".into();
                Ok(())
            })
            .unwrap();
        assert_eq!(store.insert_missing(vec![job("a"), job("b")]).unwrap(), 0);
        assert_eq!(store.get("a").unwrap().name, "renamed");
    }

    #[test]
    fn corrupt_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cron")).unwrap();
        write_atomic(&dir.path().join("cron/jobs.json"), b"{not json", 0o600).unwrap();
        assert!(matches!(
            CronStore::open(dir.path()).unwrap_err(),
            Error::Corrupt { .. }
        ));
        assert_eq!(
            std::fs::read(dir.path().join("cron/jobs.json")).unwrap(),
            b"{not json"
        );
    }

    #[test]
    fn failed_change_leaves_jobs_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = CronStore::open(dir.path()).unwrap();
        let err = store.modify(|jobs| -> Result<()> {
            jobs.push(job("a"));
            Err(Error::UnknownJob { id: "x".into() })
        });
        assert!(err.is_err());
        assert!(store.jobs().is_empty());
        assert!(!dir.path().join("cron/jobs.json").exists());
    }

    #[test]
    fn run_log_appends_and_reads_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = CronStore::open(dir.path()).unwrap();
        for i in 0..5 {
            store
                .append_run(&RunLogEntry {
                    ts: i,
                    job_id: "a".into(),
                    action: "finished".into(),
                    status: RunStatus::Ok,
                    error: None,
                    summary: None,
                    run_at_ms: i,
                    duration_ms: 1,
                    next_run_at_ms: None,
                })
                .unwrap();
        }
        let tail = store.runs("a", 2).unwrap();
        assert_eq!(tail.iter().map(|e| e.ts).collect::<Vec<_>>(), [3, 4]);
        assert!(store.runs("../x", 2).is_err());
        assert!(store.runs("b", 2).unwrap().is_empty());
    }

    #[test]
    fn a_file_replaced_from_outside_is_adopted_before_the_next_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = CronStore::open(dir.path()).unwrap();
        store.insert_missing(vec![job("a")]).unwrap();
        assert!(!store.refresh().unwrap());
        // Someone else (the supervisor) rewrites the file with another job added.
        let other = CronStore::open(dir.path()).unwrap();
        other.insert_missing(vec![job("b")]).unwrap();
        store.insert_missing(vec![job("c")]).unwrap();
        let ids = |s: &CronStore| s.jobs().into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(&store), ["a", "b", "c"]);
        assert_eq!(ids(&CronStore::open(dir.path()).unwrap()), ["a", "b", "c"]);
        // refresh() adopts without a change; an unreadable rewrite keeps the jobs in memory.
        other.insert_missing(vec![job("d")]).unwrap();
        assert!(store.refresh().unwrap());
        assert_eq!(ids(&store), ["a", "b", "c", "d"]);
        write_atomic(&dir.path().join("cron/jobs.json"), b"{torn", 0o600).unwrap();
        assert!(store.refresh().is_err());
        assert!(store.insert_missing(vec![job("e")]).is_err());
        assert_eq!(ids(&store), ["a", "b", "c", "d"]);
        assert_eq!(
            std::fs::read(dir.path().join("cron/jobs.json")).unwrap(),
            b"{torn"
        );
    }
}
