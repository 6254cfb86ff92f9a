//! The signaling protocol (`/v1/signal`, a WebSocket of JSON text messages with a `type`), and
//! the rooms it keeps: who is in which room, and where each message goes.
//!
//! A peer first sends `join` (`room`, `role`, optionally its `peer_id` and a `token`) and gets
//! `joined` with its id and the peers already there; the others get `peer_joined`. `signal`
//! (SDP and ICE candidates) and `peer_message` (application messages such as a `job_request`)
//! go to one peer of the same room, which receives them with `from` set. A peer that leaves or
//! vanishes is announced with `peer_left`. A peer never reaches another room.
//!
//! [`Rooms`] is the routing as a state machine: the server's socket tasks feed it events and
//! deliver what it returns, so every rule here is tested without a socket.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Worker,
    Peer,
}

/// What a peer sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Inbound {
    Join {
        room: String,
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Signal {
        to: String,
        data: Value,
    },
    PeerMessage {
        to: String,
        payload: Value,
    },
    Leave,
}

/// A peer as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub role: Role,
}

/// What a peer receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound {
    Joined { room: String, peer_id: String, peers: Vec<PeerInfo> },
    PeerJoined { peer_id: String, role: Role },
    PeerLeft { peer_id: String },
    Signal { from: String, data: Value },
    PeerMessage { from: String, payload: Value },
    Error { code: String, message: String },
}

impl Outbound {
    pub fn error(code: &str, message: impl Into<String>) -> Outbound {
        Outbound::Error { code: code.to_owned(), message: message.into() }
    }
}

/// The peer id the server itself answers to in every room: a `signal` with an offer sent `to`
/// it makes the server a receiving peer (files sent to it become objects). No peer may take it.
pub const SERVER_PEER: &str = "ferry";

/// Room names: 1 to 128 of letters, digits, `.`, `_` and `-`.
pub fn valid_room(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Peer ids: 1 to 64 of letters, digits, `_` and `-`.
pub fn valid_peer_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// A connection, as the server numbers them.
pub type Conn = u64;

/// Who may join a room: the server's tokens always; a room with tokens of its own takes those too.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub server_tokens: Vec<String>,
    pub room_tokens: BTreeMap<String, Vec<String>>,
    pub max_peers_per_room: usize,
}

impl Admission {
    fn admits(&self, room: &str, token: Option<&str>) -> bool {
        let Some(token) = token else { return false };
        // Every candidate is compared, so the time taken does not say which one nearly matched.
        let eq = |a: &str| constant_time_eq(a.as_bytes(), token.as_bytes());
        let server = self.server_tokens.iter().fold(false, |acc, t| eq(t) | acc);
        let own = self.room_tokens.get(room).is_some_and(|ts| ts.iter().fold(false, |acc, t| eq(t) | acc));
        server | own
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug)]
struct Member {
    room: String,
    peer_id: String,
}

/// Every room and its peers.
#[derive(Debug, Default)]
pub struct Rooms {
    admission: Admission,
    rooms: HashMap<String, BTreeMap<String, (Conn, Role)>>,
    members: HashMap<Conn, Member>,
    next_id: u64,
}

/// A message for one connection.
pub type Delivery = (Conn, Outbound);

impl Rooms {
    pub fn new(admission: Admission) -> Rooms {
        Rooms { admission, ..Rooms::default() }
    }

    /// Handles one message from `conn`; returns what to send, and to whom.
    pub fn handle(&mut self, conn: Conn, msg: Inbound) -> Vec<Delivery> {
        match msg {
            Inbound::Join { room, role, peer_id, token } => self.join(conn, room, role, peer_id, token.as_deref()),
            Inbound::Leave => self.leave(conn),
            Inbound::Signal { to, data } => self.relay(conn, &to, |from| Outbound::Signal { from, data }),
            Inbound::PeerMessage { to, payload } => {
                self.relay(conn, &to, |from| Outbound::PeerMessage { from, payload })
            }
        }
    }

