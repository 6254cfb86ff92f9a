//! # ferry-rtc
//!
//! ferry's WebRTC side: a peer ([`peer`]) that is str0m's sans-I/O `Rtc` driven by one tokio task
//! over one UDP socket, with data channels that apply backpressure on their buffered amount, and
//! files sent and received over them ([`transfer`]), JSON messages ([`messages`]), and a
//! connection made through `ferry serve`'s signaling with trickled candidates ([`connect`]),
//! reaching peers behind NATs through STUN ([`stun`]) and TURN relays ([`relay`]).
//! The protocol rules (seed 004's framing, reassembly, the control messages) live in
//! [`ferry_core::frames`]; this crate moves bytes.
//!
//! It must not know about HTTP, sessions or terminals.

pub mod connect;
pub mod ice_server;
pub mod messages;
pub mod peer;
pub mod relay;
pub mod signaling;
pub mod stun;
pub mod transfer;

pub use ice_server::IceServer;
pub use peer::ChannelSender;
pub use peer::{
    DataChannel, Description, IceCandidate, Message, Peer, PeerConfig, PeerError, PeerEvent, RemoteCandidates,
};
