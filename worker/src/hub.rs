//! Connected clients and event fan-out. Unlike Clawdbot (every event to every client), an agent's events reach
//! only operator connections and connections scoped to that agent. Each client has an outbox whose queued bytes
//! are counted: droppable events are skipped once a quarter of the limit is queued; a non-droppable one closes the
//! socket (1008 "slow consumer") when over the limit while the socket has refused bytes for a while, or when far
//! over it. Bytes queued only because the writer has not had its turn yet are not a slow consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::agent_id::AgentId;
use crate::protocol::{self, MAX_BUFFERED_BYTES, close};

/// Something to write to one socket.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    Close(u16, String),
}

/// The sending side of one connection: frames are queued and written by the connection's writer task.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    buffered: Arc<AtomicUsize>,
    seq: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    /// When the writer's current socket write started (ms), 0 when it is not writing.
    send_started_ms: Arc<AtomicI64>,
    /// Cancelled by [`Outbox::close`]: a write still blocked [`CLOSE_GRACE`] later is given up.
    closing: tokio_util::sync::CancellationToken,
}

impl Outbox {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let o = Outbox {
            tx,
            buffered: Arc::new(AtomicUsize::new(0)),
            seq: Arc::new(AtomicU64::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            send_started_ms: Arc::new(AtomicI64::new(0)),
            closing: tokio_util::sync::CancellationToken::new(),
        };
        (o, rx)
    }

