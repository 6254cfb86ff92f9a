//! # ferry-server
//!
//! `ferry serve`: the HTTP shell around [`ferry_service`]. It answers the control-plane API v1
//! (upload sessions, signed part URLs, status, complete, cancel, objects, events as SSE), the
//! signed data-plane routes, the routes Uppy calls, signaling rooms over WebSocket, the upload
//! page, `/healthz` and `/metrics`; and it is a WebRTC peer that takes uploads over data channels.
//!
//! Handlers only decode, authorize, call the service and encode; the rules of a session's life
//! live in the service, and its errors become statuses and codes in one place ([`ApiError`]).
//! This crate must not hold a part body in memory (bodies stream to the store), must not answer
//! any error without the JSON error body, and must not let a client name a file path or a
//! command.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let config = ferry_server::ServerConfig::new("./ferry-data", "http://127.0.0.1:7070");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! let server = ferry_server::Server::open(config)?;
//! server.serve(listener, std::future::pending()).await
//! # }
//! ```

mod auth;
mod config;
mod error;
mod extract;
mod metrics;
mod routes;
mod rtc;
mod webhook_http;

use std::future::Future;
use std::sync::Arc;

use ferry_bus::{Bus, BusMetrics, Inbox, LocalBus};
use ferry_core::sign::Signer;
use ferry_service::{Service, SystemClock, secrets};
use ferry_store::{FsStore, Store};

pub use config::ServerConfig;
pub use error::ApiError;

/// Shared by every handler.
pub(crate) struct AppState {
    pub config: ServerConfig,
    pub tokens: Vec<String>,
    /// Verifies signed URLs (the service signs them with the same secret).
    pub signer: Signer,
    pub service: Arc<Service>,
    pub metrics: metrics::Metrics,
    /// Cancelled when the server starts shutting down, so long-lived responses (event streams) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub signal: Arc<routes::signal::Hub>,
    /// The one UDP port of every WebRTC peer, when the server has one (bound in `serve`).
    pub rtc_mux: std::sync::OnceLock<Arc<ferry_rtc::UdpMux>>,
}

/// A server ready to accept connections.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Opens the data directory (creating it, its secret and — with no token configured — its
    /// token) and the embedded store in it.
    pub fn open(config: ServerConfig) -> std::io::Result<Server> {
        std::fs::create_dir_all(&config.data_dir)?;
        let limits = ferry_core::plan::Limits::EMBEDDED.with_max_object_size(config.max_object_size);
        let store: Arc<dyn Store> = Arc::new(FsStore::open(&config.data_dir, limits)?);
        Server::with_store(config, store)
    }

    /// A server over any store; the data directory still holds the URL-signing secret.
    pub fn with_store(config: ServerConfig, store: Arc<dyn Store>) -> std::io::Result<Server> {
        let secret = secrets::load_or_create_secret(&config.data_dir)?;
        let tokens = if config.tokens.is_empty() {
            vec![secrets::load_or_create_token(&config.data_dir)?.0]
        } else {
            config.tokens.clone()
        };
        Ok(Server::assemble(config, store, secret, tokens, None))
    }

    /// A server over a store other servers share (S3): its secret and generated token are kept in
    /// the store, so any of them can serve any request. Nothing is kept on local disk. With a
    /// `bus` the servers share (Redis), their signaling rooms and event streams are one; without
    /// one, each keeps its own rooms.
    pub async fn shared(
        config: ServerConfig,
        store: Arc<dyn Store>,
        bus: Option<(Arc<dyn Bus>, Inbox)>,
    ) -> Result<Server, ferry_store::StoreError> {
        let secret = secrets::load_or_create_shared(store.as_ref(), "secret", 32).await?;
        let secret = hex::decode(&secret)
            .map_err(|e| ferry_store::StoreError::Corrupt(format!("the shared URL-signing secret: {e}")))?;
        let tokens = if config.tokens.is_empty() {
            vec![secrets::load_or_create_shared(store.as_ref(), "token", 24).await?]
        } else {
            config.tokens.clone()
        };
        Ok(Server::assemble(config, store, secret, tokens, bus))
    }

    fn assemble(
        config: ServerConfig,
        store: Arc<dyn Store>,
        secret: Vec<u8>,
        tokens: Vec<String>,
        bus: Option<(Arc<dyn Bus>, Inbox)>,
    ) -> Server {
        let (bus, inbox) = bus.unwrap_or_else(|| {
            let (bus, inbox) = LocalBus::new(config.max_room_peers, BusMetrics::default());
            (Arc::new(bus), inbox)
        });
        let metrics = metrics::Metrics::new(bus.metrics());
        let signer = Signer::new(secret);
        let service = Arc::new(Service::new(ferry_service::Parts {
            store,
            config: config.service(),
            signer: signer.clone(),
            clock: Arc::new(SystemClock),
            webhook_sender: Arc::new(webhook_http::Http),
            metrics: metrics.service.clone(),
            bus: Arc::clone(&bus),
        }));
        let admission =
            ferry_core::signal::Admission { server_tokens: tokens.clone(), room_tokens: config.room_tokens.clone() };
        let state = AppState {
            signal: Arc::new(routes::signal::Hub::new(admission, bus, inbox)),
            config,
            tokens,
            signer,
            service,
            metrics,
            shutdown: tokio_util::sync::CancellationToken::new(),
            rtc_mux: std::sync::OnceLock::new(),
        };
        Server { state: Arc::new(state) }
    }

    /// Binds the WebRTC peers' one UDP port, when the configuration asks for one (`serve`
    /// does it first); returns its address.
    pub async fn bind_rtc(&self) -> std::io::Result<Option<std::net::SocketAddr>> {
        let config = &self.state.config;
        let Some(port) = config.rtc_udp_port else { return Ok(None) };
        if let Some(mux) = self.state.rtc_mux.get() {
            return mux.local_addr().map(Some);
        }
        if !config.ice_servers.is_empty() {
            return Err(std::io::Error::other(
                "--ice-server cannot be used with --rtc-udp-port: announce the address peers reach with --rtc-public-ip",
            ));
        }
        let bind = std::net::SocketAddr::new(config.rtc_bind, port);
        let mux = ferry_rtc::UdpMux::bind(bind, config.rtc_public_ip, config.rtc_max_peers)
            .await
            .map_err(|e| std::io::Error::other(format!("WebRTC port {bind}: {e}")))?;
        let addr = mux.local_addr()?;
        tracing::info!(%addr, announced = %mux.announced(), "WebRTC peers share one UDP port");
        let _ = self.state.rtc_mux.set(mux);
        Ok(Some(addr))
    }

    /// The bearer tokens this server accepts.
    pub fn tokens(&self) -> &[String] {
        &self.state.tokens
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish and
    /// returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.bind_rtc().await?;
        self.state.signal.start();
        let background = tokio::spawn(Arc::clone(&self.state.service).run_background());
        let app = routes::router(Arc::clone(&self.state));
        let streams = self.state.shutdown.clone();
        let shutdown = async move {
            shutdown.await;
            streams.cancel();
        };
        // Event streams and signaling write small messages one after another: with Nagle's
        // algorithm each one after the first waited for the client's delayed ACK (40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        background.abort();
        self.state.service.stop_processing();
        result
    }
}
