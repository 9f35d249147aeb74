//! Wake on request and idle stop: the messages the proxy sends to whoever owns worker lifecycle, the held-request
//! wake, and the idle stopper task (which also wakes stopped workers shortly before their next cron job).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use provisioning::{Tier, UserId};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::ProxyConfig;
use super::error::Error;
use super::fault::Fault;
use super::metrics::ProxyMetrics;
use super::route::{Route, RouteTableHandle, Upstream};

/// "Start this member's worker and tell me where it listens once it is Ready." Sent by the proxy on a request to a
/// stopped dedicated worker, and by the idle stopper ahead of a due cron job (then nobody waits on `reply`).
#[derive(Debug)]
pub struct WakeRequest {
    pub user_id: UserId,
    pub reply: oneshot::Sender<Result<SocketAddr, WakeError>>,
}

/// Why a worker could not be woken; `Display` is short and member-safe (it becomes the 503 detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    /// The worker is quarantined after repeated crashes.
    #[error("{reason}")]
    Quarantined { reason: String },
    /// The worker did not become Ready.
    #[error("{reason}")]
    StartFailed { reason: String },
}

/// "Stop this member's worker": sent by the idle stopper. The lifecycle owner should mark the route Stopped
/// (`RouteTableHandle::set_upstream`) before it signals the worker, so new requests wake it instead of failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    pub user_id: UserId,
    pub reason: StopReason,
}

/// Why a stop was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// No request and no open WebSocket for `idle_stop_s`.
    Idle,
}

/// Wakes a member's worker and waits (bounded by `start_timeout`) for its address.
pub(crate) async fn wake(
    wake_tx: Option<&mpsc::Sender<WakeRequest>>,
    user_id: &UserId,
    start_timeout: Duration,
    metrics: &ProxyMetrics,
) -> Result<SocketAddr, Fault> {
    let Some(wake_tx) = wake_tx else {
        return Err(Fault::Starting {
            reason: "the worker is not running".to_owned(),
        });
    };
    let started = Instant::now();
    let (reply, rx) = oneshot::channel();
    let outcome = tokio::time::timeout(start_timeout, async {
        wake_tx
            .send(WakeRequest {
                user_id: user_id.clone(),
                reply,
            })
            .await
            .map_err(|_| Fault::Starting {
                reason: "the worker manager is not running".to_owned(),
            })?;
        match rx.await {
            Ok(Ok(addr)) => Ok(addr),
            Ok(Err(WakeError::Quarantined { reason })) => Err(Fault::Quarantined { reason }),
            Ok(Err(WakeError::StartFailed { reason })) => Err(Fault::Starting { reason }),
            Err(_) => Err(Fault::Starting {
                reason: "the worker manager dropped the wake request".to_owned(),
            }),
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(Fault::Starting {
            reason: "the worker did not start in time".to_owned(),
        })
    });
    let label = match &outcome {
        Ok(_) => "ok",
        Err(Fault::Quarantined { .. }) => "quarantined",
        Err(_) => "failed",
    };
    metrics.wake(label, started.elapsed());
    match &outcome {
        Ok(addr) => {
            tracing::info!(user_id = %user_id, upstream = %addr, held_ms = started.elapsed().as_millis(), "woke worker for a request")
        }
        Err(f) => tracing::warn!(user_id = %user_id, fault = ?f, "waking worker failed"),
    }
    outcome
}

/// The parts of Clawdbot's `cron/jobs.json` the stopper needs.
#[derive(Debug, Deserialize)]
struct JobsFile {
    #[serde(default)]
    jobs: Vec<Job>,
}

#[derive(Debug, Deserialize)]
struct Job {
    #[serde(default = "enabled_default")]
    enabled: bool,
    #[serde(default)]
    state: JobState,
}

fn enabled_default() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobState {
    next_run_at_ms: Option<u64>,
}

/// The earliest `nextRunAtMs` of the enabled jobs in `<user_dir>/cron/jobs.json` (Unix ms); `None` without jobs.
pub fn next_cron_run_ms(user_id: &UserId, user_dir: &Path) -> Result<Option<u64>, Error> {
    let path = user_dir.join("cron").join("jobs.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::ReadCronJobs {
                user_id: user_id.clone(),
                path,
                source,
            });
        }
    };
    let file: JobsFile = serde_json::from_slice(&text).map_err(|source| Error::ParseCronJobs {
        user_id: user_id.clone(),
        path: path.clone(),
        source,
    })?;
    Ok(file
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .filter_map(|j| j.state.next_run_at_ms)
        .min())
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the stopper decided for one route in one pass.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Keep,
    Stop,
    WakeForCron,
}

/// `idle` is the member's idle time (`None` while a request or WebSocket is open).
fn decide(
    route: &Route,
    idle: Option<Duration>,
    cfg: &ProxyConfig,
    next_cron_ms: Option<u64>,
    now_unix_ms: u64,
) -> Decision {
    if route.tier != Tier::Dedicated {
        return Decision::Keep;
    }
    let lead_ms = cfg.cron_wake_lead_s * 1000;
    let cron_due_soon = next_cron_ms.is_some_and(|t| t <= now_unix_ms + lead_ms);
    match &route.upstream {
        Upstream::Stopped if cron_due_soon => Decision::WakeForCron,
        Upstream::Running(_) if cfg.idle_stop_s > 0 && !cron_due_soon => match idle {
            Some(idle) if idle >= Duration::from_secs(cfg.idle_stop_s) => Decision::Stop,
            _ => Decision::Keep,
        },
        _ => Decision::Keep,
    }
}

