//! WebSocket pass-through: forwards the upgrade on its own worker connection, then relays bytes both ways with an
//! idle timeout. For shared members the first client frame (the Clawdbot `connect` request) gets its
//! `params.auth.token` replaced by the shared worker's internal token; dedicated members' bytes pass untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use provisioning::{Secret, UserId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{ProxyBody, ReqBody};
use super::fault::Fault;
use super::forward::{Proxy, strip_hop_by_hop};
use super::member::{InFlight, now_ms};
use super::pool::HostPool;
use super::route::{Route, RouteAuth};

/// Largest first frame the proxy parses (Clawdbot's own limit is 512 KiB).
const MAX_FIRST_FRAME: u64 = 512 * 1024;

/// Forwards an upgrade request; on 101 spawns the relay and answers the client's upgrade.
pub(crate) async fn forward(
    proxy: &Proxy,
    pool: &HostPool,
    req: Request<ReqBody>,
    client_upgrade: OnUpgrade,
    route: &Arc<Route>,
    in_flight: InFlight,
) -> Result<Response<ProxyBody>, Fault> {
    let mut resp =
        match tokio::time::timeout(proxy.cfg.response_timeout(), pool.send_upgrade(req)).await {
            Ok(r) => r?,
            Err(_) => return Err(Fault::UpstreamTimeout),
        };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The worker declined the upgrade (e.g. 401): pass its answer through.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        return Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, None, Some(in_flight)),
        ));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let rewrite = match &route.auth {
        RouteAuth::Shared { internal_token, .. } => Some(internal_token.clone()),
        RouteAuth::Dedicated { .. } => None,
    };
    let relay = Relay {
        user_id: route.user_id.clone(),
        idle: proxy.cfg.ws_idle_timeout(),
        rewrite,
        in_flight: in_flight.into_websocket(),
    };
    let metrics = Arc::clone(&proxy.metrics);
    let shutdown = proxy.shutdown.clone();
    proxy.tasks.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(user_id = %relay.user_id, error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        metrics.websocket_opened();
        let user_id = relay.user_id.clone();
        tokio::select! {
            r = relay.run(TokioIo::new(client), TokioIo::new(upstream)) => {
                if let Err(e) = r {
                    tracing::debug!(user_id = %user_id, error = %e, "WebSocket relay ended with an error");
                }
            }
            _ = shutdown.cancelled() => {}
        }
        metrics.websocket_closed();
    });
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// One relayed WebSocket.
#[derive(Debug)]
struct Relay {
    user_id: UserId,
    idle: Duration,
    rewrite: Option<Secret>,
    /// Counted as an open WebSocket of the member until the relay ends.
    in_flight: InFlight,
}

impl Relay {
    async fn run<C, U>(self, client: C, upstream: U) -> std::io::Result<()>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let last = AtomicU64::new(now_ms());
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        let client_to_worker = async {
            if let Some(token) = &self.rewrite {
                rewrite_first_frame(&mut cr, &mut uw, token).await?;
                last.store(now_ms(), Ordering::Relaxed);
            }
            pump(&mut cr, &mut uw, &last).await
        };
        let worker_to_client = pump(&mut ur, &mut cw, &last);
        let idle_ms = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        let watchdog = async {
            loop {
                tokio::time::sleep((self.idle / 4).max(Duration::from_millis(50))).await;
                if now_ms().saturating_sub(last.load(Ordering::Relaxed)) >= idle_ms {
                    tracing::debug!(user_id = %self.user_id, "closing idle WebSocket");
                    return;
                }
            }
        };
        let result = tokio::select! {
            r = client_to_worker => r,
            r = worker_to_client => r,
            () = watchdog => Ok(()),
        };
        drop(self.in_flight);
        result
    }
}

/// Copies until EOF, stamping activity; on EOF shuts the other side's write half.
async fn pump<R, W>(r: &mut R, w: &mut W, last: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        last.store(now_ms(), Ordering::Relaxed);
    }
}

/// Reads the client's first frame; if it is a masked, unfragmented text frame holding a Clawdbot `connect`
/// request, replaces `params.auth.token` with `token` and re-frames it (same mask key). Anything else is forwarded
/// unchanged (the worker rejects a first frame that is not `connect`).
async fn rewrite_first_frame<R, W>(r: &mut R, w: &mut W, token: &Secret) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut raw = head.to_vec();
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            raw.extend_from_slice(&b);
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            raw.extend_from_slice(&b);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > MAX_FIRST_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "first WebSocket frame too large",
        ));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
        raw.extend_from_slice(&mask);
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    r.read_exact(&mut payload).await?;
    if fin && opcode == 0x1 && masked && head[0] & 0x70 == 0 {
        apply_mask(&mut payload, mask);
        if let Some(rewritten) = rewrite_connect(&payload, token) {
            let frame = encode_masked_text(&rewritten, mask);
            return w.write_all(&frame).await;
        }
        apply_mask(&mut payload, mask);
    }
    raw.extend_from_slice(&payload);
    w.write_all(&raw).await
}

fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The connect request with `params.auth.token` set to `token`; `None` if `text` is not a connect request.
fn rewrite_connect(text: &[u8], token: &Secret) -> Option<Vec<u8>> {
    let mut frame: serde_json::Value = serde_json::from_slice(text).ok()?;
    if frame.get("type")?.as_str()? != "req" || frame.get("method")?.as_str()? != "connect" {
        return None;
    }
    let params = frame.get_mut("params")?.as_object_mut()?;
    let auth = params
        .entry("auth")
        .or_insert_with(|| serde_json::json!({}));
    let auth = auth.as_object_mut()?;
    auth.insert(
        "token".to_owned(),
        serde_json::Value::String(token.expose().to_owned()),
    );
    serde_json::to_vec(&frame).ok()
}

fn encode_masked_text(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x81);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | u8::try_from(len).unwrap_or(0));
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_frame_token_is_replaced_and_reframed() {
        let mask = [1, 2, 3, 4];
        let connect = br#"{"type":"req","id":"c1","method":"connect","params":{"minProtocol":3,"auth":{"token":"member"}}}"#;
        let mut input = encode_masked_text(connect, mask);
        input.extend_from_slice(b"rest");
        let mut reader = &input[..];
        let mut out = Vec::new();
        rewrite_first_frame(&mut reader, &mut out, &Secret::from("internal".to_owned()))
            .await
            .unwrap();
        assert_eq!(reader, b"rest", "only the first frame is consumed");
        assert_eq!(out[0], 0x81);
        let len = usize::from(out[1] & 0x7f);
        let mut payload = out[6..6 + len].to_vec();
        apply_mask(&mut payload, [out[2], out[3], out[4], out[5]]);
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["params"]["auth"]["token"], "internal");
        assert_eq!(v["params"]["minProtocol"], 3);
    }

    #[tokio::test]
    async fn other_first_frames_pass_unchanged() {
        let frame = encode_masked_text(
            br#"{"type":"req","id":"1","method":"health"}"#,
            [9, 9, 9, 9],
        );
        let mut reader = &frame[..];
        let mut out = Vec::new();
        rewrite_first_frame(&mut reader, &mut out, &Secret::from("internal".to_owned()))
            .await
            .unwrap();
        assert_eq!(out, frame);
        // A long (16-bit length) frame round-trips too.
        let big = encode_masked_text(&vec![b'x'; 300], [5, 6, 7, 8]);
        let mut reader = &big[..];
        let mut out = Vec::new();
        rewrite_first_frame(&mut reader, &mut out, &Secret::from("internal".to_owned()))
            .await
            .unwrap();
        assert_eq!(out, big);
    }
}
