//! The member-facing listener: accept loop under a global connection cap, one HTTP/1.1 connection task per client
//! with a header-read timeout, graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ProxyConfig;
use super::forward::{ConnInfo, Proxy, handle};
use super::metrics::ProxyMetrics;
use super::route::RouteTableHandle;
use super::wake::WakeRequest;

/// Serves member traffic on `listener` (the caller binds; tests use port 0) until `shutdown` is cancelled, then
/// stops accepting, lets open requests and WebSockets finish for `drain_timeout_s`, and returns.
///
/// `wake_tx` reaches whoever owns worker lifecycle (`None`: stopped workers answer 503).
pub async fn run(
    listener: TcpListener,
    table: Arc<RouteTableHandle>,
    cfg: ProxyConfig,
    wake_tx: Option<mpsc::Sender<WakeRequest>>,
    metrics: Arc<ProxyMetrics>,
    shutdown: CancellationToken,
) {
    let drain = Duration::from_secs(cfg.drain_timeout_s);
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout())
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    let proxy = Arc::new(Proxy {
        table,
        cfg,
        wake_tx,
        metrics,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    let connections = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, max_connections = proxy.cfg.max_connections, "edge proxy listening");
    }
    loop {
        // Take a connection slot before accepting: at the cap, new clients wait in the kernel backlog instead of
        // costing a file descriptor, and the ones already served keep their share of the two cores.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE or a connection reset before accept: back off briefly rather than spin.
                proxy.metrics.accept_error();
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(
            Arc::clone(&proxy),
            builder.clone(),
            stream,
            peer,
            permit,
        ));
    }
    drop(listener);
    connections.close();
    proxy.tasks.close();
    let drained = tokio::time::timeout(drain, async {
        connections.wait().await;
        proxy.tasks.wait().await;
    })
    .await
    .is_ok();
    tracing::info!(drained, "edge proxy stopped");
}

async fn serve(
    proxy: Arc<Proxy>,
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    proxy.metrics.connection_opened();
    let info = Arc::new(ConnInfo::new(peer));
    let svc_proxy = Arc::clone(&proxy);
    let svc = service_fn(move |req| {
        let proxy = Arc::clone(&svc_proxy);
        let info = Arc::clone(&info);
        async move { handle(&proxy, &info, req).await }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(peer = %peer, error = %e, "client connection ended with an error");
            }
        }
        _ = proxy.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    proxy.metrics.connection_closed();
}
