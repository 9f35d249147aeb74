//! OpenAI Chat Completions client (`POST {baseUrl}/chat/completions`, `stream: true`), for OpenAI and any
//! compatible server (llama.cpp, Ollama, vLLM): request body and `chat.completion.chunk` parsing.

use std::time::Duration;

use serde_json::{Value, json};

use super::sse::{SseError, SseReader};
use super::{Block, Completion, FailureClass, ModelRequest, ProviderError, Role};
use crate::config::ProviderConfig;
use crate::secret::Secret;

/// The request body for `req` (pure; unit-tested).
pub fn body(req: &ModelRequest) -> Value {
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for m in &req.messages {
        let text: String = m
            .content
            .iter()
            .filter_map(|b| {
                if let Block::Text(t) = b {
                    Some(t.as_str())
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
            .join("");
        match m.role {
            Role::User => {
                for b in &m.content {
                    if let Block::ToolResult {
                        tool_use_id,
                        content,
                        ..
                    } = b
                    {
                        messages.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
                    }
                }
                if m.content.iter().any(|b| matches!(b, Block::Text(_))) {
                    messages.push(json!({"role": "user", "content": text}));
                }
            }
            Role::Assistant => {
                let calls: Vec<Value> = m
                    .content
                    .iter()
                    .filter_map(|b| match b {
                        Block::ToolUse { id, name, input } => {
                            Some(json!({"id": id, "type": "function",
                            "function": {"name": name, "arguments": input.to_string()}}))
                        }
                        _ => None,
                    })
                    .collect();
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = json!(calls);
                }
                messages.push(msg);
            }
        }
    }
    let mut body = json!({"model": req.model, "messages": messages, "stream": true,
        "stream_options": {"include_usage": true}, "max_tokens": req.max_tokens});
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
            .collect();
    }
    body
}

pub(crate) async fn stream(
    client: &reqwest::Client,
    provider: &ProviderConfig,
    key: &Secret,
    req: &ModelRequest,
    idle: Duration,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Completion, ProviderError> {
    let url = format!(
        "{}/chat/completions",
        provider.base_url.trim_end_matches('/')
    );
    let rb = client
        .post(url)
        .bearer_auth(key.expose())
        .header("accept", "text/event-stream")
        .json(&body(req));
    let resp = super::send(provider, rb, idle).await?;
    let err = |class, message: String| ProviderError {
        provider: provider.id.clone(),
        class,
        status: None,
        message,
    };
    let mut reader = SseReader::new(resp, idle);
    let mut out = Completion::default();
    let mut calls = super::PartialToolCalls::new();
    let mut done = false;
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
        if ev.data.trim() == "[DONE]" {
            done = true;
            break;
        }
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        if let Some(e) = data.get("error") {
            return Err(err(
                FailureClass::Other,
                e["message"].as_str().unwrap_or("stream error").to_string(),
            ));
        }
        if let Some(u) = data.get("usage").filter(|u| u.is_object()) {
            out.usage.input = u["prompt_tokens"].as_u64().unwrap_or(0);
            out.usage.output = u["completion_tokens"].as_u64().unwrap_or(0);
        }
        let Some(choice) = data["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str()
            && !t.is_empty()
        {
            out.text.push_str(t);
            on_text(t);
        }
        if let Some(tc) = delta["tool_calls"].as_array() {
            for c in tc {
                let idx = c["index"].as_u64().unwrap_or(0);
                let e = calls.entry(idx).or_default();
                if let Some(id) = c["id"].as_str() {
                    e.0 = id.to_string();
                }
                if let Some(n) = c["function"]["name"].as_str() {
                    e.1.push_str(n);
                }
                if let Some(a) = c["function"]["arguments"].as_str() {
                    e.2.push_str(a);
                }
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            out.stop_reason = match r {
                "stop" => "stop",
                "length" => "length",
                "tool_calls" => "toolUse",
                other => other,
            }
            .to_string();
        }
    }
    if !done && out.stop_reason.is_empty() {
        return Err(err(
            FailureClass::Other,
            "stream ended before [DONE]".into(),
        ));
    }
    Ok(super::finish_completion(out, calls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Message;

    #[test]
    fn body_shape() {
        let req = ModelRequest {
            model: "gpt-x".into(),
            system: "sys".into(),
            messages: vec![
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: vec![Block::ToolUse {
                        id: "c1".into(),
                        name: "f".into(),
                        input: json!({"q": 1}),
                    }],
                },
                Message {
                    role: Role::User,
                    content: vec![Block::ToolResult {
                        tool_use_id: "c1".into(),
                        content: "r".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![],
            max_tokens: 10,
        };
        let b = body(&req);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(b["messages"][3]["role"], "tool");
        assert!(b.get("tools").is_none());
    }
}
