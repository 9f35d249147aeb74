//! Protocol v3 wire types: request/response/event frames, `connect` params (strict), error codes, policy limits.
//! Pure: building and parsing frames, no I/O.

use serde::Deserialize;
use serde_json::{Value, json};

pub const PROTOCOL_VERSION: u64 = 3;
/// Largest inbound frame (`policy.maxPayload`).
pub const MAX_PAYLOAD: usize = 512 * 1024;
/// Queued outbound bytes beyond which droppable events are skipped and others close the socket (1008).
pub const MAX_BUFFERED_BYTES: usize = 1_572_864;
pub const TICK_INTERVAL_MS: u64 = 30_000;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// WebSocket close codes the gateway uses.
pub mod close {
    pub const POLICY: u16 = 1008;
    pub const PROTOCOL: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const NORMAL: u16 = 1000;
}

/// Events a client can receive (advertised in hello-ok).
pub const EVENTS: &[&str] = &[
    "connect.challenge",
    "agent",
    "chat",
    "presence",
    "tick",
    "shutdown",
    "health",
    "cron",
];

/// `client.id` literals (`dist/gateway/protocol/client-info.js`).
pub const CLIENT_IDS: &[&str] = &[
    "webchat-ui",
    "clawdbot-control-ui",
    "webchat",
    "cli",
    "gateway-client",
    "clawdbot-macos",
    "clawdbot-ios",
    "clawdbot-android",
    "node-host",
    "test",
    "fingerprint",
    "clawdbot-probe",
];
/// `client.mode` literals.
pub const CLIENT_MODES: &[&str] = &["webchat", "cli", "ui", "backend", "node", "probe", "test"];

/// Error codes (the complete set, `error-codes.js`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    NotPaired,
    NotLinked,
    AgentTimeout,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::NotPaired => "NOT_PAIRED",
            ErrorCode::NotLinked => "NOT_LINKED",
            ErrorCode::AgentTimeout => "AGENT_TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A response error `{code,message,details?,retryable?,retryAfterMs?}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorShape {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    pub retryable: Option<bool>,
}

impl ErrorShape {
    pub fn invalid(message: impl Into<String>) -> Self {
        ErrorShape {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
            details: None,
            retryable: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ErrorShape {
            code: ErrorCode::Unavailable,
            message: message.into(),
            details: None,
            retryable: Some(true),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(d) = &self.details {
            e["details"] = d.clone();
        }
        if let Some(r) = self.retryable {
            e["retryable"] = json!(r);
        }
        e
    }
}

/// `{"type":"req","id","method","params"?}`, nothing else allowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub method: String,
    #[serde(default)]
    pub params: Option<Value>,
}

/// Parses an inbound text frame. On failure returns the request id when one could be read, and the error.
// The error is built once per malformed frame, off any hot path; boxing it would only add noise.
#[allow(clippy::result_large_err)]
pub fn parse_request(text: &str) -> Result<RequestFrame, (Option<String>, ErrorShape)> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ErrorShape::invalid(format!("invalid frame: not JSON ({e})")),
        )
    })?;
    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
    let frame: RequestFrame = serde_json::from_value(v).map_err(|e| {
        (
            id.clone(),
            ErrorShape::invalid(format!("invalid request frame: {e}")),
        )
    })?;
    if frame.kind != "req" {
        return Err((
            id,
            ErrorShape::invalid(format!(
                "invalid request frame: type must be \"req\", got {:?}",
                frame.kind
            )),
        ));
    }
    if frame.method.is_empty() || frame.id.is_empty() {
        return Err((
            id,
            ErrorShape::invalid("invalid request frame: id and method must be non-empty"),
        ));
    }
    Ok(frame)
}

pub fn res_ok(id: &str, payload: Value) -> String {
    json!({"type": "res", "id": id, "ok": true, "payload": payload}).to_string()
}

pub fn res_err(id: &str, err: &ErrorShape) -> String {
    json!({"type": "res", "id": id, "ok": false, "error": err.to_json()}).to_string()
}

/// A failed response that still carries a payload (the second `agent` frame on error).
pub fn res_err_with(id: &str, payload: Value, err: &ErrorShape) -> String {
    json!({"type": "res", "id": id, "ok": false, "payload": payload, "error": err.to_json()})
        .to_string()
}

pub fn event(name: &str, payload: &Value, seq: u64) -> String {
    json!({"type": "event", "event": name, "payload": payload, "seq": seq}).to_string()
}

