//! One WebSocket connection: challenge, `connect` handshake (strict params, token or device auth, optional agent
//! scope), hello-ok, then the request loop. A writer task owns the socket's sending half and the outbox queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::agent_id::AgentId;
use crate::device_auth::{self, SignedFields};
use crate::hub::{Outbox, Outgoing};
use crate::methods::{self, Conn, Reply};
use crate::protocol::{self, ConnectParams, ConnectRefusal, ErrorShape, close};
use crate::state::Gateway;

/// What the HTTP upgrade told us about the peer.
#[derive(Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    /// `x-wirebot-agent` from the upgrade request (set only by the supervisor's proxy).
    pub scope: Option<String>,
}

/// Serves one upgraded socket until either side closes or the gateway shuts down.
pub async fn serve(gw: Arc<Gateway>, socket: WebSocket, peer: Peer) {
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut rx) = Outbox::new();
    let done = CancellationToken::new();
    let writer = {
        let done = done.clone();
        let outbox = outbox.clone();
        gw.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = done.cancelled() => None,
                    m = rx.recv() => m,
                };
                match next {
                    Some(Outgoing::Text(t)) => {
                        let n = t.len();
                        outbox.writing();
                        let sent = tokio::select! {
                            r = sink.send(Message::Text(t.into())) => r.is_ok(),
                            _ = outbox.close_grace_over() => false,
                        };
                        if !sent {
                            break;
                        }
                        outbox.written(n);
                    }
                    Some(Outgoing::Close(code, reason)) => {
                        let frame = Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }));
                        tokio::select! {
                            _ = sink.send(frame) => {}
                            _ = outbox.close_grace_over() => {}
                        }
                        break;
                    }
                    None => break,
                }
            }
            done.cancel();
        })
    };

    let nonce = uuid::Uuid::new_v4().to_string();
    outbox.send_text(
        json!({"type": "event", "event": "connect.challenge", "payload": {"nonce": nonce, "ts": Gateway::now_ms()}}).to_string(),
    );
    let conn_id = gw.hub.next_conn_id();
    let conn = tokio::select! {
        c = handshake(&gw, &mut stream, &outbox, &peer, &nonce, conn_id) => c,
        _ = done.cancelled() => None,
        _ = gw.shutdown.cancelled() => None,
    };
    if let Some(conn) = conn {
        request_loop(&gw, &mut stream, &conn, &done).await;
        gw.hub.unregister(conn.id);
    }
    // Let the writer flush what is queued (a close frame included), then stop it.
    outbox.close(close::NORMAL, "");
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    done.cancel();
}

type Stream = futures_util::stream::SplitStream<WebSocket>;

fn refuse(outbox: &Outbox, id: Option<&str>, r: ConnectRefusal) -> Option<Conn> {
    if let Some(id) = id {
        outbox.send_text(protocol::res_err(id, &r.error));
    }
    outbox.close(r.close_code, &r.error.message);
    None
}

