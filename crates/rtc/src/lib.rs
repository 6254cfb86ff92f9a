//! # ferry-rtc
//!
//! ferry's WebRTC side: peers that move files and messages over data channels, directly or
//! through a TURN relay, finding each other through `ferry serve`'s signaling rooms.
//!
//! ## Main types
//! - [`Peer`]: str0m's sans-I/O `Rtc` driven by one tokio task over one UDP socket. Make one with
//!   [`Peer::offer`] or [`Peer::answer`] (the caller carries the [`Description`]s), then take
//!   [`PeerEvent`]s: each [`DataChannel`] the remote opens, or that this side opened.
//!   [`DataChannel::send`] waits while the channel holds more than its high-water mark, so a
//!   sender's memory stays flat whatever the file size.
//! - [`transfer`]: a file over an upload channel (seed 004's framing) and the JSON `control`
//!   channel beside it. [`transfer::send_file`] sends; [`transfer::receive`] takes one in
//!   through a [`transfer::Sink`] — [`transfer::FileSink`] into a directory, or the server's,
//!   into its store. The protocol itself is [`ferry_core::transfer`]; this crate moves bytes.
//! - [`messages`]: a channel of JSON values (job progress, commands).
//! - [`signaling::Signaling`]: the client of `/v1/signal`; [`connect`] makes a connection through
//!   it, trickling candidates.
//! - [`IceServer`]: STUN ([`stun`]) for an address outside a NAT, TURN ([`relay`]) when no
//!   direct path exists.
//! - [`UdpMux`]: one UDP port that many peers share (a server behind a firewall), announcing a
//!   public address if it is given one.
//!
//! ## Driving a transfer
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_rtc::{Peer, PeerConfig, PeerEvent};
//! let config = PeerConfig::default(); // 127.0.0.1, no STUN or TURN
//! let (mut peer, offer) = Peer::offer(&config, &["control", "upload"]).await?;
//! // … send `offer` to the other side, get its answer back …
//! # let answer = offer.clone();
//! peer.accept_answer(&answer).await?;
//! let mut channels = Vec::new();
//! while channels.len() < 2 {
//!     if let Some(PeerEvent::Channel(c)) = peer.next_event().await {
//!         channels.push(c);
//!     }
//! }
//! channels.sort_by(|a, b| a.label().cmp(b.label()));
//! let (mut upload, mut control) = (channels.pop().unwrap(), channels.pop().unwrap());
//! let report = ferry_rtc::transfer::send_file(&mut control, &mut upload, "clip.mp4".as_ref(), "clip.mp4",
//!     ferry_rtc::transfer::CHUNK, |_| {}).await?;
//! println!("stored as {}", report.stored_as);
//! # Ok(()) }
//! ```
//!
//! ## What it never does
//! It knows nothing of HTTP, upload sessions or terminals. It binds the one address it is given
//! and offers that address, or the public one it is told to announce (a wildcard bind offers
//! nothing by itself, so it needs one), and never panics on a peer's input.

pub mod connect;
pub mod ice_server;
pub mod messages;
pub mod mux;
pub mod peer;
pub mod relay;
pub mod signaling;
mod sink;
pub mod stun;
pub mod transfer;

pub use ice_server::IceServer;
pub use mux::UdpMux;
pub use peer::ChannelSender;
pub use peer::{
    DataChannel, Description, IceCandidate, Message, Peer, PeerConfig, PeerError, PeerEvent, RemoteCandidates,
};
