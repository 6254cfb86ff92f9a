//! The receiving side of one transfer.
//!
//! With a control channel it waits for `upload_start` (frames that come first wait in their
//! channel: [`Receiver::reads_upload`] says when to read it), asks the driver what an earlier
//! connection left ([`ReceiverAction::LookUp`]), answers `resume_state`, then takes chunks until
//! every one is in, asks the driver to store the file ([`ReceiverAction::Finish`]) and says
//! `complete`. Without a control channel it takes chunks at once. Keepalives are echoed before,
//! during and after; anything the peer gets wrong ends the transfer with an `error`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Announce, Control, Fault, PROGRESS_EVERY};
use crate::frames::{Accepted, Frame, FrameError, KeepaliveBudget, Ranges, Reassembly, ReceiveLimits, decode};

/// How often what arrived is made durable and recorded, at most.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Where an accepted chunk's payload (the message after its header) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub index: u32,
    pub offset: u64,
    pub total_chunks: u32,
    /// Every chunk's size but the last's.
    pub chunk_size: u32,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverAction {
    /// Send this keepalive back on the upload channel, unchanged.
    Echo { binary: bool, data: Vec<u8> },
    /// Find what an earlier connection left of this transfer, and hand it to [`Receiver::held`].
    LookUp(Announce),
    /// Send this on the control channel (or, for a peer without one, as text on the upload
    /// channel).
    Send(Control),
    /// Make what was written durable, then record that these chunks are held.
    Checkpoint(Ranges),
    /// Tell the user.
    Progress { received_chunks: u64, total_chunks: u32 },
    /// Every chunk is in: verify (against the announced SHA-256, if any) and store the file of
    /// `size` bytes, then call [`Receiver::stored`] or [`Receiver::failed`].
    Finish { size: u64, sha256: Option<String> },
    /// The transfer is over without its file. Keep what arrived for a sender that comes back
    /// when [`Fault::keeps_progress`].
    Fail(Fault),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStart,
    AwaitHeld,
    Receiving,
    Storing,
    Done,
    Failed,
}

/// One transfer being received.
#[derive(Debug)]
pub struct Receiver {
    limits: ReceiveLimits,
    control: bool,
    phase: Phase,
    announced: Option<Announce>,
    reassembly: Reassembly,
    keepalives: KeepaliveBudget,
    actions: VecDeque<ReceiverAction>,
    last_checkpoint: Instant,
    last_progress: Instant,
}

impl Receiver {
    /// A transfer from a peer that has a control channel (`control`) or only sends frames.
    pub fn new(limits: ReceiveLimits, control: bool, now: Instant) -> Receiver {
        Receiver {
            limits,
            control,
            phase: if control { Phase::AwaitStart } else { Phase::Receiving },
            announced: None,
            reassembly: Reassembly::new(limits),
            keepalives: KeepaliveBudget::default(),
            actions: VecDeque::new(),
            last_checkpoint: now,
            last_progress: now,
        }
    }

    /// A transfer from a peer without a control channel that an earlier connection began:
    /// `total_chunks` of `chunk_size`, of which `held` arrived already. The peer is told what is
    /// held (`resume_state` as text on the upload channel, under `transfer_id`) before anything
    /// else, and need send only the rest.
    pub fn resumed(
        limits: ReceiveLimits,
        transfer_id: String,
        total_chunks: u32,
        chunk_size: u32,
        held: Ranges,
        now: Instant,
    ) -> Receiver {
        let mut r = Receiver::new(limits, false, now);
        match Reassembly::resumed(limits, total_chunks, chunk_size, held) {
            Ok(reassembly) => {
                let ranges = reassembly.held().spans();
                r.reassembly = reassembly;
                r.actions.push_back(ReceiverAction::Send(Control::ResumeState { transfer_id, ranges }));
            }
            Err(e) => r.fail(e.into()),
        }
        r
    }

    /// What the sender announced, once it has.
    pub fn announced(&self) -> Option<&Announce> {
        self.announced.as_ref()
    }

    /// Whether the upload channel is to be read now (before `upload_start`, frames wait).
    pub fn reads_upload(&self) -> bool {
        matches!(self.phase, Phase::Receiving | Phase::Storing | Phase::Done)
    }

    /// Whether the file is stored and the sender told.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the transfer has failed.
    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    pub fn poll(&mut self) -> Option<ReceiverAction> {
        self.actions.pop_front()
    }

    /// A message on the control channel.
    pub fn handle_control(&mut self, now: Instant, data: &[u8]) {
        let message = match serde_json::from_slice::<Control>(data) {
            Ok(m) => m,
            Err(e) if self.phase == Phase::AwaitStart => {
                return self.fail(Fault::Protocol(format!("a control message is not JSON: {e}")));
            }
            // Later, an unknown message changes nothing.
            Err(_) => return,
        };
        match (self.phase, message) {
            (Phase::AwaitStart, Control::UploadStart(announce)) => {
                self.phase = Phase::AwaitHeld;
                self.last_checkpoint = now;
                self.actions.push_back(ReceiverAction::LookUp(announce.clone()));
                self.announced = Some(announce);
            }
            (Phase::Failed | Phase::Done, _) => {}
            (_, Control::Error { code, message, .. }) => self.fail_quietly(Fault::Remote { code, message }),
            _ => {}
        }
    }

