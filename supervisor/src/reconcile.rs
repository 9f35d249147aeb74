//! The minimal webhook reconciler: one task consuming [`ReconcileRequest`]s (and, at start, the operations a previous
//! daemon left pending) and converging each member through `users.rs` and the worker manager: create with its tier,
//! change tier, suspend (stop the worker, unbind), delete (stop, archive, tombstone). Each operation is marked done or
//! failed in the webhook store. Up to [`MAX_IN_FLIGHT`] operations of different members run at once; a member's
//! requests run one at a time, in arrival order (a later one waits for the one in flight, then supersedes it).
//!
//! A failed operation is retried with back-off (1 s doubling to 5 min, ±20 % jitter, at most [`MAX_ATTEMPTS`]); a newer
//! desired state for the member supersedes it. Attempts and the next attempt's time are persisted, so a restarted daemon
//! keeps the schedule (one that had given up is re-driven once more). Failed operations show in `wirebot status`, each
//! one in `wirebot op show`. Drift repair (`wirebot reconcile`) is `drift.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use provisioning::Tier;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::daemon::App;
use crate::error::Error;
use crate::registry::UserStatus;
use crate::users::{self, CreateUser, UpdateUser};
use crate::webhook::{self, PendingOperation, ReconcileRequest, Status, Store};

const ACTOR: &str = "webhook";

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)?
}

/// Attempts per operation before it stays `failed` (until the member's next desired state or a daemon restart).
pub const MAX_ATTEMPTS: u32 = 12;

/// Operations of different members converging at once: a `members.sync` burst is bound by shard reloads and sandboxed
/// spawns, which overlap well (one shard reload serves every placement written before it).
pub const MAX_IN_FLIGHT: usize = 8;

/// Delay before attempt `attempt + 1`: 1 s doubling, capped at 5 min, with ±20 % jitter so that many members failing
/// together (a full disk, say) do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base_ms = 1000u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(300_000);
    Duration::from_millis(base_ms).mul_f64(rand::random_range(0.8..1.2))
}

/// What one attempt came to.
enum Attempt {
    Done,
    /// Superseded by a newer desired state, or already finished: nothing to retry.
    Skipped,
    /// Failed; retry after this delay, or never (attempts exhausted).
    Failed(Option<Duration>),
}

/// A failed operation waiting for its next attempt.
struct Retry {
    due: Instant,
    attempt: u32,
    request: ReconcileRequest,
}

/// Operations in flight, one per member at most, and those waiting for a slot or for their member's previous one.
struct Flight {
    running: JoinSet<Option<Retry>>,
    /// The member of each running attempt.
    tasks: HashMap<tokio::task::Id, provisioning::UserId>,
    busy: HashSet<provisioning::UserId>,
    waiting: VecDeque<(ReconcileRequest, u32)>,
}

