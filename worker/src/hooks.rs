//! Webhooks under `hooks.path` (when `hooks.enabled` with `hooks.token`): `wake` records a system event in the
//! main session; `agent` starts a run in a fresh `hook:<uuid>` session. Auth → 401, method → 405, size → 413.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::agent_id::AgentId;
use crate::chat_run::{self, StartRun, Started};
use crate::http::SCOPE_HEADER;
use crate::session_key::SessionKey;
use crate::state::Gateway;

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn token_from(req: &Request) -> Option<String> {
    let h = req.headers();
    if let Some(b) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(b.trim().to_string());
    }
    if let Some(t) = h.get("x-clawdbot-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(|t| t.to_string())
    })
}

/// Handles `<hooks.path>/<rest>`.
pub async fn handle(gw: Arc<Gateway>, rest: String, req: Request) -> Response {
    let Some(hooks) = &gw.cfg().hooks else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !token_from(&req).is_some_and(|t| hooks.token.matches(&t)) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"ok": false, "error": "Unauthorized"}),
        );
    }
    if req.method() != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            Json(json!({"ok": false, "error": "Method Not Allowed"})),
        )
            .into_response();
    }
    let scope = req
        .headers()
        .get(SCOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let max = hooks.max_body_bytes;
    let bytes = match axum::body::to_bytes(req.into_body(), max).await {
        Ok(b) => b,
        Err(_) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"ok": false, "error": "payload too large"}),
            );
        }
    };
    let body: Value = if bytes.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"ok": false, "error": "body must be a JSON object"}),
                );
            }
        }
    };
    let agent_id = match scope.as_deref().map(AgentId::parse) {
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"ok": false, "error": "invalid agent"}),
            );
        }
        None => gw.cfg().default_agent.clone(),
    };
    let Some(agent) = gw.agent(&agent_id) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"ok": false, "error": "unknown agent"}),
        );
    };
    match rest.as_str() {
        "wake" => {
            let Some(text) = body
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
            else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"ok": false, "error": "text required"}),
                );
            };
            let mode = match body.get("mode").and_then(Value::as_str) {
                None | Some("now") => "now",
                Some("next-heartbeat") => "next-heartbeat",
                Some(_) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"ok": false, "error": "mode must be now or next-heartbeat"}),
                    );
                }
            };
            let key = SessionKey::main(&agent.id, &gw.cfg().session.main_key);
            let recorded = gw.sessions.ensure(&agent, &key, "webchat").and_then(|h| {
                gw.sessions.append(
                    &agent,
                    &h,
                    "custom",
                    json!({"customType": "system-event", "data": {"text": text, "mode": mode}}),
                )
            });
            if let Err(e) = recorded {
                tracing::error!(error = %e, "recording a wake event failed");
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"ok": false, "error": "could not record the event"}),
                );
            }
            reply(StatusCode::OK, json!({"ok": true, "mode": mode}))
        }
        "agent" => {
            let Some(message) = body
                .get("message")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
            else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"ok": false, "error": "message required"}),
                );
            };
            let key = match body.get("sessionKey").and_then(Value::as_str) {
                Some(k) => match SessionKey::resolve(k, &agent.id, &gw.cfg().session.main_key) {
                    Ok(k) if k.agent_id() == agent.id => k,
                    _ => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"ok": false, "error": "invalid sessionKey"}),
                        );
                    }
                },
                None => SessionKey::hook(&agent.id),
            };
            let timeout = body
                .get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(gw.cfg().timeout_seconds)
                .max(1);
            let name = body.get("name").and_then(Value::as_str).unwrap_or("Hook");
            let run_id = uuid::Uuid::new_v4().to_string();
            let started = chat_run::start(
                &gw,
                StartRun {
                    run_id: run_id.clone(),
                    agent,
                    key,
                    message: message.to_string(),
                    channel: "hook",
                    extra_system: Some(format!("This message arrived through the {name} webhook.")),
                    timeout: Duration::from_secs(timeout),
                    tap: None,
                },
            );
            match started {
                Ok(Started::New { .. }) | Ok(Started::Existing(_)) => {
                    reply(StatusCode::ACCEPTED, json!({"ok": true, "runId": run_id}))
                }
                Err(e) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ok": false, "error": e.message}),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error": "unknown hook"}),
        ),
    }
}
