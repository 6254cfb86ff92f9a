//! # ferry-core
//!
//! The rules of ferry, with no I/O: what the server, the client, the WebRTC side and the store
//! agree on, and every decision they make, as plain data and state machines. Everything here is
//! tested exhaustively and in virtual time, and the parsers that face the network are fuzzed.
//!
//! ## What is here
//! - Wire types: the control-plane API ([`api`]), an upload's events and their fold, the
//!   [`events::Tally`] ([`events`]), signaling messages ([`signal`]), job messages ([`job`]), a
//!   room's manifest ([`room`]).
//! - Uploads: how a file is cut into parts within a store's limits ([`plan`]); which part to send
//!   next, when to retry and when to give up ([`schedule::Scheduler`]); what to resume after a
//!   crash ([`resume`]); object keys ([`key`]), `Range` headers ([`range`]), signed URLs
//!   ([`sign`]), sizes as people write them ([`units`]).
//! - Data channels: seed 004's framing and the receiver's reassembly ([`frames`]), and the
//!   protocol around them ([`transfer::Sender`], [`transfer::Receiver`]).
//! - Rooms: who is where and where each signaling message goes ([`signal::Rooms`]); which
//!   transport carries a file ([`transport`]); rates of events per window ([`rate`]).
//!
//! ## How a caller drives a machine
//! Each state machine is fed what happened, with the time, and asked what to do, until it has
//! nothing more to say:
//!
//! ```
//! use std::time::Instant;
//! use ferry_core::plan::{Limits, PartPlan};
//! use ferry_core::schedule::{Action, RetryPolicy, Scheduler};
//!
//! let plan = PartPlan::new(20 << 20, None, &Limits::EMBEDDED).unwrap();
//! let mut s = Scheduler::new(plan.parts().collect(), |_| false, 4, RetryPolicy::default(), 7);
//! let now = Instant::now();
//! while let Action::Start { span, .. } = s.poll(now) {
//!     // … send part `span.part_number`; when it is stored:
//!     s.on_success(span.part_number);
//! }
//! assert_eq!(s.poll(now), Action::Complete);
//! ```
//!
//! ## What it never does
//! It never touches a socket, a file or the clock, and never spawns a task: time is always an
//! argument. That is what lets one definition of each rule serve the server, the client and the
//! store, and lets tests run whole transfers in virtual time.

pub mod api;
pub mod etag;
pub mod events;
pub mod frames;
pub mod job;
pub mod key;
pub mod plan;
pub mod range;
pub mod rate;
pub mod resume;
pub mod room;
pub mod schedule;
pub mod sign;
pub mod signal;
pub mod transfer;
pub mod transport;
pub mod units;