async fn handshake(
    gw: &Arc<Gateway>,
    stream: &mut Stream,
    outbox: &Outbox,
    peer: &Peer,
    nonce: &str,
    conn_id: u64,
) -> Option<Conn> {
    let first = tokio::time::timeout(
        Duration::from_millis(protocol::HANDSHAKE_TIMEOUT_MS),
        next_text(stream),
    )
    .await;
    let text = match first {
        Err(_) => return refuse(outbox, None, ConnectRefusal::policy("handshake timeout")),
        Ok(Inbound::Closed) => return None,
        Ok(Inbound::TooBig) => {
            outbox.close(close::TOO_BIG, "max payload exceeded");
            return None;
        }
        Ok(Inbound::Binary) => {
            return refuse(
                outbox,
                None,
                ConnectRefusal::policy("invalid handshake: binary frames are not accepted"),
            );
        }
        Ok(Inbound::Text(t)) => t,
    };
    // As Clawdbot: a frame that is not a valid request gets no response, just the close (1008).
    let Ok(frame) = protocol::parse_request(&text) else {
        return refuse(
            outbox,
            None,
            ConnectRefusal::policy("invalid request frame"),
        );
    };
    if frame.method != "connect" {
        return refuse(
            outbox,
            Some(&frame.id),
            ConnectRefusal::policy("invalid handshake: first request must be connect"),
        );
    }
    let params = match protocol::parse_connect(frame.params) {
        Ok(p) => p,
        Err(r) => return refuse(outbox, Some(&frame.id), r),
    };
    let scope = match peer.scope.as_deref().map(AgentId::parse) {
        None => None,
        Some(Ok(a)) if gw.agent(&a).is_some() => Some(a),
        Some(_) => {
            return refuse(
                outbox,
                Some(&frame.id),
                ConnectRefusal::policy("unauthorized: unknown agent in x-wirebot-agent"),
            );
        }
    };
    let device_token = match authenticate(gw, &params, peer, nonce) {
        Ok(t) => t,
        Err(msg) => return refuse(outbox, Some(&frame.id), ConnectRefusal::policy(msg)),
    };
    let role = params.role.clone().unwrap_or_else(|| "operator".into());
    let scopes = match &params.scopes {
        Some(s) if !s.is_empty() => s.clone(),
        _ if role == "operator" => vec!["operator.admin".to_string()],
        _ => Vec::new(),
    };
    let conn = Conn {
        id: conn_id,
        scope: scope.clone(),
        role,
        scopes,
        outbox: outbox.clone(),
    };
    let presence = json!({"host": params.client.display_name.clone().unwrap_or_else(|| params.client.id.clone()),
        "ip": peer.remote.ip().to_string(), "version": params.client.version, "platform": params.client.platform,
        "deviceFamily": params.client.device_family, "mode": params.client.mode, "instanceId": params.client.instance_id,
        "reason": "connect", "ts": Gateway::now_ms()});
    let hello = hello_ok(gw, &conn, conn_id, device_token);
    // A reload that removed the agent since the check above refuses the connect here (see `Hub::register`).
    let registered = gw.hub.register(
        conn_id,
        scope,
        outbox.clone(),
        presence,
        |a| gw.cfg().agent(a).is_some(),
        || outbox.send_text(protocol::res_ok(&frame.id, hello)),
    );
    if !registered {
        return refuse(
            outbox,
            Some(&frame.id),
            ConnectRefusal::policy("unauthorized: unknown agent in x-wirebot-agent"),
        );
    }
    tracing::debug!(conn = conn_id, client = %params.client.id, agent = ?conn.scope, "client connected");
    Some(conn)
}

/// Token/password or device auth. Returns the device token to hand out, if a device identity verified.
fn authenticate(
    gw: &Gateway,
    p: &ConnectParams,
    peer: &Peer,
    nonce: &str,
) -> Result<Option<String>, String> {
    let auth = p.auth.as_ref();
    let token = auth.and_then(|a| a.token.as_deref());
    let password = auth.and_then(|a| a.password.as_deref());
    let role = p.role.as_deref().unwrap_or("operator");
    let Some(device) = &p.device else {
        if token.is_none() && password.is_none() {
            return Err("unauthorized: gateway token missing (set gateway.remote.token to match gateway.auth.token)".into());
        }
        if !gw.token_ok(token, password) {
            return Err("unauthorized: gateway token mismatch (set gateway.remote.token to match gateway.auth.token)".into());
        }
        return Ok(None);
    };
    let scopes = p.scopes.clone().unwrap_or_default();
    let fields = SignedFields {
        client_id: &p.client.id,
        client_mode: &p.client.mode,
        role,
        scopes: &scopes,
        token: token.unwrap_or(""),
        challenge_nonce: nonce,
        loopback: peer.remote.ip().is_loopback(),
        now_ms: Gateway::now_ms(),
    };
    device_auth::verify(device, &fields)?;
    let issued = device_auth::device_token(&gw.device_secret(), &device.id, role);
    let device_token_ok =
        token.is_some_and(|t| crate::secret::Secret::new(issued.clone()).matches(t));
    if !gw.token_ok(token, password) && !device_token_ok {
        return Err("unauthorized: gateway token mismatch (set gateway.remote.token to match gateway.auth.token)".into());
    }
    Ok(Some(issued))
}

