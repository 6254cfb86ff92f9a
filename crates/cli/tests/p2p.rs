//! `ferry send` → `ferry recv` peer to peer, the two real processes meeting in a room of a real
//! `ferry serve`, all on loopback: a file arrives verified, and after a `kill -9` of the sender
//! the second run sends only what the receiver does not hold.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn recv_cmd(srv: &TestServer, state: &std::path::Path, room: &str, out: &std::path::Path) -> tokio::process::Command {
    ferry(&srv.url, state, &["recv", "--room", room, "--out", out.to_str().unwrap(), "--peer-id", "receiver", "--json"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_peer_to_peer_and_is_verified() {
    let srv = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let bytes = data(3 * 1024 * 1024 + 11, 1);
    let file = write_file(dir.path(), "clip.mp4", &bytes);
    let (recv, lines, _) = run_until(recv_cmd(&srv, &state, "studio", &out), |v| v["type"] == "waiting").await;
    let send =
        ferry(&srv.url, &state, &["send", file.to_str().unwrap(), "--room", "studio", "--to", "receiver", "--json"]);
    let (ok, sent, err) = run_json(send).await;
    assert!(ok, "{err}");
    let r = result_of(&sent);
    assert_eq!(r["sha256"], sha256_hex(&bytes));
    assert_eq!(r["resumed_chunks"], 0);
    let mut seen = Vec::new();
    assert!(finish(recv, lines, &mut seen).await, "the receiver exits well after one file");
    let got = result_of(&seen);
    assert_eq!(got["sha256"], sha256_hex(&bytes));
    assert_eq!(std::fs::read(out.join("clip.mp4")).unwrap(), bytes);
    assert_eq!(std::fs::read_dir(out.join(".ferry-recv")).unwrap().count(), 0, "no partial files left");
}

/// coturn relaying on loopback for user `ferry`; killed on drop.
struct Relay(std::process::Child, u16);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn turn_relay() -> Relay {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("turnserver")
        .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
        .args(["--lt-cred-mech", "--user=ferry:relay-secret", "--realm=ferry.test", "--allow-loopback-peers"])
        .arg(format!("--listening-port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("coturn's turnserver is needed (scripts/test installs it)");
    let relay = Relay(child, port);
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = ferry_rtc::IceServer::stun("127.0.0.1", port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ferry_rtc::stun::reflexive_address(&probe, &server, Duration::from_millis(300)).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "coturn did not answer within 20 s");
    }
    relay
}

/// Both ends offer only the relay's addresses, so the file can only have come through coturn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_through_a_turn_relay_when_both_ends_are_relay_only() {
    let srv = TestServer::start(&[]);
    let relay = turn_relay().await;
    let turn = format!("turn:ferry:relay-secret@127.0.0.1:{}", relay.1);
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let bytes = data(3 * 1024 * 1024 + 5, 9);
    let file = write_file(dir.path(), "relayed.bin", &bytes);
    let mut recv = recv_cmd(&srv, &state, "far", &out);
    recv.args(["--ice-server", &turn, "--relay-only"]);
    let (recv, lines, _) = run_until(recv, |v| v["type"] == "waiting").await;
    let args = ["send", file.to_str().unwrap(), "--room", "far", "--to", "receiver", "--json", "--relay-only"];
    let mut send = ferry(&srv.url, &state, &args);
    send.args(["--ice-server", &turn]);
    let (ok, sent, err) = run_json(send).await;
    assert!(ok, "{err}");
    assert_eq!(result_of(&sent)["sha256"], sha256_hex(&bytes));
    let mut seen = Vec::new();
    assert!(finish(recv, lines, &mut seen).await);
    assert_eq!(std::fs::read(out.join("relayed.bin")).unwrap(), bytes);

    // A wrong password is a clear error, not a hang (sending to the server's peer, always there).
    let wrong = format!("turn:ferry:guess@127.0.0.1:{}", relay.1);
    let args = ["send", file.to_str().unwrap(), "--room", "far", "--to", "ferry", "--relay-only"];
    let mut send = ferry(&srv.url, &state, &args);
    send.args(["--ice-server", &wrong]);
    let (ok, _, err) = run_json(send).await;
    assert!(!ok);
    assert!(err.contains("refused the allocation") && !err.contains("guess"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_the_sender_the_next_run_sends_only_what_is_missing() {
    let srv = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let bytes = data(24 * 1024 * 1024, 2);
    let file = write_file(dir.path(), "big.bin", &bytes);
    let (recv, mut lines, mut seen) =
        run_until(recv_cmd(&srv, &state, "resume", &out), |v| v["type"] == "waiting").await;

    // First run: killed once the receiver holds some of the file.
    let args = ["send", file.to_str().unwrap(), "--room", "resume", "--to", "receiver", "--json"];
    let mut first = ferry(&srv.url, &state, &args).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.unwrap().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        let progressed = v["type"] == "progress" && v["received_chunks"].as_u64().unwrap() > 20;
        seen.push(v);
        if progressed {
            break;
        }
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    // The receiver notices the sender is gone and keeps what arrived.
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.unwrap().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        let failed = v["type"] == "failed";
        seen.push(v);
        if failed {
            break;
        }
    }
    assert!(!out.join("big.bin").exists(), "nothing is published from a broken transfer");

    let (ok, sent, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&sent);
    assert_eq!(r["sha256"], sha256_hex(&bytes));
    let resumed = r["resumed_chunks"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < r["chunks"].as_u64().unwrap(), "resumed {resumed} chunks");
    assert!(finish(recv, lines, &mut seen).await);
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), bytes);
}

/// Two peers meet through signaling with `connect` (candidates trickled both ways) and talk on
/// the JSON message channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_messages_flow_both_ways_between_peers_that_met_through_signaling() {
    use ferry_core::signal::Role;
    use ferry_rtc::connect::{self, Expect};
    use ferry_rtc::messages::{MESSAGES_LABEL, MessageError, Messages};
    use ferry_rtc::signaling::Signaling;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Progress {
        job: String,
        percent: u8,
    }

    let srv = TestServer::start(&[]);
    let mut a = Signaling::join(&srv.url, "jobs", Role::Client, Some("client"), TOKEN).await.unwrap();
    let mut b = Signaling::join(&srv.url, "jobs", Role::Worker, Some("worker"), TOKEN).await.unwrap();
    let config = ferry_rtc::PeerConfig::default();
    let config_b = config.clone();
    let answering = tokio::spawn(async move {
        let (from, offer) = b.wait_description("offer", None, Duration::from_secs(20), |_| {}).await.unwrap();
        assert_eq!(from, "client");
        let expect = Expect { count: 1, enough: &[] };
        let (peer, chans) =
            connect::answer(&mut b, &from, &offer, &config_b, expect, Duration::from_secs(20)).await.unwrap();
        (peer, chans)
    });
    let (_pa, mut ca) =
        connect::offer(&mut a, "worker", &config, &[MESSAGES_LABEL], Duration::from_secs(20)).await.unwrap();
    let (_pb, mut cb) = answering.await.unwrap();
    assert_eq!((ca.len(), cb.len()), (1, 1));
    let mut client = Messages::new(ca.pop().unwrap());
    let mut worker = Messages::new(cb.pop().unwrap());

    for percent in [10, 50, 100] {
        worker.send(&Progress { job: "j1".into(), percent }).await.unwrap();
    }
    for percent in [10, 50, 100] {
        let got: Progress =
            tokio::time::timeout(Duration::from_secs(10), client.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Progress { job: "j1".into(), percent });
    }
    // Something that is not the JSON expected is an error for that message; the next still arrives.
    client.sender().send(&serde_json::json!({"type": "pause"})).await.unwrap();
    client.send(&"not progress").await.unwrap();
    let first: serde_json::Value = worker.recv().await.unwrap().unwrap();
    assert_eq!(first["type"], "pause");
    let second = worker.recv::<Progress>().await.unwrap();
    assert!(matches!(second, Err(MessageError::Invalid(_))), "{second:?}");
}
