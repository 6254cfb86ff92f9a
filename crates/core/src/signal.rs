//! The signaling protocol (`/v1/signal`, a WebSocket of JSON text messages with a `type`), and
//! the rooms it keeps: who is in which room, and where each message goes.
//!
//! A peer first sends `join` (`room`, `role`, optionally its `peer_id` and a `token`) and gets
//! `joined` with its id and the peers already there; the others get `peer_joined`. `signal`
//! (SDP and ICE candidates) and `peer_message` (application messages such as a `job_request`)
//! go to one peer of the same room, which receives them with `from` set. A peer that leaves or
//! vanishes is announced with `peer_left`. A peer never reaches another room.
//!
//! [`Admission`] decides who may join (names, tokens, the reserved id), on the instance the peer
//! is connected to. [`Rooms`] is the room directory and its routing as a state machine: who is in
//! which room and where each message goes, with deliveries returned rather than sent, so every
//! rule is tested without a socket. The in-process bus drives it; the Redis bus keeps the same
//! rules in its scripts, and both pass one conformance suite.

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

    /// Whether a peer may join `room` as `peer_id` (or a generated id) with `token`: the error to
    /// answer if not. Whether the id is free and the room has room is the directory's to say.
    pub fn check(&self, room: &str, peer_id: Option<&str>, token: Option<&str>) -> Result<(), Outbound> {
        if !valid_room(room) {
            return Err(Outbound::error("invalid_room", "room names are 1 to 128 letters, digits, '.', '_', '-'"));
        }
        if !self.admits(room, token) {
            return Err(Outbound::error("unauthorized", "this room needs a valid token"));
        }
        match peer_id {
            Some(id) if !valid_peer_id(id) => {
                Err(Outbound::error("invalid_peer_id", "peer ids are 1 to 64 letters, digits, '_', '-'"))
            }
            Some(id) if id == SERVER_PEER => {
                Err(Outbound::error("peer_id_taken", format!("{id} is the server's own peer id")))
            }
            _ => Ok(()),
        }
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

/// Every room and its peers, as one directory.
#[derive(Debug, Default)]
pub struct Rooms {
    max_peers_per_room: usize,
    rooms: HashMap<String, BTreeMap<String, (Conn, Role)>>,
    members: HashMap<Conn, Member>,
}

/// A message for one connection.
pub type Delivery = (Conn, Outbound);

/// Why the directory refused a join or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("leave the room before joining another")]
    AlreadyJoined,
    #[error("{0} is already in the room")]
    Taken(String),
    #[error("the room has as many peers as it may")]
    Full,
    #[error("join a room first")]
    NotJoined,
    #[error("no peer {0:?} in this room")]
    NotFound(String),
    #[error("a peer cannot send to itself")]
    ToSelf,
}

impl Refusal {
    /// The error the peer is sent.
    pub fn outbound(&self) -> Outbound {
        let code = match self {
            Refusal::AlreadyJoined => "already_joined",
            Refusal::Taken(_) => "peer_id_taken",
            Refusal::Full => "room_full",
            Refusal::NotJoined => "not_joined",
            Refusal::NotFound(_) | Refusal::ToSelf => "peer_not_found",
        };
        Outbound::error(code, self.to_string())
    }
}

impl Rooms {
    /// Rooms of at most `max_peers_per_room` peers (0: no limit).
    pub fn new(max_peers_per_room: usize) -> Rooms {
        Rooms { max_peers_per_room, ..Rooms::default() }
    }

    /// `conn` joins `room` as `peer_id` (admitted already): it gets `joined` with the peers there
    /// before them, and they get `peer_joined`. An id taken or a full room is refused.
    pub fn join(&mut self, conn: Conn, room: &str, role: Role, peer_id: &str) -> Result<Vec<Delivery>, Refusal> {
        if self.members.contains_key(&conn) {
            return Err(Refusal::AlreadyJoined);
        }
        let peers = self.rooms.entry(room.to_owned()).or_default();
        if peers.contains_key(peer_id) {
            return Err(Refusal::Taken(peer_id.to_owned()));
        }
        if self.max_peers_per_room > 0 && peers.len() >= self.max_peers_per_room {
            if peers.is_empty() {
                self.rooms.remove(room);
            }
            return Err(Refusal::Full);
        }
        let others: Vec<PeerInfo> =
            peers.iter().map(|(id, (_, role))| PeerInfo { peer_id: id.clone(), role: *role }).collect();
        let mut out =
            vec![(conn, Outbound::Joined { room: room.to_owned(), peer_id: peer_id.to_owned(), peers: others })];
        out.extend(peers.values().map(|(c, _)| (*c, Outbound::PeerJoined { peer_id: peer_id.to_owned(), role })));
        peers.insert(peer_id.to_owned(), (conn, role));
        self.members.insert(conn, Member { room: room.to_owned(), peer_id: peer_id.to_owned() });
        Ok(out)
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

    /// A message from `conn` to peer `to` of its room, made by `make` from the sender's id.
    pub fn relay(&self, conn: Conn, to: &str, make: impl FnOnce(String) -> Outbound) -> Result<Delivery, Refusal> {
        let m = self.members.get(&conn).ok_or(Refusal::NotJoined)?;
        match self.rooms.get(&m.room).and_then(|peers| peers.get(to)) {
            Some((target, _)) if *target != conn => Ok((*target, make(m.peer_id.clone()))),
            Some(_) => Err(Refusal::ToSelf),
            None => Err(Refusal::NotFound(to.to_owned())),
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

    /// Admission, then the directory: what a server instance does with each message.
    struct Server {
        admission: Admission,
        rooms: Rooms,
        next: u64,
    }

    impl Server {
        fn handle(&mut self, conn: Conn, msg: Inbound) -> Vec<Delivery> {
            match msg {
                Inbound::Join { room, role, peer_id, token } => {
                    if let Err(e) = self.admission.check(&room, peer_id.as_deref(), token.as_deref()) {
                        return vec![(conn, e)];
                    }
                    self.next += 1;
                    let id = peer_id.unwrap_or_else(|| format!("p{}", self.next));
                    self.rooms.join(conn, &room, role, &id)
                }
                Inbound::Leave => Ok(self.rooms.leave(conn)),
                Inbound::Signal { to, data } => {
                    self.rooms.relay(conn, &to, |from| Outbound::Signal { from, data }).map(|d| vec![d])
                }
                Inbound::PeerMessage { to, payload } => {
                    self.rooms.relay(conn, &to, |from| Outbound::PeerMessage { from, payload }).map(|d| vec![d])
                }
            }
            .unwrap_or_else(|r| vec![(conn, r.outbound())])
        }
        fn leave(&mut self, conn: Conn) -> Vec<Delivery> {
            self.rooms.leave(conn)
        }
        fn member(&self, conn: Conn) -> Option<(&str, &str)> {
            self.rooms.member(conn)
        }
        fn peers(&self, room: &str) -> Vec<String> {
            self.rooms.peers(room)
        }
    }

    fn rooms() -> Server {
        let admission = Admission {
            server_tokens: vec!["server".into()],
            room_tokens: BTreeMap::from([("lab".to_owned(), vec!["lab-token".to_owned()])]),
        };
        Server { admission, rooms: Rooms::new(3), next: 0 }
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
