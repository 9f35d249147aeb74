//! Run registry: active and recently finished runs by runId (= idempotency key), kept 5 min / 1000 entries,
//! so a repeated request is answered `in_flight` or with the cached result, and `agent.wait` can await them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::session_key::SessionKey;

const KEEP_FOR: Duration = Duration::from_secs(5 * 60);
const KEEP_MAX: usize = 1000;

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    /// `ok` | `error` | `aborted`
    pub status: &'static str,
    pub ended_at: i64,
    pub text: String,
    pub error: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug)]
struct RunRecord {
    session_key: SessionKey,
    cancel: CancellationToken,
    done: watch::Receiver<Option<RunOutcome>>,
    started_at: i64,
    created: Instant,
}

/// A newly registered run, held by the task that executes it.
#[derive(Debug)]
pub struct RunSlot {
    pub run_id: String,
    pub cancel: CancellationToken,
    pub done: watch::Sender<Option<RunOutcome>>,
    pub started_at: i64,
}

/// What a lookup by runId found.
#[derive(Debug)]
pub enum Existing {
    InFlight,
    Finished(RunOutcome),
}

#[derive(Debug, Default)]
pub struct Runs {
    inner: Mutex<(HashMap<String, RunRecord>, VecDeque<String>)>,
}

impl Runs {
    /// Registers `run_id` unless it is known; if known, says how it stands (idempotency).
    pub fn register(&self, run_id: &str, key: &SessionKey) -> Result<RunSlot, Existing> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        evict(map, order);
        if let Some(r) = map.get(run_id) {
            return Err(match r.done.borrow().clone() {
                Some(o) => Existing::Finished(o),
                None => Existing::InFlight,
            });
        }
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let started_at = crate::transcript::now_ms();
        map.insert(
            run_id.to_string(),
            RunRecord {
                session_key: key.clone(),
                cancel: cancel.clone(),
                done: rx,
                started_at,
                created: Instant::now(),
            },
        );
        order.push_back(run_id.to_string());
        Ok(RunSlot {
            run_id: run_id.to_string(),
            cancel,
            done: tx,
            started_at,
        })
    }

    /// Cancels the unfinished runs of `key` (all, or just `run_id`); returns the ids cancelled.
    pub fn abort(&self, key: &SessionKey, run_id: Option<&str>) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (id, r) in g.0.iter() {
            if &r.session_key == key && run_id.is_none_or(|x| x == id) && r.done.borrow().is_none()
            {
                r.cancel.cancel();
                out.push(id.clone());
            }
        }
        out.sort();
        out
    }

    /// Cancels the unfinished runs of every session of `agent` (the agent was removed); returns how many.
    pub fn abort_agent(&self, agent: &crate::agent_id::AgentId) -> usize {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for r in g.0.values() {
            if r.session_key.agent_id() == *agent && r.done.borrow().is_none() {
                r.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Cancels every unfinished run (shutdown).
    pub fn abort_all(&self) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for r in g.0.values() {
            r.cancel.cancel();
        }
    }

    pub fn active(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.values().filter(|r| r.done.borrow().is_none()).count()
    }

    /// A receiver that yields the outcome, and the start time, if the run is known.
    pub fn watch(&self, run_id: &str) -> Option<(watch::Receiver<Option<RunOutcome>>, i64)> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(run_id).map(|r| (r.done.clone(), r.started_at))
    }

    /// The session a known run belongs to.
    pub fn session_of(&self, run_id: &str) -> Option<SessionKey> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(run_id).map(|r| r.session_key.clone())
    }
}

fn evict(map: &mut HashMap<String, RunRecord>, order: &mut VecDeque<String>) {
    while let Some(front) = order.front() {
        let expired = map.get(front).is_none_or(|r| {
            let finished = r.done.borrow().is_some();
            finished && (r.created.elapsed() > KEEP_FOR || map.len() > KEEP_MAX)
        });
        if !expired {
            break;
        }
        if let Some(id) = order.pop_front() {
            map.remove(&id);
        }
    }
}

/// Waits for the outcome, at most `timeout`.
pub async fn wait(
    mut rx: watch::Receiver<Option<RunOutcome>>,
    timeout: Duration,
) -> Option<RunOutcome> {
    let fut = async {
        loop {
            if let Some(o) = rx.borrow().clone() {
                return Some(o);
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_id::AgentId;

    #[test]
    fn idempotent_registration_and_abort() {
        let runs = Runs::default();
        let key = SessionKey::main(&AgentId::main(), "main");
        let slot = runs.register("r1", &key).unwrap();
        assert!(matches!(runs.register("r1", &key), Err(Existing::InFlight)));
        assert_eq!(runs.abort(&key, None), vec!["r1".to_string()]);
        assert!(slot.cancel.is_cancelled());
        let o = RunOutcome {
            status: "aborted",
            ended_at: 1,
            text: String::new(),
            error: None,
            provider: None,
            model: None,
        };
        slot.done.send_replace(Some(o.clone()));
        assert!(matches!(runs.register("r1", &key), Err(Existing::Finished(x)) if x == o));
        assert_eq!(runs.active(), 0);
    }
}
