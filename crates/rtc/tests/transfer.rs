//! Files between two real peers on loopback: a whole transfer verified, a resumed one that sends
//! only what is missing, a seed-004 peer without a control channel, and every bad input ending the
//! transfer with an error and nothing left behind.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use ferry_core::frames::{Ranges, ReceiveLimits, header};
use ferry_core::transfer::{Announce, Placement};
use ferry_rtc::transfer::{FileSink, Received, Sink, Stored, TransferError, receive, send_file};
use ferry_rtc::{DataChannel, Peer, PeerConfig, PeerEvent};
use sha2::{Digest, Sha256};

const LIMITS: ReceiveLimits = ReceiveLimits { max_message: 64 * 1024, max_size: 1 << 30 };

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn channels(peer: &mut Peer, n: usize) -> Vec<DataChannel> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), peer.next_event()).await.expect("no channel in 20 s") {
            Some(PeerEvent::Channel(c)) => out.push(c),
            Some(PeerEvent::Connected) => {}
            _ => panic!("disconnected"),
        }
    }
    out.sort_by(|a, b| a.label().cmp(b.label()));
    out
}

/// A sender offering `labels` and a receiver answering; the channels of each, sorted by label.
async fn connect(labels: &[&str]) -> (Peer, Vec<DataChannel>, Peer, Vec<DataChannel>) {
    let config = PeerConfig::default();
    let (mut sender, offer) = Peer::offer(&config, labels).await.unwrap();
    let (mut receiver, answer) = Peer::answer(&config, &offer).await.unwrap();
    sender.accept_answer(&answer).await.unwrap();
    let s = channels(&mut sender, labels.len()).await;
    let r = channels(&mut receiver, labels.len()).await;
    (sender, s, receiver, r)
}

/// The receiving side as `ferry recv` runs it: receive into `out`, answer the sender.
async fn receive_into(chans: Vec<DataChannel>, work: &Path, out: &Path) -> Result<Received, String> {
    receive_with(chans, &mut FileSink::new(work, out)).await
}

