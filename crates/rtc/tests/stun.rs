//! `--ice-server` against a real STUN server: coturn, STUN only, on loopback.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_rtc::stun::reflexive_address;
use ferry_rtc::{IceServer, Peer, PeerConfig};
use tokio::net::UdpSocket;

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// coturn answering STUN on 127.0.0.1, once it does.
async fn coturn() -> (Coturn, IceServer) {
    let port = free_udp_port();
    let child = Command::new("turnserver")
        .args(["-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls", "--listening-ip=127.0.0.1"])
        .arg(format!("--listening-port={port}"))
        .args(["--log-file=stdout", "--simple-log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn's turnserver is needed (scripts/test installs it)");
    let guard = Coturn(child);
    let server = IceServer { host: "127.0.0.1".into(), port };
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reflexive_address(&probe, &server, Duration::from_millis(300)).await.is_none() {
        assert!(Instant::now() < deadline, "coturn did not answer within 20 s");
    }
    (guard, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_server_tells_a_socket_its_address_and_peers_still_connect() {
    let (_coturn, server) = coturn().await;
    // Without a NAT between them, the address coturn sees is the socket's own.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let seen = reflexive_address(&socket, &server, Duration::from_secs(5)).await;
    assert_eq!(seen, Some(socket.local_addr().unwrap()));

    let config = PeerConfig { ice_servers: vec![server], ..PeerConfig::default() };
    let (mut offerer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    let (mut answerer, answer) = Peer::answer(&config, &offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    let sending = loop {
        match tokio::time::timeout(Duration::from_secs(20), offerer.next_event()).await.unwrap().unwrap() {
            ferry_rtc::PeerEvent::Channel(c) => break c,
            ferry_rtc::PeerEvent::Connected => continue,
            ferry_rtc::PeerEvent::Disconnected => panic!("disconnected"),
        }
    };
    let mut receiving = loop {
        match tokio::time::timeout(Duration::from_secs(20), answerer.next_event()).await.unwrap().unwrap() {
            ferry_rtc::PeerEvent::Channel(c) => break c,
            ferry_rtc::PeerEvent::Connected => continue,
            ferry_rtc::PeerEvent::Disconnected => panic!("disconnected"),
        }
    };
    sending.send(true, b"via stun config".to_vec()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), receiving.recv()).await.unwrap().unwrap();
    assert_eq!(m.data, b"via stun config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_server_that_does_not_answer_delays_but_does_not_stop_a_peer() {
    // A port nothing listens on: the requests go unanswered.
    let server = IceServer { host: "127.0.0.1".into(), port: free_udp_port() };
    let config = PeerConfig { ice_servers: vec![server], ..PeerConfig::default() };
    let started = Instant::now();
    let (peer, offer) = Peer::offer(&config, &["upload"]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "the server was given its time");
    assert_eq!(peer.local_candidates().len(), 1, "the host candidate alone");
    assert!(offer.sdp.contains("typ host"));
}
