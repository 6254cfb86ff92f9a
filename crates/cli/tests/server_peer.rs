//! `ferry serve`'s own WebRTC peer, as real peers meet it on loopback: seed 004's frames with
//! no control channel, ferry's control channel, offers over HTTP and over signaling; processors
//! whose results come back over the connection while the upload runs; a peer that comes back
//! and sends only what the server lacks; and what a peer may not ask.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A peer connected to `ferry serve` through `POST /v1/rtc/offer`, with `labels` channels.
async fn server_peer(srv: &TestServer, labels: &[&str]) -> (ferry_rtc::Peer, Vec<ferry_rtc::DataChannel>) {
    let (peer, chans, _) = server_peer_with(srv, "", labels).await;
    (peer, chans)
}

/// The same with `query` on the offer (`?processor=…`); also the answer's `resume` token.
async fn server_peer_with(
    srv: &TestServer,
    query: &str,
    labels: &[&str],
) -> (ferry_rtc::Peer, Vec<ferry_rtc::DataChannel>, String) {
    let (mut peer, offer) = ferry_rtc::Peer::offer(&ferry_rtc::PeerConfig::default(), labels).await.unwrap();
    let res =
        srv.http.post(srv.api(&format!("/rtc/offer{query}"))).bearer_auth(TOKEN).json(&offer).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let answered: Value = res.json().await.unwrap();
    let resume = answered["resume"].as_str().unwrap().to_owned();
    let answer: ferry_rtc::Description = serde_json::from_value(answered).unwrap();
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
    (peer, chans, resume)
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
    // Offers that are not offers are refused, and so is an offer without the token.
    let cases = [
        (Some(TOKEN), serde_json::json!({"type": "answer", "sdp": "x"}), 400, "invalid_offer"),
        (Some(TOKEN), serde_json::json!({"type": "offer", "sdp": "v=0 garbage"}), 400, "invalid_offer"),
        (None, serde_json::json!({"type": "offer", "sdp": "x"}), 401, "unauthorized"),
    ];
    for (token, body, status, code) in cases {
        let mut req = srv.http.post(srv.api("/rtc/offer")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_error(req.send().await.unwrap(), status, code).await;
    }
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

/// JSON text messages on `channel` until one whose `type` is `until`, within 30 s each.
async fn texts_until(channel: &mut ferry_rtc::DataChannel, until: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|v: &Value| v["type"] != until) {
        seen.push(text_answer(channel).await);
    }
    seen
}

const CHUNK: usize = 48 * 1024;

/// Seed 004's whole loop: a peer with no control channel names a processor and the object's
/// name in its offer, opens `inference` beside `video_upload`, and hears each part's result
/// there while it is still sending (it waits for the first before sending the rest), then the
/// final result; `complete` comes on the upload channel, under the name it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_004_peer_names_a_processor_and_hears_its_results_while_it_uploads() {
    let srv = TestServer::start(&["--part-processor", "count=wc -c"]);
    let bytes = data(20 * 1024 * 1024 + 999, 8);
    let (_peer, mut chans, _) =
        server_peer_with(&srv, "?processor=count&name=clips/loop.bin", &["inference", "video_upload"]).await;
    let mut upload = chans.pop().unwrap();
    let mut inference = chans.pop().unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    let total = chunks.len() as u32;
    let mut sent = 0;
    // Part 1 (8 MiB, whole chunks) and a little more.
    while sent * CHUNK < 9 * 1024 * 1024 {
        upload.send(true, frame(sent as u32, total, chunks[sent])).await.unwrap();
        sent += 1;
    }
    let first = text_answer(&mut inference).await;
    assert_eq!((first["type"].as_str(), first["part_number"].as_u64()), (Some("part_processed"), Some(1)), "{first}");
    let part = first["result"].as_str().unwrap().trim().parse::<usize>().unwrap();
    assert_eq!(part % CHUNK, 0, "parts hold whole chunks");
    for (i, c) in chunks.iter().enumerate().skip(sent) {
        upload.send(true, frame(i as u32, total, c)).await.unwrap();
    }
    let done = text_answer(&mut upload).await;
    assert_eq!((done["type"].as_str(), done["key"].as_str()), (Some("complete"), Some("clips/loop.bin")), "{done}");
    assert_eq!(done["sha256"], sha256_hex(&bytes));
    let results = texts_until(&mut inference, "final_result").await;
    let counted: Vec<usize> = std::iter::once(&first)
        .chain(&results)
        .filter(|v| v["type"] == "part_processed")
        .map(|v| v["result"].as_str().unwrap().trim().parse().unwrap())
        .collect();
    let expected: Vec<usize> = bytes.chunks(part).map(<[u8]>::len).collect();
    assert_eq!(counted, expected, "every part's result, in order, the last at its real size");
    assert_eq!(results.last().unwrap()["status"], "completed");
    let got = srv.get("/objects/clips/loop.bin").await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), &bytes[..]);
}

