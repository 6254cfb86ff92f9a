//! # ferry-core
//!
//! The logic of ferry that does not touch the world: how a file is cut into parts within a
//! backend's limits ([`plan`]), which object keys are acceptable ([`key`]), how an HTTP `Range`
//! header is read ([`range`]), how part and object URLs are signed and checked ([`sign`]), the
//! JSON shapes of the control-plane API ([`api`]) and its event stream ([`events`]), the
//! data-channel framing and reassembly of seed 004 ([`frames`]), the signaling rooms
//! ([`signal`]), which transport carries a file ([`transport`]), a room's manifest of results
//! ([`room`]) and the messages of jobs run by workers ([`job`]).
//!
//! This crate must not do I/O, spawn tasks or read the clock: time is always an argument. That is
//! what lets every rule here be tested exhaustively and fuzzed, and lets the server, the client and
//! the store share one definition of each rule.

pub mod api;
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
pub mod transport;
pub mod units;
