//! A sender and a receiver run against each other over an in-memory link, in virtual time.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::*;
use crate::frames::{HEADER_LEN, Ranges, ReceiveLimits, header};

const CHUNK: u32 = 1000;
const LIMITS: ReceiveLimits = ReceiveLimits { max_message: 4096, max_size: 1 << 30 };

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

fn announce(data: &[u8]) -> Announce {
    let total = crate::frames::chunk_count(data.len() as u64, CHUNK) as u32;
    Announce {
        transfer_id: "t1".into(),
        name: "a.bin".into(),
        size: data.len() as u64,
        chunk_size: CHUNK,
        total_chunks: total,
        sha256: Some(sha(data)),
        processor: None,
    }
}

/// How a run is disturbed.
#[derive(Default)]
struct Script {
    /// The connection breaks after this many chunks reach the receiver.
    break_after: Option<usize>,
    /// Storing the file takes this long.
    store_takes: Duration,
    /// The receiver reports this SHA-256 instead of the real one.
    lie_about_sha: bool,
    /// Storing fails.
    storage_fails: bool,
}

#[derive(Default)]
struct Outcome {
    sender: Vec<SenderAction>,
    receiver: Vec<ReceiverAction>,
    /// Chunk indices that went on the wire.
    sent: Vec<u32>,
    echoes: usize,
    disk: Vec<u8>,
}

impl Outcome {
    fn sender_end(&self) -> &SenderAction {
        self.sender.iter().rev().find(|a| matches!(a, SenderAction::Done { .. } | SenderAction::Fail(_))).unwrap()
    }

    fn receiver_fault(&self) -> Option<&Fault> {
        self.receiver.iter().find_map(|a| match a {
            ReceiverAction::Fail(f) => Some(f),
            _ => None,
        })
    }
}

