//! HTTP/1.1 wire format for the fast path (`fast.rs`): client request heads inspected (what the fast path can
//! take, or why it hands the connection to hyper) and rewritten for the worker, worker response heads rewritten for
//! the client, chunked framing tracked byte by byte, proxy-made answers serialised. Pure: no I/O, no allocation
//! beyond the caller's output buffer. The header rules are those of `forward.rs` (the hyper path), byte for byte.

use std::io::Write as _;

use super::body::ProxyBody;
use super::fault::Fault;

/// Most headers a head may carry (hyper's default too); more goes to the hyper path.
pub(crate) const MAX_HEADERS: usize = 100;

/// Most `Connection`-named headers the fast path strips itself; more goes to the hyper path.
const MAX_NAMED: usize = 8;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Why a request goes to the hyper path instead (it implements every case; the fast path only the common one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handover {
    /// Not HTTP/1.1, not origin-form, upgrade, `Expect`, unusual framing, too many headers.
    Unusual,
    /// No bearer token, or a token in the query or cookie (the browser login flow).
    Credential,
}

/// What the fast path needs from a client request head.
#[derive(Debug)]
pub(crate) struct ReqInfo<'b> {
    pub(crate) method: &'b str,
    pub(crate) path: &'b str,
    pub(crate) query: Option<&'b str>,
    /// The first `Host` value.
    pub(crate) host: Option<&'b str>,
    /// The token of `Authorization: Bearer <token>`.
    pub(crate) bearer: &'b str,
    pub(crate) framing: Framing,
    /// The client asked to close after this response.
    pub(crate) close: bool,
    /// The client prefers JSON errors (see `fault::wants_json`).
    pub(crate) json: bool,
    /// Safe to send twice: an idempotent method and no body.
    pub(crate) retryable: bool,
    /// Header names listed in `Connection` (hop-by-hop by declaration).
    named: [&'b str; MAX_NAMED],
    named_len: usize,
}

impl ReqInfo<'_> {
    fn is_named(&self, name: &str) -> bool {
        self.named[..self.named_len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Headers never forwarded in either direction (besides those named by `Connection`).
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-authenticate",
        "upgrade",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

/// `HeaderValue::to_str` succeeds (visible ASCII and tab): the hyper path ignores values where it fails.
fn visible(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Inspects a complete request head: what the fast path needs, or why hyper should take it.
pub(crate) fn inspect<'b>(req: &httparse::Request<'_, 'b>) -> Result<ReqInfo<'b>, Handover> {
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Err(Handover::Unusual);
    };
    if !target.starts_with('/') {
        return Err(Handover::Unusual);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if query.is_some_and(|q| q.contains("token")) {
        return Err(Handover::Credential);
    }
    let mut info = ReqInfo {
        method,
        path,
        query,
        host: None,
        bearer: "",
        framing: Framing::Empty,
        close: false,
        json: false,
        retryable: false,
        named: [""; MAX_NAMED],
        named_len: 0,
    };
    let mut authorization = None;
    let (mut length, mut chunked) = (None, false);
    for h in req.headers.iter() {
        let (name, value) = (h.name, h.value);
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            if info.host.is_none() {
                info.host = Some(visible(value).ok_or(Handover::Unusual)?);
            }
        } else if is("authorization") {
            if authorization.is_none() {
                authorization = Some(value);
            }
        } else if is("content-length") {
            let n = parse_length(value).ok_or(Handover::Unusual)?;
            if length.is_some_and(|l| l != n) {
                return Err(Handover::Unusual);
            }
            length = Some(n);
        } else if is("transfer-encoding") {
            if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Handover::Unusual);
            }
            chunked = true;
        } else if is("connection") {
            for token in visible(value).ok_or(Handover::Unusual)?.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    info.close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
                    if info.named_len == MAX_NAMED {
                        return Err(Handover::Unusual);
                    }
                    info.named[info.named_len] = token;
                    info.named_len += 1;
                }
            }
        } else if is("upgrade") || is("expect") {
            return Err(Handover::Unusual);
        } else if is("cookie") {
            if value.windows(13).any(|w| w == b"wirebot_token") {
                return Err(Handover::Credential);
            }
        } else if (is("accept") || is("content-type"))
            && visible(value).is_some_and(|v| v.contains("json"))
        {
            info.json = true;
        }
    }
    info.framing = match (length, chunked) {
        (Some(_), true) => return Err(Handover::Unusual),
        (Some(0) | None, false) => Framing::Empty,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    let bearer = authorization
        .and_then(visible)
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(Handover::Credential)?;
    info.bearer = bearer;
    info.retryable = info.framing == Framing::Empty
        && matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
    Ok(info)
}

