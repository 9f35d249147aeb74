//! The fast path: every client connection starts here. Plain HTTP/1.1 requests carrying a bearer token for a
//! running worker are proxied on this connection's task with httparse on both sides, over pooled plain sockets,
//! bodies relayed by their framing as they arrive (never buffered). Anything else (upgrade, `Expect`, the
//! `?token=`/cookie browser flow, a worker to wake, a refused connection, HTTP/1.0, an error the hyper path
//! answers) hands the connection to the hyper path (`forward.rs`) with the bytes already read replayed in front.
//!
//! Why not hyper for everything: its server and client cost ~11 µs of CPU per proxied request here against ~4 µs
//! for this loop; the hyper path stays the reference for every rule (`h1.rs` mirrors its header rewriting).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::server::conn::http1;
use provisioning::Tier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout_at};
use tokio_util::sync::CancellationToken;

use super::fault::Fault;
use super::forward::{ConnInfo, Proxy, normalize_host};
use super::h1::{self, Chunked, Framing, Handover, MAX_HEADERS, RespInfo, Rewrite};
use super::member::{InFlight, Refusal};
use super::pool::HostPool;
use super::rewind::Rewind;
use super::route::{PathMatch, Route, TokenHash, Upstream};

/// First allocation of a read buffer (grown up to `max_header_bytes` for a long head).
const INITIAL_BUF: usize = 8 * 1024;
/// How long a closing connection keeps reading (and dropping) what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
/// Largest worker response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Serves one client connection until it closes, handing it to the hyper path when a request needs it.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut conn = Conn {
        shutdown,
        proxy: &proxy,
        info: ConnInfo::new(peer),
        client: stream,
        cin: Buf::default(),
        up: Buf::default(),
        out: Vec::new(),
        head_timer: Deadline::new(),
        response_timer: Deadline::new(),
    };
    if let End::Handover = conn.run().await {
        let Conn {
            info, client, cin, ..
        } = conn;
        let pre = Bytes::copy_from_slice(cin.filled());
        super::listener::serve_hyper(
            Arc::clone(&proxy),
            builder,
            Rewind::new(pre, client),
            Arc::new(info),
        )
        .await;
    }
}

/// How the fast path leaves a connection.
enum End {
    Closed,
    Handover,
}

/// What to do after one exchange.
enum Next {
    KeepAlive,
    Close,
    Handover,
}

/// A request the fast path takes: its head is already rewritten into `Conn::out`.
struct Plan {
    head_len: usize,
    framing: Framing,
    close: bool,
    json: bool,
    retryable: bool,
    head_request: bool,
    tier: Tier,
    pool: Arc<HostPool>,
    _in_flight: InFlight,
}

/// What the bytes read so far hold.
enum Prepared {
    /// The head is not complete yet.
    Partial,
    Fault(Fault),
    Handover,
    Ready(Plan),
}

struct Conn<'p> {
    proxy: &'p Proxy,
    /// The accept loop's node of the proxy's shutdown token.
    shutdown: CancellationToken,
    info: ConnInfo,
    client: TcpStream,
    /// Bytes read from the client and not yet forwarded (the next request's start when pipelined).
    cin: Buf,
    /// Bytes read from the worker.
    up: Buf,
    /// The head (and first body bytes) about to be written.
    out: Vec<u8>,
    /// The client's header-read timeout.
    head_timer: Deadline,
    /// The worker's response-head timeout.
    response_timer: Deadline,
}

/// The read timed out.
struct TimedOut;

/// One re-armable timer per connection and purpose. Re-arming a registered timer to a later deadline updates it in
/// place (one atomic store); a fresh `timeout_at` per read would register a new timer each time, and whenever that is
/// the runtime's earliest, tokio wakes its own driver: an eventfd write plus one more epoll round per read.
struct Deadline(Pin<Box<Sleep>>);

impl Deadline {
    fn new() -> Deadline {
        Deadline(Box::pin(tokio::time::sleep_until(Instant::now())))
    }

    /// `fut`, unless `at` passes first.
    async fn run<F: Future>(&mut self, at: Instant, fut: F) -> Result<F::Output, TimedOut> {
        self.0.as_mut().reset(at);
        tokio::select! {
            biased;
            out = fut => Ok(out),
            () = self.0.as_mut() => Err(TimedOut),
        }
    }
}