/// Every `idle_check_interval_s`: sends a [`StopRequest`] for each running dedicated worker idle for `idle_stop_s`
/// (no request, no open WebSocket, no cron job due within `cron_wake_lead_s`), and a [`WakeRequest`] for each
/// stopped one whose next cron job is due within `cron_wake_lead_s`. Ends when `shutdown` is cancelled.
pub async fn run_idle_stopper(
    table: Arc<RouteTableHandle>,
    cfg: ProxyConfig,
    stop_tx: mpsc::Sender<StopRequest>,
    wake_tx: mpsc::Sender<WakeRequest>,
    metrics: Arc<ProxyMetrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.idle_check_interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = table.snapshot();
        let now = unix_now_ms();
        for route in snapshot.routes() {
            if route.tier != Tier::Dedicated {
                continue;
            }
            let next_cron = match &route.user_dir {
                Some(dir) => match next_cron_run_ms(&route.user_id, dir) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(user_id = %route.user_id, error = %e, "cannot read cron jobs; not waking for cron");
                        None
                    }
                },
                None => None,
            };
            match decide(route, route.member.idle_for(), &cfg, next_cron, now) {
                Decision::Keep => {}
                Decision::Stop => {
                    if route.member.mark_stop_requested() {
                        tracing::info!(user_id = %route.user_id, idle_stop_s = cfg.idle_stop_s, "stopping idle worker");
                        metrics.idle_stop();
                        let req = StopRequest {
                            user_id: route.user_id.clone(),
                            reason: StopReason::Idle,
                        };
                        if stop_tx.send(req).await.is_err() {
                            return;
                        }
                    }
                }
                Decision::WakeForCron => {
                    tracing::info!(user_id = %route.user_id, next_run_at_ms = next_cron, "waking worker for a due cron job");
                    metrics.cron_wake();
                    // Nobody waits for the answer: the table swap to Running is what matters.
                    let (reply, _) = oneshot::channel();
                    if wake_tx
                        .send(WakeRequest {
                            user_id: route.user_id.clone(),
                            reply,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::route::{Binding, RouteAuth, RouteSpec, TokenHash, UpstreamState};
    use super::*;

    fn handle(upstream: UpstreamState) -> Arc<RouteTableHandle> {
        let spec = RouteSpec {
            user_id: "alice".parse().unwrap(),
            bindings: vec![Binding::Token],
            upstream,
            auth: RouteAuth::Dedicated {
                token_hash: TokenHash::of("t"),
            },
            user_dir: None,
        };
        Arc::new(RouteTableHandle::for_config(vec![spec], &ProxyConfig::default()).unwrap())
    }

    #[test]
    fn idle_running_worker_is_stopped_unless_cron_is_due() {
        let h = handle(UpstreamState::Running("127.0.0.1:9".parse().unwrap()));
        let t = h.snapshot();
        let r = &t.routes()[0];
        let idle = Some(Duration::from_secs(5));
        let off = ProxyConfig {
            idle_stop_s: 0,
            ..ProxyConfig::default()
        };
        assert_eq!(
            decide(r, idle, &off, None, 1_000),
            Decision::Keep,
            "idle stop disabled"
        );
        let cfg = ProxyConfig {
            idle_stop_s: 10,
            cron_wake_lead_s: 60,
            ..ProxyConfig::default()
        };
        assert_eq!(
            decide(r, idle, &cfg, None, 1_000),
            Decision::Keep,
            "not idle long enough yet"
        );
        let cfg = ProxyConfig {
            idle_stop_s: 5,
            cron_wake_lead_s: 60,
            ..ProxyConfig::default()
        };
        assert_eq!(decide(r, idle, &cfg, None, 1_000), Decision::Stop);
        assert_eq!(
            decide(r, idle, &cfg, Some(30_000), 1_000),
            Decision::Keep,
            "cron due within the lead"
        );
        assert_eq!(
            decide(r, None, &cfg, None, 1_000),
            Decision::Keep,
            "a request is in flight"
        );
        let held = r.member.admit(0, 0, 10).unwrap();
        assert_eq!(r.member.idle_for(), None);
        drop(held);
    }

    #[test]
    fn stopped_worker_is_woken_ahead_of_cron() {
        let cfg = ProxyConfig {
            cron_wake_lead_s: 60,
            ..ProxyConfig::default()
        };
        let h = handle(UpstreamState::Stopped);
        let t = h.snapshot();
        let r = &t.routes()[0];
        assert_eq!(
            decide(r, None, &cfg, Some(100_000), 50_000),
            Decision::WakeForCron
        );
        assert_eq!(decide(r, None, &cfg, Some(200_000), 50_000), Decision::Keep);
        assert_eq!(decide(r, None, &cfg, None, 50_000), Decision::Keep);
    }

    #[test]
    fn reads_next_run_from_clawdbot_jobs_file() {
        let dir = tempfile::tempdir().unwrap();
        let user: UserId = "alice".parse().unwrap();
        assert_eq!(next_cron_run_ms(&user, dir.path()).unwrap(), None);
        std::fs::create_dir(dir.path().join("cron")).unwrap();
        let doc = r#"{"version":1,"jobs":[
            {"id":"a","name":"x","enabled":true,"schedule":{"kind":"every","everyMs":1},"state":{"nextRunAtMs":500}},
            {"id":"b","name":"y","enabled":false,"state":{"nextRunAtMs":100}},
            {"id":"c","name":"z","state":{"nextRunAtMs":900}}]}"#;
        std::fs::File::create(dir.path().join("cron/jobs.json"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, doc.as_bytes()))
            .unwrap();
        assert_eq!(next_cron_run_ms(&user, dir.path()).unwrap(), Some(500));
        std::fs::File::create(dir.path().join("cron/jobs.json"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{not json"))
            .unwrap();
        let err = next_cron_run_ms(&user, dir.path()).unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
    }
}
