//! Edge proxy end to end: the real proxy on a loopback port in front of real upstream servers (small hyper
//! backends that log what reaches them, one speaking a Clawdbot protocol-v3 subset); routing per binding kind,
//! SSE and WebSocket pass-through, the cross-tenant matrix, wake/idle stop, whose-fault errors, listener hygiene.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use supervisor::proxy::{
    Binding, ProxyConfig, ProxyMetrics, RouteAuth, RouteSpec, RouteTableHandle, StopRequest,
    TokenHash, UpstreamState, WakeError, WakeRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

const SHARED_INTERNAL: &str = "shared-worker-internal-token";

// ---------------------------------------------------------------- upstream servers

/// What reached a backend.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
}

/// A real HTTP server on loopback that logs every request; `/sse` streams two events around `release`;
/// upgrades speak a Clawdbot v3 subset requiring `expected_token` in the connect frame.
struct Backend {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
}

impl Backend {
    async fn start(expected_token: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(listener, expected_token)
    }

    fn serve(listener: TcpListener, expected_token: &str) -> Backend {
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (log2, release2, token) = (
            Arc::clone(&log),
            Arc::clone(&release),
            expected_token.to_owned(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, release, token) =
                    (Arc::clone(&log2), Arc::clone(&release2), token.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        backend_handle(req, Arc::clone(&log), Arc::clone(&release), token.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, log, release }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn backend_handle(
    mut req: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    token: String,
) -> Result<Response<BoxBody>, Infallible> {
    log.lock().unwrap().push(Seen {
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    if req.headers().contains_key("upgrade") {
        let key = req.headers().get("sec-websocket-key").unwrap().clone();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let up = upgrade.await.unwrap();
            mini_gateway(TokioIo::new(up), token).await;
        });
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/sse" {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await
                .unwrap();
            release.notified().await;
            tx.send(Ok(Frame::data(Bytes::from_static(
                b"data: second\n\ndata: [DONE]\n\n",
            ))))
            .await
            .unwrap();
        });
        let stream = tokio_stream_from(rx);
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/echo" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(Response::new(Full::new(body).boxed()));
    }
    if req.uri().path() == "/hang" {
        release.notified().await;
    }
    let body = json!({"uri": req.uri().to_string()}).to_string();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Protocol v3 subset: challenge, `connect` with `auth.token == token` (else 1008), hello-ok, and `chat.send` answered
/// by an ack, cumulative deltas and a final, as the real gateway streams them.
async fn mini_gateway(io: TokioIo<hyper::upgrade::Upgraded>, token: String) {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let challenge =
        json!({"type":"event","event":"connect.challenge","payload":{"nonce":"n-1","ts":1}});
    ws.send(Message::text(challenge.to_string())).await.unwrap();
    let Some(Ok(Message::Text(first))) = ws.next().await else {
        return;
    };
    let connect: Value = serde_json::from_str(&first).unwrap();
    if connect["method"] != "connect" || connect["params"]["auth"]["token"] != token.as_str() {
        let err = json!({"type":"res","id":connect["id"],"ok":false,
            "error":{"code":"INVALID_REQUEST","message":"unauthorized: gateway token mismatch"}});
        let _ = ws.send(Message::text(err.to_string())).await;
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "unauthorized".into(),
            }))
            .await;
        return;
    }
    let hello = json!({"type":"res","id":connect["id"],"ok":true,"payload":{"type":"hello-ok","protocol":3}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let req: Value = serde_json::from_str(&text).unwrap();
        if req["method"] != "chat.send" {
            continue;
        }
        let run = req["params"]["idempotencyKey"].clone();
        let key = req["params"]["sessionKey"].clone();
        let ack = json!({"type":"res","id":req["id"],"ok":true,"payload":{"runId":run,"status":"started"}});
        ws.send(Message::text(ack.to_string())).await.unwrap();
        for (seq, (state, text)) in [
            ("delta", "Hel"),
            ("delta", "Hello"),
            ("final", "Hello world"),
        ]
        .into_iter()
        .enumerate()
        {
            let ev = json!({"type":"event","event":"chat","payload":{"runId":run,"sessionKey":key,"seq":seq+1,
                "state":state,"message":{"role":"assistant","content":[{"type":"text","text":text}]}}});
            ws.send(Message::text(ev.to_string())).await.unwrap();
        }
    }
}

// ---------------------------------------------------------------- the proxy under test

struct TestProxy {
    addr: SocketAddr,
    table: Arc<RouteTableHandle>,
    metrics: Arc<ProxyMetrics>,
    shutdown: CancellationToken,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_proxy(
    specs: Vec<RouteSpec>,
    cfg: ProxyConfig,
    wake_tx: Option<mpsc::Sender<WakeRequest>>,
) -> TestProxy {
    let table = Arc::new(RouteTableHandle::for_config(specs, &cfg).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(ProxyMetrics::new());
    let shutdown = CancellationToken::new();
    tokio::spawn(supervisor::proxy::run(
        listener,
        Arc::clone(&table),
        cfg,
        wake_tx,
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    TestProxy {
        addr,
        table,
        metrics,
        shutdown,
    }
}

fn dedicated(id: &str, bindings: Vec<Binding>, upstream: UpstreamState) -> RouteSpec {
    RouteSpec {
        user_id: id.parse().unwrap(),
        bindings,
        upstream,
        auth: RouteAuth::Dedicated {
            token_hash: TokenHash::of(&token(id)),
        },
        user_dir: None,
    }
}

fn shared(id: &str, bindings: Vec<Binding>, upstream: UpstreamState) -> RouteSpec {
    RouteSpec {
        user_id: id.parse().unwrap(),
        bindings,
        upstream,
        auth: RouteAuth::Shared {
            member_token_hash: TokenHash::of(&token(id)),
            internal_token: SHARED_INTERNAL.to_owned().into(),
            agent_id: id.to_owned(),
        },
        user_dir: None,
    }
}

fn token(id: &str) -> String {
    format!("member-token-of-{id}")
}

fn all_bindings() -> Vec<Binding> {
    vec![
        Binding::HostPattern("{id}.helm.test".into()),
        Binding::PathPrefix("/u/{id}/".into()),
        Binding::Token,
    ]
}

fn test_config() -> ProxyConfig {
    ProxyConfig {
        per_member_rps: 0,
        ..ProxyConfig::default()
    }
}

/// One request on a fresh connection; returns status, headers and body text.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (parts.status, parts.headers, body)
}

fn bearer(id: &str) -> String {
    format!("Bearer {}", token(id))
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_binding_kind_reaches_the_right_worker_with_rewritten_headers() {
    let alice_be = Backend::start(&token("alice")).await;
    let shared_be = Backend::start(SHARED_INTERNAL).await;
    let proxy = start_proxy(
        vec![
            dedicated(
                "alice",
                vec![
                    Binding::Host("Alice.Example".into()),
                    Binding::PathPrefix("/u/{id}/".into()),
                    Binding::Token,
                ],
                UpstreamState::Running(alice_be.addr),
            ),
            shared(
                "bob",
                all_bindings(),
                UpstreamState::Running(shared_be.addr),
            ),
        ],
        test_config(),
        None,
    )
    .await;
    let a = proxy.addr;

    // Exact host: the dedicated member's token passes unchanged; X-Forwarded-* are set.
    let (s, _, _) = get(
        a,
        "alice.example:443",
        "/chat",
        &[("authorization", &bearer("alice"))],
    )
    .await;
    assert_eq!(s, 200);
    let seen = alice_be.seen().pop().unwrap();
    assert_eq!(seen.uri, "/chat");
    assert_eq!(seen.headers["authorization"], bearer("alice").as_str());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "alice.example:443");

    // Path prefix: stripped, announced in X-Forwarded-Prefix; hop-by-hop headers removed.
    let (s, _, _) = get(
        a,
        "edge",
        "/u/alice/v1/models?x=1",
        &[
            ("authorization", &bearer("alice")),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("te", "trailers"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    let seen = alice_be.seen().pop().unwrap();
    assert_eq!(seen.uri, "/v1/models?x=1");
    assert_eq!(seen.headers["x-forwarded-prefix"], "/u/alice");
    for hop in ["x-hop", "te", "connection"] {
        assert!(!seen.headers.contains_key(hop), "{hop} forwarded");
    }

    // Token only.
    let (s, _, _) = get(
        a,
        "edge",
        "/anything",
        &[("authorization", &bearer("alice"))],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(alice_be.seen().pop().unwrap().uri, "/anything");

    // Shared member by host pattern + ?token=: internal token replaces the member's, the agent scope is the member's
    // own (client-sent copies in any case removed), the token leaves the query, and the browser gets a cookie.
    let (s, h, _) = get(
        a,
        "bob.helm.test",
        "/page?token=member-token-of-bob&y=2",
        &[("X-Wirebot-Agent", "alice"), ("x-wirebot-agent", "carol")],
    )
    .await;
    assert_eq!(s, 200);
    let seen = shared_be.seen().pop().unwrap();
    assert_eq!(seen.uri, "/page?y=2");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {SHARED_INTERNAL}").as_str()
    );
    assert_eq!(
        seen.headers
            .get_all("x-wirebot-agent")
            .iter()
            .collect::<Vec<_>>(),
        ["bob"]
    );
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("wirebot_token=member-token-of-bob; Path=/; HttpOnly"),
        "{cookie}"
    );

    // A browser on /u/bob/ with the cookie only (page assets) gets in; the cookie does not reach the shared worker.
    let (s, _, _) = get(
        a,
        "edge",
        "/u/bob/app.js",
        &[("cookie", "theme=dark; wirebot_token=member-token-of-bob")],
    )
    .await;
    assert_eq!(s, 200);
    let seen = shared_be.seen().pop().unwrap();
    assert_eq!(seen.uri, "/app.js");
    assert_eq!(seen.headers["cookie"], "theme=dark");

    // /u/alice without its slash redirects, keeping the query.
    let (s, h, _) = get(a, "edge", "/u/alice?token=t", &[]).await;
    assert_eq!(s, 308);
    assert_eq!(h["location"], "/u/alice/?token=t");

    // Whose fault: no route 404 (problem+json for API clients), host route without token 401.
    let (s, h, body) = get(a, "nobody.test", "/", &[("accept", "application/json")]).await;
    assert_eq!(s, 404);
    assert_eq!(h["content-type"], "application/problem+json");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["type"], "urn:wirebot:proxy:no-route");
    let (s, h, _) = get(a, "alice.example", "/", &[]).await;
    assert_eq!(s, 401);
    assert!(h.contains_key("www-authenticate"));
}

/// One cross-tenant attempt: its name, the request path, and extra headers.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_token_never_opens_another_members_worker_or_agent() {
    let dedicated_ids = ["alice", "carol"];
    let shared_ids = ["bob", "dave"];
    let mut backends = HashMap::new();
    let mut specs = Vec::new();
    for id in dedicated_ids {
        let be = Backend::start(&token(id)).await;
        specs.push(dedicated(
            id,
            all_bindings(),
            UpstreamState::Running(be.addr),
        ));
        backends.insert(id, be);
    }
    let shared_be = Backend::start(SHARED_INTERNAL).await;
    for id in shared_ids {
        specs.push(shared(
            id,
            all_bindings(),
            UpstreamState::Running(shared_be.addr),
        ));
    }
    let proxy = start_proxy(specs, test_config(), None).await;
    let everyone: Vec<&str> = dedicated_ids.iter().chain(&shared_ids).copied().collect();

    for &me in &everyone {
        let auth = bearer(me);
        let query_token = format!("token={}", token(me));
        for &other in everyone.iter().filter(|&&o| o != me) {
            let host = format!("{other}.helm.test");
            let path = format!("/u/{other}/x");
            let cases: [Case<'_>; 4] = [
                (
                    "host+bearer",
                    "/x".to_owned(),
                    vec![("authorization", auth.as_str())],
                ),
                ("host+query", format!("/x?{query_token}"), vec![]),
                ("host+cookie", "/x".to_owned(), vec![]),
                (
                    "path+bearer",
                    path.clone(),
                    vec![("authorization", auth.as_str())],
                ),
            ];
            for (what, p, headers) in cases {
                let cookie = format!("wirebot_token={}", token(me));
                let mut headers = headers;
                if what == "host+cookie" {
                    headers.push(("cookie", cookie.as_str()));
                }
                let h = if what.starts_with("host") {
                    host.as_str()
                } else {
                    "edge"
                };
                let (s, _, _) = get(proxy.addr, h, &p, &headers).await;
                assert!(
                    [401, 403, 404].contains(&s.as_u16()),
                    "{me}'s token against {other}'s {what} got {s}"
                );
            }
            let (s, _, _) = get(
                proxy.addr,
                "edge",
                &format!("/u/{other}/x?{query_token}"),
                &[],
            )
            .await;
            assert!(
                [401, 403, 404].contains(&s.as_u16()),
                "{me}'s token against {other}'s path+query got {s}"
            );
            // Asking for another agent with one's own token lands in one's own scope, never the other's.
            let (s, _, _) = get(
                proxy.addr,
                "edge",
                "/agent-probe",
                &[("authorization", &auth), ("x-wirebot-agent", other)],
            )
            .await;
            assert_eq!(s, 200, "{me} with agent header {other}");
        }
    }
    // A forged token opens nothing.
    let (s, _, _) = get(
        proxy.addr,
        "edge",
        "/x",
        &[("authorization", "Bearer forged")],
    )
    .await;
    assert_eq!(s, 401);

    // The workers' logs: each dedicated worker saw only its own member's token, and only the agent probes.
    for id in dedicated_ids {
        let seen = backends[id].seen();
        assert_eq!(seen.len(), everyone.len() - 1, "{id}'s worker saw {seen:?}");
        for s in &seen {
            assert_eq!(s.uri, "/agent-probe");
            assert_eq!(s.headers["authorization"], bearer(id).as_str());
        }
    }
    let seen = shared_be.seen();
    assert_eq!(seen.len(), (everyone.len() - 1) * shared_ids.len());
    for s in &seen {
        assert_eq!(s.uri, "/agent-probe");
        assert_eq!(
            s.headers["authorization"],
            format!("Bearer {SHARED_INTERNAL}").as_str()
        );
        assert_eq!(s.headers.get_all("x-wirebot-agent").iter().count(), 1);
    }
    for id in shared_ids {
        let mine = seen
            .iter()
            .filter(|s| s.headers["x-wirebot-agent"] == id)
            .count();
        assert_eq!(mine, everyone.len() - 1, "agent {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_streamed_event_by_event() {
    let be = Backend::start("unused").await;
    let proxy = start_proxy(
        vec![dedicated(
            "alice",
            all_bindings(),
            UpstreamState::Running(be.addr),
        )],
        test_config(),
        None,
    )
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/u/alice/sse")
        .header("host", "edge")
        .header("authorization", bearer("alice"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream is blocked on `release` after the first event: this frame can only arrive if nothing buffers.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first event arrives")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    be.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: second\n\ndata: [DONE]\n\n");
}

async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The Clawdbot handshake and one streamed chat; returns the texts of the chat events.
async fn handshake_and_chat(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    connect_token: &str,
) -> Result<Vec<String>, String> {
    let next_json = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> Option<Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .ok()??
            {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    let challenge = next_json(ws).await.ok_or("no challenge")?;
    assert_eq!(challenge["event"], "connect.challenge");
    let connect = json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":3,"maxProtocol":3,
        "client":{"id":"test","version":"0","platform":"linux","mode":"test"},"role":"operator","auth":{"token":connect_token}}});
    ws.send(Message::text(connect.to_string())).await.unwrap();
    let hello = next_json(ws).await.ok_or("closed after connect")?;
    if hello["ok"] != true {
        return Err(hello.to_string());
    }
    assert_eq!(hello["payload"]["type"], "hello-ok");
    let send = json!({"type":"req","id":"s1","method":"chat.send","params":{"sessionKey":"agent:main:main",
        "message":"hi","idempotencyKey":"run-1"}});
    ws.send(Message::text(send.to_string())).await.unwrap();
    let ack = next_json(ws).await.ok_or("no ack")?;
    assert_eq!(ack["payload"]["status"], "started");
    let mut texts = Vec::new();
    loop {
        let ev = next_json(ws).await.ok_or("stream ended early")?;
        texts.push(
            ev["payload"]["message"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        if ev["payload"]["state"] == "final" {
            return Ok(texts);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshake_and_streamed_chat_through_the_proxy() {
    let alice_be = Backend::start(&token("alice")).await;
    let shared_be = Backend::start(SHARED_INTERNAL).await;
    let proxy = start_proxy(
        vec![
            dedicated(
                "alice",
                all_bindings(),
                UpstreamState::Running(alice_be.addr),
            ),
            shared(
                "bob",
                all_bindings(),
                UpstreamState::Running(shared_be.addr),
            ),
        ],
        test_config(),
        None,
    )
    .await;
    let want = ["Hel", "Hello", "Hello world"];

    // Dedicated, browser style: ?token= on the path route; the frame's token passes untouched.
    let mut ws = ws_connect(
        proxy.addr,
        &format!("/u/alice/ws?token={}", token("alice")),
        &[],
    )
    .await;
    assert_eq!(
        handshake_and_chat(&mut ws, &token("alice")).await.unwrap(),
        want
    );
    assert_eq!(proxy.table.open_websockets(&"alice".parse().unwrap()), 1);
    assert!(
        proxy
            .metrics
            .render()
            .contains("wirebot_proxy_open_websockets 1")
    );
    drop(ws);

    // Shared, API style: Bearer; the proxy swaps the member token in the connect frame for the internal one and
    // scopes the upgrade to the member's agent.
    let mut ws = ws_connect(
        proxy.addr,
        "/ws",
        &[
            ("authorization", &bearer("bob")),
            ("x-wirebot-agent", "dave"),
        ],
    )
    .await;
    assert_eq!(
        handshake_and_chat(&mut ws, &token("bob")).await.unwrap(),
        want
    );
    let upgrade = shared_be.seen().pop().unwrap();
    assert_eq!(upgrade.headers["x-wirebot-agent"], "bob");
    assert_eq!(
        upgrade.headers["authorization"],
        format!("Bearer {SHARED_INTERNAL}").as_str()
    );

    // A dedicated WebSocket with someone else's token in its frame is the worker's to refuse (bytes untouched).
    let mut ws = ws_connect(proxy.addr, "/ws", &[("authorization", &bearer("alice"))]).await;
    let refused = handshake_and_chat(&mut ws, &token("bob"))
        .await
        .unwrap_err();
    assert!(refused.contains("unauthorized"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_woken_by_its_first_request_and_stopped_when_idle() {
    let (wake_tx, mut wake_rx) = mpsc::channel::<WakeRequest>(8);
    let cfg = ProxyConfig {
        idle_stop_s: 1,
        idle_check_interval_s: 1,
        ..test_config()
    };
    let proxy = start_proxy(
        vec![dedicated("alice", all_bindings(), UpstreamState::Stopped)],
        cfg.clone(),
        Some(wake_tx.clone()),
    )
    .await;
    // The lifecycle side: start a real server on wake, mark the route Running, answer with its address.
    let table = Arc::clone(&proxy.table);
    let woken = tokio::spawn(async move {
        let w = wake_rx.recv().await.unwrap();
        assert_eq!(w.user_id.as_str(), "alice");
        let be = Backend::start(&token("alice")).await;
        table
            .set_upstream(&w.user_id, UpstreamState::Running(be.addr))
            .unwrap();
        w.reply.send(Ok(be.addr)).unwrap();
        be
    });
    let (s, _, body) = get(
        proxy.addr,
        "edge",
        "/u/alice/first",
        &[("authorization", &bearer("alice"))],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let be = woken.await.unwrap();
    assert_eq!(be.seen().pop().unwrap().uri, "/first");
    assert!(
        proxy
            .metrics
            .render()
            .contains(r#"wirebot_proxy_wakes_total{outcome="ok"} 1"#)
    );

    // Idle for idle_stop_s with nothing open: the stopper asks lifecycle to stop it, once.
    let (stop_tx, mut stop_rx) = mpsc::channel::<StopRequest>(8);
    let stopper_shutdown = CancellationToken::new();
    tokio::spawn(supervisor::proxy::run_idle_stopper(
        Arc::clone(&proxy.table),
        cfg,
        stop_tx,
        wake_tx,
        Arc::clone(&proxy.metrics),
        stopper_shutdown.clone(),
    ));
    let stop = tokio::time::timeout(Duration::from_secs(10), stop_rx.recv())
        .await
        .expect("idle stop")
        .unwrap();
    assert_eq!(stop.user_id.as_str(), "alice");
    assert!(proxy.table.idle_since(&stop.user_id).unwrap() >= Duration::from_secs(1));
    stopper_shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_woken_before_its_next_cron_job() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cron")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let soon = u64::try_from(now.as_millis()).unwrap() + 5_000;
    let jobs = json!({"version":1,"jobs":[{"id":"j1","name":"standup","enabled":true,
        "schedule":{"kind":"every","everyMs":86_400_000},"state":{"nextRunAtMs":soon}}]});
    let mut f = std::fs::File::create(dir.path().join("cron/jobs.json")).unwrap();
    std::io::Write::write_all(&mut f, jobs.to_string().as_bytes()).unwrap();
    let mut spec = dedicated("alice", all_bindings(), UpstreamState::Stopped);
    spec.user_dir = Some(dir.path().to_owned());
    let cfg = ProxyConfig {
        idle_check_interval_s: 1,
        cron_wake_lead_s: 60,
        ..test_config()
    };
    let table = Arc::new(RouteTableHandle::for_config(vec![spec], &cfg).unwrap());
    let (stop_tx, _stop_rx) = mpsc::channel(8);
    let (wake_tx, mut wake_rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    tokio::spawn(supervisor::proxy::run_idle_stopper(
        table,
        cfg,
        stop_tx,
        wake_tx,
        Arc::new(ProxyMetrics::new()),
        shutdown.clone(),
    ));
    let wake = tokio::time::timeout(Duration::from_secs(10), wake_rx.recv())
        .await
        .expect("cron wake")
        .unwrap();
    assert_eq!(wake.user_id.as_str(), "alice");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whose_fault_it_is() {
    // A port nobody listens on: bound but never listening, and held for the whole test, so no other test's
    // listener can be given the same port (a bound-then-closed port was, once: the request reached that proxy).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = reserved.local_addr().unwrap();
    let hanging = Backend::start("unused").await;
    let (wake_tx, mut wake_rx) = mpsc::channel::<WakeRequest>(8);
    tokio::spawn(async move {
        while let Some(w) = wake_rx.recv().await {
            let _ = w.reply.send(Err(WakeError::StartFailed {
                reason: "the worker exited during start".into(),
            }));
        }
    });
    let cfg = ProxyConfig {
        response_timeout_ms: 300,
        per_member_rps: 1,
        per_member_burst: 2,
        ..ProxyConfig::default()
    };
    let proxy = start_proxy(
        vec![
            shared(
                "refused",
                vec![Binding::Token],
                UpstreamState::Running(closed),
            ),
            dedicated(
                "slow",
                vec![Binding::Token],
                UpstreamState::Running(hanging.addr),
            ),
            dedicated(
                "sick",
                vec![Binding::Token],
                UpstreamState::Quarantined {
                    reason: "crashed 5 times in 60 s".into(),
                },
            ),
            shared("booting", vec![Binding::Token], UpstreamState::Starting),
            dedicated("broken", vec![Binding::Token], UpstreamState::Stopped),
            dedicated(
                "busy",
                vec![Binding::Token],
                UpstreamState::Running(hanging.addr),
            ),
        ],
        cfg,
        Some(wake_tx),
    )
    .await;
    let json = ("accept", "application/json");
    let check = async |id: &str, path: &str, status: u16, retry_after: Option<&str>| {
        let (s, h, body) = get(
            proxy.addr,
            "edge",
            path,
            &[("authorization", &bearer(id)), json],
        )
        .await;
        assert_eq!(s.as_u16(), status, "{id}: {body}");
        assert_eq!(
            h.get("retry-after").map(|v| v.to_str().unwrap()),
            retry_after,
            "{id}"
        );
        if status == 200 {
            return body;
        }
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], status);
        problem["detail"].as_str().unwrap().to_owned()
    };
    check("refused", "/", 502, None).await;
    check("slow", "/hang", 504, None).await;
    assert_eq!(
        check("sick", "/", 503, Some("60")).await,
        "crashed 5 times in 60 s"
    );
    check("booting", "/", 503, Some("5")).await;
    assert_eq!(
        check("broken", "/", 503, Some("5")).await,
        "the worker exited during start"
    );
    check("busy", "/", 200, None).await;
    check("busy", "/", 200, None).await;
    check("busy", "/", 429, Some("1")).await;
    let text = proxy.metrics.render();
    for needle in [
        r#"wirebot_proxy_requests_total{tier="shared",status="502"} 1"#,
        r#"wirebot_proxy_requests_total{tier="dedicated",status="504"} 1"#,
        r#"wirebot_proxy_requests_total{tier="dedicated",status="429"} 1"#,
        r#"wirebot_proxy_wakes_total{outcome="failed"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

/// Raises the soft fd limit to the hard one (20,000 here) so 5,000 client + 5,000 server sockets fit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connection_floods_do_not_starve_other_clients() {
    let hard = raise_nofile();
    let idle_count = if hard >= 12_000 {
        5_000
    } else {
        usize::try_from(hard / 3).unwrap().min(5_000)
    };
    let be = Backend::start("unused").await;
    // Long enough for the flood to stay connected while the other client is measured.
    let cfg = ProxyConfig {
        header_timeout_ms: 10_000,
        ..test_config()
    };
    let proxy = start_proxy(
        vec![dedicated(
            "alice",
            all_bindings(),
            UpstreamState::Running(be.addr),
        )],
        cfg,
        None,
    )
    .await;

    // A slowloris client: one header byte per second, never finishing.
    let slow_addr = proxy.addr;
    let slowloris = tokio::spawn(async move {
        let mut s = TcpStream::connect(slow_addr).await.unwrap();
        let started = Instant::now();
        let head = b"GET / HTTP/1.1\r\nHost: edge\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for b in head {
            tick.tick().await;
            if s.write_all(&[*b]).await.is_err() {
                return started.elapsed();
            }
            // The proxy closes it once the header timeout passes: a read then sees EOF/408.
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                && (n == 0 || buf.starts_with(b"HTTP/1.1 408"))
            {
                return started.elapsed();
            }
        }
        panic!("slowloris connection was never closed");
    });

    // Idle connections that never send a byte.
    let mut idle = Vec::with_capacity(idle_count);
    for _ in 0..idle_count {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }

    let want = format!("wirebot_proxy_open_connections {}", idle_count + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.metrics.render().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "the proxy did not accept all {idle_count} idle connections"
        );
        tokio::task::yield_now().await;
    }

    // Another client, one keep-alive connection: its latencies stay low.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut lat = Vec::new();
    for _ in 0..500 {
        let req = Request::builder()
            .uri("/")
            .header("host", "edge")
            .header("authorization", bearer("alice"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let t = Instant::now();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100];
    eprintln!("p99 with {idle_count} idle connections and a slowloris client: {p99:?}");
    // A behaviour check with a generous bound (debug build, shared cores); the benchmark measures the real figure.
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");

    let closed_after = tokio::time::timeout(Duration::from_secs(30), slowloris)
        .await
        .expect("slowloris closed")
        .unwrap();
    assert!(
        closed_after >= Duration::from_secs(9),
        "closed after {closed_after:?}: before the header timeout?"
    );
    drop(idle);
}

/// One request with a body (`chunked` when `content_length` is false) on a fresh connection.
async fn post(
    addr: SocketAddr,
    path: &str,
    auth: &str,
    body: Vec<u8>,
    content_length: bool,
) -> (StatusCode, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "edge")
        .header("authorization", auth);
    let resp = if content_length {
        sender
            .send_request(req.body(Full::new(Bytes::from(body)).boxed()).unwrap())
            .await
    } else {
        // A stream body has no exact size: hyper sends it chunked.
        let chunks = body
            .chunks(256)
            .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(c))))
            .collect::<Vec<_>>();
        sender
            .send_request(
                req.body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                    chunks,
                ))))
                .unwrap(),
            )
            .await
    };
    let resp = resp.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_to_the_worker_within_the_size_limit() {
    let be = Backend::start("unused").await;
    let cfg = ProxyConfig {
        max_body_bytes: 4096,
        ..test_config()
    };
    let proxy = start_proxy(
        vec![dedicated(
            "alice",
            all_bindings(),
            UpstreamState::Running(be.addr),
        )],
        cfg,
        None,
    )
    .await;
    let auth = bearer("alice");
    let small: Vec<u8> = (0..3000u32)
        .map(|i| b'a' + u8::try_from(i % 26).unwrap())
        .collect();
    for content_length in [true, false] {
        let (s, body) = post(
            proxy.addr,
            "/u/alice/echo",
            &auth,
            small.clone(),
            content_length,
        )
        .await;
        assert_eq!(s, 200, "content_length={content_length}");
        assert_eq!(body, small, "content_length={content_length}");
    }
    // Over the limit: refused up front when the length is declared.
    let before = be.seen().len();
    let (s, _) = post(proxy.addr, "/u/alice/echo", &auth, vec![b'x'; 5000], true).await;
    assert_eq!(s, 413);
    assert_eq!(
        be.seen().len(),
        before,
        "a declared oversize body never reaches the worker"
    );
    // Chunked past the limit: cut off while streaming, still the client's fault.
    let (s, _) = post(proxy.addr, "/u/alice/echo", &auth, vec![b'x'; 8000], false).await;
    assert_eq!(s, 413);
}

/// The real `wirebot-worker` behind the proxy: a dedicated member reaches their own gateway through the path route
/// with the browser-style `?token=`, a shared member their own agent of the shared gateway (whose internal token
/// they never hold), each with a full protocol-v3 handshake and a chat streamed as deltas then a final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_worker_chat_streams_through_the_proxy_for_dedicated_and_shared_members() {
    use tests::fake_provider::{FakeProvider, Reply};
    use tests::worker::{
        Worker, WorkerOpts, WsClient, basic_config, multi_agent_config, write_config,
    };

    let fake = FakeProvider::start().await;
    fake.set_default(Reply::text(
        "streamed answer from the worker",
        6,
        Duration::from_millis(20),
    ));
    let alice_dir = tempfile::tempdir().unwrap();
    write_config(alice_dir.path(), &basic_config(&token("alice"), &fake));
    let alice_worker = Worker::start(alice_dir.path(), WorkerOpts::default());
    let shared_dir = tempfile::tempdir().unwrap();
    write_config(
        shared_dir.path(),
        &multi_agent_config(SHARED_INTERNAL, &fake, &["bob", "dave"]),
    );
    let shared_worker = Worker::start(shared_dir.path(), WorkerOpts::default());
    let local = |port: u16| UpstreamState::Running(SocketAddr::from(([127, 0, 0, 1], port)));
    let proxy = start_proxy(
        vec![
            dedicated("alice", all_bindings(), local(alice_worker.port)),
            shared("bob", all_bindings(), local(shared_worker.port)),
            shared("dave", all_bindings(), local(shared_worker.port)),
        ],
        test_config(),
        None,
    )
    .await;

    async fn chat(c: &mut WsClient, run: &str) -> Vec<Value> {
        let ack = c
            .call_ok(
                "chat.send",
                json!({"sessionKey": "main", "message": "hi", "idempotencyKey": run}),
            )
            .await;
        assert_eq!(ack["status"], "started");
        let fin = c.wait_chat(run, "final", Duration::from_secs(20)).await;
        assert_eq!(
            fin["message"]["content"][0]["text"],
            "streamed answer from the worker"
        );
        vec![fin]
    }

    // Dedicated: the page's WebSocket on /u/alice/?token=…; the token in the connect frame passes untouched.
    let url = format!("ws://{}/u/alice/?token={}", proxy.addr, token("alice"));
    let mut alice = WsClient::connect(&url, &token("alice"), None)
        .await
        .unwrap();
    assert_eq!(
        alice.hello["snapshot"]["sessionDefaults"]["mainSessionKey"],
        "agent:main:main"
    );
    alice
        .call_ok(
            "chat.send",
            json!({"sessionKey": "main", "message": "hi", "idempotencyKey": "a-1"}),
        )
        .await;
    let delta = alice
        .next_event_where(Duration::from_secs(20), |e| {
            e["event"] == "chat" && e["payload"]["state"] == "delta"
        })
        .await
        .expect("a delta before the final");
    assert_eq!(delta["payload"]["runId"], "a-1");
    alice
        .wait_chat("a-1", "final", Duration::from_secs(20))
        .await;

    // Shared: bob's member token opens bob's agent only, even when he asks for dave's in the scope header.
    let url = format!("ws://{}/?token={}", proxy.addr, token("bob"));
    let mut bob = WsClient::connect(&url, &token("bob"), Some("dave"))
        .await
        .unwrap();
    assert_eq!(
        bob.hello["snapshot"]["sessionDefaults"]["mainSessionKey"],
        "agent:bob:main"
    );
    let fin = chat(&mut bob, "b-1").await;
    assert_eq!(fin[0]["sessionKey"], "agent:bob:main");
    assert_eq!(
        bob.call_ok("agents.list", json!({})).await["agents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The member token alone never opens the shared worker directly, and alice's token not bob's agent.
    assert!(
        WsClient::connect(&shared_worker.ws_url(), &token("bob"), Some("bob"))
            .await
            .is_err()
    );
    let (s, _, _) = get(
        proxy.addr,
        "bob.helm.test",
        "/",
        &[("authorization", &bearer("alice"))],
    )
    .await;
    assert_eq!(s, 403);
}

// ---------------------------------------------------------------- the HTTP/1.1 fast path on the wire

/// Writes `bytes` on a new connection (then half-closes if asked) and reads until the proxy closes.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The bodies of the responses in `raw`, in order (`Content-Length` or chunked framing).
fn bodies(raw: &str) -> Vec<(u16, String)> {
    let mut rest = raw;
    let mut out = Vec::new();
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let status: u16 = head[9..12].parse().unwrap();
        let lower = head.to_ascii_lowercase();
        let (body, next) = if let Some(i) = lower.find("content-length: ") {
            let n: usize = lower[i + 16..]
                .split("\r\n")
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (after[..n].to_owned(), &after[n..])
        } else if lower.contains("transfer-encoding: chunked") {
            let (mut body, mut at) = (String::new(), after);
            loop {
                let (size, data) = at.split_once("\r\n").unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    at = &data[2..];
                    break;
                }
                body.push_str(&data[..size]);
                at = &data[size + 2..];
            }
            (body, at)
        } else {
            (String::new(), after)
        };
        out.push((status, body));
        rest = next;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_chunked_bodies_keep_their_order_and_framing() {
    let be = Backend::start("unused").await;
    let proxy = start_proxy(
        vec![dedicated(
            "alice",
            all_bindings(),
            UpstreamState::Running(be.addr),
        )],
        test_config(),
        None,
    )
    .await;
    let auth = bearer("alice");
    // Three requests in one write: a GET, a chunked POST (echoed back), then a GET that closes.
    let pipelined = format!(
        "GET /u/alice/one HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\n\r\n\
         POST /u/alice/echo HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n\
         GET /u/alice/three HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_exchange(proxy.addr, pipelined.as_bytes(), false).await;
    let got = bodies(&raw);
    assert_eq!(got.len(), 3, "{raw}");
    assert_eq!(got[0], (200, json!({"uri": "/one"}).to_string()));
    assert_eq!(got[1], (200, "hello world".to_owned()));
    assert_eq!(got[2], (200, json!({"uri": "/three"}).to_string()));
    let uris: Vec<String> = be.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/one", "/echo", "/three"]);

    // A chunked response (SSE) is relayed chunked to a keep-alive client, then the next request follows.
    be.release.notify_one();
    let two = format!(
        "GET /u/alice/sse HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\n\r\n\
         GET /u/alice/after HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_exchange(proxy.addr, two.as_bytes(), false).await;
    let got = bodies(&raw);
    assert!(
        raw.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{raw}"
    );
    assert_eq!(
        got,
        [
            (
                200,
                "data: first\n\ndata: second\n\ndata: [DONE]\n\n".to_owned()
            ),
            (200, json!({"uri": "/after"}).to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heads_are_refused_as_problems_and_a_half_closed_client_gets_its_answer() {
    let be = Backend::start("unused").await;
    let proxy = start_proxy(
        vec![dedicated(
            "alice",
            all_bindings(),
            UpstreamState::Running(be.addr),
        )],
        test_config(),
        None,
    )
    .await;
    let problem = |raw: &str, status: u16, slug: &str| {
        assert!(raw.starts_with(&format!("HTTP/1.1 {status} ")), "{raw}");
        assert!(
            raw.contains("content-type: application/problem+json"),
            "{raw}"
        );
        let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["status"], status);
        assert_eq!(body["type"], format!("urn:wirebot:proxy:{slug}"));
    };
    let raw = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", false).await;
    problem(&raw, 400, "malformed-request");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: edge\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let raw = raw_exchange(proxy.addr, huge.as_bytes(), false).await;
    problem(&raw, 431, "head-too-large");
    assert!(be.seen().is_empty(), "a bad head never reaches the worker");
    let text = proxy.metrics.render();
    for needle in [
        r#"wirebot_proxy_requests_total{tier="none",status="400"} 1"#,
        r#"wirebot_proxy_requests_total{tier="none",status="431"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }

    // The client sends its request and shuts its side: the answer still arrives, then the proxy closes.
    let req = format!(
        "GET /u/alice/half HTTP/1.1\r\nHost: edge\r\nAuthorization: {}\r\n\r\n",
        bearer("alice")
    );
    let raw = raw_exchange(proxy.addr, req.as_bytes(), true).await;
    assert_eq!(
        bodies(&raw),
        [(200, json!({"uri": "/half"}).to_string())],
        "{raw}"
    );
}

/// A worker that answers the first request on each connection and, on the second, closes without answering (a
/// keep-alive connection it dropped just as the proxy reused it). Counts every request head it reads.
async fn drops_reused_connections() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = Arc::clone(&log2);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0.. {
                    // Read one head (and a body if Content-Length says so).
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len: usize = head
                        .to_ascii_lowercase()
                        .split("content-length: ")
                        .nth(1)
                        .map_or(0, |v| v.split("\r\n").next().unwrap().parse().unwrap());
                    while buf.len() < end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..end + len);
                    log.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap().to_owned());
                    if n == 1 {
                        return;
                    }
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_by_the_worker_is_retried_once_for_idempotent_requests_only() {
    let (addr, log) = drops_reused_connections().await;
    let proxy = start_proxy(
        vec![dedicated(
            "alice",
            all_bindings(),
            UpstreamState::Running(addr),
        )],
        test_config(),
        None,
    )
    .await;
    // One client connection, so every request is served by the same proxy thread and its pool.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let auth = bearer("alice");
    let mut exchange = async |req: String| {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        while !(got.ends_with("\r\n\r\nok") || got.contains("problem")) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break;
            }
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    };
    let get = format!("GET /u/alice/a HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\n\r\n");
    // 1: a new worker connection, answered; 2: that connection reused and dropped, so sent once more on a new one.
    assert!(exchange(get.clone()).await.starts_with("HTTP/1.1 200"));
    assert!(exchange(get.clone()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(log.lock().unwrap().len(), 3, "{:?}", log.lock().unwrap());
    // 3: a POST with a body on the reused connection is not sent twice: the worker's fault, 502.
    let post = format!(
        "POST /u/alice/a HTTP/1.1\r\nHost: edge\r\nAuthorization: {auth}\r\nAccept: application/json\r\n\
         Content-Length: 1\r\n\r\nx"
    );
    let raw = exchange(post).await;
    assert!(raw.starts_with("HTTP/1.1 502"), "{raw}");
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "GET /a HTTP/1.1",
            "GET /a HTTP/1.1",
            "GET /a HTTP/1.1",
            "POST /a HTTP/1.1"
        ]
    );
}
