//! Anthropic Messages API client (`POST {baseUrl}/v1/messages`, `stream: true`): request body and SSE parsing.

use std::time::Duration;

use serde_json::{Value, json};

use super::sse::{SseError, SseReader};
use super::{Block, Completion, FailureClass, KeyKind, ModelRequest, ProviderError, Role};
use crate::config::ProviderConfig;
use crate::secret::Secret;

/// The request body for `req` (pure; unit-tested).
pub fn body(req: &ModelRequest) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let content: Vec<Value> = m
                .content
                .iter()
                .map(|b| match b {
                    Block::Text(t) => json!({"type": "text", "text": t}),
                    Block::ToolUse { id, name, input } => json!({"type": "tool_use", "id": id, "name": name, "input": input}),
                    Block::ToolResult { tool_use_id, content, is_error } => {
                        json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error})
                    }
                })
                .collect();
            json!({"role": role, "content": content})
        })
        .collect();
    let mut body = json!({"model": req.model, "max_tokens": req.max_tokens, "messages": messages, "stream": true});
    if !req.system.is_empty() {
        body["system"] = json!(req.system);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
    }
    body
}

pub(crate) async fn stream(
    client: &reqwest::Client,
    provider: &ProviderConfig,
    key: &Secret,
    kind: KeyKind,
    req: &ModelRequest,
    idle: Duration,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Completion, ProviderError> {
    let base = provider.base_url.trim_end_matches('/');
    let url = if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    };
    let mut rb = client
        .post(url)
        .header("anthropic-version", "2023-06-01")
        .header("accept", "text/event-stream")
        .json(&body(req));
    rb = match kind {
        KeyKind::ApiKey => rb.header("x-api-key", key.expose()),
        KeyKind::Bearer => rb
            .bearer_auth(key.expose())
            .header("anthropic-beta", "oauth-2025-04-20"),
    };
    let resp = super::send(provider, rb, idle).await?;
    let err = |class, message: String| ProviderError {
        provider: provider.id.clone(),
        class,
        status: None,
        message,
    };
    let mut reader = SseReader::new(resp, idle);
    let mut out = Completion::default();
    // index → (id, name, partial json) for tool_use blocks being streamed.
    let mut tools = super::PartialToolCalls::new();
    let mut finished = false;
    loop {
        let ev = match reader.next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(SseError::Idle) => {
                return Err(err(
                    FailureClass::Timeout,
                    format!("stream stalled for {} ms", idle.as_millis()),
                ));
            }
            Err(SseError::Transport(m)) => {
                return Err(err(FailureClass::Other, format!("stream cut: {m}")));
            }
        };
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        let ty = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&ev.event)
            .to_string();
        match ty.as_str() {
            "message_start" => {
                let u = &data["message"]["usage"];
                out.usage.input = u["input_tokens"].as_u64().unwrap_or(0);
                out.usage.cache_read = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
                out.usage.cache_write = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
            }
            "content_block_start" => {
                let b = &data["content_block"];
                if b["type"] == "tool_use" {
                    let idx = data["index"].as_u64().unwrap_or(0);
                    let id = b["id"].as_str().unwrap_or_default().to_string();
                    let name = b["name"].as_str().unwrap_or_default().to_string();
                    tools.insert(idx, (id, name, String::new()));
                }
            }
            "content_block_delta" => {
                let d = &data["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(t) = d["text"].as_str() {
                            out.text.push_str(t);
                            on_text(t);
                        }
                    }
                    Some("input_json_delta") => {
                        let idx = data["index"].as_u64().unwrap_or(0);
                        if let (Some(t), Some(entry)) =
                            (d["partial_json"].as_str(), tools.get_mut(&idx))
                        {
                            entry.2.push_str(t);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(n) = data["usage"]["output_tokens"].as_u64() {
                    out.usage.output = n;
                }
                if let Some(r) = data["delta"]["stop_reason"].as_str() {
                    out.stop_reason = match r {
                        "end_turn" | "stop_sequence" => "stop",
                        "max_tokens" => "length",
                        "tool_use" => "toolUse",
                        other => other,
                    }
                    .to_string();
                }
            }
            "message_stop" => {
                finished = true;
                break;
            }
            "error" => {
                let e = &data["error"];
                let etype = e["type"].as_str().unwrap_or("error");
                let class = match etype {
                    "overloaded_error" | "rate_limit_error" => FailureClass::RateLimit,
                    "authentication_error" | "permission_error" => FailureClass::Auth,
                    "billing_error" => FailureClass::Billing,
                    _ => FailureClass::Other,
                };
                return Err(err(
                    class,
                    format!("{etype}: {}", e["message"].as_str().unwrap_or("")),
                ));
            }
            _ => {}
        }
    }
    if !finished {
        return Err(err(
            FailureClass::Other,
            "stream ended before message_stop".into(),
        ));
    }
    Ok(super::finish_completion(out, tools))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Message, ToolSpec};

    #[test]
    fn body_shape() {
        let req = ModelRequest {
            model: "claude-x".into(),
            system: "be brief".into(),
            messages: vec![
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: vec![Block::ToolUse {
                        id: "t1".into(),
                        name: "f".into(),
                        input: json!({"a": 1}),
                    }],
                },
                Message {
                    role: Role::User,
                    content: vec![Block::ToolResult {
                        tool_use_id: "t1".into(),
                        content: "ok".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "d".into(),
                input_schema: json!({"type": "object"}),
            }],
            max_tokens: 100,
        };
        let b = body(&req);
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["stream"], true);
        assert_eq!(b["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(b["messages"][2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object");
    }
}
