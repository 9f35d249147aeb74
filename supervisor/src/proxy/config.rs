//! `ProxyConfig`: every knob of the edge proxy with its default; the `[proxy]` section of `wirebot.toml` maps onto it.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::Error;

/// Settings of the edge proxy. Field names match the `[proxy]` section of `wirebot.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Address the member-facing listener binds (the Cloudflare tunnel points here).
    pub listen: SocketAddr,
    /// TCP connect timeout to a worker; past it the request fails with 504.
    pub connect_timeout_ms: u64,
    /// Time a client has to send a complete request head (slowloris guard); also the keep-alive idle limit.
    pub header_timeout_ms: u64,
    /// Time a worker has to send response headers; past it the request fails with 504. Streaming bodies are not limited.
    pub response_timeout_ms: u64,
    /// A WebSocket with no frame in either direction for this long is closed.
    pub ws_idle_timeout_s: u64,
    /// Global cap on open client connections (each costs one fd; the process has 20,000).
    pub max_connections: usize,
    /// Concurrent in-flight requests plus open WebSockets per member; more gets 429.
    pub per_member_max_connections: u32,
    /// Sustained requests per second per member (token bucket); 0 disables the limit.
    pub per_member_rps: u32,
    /// Token-bucket depth per member: how many requests may arrive at once.
    pub per_member_burst: u32,
    /// A dedicated worker with no request and no open WebSocket for this long is stopped; 0 disables idle stop.
    pub idle_stop_s: u64,
    /// How often the idle stopper looks at the table.
    pub idle_check_interval_s: u64,
    /// A stopped dedicated worker is woken this long before its next cron job is due.
    pub cron_wake_lead_s: u64,
    /// How long a request is held while its stopped worker starts; past it the request fails with 503.
    pub start_timeout_ms: u64,
    /// Largest request head (request line + headers) accepted; at least 8192.
    pub max_header_bytes: usize,
    /// Largest request body accepted; 413 past it.
    pub max_body_bytes: u64,
    /// Idle keep-alive connections kept per worker and proxy thread. Each costs a file descriptor: with 100
    /// dedicated workers and 2 threads the worst case is 100 × 2 × 32 = 6,400 fds next to `max_connections`.
    pub max_idle_per_upstream: usize,
    /// How long in-flight requests and WebSockets may take to finish after shutdown is signalled.
    pub drain_timeout_s: u64,
    /// Accept threads, each a single-threaded runtime serving its connections start to end (thread per core,
    /// like nginx workers); 0 serves on the caller's runtime instead.
    pub worker_threads: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            connect_timeout_ms: 2_000,
            header_timeout_ms: 10_000,
            response_timeout_ms: 300_000,
            ws_idle_timeout_s: 300,
            max_connections: 8_000,
            per_member_max_connections: 256,
            per_member_rps: 50,
            per_member_burst: 100,
            idle_stop_s: 1_800,
            idle_check_interval_s: 30,
            cron_wake_lead_s: 60,
            start_timeout_ms: 30_000,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            max_idle_per_upstream: 32,
            drain_timeout_s: 10,
            worker_threads: 2,
        }
    }
}

impl ProxyConfig {
    /// Checks the values that would make the proxy misbehave; reports every problem at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if self.max_header_bytes < 8192 {
            problems.push(format!(
                "max_header_bytes is {} (at least 8192)",
                self.max_header_bytes
            ));
        }
        if self.max_connections == 0 {
            problems.push("max_connections is 0 (at least 1)".to_owned());
        }
        if self.max_connections > 16_000 {
            problems.push(format!(
                "max_connections is {} (at most 16000: the process has 20000 file descriptors)",
                self.max_connections
            ));
        }
        if self.worker_threads > 64 {
            problems.push(format!(
                "worker_threads is {} (at most 64)",
                self.worker_threads
            ));
        }
        if self.per_member_max_connections == 0 {
            problems.push("per_member_max_connections is 0 (at least 1)".to_owned());
        }
        for (name, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("ws_idle_timeout_s", self.ws_idle_timeout_s),
            ("start_timeout_ms", self.start_timeout_ms),
            ("idle_check_interval_s", self.idle_check_interval_s),
        ] {
            if v == 0 {
                problems.push(format!("{name} is 0 (at least 1)"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { problems })
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub(crate) fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub(crate) fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
    pub(crate) fn ws_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.ws_idle_timeout_s)
    }
    pub(crate) fn start_timeout(&self) -> Duration {
        Duration::from_millis(self.start_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ProxyConfig::default().validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let cfg = ProxyConfig {
            max_header_bytes: 100,
            max_connections: 0,
            connect_timeout_ms: 0,
            ..ProxyConfig::default()
        };
        let Err(Error::InvalidConfig { problems }) = cfg.validate() else {
            panic!("accepted")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