/// `connect` params: strict, as Clawdbot's schema (`additionalProperties:false`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectParams {
    pub min_protocol: u64,
    pub max_protocol: u64,
    pub client: ClientInfo,
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    #[serde(default)]
    pub commands: Option<Vec<String>>,
    #[serde(default)]
    pub permissions: Option<Value>,
    #[serde(default)]
    pub path_env: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub device: Option<DeviceParams>,
    #[serde(default)]
    pub auth: Option<AuthParams>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientInfo {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub version: String,
    pub platform: String,
    #[serde(default)]
    pub device_family: Option<String>,
    #[serde(default)]
    pub model_identifier: Option<String>,
    pub mode: String,
    #[serde(default)]
    pub instance_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceParams {
    pub id: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: i64,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthParams {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// Why a `connect` is refused, with the close code the socket gets.
#[derive(Debug, PartialEq)]
pub struct ConnectRefusal {
    pub error: ErrorShape,
    pub close_code: u16,
}

impl ConnectRefusal {
    pub fn policy(message: impl Into<String>) -> Self {
        ConnectRefusal {
            error: ErrorShape::invalid(message),
            close_code: close::POLICY,
        }
    }
}

/// Parses and checks `connect` params: shape, literals, protocol range. Auth is checked by the caller.
pub fn parse_connect(params: Option<Value>) -> Result<ConnectParams, ConnectRefusal> {
    let p: ConnectParams = serde_json::from_value(params.unwrap_or(Value::Null))
        .map_err(|e| ConnectRefusal::policy(format!("invalid connect params: {e}")))?;
    if !CLIENT_IDS.contains(&p.client.id.as_str()) {
        return Err(ConnectRefusal::policy(format!(
            "invalid connect params: unknown client.id {:?}",
            p.client.id
        )));
    }
    if !CLIENT_MODES.contains(&p.client.mode.as_str()) {
        return Err(ConnectRefusal::policy(format!(
            "invalid connect params: unknown client.mode {:?}",
            p.client.mode
        )));
    }
    if let Some(role) = &p.role
        && role != "operator"
        && role != "node"
    {
        return Err(ConnectRefusal::policy(format!(
            "invalid connect params: unknown role {role:?}"
        )));
    }
    if p.min_protocol > PROTOCOL_VERSION || p.max_protocol < PROTOCOL_VERSION {
        let mut error = ErrorShape::invalid("protocol mismatch");
        error.details = Some(json!({"expectedProtocol": PROTOCOL_VERSION}));
        return Err(ConnectRefusal {
            error,
            close_code: close::PROTOCOL,
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(extra: Value) -> Value {
        let mut v = json!({"minProtocol": 3, "maxProtocol": 3,
            "client": {"id": "test", "version": "1", "platform": "linux", "mode": "test"}, "auth": {"token": "t"}});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    #[test]
    fn request_frames() {
        assert!(parse_request(r#"{"type":"req","id":"1","method":"health"}"#).is_ok());
        let (id, e) = parse_request("nope").unwrap_err();
        assert_eq!((id, e.code), (None, ErrorCode::InvalidRequest));
        let (id, e) =
            parse_request(r#"{"type":"req","id":"7","method":"x","extra":1}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("7"));
        assert!(e.message.contains("extra"), "{}", e.message);
        assert!(parse_request(r#"{"type":"event","id":"1","method":"x"}"#).is_err());
        assert!(parse_request(r#"{"type":"req","id":"1"}"#).is_err());
    }

    #[test]
    fn connect_params() {
        assert!(parse_connect(Some(connect(json!({})))).is_ok());
        let r =
            parse_connect(Some(connect(json!({"minProtocol": 1, "maxProtocol": 2})))).unwrap_err();
        assert_eq!(
            (r.close_code, r.error.message.as_str()),
            (close::PROTOCOL, "protocol mismatch")
        );
        let r = parse_connect(Some(connect(json!({"bogus": true})))).unwrap_err();
        assert_eq!(r.close_code, close::POLICY);
        let r = parse_connect(Some(connect(
            json!({"client": {"id": "evil", "version": "1", "platform": "l", "mode": "test"}}),
        )))
        .unwrap_err();
        assert!(r.error.message.contains("client.id"));
        assert!(parse_connect(None).is_err());
    }

    #[test]
    fn frame_shapes() {
        assert_eq!(
            res_ok("a", json!({"x": 1})),
            r#"{"type":"res","id":"a","ok":true,"payload":{"x":1}}"#
        );
        assert_eq!(
            res_err("a", &ErrorShape::invalid("bad")),
            r#"{"type":"res","id":"a","ok":false,"error":{"code":"INVALID_REQUEST","message":"bad"}}"#
        );
        assert_eq!(
            event("tick", &json!({"ts": 1}), 4),
            r#"{"type":"event","event":"tick","payload":{"ts":1},"seq":4}"#
        );
    }
}
