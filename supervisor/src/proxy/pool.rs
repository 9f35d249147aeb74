//! Keep-alive connection pools to workers: one `HostPool` per upstream address holding idle HTTP/1.1 connections,
//! as hyper client connections (request handle + driver) for the hyper path and as plain sockets for the fast path
//! (`fast.rs`). A connection goes back to its pool when the response body ends; no task per request and none per
//! connection: the client connection's task drives the worker connection it borrowed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::TrySendError;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::body::ReqBody;
use super::fault::Fault;

/// Pool settings, taken from [`super::ProxyConfig`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub max_idle: usize,
    /// One idle list per proxy thread: a connection is only reused by the thread (runtime) that opened it.
    pub shards: usize,
}

impl From<&super::ProxyConfig> for PoolConfig {
    fn from(cfg: &super::ProxyConfig) -> PoolConfig {
        PoolConfig {
            connect_timeout: cfg.connect_timeout(),
            max_idle: cfg.max_idle_per_upstream,
            shards: cfg.worker_threads.max(1),
        }
    }
}

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as proxy thread `i` (its pool shard).
pub(crate) fn set_worker_index(i: usize) {
    WORKER_INDEX.with(|w| w.set(i));
}

fn worker_index() -> usize {
    WORKER_INDEX.with(std::cell::Cell::get)
}

type Sender = http1::SendRequest<ReqBody>;
type Driver = http1::Connection<TokioIo<TcpStream>, ReqBody>;

/// One keep-alive HTTP/1.1 connection to a worker: the request handle and the connection driver, kept together.
///
/// Why not spawn the driver as its own task (as hyper-util's client does)? Then every request hops between the
/// client connection's task and the driver's task several times (request, response head, each body frame), and
/// on two cores those cross-task wake-ups cost more than the proxying itself. Driving the worker connection
/// inside the client connection's task keeps one request on one task from accept to last byte, as nginx does.
pub(crate) struct UpConn {
    sender: Sender,
    driver: Pin<Box<Driver>>,
    /// The driver finished: the worker closed the connection or it broke.
    closed: bool,
}

