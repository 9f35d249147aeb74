//! The HTTP surface on the gateway port: WS upgrade (any path), WebChat at `/`, `GET /healthz`,
//! `POST /v1/chat/completions` (OpenAI-compatible, stream or not) and `POST <hooks.path>/wake|agent`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::agent_id::AgentId;
use crate::chat_run::{self, StartRun, Started};
use crate::config::AgentConfig;
use crate::protocol;
use crate::runs::{self, Existing};
use crate::session_key::SessionKey;
use crate::state::Gateway;
use crate::ws;

/// The header by which the supervisor's proxy scopes a request to one agent.
pub const SCOPE_HEADER: &str = "x-wirebot-agent";

const WEBCHAT_HTML: &str = include_str!("webchat.html");

/// The router for one gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(dispatch)
        .with_state(gw)
}

/// Liveness plus the applied config: `configHash` (sha256 of the file's bytes) changes only once a reload applied
/// them; `reloadError` says why the last one was refused (the previous config stays applied).
async fn healthz(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let cfg = gw.cfg();
    let st = gw.reload_status();
    Json(
        json!({"ok": true, "uptimeMs": u64::try_from(gw.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "agents": cfg.agents.len(), "connections": gw.hub.count(), "activeRuns": gw.runs.active(),
        "configHash": cfg.hash, "reloadError": st.error, "needsRestart": st.needs_restart,
        "reloads": st.applied}),
    )
}

fn error_json(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind}})),
    )
        .into_response()
}

async fn dispatch(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return upgrade(gw, req).await;
    }
    if let Some(hooks) = &gw.cfg().hooks
        && let Some(rest) = path.strip_prefix(hooks.path.as_str())
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return crate::hooks::handle(gw.clone(), rest.trim_start_matches('/').to_string(), req)
            .await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") | (&Method::GET, "/index.html") | (&Method::GET, "/chat") => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            WEBCHAT_HTML,
        )
            .into_response(),
        (&Method::POST, "/v1/chat/completions") => chat_completions(gw, req).await,
        (_, "/v1/chat/completions") => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        _ => error_json(StatusCode::NOT_FOUND, "not found", "not_found"),
    }
}

