//! `/v1/signal`: the WebSocket peers use to find each other and exchange SDP, ICE candidates and
//! application messages (the protocol and its rules are [`ferry_core::signal`]).
//!
//! The upgrade needs no bearer header (browsers cannot send one on a WebSocket): the `join`
//! message carries the token, the server's or one the room was given with `--room-token`. Each
//! connection may send messages of up to `signal_max_message` bytes, at most `signal_rate` a
//! second; more closes it. A peer whose outgoing queue fills up (it stopped reading) is dropped,
//! so one slow peer cannot grow the server's memory. A peer that vanishes without a close is found
//! by the pings the server sends, and the others are told it left.
//!
//! Rooms span instances: the room directory and the delivery of messages are the [`Bus`]'s (in
//! process, or Redis for several instances); this module admits peers and carries their
//! connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use ferry_bus::{Bus, Inbox};
use ferry_core::rate::Window;
use ferry_core::signal::{Admission, Conn, Delivery, Inbound, Outbound, Refusal, SERVER_PEER};
use ferry_rtc::RemoteCandidates;
use ferry_rtc::signaling::candidate_in;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;

use crate::AppState;

/// Messages queued for one peer before it counts as not reading.
const QUEUE: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(20);
/// Bad messages a peer may send before it is disconnected.
const MAX_ERRORS: u32 = 20;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/signal", get(upgrade))
}

/// This instance's signaling connections, and the bus that joins them to every other instance's.
pub struct Hub {
    admission: Admission,
    pub(crate) bus: Arc<dyn Bus>,
    inbox: Mutex<Option<Inbox>>,
    queues: Mutex<HashMap<Conn, mpsc::Sender<Outbound>>>,
    next: AtomicU64,
}

/// A connection's offer to the server, and where the candidates it trickles after it go.
type ServerPeer = Option<RemoteCandidates>;

/// The room and peer id a connection joined as.
type Joined = Option<(String, String)>;

impl Hub {
    pub fn new(admission: Admission, bus: Arc<dyn Bus>, inbox: Inbox) -> Hub {
        Hub {
            admission,
            bus,
            inbox: Mutex::new(Some(inbox)),
            queues: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Hands what the bus brings to this instance's connections, until the bus closes.
    pub fn start(self: &Arc<Self>) {
        let Some(mut inbox) = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(d) = inbox.deliveries.recv().await {
                let Some(hub) = hub.upgrade() else { return };
                hub.deliver(d);
            }
        });
    }

    /// Queues a delivery; a connection whose queue is full is cut off (its reader sees the queue
    /// closed and leaves).
    fn deliver(&self, (conn, msg): Delivery) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let full = queues.get(&conn).is_some_and(|q| q.try_send(msg).is_err());
        if full {
            tracing::info!(conn, "dropping a signaling peer that stopped reading");
            queues.remove(&conn);
        }
    }

    /// One message from `conn`, which has `joined` (or not yet).
    async fn handle(&self, conn: Conn, joined: &mut Joined, msg: Inbound) {
        let result = match (msg, joined.as_ref()) {
            (Inbound::Join { .. }, Some(_)) => Err(Refusal::AlreadyJoined.into()),
            (Inbound::Join { room, role, peer_id, token }, None) => {
                if let Err(e) = self.admission.check(&room, peer_id.as_deref(), token.as_deref()) {
                    return self.deliver((conn, e));
                }
                // Generated ids end with the instance's name: unique across instances.
                let id = peer_id.unwrap_or_else(|| format!("p{conn}-{}", self.bus.instance()));
                let result = self.bus.join(conn, &room, role, &id).await;
                if result.is_ok() {
                    *joined = Some((room, id));
                }
                result
            }
            (Inbound::Leave, _) => match joined.take() {
                Some((room, id)) => self.bus.leave(conn, &room, &id).await,
                None => Ok(()),
            },
            (Inbound::Signal { .. } | Inbound::PeerMessage { .. }, None) => Err(Refusal::NotJoined.into()),
            (Inbound::Signal { to, data }, Some((room, id))) => {
                let m = Outbound::Signal { from: id.clone(), data };
                self.bus.send(conn, room, id, &to, &m).await
            }
            (Inbound::PeerMessage { to, payload }, Some((room, id))) => {
                let m = Outbound::PeerMessage { from: id.clone(), payload };
                self.bus.send(conn, room, id, &to, &m).await
            }
        };
        if let Err(e) = result {
            self.deliver((conn, e.outbound()));
        }
    }
}

async fn upgrade(State(st): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    let max = st.config.signal_max_message;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| serve(st, socket))
}