/// What the proxy changes on the way to the worker.
#[derive(Debug)]
pub(crate) struct Rewrite<'a> {
    /// The path prefix to strip (without its trailing `/`), announced as `X-Forwarded-Prefix`.
    pub(crate) prefix: Option<&'a str>,
    /// The client's address for `X-Forwarded-For`.
    pub(crate) peer_ip: &'a [u8],
    /// Shared member: `Authorization` (the shared worker's internal token) and `x-wirebot-agent` values.
    pub(crate) shared: Option<(&'a [u8], &'a [u8])>,
}

/// Writes the worker's request head: hop-by-hop headers dropped, `X-Forwarded-*` set, the prefix stripped, a
/// shared member's token replaced and scoped, exactly as `forward::rewrite_request` does on the hyper path.
pub(crate) fn write_request_head(
    req: &httparse::Request<'_, '_>,
    info: &ReqInfo<'_>,
    rw: &Rewrite<'_>,
    out: &mut Vec<u8>,
) {
    let path = match rw.prefix {
        Some(p) if info.path.len() > p.len() => &info.path[p.len()..],
        Some(_) => "/",
        None => info.path,
    };
    out.extend_from_slice(info.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = info.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = None;
    let mut has_proto = false;
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is_hop_by_hop(name) || is("x-wirebot-agent") || info.is_named(name) {
            continue;
        }
        if is("x-forwarded-for") {
            forwarded_for.get_or_insert(h.value);
            continue;
        }
        if (is("x-forwarded-host") && info.host.is_some())
            || (is("x-forwarded-prefix") && rw.prefix.is_some())
            || (is("authorization") && rw.shared.is_some())
        {
            continue;
        }
        has_proto |= is("x-forwarded-proto");
        header(out, name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = forwarded_for.and_then(visible) {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(rw.peer_ip);
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if let Some(host) = info.host {
        header(out, b"x-forwarded-host", host.as_bytes());
    }
    if let Some((auth, agent)) = rw.shared {
        header(out, b"authorization", auth);
        header(out, b"x-wirebot-agent", agent);
    }
    if let Some(p) = rw.prefix {
        header(out, b"x-forwarded-prefix", p.as_bytes());
    }
    if info.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A worker's response head, as the fast path relays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RespInfo {
    pub(crate) status: u16,
    /// How the worker delimits the body.
    pub(crate) framing: Framing,
    /// The worker keeps the connection open after this response.
    pub(crate) keep_alive: bool,
}

/// The worker's answer is not HTTP the proxy can relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadResponse;

/// Inspects a complete response head; `head_request` for a `HEAD` request (no body whatever the headers say).
pub(crate) fn inspect_response(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<RespInfo, BadResponse> {
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse);
    };
    let mut keep_alive = version == 1;
    let (mut length, mut transfer) = (None, None);
    for h in resp.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("content-length") {
            let n = parse_length(h.value).ok_or(BadResponse)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse);
            }
            length = Some(n);
        } else if is("transfer-encoding") {
            transfer = Some(h.value);
        } else if is("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status)
    {
        Framing::Empty
    } else if let Some(te) = transfer {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(te).trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(RespInfo {
        status,
        framing,
        keep_alive: keep_alive && framing != Framing::UntilClose,
    })
}

/// Writes the client's response head: hop-by-hop headers dropped (as `forward::strip_hop_by_hop`), chunked framing
/// announced for chunked and close-delimited bodies, `connection: close` when the client asked for it.
pub(crate) fn write_response_head(
    resp: &httparse::Response<'_, '_>,
    info: &RespInfo,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, info.status, resp.reason);
    let mut named: [&[u8]; MAX_NAMED] = [b""; MAX_NAMED];
    let mut named_len = 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if !token.is_empty() && named_len < MAX_NAMED {
                    named[named_len] = token;
                    named_len += 1;
                }
            }
        }
    }
    for h in resp.headers.iter() {
        if is_hop_by_hop(h.name)
            || named[..named_len]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        header(out, h.name.as_bytes(), h.value);
    }
    if matches!(info.framing, Framing::Chunked | Framing::UntilClose) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_status(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    let mut digits = [0u8; 3];
    let mut s = status;
    for d in digits.iter_mut().rev() {
        // A digit: always < 10.
        *d = b'0' + u8::try_from(s % 10).unwrap_or(0);
        s /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b' ');
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    let reason = reason.filter(|r| !r.is_empty()).or(canonical).unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Serialises the proxy's own answer for `fault` (the same status, headers and body as on the hyper path).
pub(crate) fn write_fault(fault: &Fault, json: bool, close: bool, out: &mut Vec<u8>) {
    let resp = fault.response(json);
    let (parts, body) = resp.into_parts();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, parts.status.as_u16(), None);
    for (name, value) in &parts.headers {
        header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bytes = match &body {
        ProxyBody::Full(Some(b)) => &b[..],
        _ => &[],
    };
    let _ = write!(out, "content-length: {}\r\n", bytes.len());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
}

/// Writes a chunk header for `len` bytes of a close-delimited body re-framed as chunked.
pub(crate) fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// Tracks chunked framing over a byte stream that is passed through unchanged, to find where the message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Payload bytes seen so far (for the request body limit).
    pub(crate) data_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { value: u64, digits: u8 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked framing is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadChunk;

impl Chunked {
    pub(crate) fn new() -> Chunked {
        Chunked {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
            data_bytes: 0,
        }
    }

    /// The last chunk and the trailers have been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of `buf` that belong to this message; returns how many (less than `buf.len()` only at its end).
    pub(crate) fn feed(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                Done => return Ok(i),
                Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len() - i);
                    i += take;
                    self.data_bytes += take as u64;
                    let left = n - take as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return Err(BadChunk);
                        }
                        let d = (b as char).to_digit(16).map_or(0, u64::from);
                        Size {
                            value: value << 4 | d,
                            digits: digits + 1,
                        }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => Extension { value },
                    b'\r' if digits > 0 => SizeLf { value },
                    _ => return Err(BadChunk),
                },
                Extension { value } => match b {
                    b'\r' => SizeLf { value },
                    b'\n' => return Err(BadChunk),
                    _ => Extension { value },
                },
                SizeLf { value } => match b {
                    b'\n' if value == 0 => TrailerStart,
                    b'\n' => Data(value),
                    _ => return Err(BadChunk),
                },
                DataCr => match b {
                    b'\r' => DataLf,
                    _ => return Err(BadChunk),
                },
                DataLf => match b {
                    b'\n' => Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(BadChunk),
                },
                TrailerStart => match b {
                    b'\r' => EndLf,
                    _ => TrailerLine,
                },
                TrailerLine => match b {
                    b'\r' => TrailerLf,
                    _ => TrailerLine,
                },
                TrailerLf => match b {
                    b'\n' => TrailerStart,
                    _ => return Err(BadChunk),
                },
                EndLf => match b {
                    b'\n' => Done,
                    _ => return Err(BadChunk),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<(ReqInfo<'_>, String), Handover> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let status = req.parse(head.as_bytes()).unwrap();
        assert!(status.is_complete());
        let info = inspect(&req)?;
        let mut out = Vec::new();
        write_request_head(
            &req,
            &info,
            &Rewrite {
                prefix: Some("/u/alice"),
                peer_ip: b"10.0.0.9",
                shared: Some((b"Bearer internal", b"alice")),
            },
            &mut out,
        );
        Ok((info, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn request_head_is_rewritten_like_the_hyper_path() {
        let (info, out) = parse(
            "POST /u/alice/v1/chat?x=1 HTTP/1.1\r\nHost: edge:80\r\nAuthorization: Bearer tok\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Wirebot-Agent: bob\r\n\
             X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nX-Forwarded-Host: evil\r\n\
             Accept: application/json\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert_eq!(info.bearer, "tok");
        assert_eq!(info.framing, Framing::Length(3));
        assert!(info.json && !info.close && !info.retryable);
        assert_eq!(
            out,
            "POST /v1/chat?x=1 HTTP/1.1\r\nHost: edge:80\r\nAccept: application/json\r\n\
             Content-Length: 3\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: edge:80\r\nauthorization: Bearer internal\r\nx-wirebot-agent: alice\r\n\
             x-forwarded-prefix: /u/alice\r\n\r\n"
        );
    }

    #[test]
    fn bare_prefix_becomes_root_and_chunked_is_reannounced() {
        let (info, out) = parse(
            "GET /u/alice HTTP/1.1\r\nauthorization: bearer t\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\nx-forwarded-proto: https\r\n\r\n",
        )
        .unwrap();
        assert!(info.close);
        assert_eq!(info.framing, Framing::Chunked);
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nx-forwarded-proto: https\r\n"),
            "{out}"
        );
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        assert!(!out.contains("x-forwarded-proto: http\r\n"), "{out}");
    }

    #[test]
    fn unusual_requests_go_to_hyper() {
        let cases = [
            (
                "GET / HTTP/1.0\r\nAuthorization: Bearer t\r\n\r\n",
                Handover::Unusual,
            ),
            (
                "GET http://x/ HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n",
                Handover::Unusual,
            ),
            (
                "GET / HTTP/1.1\r\nAuthorization: Bearer t\r\nUpgrade: websocket\r\n\r\n",
                Handover::Unusual,
            ),
            (
                "POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nExpect: 100-continue\r\n\r\n",
                Handover::Unusual,
            ),
            (
                "POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Handover::Unusual,
            ),
            (
                "POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Handover::Unusual,
            ),
            (
                "POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
                Handover::Unusual,
            ),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", Handover::Credential),
            (
                "GET / HTTP/1.1\r\nAuthorization: Basic eA==\r\n\r\n",
                Handover::Credential,
            ),
            (
                "GET /?token=t HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n",
                Handover::Credential,
            ),
            (
                "GET / HTTP/1.1\r\nAuthorization: Bearer t\r\nCookie: a=b; wirebot_token=t\r\n\r\n",
                Handover::Credential,
            ),
        ];
        for (head, why) in cases {
            assert_eq!(parse(head).err(), Some(why), "{head}");
        }
    }

    fn response(head: &str, head_request: bool, close: bool) -> (RespInfo, String) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(head.as_bytes()).unwrap().is_complete());
        let info = inspect_response(&resp, head_request).unwrap();
        let mut out = Vec::new();
        write_response_head(&resp, &info, close, &mut out);
        (info, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_and_hop_by_hop() {
        let (info, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-a\r\nX-A: 1\r\nKeep-Alive: 5\r\n\r\n",
            false,
            false,
        );
        assert_eq!(info.framing, Framing::Length(2));
        assert!(info.keep_alive);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");

        let (info, out) = response(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            true,
        );
        assert_eq!(info.framing, Framing::Chunked);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );

        let (info, _) = response("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false, false);
        assert_eq!(info.framing, Framing::UntilClose);
        assert!(!info.keep_alive);

        let (info, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false);
        assert_eq!(info.framing, Framing::Empty);
        let (info, _) = response("HTTP/1.1 304 Not Modified\r\n\r\n", false, false);
        assert_eq!(info.framing, Framing::Empty);
        assert!(info.keep_alive);
    }

    #[test]
    fn chunked_framing_is_tracked_across_splits() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..end {
            let mut c = Chunked::new();
            let a = c.feed(&body[..split]).unwrap();
            assert_eq!(a, split);
            let b = c.feed(&body[split..]).unwrap();
            assert_eq!(split + b, end, "split at {split}");
            assert!(c.is_done());
            assert_eq!(c.data_bytes, 21);
        }
        assert_eq!(Chunked::new().feed(b"zz\r\n"), Err(BadChunk));
        assert_eq!(Chunked::new().feed(b"2\r\nabX"), Err(BadChunk));
        assert_eq!(Chunked::new().feed(b"ffffffffffffffff\r\n"), Err(BadChunk));
    }

    #[test]
    fn faults_serialise_with_their_headers_and_body() {
        let mut out = Vec::new();
        write_fault(&Fault::MalformedRequest, true, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("content-type: application/problem+json\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            text.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(
            body.contains("urn:wirebot:proxy:malformed-request"),
            "{body}"
        );
    }
}
