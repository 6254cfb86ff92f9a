//! Prometheus metrics, served at `/metrics` in the text exposition format: the service's
//! counters, the bus's, and each request's latency by route.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Cheap to clone; all clones update the same metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub service: ferry_service::Metrics,
    pub request_duration: Family<RequestLabels, Histogram>,
    /// Signaling WebSockets this instance accepted.
    pub signal_connections: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

impl Metrics {
    pub fn new(bus: &ferry_bus::BusMetrics) -> Metrics {
        let mut registry = Registry::default();
        bus.register(&mut registry);
        let service = ferry_service::Metrics::default();
        service.register(&mut registry);
        let request_duration =
            Family::<RequestLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "ferry_http_request_duration_seconds",
            "HTTP request latency by route",
            request_duration.clone(),
        );
        let signal_connections = Counter::default();
        registry.register(
            "ferry_signal_connections",
            "Signaling WebSockets this instance accepted",
            signal_connections.clone(),
        );
        Metrics { registry: Arc::new(registry), service, request_duration, signal_connections }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
