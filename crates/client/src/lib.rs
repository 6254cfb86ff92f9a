//! # ferry-client
//!
//! The transfer engine shared by the `ferry` CLI, workers and tests: uploads that survive a crash
//! of either side and resume where they stopped, parallel parts with retries, memory bounded by
//! `concurrency × part_size` whatever the file size, and SHA-256 checked end to end. Downloads the
//! same way, with ranged GETs.
//!
//! The decisions (which part next, when to retry, what to resume) are made by the clock-free state
//! machines in `ferry-core` ([`ferry_core::schedule`], [`ferry_core::resume`]); this crate only
//! drives them with tokio, HTTP and the disk. It reports progress as [`Event`]s on a channel and
//! must not know about terminals.
//!
//! ```no_run
//! # async fn run() -> Result<(), ferry_client::ClientError> {
//! use std::sync::Arc;
//! let api = Arc::new(ferry_client::Api::new("http://127.0.0.1:7070", "TOKEN")?);
//! let (events, _rx) = ferry_client::events::channel();
//! let opts = ferry_client::UploadOptions::new(ferry_client::journal::default_state_dir());
//! let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
//! let done = ferry_client::upload(api, "big.bin".into(), opts, events, permits).await?;
//! println!("{} {}", done.key, done.sha256);
//! # Ok(()) }
//! ```

mod api;
mod download;
mod error;
pub mod events;
mod file;
pub mod journal;
mod progress;
mod rooms;
mod upload;
mod watch;

pub use api::Api;
pub use download::{DownloadOptions, DownloadResult, download};
pub use error::ClientError;
pub use events::Event;
pub use upload::{UploadOptions, UploadResult, upload};
pub use watch::watch;
