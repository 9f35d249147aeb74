//! `CronService`: the runner task (sleeps until the next due job, runs due jobs one at a time through the
//! gateway's executor, one catch-up run for jobs missed while stopped), job changes, and the `cron` events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};
use super::job::{Job, NewJob, RunStatus, Schedule};
use super::schedule::next_run_at_ms;
use super::store::{CronStore, RunLogEntry, valid_job_id};

/// The runner re-checks at least this often, so a wall-clock jump is noticed within a minute.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What running a job produced; the executor reports failures here rather than as an `Err`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub error: Option<String>,
    /// A short text for the run log (e.g. the start of the agent's reply).
    pub summary: Option<String>,
}

impl RunOutcome {
    pub fn ok(summary: Option<String>) -> Self {
        RunOutcome {
            status: RunStatus::Ok,
            error: None,
            summary,
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        RunOutcome {
            status: RunStatus::Error,
            error: Some(message.into()),
            summary: None,
        }
    }
    pub fn skipped(reason: impl Into<String>) -> Self {
        RunOutcome {
            status: RunStatus::Skipped,
            error: Some(reason.into()),
            summary: None,
        }
    }
}

/// Runs one job: the gateway's agent turn (isolated) or system-event injection (main). It owns its own timeout.
pub type Executor = Arc<dyn Fn(Job) -> BoxFuture<'static, RunOutcome> + Send + Sync>;

/// What changed, as sent in `cron` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CronAction {
    Added,
    Updated,
    Removed,
    Started,
    Finished,
}

/// Payload of a gateway `cron` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CronEvent {
    pub job_id: String,
    pub action: CronAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_at_ms: Option<i64>,
}

impl CronEvent {
    fn new(job_id: &str, action: CronAction) -> Self {
        CronEvent {
            job_id: job_id.to_owned(),
            action,
            run_at_ms: None,
            duration_ms: None,
            status: None,
            error: None,
            summary: None,
            next_run_at_ms: None,
        }
    }
}

/// Wall-clock milliseconds. `Virtual` advances with tokio's clock, so `tokio::time::pause()` drives it in tests.
#[derive(Debug, Clone, Copy)]
enum Clock {
    System,
    Virtual {
        base_ms: i64,
        base: tokio::time::Instant,
    },
}

impl Clock {
    fn now_ms(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_millis(),
            Clock::Virtual { base_ms, base } => {
                base_ms + i64::try_from(base.elapsed().as_millis()).unwrap_or(i64::MAX - base_ms)
            }
        }
    }
}

/// Why `run_now` did not run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    NotDue,
    AlreadyRunning,
}

/// The cron engine of one gateway: the store, the executor, and the event stream.
pub struct CronService {
    store: CronStore,
    executor: Executor,
    clock: Clock,
    wake: Notify,
    events: broadcast::Sender<CronEvent>,
    running: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for CronService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronService")
            .field("store", &self.store.path())
            .field("clock", &self.clock)
            .finish()
    }
}

impl CronService {
    /// A service on the system clock.
    pub fn new(store: CronStore, executor: Executor) -> Arc<Self> {
        Self::with_clock(store, executor, Clock::System)
    }

    /// A service whose clock reads `start_ms` now and then advances with tokio's (pausable) clock.
    pub fn with_virtual_clock(store: CronStore, executor: Executor, start_ms: i64) -> Arc<Self> {
        Self::with_clock(
            store,
            executor,
            Clock::Virtual {
                base_ms: start_ms,
                base: tokio::time::Instant::now(),
            },
        )
    }

