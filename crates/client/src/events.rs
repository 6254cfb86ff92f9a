//! What a transfer reports while it runs. The CLI draws progress bars or prints JSON lines from
//! these; tests read them to act at the right moment.

use serde::Serialize;
use tokio::sync::mpsc;

/// One thing that happened. Serialized with a `type` field, one JSON object per event.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A transfer began (or resumed: `resumed_bytes` were already on the server).
    Started {
        file: String,
        key: String,
        upload_id: Option<String>,
        size: u64,
        part_size: u64,
        part_count: u32,
        resumed_bytes: u64,
    },
    /// An interrupted upload could not be continued; a new one starts.
    Restarted {
        file: String,
        reason: String,
    },
    /// Parts the journal had that the server no longer holds (or holds with other bytes): re-sent.
    Reconciled {
        file: String,
        lost: Vec<u32>,
        conflicting: Vec<u32>,
    },
    /// Bytes confirmed plus bytes in flight, throttled.
    Progress {
        file: String,
        bytes: u64,
        size: u64,
    },
    PartDone {
        file: String,
        part_number: u32,
        size: u64,
    },
    Retry {
        file: String,
        part_number: u32,
        attempt: u32,
        delay_ms: u64,
        error: String,
    },
    /// Signed URLs cannot be reached; parts go through the API instead.
    Fallback {
        file: String,
        reason: String,
    },
    /// Hashing or verifying local data (no network).
    Verifying {
        file: String,
    },
    Completed {
        file: String,
        key: String,
        size: u64,
        sha256: String,
    },
    Failed {
        file: String,
        error: String,
    },
    /// An event from the server's stream of the upload (`ferry put --follow`).
    Server {
        file: String,
        event: ferry_core::events::EventRecord,
    },
}

/// The sending side; dropping every receiver silently discards events.
#[derive(Debug, Clone)]
pub struct EventSink(mpsc::UnboundedSender<Event>);

impl EventSink {
    pub fn emit(&self, e: Event) {
        let _ = self.0.send(e);
    }
}

pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventSink(tx), rx)
}