async fn receive_with(mut chans: Vec<DataChannel>, sink: &mut impl Sink) -> Result<Received, String> {
    let upload_at = chans.iter().position(|c| c.label() != "control").unwrap();
    let mut upload = chans.remove(upload_at);
    let mut control = chans.pop();
    let outcome = receive(control.as_mut(), &mut upload, sink, LIMITS, |_| {}).await;
    // Let the answer go out before the channels are dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    outcome.map(|(r, _)| r).map_err(|e| e.code().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_arrives_whole_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (work, out) = (dir.path().join("work"), dir.path().join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let bytes = data(3 * 1024 * 1024 + 77, 1);
    let src = dir.path().join("clip.mp4");
    std::fs::write(&src, &bytes).unwrap();

    let (_s, mut s_chans, _r, r_chans) = connect(&["control", "upload"]).await;
    let recv = tokio::spawn(async move { receive_into(r_chans, &work, &out).await });
    let mut upload = s_chans.pop().unwrap();
    let mut control = s_chans.pop().unwrap();
    let report = send_file(&mut control, &mut upload, &src, "clip.mp4", 48 * 1024, |_| {}).await.unwrap();
    let received = recv.await.unwrap().unwrap();
    assert_eq!(report.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!((received.sha256.as_str(), received.size), (report.sha256.as_str(), bytes.len() as u64));
    assert_eq!(report.resumed_chunks, 0);
    assert!(report.stored_as.ends_with("out/clip.mp4"), "{}", report.stored_as);
    assert_eq!(std::fs::read(dir.path().join("out/clip.mp4")).unwrap(), bytes);
    assert_eq!(std::fs::read_dir(dir.path().join("work")).unwrap().count(), 0, "nothing left in the work dir");
}

/// A [`FileSink`] that stops before its `at`-th write, says so, and goes on once released: the
/// receiver then holds exactly `at` chunks and reads nothing more meanwhile.
struct Gated {
    inner: FileSink,
    writes: u64,
    at: u64,
    reached: Option<tokio::sync::oneshot::Sender<()>>,
    release: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Sink for Gated {
    async fn held(&mut self, announce: &Announce) -> Result<Ranges, TransferError> {
        self.inner.held(announce).await
    }
    async fn write(&mut self, at: Placement, payload: &[u8]) -> Result<(), TransferError> {
        if self.writes == self.at
            && let (Some(reached), Some(release)) = (self.reached.take(), self.release.take())
        {
            let _ = reached.send(());
            let _ = release.await;
        }
        self.writes += 1;
        self.inner.write(at, payload).await
    }
    async fn checkpoint(&mut self, held: &Ranges) -> Result<(), TransferError> {
        self.inner.checkpoint(held).await
    }
    async fn finish(&mut self, size: u64, sha256: Option<&str>) -> Result<Stored, TransferError> {
        self.inner.finish(size, sha256).await
    }
    async fn abandon(&mut self, keep: bool, held: &Ranges) {
        self.inner.abandon(keep, held).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_reconnects_sends_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (work, out) = (dir.path().join("work"), dir.path().join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let bytes = data(8 * 1024 * 1024, 2);
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &bytes).unwrap();
    // 512 chunks: more than the receiver's inbox and the SCTP windows hold together, so a
    // receiver that stops reading stops the sender well before the end.
    let chunk = 16 * 1024;

    // First connection: the receiver stops after 40 chunks; the sender is cut meanwhile.
    let (sender, mut s_chans, receiver, r_chans) = connect(&["control", "upload"]).await;
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let mut sink = Gated {
        inner: FileSink::new(&work, &out),
        writes: 0,
        at: 40,
        reached: Some(reached_tx),
        release: Some(release_rx),
    };
    let recv = tokio::spawn(async move { receive_with(r_chans, &mut sink).await });
    let mut upload = s_chans.pop().unwrap();
    let mut control = s_chans.pop().unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            _ = send_file(&mut control, &mut upload, &src, "big.bin", chunk, |_| {}) => panic!("finished before the cut"),
            _ = reached => {}
        }
    })
    .await;
    assert!(cut.is_ok(), "the first connection got under way");
    drop((control, upload));
    sender.close().await;
    drop(sender);
    let _ = release.send(());
    assert_eq!(recv.await.unwrap().unwrap_err(), "transfer_failed");
    drop(receiver);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing is published from a broken transfer");

    // Second connection: the receiver says what it holds; only the rest is sent.
    let (_s, mut s_chans, _r, r_chans) = connect(&["control", "upload"]).await;
    let (w, o) = (work.clone(), out.clone());
    let recv = tokio::spawn(async move { receive_into(r_chans, &w, &o).await });
    let mut upload = s_chans.pop().unwrap();
    let mut control = s_chans.pop().unwrap();
    let report = send_file(&mut control, &mut upload, &src, "big.bin", chunk, |_| {}).await.unwrap();
    recv.await.unwrap().unwrap();
    assert!(report.resumed_chunks >= 40, "the receiver kept what the first connection brought: {report:?}");
    assert!(report.resumed_chunks < u64::from(report.chunks), "{report:?}");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), bytes);
}

/// Sends raw messages on a seed-004 upload channel (no control channel) and returns the
/// receiver's outcome and the text answer it sent back.
async fn frames_only(messages: Vec<Vec<u8>>) -> (Result<Received, String>, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (work, out) = (dir.path().join("work"), dir.path().join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let (_s, mut s_chans, _r, r_chans) = connect(&["video_upload"]).await;
    let recv = tokio::spawn(async move { receive_into(r_chans, &work, &out).await });
    let mut upload = s_chans.pop().unwrap();
    let tx = upload.sender();
    for m in messages {
        if tx.send(true, m).await.is_err() {
            break;
        }
    }
    let outcome = recv.await.unwrap();
    let mut texts = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), upload.recv()).await {
        if !m.binary {
            texts.push(String::from_utf8(m.data).unwrap());
            break;
        }
    }
    (outcome, texts, dir)
}

