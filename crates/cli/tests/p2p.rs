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
