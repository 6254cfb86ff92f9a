//! # ferry-jobs
//!
//! Rooms of peers and workers that run jobs on files (seed 001), as a library the `ferry`
//! commands are thin shells around.
//!
//! ## Main pieces
//! - [`deliver`]: a file into a room by the transport rules — over a data channel to a peer or
//!   to the server's own peer, or as HTTP parts — with the choice and its reason told.
//! - [`worker::serve`]: a worker. It takes `job_request`s, answers `busy` beyond its
//!   [`WorkerConfig::jobs`], and runs each job: fetch the input, run the command in a process
//!   group of its own, forward its output, store its results, record them in the room's
//!   manifest. Jobs a killed worker left behind are ended and recorded by the next worker that
//!   starts on the same work dir ([`leftovers`]).
//! - [`client`]: [`client::submit`] a job and follow it, [`client::steer`] it from anywhere,
//!   [`client::attach`] to its result later, [`client::download_outputs`].
//!
//! The decisions — which worker to ask next, what `pause`, `resume` and `cancel` do to a
//! command — are [`ferry_core::job`]'s state machines, tested without processes; this crate
//! carries them out with signaling, data channels, HTTP transfers and signals.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_jobs::{Connection, client::{Submission, submit}};
//! let conn = Connection {
//!     server: "http://127.0.0.1:7070".into(),
//!     token: "TOKEN".into(),
//!     api: Arc::new(ferry_client::Api::new("http://127.0.0.1:7070", "TOKEN")?),
//!     peer: ferry_rtc::PeerConfig::default(),
//! };
//! let rules = ferry_jobs::deliver::Rules {
//!     thresholds: ferry_core::transport::Thresholds::new(10_000_000, 100_000_000)?,
//!     kind: None,
//!     realtime: false,
//!     connect_timeout: std::time::Duration::from_secs(10),
//! };
//! let job = Submission {
//!     room: "lab".into(),
//!     input: "data/train.csv".into(),
//!     args: vec!["--epochs".into(), "3".into()],
//!     to: None,
//!     job_id: "j1".into(),
//!     wait: std::time::Duration::from_secs(60),
//!     rules,
//! };
//! let (_commands, rx) = tokio::sync::mpsc::channel(8);
//! let result = submit(&conn, &job, rx, |event| println!("{event:?}")).await?;
//! println!("{:?}: {} outputs", result.status, result.outputs.len());
//! # Ok(()) }
//! ```
//!
//! It never reads a terminal or prints: events go to the caller.

pub mod client;
pub mod deliver;
mod error;
pub mod leftovers;
pub mod worker;

use std::sync::Arc;

pub use error::JobError;
pub use worker::WorkerConfig;

/// How to reach the server (its API, its signaling) and other peers.
#[derive(Clone)]
pub struct Connection {
    /// The server's URL.
    pub server: String,
    /// The token signaling rooms are joined with.
    pub token: String,
    pub api: Arc<ferry_client::Api>,
    /// This side's WebRTC peer: the address it binds and offers, STUN and TURN servers.
    pub peer: ferry_rtc::PeerConfig,
}