async fn upgrade(gw: Arc<Gateway>, req: Request) -> Response {
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let scope = req
        .headers()
        .get(SCOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let peer = ws::Peer { remote, scope };
    ws.max_message_size(protocol::MAX_PAYLOAD)
        .max_frame_size(protocol::MAX_PAYLOAD)
        .on_upgrade(move |socket| {
            let g = gw.clone();
            async move {
                let tasks = g.tasks.clone();
                let _ = tasks.spawn(ws::serve(g, socket, peer)).await;
            }
        })
}

/// Bearer (or `x-clawdbot-token`) equal to the gateway token/password.
fn bearer_ok(gw: &Gateway, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.is_some_and(|t| gw.token_ok(Some(t), Some(t)))
}

/// The agent a request is for: the scope header wins and may not be contradicted.
fn request_agent(
    gw: &Gateway,
    headers: &HeaderMap,
    named: Option<&str>,
) -> Result<AgentConfig, Box<Response>> {
    let scope = headers.get(SCOPE_HEADER).and_then(|v| v.to_str().ok());
    let parse = |s: &str| {
        AgentId::parse(s)
            .ok()
            .and_then(|a| gw.agent(&a))
            .ok_or_else(|| {
                Box::new(error_json(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown agent {s:?}"),
                    "invalid_request_error",
                ))
            })
    };
    match (scope, named) {
        (Some(s), Some(n)) if !s.eq_ignore_ascii_case(n) => Err(Box::new(error_json(
            StatusCode::FORBIDDEN,
            "agent does not match this connection's agent",
            "forbidden",
        ))),
        (Some(s), _) => parse(s),
        (None, Some(n)) => parse(n),
        (None, None) => parse(gw.cfg().default_agent.as_str()),
    }
}

async fn chat_completions(gw: Arc<Gateway>, req: Request) -> Response {
    if !gw.cfg().chat_completions_enabled {
        return error_json(StatusCode::NOT_FOUND, "not found", "not_found");
    }
    if !bearer_ok(&gw, req.headers()) {
        return error_json(StatusCode::UNAUTHORIZED, "Unauthorized", "unauthorized");
    }
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 4 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return error_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                "invalid_request_error",
            );
        }
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {e}"),
                "invalid_request_error",
            );
        }
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("clawdbot");
    let named = headers
        .get("x-clawdbot-agent-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            model
                .strip_prefix("agent:")
                .or_else(|| model.strip_prefix("clawdbot:"))
                .map(str::to_string)
        });
    let agent = match request_agent(&gw, &headers, named.as_deref()) {
        Ok(a) => a.clone(),
        Err(r) => return *r,
    };
    let Some(message) = last_user_text(&body) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "messages must contain a user message",
            "invalid_request_error",
        );
    };
    let raw_key = headers
        .get("x-clawdbot-session-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            body.get("user")
                .and_then(Value::as_str)
                .map(|u| format!("openai-user:{u}"))
        })
        .unwrap_or_else(|| format!("openai:{}", uuid::Uuid::new_v4()));
    let key = match SessionKey::resolve(&raw_key, &agent.id, &gw.cfg().session.main_key) {
        Ok(k) if k.agent_id() == agent.id => k,
        Ok(_) => {
            return error_json(
                StatusCode::FORBIDDEN,
                "session belongs to another agent",
                "forbidden",
            );
        }
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                "invalid_request_error",
            );
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let run_id = format!("chatcmpl_{}", uuid::Uuid::new_v4().simple());
    let (tap_tx, tap_rx) = mpsc::unbounded_channel();
    let started = chat_run::start(
        &gw,
        StartRun {
            run_id: run_id.clone(),
            agent,
            key,
            message,
            channel: "openai",
            extra_system: None,
            timeout: Duration::from_secs(gw.cfg().timeout_seconds.max(1)),
            tap: stream.then_some(tap_tx),
        },
    );
    match started {
        Ok(Started::New { .. }) => {}
        Ok(Started::Existing(Existing::InFlight | Existing::Finished(_))) => {
            return error_json(
                StatusCode::CONFLICT,
                "duplicate run",
                "invalid_request_error",
            );
        }
        Err(e) => return error_json(StatusCode::SERVICE_UNAVAILABLE, &e.message, "api_error"),
    }
    let Some((done, _)) = gw.runs.watch(&run_id) else {
        return error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "run vanished",
            "api_error",
        );
    };
    let created = chrono::Utc::now().timestamp();
    let model = model.to_string();
    if !stream {
        let outcome = runs::wait(
            done,
            Duration::from_secs(gw.cfg().timeout_seconds.max(1) + 5),
        )
        .await;
        return match outcome {
            Some(o) if o.status == "ok" => Json(json!({"id": run_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}))
            .into_response(),
            Some(o) => error_json(StatusCode::BAD_GATEWAY, o.error.as_deref().unwrap_or("run failed"), "api_error"),
            None => error_json(StatusCode::GATEWAY_TIMEOUT, "run timed out", "api_error"),
        };
    }
    let chunk = move |delta: Value, finish: Value| {
        let c = json!({"id": run_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Ok::<_, Infallible>(format!("data: {c}\n\n"))
    };
    let first = chunk(json!({"role": "assistant"}), Value::Null);
    let body_stream = futures_util::stream::unfold(
        (Some(tap_rx), Some(done), false),
        move |(tap, done, finished)| {
            let chunk = chunk.clone();
            async move {
                if finished {
                    return None;
                }
                if let Some(mut tap) = tap
                    && let Some(delta) = tap.recv().await
                {
                    return Some((
                        chunk(json!({"content": delta}), Value::Null),
                        (Some(tap), done, false),
                    ));
                }
                // The tap closed: the run ended.
                let outcome = match done {
                    Some(d) => runs::wait(d, Duration::from_secs(5)).await,
                    None => None,
                };
                let tail = match outcome {
                    Some(o) if o.status == "ok" => {
                        let stop = chunk(json!({}), json!("stop")).unwrap_or_default();
                        format!("{stop}data: [DONE]\n\n")
                    }
                    o => {
                        let msg = o
                            .and_then(|o| o.error)
                            .unwrap_or_else(|| "run failed".into());
                        format!(
                            "data: {}\n\ndata: [DONE]\n\n",
                            json!({"error": {"message": msg, "type": "api_error"}})
                        )
                    }
                };
                Some((Ok(tail), (None, None, true)))
            }
        },
    );
    let all = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { first }),
        body_stream,
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(all))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn last_user_text(body: &Value) -> Option<String> {
    let msgs = body.get("messages")?.as_array()?;
    let m = msgs
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let text = match m.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}
