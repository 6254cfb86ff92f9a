//! The bus of a single instance: the room directory in memory ([`Rooms`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::signal::{Conn, Delivery, Outbound, Role, Rooms};
use tokio::sync::{broadcast, mpsc};

use crate::{Bus, BusError, BusMetrics, Inbox, Wake};

pub struct LocalBus {
    rooms: Mutex<Rooms>,
    /// Leases held, until when.
    leases: Mutex<HashMap<String, Instant>>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    wakes: broadcast::Sender<Wake>,
    metrics: BusMetrics,
}

impl LocalBus {
    /// A bus for rooms of at most `max_peers_per_room` peers (0: no limit).
    pub fn new(max_peers_per_room: usize, metrics: BusMetrics) -> (LocalBus, Inbox) {
        let (tx, deliveries) = mpsc::unbounded_channel();
        let bus = LocalBus {
            rooms: Mutex::new(Rooms::new(max_peers_per_room)),
            leases: Mutex::new(HashMap::new()),
            deliveries: tx,
            wakes: broadcast::channel(16).0,
            metrics,
        };
        (bus, Inbox { deliveries })
    }

    /// Sends while the directory is still locked, so deliveries keep the order it decided them in.
    fn with_rooms(&self, f: impl FnOnce(&mut Rooms) -> Result<Vec<Delivery>, BusError>) -> Result<(), BusError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        for d in f(&mut rooms)? {
            self.metrics.sent.inc();
            // The receiver lives as long as the server; without it there is no one to tell.
            let _ = self.deliveries.send(d);
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn instance(&self) -> &str {
        "local"
    }

    async fn join(&self, conn: Conn, room: &str, role: Role, peer_id: &str) -> Result<(), BusError> {
        self.with_rooms(|r| Ok(r.join(conn, room, role, peer_id)?))
    }

    async fn leave(&self, conn: Conn, _room: &str, _peer_id: &str) -> Result<(), BusError> {
        self.with_rooms(|r| Ok(r.leave(conn)))
    }

    async fn send(&self, conn: Conn, _room: &str, _from: &str, to: &str, message: &Outbound) -> Result<(), BusError> {
        self.with_rooms(|r| Ok(vec![r.relay(conn, to, |_| message.clone())?]))
    }

    async fn wake(&self, _upload_id: &str, _news: Option<&str>) -> Result<(), BusError> {
        // No other instance: this one's streams are woken by its own event log.
        Ok(())
    }

    fn wakes(&self) -> broadcast::Receiver<Wake> {
        self.wakes.subscribe()
    }

    async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, BusError> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        leases.retain(|_, until| *until > now);
        Ok(match leases.entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now + ttl);
                true
            }
        })
    }

    async fn release(&self, name: &str) -> Result<(), BusError> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn metrics(&self) -> &BusMetrics {
        &self.metrics
    }
}
