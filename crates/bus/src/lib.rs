//! # ferry-bus
//!
//! What the instances of one ferry deployment share in real time: the signaling room directory
//! (who is in which room, on which instance, over which connection), the delivery of signaling
//! messages to a peer wherever it is connected, wake-ups for streams following an upload's
//! events, and leases. The store stays the record of uploads and events; the bus only carries what is live.
//!
//! [`Bus`] is the trait; [`LocalBus`] is the in-process one (a single `ferry serve`, nothing to
//! install), and `ferry-redis` is the one several instances share. Both pass the same
//! [conformance suite](conformance) (feature `conformance`).
//!
//! ## How a server drives it
//! An instance builds its bus and gets an [`Inbox`] with it: the deliveries for its own
//! connections (`joined`, `peer_joined`, `signal`, …, in the order the bus decided them) and the
//! wake-ups other instances sent. It admits a peer itself ([`ferry_core::signal::Admission`]),
//! then calls [`Bus::join`]; a message goes out with [`Bus::send`]; a connection that ends calls
//! [`Bus::leave`]. Work that one instance should do at a time (writing a room's manifest) takes
//! a lease first ([`Bus::try_lease`]). The peer's own `joined` arrives through the inbox like
//! everything else, so it comes before any news of peers who join after it.
//!
//! This crate never decides who may join (admission is the instance's) and never touches the
//! store or a socket of a peer.

#[cfg(feature = "conformance")]
pub mod conformance;
mod local;

use std::time::Duration;

use async_trait::async_trait;
use ferry_core::signal::{Conn, Delivery, Outbound, Refusal, Role};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, mpsc};

pub use local::LocalBus;

/// Why the bus did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The directory's rules said no (an id taken, a room full, no such peer).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The broker cannot be reached; nothing was done.
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

impl BusError {
    /// The error the peer is sent.
    pub fn outbound(&self) -> Outbound {
        match self {
            BusError::Refused(r) => r.outbound(),
            BusError::Unavailable(_) => Outbound::error(
                "bus_unavailable",
                "signaling is unavailable for a moment (the server cannot reach its message bus); try again",
            ),
        }
    }
}

/// What reaches this instance from the bus.
pub struct Inbox {
    /// Messages for this instance's connections, in order.
    pub deliveries: mpsc::UnboundedReceiver<Delivery>,
}

/// The room directory and message delivery across instances.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// This instance's name on the bus, unique to this process's life; generated peer ids end
    /// with it, so they are unique across instances.
    fn instance(&self) -> &str;

    /// `conn` (connected here, and admitted) joins `room` as `peer_id`.
    async fn join(&self, conn: Conn, room: &str, role: Role, peer_id: &str) -> Result<(), BusError>;

    /// `conn` leaves `room`, where it is `peer_id`; the others are told. Leaving twice is nothing.
    async fn leave(&self, conn: Conn, room: &str, peer_id: &str) -> Result<(), BusError>;

    /// `message` from `from` (connected here as `conn`) to peer `to` of `room`.
    async fn send(&self, conn: Conn, room: &str, from: &str, to: &str, message: &Outbound) -> Result<(), BusError>;

    /// Tells every instance that `upload_id` has new events, and what they are when `news` is
    /// given (the appended records' JSON), so that their streams need not read the store.
    async fn wake(&self, upload_id: &str, news: Option<&str>) -> Result<(), BusError>;

    /// What other instances sent [`Bus::wake`] for.
    fn wakes(&self) -> broadcast::Receiver<Wake>;

    /// Takes the lease `name` for this instance for at most `ttl` (so it lapses if the holder
    /// dies): whether it got it. A lease held already, by any instance, is not given until it is
    /// released or lapses.
    async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, BusError>;

    /// Gives the lease `name` back, if this instance holds it.
    async fn release(&self, name: &str) -> Result<(), BusError>;

    /// Whether the bus can be reached now.
    async fn check(&self) -> Result<(), BusError>;

    /// Its counters.
    fn metrics(&self) -> &BusMetrics;
}

/// Another instance appended to an upload's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    pub upload_id: String,
    /// What it appended (JSON), when it said.
    pub news: Option<std::sync::Arc<str>>,
}

/// Counters every bus keeps, exported with the server's metrics.
#[derive(Clone, Default)]
pub struct BusMetrics {
    /// Messages this instance put on the bus.
    pub sent: Counter,
    /// Messages the bus brought to this instance.
    pub received: Counter,
    /// Times the connection to the broker was made again after it broke.
    pub reconnects: Counter,
    /// Peers of dead instances this instance announced as left.
    pub reaped: Counter,
}

impl BusMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("ferry_bus_messages_sent", "Messages this instance put on the bus", self.sent.clone());
        registry.register(
            "ferry_bus_messages_received",
            "Messages the bus brought to this instance",
            self.received.clone(),
        );
        registry.register("ferry_bus_reconnects", "Reconnections to the message broker", self.reconnects.clone());
        registry.register("ferry_bus_reaped_peers", "Peers of dead instances announced as left", self.reaped.clone());
    }
}
