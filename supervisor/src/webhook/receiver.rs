//! The HTTP side: an axum `Router` for `POST /v1/webhooks/wordpress` (+ `GET …/ping`) running the contract's algorithm
//! in order — method, media type and size; signature; time window; schema — before the store's steps 5–8, then handing
//! each accepted desired state to the reconciler over an mpsc channel. Mounted by the daemon on the admin listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use super::store::ReconcileRequest;
use super::store::{Applied, Delivery};
use super::{Error, SiteSecrets, Store, payload, signature};

/// Where WordPress posts.
pub const PATH: &str = "/v1/webhooks/wordpress";
/// The plugin's connectivity check.
pub const PING_PATH: &str = "/v1/webhooks/wordpress/ping";
/// Largest accepted body (contract §2).
pub const MAX_BODY: usize = 64 * 1024;
/// Deliveries processed at once; more get 429 with `Retry-After`.
const MAX_IN_FLIGHT: usize = 64;
/// The store must answer well within the contract's 1 s; past this the sender gets 503 and retries.
const STORE_DEADLINE: Duration = Duration::from_millis(900);
const PURGE_EVERY_SECS: i64 = 3600;

/// Everything the webhook routes need; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    sites: ArcSwap<Vec<SiteSecrets>>,
    reconcile: mpsc::Sender<ReconcileRequest>,
    shutdown: CancellationToken,
    in_flight: Semaphore,
    last_purge: AtomicI64,
}

impl WebhookState {
    /// The durable store (dedup, desired states, operations), e.g. for `wirebot status`.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// `reconcile` is the daemon's reconciler queue; `shutdown` turns new deliveries into 503 + `Retry-After`.
    pub fn new(
        store: Arc<Store>,
        sites: Vec<SiteSecrets>,
        reconcile: mpsc::Sender<ReconcileRequest>,
        shutdown: CancellationToken,
    ) -> WebhookState {
        WebhookState {
            inner: Arc::new(Inner {
                store,
                sites: ArcSwap::from_pointee(sites),
                reconcile,
                shutdown,
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                last_purge: AtomicI64::new(0),
            }),
        }
    }

    /// Replaces the accepted secrets (rotation: reload the secrets file); deliveries in flight keep the old list.
    pub fn set_sites(&self, sites: Vec<SiteSecrets>) {
        self.inner.sites.store(Arc::new(sites));
    }
}

/// The webhook routes, to be merged into the admin listener's router.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(
            PATH,
            post(receive).fallback(|| async { Error::MethodNotAllowed }),
        )
        .route(PING_PATH, get(ping))
        .with_state(state)
}

async fn ping() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "service": "wirebot-webhooks"}),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn unix_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn header<'a>(headers: &'a HeaderMap, name: &str, missing: &'static str) -> Result<&'a str, Error> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(Error::InvalidSignature { reason: missing })
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Body) -> Response {
    match handle(&state, &headers, body).await {
        Ok(applied) => {
            let status = StatusCode::from_u16(applied.status).unwrap_or(StatusCode::OK);
            json_response(status, &applied.response)
        }
        Err(error) => {
            let (status, code, _) = error.classify();
            if status.is_client_error() {
                // The reason, never the body or a secret.
                tracing::info!(status = status.as_u16(), code, reason = %error, "webhook delivery rejected");
            }
            error.into_response()
        }
    }
}

async fn handle(state: &WebhookState, headers: &HeaderMap, body: Body) -> Result<Applied, Error> {
    let inner = &state.inner;
    if inner.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let _permit = inner
        .in_flight
        .try_acquire()
        .map_err(|_| Error::Overloaded)?;

    // Step 1: media type and size, before reading the body.
    if !is_json(headers) {
        return Err(Error::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(Error::PayloadTooLarge { limit: MAX_BODY });
    }
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let source = e.into_inner();
        if source
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            Error::PayloadTooLarge { limit: MAX_BODY }
        } else {
            Error::BodyRead { source }
        }
    })?;

    // Step 2: signature against every accepted secret.
    let id = header(headers, "webhook-id", "missing webhook-id header")?;
    let timestamp_text = header(
        headers,
        "webhook-timestamp",
        "missing webhook-timestamp header",
    )?;
    let signatures = header(
        headers,
        "webhook-signature",
        "missing webhook-signature header",
    )?;
    let sites = inner.sites.load();
    let site = signature::verify(&sites, id, timestamp_text, signatures, &body)?;

    // Step 3: the time window (verify checked the timestamp is all digits).
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| Error::InvalidSignature {
            reason: "webhook-timestamp must be integer unix seconds",
        })?;
    let now = unix_now();
    if let Err(error) = signature::check_window(timestamp, now) {
        tracing::warn!(
            webhook_id = id,
            skew_secs = now - timestamp,
            "webhook timestamp outside the window"
        );
        return Err(error);
    }

    // Step 4: schema; the body must speak for the site whose secret signed it.
    let event = payload::parse(&body)?;
    if event.site != site.url {
        return Err(Error::InvalidPayload {
            pointer: "/data/site".into(),
            reason: "does not match the site whose secret signed this delivery".into(),
        });
    }

    // Steps 5–8 in one transaction on a blocking thread, under a deadline.
    let store = Arc::clone(&inner.store);
    let webhook_id = id.to_owned();
    let purge = now - inner.last_purge.load(Ordering::Relaxed) > PURGE_EVERY_SECS;
    if purge {
        inner.last_purge.store(now, Ordering::Relaxed);
    }
    let task = tokio::task::spawn_blocking(move || {
        let applied = store.apply(&Delivery {
            webhook_id: &webhook_id,
            body: &body,
            event: &event,
            now,
        });
        if purge && let Err(error) = store.purge_dedup(now) {
            tracing::warn!(%error, "purging old webhook ids failed");
        }
        applied
    });
    let applied = match tokio::time::timeout(STORE_DEADLINE, task).await {
        Err(_) => return Err(Error::StoreTimeout),
        Ok(Err(source)) => return Err(Error::StoreTask { source }),
        Ok(Ok(applied)) => applied?,
    };

    for request in &applied.requests {
        tracing::info!(user_id = %request.user_id, operation_id = %request.operation_id,
            status = request.desired.status.as_str(), tier = request.desired.tier.as_str(), "desired state accepted");
        match inner.reconcile.try_send(request.clone()) {
            Ok(()) => {}
            // Durable already: the reconciler's sweep (`Store::pending_operations`) picks it up.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(user_id = %request.user_id, "reconcile queue full; left for the sweep")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(user_id = %request.user_id, "reconciler not running; left for the sweep")
            }
        }
    }
    if let Some(user_id) = applied.response.get("user_id").and_then(|v| v.as_str()) {
        tracing::info!(
            user_id,
            webhook_id = id,
            status = applied.status,
            replayed = applied.replayed,
            "webhook delivery answered"
        );
    } else {
        tracing::info!(
            webhook_id = id,
            status = applied.status,
            replayed = applied.replayed,
            "webhook delivery answered"
        );
    }
    Ok(applied)
}
