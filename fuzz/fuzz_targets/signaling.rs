//! Any sequence of signaling messages (as text, parsed as the server parses them) from a few
//! connections, admitted and routed as an instance does: never panics; a delivery only ever goes
//! to a connection in the sender's room (or back to the sender); every peer id is unique within
//! its room.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use ferry_core::signal::{Admission, Inbound, Outbound, Rooms};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|steps: Vec<(u8, bool, String)>| {
    let admission = Admission {
        server_tokens: vec!["server".into()],
        room_tokens: BTreeMap::from([("lab".into(), vec!["lab-token".into()])]),
    };
    let mut rooms = Rooms::new(3);
    for (conn, leave, text) in steps.into_iter().take(200) {
        let conn = u64::from(conn % 6);
        let deliveries = if leave {
            rooms.leave(conn)
        } else {
            let Ok(msg) = serde_json::from_str::<Inbound>(&text) else { continue };
            let result = match msg {
                Inbound::Join { room, role, peer_id, token } => {
                    match admission.check(&room, peer_id.as_deref(), token.as_deref()) {
                        Ok(()) => rooms.join(conn, &room, role, &peer_id.unwrap_or_else(|| format!("p{conn}"))),
                        Err(e) => Ok(vec![(conn, e)]),
                    }
                }
                Inbound::Leave => Ok(rooms.leave(conn)),
                Inbound::Signal { to, data } => rooms.relay(conn, &to, |from| Outbound::Signal { from, data }).map(|d| vec![d]),
                Inbound::PeerMessage { to, payload } => {
                    rooms.relay(conn, &to, |from| Outbound::PeerMessage { from, payload }).map(|d| vec![d])
                }
            };
            result.unwrap_or_else(|r| vec![(conn, r.outbound())])
        };
        let room = rooms.member(conn).map(|(r, _)| r.to_owned());
        for (to, out) in &deliveries {
            if *to == conn {
                continue;
            }
            let their_room = rooms.member(*to).map(|(r, _)| r.to_owned());
            // After a leave the sender is in no room; its old room's members are told.
            if let (Some(mine), Outbound::Signal { .. } | Outbound::PeerMessage { .. }) = (&room, out) {
                assert_eq!(their_room.as_ref(), Some(mine), "a message crossed rooms");
            }
        }
        let mut seen: HashMap<(String, String), u64> = HashMap::new();
        for c in 0..6u64 {
            if let Some((r, id)) = rooms.member(c) {
                assert!(seen.insert((r.to_owned(), id.to_owned()), c).is_none(), "peer id {id} twice in {r}");
            }
        }
    }
});