fn frame(index: u32, total: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header(index, total).to_vec();
    m.extend_from_slice(payload);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_004_peer_without_a_control_channel_gets_its_file_stored() {
    let bytes = data(100_000, 3);
    let chunks: Vec<&[u8]> = bytes.chunks(48 * 1024).collect();
    let total = chunks.len() as u32;
    let mut messages = vec![vec![0u8]];
    messages.extend(chunks.iter().enumerate().map(|(i, c)| frame(i as u32, total, c)));
    // An exact duplicate is ignored.
    messages.insert(2, frame(0, total, chunks[0]));
    let (outcome, texts, dir) = frames_only(messages).await;
    let received = outcome.unwrap();
    assert_eq!(received.sha256, hex::encode(Sha256::digest(&bytes)));
    let answer: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(answer["type"], "complete");
    assert_eq!(answer["sha256"], received.sha256);
    assert_eq!(answer["size"], bytes.len());
    assert!(std::path::Path::new(&received.key).starts_with(dir.path().join("out")), "{}", received.key);
    assert_eq!(std::fs::read(&received.key).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_the_transfer_with_an_error_and_leaves_nothing() {
    let c = vec![5u8; 1000];
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("message_too_short", vec![vec![1, 2, 3, 4, 5]]),
        ("index_out_of_range", vec![frame(3, 3, &c)]),
        ("total_changed", vec![frame(0, 3, &c), frame(1, 4, &c)]),
        ("message_too_large", vec![frame(0, 2, &vec![0u8; 100 * 1024])]),
        ("wrong_chunk_size", vec![frame(0, 3, &c), frame(1, 3, &c[..10])]),
        ("keepalive_flood", vec![vec![0u8]; 80]),
    ];
    for (code, messages) in cases {
        let (outcome, texts, dir) = frames_only(messages).await;
        assert_eq!(outcome.unwrap_err(), code);
        let answer: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
        assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some(code)));
        assert_eq!(std::fs::read_dir(dir.path().join("out")).unwrap().count(), 0, "{code}: no object");
        let leftovers = std::fs::read_dir(dir.path().join("work")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftovers, 0, "{code}: no leftovers");
    }
}

/// The transfer id is the peer's to choose; the receiver's file names are not: an id that looks
/// like a path keeps its partial files inside the work dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_id_that_looks_like_a_path_stays_in_the_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("a").join("work");
    let (sender, mut s, _receiver, r) = connect(&["control", "upload"]).await;
    let (upload, control) = (s.pop().unwrap(), s.pop().unwrap());
    let receiving = tokio::spawn({
        let work = work.clone();
        let out = dir.path().to_owned();
        async move { receive_into(r, &work, &out).await }
    });
    let start = serde_json::json!({"type": "upload_start", "transfer_id": "../escape", "name": "x.bin",
        "size": 2000, "chunk_size": 1000, "total_chunks": 2});
    control.send(false, start.to_string().into_bytes()).await.unwrap();
    upload.send(true, frame(0, 2, &[1u8; 1000])).await.unwrap();
    // Wait for the chunk to be written, then vanish mid-transfer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no partial files appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((upload, control));
    sender.close().await;
    drop(sender);
    let outcome = tokio::time::timeout(Duration::from_secs(60), receiving).await.unwrap().unwrap();
    assert!(outcome.is_err(), "the transfer did not finish");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["work"], "nothing beside the work dir");
    let kept: Vec<String> =
        std::fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(kept.len(), 2, "the partial data and its state are kept for a resume: {kept:?}");
    assert!(kept.iter().all(|n| !n.contains("escape") && !n.contains('/')));
}
