//! What the service can be told. [`ServiceConfig::new`] gives the defaults `ferry serve` uses.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::processing::ProcessorSpec;
use crate::webhooks::WebhookConfig;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Base of every absolute URL handed out (signed part and object URLs), without a trailing `/`.
    pub public_url: String,
    /// Lifetime of signed URLs.
    pub url_ttl: Duration,
    /// Sessions not completed within this time expire.
    pub session_ttl: Duration,
    /// How often expired sessions are looked for.
    pub sweep_interval: Duration,
    /// Processors clients may name at create, by name.
    pub processors: BTreeMap<String, ProcessorSpec>,
    /// Processor runs at once, across all uploads.
    pub processing_concurrency: usize,
    /// A processor run taking longer is killed (a processor's own timeout overrides it).
    pub processing_timeout: Duration,
    /// An event stream with nothing to send for this long ends.
    pub events_idle_timeout: Duration,
    pub webhooks: WebhookConfig,
    /// Bytes held in memory at once by ingests whose last part's size is not known yet.
    pub ingest_buffer: u64,
}

impl ServiceConfig {
    pub fn new(public_url: impl Into<String>) -> ServiceConfig {
        ServiceConfig {
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            url_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            processors: BTreeMap::new(),
            processing_concurrency: 3,
            processing_timeout: Duration::from_secs(3600),
            events_idle_timeout: Duration::from_secs(30 * 60),
            webhooks: WebhookConfig::default(),
            ingest_buffer: 256 << 20,
        }
    }
}