    fn with_clock(store: CronStore, executor: Executor, clock: Clock) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(CronService {
            store,
            executor,
            clock,
            wake: Notify::new(),
            events,
            running: Mutex::new(HashSet::new()),
        })
    }

    pub fn store(&self) -> &CronStore {
        &self.store
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// `cron` events from now on (job changes and runs); the gateway forwards them to authorised clients.
    pub fn subscribe(&self) -> broadcast::Receiver<CronEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: CronEvent) {
        // No subscriber is fine: events are advisory.
        let _ = self.events.send(event);
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The earliest `nextRunAtMs` of an enabled job.
    pub fn next_wake_at_ms(&self) -> Option<i64> {
        self.store
            .jobs()
            .iter()
            .filter(|j| j.enabled)
            .filter_map(|j| j.state.next_run_at_ms)
            .min()
    }

    /// Adds a job (`cron.add`): validated, given a uuid and its first `nextRunAtMs`.
    pub fn add(&self, new: NewJob) -> Result<Job> {
        let now = self.now_ms();
        let mut job = Job::create(new, uuid::Uuid::new_v4().to_string(), now)?;
        job.state.next_run_at_ms = if job.enabled {
            next_run_at_ms(&job.schedule, now, job.created_at_ms)?
        } else {
            None
        };
        let stored = job.clone();
        self.store.modify(|jobs| {
            jobs.push(stored);
            Ok(())
        })?;
        self.emit(CronEvent {
            next_run_at_ms: job.state.next_run_at_ms,
            ..CronEvent::new(&job.id, CronAction::Added)
        });
        self.wake.notify_one();
        Ok(job)
    }

    /// Applies a `cron.update` patch; a schedule or `enabled` change recomputes the next run.
    pub fn update(&self, id: &str, patch: &serde_json::Value) -> Result<Job> {
        let now = self.now_ms();
        let job = self.store.modify(|jobs| {
            let slot = jobs
                .iter_mut()
                .find(|j| j.id == id)
                .ok_or_else(|| Error::UnknownJob { id: id.to_owned() })?;
            let (mut job, reschedule) = slot.patched(patch, now)?;
            if reschedule {
                job.state.next_run_at_ms = if job.enabled {
                    next_run_at_ms(&job.schedule, now, job.created_at_ms)?
                } else {
                    None
                };
            }
            *slot = job.clone();
            Ok(job)
        })?;
        self.emit(CronEvent {
            next_run_at_ms: job.state.next_run_at_ms,
            ..CronEvent::new(id, CronAction::Updated)
        });
        self.wake.notify_one();
        Ok(job)
    }

    /// Removes a job and its run log; `false` when there was no such job.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let removed = self.store.modify(|jobs| {
            let before = jobs.len();
            jobs.retain(|j| j.id != id);
            Ok(jobs.len() != before)
        })?;
        if removed {
            self.store.remove_runs(id)?;
            self.emit(CronEvent::new(id, CronAction::Removed));
            self.wake.notify_one();
        }
        Ok(removed)
    }

    /// Runs a job now (`cron.run`): `force` runs it regardless of its schedule, otherwise only if it is due.
    pub async fn run_now(
        &self,
        id: &str,
        force: bool,
    ) -> Result<std::result::Result<RunOutcome, NotRun>> {
        let job = self
            .store
            .get(id)
            .ok_or_else(|| Error::UnknownJob { id: id.to_owned() })?;
        let due = job.enabled && job.state.next_run_at_ms.is_some_and(|n| n <= self.now_ms());
        if !force && !due {
            return Ok(Err(NotRun::NotDue));
        }
        Ok(self.execute(id, None).await?.ok_or(NotRun::AlreadyRunning))
    }

    /// Clears run markers left by a crash and fills in missing next-run times. Jobs whose next run passed
    /// while the gateway was stopped keep it, so the first loop iteration runs each of them exactly once.
    fn prepare(&self) -> Result<()> {
        let now = self.now_ms();
        self.store.modify(|jobs| {
            for job in jobs.iter_mut() {
                job.state.running_at_ms = None;
                if job.enabled && job.state.next_run_at_ms.is_none() {
                    job.state.next_run_at_ms =
                        next_run_at_ms(&job.schedule, now, job.created_at_ms).unwrap_or(None);
                }
            }
            Ok(())
        })
    }

    /// Adopts a jobs file someone else rewrote (see [`CronStore::refresh`]) and gives enabled jobs without a next
    /// run one (an adopted job, also one adopted by an earlier change); the runner then re-plans. Returns whether
    /// anything changed.
    pub fn refresh(&self) -> Result<bool> {
        let adopted = self.store.refresh()?;
        let unplanned = self
            .store
            .jobs()
            .iter()
            .any(|j| j.enabled && j.state.next_run_at_ms.is_none());
        let planned = unplanned && {
            let now = self.now_ms();
            self.store.modify(|jobs| {
                let mut changed = false;
                for job in jobs.iter_mut() {
                    if job.enabled && job.state.next_run_at_ms.is_none() {
                        job.state.next_run_at_ms =
                            next_run_at_ms(&job.schedule, now, job.created_at_ms).unwrap_or(None);
                        changed |= job.state.next_run_at_ms.is_some();
                    }
                }
                Ok(changed)
            })?
        };
        if adopted || planned {
            self.wake.notify_one();
        }
        Ok(adopted || planned)
    }

    /// The runner: until `shutdown`, run due jobs one at a time and sleep until the next one (or a change).
    /// Each round first adopts an external rewrite of the jobs file, so one is noticed within `MAX_SLEEP` even
    /// without a reload.
    /// A run in progress at shutdown is abandoned and stays due, so it runs once after the next start.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if let Err(error) = self.prepare() {
            tracing::error!(%error, "cron: cannot prepare jobs; runner not started");
            return;
        }
        tracing::info!(store = %self.store.path().display(), jobs = self.store.jobs().len(), "cron runner started");
        while !shutdown.is_cancelled() {
            if let Err(error) = self.refresh() {
                tracing::warn!(store = %self.store.path().display(), %error, "cron: the jobs file on disk does not read; keeping the jobs in memory");
            }
            let now = self.now_ms();
            let mut due: Vec<Job> = self
                .store
                .jobs()
                .into_iter()
                .filter(|j| j.enabled && j.state.next_run_at_ms.is_some_and(|n| n <= now))
                .collect();
            due.sort_by_key(|j| j.state.next_run_at_ms);
            for job in due {
                if shutdown.is_cancelled() {
                    break;
                }
                if let Err(error) = self.execute(&job.id, Some(&shutdown)).await {
                    tracing::error!(job_id = %job.id, %error, "cron: recording a run failed");
                }
            }
            let now = self.now_ms();
            let wait = self
                .next_wake_at_ms()
                .map_or(MAX_SLEEP, |next| {
                    Duration::from_millis(u64::try_from(next - now).unwrap_or(0))
                })
                .min(MAX_SLEEP);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
        tracing::info!("cron runner stopped");
    }

    /// Runs one job through the executor and records the result. `Ok(None)`: it was already running;
    /// also `Ok(None)` when shutdown interrupted it (state left due).
    async fn execute(
        &self,
        id: &str,
        shutdown: Option<&CancellationToken>,
    ) -> Result<Option<RunOutcome>> {
        if !self.running().insert(id.to_owned()) {
            return Ok(None);
        }
        let result = self.execute_marked(id, shutdown).await;
        self.running().remove(id);
        result
    }

    async fn execute_marked(
        &self,
        id: &str,
        shutdown: Option<&CancellationToken>,
    ) -> Result<Option<RunOutcome>> {
        let start = self.now_ms();
        let job = self.store.modify(|jobs| {
            let job = jobs
                .iter_mut()
                .find(|j| j.id == id)
                .ok_or_else(|| Error::UnknownJob { id: id.to_owned() })?;
            job.state.running_at_ms = Some(start);
            Ok(job.clone())
        })?;
        self.emit(CronEvent {
            run_at_ms: Some(start),
            ..CronEvent::new(id, CronAction::Started)
        });
        tracing::info!(job_id = %id, name = %job.name, "cron: job started");

        // Spawned (and always joined or aborted) so a panicking executor becomes an error, not a dead runner.
        let mut handle = tokio::spawn((self.executor)(job.clone()));
        let joined = match shutdown {
            Some(token) => tokio::select! {
                joined = &mut handle => Some(joined),
                () = token.cancelled() => None,
            },
            None => Some((&mut handle).await),
        };
        let Some(joined) = joined else {
            handle.abort();
            let _ = handle.await;
            self.store.modify(|jobs| {
                if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
                    job.state.running_at_ms = None;
                }
                Ok(())
            })?;
            tracing::warn!(job_id = %id, "cron: run interrupted by shutdown; it stays due");
            return Ok(None);
        };
        let outcome = joined.unwrap_or_else(|e| RunOutcome::error(format!("executor failed: {e}")));
        let end = self.now_ms();
        let duration = (end - start).max(0);
        let one_shot = matches!(job.schedule, Schedule::At { .. });
        let delete =
            one_shot && job.delete_after_run == Some(true) && outcome.status == RunStatus::Ok;
        let next = if one_shot {
            None
        } else {
            next_run_at_ms(&job.schedule, end, job.created_at_ms).unwrap_or(None)
        };
        self.store.modify(|jobs| {
            if delete {
                jobs.retain(|j| j.id != id);
                return Ok(());
            }
            if let Some(j) = jobs.iter_mut().find(|j| j.id == id) {
                j.state.running_at_ms = None;
                j.state.last_run_at_ms = Some(start);
                j.state.last_status = Some(outcome.status);
                j.state.last_error.clone_from(&outcome.error);
                j.state.last_duration_ms = Some(duration);
                j.state.next_run_at_ms = next;
                if one_shot {
                    j.enabled = false;
                }
            }
            Ok(())
        })?;
        let entry = RunLogEntry {
            ts: end,
            job_id: id.to_owned(),
            action: "finished".to_owned(),
            status: outcome.status,
            error: outcome.error.clone(),
            summary: outcome.summary.clone(),
            run_at_ms: start,
            duration_ms: duration,
            next_run_at_ms: next,
        };
        if valid_job_id(id) {
            self.store.append_run(&entry)?;
        }
        tracing::info!(job_id = %id, status = ?outcome.status, duration_ms = duration, "cron: job finished");
        self.emit(CronEvent {
            run_at_ms: Some(start),
            duration_ms: Some(duration),
            status: Some(outcome.status),
            error: outcome.error.clone(),
            summary: outcome.summary.clone(),
            next_run_at_ms: next,
            ..CronEvent::new(id, CronAction::Finished)
        });
        if delete {
            self.emit(CronEvent::new(id, CronAction::Removed));
        }
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::job::{Payload, SessionTarget, WakeMode};

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    type RunLog = Arc<Mutex<Vec<(String, i64)>>>;

    /// An executor that records (job id, virtual time) and answers ok.
    fn recording(clock_start: i64) -> (Executor, RunLog) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let base = tokio::time::Instant::now();
        let seen = Arc::clone(&log);
        let exec: Executor = Arc::new(move |job: Job| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                let at = clock_start + i64::try_from(base.elapsed().as_millis()).unwrap();
                seen.lock().unwrap().push((job.id.clone(), at));
                RunOutcome::ok(Some(format!("ran {}", job.name)))
            })
        });
        (exec, log)
    }

    fn new_job(name: &str, schedule: serde_json::Value) -> NewJob {
        serde_json::from_value(
            serde_json::json!({"name": name, "schedule": schedule, "sessionTarget": "isolated",
            "wakeMode": "now", "payload": {"kind": "agentTurn", "message": "ping"}}),
        )
        .unwrap()
    }

    async fn wait_finished(rx: &mut broadcast::Receiver<CronEvent>) -> CronEvent {
        loop {
            let e = rx.recv().await.unwrap();
            if e.action == CronAction::Finished {
                return e;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_job_fires_on_its_grid_and_at_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let (exec, log) = recording(T0);
        let cron = CronService::with_virtual_clock(CronStore::open(dir.path()).unwrap(), exec, T0);
        let every = cron
            .add(new_job(
                "tick",
                serde_json::json!({"kind": "every", "everyMs": 10_000}),
            ))
            .unwrap();
        let once = cron
            .add(new_job(
                "once",
                serde_json::json!({"kind": "at", "atMs": T0 + 25_000}),
            ))
            .unwrap();
        assert_eq!(every.state.next_run_at_ms, Some(T0 + 10_000));
        let mut rx = cron.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&cron).run(shutdown.clone()));
        for _ in 0..4 {
            wait_finished(&mut rx).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let runs = log.lock().unwrap().clone();
        let want = vec![
            (every.id.clone(), T0 + 10_000),
            (every.id.clone(), T0 + 20_000),
            (once.id.clone(), T0 + 25_000),
            (every.id.clone(), T0 + 30_000),
        ];
        assert_eq!(runs, want);
        let once = cron.store().get(&once.id).unwrap();
        assert_eq!(
            (
                once.enabled,
                once.state.next_run_at_ms,
                once.state.last_status
            ),
            (false, None, Some(RunStatus::Ok))
        );
        let entries = cron.store().runs(&every.id, 10).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].summary.as_deref(), Some("ran tick"));
    }

    #[tokio::test(start_paused = true)]
    async fn job_due_while_stopped_runs_once_after_start() {
        let dir = tempfile::tempdir().unwrap();
        let (exec, log) = recording(T0);
        {
            // Written by an earlier run of the gateway, which then stopped: next run 1 h ago, every 10 min.
            let cron = CronService::with_virtual_clock(
                CronStore::open(dir.path()).unwrap(),
                Arc::clone(&exec),
                T0 - 7_200_000,
            );
            let job = cron
                .add(new_job(
                    "hourly-ish",
                    serde_json::json!({"kind": "every", "everyMs": 600_000}),
                ))
                .unwrap();
            assert_eq!(job.state.next_run_at_ms, Some(T0 - 6_600_000));
        }
        let cron = CronService::with_virtual_clock(CronStore::open(dir.path()).unwrap(), exec, T0);
        let mut rx = cron.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&cron).run(shutdown.clone()));
        let first = wait_finished(&mut rx).await;
        assert_eq!(first.run_at_ms, Some(T0));
        // The next run is back on the grid, in the future: no backlog of missed runs.
        assert_eq!(first.next_run_at_ms, Some(T0 + 600_000));
        let second = wait_finished(&mut rx).await;
        assert_eq!(second.run_at_ms, Some(T0 + 600_000));
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cron_expression_job_fires_at_the_zone_local_time_and_changes_wake_the_runner() {
        let dir = tempfile::tempdir().unwrap();
        let (exec, log) = recording(T0);
        let cron = CronService::with_virtual_clock(CronStore::open(dir.path()).unwrap(), exec, T0);
        let shutdown = CancellationToken::new();
        let mut rx = cron.subscribe();
        let task = tokio::spawn(Arc::clone(&cron).run(shutdown.clone()));
        tokio::task::yield_now().await;
        // Added while the runner sleeps: 09:00 Berlin = 08:00 UTC.
        let job = cron
            .add(serde_json::from_value(serde_json::json!({"name":"standup","schedule":{"kind":"cron","expr":"0 9 * * *","tz":"Europe/Berlin"},
                "sessionTarget":"main","wakeMode":"now","payload":{"kind":"systemEvent","text":"standup"}})).unwrap())
            .unwrap();
        assert_eq!(
            (job.session_target, job.wake_mode),
            (SessionTarget::Main, WakeMode::Now)
        );
        assert!(matches!(job.payload, Payload::SystemEvent { .. }));
        let e = wait_finished(&mut rx).await;
        assert_eq!(e.run_at_ms, Some(T0 + 8 * 3_600_000));
        assert_eq!(e.next_run_at_ms, Some(T0 + 32 * 3_600_000));
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn run_now_respects_mode_and_panics_become_errors() {
        let dir = tempfile::tempdir().unwrap();
        let exec: Executor = Arc::new(|_job: Job| Box::pin(async { panic!("executor bug") }));
        let cron = CronService::with_virtual_clock(CronStore::open(dir.path()).unwrap(), exec, T0);
        let job = cron
            .add(new_job(
                "x",
                serde_json::json!({"kind": "every", "everyMs": 60_000}),
            ))
            .unwrap();
        assert_eq!(
            cron.run_now(&job.id, false).await.unwrap(),
            Err(NotRun::NotDue)
        );
        let outcome = cron.run_now(&job.id, true).await.unwrap().unwrap();
        assert_eq!(outcome.status, RunStatus::Error);
        assert!(outcome.error.unwrap().contains("executor failed"));
        assert!(matches!(
            cron.run_now("nope", true).await.unwrap_err(),
            Error::UnknownJob { .. }
        ));
        assert!(cron.remove(&job.id).unwrap());
        assert!(!cron.remove(&job.id).unwrap());
    }
}