impl Conn<'_> {
    async fn run(&mut self) -> End {
        loop {
            let plan = match self.next_request().await {
                Ok(plan) => plan,
                Err(end) => return end,
            };
            match self.exchange(plan).await {
                Next::KeepAlive => {}
                Next::Close => {
                    self.close().await;
                    return End::Closed;
                }
                Next::Handover => return End::Handover,
            }
        }
    }

    /// Closes after a final response: our side first, then whatever the client still sends is read and dropped
    /// for a moment, so unread bytes (a refused body, the rest of a long head) do not turn the close into a reset
    /// that could destroy the response before the client reads it.
    async fn close(&mut self) {
        if self.client.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let _ = timeout_at(Instant::now() + LINGER, async {
            while let Ok(n) = self.client.read(&mut sink).await
                && n > 0
            {}
        })
        .await;
    }

    /// Reads until a complete request head is buffered and prepares it; `Err` ends the fast path.
    async fn next_request(&mut self) -> Result<Plan, End> {
        let proxy = self.proxy;
        let cfg = &proxy.cfg;
        let deadline = Instant::now() + cfg.header_timeout();
        loop {
            if !self.cin.filled().is_empty() {
                let started = std::time::Instant::now();
                match prepare(proxy, &self.info, self.cin.filled(), &mut self.out) {
                    Prepared::Ready(plan) => return Ok(plan),
                    Prepared::Handover => return Err(End::Handover),
                    Prepared::Fault(f) => {
                        self.answer(&f, None, true, started).await;
                        self.close().await;
                        return Err(End::Closed);
                    }
                    Prepared::Partial if self.cin.filled().len() >= cfg.max_header_bytes => {
                        self.answer(&Fault::HeadTooLarge, None, true, started).await;
                        self.close().await;
                        return Err(End::Closed);
                    }
                    Prepared::Partial => {}
                }
            }
            let idle = self.cin.filled().is_empty();
            let limit = cfg.max_header_bytes;
            let read = if idle {
                // Between requests: a shutdown closes the connection (the next request goes elsewhere).
                tokio::select! {
                    r = self.head_timer.run(deadline, self.cin.fill(&mut self.client, limit)) => r,
                    _ = self.shutdown.cancelled() => return Err(End::Closed),
                }
            } else {
                self.head_timer
                    .run(deadline, self.cin.fill(&mut self.client, limit))
                    .await
            };
            match read {
                // The header timeout (slowloris), the client closing (after a half-close too), or a reset.
                Err(_) | Ok(Ok(0) | Err(_)) => return Err(End::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Forwards one request and relays its response.
    async fn exchange(&mut self, plan: Plan) -> Next {
        let started = std::time::Instant::now();
        let fail = |f: Fault| (f, Some(plan.tier), plan.json);

        // 1. A worker connection: an idle pooled one still open, else a new one. Refused: the worker may have been
        //    stopped under us, and waking it is the hyper path's job (nothing has been consumed yet).
        let (mut up, mut reused) = match self.worker_conn(&plan.pool).await {
            Ok(c) => c,
            Err(Fault::UpstreamRefused) => return Next::Handover,
            Err(f) => return self.fail(fail(f), started).await,
        };

        // 2. The head and the body, by its framing; a body is relayed as it arrives.
        let sent = match plan.framing {
            Framing::Empty => up.write_all(&self.out).await,
            Framing::Length(n) => {
                self.cin.consume(plan.head_len);
                self.send_length_body(&mut up, n).await
            }
            Framing::Chunked | Framing::UntilClose => {
                self.cin.consume(plan.head_len);
                match self.send_chunked_body(&mut up).await {
                    Ok(r) => r,
                    Err(f) => return self.fail(fail(f), started).await,
                }
            }
        };
        if let Err(e) = sent {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // The client went away mid-body.
                return Next::Close;
            }
            // A stale pooled connection is retried (idempotent, no body); anything else is the worker's fault.
            match self
                .retry_or_fail(&plan, &mut up, &mut reused, started)
                .await
            {
                Next::KeepAlive => {}
                other => return other,
            }
        }

        // 3. The response head (interim 1xx skipped), within the response timeout.
        let deadline = Instant::now() + self.proxy.cfg.response_timeout();
        self.up.clear();
        let resp = loop {
            if !self.up.filled().is_empty() {
                self.out.clear();
                match response_head(
                    self.up.filled(),
                    plan.head_request,
                    plan.close,
                    &mut self.out,
                ) {
                    Ok(Some((n, info))) if (100..200).contains(&info.status) => {
                        self.up.consume(n);
                        continue;
                    }
                    Ok(Some((n, info))) => {
                        self.up.consume(n);
                        break info;
                    }
                    Ok(None) if self.up.filled().len() < MAX_RESPONSE_HEAD => {}
                    Ok(None) | Err(_) => {
                        return self.fail(fail(Fault::UpstreamBroken), started).await;
                    }
                }
            }
            match self
                .response_timer
                .run(deadline, self.up.fill(&mut up, MAX_RESPONSE_HEAD))
                .await
            {
                Err(_) => return self.fail(fail(Fault::UpstreamTimeout), started).await,
                Ok(Ok(0) | Err(_)) if self.up.filled().is_empty() && reused && plan.retryable => {
                    match self
                        .retry_or_fail(&plan, &mut up, &mut reused, started)
                        .await
                    {
                        Next::KeepAlive => {}
                        other => return other,
                    }
                }
                Ok(Ok(0) | Err(_)) => {
                    return self.fail(fail(Fault::UpstreamBroken), started).await;
                }
                Ok(Ok(_)) => {}
            }
        };
        if plan.framing == Framing::Empty {
            self.cin.consume(plan.head_len);
        }
        self.proxy
            .metrics
            .request(Some(plan.tier).into(), resp.status, started.elapsed());

        // 4. The body back to the client, as it arrives; the worker connection returns to the pool if it ended cleanly.
        match self.relay_response(&mut up, &resp).await {
            Ok(true) => plan.pool.put_back_raw(up),
            Ok(false) => {}
            Err(_) => return Next::Close,
        }
        if plan.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// An idle pooled connection the worker has not closed, else a new one; `true` when pooled.
    async fn worker_conn(&mut self, pool: &HostPool) -> Result<(TcpStream, bool), Fault> {
        while let Some(s) = pool.checkout_raw() {
            // Readiness on an idle connection means the worker closed it (or sent junk): either way, not usable.
            // `try_read` answers from the reactor's readiness without a syscall when nothing happened.
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((s, true)),
                _ => continue,
            }
        }
        Ok((pool.connect_raw().await?, false))
    }

    /// A pooled connection failed before any response byte: an idempotent request without a body is sent once more
    /// on a new connection (`KeepAlive` = sent, go on reading). Refused: the hyper path takes the request (the head is
    /// still in `cin`, since such a request consumes it only once answered).
    async fn retry_or_fail(
        &mut self,
        plan: &Plan,
        up: &mut TcpStream,
        reused: &mut bool,
        started: std::time::Instant,
    ) -> Next {
        let f = |f: Fault| (f, Some(plan.tier), plan.json);
        if !(*reused && plan.retryable) {
            return self.fail(f(Fault::UpstreamBroken), started).await;
        }
        *reused = false;
        match plan.pool.connect_raw().await {
            Ok(s) => *up = s,
            Err(Fault::UpstreamRefused) => return Next::Handover,
            Err(e) => return self.fail(f(e), started).await,
        }
        // `out` still holds the head: nothing else was written for a request without a body.
        if up.write_all(&self.out).await.is_err() {
            return self.fail(f(Fault::UpstreamBroken), started).await;
        }
        Next::KeepAlive
    }

    /// Writes the head and a `Content-Length` body; `UnexpectedEof` if the client stops sending it.
    async fn send_length_body(&mut self, up: &mut TcpStream, mut left: u64) -> io::Result<()> {
        let now = take(self.cin.filled().len(), left);
        self.out.extend_from_slice(&self.cin.filled()[..now]);
        self.cin.consume(now);
        left -= now as u64;
        up.write_all(&self.out).await?;
        while left > 0 {
            if self.cin.fill(&mut self.client, INITIAL_BUF).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let now = take(self.cin.filled().len(), left);
            up.write_all(&self.cin.filled()[..now]).await?;
            self.cin.consume(now);
            left -= now as u64;
        }
        Ok(())
    }

    /// Writes the head and a chunked body (passed through unchanged), cut off past `max_body_bytes`.
    async fn send_chunked_body(&mut self, up: &mut TcpStream) -> Result<io::Result<()>, Fault> {
        let limit = self.proxy.cfg.max_body_bytes;
        let mut chunks = Chunked::new();
        let now = chunks
            .feed(self.cin.filled())
            .map_err(|_| Fault::MalformedRequest)?;
        if chunks.data_bytes > limit {
            return Err(Fault::BodyTooLarge);
        }
        self.out.extend_from_slice(&self.cin.filled()[..now]);
        self.cin.consume(now);
        if let Err(e) = up.write_all(&self.out).await {
            return Ok(Err(e));
        }
        while !chunks.is_done() {
            match self.cin.fill(&mut self.client, INITIAL_BUF).await {
                Ok(0) => return Ok(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
            let now = chunks
                .feed(self.cin.filled())
                .map_err(|_| Fault::MalformedRequest)?;
            if chunks.data_bytes > limit {
                return Err(Fault::BodyTooLarge);
            }
            if let Err(e) = up.write_all(&self.cin.filled()[..now]).await {
                return Ok(Err(e));
            }
            self.cin.consume(now);
        }
        Ok(Ok(()))
    }

    /// Streams the response body (`out` holds the head); `Ok(true)` when the worker connection can be reused.
    async fn relay_response(&mut self, up: &mut TcpStream, resp: &RespInfo) -> io::Result<bool> {
        let client = &mut self.client;
        match resp.framing {
            Framing::Empty => {
                client.write_all(&self.out).await?;
                Ok(resp.keep_alive && self.up.filled().is_empty())
            }
            Framing::Length(n) => {
                let mut left = n;
                let now = take(self.up.filled().len(), left);
                self.out.extend_from_slice(&self.up.filled()[..now]);
                self.up.consume(now);
                left -= now as u64;
                client.write_all(&self.out).await?;
                while left > 0 {
                    if self.up.fill(up, INITIAL_BUF).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let now = take(self.up.filled().len(), left);
                    client.write_all(&self.up.filled()[..now]).await?;
                    self.up.consume(now);
                    left -= now as u64;
                }
                Ok(resp.keep_alive && self.up.filled().is_empty())
            }
            Framing::Chunked => {
                let mut chunks = Chunked::new();
                let bad = |_| io::Error::from(io::ErrorKind::InvalidData);
                let now = chunks.feed(self.up.filled()).map_err(bad)?;
                self.out.extend_from_slice(&self.up.filled()[..now]);
                self.up.consume(now);
                client.write_all(&self.out).await?;
                while !chunks.is_done() {
                    if self.up.fill(up, INITIAL_BUF).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let now = chunks.feed(self.up.filled()).map_err(bad)?;
                    client.write_all(&self.up.filled()[..now]).await?;
                    self.up.consume(now);
                }
                Ok(resp.keep_alive && self.up.filled().is_empty())
            }
            Framing::UntilClose => {
                // Re-framed as chunked, so the client connection survives the worker's close.
                loop {
                    let data = self.up.filled();
                    if !data.is_empty() {
                        h1::write_chunk_size(&mut self.out, data.len());
                        self.out.extend_from_slice(data);
                        self.out.extend_from_slice(b"\r\n");
                        self.up.clear();
                    }
                    if !self.out.is_empty() {
                        client.write_all(&self.out).await?;
                        self.out.clear();
                    }
                    if self.up.fill(up, INITIAL_BUF).await? == 0 {
                        client.write_all(b"0\r\n\r\n").await?;
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Answers a request with the proxy's own response (then the connection closes).
    async fn fail(
        &mut self,
        (fault, tier, json): (Fault, Option<Tier>, bool),
        started: std::time::Instant,
    ) -> Next {
        self.answer(&fault, tier, json, started).await;
        Next::Close
    }

    async fn answer(
        &mut self,
        fault: &Fault,
        tier: Option<Tier>,
        json: bool,
        started: std::time::Instant,
    ) {
        tracing::debug!(fault = ?fault, peer = %self.info.peer, "request answered by the proxy");
        self.out.clear();
        h1::write_fault(fault, json, true, &mut self.out);
        self.proxy
            .metrics
            .request(tier.into(), fault.status().as_u16(), started.elapsed());
        let _ = self.client.write_all(&self.out).await;
    }
}

fn take(available: usize, left: u64) -> usize {
    usize::try_from(left).map_or(available, |l| l.min(available))
}

/// Parses the buffered bytes as a request head and, if the fast path takes it, routes, authenticates, admits it
/// and writes the worker's head into `out`. Synchronous: the parsed head borrows the buffer.
fn prepare(proxy: &Proxy, conn: &ConnInfo, buf: &[u8], out: &mut Vec<u8>) -> Prepared {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Prepared::Partial,
        Err(httparse::Error::TooManyHeaders) => return Prepared::Handover,
        Err(_) => return Prepared::Fault(Fault::MalformedRequest),
    };
    let info = match h1::inspect(&req) {
        Ok(info) => info,
        Err(Handover::Unusual | Handover::Credential) => return Prepared::Handover,
    };

    // Route and token, as `forward::forward` does; every refusal is left to the hyper path to answer.
    let table = proxy.table.load();
    let host = info.host.map(normalize_host);
    let presented = TokenHash::of(info.bearer);
    let (route, prefix): (&Arc<Route>, Option<&str>) =
        match table.match_host_path(host.as_deref(), info.path) {
            PathMatch::Bound { route, prefix } if presented.ct_eq(route.token_hash()) => {
                (route, prefix)
            }
            PathMatch::Unbound => match table.by_token(&presented) {
                Some(route) => (route, None),
                None => return Prepared::Handover,
            },
            PathMatch::Bound { .. } | PathMatch::AddSlash => return Prepared::Handover,
        };
    let Upstream::Running(pool) = &route.upstream else {
        return Prepared::Handover;
    };
    let cfg = &proxy.cfg;
    if let Framing::Length(n) = info.framing
        && n > cfg.max_body_bytes
    {
        return Prepared::Handover;
    }
    let in_flight = match route.member.admit(
        cfg.per_member_rps,
        cfg.per_member_burst,
        cfg.per_member_max_connections,
    ) {
        Ok(g) => g,
        Err(Refusal::RateLimited | Refusal::TooManyConnections) => return Prepared::Handover,
    };

    out.clear();
    let shared = match (&route.internal_auth_header, &route.agent_header) {
        (Some(auth), Some(agent)) => Some((auth.as_bytes(), agent.as_bytes())),
        _ => None,
    };
    h1::write_request_head(
        &req,
        &info,
        &Rewrite {
            prefix,
            peer_ip: conn.peer_ip.as_bytes(),
            shared,
        },
        out,
    );
    Prepared::Ready(Plan {
        head_len,
        framing: info.framing,
        close: info.close,
        json: info.json,
        retryable: info.retryable,
        head_request: info.method == "HEAD",
        tier: route.tier,
        pool: Arc::clone(pool),
        _in_flight: in_flight,
    })
}

/// Parses a worker response head; on success writes the client's head into `out`. `None`: not complete yet.
fn response_head(
    buf: &[u8],
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, RespInfo)>, h1::BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(h1::BadResponse),
    };
    let info = h1::inspect_response(&resp, head_request)?;
    if info.status == 101 {
        // Never asked for: an upgrade goes through the hyper path.
        return Err(h1::BadResponse);
    }
    if !(100..200).contains(&info.status) {
        h1::write_response_head(&resp, &info, close, out);
    }
    Ok(Some((n, info)))
}

/// A read buffer: `data[start..end]` is filled and not yet consumed. Allocated on first use, so idle
/// connections cost no buffer.
#[derive(Debug, Default)]
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads once from `s` after the filled bytes, growing the buffer up to `max` (at least [`INITIAL_BUF`]);
    /// `Ok(0)` at end of stream. The caller checks the filled length against its own limit.
    async fn fill(&mut self, s: &mut TcpStream, max: usize) -> io::Result<usize> {
        if self.data.is_empty() {
            // Wait for data before allocating: an idle connection holds no buffer.
            s.readable().await?;
            self.data = vec![0; INITIAL_BUF];
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() {
            let grown = (self.data.len() * 2).min(max.max(INITIAL_BUF) + INITIAL_BUF);
            if grown <= self.data.len() {
                return Err(io::ErrorKind::OutOfMemory.into());
            }
            self.data.resize(grown, 0);
        }
        let n = s.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}
