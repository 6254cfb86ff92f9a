use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ferry_core::plan::TIB;
use ferry_service::processing::ProcessorSpec;
use ferry_service::{ServiceConfig, WebhookConfig};

/// Everything `ferry serve` can be told. [`ServerConfig::new`] gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds the embedded store, the URL-signing secret and the generated token.
    pub data_dir: PathBuf,
    /// Accepted bearer tokens; empty means "use the token kept in the data dir".
    pub tokens: Vec<String>,
    /// Base of every absolute URL handed out (signed part and object URLs), without a trailing `/`.
    pub public_url: String,
    /// Lifetime of signed URLs.
    pub url_ttl: Duration,
    /// Sessions not completed within this time expire.
    pub session_ttl: Duration,
    pub max_object_size: u64,
    /// Largest JSON request body.
    pub max_json_bytes: usize,
    /// A part body that sends nothing for this long is abandoned.
    pub body_idle_timeout: Duration,
    /// How often expired sessions are looked for.
    pub sweep_interval: Duration,
    /// Requests handled at once; more are answered 503 with `Retry-After` instead of queuing.
    pub max_requests: usize,
    /// Processors clients may name at create, by name.
    pub processors: BTreeMap<String, ProcessorSpec>,
    /// Processor runs at once, across all uploads.
    pub processing_concurrency: usize,
    /// A processor run taking longer is killed (a processor's own timeout overrides it).
    pub processing_timeout: Duration,
    /// An event stream with nothing to send for this long is closed.
    pub events_idle_timeout: Duration,
    /// How often an idle event stream sends a keep-alive comment.
    pub events_keepalive: Duration,
    pub webhooks: WebhookConfig,
    /// Rooms of `/v1/signal` that take tokens of their own (besides the server's), by room.
    pub room_tokens: BTreeMap<String, Vec<String>>,
    /// Largest signaling message.
    pub signal_max_message: usize,
    /// Signaling messages a connection may send per second.
    pub signal_rate: u32,
    /// Peers a signaling room may hold.
    pub max_room_peers: usize,
    /// The address the server's WebRTC peer sends from and offers as its candidate.
    pub rtc_bind: std::net::IpAddr,
    /// Serve every WebRTC peer on this one UDP port (0: any free one) instead of one port each.
    pub rtc_udp_port: Option<u16>,
    /// The address to offer peers instead of `rtc_bind` (a public IP in front of a 1:1 NAT).
    pub rtc_public_ip: Option<std::net::IpAddr>,
    /// WebRTC peers served at once on the one UDP port.
    pub rtc_max_peers: usize,
    /// STUN servers the WebRTC peer asks for its outside address.
    pub ice_servers: Vec<ferry_rtc::IceServer>,
    /// Origins whose browser apps may call this server (`*` for any); empty: same origin only.
    pub cors_origins: Vec<String>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, public_url: impl Into<String>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            tokens: Vec::new(),
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            url_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(24 * 3600),
            max_object_size: 5 * TIB,
            max_json_bytes: 1 << 20,
            body_idle_timeout: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(60),
            max_requests: 1024,
            processors: BTreeMap::new(),
            processing_concurrency: 3,
            processing_timeout: Duration::from_secs(3600),
            events_idle_timeout: Duration::from_secs(30 * 60),
            events_keepalive: Duration::from_secs(15),
            webhooks: WebhookConfig::default(),
            cors_origins: Vec::new(),
            rtc_bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            rtc_udp_port: None,
            rtc_public_ip: None,
            rtc_max_peers: 256,
            ice_servers: Vec::new(),
            room_tokens: BTreeMap::new(),
            signal_max_message: 64 * 1024,
            signal_rate: 100,
            max_room_peers: 64,
        }
    }

    /// What the domain needs to know of it.
    pub fn service(&self) -> ServiceConfig {
        ServiceConfig {
            url_ttl: self.url_ttl,
            session_ttl: self.session_ttl,
            sweep_interval: self.sweep_interval,
            processors: self.processors.clone(),
            processing_concurrency: self.processing_concurrency,
            processing_timeout: self.processing_timeout,
            events_idle_timeout: self.events_idle_timeout,
            webhooks: self.webhooks.clone(),
            ..ServiceConfig::new(&self.public_url)
        }
    }
}
