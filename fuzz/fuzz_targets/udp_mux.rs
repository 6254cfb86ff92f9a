//! Any datagrams, from any sources, on a shared WebRTC port, with peers coming and going:
//! routing never panics, a datagram only ever goes to a peer that is there, and an ICE check is
//! routed by the ufrag it names whatever address it comes from.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;

use ferry_rtc::mux::Routes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|steps: Vec<(u8, u8, Vec<u8>)>| {
    let mut routes = Routes::default();
    let mut live = HashSet::new();
    for (op, port, datagram) in steps.into_iter().take(300) {
        let peer = u64::from(op % 8);
        let source = SocketAddr::from(([127, 0, 0, 1], 5000 + u16::from(port % 16)));
        match op / 8 % 4 {
            0 => {
                if routes.add(peer, &format!("u{peer}")) {
                    live.insert(peer);
                }
            }
            1 => {
                routes.remove(peer);
                live.remove(&peer);
            }
            2 => routes.learn(peer, source),
            _ => {
                if let Some(to) = routes.route(&datagram, source) {
                    assert!(live.contains(&to), "routed to {to}, who is gone");
                }
            }
        }
        assert_eq!(routes.len(), live.len());
    }
});
