//! Per-member runtime state that outlives route-table swaps: activity clock, in-flight and WebSocket counts, rate limit.
//! Everything here is atomics: it is touched on every request.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process (monotonic; only differences mean anything).
pub(crate) fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Nanoseconds on the same clock as [`now_ms`], for the rate limiter.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Activity and limits of one member. Shared by every route version of that member.
#[derive(Debug, Default)]
pub(crate) struct MemberState {
    /// [`now_ms`] at the last request start or finish.
    last_activity_ms: AtomicU64,
    /// Requests whose response body is still streaming, plus open WebSockets.
    in_flight: AtomicU32,
    /// Open WebSockets only.
    open_ws: AtomicU32,
    /// GCRA theoretical arrival time, in [`now_ns`] units.
    tat_ns: AtomicU64,
    /// Set when the idle stopper asked for a stop; cleared by the next request.
    stop_requested: AtomicBool,
}

/// Why a member's request was refused before reaching the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over `per_member_rps` (token bucket empty).
    RateLimited,
    /// Over `per_member_max_connections`.
    TooManyConnections,
}

impl MemberState {
    pub(crate) fn new() -> MemberState {
        MemberState {
            last_activity_ms: AtomicU64::new(now_ms()),
            ..MemberState::default()
        }
    }

    /// Admits one request: checks the rate and the concurrency cap, counts it in flight and marks activity.
    /// The returned guard keeps it counted until dropped (at the end of the response body or WebSocket).
    pub(crate) fn admit(
        self: &Arc<Self>,
        rps: u32,
        burst: u32,
        max_conns: u32,
    ) -> Result<InFlight, Refusal> {
        if rps > 0 && !self.take_token(rps, burst) {
            return Err(Refusal::RateLimited);
        }
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= max_conns {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections);
        }
        self.touch();
        Ok(InFlight {
            member: Arc::clone(self),
            ws: false,
        })
    }

    /// GCRA: one compare-and-swap per request, no lock, no refill task.
    fn take_token(&self, rps: u32, burst: u32) -> bool {
        let interval = 1_000_000_000 / u64::from(rps.max(1));
        let tolerance = interval * u64::from(burst.max(1));
        let now = now_ns();
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let next = start + interval;
            if next - now > tolerance {
                return false;
            }
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        if self.stop_requested.load(Ordering::Relaxed) {
            self.stop_requested.store(false, Ordering::Relaxed);
        }
    }

    /// How long the member has been idle: `None` while a request or WebSocket is open.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(now_ms().saturating_sub(last)))
    }

    pub(crate) fn open_websockets(&self) -> u32 {
        self.open_ws.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks that a stop was requested; returns false if one already was (so the stopper asks once).
    pub(crate) fn mark_stop_requested(&self) -> bool {
        !self.stop_requested.swap(true, Ordering::AcqRel)
    }
}

/// One admitted request (or WebSocket) of a member; dropping it ends the in-flight count and marks activity.
#[derive(Debug)]
pub(crate) struct InFlight {
    member: Arc<MemberState>,
    ws: bool,
}

impl InFlight {
    /// Turns this request into an open WebSocket (counted separately for the idle API).
    pub(crate) fn into_websocket(mut self) -> InFlight {
        self.member.open_ws.fetch_add(1, Ordering::AcqRel);
        self.ws = true;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.ws {
            self.member.open_ws.fetch_sub(1, Ordering::AcqRel);
        }
        self.member.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.member.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let m = Arc::new(MemberState::new());
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(m.admit(1, 5, 100).unwrap());
        }
        assert_eq!(m.admit(1, 5, 100).unwrap_err(), Refusal::RateLimited);
    }

    #[test]
    fn concurrency_cap_counts_in_flight_and_releases_on_drop() {
        let m = Arc::new(MemberState::new());
        let a = m.admit(0, 0, 2).unwrap();
        let b = m.admit(0, 0, 2).unwrap().into_websocket();
        assert_eq!(m.admit(0, 0, 2).unwrap_err(), Refusal::TooManyConnections);
        assert_eq!(m.open_websockets(), 1);
        assert!(m.idle_for().is_none());
        drop(a);
        drop(b);
        assert_eq!(m.open_websockets(), 0);
        assert_eq!(m.in_flight(), 0);
        assert!(m.idle_for().is_some());
        m.admit(0, 0, 2).unwrap();
    }
}
