//! `--ice-server` against a real STUN/TURN server: coturn on loopback, as a STUN server and as
//! a TURN relay with long-term credentials.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_rtc::stun::reflexive_address;
use ferry_rtc::{DataChannel, IceServer, Peer, PeerConfig, PeerError, PeerEvent};
use tokio::net::UdpSocket;

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free for UDP and TCP both: coturn listens on both at `--listening-port`.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// coturn on 127.0.0.1 with `mode` flags, once it answers STUN. A port is only free until
/// someone takes it: a coturn that exits or stays silent is started again on another.
async fn coturn(mode: &[&str]) -> (Coturn, u16) {
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--listening-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args(mode)
            .args(["--log-file=stdout", "--simple-log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coturn's turnserver is needed (scripts/test installs it)");
        let mut guard = Coturn(child);
        let server = IceServer::stun("127.0.0.1", port);
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && guard.0.try_wait().unwrap().is_none() {
            if reflexive_address(&probe, &server, Duration::from_millis(300)).await.is_some() {
                return (guard, port);
            }
        }
    }
    panic!("coturn did not answer on any of three ports");
}

/// coturn answering STUN only.
async fn stun_server() -> (Coturn, IceServer) {
    let (guard, port) = coturn(&["--stun-only"]).await;
    (guard, IceServer::stun("127.0.0.1", port))
}

/// coturn relaying for user `ferry` (loopback peers allowed: everything here is on loopback).
async fn turn_server() -> (Coturn, u16) {
    let relay = ["--relay-ip=127.0.0.1", "--lt-cred-mech", "--user=ferry:relay-secret", "--realm=ferry.test"];
    coturn(&[&relay[..], &["--allow-loopback-peers"]].concat()).await
}

async fn first_channel(peer: &mut Peer) -> DataChannel {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), peer.next_event()).await.unwrap().unwrap() {
            PeerEvent::Channel(c) => return c,
            PeerEvent::Connected => continue,
            PeerEvent::Disconnected => panic!("disconnected"),
        }
    }
}

