//! The admin API (axum, JSON, versioned under `/v1`): the route table, request-body checking with JSON pointers, and
//! the handlers, which run user operations (`users.rs`) on a blocking thread. Served on the unix socket as is and on
//! loopback TCP behind a bearer token. Errors are `supervisor::Error` → `application/problem+json` (see `error.rs`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use provisioning::{Secret, Tier, UserId};
use serde::Serialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use crate::config::Runtime;
use crate::daemon::{App, Tenancy};
use crate::error::Error;
use crate::registry::{Event, UserRow, WorkerRecord};
use crate::users::{self, CreateUser, UpdateUser};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Header naming who acts (`cli`, `api`, `webhook`…), recorded in the audit log; `api` when absent or malformed.
pub const ACTOR_HEADER: &str = "x-wirebot-actor";

type AppState = Arc<App>;

/// One route of the API: the table both the router and the OpenAPI test are built from.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// Path in OpenAPI/axum 0.8 syntax (`/v1/users/{id}`).
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

/// Every route the admin API serves. `openapi.rs` documents exactly these (a test checks both directions).
pub fn routes() -> Vec<Route> {
    use axum::routing::{delete, patch, post, put};
    let route = |method: Method, path, handler| Route {
        method,
        path,
        handler,
    };
    vec![
        route(Method::GET, "/healthz", get(healthz)),
        route(Method::GET, "/v1/status", get(status)),
        route(Method::GET, "/v1/openapi.json", get(openapi)),
        route(Method::GET, "/v1/users", get(list_users)),
        route(Method::POST, "/v1/users", post(create_user)),
        route(Method::GET, "/v1/users/{id}", get(show_user)),
        route(Method::PATCH, "/v1/users/{id}", patch(update_user)),
        route(Method::DELETE, "/v1/users/{id}", delete(delete_user)),
        route(Method::POST, "/v1/users/{id}/token", post(rotate_token)),
        route(Method::PUT, "/v1/users/{id}/schedule", put(set_schedule)),
        route(Method::GET, "/v1/events", get(list_events)),
        route(Method::GET, "/v1/workers", get(list_workers)),
        route(Method::POST, "/v1/workers/{id}/start", post(start_worker)),
        route(Method::POST, "/v1/workers/{id}/stop", post(stop_worker)),
        route(
            Method::POST,
            "/v1/workers/{id}/restart",
            post(restart_worker),
        ),
        route(Method::GET, "/v1/workers/{id}/logs", get(worker_logs)),
        route(Method::POST, "/v1/reconcile", post(reconcile)),
        route(Method::GET, "/v1/operations", get(list_operations)),
        route(Method::GET, "/v1/operations/{id}", get(show_operation)),
        route(Method::GET, "/metrics", get(metrics)),
    ]
}

/// The router served on the unix socket (whose 0600 mode is the authentication).
pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for r in routes() {
        router = router.route(r.path, r.handler);
    }
    // After the routes: applies to every path above (a known path with an unserved method → 405 problem+json).
    router
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .with_state(app)
}

/// The router served on loopback TCP: the same routes behind `Authorization: Bearer <token>`.
pub fn tcp_router(app: AppState, token: Secret) -> Router {
    router(app).layer(middleware::from_fn(move |req: Request, next: Next| {
        let token = token.clone();
        async move {
            if bearer_matches(req.headers(), &token) {
                next.run(req).await
            } else {
                Error::Unauthorized.into_response()
            }
        }
    }))
}

fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Constant time over the token bytes (`ct_eq` on slices of different lengths is false without early exit on content).
    bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
}

