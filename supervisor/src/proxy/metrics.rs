//! `ProxyMetrics`: Prometheus counters, gauges and histograms of the edge proxy, rendered as text exposition
//! for the admin listener's `/metrics`. Hot-path handles are created once, so recording is a few atomic ops.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use provisioning::Tier;

/// Tier label; `none` for requests that matched no member.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the variant names are the label values
pub(crate) enum TierLabel {
    dedicated,
    shared,
    none,
}

impl From<Option<Tier>> for TierLabel {
    fn from(t: Option<Tier>) -> TierLabel {
        match t {
            Some(Tier::Dedicated) => TierLabel::dedicated,
            Some(Tier::Shared) => TierLabel::shared,
            None => TierLabel::none,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tier: TierLabel,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: TierLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The proxy's metrics. Create one, hand it to [`super::run`] and serve [`ProxyMetrics::render`] at `/metrics`.
#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Latency to response headers, per tier (index = TierLabel as usize).
    latency: [Histogram; 3],
    open_websockets: Gauge,
    open_connections: Gauge,
    wakes: Family<OutcomeLabels, Counter>,
    wake_latency: Histogram,
    idle_stops: Counter,
    cron_wakes: Counter,
    rejected_connections: Counter<u64, AtomicU64>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0,
    ]
    .into_iter()
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> ProxyMetrics {
        let mut registry = Registry::with_prefix("wirebot_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by member tier and HTTP status",
            requests.clone(),
        );
        let latency_family = Family::<TierLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by member tier",
            latency_family.clone(),
        );
        let latency = [TierLabel::dedicated, TierLabel::shared, TierLabel::none]
            .map(|tier| latency_family.get_or_create(&TierLabels { tier }).clone());
        let open_websockets = Gauge::default();
        registry.register(
            "open_websockets",
            "WebSockets currently relayed",
            open_websockets.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        let wakes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "wakes",
            "Wake requests for stopped workers, by outcome",
            wakes.clone(),
        );
        let wake_latency = Histogram::new(latency_buckets());
        registry.register(
            "wake_duration_seconds",
            "Time a request was held while its worker started",
            wake_latency.clone(),
        );
        let idle_stops = Counter::default();
        registry.register(
            "idle_stops",
            "Stop requests sent for idle dedicated workers",
            idle_stops.clone(),
        );
        let cron_wakes = Counter::default();
        registry.register(
            "cron_wakes",
            "Wakes sent ahead of a due cron job",
            cron_wakes.clone(),
        );
        let rejected_connections = Counter::default();
        registry.register(
            "accept_errors",
            "Accept failures (e.g. out of file descriptors)",
            rejected_connections.clone(),
        );
        ProxyMetrics {
            registry,
            requests,
            latency,
            open_websockets,
            open_connections,
            wakes,
            wake_latency,
            idle_stops,
            cron_wakes,
            rejected_connections,
        }
    }

    /// Prometheus text exposition (OpenMetrics text, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn request(&self, tier: TierLabel, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { tier, status })
            .inc();
        self.latency[tier as usize].observe(elapsed.as_secs_f64());
    }

    pub(crate) fn websocket_opened(&self) {
        self.open_websockets.inc();
    }
    pub(crate) fn websocket_closed(&self) {
        self.open_websockets.dec();
    }
    pub(crate) fn connection_opened(&self) {
        self.open_connections.inc();
    }
    pub(crate) fn connection_closed(&self) {
        self.open_connections.dec();
    }
    pub(crate) fn wake(&self, outcome: &'static str, elapsed: Duration) {
        self.wakes.get_or_create(&OutcomeLabels { outcome }).inc();
        self.wake_latency.observe(elapsed.as_secs_f64());
    }
    pub(crate) fn idle_stop(&self) {
        self.idle_stops.inc();
    }
    pub(crate) fn cron_wake(&self) {
        self.cron_wakes.inc();
    }
    pub(crate) fn accept_error(&self) {
        self.rejected_connections.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_family() {
        let m = ProxyMetrics::new();
        m.request(TierLabel::dedicated, 200, Duration::from_millis(2));
        m.request(TierLabel::none, 404, Duration::from_micros(100));
        m.websocket_opened();
        m.wake("ok", Duration::from_millis(20));
        m.idle_stop();
        let text = m.render();
        for needle in [
            r#"wirebot_proxy_requests_total{tier="dedicated",status="200"} 1"#,
            r#"wirebot_proxy_requests_total{tier="none",status="404"} 1"#,
            r#"wirebot_proxy_request_duration_seconds_count{tier="dedicated"} 1"#,
            "wirebot_proxy_open_websockets 1",
            r#"wirebot_proxy_wakes_total{outcome="ok"} 1"#,
            "wirebot_proxy_idle_stops_total 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
