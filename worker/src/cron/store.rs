//! `CronStore`: `cron/jobs.json` (version 1) held in memory and rewritten atomically on every change, the previous
//! file kept as `jobs.json.bak`, and the per-job run logs `cron/runs/<jobId>.jsonl`.

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

/// The job file of one state directory.
#[derive(Debug)]
pub struct CronStore {
    path: PathBuf,
    runs_dir: PathBuf,
    file: Mutex<JobsFile>,
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
        let file = match std::fs::read(path) {
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
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JobsFile {
                version: 1,
                jobs: Vec::new(),
                extra: Default::default(),
            },
            Err(e) => return Err(Error::io("read", path)(e)),
        };
        Ok(CronStore {
            path: path.to_path_buf(),
            runs_dir: dir.join("runs"),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, JobsFile> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// All jobs (a snapshot).
    pub fn jobs(&self) -> Vec<Job> {
        self.lock().jobs.clone()
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock().jobs.iter().find(|j| j.id == id).cloned()
    }

    /// Runs `change` on the jobs and, if it returns `Ok`, writes the file; on a write error the in-memory jobs are
    /// rolled back so memory and disk never disagree.
    pub fn modify<T>(&self, change: impl FnOnce(&mut Vec<Job>) -> Result<T>) -> Result<T> {
        let mut file = self.lock();
        let before = file.jobs.clone();
        let out = match change(&mut file.jobs) {
            Ok(out) => out,
            Err(e) => {
                file.jobs = before;
                return Err(e);
            }
        };
        if file.jobs != before
            && let Err(e) = self.persist(&file)
        {
            file.jobs = before;
            return Err(e);
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
}
