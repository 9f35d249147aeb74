//! Benchmark driver for the edge proxy (used by `tests/bench/proxy.sh`): a tiny "ok" backend with a WebSocket echo,
//! the proxy in front of it with a static route table, a WebSocket relay-rate client and a wake-latency probe.
//!
//! `proxy_bench backend` · `proxy_bench proxy <upstream addr>` · `proxy_bench ws-rate <addr> <token|-> <n>` ·
//! `proxy_bench wake <n>`; servers print `ready port=<p>` and run until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use supervisor::proxy::{
    Binding, ProxyConfig, ProxyMetrics, RouteAuth, RouteSpec, RouteTableHandle, TokenHash,
    UpstreamState, WakeRequest,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-member-token";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("backend") => rt.block_on(backend()),
        Some("proxy") => {
            let upstream: SocketAddr = args.get(1).context("proxy <upstream addr>")?.parse()?;
            rt.block_on(proxy(upstream))
        }
        Some("ws-rate") => {
            let addr = args.get(1).context("ws-rate <addr> <token|-> <n>")?.clone();
            let token = args.get(2).filter(|t| t.as_str() != "-").cloned();
            let n: usize = args.get(3).map_or(Ok(20_000), |s| s.parse())?;
            rt.block_on(ws_rate(&addr, token, n))
        }
        Some("wake") => {
            let n: usize = args.get(1).map_or(Ok(50), |s| s.parse())?;
            rt.block_on(wake_latency(n))
        }
        _ => bail!(
            "usage: proxy_bench backend | proxy <upstream> | ws-rate <addr> <token|-> <n> | wake <n>"
        ),
    }
}

async fn backend() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ready port={}", listener.local_addr()?.port());
    serve_backend(listener).await
}

async fn serve_backend(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    if req.headers().contains_key(hyper::header::UPGRADE) {
                        let key = req.headers().get("sec-websocket-key").cloned();
                        let accept = key
                            .map(|k| {
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                                    k.as_bytes(),
                                )
                            })
                            .unwrap_or_default();
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = upgrade.await {
                                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                    TokioIo::new(up),
                                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                                    None,
                                )
                                .await;
                                let (mut tx, mut rx) = ws.split();
                                while let Some(Ok(m)) = rx.next().await {
                                    if m.is_text() && tx.send(m).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let resp = Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .header("sec-websocket-accept", accept)
                            .body(Full::new(Bytes::new()))
                            .unwrap_or_default();
                        return Ok::<_, Infallible>(resp);
                    }
                    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn route(upstream: UpstreamState) -> anyhow::Result<RouteSpec> {
    Ok(RouteSpec {
        user_id: "bench".parse()?,
        bindings: vec![Binding::Token, Binding::PathPrefix("/u/{id}/".into())],
        upstream,
        auth: RouteAuth::Dedicated {
            token_hash: TokenHash::of(TOKEN),
        },
        user_dir: None,
    })
}

fn bench_config() -> ProxyConfig {
    // Limits high enough for wrk's single member, but still checked on every request.
    ProxyConfig {
        per_member_rps: 10_000_000,
        per_member_burst: 10_000_000,
        per_member_max_connections: 100_000,
        // PROXY_THREADS overrides the thread count (to compare 1 and 2 threads per run).
        worker_threads: std::env::var("PROXY_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
        ..ProxyConfig::default()
    }
}

async fn proxy(upstream: SocketAddr) -> anyhow::Result<()> {
    let cfg = bench_config();
    let table = Arc::new(RouteTableHandle::for_config(
        vec![route(UpstreamState::Running(upstream))?],
        &cfg,
    )?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ready port={}", listener.local_addr()?.port());
    supervisor::proxy::run(
        listener,
        table,
        cfg,
        None,
        Arc::new(ProxyMetrics::new()),
        CancellationToken::new(),
    )
    .await;
    Ok(())
}

/// Sends `n` text messages through a WebSocket (pipelined, 64 in flight) and prints messages per second.
async fn ws_rate(addr: &str, token: Option<String>, n: usize) -> anyhow::Result<()> {
    let url = match &token {
        Some(t) => format!("ws://{addr}/ws?token={t}"),
        None => format!("ws://{addr}/ws"),
    };
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let started = Instant::now();
    let payload = "x".repeat(64);
    let sender = async {
        for _ in 0..n {
            tx.feed(Message::text(payload.clone())).await?;
        }
        tx.flush().await?;
        anyhow::Ok(tx)
    };
    let receiver = async {
        let mut got = 0;
        while got < n {
            match rx.next().await {
                Some(Ok(m)) if m.is_text() => got += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed after {got} messages"),
            }
        }
        anyhow::Ok(())
    };
    let (tx, ()) = tokio::try_join!(sender, receiver)?;
    let secs = started.elapsed().as_secs_f64();
    drop(tx);
    println!(
        "ws_messages={n} seconds={secs:.3} msgs_per_s={:.0}",
        n as f64 / secs
    );
    Ok(())
}

/// First request to a stopped route: the wake handler answers at once (the backend already listens), so the
/// figure is what the proxy adds (hold, wake round-trip, new pool connection), not the worker's start time.
async fn wake_latency(n: usize) -> anyhow::Result<()> {
    let backend_listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend_listener.local_addr()?;
    tokio::spawn(serve_backend(backend_listener));
    let cfg = bench_config();
    let table = Arc::new(RouteTableHandle::for_config(
        vec![route(UpstreamState::Stopped)?],
        &cfg,
    )?);
    let (wake_tx, mut wake_rx) = mpsc::channel::<WakeRequest>(16);
    let waker_table = Arc::clone(&table);
    tokio::spawn(async move {
        while let Some(w) = wake_rx.recv().await {
            let _ = waker_table.set_upstream(&w.user_id, UpstreamState::Running(backend_addr));
            let _ = w.reply.send(Ok(backend_addr));
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(supervisor::proxy::run(
        listener,
        Arc::clone(&table),
        cfg,
        Some(wake_tx),
        Arc::new(ProxyMetrics::new()),
        shutdown.clone(),
    ));
    let user = "bench".parse()?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..n {
        table.set_upstream(&user, UpstreamState::Stopped)?;
        cold.push(timed_get(proxy_addr).await?);
        warm.push(timed_get(proxy_addr).await?);
    }
    cold.sort();
    warm.sort();
    let p50 = |v: &[Duration]| v[v.len() / 2].as_secs_f64() * 1e3;
    println!(
        "wake_first_request_p50_ms={:.3} warm_request_p50_ms={:.3} wake_added_ms={:.3} wake_first_request_max_ms={:.3}",
        p50(&cold),
        p50(&warm),
        p50(&cold) - p50(&warm),
        cold.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    shutdown.cancel();
    Ok(())
}

/// One GET on a new connection, timed to the full response.
async fn timed_get(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "bench")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("wake probe got {}", resp.status());
    }
    http_body_util::BodyExt::collect(resp.into_body()).await?;
    Ok(started.elapsed())
}
