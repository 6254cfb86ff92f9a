//! # ferry-redis
//!
//! The [`Bus`] several `ferry serve` instances share, on Redis (`ferry serve --bus redis://…`):
//! the room directory lives in Redis hashes changed only by [scripts](scripts) (so a join checks
//! and takes an id in one atomic step), each instance hears its deliveries on a pub/sub channel
//! of its own, and event wake-ups go to every instance on one channel.
//!
//! ## Presence
//! Each instance keeps a key alive every [`HEARTBEAT`] that expires after [`ALIVE_TTL`]. Every
//! instance, on each beat, reaps instances whose key has expired: their peers are removed from
//! their rooms and the others told `peer_left`. A `kill -9`ed instance's peers are therefore
//! announced within `ALIVE_TTL + HEARTBEAT` (8 s), by whichever instance gets there first
//! (reaping twice is nothing). An instance the directory forgot (Redis restarted without its
//! data, or a stall long enough to be reaped) puts its peers back on its next beat.
//!
//! ## When Redis is away
//! Calls fail at once with [`BusError::Unavailable`] (within [`TIMEOUT`]) instead of hanging;
//! the connection is made again by itself, with the subscriptions, and the instance's peers are
//! put back. Messages published while an instance was cut off are lost, as on any pub/sub: the
//! peers' protocols carry on from what they hear next, and event streams read the store.
//!
//! Uses one multiplexed RESP3 connection (redis-rs's connection manager) for commands and
//! subscriptions alike. Needs Redis 6 or later, not in cluster mode.

mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::{Bus, BusError, BusMetrics, Inbox, Wake};
use ferry_core::signal::{Conn, Delivery, Outbound, Refusal, Role};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo as _, ProtocolVersion, PushInfo, PushKind, Value};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

/// How often an instance says it is alive, and reaps those that stopped.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an instance counts as alive after its last beat.
pub const ALIVE_TTL: Duration = Duration::from_secs(6);
/// How long a call to Redis may take before the bus counts as unavailable.
pub const TIMEOUT: Duration = Duration::from_secs(2);

const PREFIX: &str = "ferry:";

/// A peer this instance holds, to put back if the directory forgets it.
#[derive(Clone)]
struct Held {
    room: String,
    peer_id: String,
    role: Role,
}

pub struct RedisBus {
    instance: String,
    redis: ConnectionManager,
    max_peers_per_room: usize,
    held: Mutex<HashMap<Conn, Held>>,
    /// Leaves that failed while Redis was away, retried on the next beat.
    unleft: Mutex<Vec<(Conn, String, String)>>,
    wakes: broadcast::Sender<Wake>,
    metrics: BusMetrics,
    /// Set when the connection broke: the next beat puts this instance's peers back.
    broke: Arc<std::sync::atomic::AtomicBool>,
}

/// What arrives on an instance's channel.
#[derive(Deserialize)]
struct Envelope {
    c: Conn,
    m: Outbound,
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Worker => "worker",
        Role::Peer => "peer",
    }
}

impl RedisBus {
    /// Connects to `url` (`redis://[:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS) and starts
    /// this instance's heartbeat. Rooms take at most `max_peers_per_room` peers (0: any).
    pub async fn connect(
        url: &str,
        max_peers_per_room: usize,
        metrics: BusMetrics,
    ) -> Result<(Arc<RedisBus>, Inbox), BusError> {
        let info = url.into_connection_info().map_err(unavailable)?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        // Deliveries are small and go one after another: with Nagle's algorithm each waited for
        // the last one's ACK, delayed by up to 40 ms.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let info = info.set_redis_settings(settings).set_tcp_settings(tcp);
        let client = redis::Client::open(info).map_err(unavailable)?;
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).map_err(|e| BusError::Unavailable(format!("no randomness: {e}")))?;
        let instance = hex::encode(bytes);
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let wakes = broadcast::channel(1024).0;
        let broke = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = Pushes {
            own_channel: format!("{PREFIX}to:{instance}"),
            instance: instance.clone(),
            deliveries: deliveries_tx,
            wakes: wakes.clone(),
            metrics: metrics.clone(),
            broke: Arc::clone(&broke),
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
            .set_push_sender(move |info: PushInfo| {
                sender.take(info);
                Ok::<(), ()>(())
            })
            .set_automatic_resubscription();
        let mut redis = ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?;
        redis.subscribe(format!("{PREFIX}to:{instance}")).await.map_err(unavailable)?;
        redis.subscribe(format!("{PREFIX}wake")).await.map_err(unavailable)?;
        let bus = Arc::new(RedisBus {
            instance,
            redis,
            max_peers_per_room,
            held: Mutex::new(HashMap::new()),
            unleft: Mutex::new(Vec::new()),
            wakes,
            metrics,
            broke,
        });
        bus.beat().await;
        tokio::spawn(heartbeat(Arc::downgrade(&bus)));
        Ok((bus, Inbox { deliveries }))
    }

