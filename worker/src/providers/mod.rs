//! Model providers: the request/stream types shared by the two real wire clients (Anthropic Messages and
//! OpenAI Chat Completions), dispatched on [`Api`]. The router (`model_router.rs`) decides which one to call.

pub mod anthropic;
pub mod openai;
mod sse;

use std::time::Duration;

use serde_json::Value;

use crate::config::{Api, ProviderConfig};
use crate::secret::Secret;

/// Who is speaking in a conversation turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One content block; tool blocks let the tool loop (memory, skills) ride on the same types.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![Block::Text(text.into())],
        }
    }
}

/// A tool the model may call (JSON Schema input).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// Everything a provider needs for one call, minus the credential.
#[derive(Clone, Debug)]
pub struct ModelRequest {
    pub model: String,
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// A finished model turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    /// `(id, name, input)` of each requested tool call, in order.
    pub tool_calls: Vec<(String, String, Value)>,
    pub usage: Usage,
    /// Clawdbot's vocabulary: `stop`, `length`, `toolUse`, `error`.
    pub stop_reason: String,
}

/// How a credential is presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `x-api-key` (Anthropic) / `Authorization: Bearer` (OpenAI).
    ApiKey,
    /// OAuth access token or setup token: always `Authorization: Bearer`.
    Bearer,
}

/// Why a call failed, in Clawdbot's failover classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    RateLimit,
    Billing,
    Auth,
    Timeout,
    /// Anything else (bad request, 5xx, malformed stream): no failover.
    Other,
}

impl FailureClass {
    pub fn from_status(status: u16) -> Self {
        match status {
            429 | 529 => FailureClass::RateLimit,
            402 => FailureClass::Billing,
            401 | 403 => FailureClass::Auth,
            408 => FailureClass::Timeout,
            _ => FailureClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimit => "rate_limit",
            FailureClass::Billing => "billing",
            FailureClass::Auth => "auth",
            FailureClass::Timeout => "timeout",
            FailureClass::Other => "unknown",
        }
    }

    /// Failover to the next profile/model happens only for these (contract §10).
    pub fn fails_over(self) -> bool {
        !matches!(self, FailureClass::Other)
    }
}
/// Tool calls accumulated while streaming, keyed by the provider's block/call index: (id, name, raw JSON arguments).
type PartialToolCalls = std::collections::BTreeMap<u64, (String, String, String)>;

/// Ends a streamed completion the same way for both wire formats: parses each tool call's accumulated JSON arguments
/// (empty or malformed arguments become `{}`) in index order, and defaults the stop reason to `"stop"`.
fn finish_completion(mut out: Completion, calls: PartialToolCalls) -> Completion {
    for (_, (id, name, args)) in calls {
        let input = if args.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&args).unwrap_or(serde_json::json!({}))
        };
        out.tool_calls.push((id, name, input));
    }
    if out.stop_reason.is_empty() {
        out.stop_reason = "stop".into();
    }
    out
}

/// A failed provider call.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{provider} {class:?}: {message}")]
pub struct ProviderError {
    pub provider: String,
    pub class: FailureClass,
    pub status: Option<u16>,
    pub message: String,
}

/// Calls the provider's streaming endpoint; `on_text` receives each text increment as it arrives.
/// `idle` bounds the wait for the response head and for every chunk (a stalled stream is a timeout).
pub async fn stream(
    client: &reqwest::Client,
    provider: &ProviderConfig,
    key: &Secret,
    kind: KeyKind,
    req: &ModelRequest,
    idle: Duration,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Completion, ProviderError> {
    match provider.api {
        Api::AnthropicMessages => {
            anthropic::stream(client, provider, key, kind, req, idle, on_text).await
        }
        Api::OpenAiCompletions => openai::stream(client, provider, key, req, idle, on_text).await,
    }
}

/// Sends the request and checks the status, classifying failures.
async fn send(
    provider: &ProviderConfig,
    builder: reqwest::RequestBuilder,
    idle: Duration,
) -> Result<reqwest::Response, ProviderError> {
    let err = |class, status, message: String| ProviderError {
        provider: provider.id.clone(),
        class,
        status,
        message,
    };
    let resp = match tokio::time::timeout(idle, builder.send()).await {
        Err(_) => {
            return Err(err(
                FailureClass::Timeout,
                None,
                format!("no response within {} ms", idle.as_millis()),
            ));
        }
        Ok(Err(e)) if e.is_timeout() || e.is_connect() => {
            return Err(err(FailureClass::Timeout, None, e.to_string()));
        }
        Ok(Err(e)) => return Err(err(FailureClass::Other, None, e.to_string())),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    let body = tokio::time::timeout(idle, resp.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut class = FailureClass::from_status(status);
    if class == FailureClass::Other && body.contains("overloaded") {
        class = FailureClass::RateLimit;
    }
    let detail: String = body.chars().take(300).collect();
    Err(err(class, Some(status), format!("HTTP {status}: {detail}")))
}