async fn no_route(method: Method, uri: axum::http::Uri) -> Error {
    Error::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Error {
    Error::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Extractors: our own, so axum's plain-text rejections never reach a client.
// ---------------------------------------------------------------------------------------------------------------------

/// A JSON object body: 415 unless `application/json`, 413 over [`BODY_LIMIT`], 400 unless valid JSON, 422 (pointer
/// `""`) unless an object.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !(mime == "application/json"
            || (mime.starts_with("application/") && mime.ends_with("+json")))
        {
            return Err(Error::UnsupportedMediaType {
                found: if content_type.is_empty() {
                    "(none)".into()
                } else {
                    content_type.to_owned()
                },
            });
        }
        let limited =
            req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, BODY_LIMIT)));
        let bytes = Bytes::from_request(limited, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge { limit: BODY_LIMIT }
                } else {
                    Error::Malformed {
                        detail: format!("cannot read the body: {}", rejection.body_text()),
                    }
                }
            })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
            detail: format!(
                "invalid JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                json_error_message(&e)
            ),
        })?;
        match value {
            Value::Object(map) => Ok(JsonObject(map)),
            other => Err(Error::invalid(
                "",
                format!("expected a JSON object, found {}", json_type(&other)),
            )),
        }
    }
}

/// serde_json's message without its trailing " at line X column Y".
fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// A `{id}` path segment parsed as a `UserId`; 400 with the reason otherwise.
#[derive(Debug)]
pub struct UserPath(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::Malformed {
                detail: format!("bad path: {}", e.body_text()),
            })?;
        raw.parse::<UserId>()
            .map(UserPath)
            .map_err(|e| Error::Malformed {
                detail: e.to_string(),
            })
    }
}

/// Who is acting, from [`ACTOR_HEADER`]: `[a-z0-9-]{1,32}`, else `api`.
#[derive(Debug)]
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let actor = parts
            .headers
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=32).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .unwrap_or("api");
        Ok(Actor(actor.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Body checking: every field by hand, so each mistake carries its JSON pointer.
// ---------------------------------------------------------------------------------------------------------------------

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn reject_unknown(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), Error> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(Error::invalid(
            &pointer(key),
            format!("unknown field {key:?} (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// JSON pointer of a top-level key (RFC 6901 escaping).
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn required_str<'b>(body: &'b Map<String, Value>, key: &str) -> Result<&'b str, Error> {
    match body.get(key) {
        None => Err(Error::invalid(&pointer(key), "required field is missing")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Error::invalid(
            &pointer(key),
            format!("expected a string, found {}", json_type(other)),
        )),
    }
}

/// `None` = absent, `Some(None)` = explicit null, `Some(Some(s))` = a string.
fn optional_str<'b>(
    body: &'b Map<String, Value>,
    key: &str,
) -> Result<Option<Option<&'b str>>, Error> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s))),
        Some(other) => Err(Error::invalid(
            &pointer(key),
            format!("expected a string or null, found {}", json_type(other)),
        )),
    }
}

fn parse_id(s: &str) -> Result<UserId, Error> {
    s.parse::<UserId>()
        .map_err(|e| Error::invalid("/id", e.reason().to_owned()))
}

fn parse_tier(s: &str) -> Result<Tier, Error> {
    s.parse::<Tier>()
        .map_err(|e| Error::invalid("/tier", e.to_string()))
}

/// A plausible address: one `@` with text on both sides, no whitespace or control characters, at most 254 bytes.
pub fn check_email(s: &str) -> Result<String, Error> {
    let ok = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Error::invalid(
            "/email",
            format!("{s:?} is not an e-mail address"),
        ))
    }
}