impl std::fmt::Debug for UpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpConn")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl UpConn {
    /// Lets the driver do pending I/O (write the request, read the response into the body channel).
    pub(crate) fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    async fn ready(&mut self) -> Result<(), ()> {
        std::future::poll_fn(|cx| {
            self.poll_driver(cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => Poll::Ready(Err(())),
                Poll::Pending if self.closed => Poll::Ready(Err(())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ReqBody>>> {
        let UpConn {
            sender,
            driver,
            closed,
        } = self;
        let exchange = sender.try_send_request(req);
        let mut exchange = std::pin::pin!(exchange);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !*closed && driver.as_mut().poll(cx).is_ready() {
                *closed = true;
                // The dispatcher is gone: the exchange resolves (with an error) on its next poll.
                return exchange.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
    }
}

/// A connection ready to carry one request; `fresh` when it was just opened (so a failure is not staleness).
#[derive(Debug)]
pub(crate) struct Acquired {
    conn: UpConn,
    fresh: bool,
}

/// Idle connections to one worker address.
#[derive(Debug)]
pub(crate) struct HostPool {
    addr: SocketAddr,
    /// Idle connections per proxy thread (index = [`worker_index`]).
    idle: Vec<Mutex<Vec<UpConn>>>,
    /// Idle plain sockets of the fast path per proxy thread: between two responses, nothing is left to read.
    raw_idle: Vec<Mutex<Vec<TcpStream>>>,
    cfg: PoolConfig,
    /// Driver tasks of WebSocket upgrade connections (those are not pooled).
    tasks: TaskTracker,
}

/// The worker connection of a response in flight: driven by the response body, back to its pool at body end.
#[derive(Debug)]
pub(crate) struct Returner {
    conn: UpConn,
    pool: Arc<HostPool>,
}

impl Returner {
    pub(crate) fn poll_driver(&mut self, cx: &mut Context<'_>) {
        self.conn.poll_driver(cx);
    }

    pub(crate) fn give_back(self) {
        self.pool.put_back(self.conn);
    }
}

impl HostPool {
    pub(crate) fn new(addr: SocketAddr, cfg: PoolConfig) -> HostPool {
        HostPool {
            addr,
            idle: (0..cfg.shards.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            raw_idle: (0..cfg.shards.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            cfg,
            tasks: TaskTracker::new(),
        }
    }

    /// A ready connection: an idle pooled one, else a new one. Fails only if the worker cannot be reached.
    pub(crate) async fn acquire(&self) -> Result<Acquired, Fault> {
        while let Some(mut conn) = self.checkout() {
            // Returned at body end, the connection may need one more driver step to be ready again.
            if conn.ready().await.is_ok() {
                return Ok(Acquired { conn, fresh: false });
            }
        }
        let (sender, driver) = self.connect().await?;
        let mut conn = UpConn {
            sender,
            driver: Box::pin(driver),
            closed: false,
        };
        conn.ready().await.map_err(|()| Fault::UpstreamRefused)?;
        Ok(Acquired { conn, fresh: true })
    }

    /// Sends a request. A stale pooled connection (closed by the worker while idle) is detected by hyper handing
    /// the unsent request back; it is then retried on another connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        acquired: Acquired,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Returner), Fault> {
        let Acquired {
            mut conn,
            mut fresh,
        } = acquired;
        let mut req = req;
        loop {
            match conn.send(req).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Returner {
                            conn,
                            pool: Arc::clone(self),
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        let next = self.acquire().await?;
                        conn = next.conn;
                        fresh = next.fresh;
                    }
                    _ => return Err(classify(e.error())),
                },
            }
        }
    }

    /// A dedicated, unpooled connection for a WebSocket upgrade.
    pub(crate) async fn send_upgrade(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, Fault> {
        let (mut sender, driver) = self.connect().await?;
        // The upgraded connection outlives this request: its driver runs as its own (tracked) task.
        self.tasks.spawn(async move {
            let _ = driver.with_upgrades().await;
        });
        sender.ready().await.map_err(|_| Fault::UpstreamRefused)?;
        sender.send_request(req).await.map_err(|e| classify(&e))
    }

    fn shard(&self) -> &Mutex<Vec<UpConn>> {
        &self.idle[worker_index() % self.idle.len()]
    }

    fn checkout(&self) -> Option<UpConn> {
        let mut idle = self.shard().lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = idle.pop() {
            if !c.closed && !c.sender.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_back(&self, conn: UpConn) {
        if conn.closed || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.shard().lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.cfg.max_idle {
            idle.push(conn);
        }
    }

    /// An idle fast-path socket of this thread, most recently used first.
    pub(crate) fn checkout_raw(&self) -> Option<TcpStream> {
        self.raw_idle[worker_index() % self.raw_idle.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Returns a fast-path socket whose last response ended cleanly; past `max_idle` it is closed.
    pub(crate) fn put_back_raw(&self, stream: TcpStream) {
        let mut idle = self.raw_idle[worker_index() % self.raw_idle.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.cfg.max_idle {
            idle.push(stream);
        }
    }

    /// A new socket to the worker (`TCP_NODELAY` set).
    pub(crate) async fn connect_raw(&self) -> Result<TcpStream, Fault> {
        let stream = match tokio::time::timeout(
            self.cfg.connect_timeout,
            TcpStream::connect(self.addr),
        )
        .await
        {
            Err(_) => return Err(Fault::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::debug!(upstream = %self.addr, error = %e, "worker refused the connection");
                return Err(Fault::UpstreamRefused);
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<(Sender, Driver), Fault> {
        let stream = self.connect_raw().await?;
        http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Fault::UpstreamRefused)
    }
}

/// Whose fault a failed exchange with the worker is.
fn classify(e: &hyper::Error) -> Fault {
    use std::error::Error as _;
    if e.is_timeout() {
        return Fault::UpstreamTimeout;
    }
    // A client body over the limit surfaces as a body write error whose source is ours.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<super::body::BodyTooLarge>() {
            return Fault::BodyTooLarge;
        }
        source = s.source();
    }
    Fault::UpstreamBroken
}