fn hello_ok(gw: &Gateway, conn: &Conn, conn_id: u64, device_token: Option<String>) -> Value {
    let cfg = gw.cfg();
    let default = conn.scope.as_ref().unwrap_or(&cfg.default_agent);
    let main_key = &cfg.session.main_key;
    let presence = if conn.scope.is_none() {
        gw.hub.presence()
    } else {
        Vec::new()
    };
    let mut hello = json!({
        "type": "hello-ok", "protocol": protocol::PROTOCOL_VERSION,
        "server": {"version": "dev", "commit": concat!("wirebot-worker-", env!("CARGO_PKG_VERSION")), "host": gw.host,
            "connId": format!("{conn_id:x}-{}", uuid::Uuid::new_v4().simple())},
        "features": {"methods": methods::ADVERTISED, "events": protocol::EVENTS},
        "snapshot": {"presence": presence, "health": gw.health(conn.scope.as_ref()),
            "stateVersion": {"presence": gw.hub.presence_version(), "health": 0},
            "uptimeMs": u64::try_from(gw.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "configPath": cfg.path, "stateDir": cfg.state_dir,
            "sessionDefaults": {"defaultAgentId": default, "mainKey": main_key, "mainSessionKey": format!("agent:{default}:{main_key}"),
                "scope": if cfg.session.global { "global" } else { "per-sender" }}},
        "policy": {"maxPayload": protocol::MAX_PAYLOAD, "maxBufferedBytes": protocol::MAX_BUFFERED_BYTES,
            "tickIntervalMs": protocol::TICK_INTERVAL_MS}
    });
    if let Some(t) = device_token {
        hello["auth"] = json!({"deviceToken": t, "role": conn.role, "scopes": conn.scopes});
    }
    hello
}

async fn request_loop(
    gw: &Arc<Gateway>,
    stream: &mut Stream,
    conn: &Conn,
    done: &CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            i = next_text(stream) => i,
            _ = done.cancelled() => return,
        };
        let text = match inbound {
            Inbound::Closed => return,
            Inbound::TooBig => {
                conn.outbox.close(close::TOO_BIG, "max payload exceeded");
                return;
            }
            Inbound::Binary => {
                conn.outbox.send_text(protocol::res_err(
                    "invalid",
                    &ErrorShape::invalid("invalid request frame: binary frames are not accepted"),
                ));
                continue;
            }
            Inbound::Text(t) => t,
        };
        let frame = match protocol::parse_request(&text) {
            Ok(f) => f,
            Err((id, e)) => {
                conn.outbox
                    .send_text(protocol::res_err(id.as_deref().unwrap_or("invalid"), &e));
                continue;
            }
        };
        if frame.method == "connect" {
            conn.outbox.send_text(protocol::res_err(
                &frame.id,
                &ErrorShape::invalid("connect is only valid as the first request"),
            ));
            continue;
        }
        if frame.method == "agent.wait" {
            // The only method that waits: run it beside the loop so other requests keep flowing.
            let (gw, conn) = (Arc::clone(gw), conn.clone());
            gw.clone().tasks.spawn(async move {
                let reply =
                    methods::dispatch(&gw, &conn, &frame.id, &frame.method, frame.params).await;
                send_reply(&conn, &frame.id, reply);
            });
            continue;
        }
        let reply = methods::dispatch(gw, conn, &frame.id, &frame.method, frame.params).await;
        send_reply(conn, &frame.id, reply);
    }
}

fn send_reply(conn: &Conn, id: &str, reply: Reply) {
    match reply {
        Reply::Ok(v) => conn.outbox.send_text(protocol::res_ok(id, v)),
        Reply::Err(e) => conn.outbox.send_text(protocol::res_err(id, &e)),
        Reply::Sent => {}
    }
}

enum Inbound {
    Text(String),
    Binary,
    TooBig,
    Closed,
}

async fn next_text(stream: &mut Stream) -> Inbound {
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Inbound::Closed,
            Some(Ok(Message::Text(t))) => return Inbound::Text(t.to_string()),
            Some(Ok(Message::Binary(_))) => return Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(e)) => {
                let m = e.to_string();
                return if m.contains("too long") || m.contains("Space limit") {
                    Inbound::TooBig
                } else {
                    Inbound::Closed
                };
            }
        }
    }
}