impl Flight {
    fn new() -> Flight {
        Flight {
            running: JoinSet::new(),
            tasks: HashMap::new(),
            busy: HashSet::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Starts attempt `number` of `request` now, or queues it behind the member's running one or a full house.
    fn submit(
        &mut self,
        app: &Arc<App>,
        store: &Arc<Store>,
        request: ReconcileRequest,
        number: u32,
    ) {
        if self.busy.contains(&request.user_id) || self.running.len() >= MAX_IN_FLIGHT {
            self.waiting.push_back((request, number));
            return;
        }
        self.busy.insert(request.user_id.clone());
        let user = request.user_id.clone();
        let (app, store) = (app.clone(), store.clone());
        let task = self
            .running
            .spawn(async move { attempt(&app, &store, request, number).await });
        self.tasks.insert(task.id(), user);
    }

    /// After attempt `task` ended: frees its member and starts what was waiting, in arrival order.
    fn finished(&mut self, app: &Arc<App>, store: &Arc<Store>, task: tokio::task::Id) {
        if let Some(user) = self.tasks.remove(&task) {
            self.busy.remove(&user);
        }
        let mut still = VecDeque::new();
        while let Some((request, number)) = self.waiting.pop_front() {
            if self.running.len() < MAX_IN_FLIGHT && !self.busy.contains(&request.user_id) {
                self.submit(app, store, request, number);
            } else {
                still.push_back((request, number));
            }
        }
        self.waiting = still;
    }
}

/// Runs until shutdown: pending operations first, then every new request and every due retry. At shutdown it stops
/// taking work and lets the attempts in flight finish (an attempt is not cancelled halfway through its steps).
pub async fn run(app: Arc<App>, store: Arc<Store>, mut rx: mpsc::Receiver<ReconcileRequest>) {
    let mut retries: Vec<Retry> = Vec::new();
    let mut flight = Flight::new();
    let pending = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.pending_operations()).await
    };
    match pending {
        Ok(Ok(ops)) => {
            let now = unix_now();
            for PendingOperation {
                request,
                attempts,
                next_attempt_at,
            } in ops
            {
                match next_attempt_at {
                    // Back-off persisted by the previous daemon: keep it.
                    Some(at) if attempts < MAX_ATTEMPTS => retries.push(Retry {
                        due: Instant::now()
                            + Duration::from_secs(u64::try_from(at - now).unwrap_or(0)),
                        attempt: attempts + 1,
                        request,
                    }),
                    // Queued, interrupted mid-attempt, or given up: drive it now (a given-up one starts over).
                    _ => {
                        let number = if attempts >= MAX_ATTEMPTS {
                            1
                        } else {
                            attempts + 1
                        };
                        flight.submit(&app, &store, request, number);
                    }
                }
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read pending webhook operations"),
        Err(e) => tracing::error!(error = %e, "reading pending webhook operations panicked"),
    }
    loop {
        let next_due = retries.iter().map(|r| r.due).min();
        let sleep = async {
            match next_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rx.recv() => match r {
                Some(request) => {
                    // A newer desired state for the member replaces its waiting retry.
                    retries.retain(|w| w.request.user_id != request.user_id);
                    flight.submit(&app, &store, request, 1);
                }
                None => break,
            },
            Some(done) = flight.running.join_next_with_id() => {
                let (task, retry) = match done {
                    Ok((task, retry)) => (task, retry),
                    Err(e) => {
                        // Still `running` in the store: the next daemon start re-drives it.
                        tracing::error!(error = %e, "a webhook operation panicked");
                        (e.id(), None)
                    }
                };
                // A request for the member that arrived meanwhile supersedes the retry.
                let superseded = flight
                    .tasks
                    .get(&task)
                    .is_some_and(|user| flight.waiting.iter().any(|(r, _)| r.user_id == *user));
                if let Some(retry) = retry.filter(|_| !superseded) {
                    retries.push(retry);
                }
                flight.finished(&app, &store, task);
            }
            () = sleep => {
                let now = Instant::now();
                let (due, waiting): (Vec<Retry>, Vec<Retry>) = retries.drain(..).partition(|w| w.due <= now);
                retries = waiting;
                for w in due {
                    flight.submit(&app, &store, w.request, w.attempt);
                }
            }
            _ = app.shutdown.cancelled() => break,
        }
    }
    while flight.running.join_next().await.is_some() {}
}

/// One attempt; returns the next one when it failed and attempts remain.
async fn attempt(
    app: &Arc<App>,
    store: &Arc<Store>,
    request: ReconcileRequest,
    number: u32,
) -> Option<Retry> {
    let Attempt::Failed(retry_in) = apply(app, store, request.clone(), number).await else {
        return None;
    };
    match retry_in {
        Some(delay) => {
            tracing::info!(user_id = %request.user_id, attempt = number, retry_in = ?delay,
                "webhook operation failed; retrying");
            Some(Retry {
                due: Instant::now() + delay,
                attempt: number + 1,
                request,
            })
        }
        None => {
            tracing::error!(user_id = %request.user_id, attempts = number,
                "webhook operation failed for good; the member's next change or a restart retries it");
            None
        }
    }
}

async fn apply(
    app: &Arc<App>,
    store: &Arc<Store>,
    request: ReconcileRequest,
    number: u32,
) -> Attempt {
    let id = request.operation_id;
    let started = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.start_operation(id, unix_now())).await
    };
    match started {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Attempt::Skipped, // superseded or already finished
        Ok(Err(e)) => {
            tracing::error!(user_id = %request.user_id, error = %e, "cannot start a webhook operation");
            return Attempt::Failed(Some(backoff(number)));
        }
        Err(e) => {
            tracing::error!(error = %e, "starting a webhook operation panicked");
            return Attempt::Failed(Some(backoff(number)));
        }
    }
    let result = converge(app, store, &request).await;
    if let Err(e) = &result {
        tracing::warn!(user_id = %request.user_id, error = %e.chain(), "webhook operation failed");
    }
    let retry_in = match &result {
        Err(_) if number < MAX_ATTEMPTS => Some(backoff(number)),
        _ => None,
    };
    let failed = result.is_err();
    let outcome = result.map_err(|e| e.chain());
    let store = store.clone();
    let finished = tokio::task::spawn_blocking(move || {
        let now = unix_now();
        // Rounded up, so a restarted daemon never retries earlier than this one would have.
        let next_at = retry_in.map(|d| now + i64::try_from(d.as_secs() + 1).unwrap_or(i64::MAX));
        store.finish_operation(
            id,
            outcome.as_ref().map(|_| ()).map_err(String::as_str),
            next_at,
            now,
        )
    })
    .await;
    if !matches!(finished, Ok(Ok(()))) {
        tracing::error!(user_id = %request.user_id, "cannot record the outcome of a webhook operation");
    }
    if failed {
        Attempt::Failed(retry_in)
    } else {
        Attempt::Done
    }
}

