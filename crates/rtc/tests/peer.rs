//! Two real peers on 127.0.0.1 UDP sockets: SDP exchanged by hand, channels opened, bytes moved in
//! order with backpressure; and peers sharing one UDP port through a [`UdpMux`], with the address
//! it announces.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_move_bytes_in_order_over_loopback() {
    let config = PeerConfig::default();
    let (mut offerer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    assert!(offer.sdp.contains("127.0.0.1"), "a loopback host candidate is offered");
    let (mut answerer, answer) = Peer::answer(&config, &offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    let sending = next_channel(&mut offerer).await;
    let mut receiving = next_channel(&mut answerer).await;
    assert_eq!((sending.label(), receiving.label()), ("upload", "upload"));

    let count = 400u32;
    let writer = tokio::spawn({
        let tx = sending.sender();
        async move {
            for i in 0..count {
                let mut m = i.to_le_bytes().to_vec();
                m.resize(48 * 1024, (i % 251) as u8);
                tx.send(true, m).await.unwrap();
            }
        }
    });
    for i in 0..count {
        let m = tokio::time::timeout(Duration::from_secs(20), receiving.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled at message {i}"))
            .unwrap();
        assert!(m.binary);
        assert_eq!(m.data.len(), 48 * 1024);
        assert_eq!(u32::from_le_bytes(m.data[..4].try_into().unwrap()), i, "in order");
        assert!(m.data[4..].iter().all(|b| *b == (i % 251) as u8));
    }
    writer.await.unwrap();
    // Text messages too, both ways.
    let mut back = sending;
    receiving.send(false, b"{\"type\":\"ok\"}".to_vec()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), back.recv()).await.unwrap().unwrap();
    assert_eq!((m.binary, m.data.as_slice()), (false, &b"{\"type\":\"ok\"}"[..]));
}

/// A reader that stops taking messages and, before it reads on, writes (as a receiver answering
/// on its control channel does) must not deadlock its own connection: the write completes while
/// its inbox is full, and then every message still arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_a_full_inbox_can_still_write() {
    let config = PeerConfig::default();
    let (mut offerer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    let (mut answerer, answer) = Peer::answer(&config, &offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    let mut sending = next_channel(&mut offerer).await;
    let mut receiving = next_channel(&mut answerer).await;

    // Far more than a reader's inbox holds: the answerer's side fills up and stops reading.
    let count = 2000u32;
    let writer = tokio::spawn({
        let tx = sending.sender();
        async move {
            for i in 0..count {
                let mut m = i.to_le_bytes().to_vec();
                m.resize(1024, 0);
                tx.send(true, m).await.unwrap();
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(20), receiving.recv()).await.unwrap().unwrap();
    assert_eq!(u32::from_le_bytes(first.data[..4].try_into().unwrap()), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(Duration::from_secs(10), receiving.send(false, b"progress".to_vec()))
        .await
        .expect("a write while the inbox is full deadlocked the connection")
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sending.recv()).await.unwrap().unwrap();
    assert_eq!(m.data, b"progress");
    for i in 1..count {
        let m = tokio::time::timeout(Duration::from_secs(20), receiving.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled at message {i}"))
            .unwrap();
        assert_eq!(u32::from_le_bytes(m.data[..4].try_into().unwrap()), i, "in order");
    }
    writer.await.unwrap();
}

/// Peers that trickle: no candidate in either description, each side's candidates sent apart
/// (as they go over signaling) and added as they come; the connection still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_candidates_connect_peers_whose_descriptions_carry_none() {
    let strip = |d: &ferry_rtc::Description| ferry_rtc::Description {
        kind: d.kind.clone(),
        sdp: d.sdp.lines().filter(|l| !l.starts_with("a=candidate")).map(|l| format!("{l}\r\n")).collect(),
    };
    let config = PeerConfig::default();
    let (mut offerer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    let offered = offerer.local_candidates().to_vec();
    assert_eq!(offered.len(), 1, "one host candidate: {offered:?}");
    assert!(offered[0].candidate.starts_with("candidate:") && offered[0].candidate.contains("127.0.0.1"));
    assert!(offered[0].sdp_mid.is_some() && offered[0].sdp_m_line_index == Some(0));
    let (mut answerer, answer) = Peer::answer(&config, &strip(&offer)).await.unwrap();
    offerer.accept_answer(&strip(&answer)).await.unwrap();
    for c in answerer.local_candidates() {
        offerer.remote_candidates().add(c).await.unwrap();
    }
    for c in &offered {
        answerer.remote_candidates().add(c).await.unwrap();
    }
    let end = ferry_rtc::IceCandidate { candidate: String::new(), sdp_mid: None, sdp_m_line_index: None };
    answerer.remote_candidates().add(&end).await.unwrap();
    let mdns = ferry_rtc::IceCandidate { candidate: "candidate:1 1 udp 1 x.local 9 typ host".into(), ..end };
    assert!(answerer.remote_candidates().add(&mdns).await.is_err(), "a name, not an address, is refused");

    let sending = next_channel(&mut offerer).await;
    let mut receiving = next_channel(&mut answerer).await;
    sending.send(true, b"trickled".to_vec()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), receiving.recv()).await.unwrap().unwrap();
    assert_eq!(m.data, b"trickled");
}

/// An empty message is legal on a data channel (RFC 8831 §6.6 sends it as one 0x00 byte under
/// the "empty" PPI) and must neither be lost nor hold up what follows it on that channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_messages_arrive_and_do_not_block_the_channel() {
    let config = PeerConfig::default();
    let (mut offerer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    let (mut answerer, answer) = Peer::answer(&config, &offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    let mut a = next_channel(&mut offerer).await;
    let mut b = next_channel(&mut answerer).await;

    let sent: Vec<(bool, Vec<u8>)> =
        vec![(true, vec![]), (true, b"after".to_vec()), (false, vec![]), (true, vec![0]), (false, b"text".to_vec())];
    for (binary, data) in &sent {
        a.send(*binary, data.clone()).await.unwrap();
    }
    for (binary, data) in &sent {
        let m = tokio::time::timeout(Duration::from_secs(10), b.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled before {data:?}"))
            .unwrap();
        assert_eq!((m.binary, &m.data), (*binary, data));
    }
    // The other way too: an echo of an empty message, then an answer.
    b.send(true, vec![]).await.unwrap();
    b.send(false, b"{\"type\":\"complete\"}".to_vec()).await.unwrap();
    for expected in [&b""[..], &b"{\"type\":\"complete\"}"[..]] {
        let m = tokio::time::timeout(Duration::from_secs(10), a.recv()).await.expect("stalled").unwrap();
        assert_eq!(m.data, expected);
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
