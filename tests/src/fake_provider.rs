//! A local HTTP server speaking the real Anthropic Messages (`POST /v1/messages`) and OpenAI Chat Completions
//! (`POST /v1/chat/completions`) wire formats, SSE streaming included — the one allowed fake (a third-party SaaS).
//! Scriptable per test: text streamed in N tokens with a delay, an HTTP error status, a stall, a cut stream, or a
//! tool call; it records every request (path, key, model, body) so tests can assert where a call went.
//!
//! ```text
//! let fake = FakeProvider::start().await;
//! fake.on_key("sk-first", Reply::Status(429));            // first profile rate-limited
//! fake.set_default(Reply::text("Hello from the fake", 4, Duration::from_millis(5)));
//! let base = fake.base_url();                              // http://127.0.0.1:<port>
//! assert_eq!(fake.requests()[0].api_key.as_deref(), Some("sk-first"));
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Which wire protocol a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAi,
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with `tokens` streamed one SSE event each, `delay` apart.
    Text {
        tokens: Vec<String>,
        delay: Duration,
    },
    /// An error status with the provider's JSON error body (429, 401, 402, 500…).
    Status(u16),
    /// 200 and the stream's opening event, then nothing, forever.
    Stall,
    /// Streams the first `after` tokens, then drops the connection mid-stream.
    Cut {
        tokens: Vec<String>,
        after: usize,
        delay: Duration,
    },
    /// A tool call (Anthropic `tool_use` / OpenAI `tool_calls`), optionally preceded by text.
    ToolCall {
        text: String,
        id: String,
        name: String,
        input: Value,
    },
}

impl Reply {
    /// `text` split into `n` roughly equal tokens (at char boundaries), streamed `delay` apart.
    pub fn text(text: &str, n: usize, delay: Duration) -> Reply {
        Reply::Text {
            tokens: split(text, n),
            delay,
        }
    }

    /// A stream cut after `after` of `n` tokens.
    pub fn cut(text: &str, n: usize, after: usize, delay: Duration) -> Reply {
        Reply::Cut {
            tokens: split(text, n),
            after,
            delay,
        }
    }
}

fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A scripted answer for requests matching `key` and/or `model`, used `times` times (None = forever).
#[derive(Debug, Clone)]
pub struct Rule {
    pub key: Option<String>,
    pub model: Option<String>,
    pub times: Option<usize>,
    pub reply: Reply,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub api: Api,
    pub path: String,
    /// `x-api-key` or the bearer token.
    pub api_key: Option<String>,
    pub model: String,
    pub body: Value,
}

