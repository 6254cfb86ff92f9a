//! # ferry-server
//!
//! `ferry serve`: the control-plane API v1 (upload sessions, signed part URLs, status, complete,
//! cancel, objects) and the embedded data plane that receives part bodies, over any
//! [`ferry_store::Store`]; each upload's event stream (SSE), the processors run on its parts or
//! its object, its webhooks; the upload page and the routes Uppy calls.
//!
//! Handlers only decode, authorize, call the session domain ([`sessions`]) and encode; the rules of
//! a session's life live in one place there. This crate must not hold a part body in memory (bodies
//! stream to the store), must not answer any error without the JSON error body, and must not let a
//! client name a file path or a command.
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
mod events;
mod extract;
mod metrics;
mod pipeline;
pub mod processing;
mod routes;
mod rtc;
pub mod secrets;
pub mod sessions;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use ferry_core::sign::Signer;
use ferry_store::{FsStore, Store};

pub use config::ServerConfig;
pub use error::ApiError;

/// Shared by every handler.
pub(crate) struct AppState {
    pub config: ServerConfig,
    pub tokens: Vec<String>,
    pub signer: Signer,
    pub sessions: Arc<sessions::Sessions>,
    pub metrics: metrics::Metrics,
    /// Cancelled when the server starts shutting down, so long-lived responses (event streams) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub signal: routes::signal::Hub,
    /// Held across a manifest's read and across its conditional write (see `routes::rooms`).
    pub manifest_lock: tokio::sync::Mutex<()>,
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
        Ok(Server::assemble(config, store, secret, tokens))
    }

    /// A server over a store other servers share (S3): its secret and generated token are kept in
    /// the store, so any of them can serve any request. Nothing is kept on local disk.
    pub async fn shared(config: ServerConfig, store: Arc<dyn Store>) -> Result<Server, ferry_store::StoreError> {
        let secret = secrets::load_or_create_shared(store.as_ref(), "secret", 32).await?;
        let secret = hex::decode(&secret)
            .map_err(|e| ferry_store::StoreError::Corrupt(format!("the shared URL-signing secret: {e}")))?;
        let tokens = if config.tokens.is_empty() {
            vec![secrets::load_or_create_shared(store.as_ref(), "token", 24).await?]
        } else {
            config.tokens.clone()
        };
        Ok(Server::assemble(config, store, secret, tokens))
    }

    fn assemble(config: ServerConfig, store: Arc<dyn Store>, secret: Vec<u8>, tokens: Vec<String>) -> Server {
        let metrics = metrics::Metrics::new();
        let sessions = Arc::new(sessions::Sessions::new(store, config.clone(), metrics.clone()));
        let admission = ferry_core::signal::Admission {
            server_tokens: tokens.clone(),
            room_tokens: config.room_tokens.clone(),
            max_peers_per_room: config.max_room_peers,
        };
        let state = AppState {
            signal: routes::signal::Hub::new(admission),
            manifest_lock: tokio::sync::Mutex::new(()),
            config,
            tokens,
            signer: Signer::new(secret),
            sessions,
            metrics,
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        Server { state: Arc::new(state) }
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
        let sweeper = tokio::spawn(sessions::sweep_forever(Arc::clone(&self.state)));
        let app = routes::router(Arc::clone(&self.state));
        let streams = self.state.shutdown.clone();
        let shutdown = async move {
            shutdown.await;
            streams.cancel();
        };
        let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        sweeper.abort();
        // Runs cut short here are run again after the restart (their outcomes were not recorded).
        self.state.sessions.runner.kill_all();
        result
    }
}
