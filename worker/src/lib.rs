//! `wirebot-worker`: a Clawdbot-compatible gateway (protocol v3, sessions, model router, memory, skills, cron).
//! Entry point: [`run`] serves a bound listener until the gateway's shutdown token is cancelled, then drains.

pub mod agent_cron;
pub mod agent_id;
pub mod atomic;
pub mod auth_profiles;
pub mod chat_run;
pub mod config;
pub mod device_auth;
mod error;
pub mod features;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod listen_fd;
pub mod methods;
pub mod model_router;
pub mod prompt;
pub mod protocol;
pub mod providers;
pub mod reload;
pub mod routing;
pub mod runs;
pub mod secret;
pub mod session_key;
pub mod sessions;
pub mod state;
pub mod tools;
pub mod transcript;
pub mod ws;

pub mod cron;
pub mod memory;
pub mod skills;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use error::Error;
pub use state::Gateway;

/// How long runs may keep going after a stop signal before they are aborted (and their partial reply saved).
const RUN_GRACE: Duration = Duration::from_secs(5);
/// Upper bound on HTTP draining (open SSE responses) after the stop signal.
const HTTP_GRACE: Duration = Duration::from_secs(10);

/// Serves `listener` (WS + HTTP) until `gw.shutdown` is cancelled, then sends `shutdown` to every client,
/// closes their sockets, lets runs finish for a grace period (then aborts them) and returns.
pub async fn run(gw: Arc<Gateway>, listener: tokio::net::TcpListener) -> Result<(), Error> {
    agent_cron::start(&gw);
    // Clawdbot runs the heartbeat even with cron off, so it is started on its own.
    cron::heartbeat::start(&gw);
    let ticker = gw.tasks.spawn(ticks(Arc::clone(&gw)));
    let flusher = gw.tasks.spawn(flush_sessions(Arc::clone(&gw)));
    let app = http::router(Arc::clone(&gw)).into_make_service_with_connect_info::<SocketAddr>();
    let g = Arc::clone(&gw);
    let stop = async move {
        g.shutdown.cancelled().await;
        tracing::info!("stop requested: notifying clients and draining");
        g.hub.shutdown_all("gateway stopping");
    };
    let serve = axum::serve(listener, app).with_graceful_shutdown(stop);
    let cut = async {
        gw.shutdown.cancelled().await;
        tokio::time::sleep(HTTP_GRACE).await;
    };
    tokio::select! {
        r = serve => r.map_err(|e| Error::io("serve HTTP/WS on", "listener", e))?,
        _ = cut => tracing::warn!("HTTP connections still open after {} s; closing them", HTTP_GRACE.as_secs()),
    }
    ticker.abort();
    flusher.abort();
    gw.tasks.close();
    if tokio::time::timeout(RUN_GRACE, gw.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            active_runs = gw.runs.active(),
            "runs still going after the grace period: aborting them"
        );
        gw.runs.abort_all();
        if tokio::time::timeout(Duration::from_secs(3), gw.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("draining did not finish");
            gw.sessions.flush();
            return Ok(());
        }
    }
    gw.sessions.flush();
    tracing::info!("drained");
    Ok(())
}

/// Writes session indexes changed by runs, once per `sessions::FLUSH_INTERVAL`.
async fn flush_sessions(gw: Arc<Gateway>) {
    let mut interval = tokio::time::interval(sessions::FLUSH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = interval.tick() => gw.sessions.flush(),
        }
    }
}

/// `tick` to every client every 30 s; `health` to operators every other tick.
async fn ticks(gw: Arc<Gateway>) {
    let period = Duration::from_millis(protocol::TICK_INTERVAL_MS);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        n += 1;
        gw.hub.publish(
            "tick",
            &serde_json::json!({"ts": Gateway::now_ms()}),
            &hub::Audience::All,
            true,
        );
        if n.is_multiple_of(2) && gw.hub.count() > 0 {
            gw.hub
                .publish("health", &gw.health(None), &hub::Audience::Operators, true);
        }
    }
}