#[derive(Debug)]
struct Script {
    rules: Vec<Rule>,
    default: Reply,
    requests: Vec<Recorded>,
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeProvider {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeProvider {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime. Default reply: "Hello from the fake provider."
    pub async fn start() -> FakeProvider {
        let script = Arc::new(Mutex::new(Script {
            rules: Vec::new(),
            default: Reply::text("Hello from the fake provider.", 5, Duration::from_millis(2)),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/messages", post(anthropic))
            .route("/v1/chat/completions", post(openai))
            .route("/chat/completions", post(openai))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider addr");
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        FakeProvider { addr, script, stop }
    }

    /// `http://127.0.0.1:<port>`; OpenAI clients append `/v1` themselves if configured so (use [`Self::openai_base_url`]).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/v1`, the usual `baseUrl` of an OpenAI-compatible provider.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_default(&self, reply: Reply) {
        self.script.lock().unwrap().default = reply;
    }

    /// Appends a rule (rules are tried in order; the first match with uses left wins).
    pub fn push(&self, rule: Rule) {
        self.script.lock().unwrap().rules.push(rule);
    }

    /// Every request with this key gets `reply`.
    pub fn on_key(&self, key: &str, reply: Reply) {
        self.push(Rule {
            key: Some(key.into()),
            model: None,
            times: None,
            reply,
        });
    }

    /// The next request (any key/model) gets `reply`, once.
    pub fn next(&self, reply: Reply) {
        self.push(Rule {
            key: None,
            model: None,
            times: Some(1),
            reply,
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.script.lock().unwrap().requests.clear();
    }
}

fn key_of(headers: &HeaderMap) -> Option<String> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.to_string());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

fn choose(
    script: &Mutex<Script>,
    api: Api,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Reply {
    let mut s = script.lock().unwrap();
    let key = key_of(headers);
    let model = body["model"].as_str().unwrap_or_default().to_string();
    s.requests.push(Recorded {
        api,
        path: path.to_string(),
        api_key: key.clone(),
        model: model.clone(),
        body: body.clone(),
    });
    for r in s.rules.iter_mut() {
        let key_ok = r.key.as_ref().is_none_or(|k| Some(k) == key.as_ref());
        let model_ok = r.model.as_ref().is_none_or(|m| *m == model);
        let left = r.times.is_none_or(|t| t > 0);
        if key_ok && model_ok && left {
            if let Some(t) = r.times.as_mut() {
                *t -= 1;
            }
            return r.reply.clone();
        }
    }
    s.default.clone()
}

type Chunk = Result<Bytes, std::io::Error>;

fn sse(events: Vec<(Option<&'static str>, Value)>) -> Vec<String> {
    events
        .into_iter()
        .map(|(name, data)| match name {
            Some(n) => format!("event: {n}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        })
        .collect()
}

/// Streams `head`, then each of `body` after `delay`, then `tail`; `cut_after` drops the connection instead.
fn stream_response(
    head: Vec<String>,
    body: Vec<String>,
    tail: Vec<String>,
    delay: Duration,
    cut_after: Option<usize>,
    stall: bool,
) -> Response {
    let s = async_stream(head, body, tail, delay, cut_after, stall);
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(s))
        .unwrap()
}

fn async_stream(
    head: Vec<String>,
    body: Vec<String>,
    tail: Vec<String>,
    delay: Duration,
    cut_after: Option<usize>,
    stall: bool,
) -> impl futures_util::Stream<Item = Chunk> + Send + 'static {
    let head = futures_util::stream::iter(
        head.into_iter()
            .map(|h| Ok::<_, std::io::Error>(Bytes::from(h))),
    );
    let n = cut_after.unwrap_or(body.len()).min(body.len());
    let body = futures_util::stream::iter(body.into_iter().take(n)).then(move |b| async move {
        tokio::time::sleep(delay).await;
        Ok(Bytes::from(b))
    });
    let end: futures_util::stream::BoxStream<'static, Chunk> = if stall {
        futures_util::stream::pending().boxed()
    } else if cut_after.is_some() {
        futures_util::stream::once(async { Err(std::io::Error::other("cut by the fake provider")) })
            .boxed()
    } else {
        futures_util::stream::iter(tail.into_iter().map(|t| Ok(Bytes::from(t)))).boxed()
    };
    head.chain(body).chain(end)
}

async fn anthropic(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = choose(&script, Api::Anthropic, "/v1/messages", &headers, &body);
    let model = body["model"].as_str().unwrap_or("claude").to_string();
    let start = (
        Some("message_start"),
        json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    );
    let text_start = (
        Some("content_block_start"),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    let delta = |t: &str| {
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        )
    };
    let tail = |stop: &str, n: usize| {
        sse(vec![
            (
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                Some("message_delta"),
                json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": n}}),
            ),
            (Some("message_stop"), json!({"type": "message_stop"})),
        ])
    };
    match reply {
        Reply::Status(code) => error_response(Api::Anthropic, code),
        Reply::Stall => {
            stream_response(sse(vec![start]), vec![], vec![], Duration::ZERO, None, true)
        }
        Reply::Text { tokens, delay } => {
            let n = tokens.len();
            let body = tokens.iter().flat_map(|t| sse(vec![delta(t)])).collect();
            stream_response(
                sse(vec![start, text_start]),
                body,
                tail("end_turn", n),
                delay,
                None,
                false,
            )
        }
        Reply::Cut {
            tokens,
            after,
            delay,
        } => {
            let body = tokens.iter().flat_map(|t| sse(vec![delta(t)])).collect();
            stream_response(
                sse(vec![start, text_start]),
                body,
                vec![],
                delay,
                Some(after),
                false,
            )
        }
        Reply::ToolCall {
            text,
            id,
            name,
            input,
        } => {
            let mut events = vec![start];
            let mut idx = 0;
            if !text.is_empty() {
                events.push(text_start);
                events.push(delta(&text));
                events.push((
                    Some("content_block_stop"),
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                idx = 1;
            }
            events.push((
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": idx,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            events.push((
                Some("content_block_delta"),
                json!({"type": "content_block_delta", "index": idx,
                "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
            ));
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": idx}),
            ));
            events.push((Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}})));
            events.push((Some("message_stop"), json!({"type": "message_stop"})));
            stream_response(sse(events), vec![], vec![], Duration::ZERO, None, false)
        }
    }
}

async fn openai(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = choose(
        &script,
        Api::OpenAi,
        "/v1/chat/completions",
        &headers,
        &body,
    );
    let model = body["model"].as_str().unwrap_or("gpt").to_string();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}});
    let done = "data: [DONE]\n\n".to_string();
    match reply {
        Reply::Status(code) => error_response(Api::OpenAi, code),
        Reply::Stall => stream_response(
            sse(vec![(None, first)]),
            vec![],
            vec![],
            Duration::ZERO,
            None,
            true,
        ),
        Reply::Text { tokens, delay } => {
            let body = tokens
                .iter()
                .flat_map(|t| sse(vec![(None, chunk(json!({"content": t}), Value::Null))]))
                .collect();
            let mut tail = sse(vec![(None, chunk(json!({}), json!("stop"))), (None, usage)]);
            tail.push(done);
            stream_response(sse(vec![(None, first)]), body, tail, delay, None, false)
        }
        Reply::Cut {
            tokens,
            after,
            delay,
        } => {
            let body = tokens
                .iter()
                .flat_map(|t| sse(vec![(None, chunk(json!({"content": t}), Value::Null))]))
                .collect();
            stream_response(
                sse(vec![(None, first)]),
                body,
                vec![],
                delay,
                Some(after),
                false,
            )
        }
        Reply::ToolCall {
            text,
            id,
            name,
            input,
        } => {
            let mut events = vec![(None, first)];
            if !text.is_empty() {
                events.push((None, chunk(json!({"content": text}), Value::Null)));
            }
            events.push((
                None,
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                "function": {"name": name, "arguments": input.to_string()}}]}),
                    Value::Null,
                ),
            ));
            events.push((None, chunk(json!({}), json!("tool_calls"))));
            let mut all = sse(events);
            all.push(done);
            stream_response(all, vec![], vec![], Duration::ZERO, None, false)
        }
    }
}

fn error_response(api: Api, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (atype, otype) = match code {
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        401 => ("authentication_error", "invalid_api_key"),
        403 => ("permission_error", "permission_denied"),
        402 => ("billing_error", "insufficient_quota"),
        529 => ("overloaded_error", "overloaded"),
        _ => ("api_error", "server_error"),
    };
    let body = match api {
        Api::Anthropic => {
            json!({"type": "error", "error": {"type": atype, "message": format!("fake {code}")}})
        }
        Api::OpenAi => {
            json!({"error": {"message": format!("fake {code}"), "type": otype, "code": otype}})
        }
    };
    let mut r = (status, axum::Json(body)).into_response();
    if code == 429 {
        r.headers_mut().insert("retry-after", "30".parse().unwrap());
    }
    r
}
