//! One proxied request: route lookup, member authentication, limits, wake, header rewriting, forwarding and the
//! response back. Fault → status mapping lives in `fault.rs`; WebSocket relaying in `websocket.rs`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, HOST, HeaderName, HeaderValue, LOCATION,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SEC_WEBSOCKET_EXTENSIONS, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use provisioning::Tier;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ProxyConfig;
use super::body::{ProxyBody, ReqBody};
use super::fault::{Fault, wants_json};
use super::member::Refusal;
use super::metrics::ProxyMetrics;
use super::pool::HostPool;
use super::route::{PathMatch, Route, RouteTableHandle, TokenHash, Upstream};
use super::wake::{WakeRequest, wake};
use super::websocket;

/// Name of the cookie that carries a browser's member token after it opened `…/?token=<token>` once.
pub const TOKEN_COOKIE: &str = "wirebot_token";

static X_WIREBOT_AGENT: HeaderName = HeaderName::from_static("x-wirebot-agent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) table: Arc<RouteTableHandle>,
    pub(crate) cfg: ProxyConfig,
    pub(crate) wake_tx: Option<mpsc::Sender<WakeRequest>>,
    pub(crate) metrics: Arc<ProxyMetrics>,
    /// WebSocket relay tasks.
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// Per client connection facts, computed once per TCP connection rather than per request.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub(crate) peer_ip: HeaderValue,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr) -> ConnInfo {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo { peer, peer_ip }
    }
}

/// Where the member token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredSource {
    Bearer,
    Query,
    Cookie,
}

/// The hyper service: never fails, every failure is a response saying whose fault it is.
pub(crate) async fn handle(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let json = wants_json(req.headers());
    let (tier, resp) = match forward(proxy, conn, req).await {
        Ok(ok) => ok,
        Err((tier, fault)) => {
            tracing::debug!(fault = ?fault, peer = %conn.peer, "request answered by the proxy");
            (tier, fault.response(json))
        }
    };
    proxy
        .metrics
        .request(tier.into(), resp.status().as_u16(), started.elapsed());
    Ok(resp)
}

type Outcome = Result<(Option<Tier>, Response<ProxyBody>), (Option<Tier>, Fault)>;

async fn forward(proxy: &Proxy, conn: &ConnInfo, mut req: Request<Incoming>) -> Outcome {
    // 1. Find the route and authenticate the member.
    let cred = credential(req.headers(), req.uri());
    let (route, prefix, cred_source, bound) = {
        let table = proxy.table.load();
        let host = host_of(&req);
        match table.match_host_path(host.as_deref(), req.uri().path()) {
            PathMatch::Bound { route, prefix } => {
                let Some((source, token)) = &cred else {
                    return Err((Some(route.tier), Fault::MissingToken));
                };
                if !TokenHash::of(token).ct_eq(route.token_hash()) {
                    return Err((Some(route.tier), Fault::WrongToken));
                }
                (Arc::clone(route), prefix.map(str::to_owned), *source, true)
            }
            PathMatch::AddSlash => return Ok((None, add_slash_redirect(req.uri()))),
            PathMatch::Unbound => {
                let Some((source, token)) = &cred else {
                    return Err((None, Fault::NoRoute));
                };
                match table.by_token(&TokenHash::of(token)) {
                    Some(route) => (Arc::clone(route), None, *source, false),
                    None => return Err((None, Fault::UnknownToken)),
                }
            }
        }
    };
    let cookie_token = match (&cred, cred_source) {
        (Some((_, token)), CredSource::Query) => Some(token.clone().into_owned()),
        _ => None,
    };
    drop(cred);
    let tier = Some(route.tier);
    let fail = |f: Fault| (tier, f);

    // 2. Member limits.
    let cfg = &proxy.cfg;
    let in_flight = route
        .member
        .admit(
            cfg.per_member_rps,
            cfg.per_member_burst,
            cfg.per_member_max_connections,
        )
        .map_err(|r| {
            fail(match r {
                Refusal::RateLimited => Fault::RateLimited,
                Refusal::TooManyConnections => Fault::TooManyConnections,
            })
        })?;
    if req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        > Some(cfg.max_body_bytes)
    {
        return Err(fail(Fault::BodyTooLarge));
    }

    // 3. The worker: running, or woken (dedicated) while the request waits.
    let mut pool = upstream_pool(proxy, &route).await.map_err(fail)?;

    // 4. Rewrite the request for the worker.
    let is_upgrade = is_websocket_upgrade(req.headers());
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    rewrite_request(&mut parts, &route, prefix.as_deref(), conn, is_upgrade);
    let req = Request::from_parts(parts, ReqBody::new(body, cfg.max_body_bytes));

    if let Some(client_upgrade) = client_upgrade {
        let resp = websocket::forward(proxy, &pool, req, client_upgrade, &route, in_flight)
            .await
            .map_err(fail)?;
        return Ok((tier, resp));
    }

    // 5. Send it on a pooled connection; a dedicated worker that refuses was stopped under us: wake it once.
    let mut sender = pool.acquire().await;
    if matches!(sender, Err(Fault::UpstreamRefused))
        && route.tier == Tier::Dedicated
        && proxy.wake_tx.is_some()
    {
        let addr = wake(
            proxy.wake_tx.as_ref(),
            &route.user_id,
            cfg.start_timeout(),
            &proxy.metrics,
        )
        .await
        .map_err(fail)?;
        pool = proxy.table.pool_for(addr);
        sender = pool.acquire().await;
    }
    let sender = sender.map_err(fail)?;
    let (resp, returner) =
        match tokio::time::timeout(cfg.response_timeout(), pool.send(sender, req)).await {
            Ok(r) => r.map_err(fail)?,
            Err(_) => return Err(fail(Fault::UpstreamTimeout)),
        };

    // 6. Stream the response back; the connection returns to the pool when its body ends.
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if let Some(token) = cookie_token
        && bound
    {
        set_token_cookie(&mut parts.headers, &token, prefix.as_deref());
    }
    Ok((
        tier,
        Response::from_parts(
            parts,
            ProxyBody::upstream(body, Some(returner), Some(in_flight)),
        ),
    ))
}

