//! Many peers on one UDP port: two connections at once through one [`UdpMux`] on 127.0.0.1, each
//! with its own data channel and bytes, and the address a mux announces.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferry_rtc::{Peer, PeerConfig, PeerError, PeerEvent, UdpMux};

async fn next_channel(peer: &mut Peer) -> ferry_rtc::DataChannel {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), peer.next_event()).await.expect("no channel in 20 s") {
            Some(PeerEvent::Channel(c)) => return c,
            Some(PeerEvent::Connected) => continue,
            Some(PeerEvent::Disconnected) | None => panic!("disconnected"),
        }
    }
}

/// The `host` candidates' addresses in a description.
fn host_candidates(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:") && l.contains("typ host"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(SocketAddr::new(f.get(4)?.parse().ok()?, f.get(5)?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_at_once_share_one_port_and_keep_their_own_bytes() {
    let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), None, 8).await.unwrap();
    let shared = PeerConfig { mux: Some(mux.clone()), ..PeerConfig::default() };
    let own = PeerConfig::default();
    let mut pairs = Vec::new();
    for _ in 0..2 {
        let (offerer, offer) = Peer::offer(&own, &["upload"]).await.unwrap();
        let (answerer, answer) = Peer::answer(&shared, &offer).await.unwrap();
        assert_eq!(host_candidates(&answer.sdp), [mux.local_addr().unwrap()], "the mux's port, and only it");
        pairs.push((offerer, answerer, answer));
    }
    assert_eq!(mux.peers(), 2);
    let mut flows = Vec::new();
    for (n, (mut offerer, mut answerer, answer)) in pairs.into_iter().enumerate() {
        offerer.accept_answer(&answer).await.unwrap();
        flows.push(tokio::spawn(async move {
            let sending = next_channel(&mut offerer).await;
            let mut receiving = next_channel(&mut answerer).await;
            let tag = n as u8 + 1;
            for i in 0..200u32 {
                let mut m = i.to_le_bytes().to_vec();
                m.resize(16 * 1024, tag);
                sending.send(true, m).await.unwrap();
            }
            for i in 0..200u32 {
                let m = tokio::time::timeout(Duration::from_secs(20), receiving.recv()).await.unwrap().unwrap();
                assert_eq!(u32::from_le_bytes(m.data[..4].try_into().unwrap()), i, "in order");
                assert!(m.data[4..].iter().all(|b| *b == tag), "peer {tag} got only its own bytes");
            }
            (offerer, answerer)
        }));
    }
    let mut peers = Vec::new();
    for f in flows {
        peers.push(f.await.unwrap());
    }
    drop(peers);
    for _ in 0..100 {
        if mux.peers() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the peers' routes outlived them: {} left", mux.peers());
}

#[tokio::test]
async fn a_mux_announces_its_public_address_and_refuses_peers_beyond_its_limit() {
    let public: IpAddr = "198.51.100.7".parse().unwrap();
    let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), Some(public), 1).await.unwrap();
    let port = mux.local_addr().unwrap().port();
    let shared = PeerConfig { mux: Some(mux), ..PeerConfig::default() };
    let (_offerer, offer) = Peer::offer(&PeerConfig::default(), &["upload"]).await.unwrap();
    let (_answerer, answer) = Peer::answer(&shared, &offer).await.unwrap();
    assert_eq!(host_candidates(&answer.sdp), [SocketAddr::new(public, port)]);
    assert!(!answer.sdp.contains("127.0.0.1"), "the bound address is not offered");
    match Peer::answer(&shared, &offer).await {
        Err(PeerError::Busy(1)) => {}
        other => panic!("a second peer on a port for one: {:?}", other.map(|(_, a)| a)),
    }
}

#[tokio::test]
async fn a_wildcard_bind_needs_an_address_to_announce() {
    let e = UdpMux::bind("0.0.0.0:0".parse().unwrap(), None, 0).await.unwrap_err();
    assert!(matches!(e, PeerError::Config(_)), "{e}");
    let per_peer = PeerConfig { bind: "0.0.0.0".parse().unwrap(), ..PeerConfig::default() };
    let e = Peer::offer(&per_peer, &["upload"]).await.err().unwrap();
    assert!(matches!(e, PeerError::Config(_)), "{e}");
}
