//! Keep-alive connection pools to workers: one `HostPool` per upstream address holding idle HTTP/1.1
//! `SendRequest` handles. A handle goes back to its pool when the response body ends (no task per request).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
}

impl From<&super::ProxyConfig> for PoolConfig {
    fn from(cfg: &super::ProxyConfig) -> PoolConfig {
        PoolConfig {
            connect_timeout: cfg.connect_timeout(),
            max_idle: cfg.max_idle_per_upstream,
        }
    }
}

type Sender = http1::SendRequest<ReqBody>;

/// A connection ready to carry one request; `fresh` when it was just opened (so a failure is not staleness).
#[derive(Debug)]
pub(crate) struct Acquired {
    sender: Sender,
    fresh: bool,
}

/// Idle connections to one worker address.
#[derive(Debug)]
pub(crate) struct HostPool {
    addr: SocketAddr,
    idle: Mutex<Vec<Sender>>,
    cfg: PoolConfig,
    /// Connection driver tasks; they end when their `SendRequest` is dropped or the worker closes.
    tasks: TaskTracker,
}

/// Puts a connection back into its pool once the response body has ended.
#[derive(Debug)]
pub(crate) struct Returner {
    sender: Sender,
    pool: Arc<HostPool>,
}

impl Returner {
    pub(crate) fn give_back(self) {
        self.pool.put_back(self.sender);
    }
}

impl HostPool {
    pub(crate) fn new(addr: SocketAddr, cfg: PoolConfig) -> HostPool {
        HostPool {
            addr,
            idle: Mutex::new(Vec::new()),
            cfg,
            tasks: TaskTracker::new(),
        }
    }

    /// A ready connection: an idle pooled one, else a new one. Fails only if the worker cannot be reached.
    pub(crate) async fn acquire(&self) -> Result<Acquired, Fault> {
        while let Some(mut sender) = self.checkout() {
            // Returned at body end, the connection may need a moment to become ready again.
            if sender.ready().await.is_ok() {
                return Ok(Acquired {
                    sender,
                    fresh: false,
                });
            }
        }
        let mut sender = self.connect(false).await?;
        sender.ready().await.map_err(|_| Fault::UpstreamRefused)?;
        Ok(Acquired {
            sender,
            fresh: true,
        })
    }

    /// Sends a request. A stale pooled connection (closed by the worker while idle) is detected by hyper handing
    /// the unsent request back; it is then retried on another connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        acquired: Acquired,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Returner), Fault> {
        let Acquired {
            mut sender,
            mut fresh,
        } = acquired;
        let mut req = req;
        loop {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Returner {
                            sender,
                            pool: Arc::clone(self),
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        let next = self.acquire().await?;
                        sender = next.sender;
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
        let mut sender = self.connect(true).await?;
        sender.ready().await.map_err(|_| Fault::UpstreamRefused)?;
        sender.send_request(req).await.map_err(|e| classify(&e))
    }

    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.cfg.max_idle {
            idle.push(sender);
        }
    }

    async fn connect(&self, upgrades: bool) -> Result<Sender, Fault> {
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Fault::UpstreamRefused)?;
        if upgrades {
            self.tasks.spawn(async move {
                let _ = conn.with_upgrades().await;
            });
        } else {
            self.tasks.spawn(async move {
                let _ = conn.await;
            });
        }
        Ok(sender)
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
