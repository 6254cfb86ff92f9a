//! `ferry put FILE --to ROOM[/PEER]` on a real `ferry serve`: the transport seed 001's rules pick,
//! said with its reason, and a data channel that cannot be opened falling back to HTTP parts
//! through the server.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

fn transports(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["type"] == "transport")
        .map(|l| (l["transport"].as_str().unwrap().to_owned(), l["reason"]["rule"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_pick_the_transport_and_say_why() {
    let srv = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // Small: a data channel to the server, which stores it.
    let small = data(200_000, 1);
    let file = write_file(dir.path(), "notes.txt", &small);
    let (ok, lines, err) =
        run_json(ferry(&srv.url, &state, &["put", file.to_str().unwrap(), "--to", "lab", "--json"])).await;
    assert!(ok, "{err}");
    assert_eq!(transports(&lines), [("data_channel".to_owned(), "small".to_owned())]);
    let r = result_of(&lines);
    assert_eq!((r["transport"].as_str(), r["stored_as"].as_str()), (Some("data_channel"), Some("notes.txt")));
    assert_eq!(srv.get("/objects/notes.txt").await.bytes().await.unwrap().as_ref(), &small[..]);

    // Large (limits lowered to keep the file small): HTTP parts.
    let big = data(3 * 1024 * 1024, 2);
    let file = write_file(dir.path(), "big.bin", &big);
    let args =
        ["put", file.to_str().unwrap(), "--to", "lab", "--small-below", "1000", "--large-above", "1MiB", "--json"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    assert_eq!(transports(&lines), [("http_parts".to_owned(), "large".to_owned())]);
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&big));

    // In between: a dataset must persist; anything else takes the data channel.
    let mid = data(50_000, 3);
    let csv = write_file(dir.path(), "rows.csv", &mid);
    let band = ["--to", "lab", "--small-below", "1000", "--large-above", "1MiB", "--json"];
    let (ok, lines, err) =
        run_json(ferry(&srv.url, &state, &[&["put", csv.to_str().unwrap()], &band[..]].concat())).await;
    assert!(ok, "{err}");
    assert_eq!(transports(&lines), [("http_parts".to_owned(), "must_persist".to_owned())]);
    let args = [&["put", csv.to_str().unwrap(), "--key", "rows-dc.csv", "--kind", "other"], &band[..]].concat();
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    assert_eq!(transports(&lines), [("data_channel".to_owned(), "convenient".to_owned())]);
    assert_eq!(srv.get("/objects/rows-dc.csv").await.bytes().await.unwrap().as_ref(), &mid[..]);

    // Real-time wins over size.
    let args = [
        "put",
        file.to_str().unwrap(),
        "--key",
        "live.bin",
        "--to",
        "lab",
        "--small-below",
        "1000",
        "--large-above",
        "1MiB",
        "--realtime",
        "--json",
    ];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    assert_eq!(transports(&lines), [("data_channel".to_owned(), "realtime".to_owned())]);
    assert_eq!(srv.get("/objects/live.bin").await.bytes().await.unwrap().as_ref(), &big[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_connects_means_http_parts_through_the_server() {
    let srv = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A peer in the room that never answers an offer: the data channel is blocked.
    let _mute =
        ferry_rtc::signaling::Signaling::join(&srv.url, "lab", ferry_core::signal::Role::Peer, Some("mute"), TOKEN)
            .await
            .unwrap();
    let bytes = data(300_000, 4);
    let file = write_file(dir.path(), "clip.mp4", &bytes);
    let args = ["put", file.to_str().unwrap(), "--to", "lab/mute", "--connect-timeout", "2s", "--json"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &dir.path().join("state"), &args)).await;
    assert!(ok, "{err}");
    assert_eq!(
        transports(&lines),
        [("data_channel".to_owned(), "small".to_owned()), ("http_parts".to_owned(), "peer_unreachable".to_owned())]
    );
    let fell = lines.iter().filter(|l| l["type"] == "transport").nth(1).unwrap();
    assert!(fell["text"].as_str().unwrap().contains("through the server"), "{fell}");
    let r = result_of(&lines);
    assert_eq!((r["key"].as_str(), r["sha256"].as_str()), (Some("clip.mp4"), Some(sha256_hex(&bytes).as_str())));
    assert_eq!(srv.get("/objects/clip.mp4").await.bytes().await.unwrap().as_ref(), &bytes[..]);
}