/// Runs one connection: `held` is what the receiver's disk holds from before (and is updated
/// by its checkpoints); each chunk takes 30 ms of virtual time.
fn run(data: &[u8], held: &mut Ranges, disk: &mut Vec<u8>, script: &Script, control: bool) -> Outcome {
    let t0 = Instant::now();
    let mut now = t0;
    let a = announce(data);
    let mut sender = Sender::new(a.clone(), now);
    let mut receiver = Receiver::new(LIMITS, control, now);
    let (mut to_r_control, mut to_r_upload) = (VecDeque::<Vec<u8>>::new(), VecDeque::<(bool, Vec<u8>)>::new());
    let (mut to_s_control, mut to_s_upload) = (VecDeque::<Vec<u8>>::new(), VecDeque::<(bool, Vec<u8>)>::new());
    let mut out = Outcome::default();
    let mut delivered = 0;
    let mut stored_at: Option<(Instant, String)> = None;
    for _ in 0..100_000 {
        let mut busy = false;
        if !control && out.sent.is_empty() {
            // A peer without a control channel sends frames at once.
            sender.handle_control(
                now,
                &serde_json::to_vec(&Control::ResumeState { transfer_id: a.transfer_id.clone(), ranges: vec![] })
                    .unwrap(),
            );
        }
        while let Some(action) = sender.poll(now) {
            busy = true;
            match &action {
                SenderAction::Send(c) if control => to_r_control.push_back(serde_json::to_vec(c).unwrap()),
                SenderAction::Send(_) => {}
                SenderAction::Chunk { index, offset, len } => {
                    let mut m = header(*index, a.total_chunks).to_vec();
                    m.extend_from_slice(&data[*offset as usize..*offset as usize + len]);
                    to_r_upload.push_back((true, m));
                    out.sent.push(*index);
                    now += Duration::from_millis(30);
                }
                SenderAction::Keepalive => to_r_upload.push_back((true, vec![0])),
                _ => {}
            }
            let chunk = matches!(action, SenderAction::Chunk { .. });
            out.sender.push(action);
            if matches!(out.sender.last(), Some(SenderAction::Done { .. } | SenderAction::Fail(_))) {
                out.disk = disk.clone();
                return out;
            }
            // One chunk on the wire at a time: the receiver takes it before the next is read.
            if chunk {
                break;
            }
        }
        while let Some(m) = to_r_control.pop_front() {
            busy = true;
            receiver.handle_control(now, &m);
        }
        while receiver.reads_upload() {
            let Some((binary, m)) = to_r_upload.pop_front() else { break };
            busy = true;
            if m.len() > 1 {
                delivered += 1;
            }
            if let Some(p) = receiver.handle_upload(now, binary, &m) {
                let end = p.offset as usize + m.len() - HEADER_LEN;
                if disk.len() < end {
                    disk.resize(end, 0);
                }
                disk[p.offset as usize..end].copy_from_slice(&m[HEADER_LEN..]);
            }
            if script.break_after == Some(delivered) {
                receiver.closed();
                sender.closed();
            }
        }
        if let Some((at, key)) = stored_at.take_if(|(at, _)| *at <= now) {
            let _ = at;
            let real = sha(&disk[..data.len()]);
            if script.storage_fails {
                receiver.failed(Fault::Storage("the disk is on fire".into()));
            } else {
                receiver.stored(key, if script.lie_about_sha { sha(b"other") } else { real });
            }
        }
        while let Some(action) = receiver.poll() {
            busy = true;
            match &action {
                ReceiverAction::Echo { binary, data } => to_s_upload.push_back((*binary, data.clone())),
                ReceiverAction::LookUp(_) => receiver.held(now, held.clone()),
                ReceiverAction::Send(c) if control => to_s_control.push_back(serde_json::to_vec(c).unwrap()),
                ReceiverAction::Send(c) => to_s_upload.push_back((false, serde_json::to_vec(c).unwrap())),
                ReceiverAction::Checkpoint(r) => *held = r.clone(),
                ReceiverAction::Finish { .. } => stored_at = Some((now + script.store_takes, "stored/a.bin".into())),
                ReceiverAction::Progress { .. } | ReceiverAction::Fail(_) => {}
            }
            out.receiver.push(action);
        }
        while let Some(m) = to_s_control.pop_front() {
            busy = true;
            sender.handle_control(now, &m);
        }
        while let Some((binary, m)) = to_s_upload.pop_front() {
            busy = true;
            if binary {
                out.echoes += 1;
            } else if !control {
                sender.handle_control(now, &m);
            }
        }
        if !busy {
            let wake = [sender.poll_timeout(), stored_at.as_ref().map(|(at, _)| *at)].into_iter().flatten().min();
            now = wake.expect("nothing to wait for: the run is stuck").max(now);
        }
    }
    panic!("the run did not end");
}

#[test]
fn a_file_arrives_whole_and_the_sender_hears_where() {
    let data = file(10 * CHUNK as usize + 7);
    let (mut held, mut disk) = (Ranges::default(), Vec::new());
    let out = run(&data, &mut held, &mut disk, &Script::default(), true);
    assert_eq!(out.sender_end(), &SenderAction::Done { key: "stored/a.bin".into() });
    assert_eq!(out.disk, data);
    assert_eq!(out.sent, (0..11).collect::<Vec<_>>());
    // 30 ms a chunk: progress every 500 ms at most, and once at the end.
    let progress = out.receiver.iter().filter(|a| matches!(a, ReceiverAction::Progress { .. })).count();
    assert_eq!(progress, 1);
    assert!(out.receiver.contains(&ReceiverAction::Finish { size: data.len() as u64, sha256: Some(sha(&data)) }));
}