    fn join(
        &mut self,
        conn: Conn,
        room: String,
        role: Role,
        peer_id: Option<String>,
        token: Option<&str>,
    ) -> Vec<Delivery> {
        if self.members.contains_key(&conn) {
            return vec![(conn, Outbound::error("already_joined", "leave the room before joining another"))];
        }
        if !valid_room(&room) {
            return vec![(
                conn,
                Outbound::error("invalid_room", "room names are 1 to 128 letters, digits, '.', '_', '-'"),
            )];
        }
        if !self.admission.admits(&room, token) {
            return vec![(conn, Outbound::error("unauthorized", "this room needs a valid token"))];
        }
        let peers = self.rooms.entry(room.clone()).or_default();
        if self.admission.max_peers_per_room > 0 && peers.len() >= self.admission.max_peers_per_room {
            return vec![(conn, Outbound::error("room_full", "the room has as many peers as it may"))];
        }
        let peer_id = match peer_id {
            Some(id) if !valid_peer_id(&id) => {
                return vec![(
                    conn,
                    Outbound::error("invalid_peer_id", "peer ids are 1 to 64 letters, digits, '_', '-'"),
                )];
            }
            Some(id) if id == SERVER_PEER => {
                return vec![(conn, Outbound::error("peer_id_taken", format!("{id} is the server's own peer id")))];
            }
            Some(id) if peers.contains_key(&id) => {
                return vec![(conn, Outbound::error("peer_id_taken", format!("{id} is already in the room")))];
            }
            Some(id) => id,
            None => {
                self.next_id += 1;
                format!("p{}-{}", self.next_id, conn)
            }
        };
        let others: Vec<PeerInfo> =
            peers.iter().map(|(id, (_, role))| PeerInfo { peer_id: id.clone(), role: *role }).collect();
        let mut out: Vec<Delivery> =
            peers.values().map(|(c, _)| (*c, Outbound::PeerJoined { peer_id: peer_id.clone(), role })).collect();
        peers.insert(peer_id.clone(), (conn, role));
        self.members.insert(conn, Member { room: room.clone(), peer_id: peer_id.clone() });
        out.insert(0, (conn, Outbound::Joined { room, peer_id, peers: others }));
        out
    }

    /// `conn` left, or its connection went away: the others in its room are told.
    pub fn leave(&mut self, conn: Conn) -> Vec<Delivery> {
        let Some(m) = self.members.remove(&conn) else { return Vec::new() };
        let Some(peers) = self.rooms.get_mut(&m.room) else { return Vec::new() };
        peers.remove(&m.peer_id);
        let out = peers.values().map(|(c, _)| (*c, Outbound::PeerLeft { peer_id: m.peer_id.clone() })).collect();
        if peers.is_empty() {
            self.rooms.remove(&m.room);
        }
        out
    }

    fn relay(&mut self, conn: Conn, to: &str, make: impl FnOnce(String) -> Outbound) -> Vec<Delivery> {
        let Some(m) = self.members.get(&conn) else {
            return vec![(conn, Outbound::error("not_joined", "join a room first"))];
        };
        match self.rooms.get(&m.room).and_then(|peers| peers.get(to)) {
            Some((target, _)) if *target != conn => vec![(*target, make(m.peer_id.clone()))],
            Some(_) => vec![(conn, Outbound::error("peer_not_found", "a peer cannot send to itself"))],
            None => vec![(conn, Outbound::error("peer_not_found", format!("no peer {to:?} in this room")))],
        }
    }

    /// The room and peer id `conn` joined as, if it has.
    pub fn member(&self, conn: Conn) -> Option<(&str, &str)> {
        self.members.get(&conn).map(|m| (m.room.as_str(), m.peer_id.as_str()))
    }

