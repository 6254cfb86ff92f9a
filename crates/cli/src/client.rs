//! What every client command shares: where the server is, the token, and output modes.

use std::sync::Arc;

use clap::Args;
use ferry_client::Api;

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The ferry server's URL.
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,

    /// Bearer token (`ferry serve` prints it on first start and keeps it in its data dir).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// The token, for what cannot run without one (signaling).
    pub fn token(&self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        self.token.clone().filter(|t| !t.is_empty()).context("no token: pass --token or set FERRY_TOKEN")
    }

    pub fn api(&self) -> anyhow::Result<Arc<Api>> {
        let token = self.token.as_deref().unwrap_or_default();
        Ok(Arc::new(Api::new(&self.server, token)?))
    }

    /// The server and peers, for the room commands (`net`: how this side's peer connects, for
    /// the commands that make one).
    pub fn connection(&self, net: Option<&PeerNetArgs>) -> anyhow::Result<ferry_jobs::Connection> {
        Ok(ferry_jobs::Connection {
            server: self.server.clone(),
            token: self.token()?,
            api: self.api()?,
            peer: net.map(PeerNetArgs::config).unwrap_or_default(),
        })
    }
}

/// How this side's WebRTC peer reaches the other: the address it sends from and offers, STUN
/// servers for an address outside a NAT, and TURN relays for when no direct path exists.
#[derive(Args, Clone)]
pub struct PeerNetArgs {
    /// The local address to send from and offer to the other peer (its host candidate).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,

    /// An ICE server, repeatable: stun:HOST[:PORT] is asked for this side's address outside a
    /// NAT; turn:USER:PASSWORD@HOST[:PORT] relays (over UDP) when the peers cannot reach each
    /// other directly. Each is offered beside the host candidate.
    #[arg(long = "ice-server", env = "FERRY_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<ferry_rtc::IceServer>,

    /// Offer only the TURN relay's address, never this machine's own (a browser's
    /// iceTransportPolicy "relay"): all traffic goes through the relay. Needs a turn: server.
    #[arg(long, env = "FERRY_RELAY_ONLY")]
    pub relay_only: bool,
}

impl PeerNetArgs {
    pub fn config(&self) -> ferry_rtc::PeerConfig {
        ferry_rtc::PeerConfig {
            bind: self.bind,
            ice_servers: self.ice_servers.clone(),
            relay_only: self.relay_only,
            ..Default::default()
        }
    }
}

#[derive(Args, Clone, Copy)]
pub struct OutputArgs {
    /// Print one JSON object per event and a JSON result per file, instead of progress bars.
    #[arg(long)]
    pub json: bool,

    /// No progress bars; print only the results and anything that needs attention.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    ferry_core::units::parse_size(s).map_err(|e| e.to_string())
}

pub fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a concurrency between 1 and 256")),
    }
}

pub use ferry_core::units::human as human_bytes;