    /// Queues a response frame (never dropped).
    pub fn send_text(&self, text: String) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        self.buffered.fetch_add(text.len(), Ordering::Relaxed);
        let _ = self.tx.send(Outgoing::Text(text));
    }

    /// Queues an event with this connection's next `seq`, applying the slow-consumer rule.
    ///
    /// Droppable events (streamed deltas, ticks, presence, health) each carry the whole state so far, so the next
    /// one or the final supersedes any that is skipped. They are skipped from [`DROPPABLE_LIMIT`] on, well below
    /// the close limit: a run streaming faster than the writer drains (thousands of tokens in one network read,
    /// each with the cumulative text) must not push a reading client over the limit and get its final refused.
    ///
    /// A non-droppable event closes the socket when more than `maxBufferedBytes` is queued and the socket has
    /// refused bytes (a write pending) for [`STALL`], or when [`HARD_LIMIT`] is queued whatever the socket does.
    /// Queued bytes alone prove nothing: the writer shares the runtime with the run producing them.
    pub fn send_event(&self, name: &str, payload: &Value, droppable: bool) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let queued = self.buffered.load(Ordering::Relaxed);
        if droppable && queued > DROPPABLE_LIMIT {
            return;
        }
        if queued > HARD_LIMIT || (queued > MAX_BUFFERED_BYTES && self.stalled()) {
            self.close(close::POLICY, "slow consumer");
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.send_text(protocol::event(name, payload, seq));
    }

    /// Queues a close frame; nothing is queued after it. The reason is cut to the 123 bytes a close frame holds.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            let _ = self
                .tx
                .send(Outgoing::Close(code, truncate_reason(reason).to_string()));
            self.closing.cancel();
        }
    }

    /// Resolves [`CLOSE_GRACE`] after the outbox was closed: the writer stops waiting on a socket the peer does
    /// not read (its queue is freed and the connection ends) instead of holding it forever.
    pub async fn close_grace_over(&self) {
        self.closing.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    }

    /// Called by the writer before it writes a frame to the socket.
    pub fn writing(&self) {
        self.send_started_ms
            .store(crate::transcript::now_ms().max(1), Ordering::Relaxed);
    }

    /// Called by the writer once a frame of `n` bytes is on the wire.
    pub fn written(&self, n: usize) {
        self.send_started_ms.store(0, Ordering::Relaxed);
        self.buffered.fetch_sub(
            n.min(self.buffered.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    /// Whether the socket has refused bytes for at least [`STALL`] (the current write is still pending).
    fn stalled(&self) -> bool {
        let started = self.send_started_ms.load(Ordering::Relaxed);
        started > 0
            && crate::transcript::now_ms() - started
                >= i64::try_from(STALL.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.tx.is_closed()
    }
}

/// Queued bytes from which droppable events are skipped (a quarter of `maxBufferedBytes`).
pub const DROPPABLE_LIMIT: usize = MAX_BUFFERED_BYTES / 4;
/// Queued bytes that close the socket even while it still accepts bytes (a reader far slower than the stream).
pub const HARD_LIMIT: usize = MAX_BUFFERED_BYTES * 8;
/// How long a closed connection's writer keeps trying to deliver what is queued (the close frame included).
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a pending socket write makes a client over `maxBufferedBytes` a slow consumer.
pub const STALL: std::time::Duration = std::time::Duration::from_millis(500);

/// A close reason fits in 123 bytes (125-byte control frame minus the code); cut at a char boundary.
pub fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Who should receive an event.
#[derive(Clone, Debug)]
pub enum Audience {
    All,
    Operators,
    Agent(AgentId),
}

#[derive(Debug)]
struct Client {
    scope: Option<AgentId>,
    outbox: Outbox,
    presence: Value,
}

/// Registry of authenticated connections.
#[derive(Debug, Default)]
pub struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    presence_version: AtomicU64,
}

impl Hub {
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a connection and tells operators (`presence`). For a scoped one, `still_known` is asked under the
    /// registry's lock, so a reload that removes the agent (swap the config, then [`Hub::close_agent`]) either
    /// sees this connection or makes this call refuse it. Returns whether it was registered. `before_presence`
    /// runs once registered, before the presence event (the caller queues its hello there, to keep it first).
    pub fn register(
        &self,
        conn: u64,
        scope: Option<AgentId>,
        outbox: Outbox,
        presence: Value,
        still_known: impl FnOnce(&AgentId) -> bool,
        before_presence: impl FnOnce(),
    ) -> bool {
        {
            let mut clients = self.lock();
            if let Some(a) = &scope
                && !still_known(a)
            {
                return false;
            }
            clients.insert(
                conn,
                Client {
                    scope,
                    outbox,
                    presence,
                },
            );
        }
        before_presence();
        self.presence_version.fetch_add(1, Ordering::Relaxed);
        self.publish_presence();
        true
    }

    /// Closes every connection scoped to `agent` with `code` and `reason`; returns how many.
    pub fn close_agent(&self, agent: &AgentId, code: u16, reason: &str) -> usize {
        let clients = self.lock();
        let mut n = 0;
        for c in clients.values().filter(|c| c.scope.as_ref() == Some(agent)) {
            c.outbox.close(code, reason);
            n += 1;
        }
        n
    }

    pub fn unregister(&self, conn: u64) {
        if self.lock().remove(&conn).is_some() {
            self.presence_version.fetch_add(1, Ordering::Relaxed);
            self.publish_presence();
        }
    }

    /// Presence entries of operator connections (scoped ones are tenants and stay private).
    pub fn presence(&self) -> Vec<Value> {
        self.lock()
            .values()
            .filter(|c| c.scope.is_none())
            .map(|c| c.presence.clone())
            .collect()
    }

    pub fn presence_version(&self) -> u64 {
        self.presence_version.load(Ordering::Relaxed)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn publish_presence(&self) {
        let payload = serde_json::json!({"presence": self.presence()});
        self.publish("presence", &payload, &Audience::Operators, true);
    }

    /// Sends an event to every client in `audience`.
    pub fn publish(&self, event: &str, payload: &Value, audience: &Audience, droppable: bool) {
        let clients = self.lock();
        for c in clients.values() {
            let to = match (audience, &c.scope) {
                (Audience::All, _) => true,
                (Audience::Operators, scope) => scope.is_none(),
                (Audience::Agent(_), None) => true,
                (Audience::Agent(a), Some(s)) => a == s,
            };
            if to {
                c.outbox.send_event(event, payload, droppable);
            }
        }
    }

    /// Sends `shutdown` to everyone and closes every socket with 1012.
    pub fn shutdown_all(&self, reason: &str) {
        let payload = serde_json::json!({"reason": reason});
        for c in self.lock().values() {
            c.outbox.send_event("shutdown", &payload, false);
            c.outbox.close(close::RESTART, "service restart");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agent_events_reach_operators_and_that_agent_only() {
        let hub = Hub::default();
        let (op, mut op_rx) = Outbox::new();
        let (a, mut a_rx) = Outbox::new();
        let (b, mut b_rx) = Outbox::new();
        hub.register(1, None, op, json!({}), |_| true, || {});
        hub.register(
            2,
            Some(AgentId::parse("a").unwrap()),
            a,
            json!({}),
            |_| true,
            || {},
        );
        hub.register(
            3,
            Some(AgentId::parse("b").unwrap()),
            b,
            json!({}),
            |_| true,
            || {},
        );
        while op_rx.try_recv().is_ok() {}
        hub.publish(
            "chat",
            &json!({"x": 1}),
            &Audience::Agent(AgentId::parse("a").unwrap()),
            false,
        );
        assert!(matches!(op_rx.try_recv(), Ok(Outgoing::Text(t)) if t.contains("\"chat\"")));
        assert!(matches!(a_rx.try_recv(), Ok(Outgoing::Text(t)) if t.contains("\"chat\"")));
        assert!(
            b_rx.try_recv().is_err(),
            "agent b must not see agent a's event"
        );
    }

    #[test]
    fn close_agent_closes_only_that_agents_connections() {
        let hub = Hub::default();
        let (a, mut a_rx) = Outbox::new();
        let (b, mut b_rx) = Outbox::new();
        let b_id = AgentId::parse("b").unwrap();
        hub.register(
            1,
            Some(AgentId::parse("a").unwrap()),
            a,
            json!({}),
            |_| true,
            || {},
        );
        hub.register(2, Some(b_id.clone()), b, json!({}), |_| true, || {});
        assert_eq!(hub.close_agent(&b_id, 1008, "agent removed"), 1);
        assert!(matches!(b_rx.try_recv(), Ok(Outgoing::Close(1008, r)) if r == "agent removed"));
        assert!(a_rx.try_recv().is_err());
        let (c, _c_rx) = Outbox::new();
        assert!(!hub.register(3, Some(b_id), c, json!({}), |_| false, || {}));
        assert_eq!(hub.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_outbox_gives_up_on_its_socket_after_the_grace() {
        let (o, _rx) = Outbox::new();
        let early = tokio::time::timeout(CLOSE_GRACE, o.close_grace_over()).await;
        assert!(early.is_err(), "not closed: never over");
        o.close(1008, "slow consumer");
        assert!(
            tokio::time::timeout(CLOSE_GRACE / 2, o.close_grace_over())
                .await
                .is_err()
        );
        tokio::time::timeout(CLOSE_GRACE * 2, o.close_grace_over())
            .await
            .unwrap();
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate_reason("short"), "short");
        assert_eq!(truncate_reason(&"é".repeat(100)).len(), 122);
    }

    #[test]
    fn slow_consumer_drops_droppable_then_closes() {
        let (o, mut rx) = Outbox::new();
        o.send_text("x".repeat(DROPPABLE_LIMIT + 1));
        o.send_event("agent", &json!({}), true);
        o.send_event("chat", &json!({"state": "final"}), false);
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Text(_))));
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Text(t)) if t.contains("final")));
        // Over the limit but the socket takes bytes (the writer just has not run yet): queued.
        o.send_text("x".repeat(MAX_BUFFERED_BYTES));
        o.send_event("chat", &json!({"state": "final"}), false);
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Text(_))));
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Text(t)) if t.contains("final")));
        // Over the limit with a write pending for longer than STALL: closed.
        o.send_started_ms.store(
            crate::transcript::now_ms() - 2 * i64::try_from(STALL.as_millis()).unwrap(),
            Ordering::Relaxed,
        );
        o.send_event("chat", &json!({}), false);
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Close(1008, r)) if r == "slow consumer"));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn far_over_the_limit_closes_even_while_the_socket_takes_bytes() {
        let (o, mut rx) = Outbox::new();
        o.send_text("x".repeat(HARD_LIMIT + 1));
        o.send_event("chat", &json!({}), false);
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Text(_))));
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Close(1008, _))));
    }
}
