//! What the service counts, for the server to expose (Prometheus text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Cheap to clone; all clones update the same counters.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Every part-body byte read, accepted or not: how a resume's waste is measured.
    pub bytes_received: Counter,
    pub parts_received: Counter,
    /// Sessions entering each state.
    pub uploads: Family<StateLabel, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ferry_bytes_received",
            "Part-body bytes read by the server, accepted or not",
            self.bytes_received.clone(),
        );
        registry.register("ferry_parts_received", "Parts stored", self.parts_received.clone());
        registry.register("ferry_uploads", "Upload sessions that entered each state", self.uploads.clone());
    }

    pub fn upload_entered(&self, state: ferry_core::api::UploadState) {
        self.uploads.get_or_create(&StateLabel { state: state.as_str() }).inc();
    }
}