#[test]
fn a_sender_that_comes_back_sends_only_what_was_not_checkpointed() {
    let data = file(200 * CHUNK as usize);
    let (mut held, mut disk) = (Ranges::default(), Vec::new());
    let first = run(&data, &mut held, &mut disk, &Script { break_after: Some(120), ..Script::default() }, true);
    assert_eq!(first.sender_end(), &SenderAction::Fail(Fault::Closed));
    assert!(first.receiver_fault().is_some_and(Fault::keeps_progress));
    // Chunk k arrives at (k + 1) × 30 ms; checkpoints come at most every second: after chunks
    // 33 (1.02 s), 67 (2.04 s) and 101 (3.06 s). What arrived after the last one is sent again.
    assert_eq!(held.spans(), vec![[0, 102]]);
    let second = run(&data, &mut held, &mut disk, &Script::default(), true);
    assert_eq!(second.sender_end(), &SenderAction::Done { key: "stored/a.bin".into() });
    assert_eq!(second.sent, (102..200).collect::<Vec<_>>(), "only what was not held");
    assert!(second.sender.contains(&SenderAction::Started { resumed_chunks: 102 }));
    assert_eq!(second.disk, data);
}

#[test]
fn keepalives_go_out_every_5_s_while_the_receiver_stores() {
    let data = file(3 * CHUNK as usize);
    let (mut held, mut disk) = (Ranges::default(), Vec::new());
    let script = Script { store_takes: Duration::from_secs(12), ..Script::default() };
    let out = run(&data, &mut held, &mut disk, &script, true);
    assert_eq!(out.sender_end(), &SenderAction::Done { key: "stored/a.bin".into() });
    let keepalives = out.sender.iter().filter(|a| **a == SenderAction::Keepalive).count();
    assert_eq!(keepalives, 2, "at 5 s and 10 s of a 12 s wait");
    assert_eq!(out.echoes, 2, "each echoed");
}

#[test]
fn a_peer_without_a_control_channel_hears_complete_on_the_upload_channel() {
    let data = file(4 * CHUNK as usize + 1);
    let (mut held, mut disk) = (Ranges::default(), Vec::new());
    let out = run(&data, &mut held, &mut disk, &Script::default(), false);
    assert_eq!(out.sender_end(), &SenderAction::Done { key: "stored/a.bin".into() });
    assert!(!out.receiver.iter().any(|a| matches!(a, ReceiverAction::Send(Control::Progress { .. }))));
    assert!(!out.receiver.iter().any(|a| matches!(a, ReceiverAction::LookUp(_) | ReceiverAction::Checkpoint(_))));
    let complete = out.receiver.iter().find_map(|a| match a {
        ReceiverAction::Send(c @ Control::Complete { .. }) => Some(c.clone()),
        _ => None,
    });
    let expected = Control::Complete {
        transfer_id: None,
        key: "stored/a.bin".into(),
        size: data.len() as u64,
        sha256: sha(&data),
    };
    assert_eq!(complete, Some(expected));
}