    /// What an earlier connection left of the announced transfer (empty if nothing).
    pub fn held(&mut self, now: Instant, held: Ranges) {
        let Some(a) = self.announced.clone().filter(|_| self.phase == Phase::AwaitHeld) else { return };
        let reassembly = match Reassembly::announced(self.limits, a.size, a.chunk_size, held) {
            Ok(r) => r,
            Err(e) => return self.fail(e.into()),
        };
        if reassembly.total() != Some(a.total_chunks) {
            return self.fail(Fault::Protocol(format!(
                "{} bytes in chunks of {} are not {} chunks",
                a.size, a.chunk_size, a.total_chunks
            )));
        }
        let ranges = reassembly.held().spans();
        self.reassembly = reassembly;
        self.phase = Phase::Receiving;
        self.last_progress = now;
        self.actions.push_back(ReceiverAction::Send(Control::ResumeState { transfer_id: a.transfer_id, ranges }));
        self.finish_if_complete();
    }

    /// A message on the upload channel. `Some` when its payload (the bytes after the header)
    /// is to be written where the placement says; the driver writes it before taking actions.
    pub fn handle_upload(&mut self, now: Instant, binary: bool, data: &[u8]) -> Option<Placement> {
        if self.phase == Phase::Failed {
            return None;
        }
        let frame = match decode(data, self.limits.max_message) {
            Ok(f) => f,
            Err(e) => {
                self.fail(e.into());
                return None;
            }
        };
        let (index, total, payload) = match frame {
            Frame::Keepalive(bytes) => {
                match self.keepalives.on_keepalive(now) {
                    Ok(()) => self.actions.push_back(ReceiverAction::Echo { binary, data: bytes.to_vec() }),
                    Err(e) => self.fail(e.into()),
                }
                return None;
            }
            Frame::Chunk { index, total, payload } => (index, total, payload),
        };
        if self.phase != Phase::Receiving {
            self.fail(FrameError::AfterComplete { index }.into());
            return None;
        }
        let offset = match self.reassembly.accept(index, total, payload.len()) {
            Ok(Accepted::Write { offset }) => offset,
            Ok(Accepted::Duplicate) => return None,
            Err(e) => {
                self.fail(e.into());
                return None;
            }
        };
        let chunk_size = self.reassembly.chunk_size().unwrap_or(0);
        if self.announced.is_some() && now.duration_since(self.last_checkpoint) >= CHECKPOINT_EVERY {
            self.last_checkpoint = now;
            self.actions.push_back(ReceiverAction::Checkpoint(self.reassembly.held().clone()));
        }
        if now.duration_since(self.last_progress) >= PROGRESS_EVERY {
            self.last_progress = now;
            self.progress();
        }
        self.finish_if_complete();
        Some(Placement { index, offset, total_chunks: total, chunk_size })
    }

    /// The connection closed.
    pub fn closed(&mut self) {
        if !matches!(self.phase, Phase::Done | Phase::Failed) {
            self.fail_quietly(Fault::Closed);
        }
    }

    /// The driver stored the file as `key`, whose SHA-256 is `sha256`.
    pub fn stored(&mut self, key: String, sha256: String) {
        if self.phase != Phase::Storing {
            return;
        }
        self.phase = Phase::Done;
        let size = self.reassembly.size().unwrap_or(0);
        let transfer_id = self.announced.as_ref().filter(|_| self.control).map(|a| a.transfer_id.clone());
        self.actions.push_back(ReceiverAction::Send(Control::Complete { transfer_id, key, size, sha256 }));
    }

    /// The driver could not do what it was asked (look up, write, checkpoint or store): the
    /// transfer ends with `fault`.
    pub fn failed(&mut self, fault: Fault) {
        if !matches!(self.phase, Phase::Done | Phase::Failed) {
            self.fail(fault);
        }
    }

    /// What is held so far.
    pub fn held_chunks(&self) -> &Ranges {
        self.reassembly.held()
    }

    fn progress(&mut self) {
        let received_chunks = self.reassembly.held().len();
        let total_chunks = self.reassembly.total().unwrap_or(0);
        self.actions.push_back(ReceiverAction::Progress { received_chunks, total_chunks });
        if let Some(a) = self.announced.as_ref().filter(|_| self.control) {
            let transfer_id = a.transfer_id.clone();
            self.actions.push_back(ReceiverAction::Send(Control::Progress {
                transfer_id,
                received_chunks,
                total_chunks,
            }));
        }
    }

    fn finish_if_complete(&mut self) {
        let Some(size) = self.reassembly.size() else { return };
        self.phase = Phase::Storing;
        self.progress();
        let sha256 = self.announced.as_ref().and_then(|a| a.sha256.clone());
        self.actions.push_back(ReceiverAction::Finish { size, sha256 });
    }

    /// Ends the transfer and tells the peer why.
    fn fail(&mut self, fault: Fault) {
        let transfer_id = self.announced.as_ref().map(|a| a.transfer_id.clone());
        let message = Control::Error { transfer_id, code: fault.code().to_owned(), message: fault.to_string() };
        self.actions.push_back(ReceiverAction::Send(message));
        self.fail_quietly(fault);
    }

    /// Ends the transfer without a word (the peer said why, or cannot hear).
    fn fail_quietly(&mut self, fault: Fault) {
        self.phase = Phase::Failed;
        self.actions.push_back(ReceiverAction::Fail(fault));
    }
}
