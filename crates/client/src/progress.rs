//! Progress of one transfer: bytes confirmed plus bytes in flight, reported as throttled
//! `Progress` events; and the total moved on the wire, retries included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::events::{Event, EventSink};

/// Bytes confirmed plus bytes in flight, reported as throttled `Progress` events.
pub(crate) struct Tracker {
    file: String,
    size: u64,
    confirmed: AtomicU64,
    in_flight: AtomicU64,
    sent: AtomicU64,
    started: Instant,
    last_emit_ms: AtomicU64,
    events: EventSink,
}

impl Tracker {
    pub(crate) fn new(file: &str, size: u64, confirmed: u64, events: EventSink) -> Tracker {
        Tracker {
            file: file.to_owned(),
            size,
            confirmed: AtomicU64::new(confirmed),
            in_flight: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            started: Instant::now(),
            last_emit_ms: AtomicU64::new(0),
            events,
        }
    }

    /// Bytes moved on the wire so far, retries included.
    pub(crate) fn moved(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub(crate) fn on_bytes(&self, n: u64) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
        self.sent.fetch_add(n, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_emit_ms.load(Ordering::Relaxed);
        if now >= last + 100
            && self.last_emit_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.emit();
        }
    }

    pub(crate) fn attempt_ended(&self, attempt_bytes: u64, stored: Option<u64>) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(attempt_bytes)));
        if let Some(size) = stored {
            self.confirmed.fetch_add(size, Ordering::Relaxed);
        }
        self.emit();
    }

    fn emit(&self) {
        let bytes = (self.confirmed.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)).min(self.size);
        self.events.emit(Event::Progress { file: self.file.clone(), bytes, size: self.size });
    }
}