    fn channels(&self) -> String {
        format!("{PREFIX}to:")
    }

    fn members_key(&self) -> String {
        format!("{PREFIX}members:{}", self.instance)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Conn, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn join_script(&self, conn: Conn, h: &Held, fresh: bool) -> Result<(), BusError> {
        let answer: String = scripts::JOIN
            .key(format!("{PREFIX}room:{}", h.room))
            .key(self.members_key())
            .arg(&h.room)
            .arg(&h.peer_id)
            .arg(role_name(h.role))
            .arg(&self.instance)
            .arg(conn)
            .arg(self.max_peers_per_room)
            .arg(self.channels())
            .arg(if fresh { "1" } else { "0" })
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.metrics.sent.inc();
        match answer.as_str() {
            "ok" => Ok(()),
            "taken" => Err(Refusal::Taken(h.peer_id.clone()).into()),
            "full" => Err(Refusal::Full.into()),
            other => Err(BusError::Unavailable(format!("unexpected answer {other:?} to a join"))),
        }
    }

    async fn leave_script(&self, conn: Conn, room: &str, peer_id: &str) -> Result<(), BusError> {
        let _: i64 = scripts::LEAVE
            .key(format!("{PREFIX}room:{room}"))
            .key(self.members_key())
            .arg(room)
            .arg(peer_id)
            .arg(&self.instance)
            .arg(conn)
            .arg(self.channels())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.metrics.sent.inc();
        Ok(())
    }

    /// Keeps this instance alive, puts its peers back if the directory forgot them, retries
    /// leaves that failed, and reaps instances that died.
    async fn beat(&self) {
        let mut redis = self.redis.clone();
        let had: Result<i64, _> = scripts::HEARTBEAT
            .key(format!("{PREFIX}alive:{}", self.instance))
            .key(format!("{PREFIX}instances"))
            .arg(&self.instance)
            .arg(ALIVE_TTL.as_millis() as u64)
            .invoke_async(&mut redis)
            .await;
        let Ok(had) = had else { return };
        if had == 0 || self.broke.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let held: Vec<(Conn, Held)> = self.held().iter().map(|(c, h)| (*c, h.clone())).collect();
            for (conn, h) in held {
                if let Err(e) = self.join_script(conn, &h, false).await {
                    tracing::warn!(room = %h.room, peer_id = %h.peer_id, error = %e, "could not put a peer back into its room");
                }
            }
        }
        let unleft = std::mem::take(&mut *self.unleft.lock().unwrap_or_else(|p| p.into_inner()));
        for (conn, room, peer_id) in unleft {
            if self.leave_script(conn, &room, &peer_id).await.is_err() {
                self.unleft.lock().unwrap_or_else(|p| p.into_inner()).push((conn, room, peer_id));
            }
        }
        let instances: Vec<String> =
            redis::cmd("SMEMBERS").arg(format!("{PREFIX}instances")).query_async(&mut redis).await.unwrap_or_default();
        for other in instances.iter().filter(|i| **i != self.instance) {
            let reaped: Result<u64, _> = scripts::REAP
                .key(format!("{PREFIX}instances"))
                .arg(other)
                .arg(self.channels())
                .arg(PREFIX)
                .invoke_async(&mut redis)
                .await;
            if let Ok(n) = reaped.inspect_err(|e| tracing::debug!(error = %e, "reaping failed"))
                && n > 0
            {
                tracing::info!(instance = %other, peers = n, "an instance stopped; its peers left their rooms");
                self.metrics.reaped.inc_by(n);
            }
        }
    }
}

async fn heartbeat(bus: std::sync::Weak<RedisBus>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        bus.beat().await;
    }
}

