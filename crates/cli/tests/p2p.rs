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

/// A peer connected to `ferry serve` through `POST /v1/rtc/offer`, with `labels` channels.
async fn server_peer(srv: &TestServer, labels: &[&str]) -> (ferry_rtc::Peer, Vec<ferry_rtc::DataChannel>) {
    let (mut peer, offer) = ferry_rtc::Peer::offer(&ferry_rtc::PeerConfig::default(), labels).await.unwrap();
    let res = srv.http.post(srv.api("/rtc/offer")).bearer_auth(TOKEN).json(&offer).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: ferry_rtc::Description = res.json().await.unwrap();
    assert_eq!(answer.kind, "answer");
    assert!(answer.sdp.contains("127.0.0.1"), "the answer carries the server's loopback candidate");
    peer.accept_answer(&answer).await.unwrap();
    let mut chans = Vec::new();
    while chans.len() < labels.len() {
        match tokio::time::timeout(Duration::from_secs(20), peer.next_event()).await.unwrap() {
            Some(ferry_rtc::PeerEvent::Channel(c)) => chans.push(c),
            Some(ferry_rtc::PeerEvent::Connected) => {}
            _ => panic!("disconnected"),
        }
    }
    chans.sort_by(|a, b| a.label().cmp(b.label()));
    (peer, chans)
}

fn frame(index: u32, total: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = ferry_core::frames::header(index, total).to_vec();
    m.extend_from_slice(payload);
    m
}

async fn text_answer(channel: &mut ferry_rtc::DataChannel) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), channel.recv()).await.unwrap().unwrap();
        if !m.binary {
            return serde_json::from_slice(&m.data).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_serve_stores_what_a_seed_004_peer_sends_and_refuses_chunks_after_it() {
    let srv = TestServer::start(&[]);
    let bytes = data(200_000, 3);
    let (_peer, mut chans) = server_peer(&srv, &["video_upload"]).await;
    let mut upload = chans.pop().unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(48 * 1024).collect();
    let total = chunks.len() as u32;
    upload.send(true, vec![7]).await.unwrap();
    for (i, c) in chunks.iter().enumerate() {
        upload.send(true, frame(i as u32, total, c)).await.unwrap();
    }
    let echo = tokio::time::timeout(Duration::from_secs(10), upload.recv()).await.unwrap().unwrap();
    assert_eq!(echo.data, vec![7], "the keepalive is echoed");
    let done = text_answer(&mut upload).await;
    assert_eq!(done["type"], "complete", "{done}");
    assert_eq!(done["sha256"], sha256_hex(&bytes));
    let key = done["key"].as_str().unwrap();
    assert!(key.starts_with("rtc/"), "{key}");
    let got = srv.get(&format!("/objects/{key}")).await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), &bytes[..]);
    // The transfer is over: another chunk is an error; the object stays as it was.
    upload.send(true, frame(0, total, chunks[0])).await.unwrap();
    let err = text_answer(&mut upload).await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some("chunk_after_complete")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_serve_stores_a_file_sent_with_a_control_channel() {
    let srv = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(1024 * 1024 + 5, 4);
    let file = write_file(dir.path(), "notes.bin", &bytes);
    let (_peer, mut chans) = server_peer(&srv, &["control", "upload"]).await;
    let mut upload = chans.pop().unwrap();
    let mut control = chans.pop().unwrap();
    let report = ferry_rtc::transfer::send_file(&mut control, &mut upload, &file, "peer/notes.bin", 48 * 1024, |_| {})
        .await
        .unwrap();
    assert_eq!(report.stored_as, "peer/notes.bin");
    let got = srv.get("/objects/peer/notes.bin").await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), &bytes[..]);
    let listed: Value = srv.get("/uploads?state=completed").await.json().await.unwrap();
    assert_eq!(listed["uploads"][0]["key"], "peer/notes.bin", "stored through an ordinary upload session");
    // Offers that are not offers are refused.
    let res = srv
        .http
        .post(srv.api("/rtc/offer"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"type": "answer", "sdp": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_offer").await;
    let res = srv
        .http
        .post(srv.api("/rtc/offer"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"type": "offer", "sdp": "v=0 garbage"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_offer").await;
    let res = srv
        .http
        .post(srv.api("/rtc/offer"))
        .json(&serde_json::json!({"type": "offer", "sdp": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_send_to_the_server_through_signaling_stores_an_object() {
    let srv = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * 1024 * 1024 + 3, 5);
    let file = write_file(dir.path(), "scan.tif", &bytes);
    let args = ["send", file.to_str().unwrap(), "--room", "lab", "--to", "ferry", "--as", "scans/1.tif", "--json"];
    let (ok, sent, err) = run_json(ferry(&srv.url, &dir.path().join("state"), &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&sent);
    assert_eq!(
        (r["sha256"].as_str(), r["stored_as"].as_str()),
        (Some(sha256_hex(&bytes).as_str()), Some("scans/1.tif"))
    );
    let got = srv.get("/objects/scans/1.tif").await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), &bytes[..]);

    // What the server takes over signaling: an offer or a candidate, from a peer in a room.
    let mut sig = ferry_rtc::signaling::Signaling::join(&srv.url, "lab", ferry_core::signal::Role::Peer, None, TOKEN)
        .await
        .unwrap();
    let to = || "ferry".to_owned();
    let cases = [
        (serde_json::json!({"type": "answer", "sdp": "v=0"}), "invalid_signal"),
        (
            serde_json::json!({"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}),
            "invalid_signal",
        ),
        (serde_json::json!({"type": "offer", "sdp": "not sdp"}), "invalid_offer"),
    ];
    for (data, code) in cases {
        sig.send(ferry_core::signal::Inbound::Signal { to: to(), data }).await.unwrap();
        match sig.recv(Duration::from_secs(10)).await {
            Err(ferry_rtc::signaling::SignalingError::Refused { code: got, .. }) => assert_eq!(got, code),
            other => panic!("expected {code}, got {other:?}"),
        }
    }
    let taken =
        ferry_rtc::signaling::Signaling::join(&srv.url, "lab", ferry_core::signal::Role::Peer, Some("ferry"), TOKEN)
            .await;
    assert!(
        matches!(taken, Err(ferry_rtc::signaling::SignalingError::Refused { ref code, .. }) if code == "peer_id_taken")
    );
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