async fn upstream_pool(proxy: &Proxy, route: &Route) -> Result<Arc<HostPool>, Fault> {
    match &route.upstream {
        Upstream::Running(pool) => Ok(Arc::clone(pool)),
        Upstream::Stopped | Upstream::Starting if route.tier == Tier::Dedicated => {
            let addr = wake(
                proxy.wake_tx.as_ref(),
                &route.user_id,
                proxy.cfg.start_timeout(),
                &proxy.metrics,
            )
            .await?;
            Ok(proxy.table.pool_for(addr))
        }
        Upstream::Stopped | Upstream::Starting => Err(Fault::Starting {
            reason: "the shared worker is starting".to_owned(),
        }),
        Upstream::Quarantined(reason) => Err(Fault::Quarantined {
            reason: reason.to_string(),
        }),
    }
}

/// The member token: `Authorization: Bearer`, else `?token=`, else the `wirebot_token` cookie.
fn credential<'r>(headers: &'r HeaderMap, uri: &'r Uri) -> Option<(CredSource, Cow<'r, str>)> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some((CredSource::Bearer, Cow::Borrowed(token.trim())));
    }
    if let Some(q) = uri.query()
        && let Some(token) = query_param(q, "token")
    {
        return Some((CredSource::Query, token));
    }
    for v in headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == TOKEN_COOKIE
            {
                return Some((CredSource::Cookie, Cow::Borrowed(value)));
            }
        }
    }
    None
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The request's host, lowercase and without port.
fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
        Some(h) => h,
        None => req.uri().host()?,
    };
    Some(normalize_host(raw))
}

/// A `Host` value as the route table keys it: lowercase, without port.
pub(crate) fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some((h, _)) if h.ends_with(']') => h,
        _ => raw,
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers (and any header named by `Connection`). For an upgrade, `Connection: upgrade`
/// and `Upgrade` are what makes the hop, so they are kept.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| {
                let t = t.trim();
                if t.is_empty()
                    || t.eq_ignore_ascii_case("close")
                    || t.eq_ignore_ascii_case("keep-alive")
                {
                    return None;
                }
                if keep_upgrade && t.eq_ignore_ascii_case("upgrade") {
                    return None;
                }
                HeaderName::from_bytes(t.as_bytes()).ok()
            })
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    for name in [
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        PROXY_AUTHORIZATION,
        PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
}

