//! Prometheus metrics, served at `/metrics` in the text exposition format.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

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
    /// Every part-body byte read, accepted or not: how a resume's waste is measured.
    pub bytes_received: Counter,
    pub parts_received: Counter,
    /// Sessions entering each state.
    pub uploads: Family<StateLabel, Counter>,
    pub request_duration: Family<RequestLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let bytes_received = Counter::default();
        let parts_received = Counter::default();
        let uploads = Family::<StateLabel, Counter>::default();
        let request_duration =
            Family::<RequestLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "ferry_bytes_received",
            "Part-body bytes read by the server, accepted or not",
            bytes_received.clone(),
        );
        registry.register("ferry_parts_received", "Parts stored", parts_received.clone());
        registry.register("ferry_uploads", "Upload sessions that entered each state", uploads.clone());
        registry.register(
            "ferry_http_request_duration_seconds",
            "HTTP request latency by route",
            request_duration.clone(),
        );
        Metrics { registry: Arc::new(registry), bytes_received, parts_received, uploads, request_duration }
    }

    pub fn upload_entered(&self, state: ferry_core::api::UploadState) {
        self.uploads.get_or_create(&StateLabel { state: state.as_str() }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