    /// The peers of `room` (for tests and status).
    pub fn peers(&self, room: &str) -> Vec<String> {
        self.rooms.get(room).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rooms() -> Rooms {
        Rooms::new(Admission {
            server_tokens: vec!["server".into()],
            room_tokens: BTreeMap::from([("lab".to_owned(), vec!["lab-token".to_owned()])]),
            max_peers_per_room: 3,
        })
    }

    fn join(room: &str, id: Option<&str>, token: &str) -> Inbound {
        Inbound::Join { room: room.into(), role: Role::Peer, peer_id: id.map(Into::into), token: Some(token.into()) }
    }

    fn code(d: &[Delivery]) -> &str {
        match d {
            [(_, Outbound::Error { code, .. })] => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn joining_announces_and_lists_peers() {
        let mut r = rooms();
        let d = r.handle(1, join("lab", Some("a"), "server"));
        assert_eq!(d, vec![(1, Outbound::Joined { room: "lab".into(), peer_id: "a".into(), peers: vec![] })]);
        let d = r.handle(2, join("lab", Some("b"), "lab-token"));
        assert_eq!(d.len(), 2);
        assert!(matches!(&d[0], (2, Outbound::Joined { peers, .. }) if peers.len() == 1 && peers[0].peer_id == "a"));
        assert_eq!(d[1], (1, Outbound::PeerJoined { peer_id: "b".into(), role: Role::Peer }));
        // A generated id when none is asked for.
        let d = r.handle(3, join("lab", None, "server"));
        assert!(matches!(&d[0], (3, Outbound::Joined { peer_id, .. }) if valid_peer_id(peer_id)));
        assert_eq!(code(&r.handle(4, join("lab", None, "server"))), "room_full");
    }

    #[test]
    fn tokens_ids_and_names_are_checked() {
        let mut r = rooms();
        assert_eq!(code(&r.handle(1, join("lab", None, "wrong"))), "unauthorized");
        assert_eq!(
            code(&r.handle(1, join("other", None, "lab-token"))),
            "unauthorized",
            "a room token opens only its room"
        );
        let no_token = Inbound::Join { room: "lab".into(), role: Role::Peer, peer_id: None, token: None };
        assert_eq!(code(&r.handle(1, no_token)), "unauthorized");
        assert_eq!(code(&r.handle(1, join("bad room", None, "server"))), "invalid_room");
        assert_eq!(code(&r.handle(1, join("lab", Some("x/y"), "server"))), "invalid_peer_id");
        r.handle(1, join("lab", Some("a"), "server"));
        assert_eq!(code(&r.handle(2, join("lab", Some("a"), "server"))), "peer_id_taken");
        assert_eq!(code(&r.handle(2, join("lab", Some(SERVER_PEER), "server"))), "peer_id_taken", "reserved");
        assert_eq!(r.member(1), Some(("lab", "a")));
        assert_eq!(r.member(2), None);
        assert_eq!(code(&r.handle(1, join("lab2", Some("z"), "server"))), "already_joined");
    }

    #[test]
    fn messages_reach_one_peer_of_the_same_room_only() {
        let mut r = rooms();
        r.handle(1, join("lab", Some("a"), "server"));
        r.handle(2, join("lab", Some("b"), "server"));
        r.handle(3, join("elsewhere", Some("c"), "server"));
        let sdp = json!({"type": "offer", "sdp": "v=0"});
        assert_eq!(
            r.handle(1, Inbound::Signal { to: "b".into(), data: sdp.clone() }),
            vec![(2, Outbound::Signal { from: "a".into(), data: sdp })]
        );
        let job = json!({"app_message_type": "job_request"});
        assert_eq!(
            r.handle(2, Inbound::PeerMessage { to: "a".into(), payload: job.clone() }),
            vec![(1, Outbound::PeerMessage { from: "b".into(), payload: job })]
        );
        assert_eq!(code(&r.handle(1, Inbound::Signal { to: "c".into(), data: json!(1) })), "peer_not_found");
        assert_eq!(code(&r.handle(1, Inbound::Signal { to: "a".into(), data: json!(1) })), "peer_not_found");
        assert_eq!(code(&r.handle(9, Inbound::Signal { to: "a".into(), data: json!(1) })), "not_joined");
    }

    #[test]
    fn leaving_or_vanishing_is_announced_and_frees_the_id() {
        let mut r = rooms();
        r.handle(1, join("lab", Some("a"), "server"));
        r.handle(2, join("lab", Some("b"), "server"));
        assert_eq!(r.leave(2), vec![(1, Outbound::PeerLeft { peer_id: "b".into() })]);
        assert!(r.leave(2).is_empty(), "twice is nothing");
        assert_eq!(r.peers("lab"), vec!["a"]);
        assert!(matches!(&r.handle(3, join("lab", Some("b"), "server"))[0], (3, Outbound::Joined { .. })));
        r.handle(1, Inbound::Leave);
        r.leave(3);
        assert!(r.peers("lab").is_empty());
    }

    #[test]
    fn wire_shapes() {
        let m: Inbound = serde_json::from_str(r#"{"type":"join","room":"r","role":"worker"}"#).unwrap();
        assert_eq!(m, Inbound::Join { room: "r".into(), role: Role::Worker, peer_id: None, token: None });
        assert!(serde_json::from_str::<Inbound>(r#"{"type":"join","room":"r","role":"boss"}"#).is_err());
        assert!(serde_json::from_str::<Inbound>(r#"{"type":"signal","to":"x"}"#).is_err());
        let out = serde_json::to_value(Outbound::PeerLeft { peer_id: "a".into() }).unwrap();
        assert_eq!(out, json!({"type": "peer_left", "peer_id": "a"}));
    }
}
