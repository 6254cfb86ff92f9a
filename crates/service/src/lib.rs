//! # ferry-service
//!
//! ferry's domain, with no HTTP in it: upload sessions and the rules of their life, each upload's
//! event log, the processors run on its parts or its object, its webhooks, stored objects and
//! room manifests — over any [`ferry_store::Store`]. `ferry serve` (the `ferry-server` crate) is a
//! thin HTTP shell around it; anything else that receives bytes (a WebRTC peer, a form POST) goes
//! through the same calls.
//!
//! ## Main types
//! - [`Service`], made from its [`Parts`]: `create`, `sign`, `put_part`, `part_done`,
//!   `complete`, `cancel`, `status`, `list`, `reprocess`; `follow` an upload's events;
//!   `open_object` / `sign_object`; `manifest` / `write_manifest`; and `run_background`, which
//!   carries on what a crash left unfinished and then expires overdue sessions.
//! - [`Session`]: the durable record of one upload, and [`Session::transition`], the only way
//!   its state changes.
//! - [`ServiceError`]: every failure, sorted by whose fault it is (the request, the upload's
//!   state, something missing, the store, or ferry itself). The HTTP layer maps each variant
//!   to a status and a stable code in one place.
//! - [`Clock`]: time is injected. Production uses [`SystemClock`]; tests use [`ManualClock`]
//!   and move time by hand, so expiry, retry schedules and timeouts run in virtual time.
//! - [`WebhookSender`]: the HTTP client webhooks go out through, given by the caller.
//!
//! ## Driving it
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! # struct Http;
//! # #[async_trait::async_trait]
//! # impl ferry_service::WebhookSender for Http {
//! #     async fn post(&self, _: ferry_service::WebhookRequest) -> Result<u16, String> { Ok(200) }
//! # }
//! let store = Arc::new(ferry_store::FsStore::open("./data", ferry_core::plan::Limits::EMBEDDED)?);
//! let service = Arc::new(ferry_service::Service::new(ferry_service::Parts {
//!     store,
//!     config: ferry_service::ServiceConfig::new("http://127.0.0.1:7070"),
//!     signer: ferry_core::sign::Signer::new(b"a secret of the server's".to_vec()),
//!     clock: Arc::new(ferry_service::SystemClock),
//!     webhook_sender: Arc::new(Http),
//!     metrics: ferry_service::Metrics::default(),
//!     bus: Arc::new(ferry_bus::LocalBus::new(0, ferry_bus::BusMetrics::default()).0),
//! }));
//! tokio::spawn(Arc::clone(&service).run_background());
//! let req = serde_json::from_value(serde_json::json!({"name": "a.bin", "size": 3}))?;
//! let created = service.create(req).await?;
//! // … the client PUTs created.parts to their URLs; the server hands each body to put_part …
//! let object = service.complete(&created.upload_id, None, None).await?;
//! # Ok(()) }
//! ```
//!
//! ## What it never does
//! It never speaks HTTP, reads the wall clock or sleeps except through its [`Clock`], runs a
//! command a client named (only processors the operator configured, by name), or holds a part
//! body in memory (bodies stream to the store).

mod clock;
mod config;
mod error;
mod events;
mod follow;
mod ingest;
mod manifests;
mod metrics;
mod objects;
pub mod processing;
pub mod secrets;
mod session;
mod uploads;
pub mod webhooks;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use config::ServiceConfig;
pub use error::{Invalid, NotFound, Refused, ServiceError};
pub use follow::Follow;
pub use ingest::{Ingest, IngestHeld, IngestPlan};
pub use metrics::Metrics;
pub use objects::KEY_SEGMENT;
pub use session::Session;
pub use uploads::{Parts, Service};
pub use webhooks::{WebhookConfig, WebhookRequest, WebhookSender};