/// 1 to 128 characters, no control characters.
pub fn check_display_name(s: &str) -> Result<String, Error> {
    let n = s.chars().count();
    if !(1..=128).contains(&n) {
        return Err(Error::invalid(
            "/display_name",
            format!("must be 1 to 128 characters, got {n}"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(
            "/display_name",
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

/// `runtime`: absent → `None`; `null` → `Some(None)` (the tier's); `"wirebot"`/`"clawdbot"` → `Some(Some(_))`.
fn runtime_field(body: &Map<String, Value>) -> Result<Option<Option<Runtime>>, Error> {
    match body.get("runtime") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => s
            .parse::<Runtime>()
            .map(|r| Some(Some(r)))
            .map_err(|e| Error::invalid("/runtime", e.to_string())),
        Some(other) => Err(Error::invalid(
            "/runtime",
            format!("expected a string or null, found {}", json_type(other)),
        )),
    }
}

/// A member may only be given a runtime this daemon can run: Clawdbot needs `[clawdbot]` and room for Node's threads.
fn check_runtime(config: &crate::config::Config, runtime: Option<Runtime>) -> Result<(), Error> {
    if runtime != Some(Runtime::Clawdbot) {
        return Ok(());
    }
    if config.clawdbot.install_dir.is_none() || config.clawdbot.node.is_none() {
        return Err(Error::invalid(
            "/runtime",
            "runtime \"clawdbot\" needs [clawdbot] install_dir (and node) in wirebot.toml",
        ));
    }
    if config.tiers.dedicated.pids_max < 64 {
        return Err(Error::invalid(
            "/runtime",
            "runtime \"clawdbot\" needs [tiers.dedicated] pids_max of at least 64 (V8 and libuv threads count as tasks)",
        ));
    }
    Ok(())
}

fn create_request(body: &Map<String, Value>) -> Result<CreateUser, Error> {
    reject_unknown(body, &["id", "tier", "email", "display_name", "runtime"])?;
    let id = parse_id(required_str(body, "id")?)?;
    let tier = parse_tier(required_str(body, "tier")?)?;
    let email = optional_str(body, "email")?
        .flatten()
        .map(check_email)
        .transpose()?;
    let display_name = optional_str(body, "display_name")?
        .flatten()
        .map(check_display_name)
        .transpose()?;
    let runtime = runtime_field(body)?.flatten();
    Ok(CreateUser {
        id,
        tier,
        email,
        display_name,
        runtime,
    })
}

fn update_request(body: &Map<String, Value>) -> Result<UpdateUser, Error> {
    reject_unknown(body, &["tier", "email", "display_name", "runtime"])?;
    let tier = match body.get("tier") {
        None => None,
        Some(Value::String(s)) => Some(parse_tier(s)?),
        Some(other) => {
            return Err(Error::invalid(
                "/tier",
                format!("expected a string, found {}", json_type(other)),
            ));
        }
    };
    let email = optional_str(body, "email")?
        .map(|v| v.map(check_email).transpose())
        .transpose()?;
    let display_name = optional_str(body, "display_name")?
        .map(|v| v.map(check_display_name).transpose())
        .transpose()?;
    let runtime = runtime_field(body)?;
    Ok(UpdateUser {
        tier,
        email,
        display_name,
        runtime,
    })
}

/// `{timezone, standup, reflection}`, each a string or null/absent (= not set); every field checked on its own so
/// the 422 points at the one that is wrong.
fn schedule_request(body: &Map<String, Value>) -> Result<provisioning::MemberSchedule, Error> {
    reject_unknown(body, &["timezone", "standup", "reflection"])?;
    let field = |key: &str| optional_str(body, key).map(Option::flatten);
    let (tz, standup, reflection) = (field("timezone")?, field("standup")?, field("reflection")?);
    let check = |key: &str, parsed: Result<provisioning::MemberSchedule, provisioning::Error>| {
        parsed
            .map(|_| ())
            .map_err(|e| Error::invalid(&pointer(key), e.to_string()))
    };
    check(
        "timezone",
        provisioning::MemberSchedule::parse(tz, None, None),
    )?;
    check(
        "standup",
        provisioning::MemberSchedule::parse(None, standup, None),
    )?;
    check(
        "reflection",
        provisioning::MemberSchedule::parse(None, None, reflection),
    )?;
    provisioning::MemberSchedule::parse(tz, standup, reflection)
        .map_err(|e| Error::invalid("", e.to_string()))
}

// ---------------------------------------------------------------------------------------------------------------------
// Handlers.
// ---------------------------------------------------------------------------------------------------------------------

/// A user as the API shows it: the registry row (without the token hash) plus its recorded worker, if any.
#[derive(Debug, Serialize)]
pub struct UserView {
    #[serde(flatten)]
    pub user: UserRow,
    pub worker: Option<WorkerRecord>,
}

/// Runs a synchronous registry/provisioning operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)?
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

async fn status(State(app): State<AppState>) -> Result<Json<Value>, Error> {
    let counts = blocking({
        let app = app.clone();
        move || app.registry.counts()
    })
    .await?;
    let mut workers = std::collections::BTreeMap::<&'static str, u64>::new();
    if let Some(manager) = app.workers.clone() {
        for record in manager.list().await {
            *workers.entry(record.state.as_str()).or_default() += 1;
        }
    }
    let tenancy = match app.tenancy {
        Tenancy::PerTenantUids(_) => "per-tenant-uids",
        Tenancy::CallerOwned => "caller-owned",
    };
    // Webhook operations whose last attempt failed (retried with back-off), when the receiver is configured.
    let reconcile = match app.webhooks.as_ref().map(|w| w.store().clone()) {
        Some(store) => {
            let (failed, recent) = blocking(move || {
                store
                    .failed_operations(5)
                    .map_err(|source| Error::Webhook { source })
            })
            .await?;
            json!({ "failed": failed, "recent_failures": recent })
        }
        None => Value::Null,
    };
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": crate::daemon::uptime(&app).as_secs(),
        "tenancy": tenancy,
        "data_dir": app.config.data_dir,
        "runtime_dir": app.config.runtime_dir,
        "admin_socket": app.config.admin.socket,
        "users": counts,
        "workers": workers,
        "proxy": app.config.proxy.listen,
        "reconcile": reconcile,
    })))
}

async fn list_users(State(app): State<AppState>) -> Result<Json<Vec<UserView>>, Error> {
    let users = blocking(move || {
        let users = app.registry.users()?;
        let mut workers = app.registry.workers()?.into_iter().peekable();
        // Both lists are ordered by user id: merge instead of one query per user.
        Ok(users
            .into_iter()
            .map(|user| {
                while workers.peek().is_some_and(|w| w.user_id < user.id) {
                    workers.next();
                }
                let worker = workers.next_if(|w| w.user_id == user.id);
                UserView { user, worker }
            })
            .collect())
    })
    .await?;
    Ok(Json(users))
}

async fn show_user(
    State(app): State<AppState>,
    UserPath(id): UserPath,
) -> Result<Json<UserView>, Error> {
    let view = blocking(move || {
        let user = app
            .registry
            .user(&id)?
            .ok_or(Error::UserNotFound { user: id.clone() })?;
        let worker = app.registry.worker(&id)?;
        Ok(UserView { user, worker })
    })
    .await?;
    Ok(Json(view))
}

async fn create_user(
    State(app): State<AppState>,
    Actor(actor): Actor,
    JsonObject(body): JsonObject,
) -> Result<Response, Error> {
    let request = create_request(&body)?;
    check_runtime(&app.config, request.runtime)?;
    let (user, token) = blocking({
        let app = app.clone();
        move || users::create(&app, &actor, request)
    })
    .await?;
    crate::routes::rebuild_logged(&app).await;
    // A dedicated member's worker is Ready before we answer (or the answer says why it is not).
    crate::workers::ensure_ready(&app, &user).await?;
    let worker = blocking({
        let app = app.clone();
        let id = user.id.clone();
        move || app.registry.worker(&id)
    })
    .await?;
    let location = format!("/v1/users/{}", user.id);
    let body = json!({ "user": UserView { user, worker }, "token": token.expose() });
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

async fn update_user(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
    JsonObject(body): JsonObject,
) -> Result<Json<UserView>, Error> {
    let patch = update_request(&body)?;
    if let Some(runtime) = patch.runtime {
        check_runtime(&app.config, runtime)?;
    }
    // A move to the shared tier stops the dedicated worker first (the shared tier has no worker yet).
    if patch.tier == Some(Tier::Shared) {
        crate::workers::forget(&app, &id).await?;
    }
    let runtime_before = blocking({
        let app = app.clone();
        let id = id.clone();
        move || {
            Ok(app
                .registry
                .user(&id)?
                .map(|row| crate::workers::runtime_of(&app, &row)))
        }
    })
    .await?;
    let user = blocking({
        let app = app.clone();
        let id = id.clone();
        move || users::update(&app, &actor, &id, patch)
    })
    .await?;
    crate::routes::rebuild_logged(&app).await;
    // Another runtime is another program: the running worker stops (503 + Retry-After meanwhile) and
    // `ensure_ready` starts one of the new kind, never both at once.
    let runtime_changed =
        runtime_before.is_some_and(|r| r != crate::workers::runtime_of(&app, &user));
    if runtime_changed && user.tier == Tier::Dedicated {
        crate::workers::forget(&app, &user.id).await?;
    }
    crate::workers::ensure_ready(&app, &user).await?;
    let worker = blocking({
        let app = app.clone();
        move || app.registry.worker(&id)
    })
    .await?;
    Ok(Json(UserView { user, worker }))
}

async fn delete_user(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
) -> Result<Json<Value>, Error> {
    // The worker is stopped before its directory is archived (an archive of a live tree could be torn).
    crate::workers::forget(&app, &id).await?;
    let removed = blocking({
        let app = app.clone();
        move || users::delete(&app, &actor, &id)
    })
    .await?;
    crate::routes::rebuild_logged(&app).await;
    Ok(Json(json!(removed)))
}

/// Stores the member's ritual settings and serves it again, which writes (or removes) its default standup and
/// reflection cron jobs in its own store and makes its worker read them (a dedicated worker restarts, a shard
/// reloads).
async fn set_schedule(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, Error> {
    let schedule = schedule_request(&body)?;
    let user = blocking({
        let app = app.clone();
        let id = id.clone();
        let schedule = schedule.clone();
        move || users::set_schedule(&app, &actor, &id, &schedule)
    })
    .await?;
    if user.status == crate::registry::UserStatus::Active {
        crate::workers::ensure_ready(&app, &user).await?;
    }
    Ok(Json(json!({
        "id": user.id,
        "timezone": schedule.timezone(),
        "standup": schedule.standup(),
        "reflection": schedule.reflection(),
        "jobs": !schedule.is_off(),
    })))
}

async fn rotate_token(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
) -> Result<Json<Value>, Error> {
    let token = blocking({
        let id = id.clone();
        let app = app.clone();
        move || users::rotate_token(&app, &actor, &id)
    })
    .await?;
    crate::routes::rebuild_logged(&app).await;
    // A running dedicated worker restarts to read the new token from its clawdbot.json.
    if let Some(manager) = app.workers.clone()
        && let Ok(record) = manager.status(&id).await
        && record.pid.is_some()
    {
        manager
            .restart(&id)
            .await
            .map_err(|e| crate::workers::api_error(&id, e))?;
    }
    Ok(Json(json!({ "id": id, "token": token.expose() })))
}

/// A worker as the API shows it: the lifecycle record with the diagnosis summary spelled out.
fn worker_view(record: &crate::lifecycle::WorkerRecord) -> Value {
    json!({
        "user_id": record.user_id,
        "state": record.state,
        "pid": record.pid,
        "port": record.port,
        "restarts": record.restarts,
        "diagnosis": record.diagnosis.as_ref().map(|d| json!({
            "summary": d.summary(),
            "cause": d.cause.to_string(),
            "oom_kills": d.oom_kills,
            "log_tail": d.log_tail,
        })),
    })
}

/// `GET /v1/workers`: every supervised worker, by user id.
async fn list_workers(State(app): State<AppState>) -> Result<Json<Vec<Value>>, Error> {
    let Some(manager) = app.workers.clone() else {
        return Ok(Json(Vec::new()));
    };
    Ok(Json(manager.list().await.iter().map(worker_view).collect()))
}

/// Which worker action a `POST /v1/workers/{id}/<action>` asks for.
#[derive(Debug, Clone, Copy)]
enum WorkerAction {
    Start,
    Stop,
    Restart,
}

async fn worker_action(
    app: AppState,
    actor: String,
    id: UserId,
    action: WorkerAction,
) -> Result<Json<Value>, Error> {
    let manager = crate::workers::manager(&app)?;
    let name = match action {
        WorkerAction::Start => "worker.start",
        WorkerAction::Stop => "worker.stop",
        WorkerAction::Restart => "worker.restart",
    };
    let result = match action {
        WorkerAction::Start => manager.ensure_running(&id).await.map(|_| ()),
        WorkerAction::Stop => manager.stop(&id).await,
        WorkerAction::Restart => manager.restart(&id).await.map(|_| ()),
    }
    .map_err(|e| crate::workers::api_error(&id, e));
    let (outcome, detail) = match &result {
        Ok(()) => (crate::registry::Outcome::Ok, None),
        Err(e) => (crate::registry::Outcome::Error, Some(e.to_string())),
    };
    if !matches!(result, Err(Error::NoWorker { .. })) {
        let app = app.clone();
        let id = id.clone();
        let _ = blocking(move || {
            app.registry
                .append_event(&actor, name, Some(id.as_str()), outcome, detail.as_deref())
        })
        .await;
    }
    result?;
    let record = manager
        .status(&id)
        .await
        .map_err(|e| crate::workers::api_error(&id, e))?;
    Ok(Json(worker_view(&record)))
}

async fn start_worker(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
) -> Result<Json<Value>, Error> {
    worker_action(app, actor, id, WorkerAction::Start).await
}

async fn stop_worker(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
) -> Result<Json<Value>, Error> {
    worker_action(app, actor, id, WorkerAction::Stop).await
}

async fn restart_worker(
    State(app): State<AppState>,
    Actor(actor): Actor,
    UserPath(id): UserPath,
) -> Result<Json<Value>, Error> {
    worker_action(app, actor, id, WorkerAction::Restart).await
}

/// Most log lines one `GET /v1/workers/{id}/logs` returns.
pub const LOG_MAX_LINES: usize = 10_000;

/// `GET /v1/workers/{id}/logs?n=<lines>&offset=<byte offset>`: the last `n` lines of the worker's log (default 100),
/// or, with `offset`, everything appended since that offset (for `wirebot logs -f`). Answers the next offset.
async fn worker_logs(
    State(app): State<AppState>,
    UserPath(id): UserPath,
    uri: axum::http::Uri,
) -> Result<Json<Value>, Error> {
    let query =
        axum::extract::Query::<std::collections::BTreeMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| Error::Malformed {
                detail: format!("bad query string: {}", e.body_text()),
            })?
            .0;
    let bad = |detail: String| Error::Malformed { detail };
    let mut n = 100usize;
    let mut offset = None;
    for (key, value) in &query {
        match key.as_str() {
            "n" => {
                n = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LOG_MAX_LINES).contains(n))
                    .ok_or_else(|| {
                        bad(format!("n={value:?} is not between 1 and {LOG_MAX_LINES}"))
                    })?;
            }
            "offset" => {
                offset = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad(format!("offset={value:?} is not a byte offset")))?,
                );
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let known = blocking({
        let app = app.clone();
        let id = id.clone();
        move || app.registry.user(&id)
    })
    .await?;
    if known.is_none() {
        return Err(Error::UserNotFound { user: id });
    }
    let path = crate::lifecycle::log_path(&app.config.data_dir.join("logs"), &id);
    let view = blocking(move || read_log(&path, n, offset)).await?;
    Ok(Json(view))
}

fn read_log(path: &std::path::Path, n: usize, offset: Option<u64>) -> Result<Value, Error> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let io = |source| Error::Io {
        op: "read the worker log",
        path: path.to_owned(),
        source,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let lines = match offset {
        None => crate::lifecycle::tail_lines(path, n).map_err(io)?,
        Some(_) if len == 0 => Vec::new(),
        Some(offset) => {
            // Rotated (copytruncate) since the last call: start again from the top.
            let from = if offset > len { 0 } else { offset };
            let mut file = std::fs::File::open(path).map_err(io)?;
            file.seek(SeekFrom::Start(from)).map_err(io)?;
            let mut buf = Vec::new();
            file.take(len - from).read_to_end(&mut buf).map_err(io)?;
            // Only whole lines; a partial last line is sent next time.
            let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            return Ok(json!({ "lines": lines, "offset": from + end as u64 }));
        }
    };
    Ok(json!({ "lines": lines, "offset": len }))
}

/// `GET /metrics`: the edge proxy's Prometheus text.
async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Most events one `GET /v1/events` returns.
pub const EVENTS_MAX_LIMIT: u32 = 1000;

/// `POST /v1/reconcile?dry_run=true|false`: the drift between registry, disk, routes and worker processes, repaired
/// unless `dry_run=true` (default false).
async fn reconcile(
    State(app): State<AppState>,
    uri: axum::http::Uri,
) -> Result<Json<crate::drift::Report>, Error> {
    let query =
        axum::extract::Query::<std::collections::BTreeMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| Error::Malformed {
                detail: format!("bad query string: {}", e.body_text()),
            })?
            .0;
    let mut dry_run = false;
    for (key, value) in &query {
        match (key.as_str(), value.as_str()) {
            ("dry_run", "true") => dry_run = true,
            ("dry_run", "false") => dry_run = false,
            ("dry_run", other) => {
                return Err(Error::Malformed {
                    detail: format!("dry_run={other:?} is not true or false"),
                });
            }
            (other, _) => {
                return Err(Error::Malformed {
                    detail: format!("unknown query parameter {other:?} (allowed: dry_run)"),
                });
            }
        }
    }
    Ok(Json(crate::drift::reconcile(&app, dry_run).await?))
}