/// A peer with no control channel that goes away halfway and makes its offer again with the
/// answer's `resume` token is told what the server holds first, and sends only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_004_peer_that_comes_back_sends_only_what_the_server_lacks() {
    let srv = TestServer::start(&[]);
    let bytes = data(20 * 1024 * 1024 + 5, 9);
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    let total = chunks.len() as u32;
    let (peer, mut chans, resume) = server_peer_with(&srv, "?name=clips/again.bin", &["video_upload"]).await;
    let upload = chans.pop().unwrap();
    let half = chunks.len() / 2;
    for (i, c) in chunks.iter().enumerate().take(half) {
        upload.send(true, frame(i as u32, total, c)).await.unwrap();
    }
    // The first part is stored once the server has it all.
    eventually(Duration::from_secs(30), async || {
        let listed: Value = srv.get("/uploads?state=uploading").await.json().await.unwrap();
        let Some(id) = listed["uploads"][0]["upload_id"].as_str() else { return false };
        let status: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
        status["parts"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;
    drop(upload);
    peer.close().await;
    drop(peer);

    let (_peer, mut chans, again) = server_peer_with(&srv, &format!("?resume={resume}"), &["video_upload"]).await;
    assert_eq!(again, resume, "the same token carries on");
    let mut upload = chans.pop().unwrap();
    let state = text_answer(&mut upload).await;
    assert_eq!(
        (state["type"].as_str(), state["transfer_id"].as_str()),
        (Some("resume_state"), Some(resume.as_str())),
        "{state}"
    );
    let held: Vec<[u32; 2]> = serde_json::from_value(state["ranges"].clone()).unwrap();
    let held_count: u32 = held.iter().map(|[s, e]| e - s).sum();
    assert!(held_count > 0 && (held_count as usize) < half, "{held:?} of the {half} sent");
    let mut resent = 0;
    for (i, c) in chunks.iter().enumerate() {
        if !held.iter().any(|[s, e]| (*s..*e).contains(&(i as u32))) {
            upload.send(true, frame(i as u32, total, c)).await.unwrap();
            resent += 1;
        }
    }
    let done = text_answer(&mut upload).await;
    assert_eq!((done["type"].as_str(), done["key"].as_str()), (Some("complete"), Some("clips/again.bin")), "{done}");
    assert_eq!(done["sha256"], sha256_hex(&bytes));
    assert_eq!(resent, chunks.len() - held_count as usize);
    let got = srv.get("/objects/clips/again.bin").await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), &bytes[..]);
    // Finished, the token resumes nothing.
    let (offerer, offer) = ferry_rtc::Peer::offer(&ferry_rtc::PeerConfig::default(), &["video_upload"]).await.unwrap();
    drop(offerer);
    let res =
        srv.http.post(srv.api(&format!("/rtc/offer?resume={resume}"))).bearer_auth(TOKEN).json(&offer).send().await;
    assert_error(res.unwrap(), 404, "resume_not_found").await;
}

/// What a peer may not ask of the server's peer is refused with a clear error, and nothing is
/// stored: a processor it does not have (in the offer, or in `upload_start` on the control
/// channel), a name it cannot store, a resume token of nothing, or of an upload begun elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_peer_may_not_ask_of_the_server_is_refused_and_nothing_is_stored() {
    let srv = TestServer::start(&["--part-processor", "count=wc -c"]);
    let (offerer, offer) = ferry_rtc::Peer::offer(&ferry_rtc::PeerConfig::default(), &["video_upload"]).await.unwrap();
    let offer_with =
        |query: String| srv.http.post(srv.api(&format!("/rtc/offer{query}"))).bearer_auth(TOKEN).json(&offer).send();
    assert_error(offer_with("?processor=nope".into()).await.unwrap(), 400, "unknown_processor").await;
    let long = "n".repeat(5000);
    assert_error(offer_with(format!("?name={long}")).await.unwrap(), 400, "invalid_name").await;
    assert_error(offer_with("?resume=not-a-token".into()).await.unwrap(), 400, "invalid_resume").await;
    let nothing = "0".repeat(32);
    assert_error(offer_with(format!("?resume={nothing}")).await.unwrap(), 404, "resume_not_found").await;
    drop(offerer);

    // An upload begun over HTTP cannot be carried on from a room, and the other way round.
    let (peer, chans, token) = server_peer_with(&srv, "", &["video_upload"]).await;
    let bytes = data(3 * CHUNK + 7, 2);
    chans[0].send(true, frame(0, 4, &bytes[..CHUNK])).await.unwrap();
    eventually(Duration::from_secs(30), async || {
        let listed: Value = srv.get("/uploads?state=uploading").await.json().await.unwrap();
        listed["uploads"].as_array().is_some_and(|u| !u.is_empty())
    })
    .await;
    drop(chans);
    drop(peer);
    let mut sig = ferry_rtc::signaling::Signaling::join(&srv.url, "lab", ferry_core::signal::Role::Peer, None, TOKEN)
        .await
        .unwrap();
    let (_offerer, offer) = ferry_rtc::Peer::offer(&ferry_rtc::PeerConfig::default(), &["video_upload"]).await.unwrap();
    let data = serde_json::json!({"type": "offer", "sdp": offer.sdp, "resume": token});
    sig.send(ferry_core::signal::Inbound::Signal { to: "ferry".into(), data }).await.unwrap();
    match sig.recv(Duration::from_secs(10)).await {
        Err(ferry_rtc::signaling::SignalingError::Refused { code, .. }) => assert_eq!(code, "resume_not_found"),
        other => panic!("expected resume_not_found, got {other:?}"),
    }

    // On the control channel: upload_start naming a processor the server does not have.
    let (_peer, mut chans) = server_peer(&srv, &["control", "upload"]).await;
    let _upload = chans.pop().unwrap();
    let mut control = chans.pop().unwrap();
    let start = serde_json::json!({"type": "upload_start", "transfer_id": "t1", "name": "x.bin", "size": 10,
        "chunk_size": 49152, "total_chunks": 1, "processor": "nope"});
    control.send(false, serde_json::to_vec(&start).unwrap()).await.unwrap();
    let err = text_answer(&mut control).await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some("unknown_processor")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("count"), "names the processors there are: {err}");
    let listed: Value = srv.get("/uploads").await.json().await.unwrap();
    let keys: Vec<&str> = listed["uploads"].as_array().unwrap().iter().filter_map(|u| u["key"].as_str()).collect();
    assert!(!keys.contains(&"x.bin"), "nothing stored: {keys:?}");
}
