//! Lifecycle timing policy, and the two pure pieces of restart logic: exponential back-off and the crash window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Timeouts and restart limits (from config; [`Policy::default`] is the documented standard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A new worker must be ready within this.
    pub start_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    /// Consecutive failed health checks that count as a crash.
    pub health_failures: u32,
    /// First restart delay; doubles per crash up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Running healthy this long resets the back-off to `backoff_base`.
    pub backoff_reset_after: Duration,
    /// `crash_limit` crashes within `crash_window` ⇒ Quarantined.
    pub crash_window: Duration,
    pub crash_limit: u32,
    /// SIGTERM → this grace → SIGKILL of the whole cgroup.
    pub stop_grace: Duration,
    /// Rotate `<id>.log` past this size, keeping `log_keep` old files.
    pub log_max_bytes: u64,
    pub log_keep: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            start_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            health_failures: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            crash_window: Duration::from_secs(300),
            crash_limit: 5,
            stop_grace: Duration::from_secs(10),
            log_max_bytes: 10 << 20,
            log_keep: 3,
        }
    }
}

/// Restart delay: base, doubling per crash to max; back to base after a healthy run of `reset_after`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new(policy: &Policy) -> Backoff {
        Backoff {
            next: policy.backoff_base,
        }
    }

    /// The delay before the restart that follows a crash after running healthy for `healthy_for`.
    pub fn on_crash(&mut self, policy: &Policy, healthy_for: Duration) -> Duration {
        if healthy_for >= policy.backoff_reset_after {
            self.next = policy.backoff_base;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(policy.backoff_max);
        delay
    }
}

/// Crash times inside the sliding window.
#[derive(Debug, Clone, Default)]
pub struct CrashWindow {
    crashes: VecDeque<Instant>,
}

impl CrashWindow {
    /// Records a crash at `now`; returns how many crashes fall inside the window ending now.
    pub fn record(&mut self, policy: &Policy, now: Instant) -> u32 {
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.crash_window)
        {
            self.crashes.pop_front();
        }
        u32::try_from(self.crashes.len()).unwrap_or(u32::MAX)
    }

    pub fn clear(&mut self) {
        self.crashes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() {
        let p = Policy::default();
        let mut b = Backoff::new(&p);
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..9)
            .map(|_| u64::try_from(b.on_crash(&p, short).as_millis()).unwrap())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(
            b.on_crash(&p, Duration::from_secs(60)),
            Duration::from_millis(500)
        );
        assert_eq!(b.on_crash(&p, short), Duration::from_millis(1000));
    }

    #[test]
    fn five_crashes_in_five_minutes_fill_the_window() {
        let p = Policy::default();
        let mut w = CrashWindow::default();
        let t0 = Instant::now();
        let counts: Vec<u32> = (0..5)
            .map(|i| w.record(&p, t0 + Duration::from_secs(60 * i)))
            .collect();
        assert_eq!(counts, [1, 2, 3, 4, 5]);
        // The first crash leaves the window once it is more than 5 minutes old.
        assert_eq!(w.record(&p, t0 + Duration::from_secs(301)), 5);
        assert_eq!(w.record(&p, t0 + Duration::from_secs(1000)), 1);
    }
}