/// Level-triggered: each step is a no-op when already true.
async fn converge(
    app: &Arc<App>,
    store: &Arc<Store>,
    request: &ReconcileRequest,
) -> Result<(), Error> {
    let id = request.user_id.clone();
    let row = blocking({
        let app = app.clone();
        let id = id.clone();
        move || app.registry.user(&id)
    })
    .await?;
    let tier = match request.desired.tier {
        webhook::Tier::Shared => Some(Tier::Shared),
        webhook::Tier::Dedicated => Some(Tier::Dedicated),
        webhook::Tier::None => None,
    };
    match (request.desired.status, tier) {
        (Status::Deleted, _) => {
            if row.is_some() {
                crate::workers::forget(app, &id).await?;
                blocking({
                    let app = app.clone();
                    let id = id.clone();
                    move || users::delete(&app, ACTOR, &id).map(|_| ())
                })
                .await?;
                crate::routes::rebuild_logged(app).await;
            }
            let store = store.clone();
            blocking(move || {
                store
                    .write_tombstone(&id, unix_now())
                    .map_err(|source| Error::Webhook { source })
            })
            .await?;
        }
        (Status::Suspended, _) | (Status::Active, None) => {
            // Keep the data; stop serving: no worker, no route.
            if let Some(row) = row
                && row.status == UserStatus::Active
            {
                crate::workers::forget(app, &id).await?;
                blocking({
                    let app = app.clone();
                    let id = id.clone();
                    move || app.registry.set_status(&id, UserStatus::Suspended)
                })
                .await?;
                crate::routes::rebuild_logged(app).await;
            }
        }
        (Status::Active, Some(tier)) => {
            let row = match row {
                None => {
                    let request = CreateUser {
                        id: id.clone(),
                        tier,
                        email: None,
                        display_name: None,
                        runtime: None,
                    };
                    blocking({
                        let app = app.clone();
                        move || users::create(&app, ACTOR, request).map(|(row, _token)| row)
                    })
                    .await?
                }
                Some(row) => {
                    let row = if row.status == UserStatus::Suspended {
                        blocking({
                            let app = app.clone();
                            let id = id.clone();
                            move || {
                                app.registry.set_status(&id, UserStatus::Active)?;
                                app.registry
                                    .user(&id)?
                                    .ok_or(Error::UserNotFound { user: id })
                            }
                        })
                        .await?
                    } else {
                        row
                    };
                    if row.tier != tier {
                        if tier == Tier::Shared {
                            crate::workers::forget(app, &id).await?;
                        }
                        let patch = UpdateUser {
                            tier: Some(tier),
                            ..UpdateUser::default()
                        };
                        blocking({
                            let app = app.clone();
                            let id = id.clone();
                            move || users::update(&app, ACTOR, &id, patch)
                        })
                        .await?
                    } else {
                        row
                    }
                }
            };
            crate::routes::rebuild_logged(app).await;
            crate::workers::ensure_ready(app, &row).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        for (attempt, base) in [
            (1, 1_000u64),
            (2, 2_000),
            (3, 4_000),
            (9, 256_000),
            (10, 300_000),
            (40, 300_000),
        ] {
            let d = u64::try_from(backoff(attempt).as_millis()).unwrap();
            assert!(
                d >= base * 8 / 10 && d <= base * 12 / 10,
                "attempt {attempt}: {d} ms vs {base}"
            );
        }
    }
}