/// `GET /v1/events?user=<id>&after=<event id>&limit=<n>`: the audit log, oldest first, `id > after`.
/// Most operations one listing returns.
pub const OPERATIONS_MAX_LIMIT: u32 = 1000;

/// `GET /v1/operations?user=&limit=`: the newest webhook reconcile operations (empty without a webhook receiver).
async fn list_operations(
    State(app): State<AppState>,
    uri: axum::http::Uri,
) -> Result<Json<Vec<crate::webhook::Operation>>, Error> {
    let query =
        axum::extract::Query::<std::collections::BTreeMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| Error::Malformed {
                detail: format!("bad query string: {}", e.body_text()),
            })?
            .0;
    let bad = |detail: String| Error::Malformed { detail };
    let mut user = None;
    let mut limit = 50u32;
    for (key, value) in &query {
        match key.as_str() {
            "user" => user = Some(value.parse::<UserId>().map_err(|e| bad(e.to_string()))?),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=OPERATIONS_MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit={value:?} is not between 1 and {OPERATIONS_MAX_LIMIT}"
                        ))
                    })?;
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (allowed: user, limit)"
                )));
            }
        }
    }
    let Some(store) = app.webhooks.as_ref().map(|w| w.store().clone()) else {
        return Ok(Json(Vec::new()));
    };
    let operations = blocking(move || {
        store
            .operations(user.as_ref(), limit)
            .map_err(|source| Error::Webhook { source })
    })
    .await?;
    Ok(Json(operations))
}

