//! The protocol of a file sent over data channels (DESIGN.md, "Data-channel file transfer"), as
//! two state machines with no I/O: the [`Receiver`] and the [`Sender`].
//!
//! Beside the upload channel, which carries the frames of [`crate::frames`], a JSON `control`
//! channel carries [`Control`] messages: the sender announces the file (`upload_start`), the
//! receiver says which chunks it already holds (`resume_state`, so a sender that reconnects sends
//! only the rest), reports `progress`, and ends with `complete` (where the file went, and its
//! SHA-256) or `error`. A peer with no control channel (seed 004's SDK) only sends frames; the
//! receiver then answers `complete` or `error` as one text message on the upload channel.
//!
//! Each machine is driven the same way: hand it what arrived (`handle_*`, with the time), then
//! take its [`ReceiverAction`]s or [`SenderAction`]s until there are none, and wake it at
//! `poll_timeout`. Time is always an argument, so every rule here is tested in virtual time.

mod receiver;
mod sender;
#[cfg(test)]
mod simulation;

use serde::{Deserialize, Serialize};

use crate::frames::FrameError;

pub use receiver::{CHECKPOINT_EVERY, Placement, Receiver, ReceiverAction};
pub use sender::{KEEPALIVE_EVERY, Sender, SenderAction};

/// How often progress is reported, at most.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What a sender announces in `upload_start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub transfer_id: String,
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub total_chunks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A processor the receiver runs on the file as it arrives (one it was configured with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
}

/// Why a transfer ended without its file, by whose doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("the peer sent something wrong: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("the peer reported an error: {message} ({code})")]
    Remote { code: String, message: String },
    #[error("the file's SHA-256 is {actual}, not the {expected} announced")]
    Checksum { expected: String, actual: String },
    #[error("the file could not be stored: {0}")]
    Storage(String),
    /// The receiver will not take this transfer as asked (a processor it does not know, a name
    /// it cannot store, a resume of nothing it holds).
    #[error("{message}")]
    Refused { code: String, message: String },
    #[error("the connection closed before the transfer finished")]
    Closed,
}

impl Fault {
    /// The `code` of the `error` message this becomes.
    pub fn code(&self) -> &str {
        match self {
            Fault::Frame(e) => e.code(),
            Fault::Checksum { .. } => "checksum_mismatch",
            Fault::Protocol(_) => "protocol_error",
            Fault::Storage(_) => "storage_error",
            Fault::Refused { code, .. } => code,
            Fault::Remote { .. } | Fault::Closed => "transfer_failed",
        }
    }

    /// Whether what arrived is worth keeping for the sender to resume: the connection broke, but
    /// nothing the peer sent was wrong.
    pub fn keeps_progress(&self) -> bool {
        matches!(self, Fault::Closed)
    }
}

/// JSON messages of the `control` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The sender announces a transfer.
    UploadStart(Announce),
    /// The receiver holds these chunks already (`[start, end)` ranges): send the rest.
    ResumeState {
        transfer_id: String,
        ranges: Vec<[u32; 2]>,
    },
    Progress {
        transfer_id: String,
        received_chunks: u64,
        total_chunks: u32,
    },
    /// Stored and verified.
    Complete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer_id: Option<String>,
        key: String,
        size: u64,
        sha256: String,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer_id: Option<String>,
        code: String,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_have_their_wire_shape() {
        let start: Control = serde_json::from_str(
            r#"{"type":"upload_start","transfer_id":"t","name":"a.mp4","size":5,"chunk_size":49152,"total_chunks":1}"#,
        )
        .unwrap();
        assert!(matches!(start, Control::UploadStart(Announce { total_chunks: 1, sha256: None, .. })));
        let resume = Control::ResumeState { transfer_id: "t".into(), ranges: vec![[0, 3], [5, 6]] };
        assert_eq!(
            serde_json::to_string(&resume).unwrap(),
            r#"{"type":"resume_state","transfer_id":"t","ranges":[[0,3],[5,6]]}"#
        );
        let err = Control::Error { transfer_id: None, code: "total_changed".into(), message: "m".into() };
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"type":"error","code":"total_changed","message":"m"}"#);
        assert!(serde_json::from_str::<Control>(r#"{"type":"upload_start"}"#).is_err());
    }
}