async fn serve(st: Arc<AppState>, socket: WebSocket) {
    let hub = &st.signal;
    st.metrics.signal_connections.inc();
    let conn = hub.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Outbound>(QUEUE);
    hub.queues.lock().unwrap_or_else(|p| p.into_inner()).insert(conn, tx);
    let (mut sink, mut stream) = socket.split();
    let mut rate = Window::new(st.config.signal_rate, Duration::from_secs(1));
    let mut errors = 0;
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut pong_due: Option<Instant> = None;
    let mut server_peer: ServerPeer = None;
    let mut joined: Joined = None;
    let close = loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break Some((1008, "not reading")) };
                let text = serde_json::to_string(&out).unwrap_or_default();
                if sink.send(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                    break None;
                }
            }
            _ = ping.tick() => {
                if pong_due.is_some_and(|due| Instant::now() > due) {
                    break Some((1001, "no answer to pings"));
                }
                pong_due.get_or_insert(Instant::now() + 2 * PING_EVERY);
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
            _ = st.shutdown.cancelled() => break Some((1001, "the server is stopping")),
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    // Closed, reset, or a message over the size limit.
                    Some(Err(_)) | None => break None,
                };
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Pong(_) => {
                        pong_due = None;
                        continue;
                    }
                    Message::Close(_) => break None,
                    Message::Ping(_) => continue,
                    Message::Binary(_) => {
                        hub.deliver((conn, Outbound::error("invalid_message", "signaling messages are JSON text")));
                        errors += 1;
                        if errors > MAX_ERRORS { break Some((1008, "too many bad messages")) }
                        continue;
                    }
                };
                if !rate.hit(Instant::now()) {
                    break Some((1008, "too many messages"));
                }
                match serde_json::from_str::<Inbound>(&text) {
                    Ok(Inbound::Signal { to, data }) if to == SERVER_PEER => {
                        let reply = to_server(&st, joined.as_ref().map(|(room, _)| room.as_str()), &mut server_peer, data).await;
                        if let Some(m) = reply {
                            hub.deliver((conn, m));
                        }
                    }
                    // Handled in turn: what one connection sends reaches the bus in its order.
                    Ok(inbound) => hub.handle(conn, &mut joined, inbound).await,
                    Err(e) => {
                        hub.deliver((conn, Outbound::error("invalid_message", format!("not a signaling message: {e}"))));
                        errors += 1;
                        if errors > MAX_ERRORS { break Some((1008, "too many bad messages")) }
                    }
                }
            }
        }
    };
    hub.queues.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn);
    if let Some((room, id)) = joined
        && let Err(e) = hub.bus.leave(conn, &room, &id).await
    {
        tracing::debug!(error = %e, "leaving the room waits for the bus");
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// A `signal` for the server itself: an offer is answered (the server becomes a receiving peer,
/// [`crate::rtc`]; `name`, `processor` and `resume` beside the offer are as in `POST
/// /v1/rtc/offer`'s query, and the answer carries `resume`); candidates trickled after it are
/// added. Returns what to tell the sender.
async fn to_server(
    st: &Arc<AppState>,
    room: Option<&str>,
    peer: &mut ServerPeer,
    data: serde_json::Value,
) -> Option<Outbound> {
    let Some(room) = room else {
        return Some(Refusal::NotJoined.outbound());
    };
    if let Some(candidate) = candidate_in(&data) {
        let Some(candidates) = peer.as_ref() else {
            return Some(Outbound::error("invalid_signal", "a candidate before any offer"));
        };
        return match candidates.add(&candidate).await {
            Ok(()) => None,
            // Browsers offer candidates a server cannot use (mDNS names): not the peer's fault.
            Err(e) => {
                tracing::debug!(error = %e, "skipping a trickled candidate");
                None
            }
        };
    }
    let options = match serde_json::from_value::<crate::rtc::OfferOptions>(data.clone()) {
        Ok(o) => o,
        Err(e) => {
            return Some(Outbound::error("invalid_signal", format!("name, processor and resume are strings: {e}")));
        }
    };
    let offer = match serde_json::from_value::<ferry_rtc::Description>(data) {
        Ok(d) if d.kind == "offer" => d,
        _ => {
            return Some(Outbound::error(
                "invalid_signal",
                "the server takes an offer ({\"type\":\"offer\",\"sdp\":…}) or a candidate",
            ));
        }
    };
    match crate::rtc::accept_offer(Arc::clone(st), offer, options, &format!("room/{room}")).await {
        Ok(accepted) => {
            *peer = Some(accepted.candidates);
            let answer = accepted.answer;
            let data = serde_json::json!({ "type": answer.kind, "sdp": answer.sdp, "resume": accepted.resume });
            Some(Outbound::Signal { from: SERVER_PEER.to_owned(), data })
        }
        Err(e) => Some(Outbound::error(e.code, e.message)),
    }
}