fn rewrite_request(
    parts: &mut http::request::Parts,
    route: &Route,
    prefix: Option<&str>,
    conn: &ConnInfo,
    is_upgrade: bool,
) {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, is_upgrade);
    // Any client-sent agent scope is dropped (all occurrences, any case: header names are case-insensitive).
    headers.remove(&X_WIREBOT_AGENT);

    // X-Forwarded-*: append our peer to a chain the tunnel started; keep the tunnel's proto.
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.peer.ip()))
            .unwrap_or(conn.peer_ip.clone()),
        None => conn.peer_ip.clone(),
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(&X_FORWARDED_HOST, host);
    }

    let mut strip_token_query = false;
    if let (Some(agent), Some(auth)) = (&route.agent_header, &route.internal_auth_header) {
        // Shared worker: the member token never reaches it; the internal token and the agent scope do.
        headers.insert(AUTHORIZATION, auth.clone());
        headers.insert(&X_WIREBOT_AGENT, agent.clone());
        strip_token_cookie(headers);
        if is_upgrade {
            // The proxy rewrites the first WS frame, which needs uncompressed frames.
            headers.remove(SEC_WEBSOCKET_EXTENSIONS);
        }
        strip_token_query = true;
    }

    // Origin-form URI for the worker, with the path prefix stripped and announced.
    let path = parts.uri.path();
    let query = parts.uri.query();
    let needs_rewrite = prefix.is_some()
        || strip_token_query && query.is_some_and(|q| q.contains("token="))
        || parts.uri.scheme().is_some();
    if needs_rewrite {
        let new_path = match prefix {
            Some(p) => &path[p.len()..],
            None => path,
        };
        let mut pq = String::with_capacity(path.len() + query.map_or(0, str::len) + 1);
        pq.push_str(if new_path.is_empty() { "/" } else { new_path });
        let kept_query: Option<Cow<'_, str>> = match query {
            Some(q) if strip_token_query => {
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|p| !p.starts_with("token=") && *p != "token")
                    .collect();
                (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
            }
            Some(q) => Some(Cow::Borrowed(q)),
            None => None,
        };
        if let Some(q) = kept_query {
            pq.push('?');
            pq.push_str(&q);
        }
        if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
            parts.uri = uri;
        }
        if let Some(p) = prefix
            && let Ok(v) = HeaderValue::from_str(p)
        {
            parts.headers.insert(&X_FORWARDED_PREFIX, v);
        }
    }
    parts.version = http::Version::HTTP_11;
}

/// Removes the `wirebot_token` cookie, keeping the others.
fn strip_token_cookie(headers: &mut HeaderMap) {
    let Some(v) = headers.get(COOKIE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !v.contains(TOKEN_COOKIE) {
        return;
    }
    let kept: Vec<&str> = v
        .split(';')
        .map(str::trim)
        .filter(|p| !p.starts_with(&format!("{TOKEN_COOKIE}=")))
        .collect();
    if kept.is_empty() {
        headers.remove(COOKIE);
    } else if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
        headers.insert(COOKIE, v);
    }
}

/// A browser that opened `/u/<id>/?token=…` gets the token as an HttpOnly cookie scoped to that prefix, so the
/// page's assets and its WebSocket reach the same worker without the token in every URL.
fn set_token_cookie(headers: &mut HeaderMap, token: &str, prefix: Option<&str>) {
    let path = prefix.unwrap_or("");
    let cookie = format!("{TOKEN_COOKIE}={token}; Path={path}/; HttpOnly; SameSite=Lax");
    if let Ok(mut v) = HeaderValue::from_str(&cookie) {
        v.set_sensitive(true);
        headers.append(SET_COOKIE, v);
    }
}

fn add_slash_redirect(uri: &Uri) -> Response<ProxyBody> {
    let location = match uri.query() {
        Some(q) => format!("{}/?{q}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_sources_in_order() {
        let uri: Uri = "/x?a=1&token=q%2Dtok".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=b; wirebot_token=c-tok"));
        assert_eq!(
            credential(&h, &uri).unwrap(),
            (CredSource::Query, Cow::Borrowed("q-tok"))
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer b-tok"));
        assert_eq!(
            credential(&h, &uri).unwrap(),
            (CredSource::Bearer, Cow::Borrowed("b-tok"))
        );
        h.remove(AUTHORIZATION);
        let plain: Uri = "/x".parse().unwrap();
        assert_eq!(
            credential(&h, &plain).unwrap(),
            (CredSource::Cookie, Cow::Borrowed("c-tok"))
        );
        assert_eq!(credential(&HeaderMap::new(), &plain), None);
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn host_without_port_and_lowercased() {
        let req = Request::builder()
            .uri("/")
            .header(HOST, "Alice.Example:8080")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("alice.example"));
        let req = Request::builder()
            .uri("/")
            .header(HOST, "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("[::1]"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