/// `GET /v1/operations/{id}`: one reconcile operation (the id a webhook's 202 answered with).
async fn show_operation(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<crate::webhook::Operation>, Error> {
    let id = raw
        .parse::<crate::webhook::OperationId>()
        .map_err(|e| Error::Malformed {
            detail: format!("{raw:?} is not an operation id (a UUID): {e}"),
        })?;
    let not_found = move || Error::OperationNotFound { id: id.to_string() };
    let Some(store) = app.webhooks.as_ref().map(|w| w.store().clone()) else {
        return Err(not_found());
    };
    blocking(move || {
        store
            .operation(id)
            .map_err(|source| Error::Webhook { source })?
            .ok_or_else(not_found)
    })
    .await
    .map(Json)
}

async fn list_events(
    State(app): State<AppState>,
    uri: axum::http::Uri,
) -> Result<Json<Vec<Event>>, Error> {
    let query =
        axum::extract::Query::<std::collections::BTreeMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| Error::Malformed {
                detail: format!("bad query string: {}", e.body_text()),
            })?
            .0;
    let bad = |detail: String| Error::Malformed { detail };
    let mut user = None;
    let mut after = 0i64;
    let mut limit = 100u32;
    for (key, value) in &query {
        match key.as_str() {
            "user" => user = Some(value.parse::<UserId>().map_err(|e| bad(e.to_string()))?),
            "after" => {
                after = value
                    .parse()
                    .ok()
                    .filter(|n: &i64| *n >= 0)
                    .ok_or_else(|| bad(format!("after={value:?} is not an event id")))?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=EVENTS_MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit={value:?} is not between 1 and {EVENTS_MAX_LIMIT}"
                        ))
                    })?;
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (allowed: user, after, limit)"
                )));
            }
        }
    }
    let events = blocking(move || app.registry.events(user.as_ref(), after, limit)).await?;
    Ok(Json(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn pointer_of(e: Error) -> (String, String) {
        match e {
            Error::InvalidField { pointer, detail } => (pointer, detail),
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn create_bodies_are_checked_field_by_field() {
        let check = |v: Value| pointer_of(create_request(&obj(v)).unwrap_err()).0;
        assert_eq!(check(json!({"tier": "shared"})), "/id");
        assert_eq!(check(json!({"id": "a", "tier": "gold"})), "/tier");
        assert_eq!(check(json!({"id": "A", "tier": "shared"})), "/id");
        assert_eq!(check(json!({"id": 5, "tier": "shared"})), "/id");
        assert_eq!(
            check(json!({"id": "a", "tier": "shared", "email": "nope"})),
            "/email"
        );
        assert_eq!(
            check(json!({"id": "a", "tier": "shared", "display_name": ""})),
            "/display_name"
        );
        assert_eq!(
            check(json!({"id": "a", "tier": "shared", "a/b": 1})),
            "/a~1b"
        );
        let ok = create_request(&obj(
            json!({"id": "a", "tier": "dedicated", "email": "a@b.c", "display_name": null}),
        ))
        .unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.tier, ok.email.as_deref()),
            ("a", Tier::Dedicated, Some("a@b.c"))
        );
    }

    #[test]
    fn patch_null_clears_and_absent_keeps() {
        let p = update_request(&obj(json!({"email": null}))).unwrap();
        assert_eq!(p.email, Some(None));
        assert_eq!(p.display_name, None);
        assert_eq!(
            pointer_of(update_request(&obj(json!({"tier": 1}))).unwrap_err()).0,
            "/tier"
        );
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc = crate::openapi::document();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
            {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        let mut served: Vec<String> = routes()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn bearer_comparison() {
        let token = Secret::from("0123456789abcdef0123".to_owned());
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, &token));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef0123".parse().unwrap(),
        );
        assert!(bearer_matches(&h, &token));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef012".parse().unwrap(),
        );
        assert!(!bearer_matches(&h, &token));
    }
}
