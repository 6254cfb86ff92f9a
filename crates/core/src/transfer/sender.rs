//! The sending side of one transfer: announce the file, learn what the receiver holds, send the
//! rest in order, keep the connection alive while the receiver stores it, and check its
//! `complete` against what was announced.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Announce, Control, Fault, PROGRESS_EVERY};
use crate::frames::Ranges;

/// How often a keepalive goes out, at most (seed 004's SDK sends one every 5 s).
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderAction {
    /// Send this on the control channel.
    Send(Control),
    /// Read this chunk of the file and send it on the upload channel, framed.
    Chunk {
        index: u32,
        offset: u64,
        len: usize,
    },
    /// Send a one-byte keepalive on the upload channel.
    Keepalive,
    /// The receiver said what it holds: the rest is being sent.
    Started {
        resumed_chunks: u64,
    },
    /// Tell the user.
    Progress {
        sent_bytes: u64,
        received_chunks: u64,
    },
    /// The receiver stored the file as `key`, with the announced size and SHA-256.
    Done {
        key: String,
    },
    Fail(Fault),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitResume,
    Sending,
    AwaitComplete,
    Over,
}

/// One transfer being sent.
#[derive(Debug)]
pub struct Sender {
    announce: Announce,
    phase: Phase,
    actions: VecDeque<SenderAction>,
    held: Ranges,
    /// The next chunk index to look at.
    next: u32,
    sent_bytes: u64,
    received_chunks: u64,
    last_keepalive: Instant,
    last_report: Instant,
}

impl Sender {
    /// Starts announcing `announce`.
    pub fn new(announce: Announce, now: Instant) -> Sender {
        let start = SenderAction::Send(Control::UploadStart(announce.clone()));
        Sender {
            announce,
            phase: Phase::AwaitResume,
            actions: VecDeque::from([start]),
            held: Ranges::default(),
            next: 0,
            sent_bytes: 0,
            received_chunks: 0,
            last_keepalive: now,
            last_report: now,
        }
    }

    /// Chunks the receiver held before this connection.
    pub fn resumed_chunks(&self) -> u64 {
        self.held.len()
    }

    /// A message on the control channel.
    pub fn handle_control(&mut self, now: Instant, data: &[u8]) {
        let message = match serde_json::from_slice::<Control>(data) {
            Ok(m) => m,
            Err(e) if self.phase == Phase::AwaitResume => {
                return self.end(SenderAction::Fail(Fault::Protocol(format!("a control message is not JSON: {e}"))));
            }
            Err(_) => return,
        };
        match (self.phase, message) {
            (Phase::Over, _) => {}
            (_, Control::Error { code, message, .. }) => self.end(SenderAction::Fail(Fault::Remote { code, message })),
            (Phase::AwaitResume, Control::ResumeState { transfer_id, ranges })
                if transfer_id == self.announce.transfer_id =>
            {
                let Some(held) = Ranges::from_spans(&ranges, self.announce.total_chunks) else {
                    let fault = Fault::Protocol("resume_state names chunks outside the file".into());
                    return self.end(SenderAction::Fail(fault));
                };
                self.received_chunks = held.len();
                self.actions.push_back(SenderAction::Started { resumed_chunks: held.len() });
                self.held = held;
                self.phase = Phase::Sending;
                self.last_keepalive = now;
                self.last_report = now;
            }
            (Phase::Sending, Control::Progress { received_chunks, .. }) => self.received_chunks = received_chunks,
            (Phase::AwaitComplete, Control::Progress { received_chunks, .. }) => {
                self.received_chunks = received_chunks;
                self.report();
            }
            (Phase::AwaitComplete, Control::Complete { key, size, sha256, .. }) => {
                let expected = self.announce.sha256.clone().unwrap_or_default();
                if size != self.announce.size || !sha256.eq_ignore_ascii_case(&expected) {
                    return self.end(SenderAction::Fail(Fault::Checksum { expected, actual: sha256 }));
                }
                self.end(SenderAction::Done { key });
            }
            _ => {}
        }
    }

    /// The connection closed.
    pub fn closed(&mut self) {
        if self.phase != Phase::Over {
            self.end(SenderAction::Fail(Fault::Closed));
        }
    }

    /// The next thing to do at `now`; `None` until something arrives or `poll_timeout` passes.
    pub fn poll(&mut self, now: Instant) -> Option<SenderAction> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if matches!(self.phase, Phase::Sending | Phase::AwaitComplete)
            && now.duration_since(self.last_keepalive) >= KEEPALIVE_EVERY
        {
            self.last_keepalive = now;
            return Some(SenderAction::Keepalive);
        }
        if self.phase != Phase::Sending {
            return None;
        }
        let total = self.announce.total_chunks;
        while self.next < total && self.held.contains(self.next) {
            self.next += 1;
        }
        if self.next == total {
            self.phase = Phase::AwaitComplete;
            return None;
        }
        let index = self.next;
        self.next += 1;
        let chunk = u64::from(self.announce.chunk_size);
        let offset = u64::from(index) * chunk;
        let len = self.announce.size.saturating_sub(offset).min(chunk) as usize;
        self.sent_bytes += len as u64;
        if now.duration_since(self.last_report) >= PROGRESS_EVERY {
            self.last_report = now;
            self.report();
        }
        Some(SenderAction::Chunk { index, offset, len })
    }

    /// When [`Sender::poll`] next has something to do without anything arriving.
    pub fn poll_timeout(&self) -> Option<Instant> {
        matches!(self.phase, Phase::Sending | Phase::AwaitComplete).then(|| self.last_keepalive + KEEPALIVE_EVERY)
    }

    fn report(&mut self) {
        let (sent_bytes, received_chunks) = (self.sent_bytes, self.received_chunks);
        self.actions.push_back(SenderAction::Progress { sent_bytes, received_chunks });
    }

    fn end(&mut self, action: SenderAction) {
        self.phase = Phase::Over;
        self.actions.push_back(action);
    }
}