#[test]
fn the_sender_checks_complete_against_what_it_announced() {
    let data = file(2 * CHUNK as usize);
    let (mut held, mut disk) = (Ranges::default(), Vec::new());
    let out = run(&data, &mut held, &mut disk, &Script { lie_about_sha: true, ..Script::default() }, true);
    assert!(matches!(out.sender_end(), SenderAction::Fail(Fault::Checksum { .. })));
    let out =
        run(&data, &mut Ranges::default(), &mut Vec::new(), &Script { storage_fails: true, ..Script::default() }, true);
    match out.sender_end() {
        SenderAction::Fail(Fault::Remote { code, message }) => {
            assert_eq!(code, "storage_error");
            assert!(message.contains("on fire"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

fn receiving(now: Instant, total_chunks: u32) -> Receiver {
    let mut r = Receiver::new(LIMITS, true, now);
    let a = Announce {
        transfer_id: "t".into(),
        name: "n".into(),
        size: u64::from(total_chunks) * u64::from(CHUNK),
        chunk_size: CHUNK,
        total_chunks,
        sha256: None,
        processor: None,
    };
    r.handle_control(now, &serde_json::to_vec(&Control::UploadStart(a)).unwrap());
    r.held(now, Ranges::default());
    while r.poll().is_some() {}
    r
}

fn chunk(index: u32, total: u32) -> Vec<u8> {
    let mut m = header(index, total).to_vec();
    m.resize(HEADER_LEN + CHUNK as usize, 1);
    m
}

fn sent_error(r: &mut Receiver) -> Option<String> {
    std::iter::from_fn(|| r.poll()).find_map(|a| match a {
        ReceiverAction::Send(Control::Error { code, .. }) => Some(code),
        _ => None,
    })
}

#[test]
fn what_a_peer_gets_wrong_ends_the_transfer_with_an_error() {
    let t = Instant::now();
    let mut r = receiving(t, 4);
    assert_eq!(r.handle_upload(t, true, &chunk(4, 4)), None);
    assert_eq!(sent_error(&mut r).as_deref(), Some("index_out_of_range"));
    assert!(r.is_failed());
    let mut r = receiving(t, 4);
    r.handle_upload(t, true, &chunk(0, 5));
    assert_eq!(sent_error(&mut r).as_deref(), Some("total_changed"));
    let mut r = receiving(t, 4);
    r.handle_upload(t, true, &[1, 2, 3]);
    assert_eq!(sent_error(&mut r).as_deref(), Some("message_too_short"));
    let mut r = receiving(t, 4);
    for i in 0..60 {
        r.handle_upload(t + Duration::from_millis(i * 10), true, &[0]);
    }
    assert_eq!(sent_error(&mut r).as_deref(), Some("keepalive_flood"));
    // Before upload_start, a control message that is not JSON.
    let mut r = Receiver::new(LIMITS, true, t);
    r.handle_control(t, b"{not json");
    assert_eq!(sent_error(&mut r).as_deref(), Some("protocol_error"));
    // An announce whose numbers do not add up.
    let mut r = Receiver::new(LIMITS, true, t);
    let bad = Announce {
        transfer_id: "t".into(),
        name: "n".into(),
        size: 10,
        chunk_size: 5,
        total_chunks: 3,
        sha256: None,
        processor: None,
    };
    r.handle_control(t, &serde_json::to_vec(&Control::UploadStart(bad)).unwrap());
    assert!(matches!(r.poll(), Some(ReceiverAction::LookUp(_))));
    r.held(t, Ranges::default());
    assert_eq!(sent_error(&mut r).as_deref(), Some("protocol_error"));
}

#[test]
fn after_complete_keepalives_are_echoed_and_chunks_refused() {
    let t = Instant::now();
    let mut r = receiving(t, 1);
    assert!(r.handle_upload(t, true, &chunk(0, 1)).is_some());
    assert!(std::iter::from_fn(|| r.poll()).any(|a| matches!(a, ReceiverAction::Finish { .. })));
    r.stored("k".into(), "s".into());
    assert!(r.is_done());
    while r.poll().is_some() {}
    for k in [&[][..], &[0][..], &[0xff][..]] {
        r.handle_upload(t, false, k);
        assert_eq!(r.poll(), Some(ReceiverAction::Echo { binary: false, data: k.to_vec() }));
    }
    r.handle_upload(t, true, &chunk(0, 1));
    assert_eq!(sent_error(&mut r).as_deref(), Some("chunk_after_complete"));
}

#[test]
fn a_resume_state_outside_the_file_is_a_protocol_error() {
    let t = Instant::now();
    let data = file(3 * CHUNK as usize);
    let mut s = Sender::new(announce(&data), t);
    assert!(matches!(s.poll(t), Some(SenderAction::Send(Control::UploadStart(_)))));
    assert_eq!(s.poll(t), None, "nothing until the receiver answers");
    assert_eq!(s.poll_timeout(), None, "no keepalive before resume_state");
    let resume = Control::ResumeState { transfer_id: "t1".into(), ranges: vec![[2, 9]] };
    s.handle_control(t, &serde_json::to_vec(&resume).unwrap());
    assert!(matches!(s.poll(t), Some(SenderAction::Fail(Fault::Protocol(_)))));
    assert_eq!(s.poll(t + Duration::from_secs(60)), None, "over");
}

#[test]
fn a_frames_only_transfer_resumed_says_what_is_held_first_and_needs_only_the_rest() {
    let t = Instant::now();
    let held = Ranges::from_spans(&[[0, 2], [3, 4]], 5).unwrap();
    let mut r = Receiver::resumed(LIMITS, "tok".into(), 5, CHUNK, held, t);
    assert_eq!(
        r.poll(),
        Some(ReceiverAction::Send(Control::ResumeState { transfer_id: "tok".into(), ranges: vec![[0, 2], [3, 4]] })),
        "the peer hears what is held before anything else"
    );
    assert!(r.reads_upload());
    assert_eq!(r.handle_upload(t, true, &chunk(0, 5)), None, "a chunk held already is a duplicate");
    let at = r.handle_upload(t, true, &chunk(2, 5)).unwrap();
    assert_eq!(at.offset, 2 * u64::from(CHUNK));
    let mut last = header(4, 5).to_vec();
    last.extend_from_slice(&[9; 10]);
    assert!(r.handle_upload(t, true, &last).is_some());
    let finish = std::iter::from_fn(|| r.poll()).find(|a| matches!(a, ReceiverAction::Finish { .. }));
    assert_eq!(finish, Some(ReceiverAction::Finish { size: 4 * u64::from(CHUNK) + 10, sha256: None }));
}

#[test]
fn a_resumed_frames_only_transfer_holds_its_peer_to_the_same_shape() {
    let t = Instant::now();
    let held = Ranges::from_spans(&[[0, 2]], 5).unwrap();
    let mut r = Receiver::resumed(LIMITS, "tok".into(), 5, CHUNK, held.clone(), t);
    while r.poll().is_some() {}
    r.handle_upload(t, true, &chunk(2, 6));
    assert_eq!(sent_error(&mut r).as_deref(), Some("total_changed"), "another file under the same token");
    // The last chunk is never counted as held: its length gives the file's size.
    let all = Ranges::from_spans(&[[0, 5]], 5).unwrap();
    let mut r = Receiver::resumed(LIMITS, "tok".into(), 5, CHUNK, all, t);
    match r.poll() {
        Some(ReceiverAction::Send(Control::ResumeState { ranges, .. })) => assert_eq!(ranges, vec![[0, 4]]),
        other => panic!("{other:?}"),
    }
    // What is held must fit the file.
    let beyond = Ranges::from_spans(&[[0, 7]], 7).unwrap();
    let mut r = Receiver::resumed(LIMITS, "tok".into(), 5, CHUNK, beyond, t);
    assert_eq!(sent_error(&mut r).as_deref(), Some("index_out_of_range"));
}

#[test]
fn a_driver_that_cannot_take_the_transfer_ends_it_in_any_phase_with_its_reason() {
    let t = Instant::now();
    let refused = || Fault::Refused { code: "unknown_processor".into(), message: "no processor \"x\"".into() };
    // While looking up what is held (an upload_start naming a processor the driver lacks).
    let mut r = Receiver::new(LIMITS, true, t);
    let a = Announce { processor: Some("x".into()), ..announce(&file(10)) };
    r.handle_control(t, &serde_json::to_vec(&Control::UploadStart(a)).unwrap());
    assert!(matches!(r.poll(), Some(ReceiverAction::LookUp(Announce { processor: Some(_), .. }))));
    r.failed(refused());
    assert_eq!(sent_error(&mut r).as_deref(), Some("unknown_processor"));
    assert!(r.is_failed());
    // While receiving (a write that failed).
    let mut r = Receiver::new(LIMITS, false, t);
    assert!(r.handle_upload(t, true, &chunk(0, 3)).is_some());
    r.failed(Fault::Storage("disk".into()));
    assert_eq!(sent_error(&mut r).as_deref(), Some("storage_error"));
    // Once done, nothing changes it.
    let mut r = receiving(t, 1);
    r.handle_upload(t, true, &chunk(0, 1));
    r.stored("k".into(), "s".into());
    while r.poll().is_some() {}
    r.failed(refused());
    assert!(r.is_done() && r.poll().is_none());
}