/// Connects an offerer and an answerer and returns the offerer's channel and the answerer's.
async fn connect(offering: &PeerConfig, answering: &PeerConfig) -> (Peer, Peer, DataChannel, DataChannel) {
    let (mut offerer, offer) = Peer::offer(offering, &["upload"]).await.unwrap();
    let (mut answerer, answer) = Peer::answer(answering, &offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    let sending = first_channel(&mut offerer).await;
    let receiving = first_channel(&mut answerer).await;
    (offerer, answerer, sending, receiving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_server_tells_a_socket_its_address_and_peers_still_connect() {
    let (_coturn, server) = stun_server().await;
    // Without a NAT between them, the address coturn sees is the socket's own.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let seen = reflexive_address(&socket, &server, Duration::from_secs(5)).await;
    assert_eq!(seen, Some(socket.local_addr().unwrap()));

    let config = PeerConfig { ice_servers: vec![server], ..PeerConfig::default() };
    let (_offerer, _answerer, sending, mut receiving) = connect(&config, &config).await;
    sending.send(true, b"via stun config".to_vec()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), receiving.recv()).await.unwrap().unwrap();
    assert_eq!(m.data, b"via stun config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_server_that_does_not_answer_delays_but_does_not_stop_a_peer() {
    // A port nothing listens on: the requests go unanswered.
    let server = IceServer::stun("127.0.0.1", free_port());
    let config = PeerConfig { ice_servers: vec![server], ..PeerConfig::default() };
    let started = Instant::now();
    let (peer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "the server was given its time");
    assert_eq!(peer.local_candidates().len(), 1, "the host candidate alone");
    assert!(offer.sdp.contains("typ host"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_offer_only_relayed_candidates_connect_through_a_turn_relay() {
    let (_coturn, port) = turn_server().await;
    let turn = IceServer::turn("127.0.0.1", port, "ferry", "relay-secret");
    let config = PeerConfig { ice_servers: vec![turn], relay_only: true, ..PeerConfig::default() };
    let (offerer, answerer, sending, mut receiving) = connect(&config, &config).await;
    // Neither side offered an address of its own, so every packet went through coturn.
    for peer in [&offerer, &answerer] {
        let candidates = peer.local_candidates();
        assert_eq!(candidates.len(), 1, "{candidates:?}");
        assert!(candidates[0].candidate.contains("typ relay"), "{candidates:?}");
        let port = peer.local_addr().port().to_string();
        assert!(!candidates[0].candidate.contains(&format!(" {port} typ")), "the relayed port is coturn's");
    }
    // Enough to need many packets both ways (data out, SCTP acks back), checked byte for byte.
    let payload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let sender = tokio::spawn(async move {
        for chunk in payload.chunks(48 * 1024) {
            sending.send(true, chunk.to_vec()).await.unwrap();
        }
        (sending, payload)
    });
    let mut received = Vec::new();
    while received.len() < 2 * 1024 * 1024 {
        let m = tokio::time::timeout(Duration::from_secs(20), receiving.recv()).await.unwrap().unwrap();
        received.extend_from_slice(&m.data);
    }
    let (_sending, payload) = sender.await.unwrap();
    assert!(received == payload, "the bytes that came through the relay differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_peer_reaches_a_peer_that_offers_its_host_address() {
    let (_coturn, port) = turn_server().await;
    let turn = IceServer::turn("127.0.0.1", port, "ferry", "relay-secret");
    let relayed = PeerConfig { ice_servers: vec![turn], relay_only: true, ..PeerConfig::default() };
    let (_offerer, _answerer, sending, mut receiving) = connect(&PeerConfig::default(), &relayed).await;
    sending.send(false, b"hello through the relay".to_vec()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), receiving.recv()).await.unwrap().unwrap();
    assert_eq!(m.data, b"hello through the relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_relay_credentials_are_reported_and_only_a_relay_only_peer_stops() {
    let (_coturn, port) = turn_server().await;
    let wrong = IceServer::turn("127.0.0.1", port, "ferry", "not-the-secret");
    let relay_only = PeerConfig { ice_servers: vec![wrong.clone()], relay_only: true, ..PeerConfig::default() };
    match Peer::offer(&relay_only, &["upload"]).await {
        Err(PeerError::NoRelay(why)) => assert!(why.contains("refused"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a relay-only peer started without a relay"),
    }
    // Without relay-only, the peer goes on with its host candidate.
    let config = PeerConfig { ice_servers: vec![wrong], ..PeerConfig::default() };
    let (peer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    assert_eq!(peer.local_candidates().len(), 1);
    assert!(offer.sdp.contains("typ host") && !offer.sdp.contains("typ relay"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_without_a_turn_server_is_refused_with_the_reason() {
    let config = PeerConfig { relay_only: true, ..PeerConfig::default() };
    match Peer::offer(&config, &["upload"]).await {
        Err(e @ PeerError::NoRelay(_)) => assert!(e.to_string().contains("no turn: server"), "{e}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a relay-only peer started without a relay"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_peer_gives_its_relay_allocation_back() {
    // One allocation per user: the second peer gets one only if the first gave its back.
    let relay = ["--relay-ip=127.0.0.1", "--lt-cred-mech", "--user=ferry:relay-secret", "--realm=ferry.test"];
    let (_coturn, port) = coturn(&[&relay[..], &["--allow-loopback-peers", "--user-quota=1"]].concat()).await;
    let turn = IceServer::turn("127.0.0.1", port, "ferry", "relay-secret");
    let config = PeerConfig { ice_servers: vec![turn], relay_only: true, ..PeerConfig::default() };
    let (first, _) = Peer::offer(&config, &["upload"]).await.unwrap();
    // While the first holds its allocation, the quota is spent.
    match Peer::offer(&config, &["upload"]).await {
        Err(PeerError::NoRelay(why)) => assert!(why.contains("refused"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("coturn's quota let a second allocation through"),
    }
    first.close().await;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Peer::offer(&config, &["upload"]).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the allocation was not given back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