/// Takes what Redis pushes: deliveries for this instance's connections, wake-ups from others.
struct Pushes {
    own_channel: String,
    instance: String,
    deliveries: mpsc::UnboundedSender<Delivery>,
    wakes: broadcast::Sender<Wake>,
    metrics: BusMetrics,
    broke: Arc<std::sync::atomic::AtomicBool>,
}

impl Pushes {
    fn take(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message => {}
            PushKind::Disconnection => {
                self.metrics.reconnects.inc();
                self.broke.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            _ => return,
        }
        let [Value::BulkString(channel), Value::BulkString(payload)] = info.data.as_slice() else { return };
        self.metrics.received.inc();
        if channel.as_slice() == self.own_channel.as_bytes() {
            match serde_json::from_slice::<Envelope>(payload) {
                Ok(e) => {
                    let _ = self.deliveries.send((e.c, e.m));
                }
                Err(e) => tracing::warn!(error = %e, "an undecodable delivery on the bus"),
            }
        } else if let Some((from, rest)) = std::str::from_utf8(payload).ok().and_then(|p| p.split_once('|'))
            && from != self.instance
        {
            // `FROM|UPLOAD_ID`, or `FROM|UPLOAD_ID|NEWS`.
            let (upload_id, news) = match rest.split_once('|') {
                Some((id, news)) => (id, Some(Arc::from(news))),
                None => (rest, None),
            };
            let _ = self.wakes.send(Wake { upload_id: upload_id.to_owned(), news });
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn join(&self, conn: Conn, room: &str, role: Role, peer_id: &str) -> Result<(), BusError> {
        let h = Held { room: room.to_owned(), peer_id: peer_id.to_owned(), role };
        if self.held().contains_key(&conn) {
            return Err(Refusal::AlreadyJoined.into());
        }
        self.join_script(conn, &h, true).await?;
        self.held().insert(conn, h);
        Ok(())
    }

    async fn leave(&self, conn: Conn, room: &str, peer_id: &str) -> Result<(), BusError> {
        if self.held().remove(&conn).is_none() {
            return Ok(());
        }
        let result = self.leave_script(conn, room, peer_id).await;
        if result.is_err() {
            // The peer is gone from here whatever Redis says; the next beat tells the others.
            self.unleft.lock().unwrap_or_else(|p| p.into_inner()).push((conn, room.to_owned(), peer_id.to_owned()));
        }
        result
    }

    async fn send(&self, conn: Conn, room: &str, from: &str, to: &str, message: &Outbound) -> Result<(), BusError> {
        let json = serde_json::to_string(message).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let answer: String = scripts::SEND
            .key(format!("{PREFIX}room:{room}"))
            .arg(from)
            .arg(to)
            .arg(&self.instance)
            .arg(conn)
            .arg(json)
            .arg(self.channels())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.metrics.sent.inc();
        match answer.as_str() {
            "ok" => Ok(()),
            "not_joined" => Err(Refusal::NotJoined.into()),
            "self" => Err(Refusal::ToSelf.into()),
            "not_found" => Err(Refusal::NotFound(to.to_owned()).into()),
            other => Err(BusError::Unavailable(format!("unexpected answer {other:?} to a send"))),
        }
    }

    async fn wake(&self, upload_id: &str, news: Option<&str>) -> Result<(), BusError> {
        let message = match news {
            Some(news) => format!("{}|{upload_id}|{news}", self.instance),
            None => format!("{}|{upload_id}", self.instance),
        };
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{PREFIX}wake"))
            .arg(message)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.metrics.sent.inc();
        Ok(())
    }

    fn wakes(&self) -> broadcast::Receiver<Wake> {
        self.wakes.subscribe()
    }

    async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, BusError> {
        let got: Option<String> = redis::cmd("SET")
            .arg(format!("{PREFIX}lease:{name}"))
            .arg(&self.instance)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(got.is_some())
    }

    async fn release(&self, name: &str) -> Result<(), BusError> {
        let _: i64 = scripts::RELEASE
            .key(format!("{PREFIX}lease:{name}"))
            .arg(&self.instance)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn check(&self) -> Result<(), BusError> {
        let _: String = redis::cmd("PING").query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(())
    }

    fn metrics(&self) -> &BusMetrics {
        &self.metrics
    }
}
