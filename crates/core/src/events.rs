//! Upload events: what `GET /v1/uploads/{id}/events` streams, and the tally that folds them.
//!
//! An upload's events form one ordered log with ids 1, 2, 3, …; the log is what the server keeps,
//! so a client reconnecting with `Last-Event-ID` — to this server after a restart, or to another
//! one sharing the store — is sent exactly what it missed. Everything the stream reports about
//! progress and processing is a fold of that log ([`Tally`]): replaying the log rebuilds the
//! tally, and [`Tally::follow_ups`] says which derived events (`progress`, `partial_result`,
//! `final_result`) a new event calls for. No I/O and no clock here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::etag::bare_etag;

/// A part's processing result is cut to this many bytes.
pub const MAX_PART_RESULT: usize = 64 * 1024;
/// A final result (the in-order concatenation of part results, or a complete processor's output)
/// is cut to this many bytes.
pub const MAX_FINAL_RESULT: usize = 4 * 1024 * 1024;
/// `partial_result` events carry the whole concatenation only while it is at most this long;
/// past it they carry only what was appended.
pub const MAX_PARTIAL_IN_EVENT: usize = 256 * 1024;

/// One event of an upload, as the `data:` of a Server-Sent Event (a JSON object with a `type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UploadEvent {
    /// The session exists.
    Initialized {
        upload_id: String,
        key: String,
        size: u64,
        part_size: u64,
        part_count: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        processor: Option<String>,
    },
    /// A part is stored (again, if it was re-sent).
    PartReceived {
        part_number: u32,
        size: u64,
        etag: String,
    },
    /// Follows every `part_received` and `part_processed`.
    Progress(Progress),
    /// A part processor finished with this part.
    PartProcessed {
        part_number: u32,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The result was longer than [`MAX_PART_RESULT`] and was cut.
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
    },
    /// The results of parts `1..=through_part` are all in: `appended` is the text this event adds
    /// to the in-order concatenation, `result` the whole of it while it is short enough.
    PartialResult {
        through_part: u32,
        appended: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    /// The object is assembled and verified.
    Completed {
        key: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        etag: String,
    },
    /// Processing of the whole upload is over: every part has an outcome (part processors), or
    /// the complete processor ran.
    FinalResult(FinalResult),
    Failed {
        code: String,
        message: String,
    },
    Cancelled,
    Expired,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl UploadEvent {
    /// The `type` field's value.
    pub fn kind(&self) -> &'static str {
        match self {
            UploadEvent::Initialized { .. } => "initialized",
            UploadEvent::PartReceived { .. } => "part_received",
            UploadEvent::Progress(_) => "progress",
            UploadEvent::PartProcessed { .. } => "part_processed",
            UploadEvent::PartialResult { .. } => "partial_result",
            UploadEvent::Completed { .. } => "completed",
            UploadEvent::FinalResult(_) => "final_result",
            UploadEvent::Failed { .. } => "failed",
            UploadEvent::Cancelled => "cancelled",
            UploadEvent::Expired => "expired",
        }
    }
}

/// The outcome of processing a whole upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalResult {
    pub status: FinalStatus,
    pub result: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_parts: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result was longer than [`MAX_FINAL_RESULT`] and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// How processing of a whole upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    /// Every part (or the object) was processed.
    Completed,
    /// Some parts failed (see `failed_parts`), or the complete processor did; a reprocess may
    /// still mend it.
    Failed,
}

/// Counts reported by `progress` events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub size: u64,
    pub part_count: u32,
    pub bytes_received: u64,
    pub parts_received: u32,
    pub parts_processed: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts_failed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An event as the log keeps it: its id and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub event: UploadEvent,
}

/// What kind of processing an upload asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessorKind {
    /// Runs on each part as soon as it is stored.
    Part,
    /// Runs once, on the assembled object.
    Complete,
}

/// One part's processing outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartOutcome {
    pub part_number: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The fold of an upload's event log.
#[derive(Debug, Clone)]
pub struct Tally {
    size: u64,
    part_count: u32,
    processor: Option<ProcessorKind>,
    /// Part number → size, for every part received at least once.
    received: BTreeMap<u32, u64>,
    etags: BTreeMap<u32, String>,
    outcomes: BTreeMap<u32, PartOutcome>,
    /// Parts `1..=through` are in the partial result.
    through: u32,
    /// The partial result while it is short enough to repeat in events.
    partial: Option<String>,
    completed: bool,
    final_result: Option<FinalResult>,
    /// Cancelled, expired or failed: nothing follows.
    ended: bool,
    last_id: u64,
}

impl Tally {
    /// An empty log for an upload of `size` bytes in `part_count` parts.
    pub fn new(size: u64, part_count: u32, processor: Option<ProcessorKind>) -> Tally {
        Tally {
            size,
            part_count,
            processor,
            received: BTreeMap::new(),
            etags: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            through: 0,
            partial: Some(String::new()),
            completed: false,
            final_result: None,
            ended: false,
            last_id: 0,
        }
    }

    /// The id of the last event folded in.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Folds one event of the log in.
    pub fn apply(&mut self, record: &EventRecord) {
        self.last_id = self.last_id.max(record.id);
        match &record.event {
            UploadEvent::PartReceived { part_number, size, etag } => {
                self.received.insert(*part_number, *size);
                self.etags.insert(*part_number, etag.clone());
            }
            UploadEvent::PartProcessed { part_number, ok, result, error, .. } => {
                self.outcomes.insert(
                    *part_number,
                    PartOutcome { part_number: *part_number, ok: *ok, result: result.clone(), error: error.clone() },
                );
            }
            UploadEvent::PartialResult { through_part, appended, .. } => {
                self.through = self.through.max(*through_part);
                if let Some(p) = &mut self.partial {
                    if p.len() + appended.len() <= MAX_PARTIAL_IN_EVENT {
                        p.push_str(appended);
                    } else {
                        self.partial = None;
                    }
                }
            }
            UploadEvent::Completed { .. } => self.completed = true,
            UploadEvent::FinalResult(f) => self.final_result = Some(f.clone()),
            UploadEvent::Failed { .. } | UploadEvent::Cancelled | UploadEvent::Expired => self.ended = true,
            UploadEvent::Initialized { .. } | UploadEvent::Progress(_) => {}
        }
    }

    pub fn progress(&self) -> Progress {
        Progress {
            size: self.size,
            part_count: self.part_count,
            bytes_received: self.received.values().sum(),
            parts_received: self.received.len() as u32,
            parts_processed: self.outcomes.values().filter(|o| o.ok).count() as u32,
            parts_failed: self.outcomes.values().filter(|o| !o.ok).count() as u32,
        }
    }

    /// The events that `event`, just folded in, calls for, in order. The caller folds each in
    /// before asking about the next.
    pub fn follow_ups(&self, event: &UploadEvent) -> Vec<UploadEvent> {
        let mut out = Vec::new();
        match event {
            UploadEvent::PartReceived { .. } => out.push(UploadEvent::Progress(self.progress())),
            UploadEvent::PartProcessed { .. } => {
                out.push(UploadEvent::Progress(self.progress()));
                out.extend(self.next_partial());
                if self.completed {
                    out.extend(self.part_final());
                }
            }
            UploadEvent::Completed { .. } if self.processor == Some(ProcessorKind::Part) => {
                out.extend(self.part_final());
            }
            _ => {}
        }
        out
    }

    /// A `partial_result` if the in-order prefix of processed parts grew.
    fn next_partial(&self) -> Option<UploadEvent> {
        let mut through = self.through;
        let mut appended = String::new();
        while let Some(o) = self.outcomes.get(&(through + 1)).filter(|o| o.ok) {
            appended.push_str(o.result.as_deref().unwrap_or_default());
            through += 1;
        }
        if through == self.through {
            return None;
        }
        let result = self
            .partial
            .as_ref()
            .filter(|p| p.len() + appended.len() <= MAX_PARTIAL_IN_EVENT)
            .map(|p| format!("{p}{appended}"));
        Some(UploadEvent::PartialResult { through_part: through, appended, result })
    }

    /// The `final_result` of a part-processed upload once every part has an outcome — again
    /// after a reprocess changed one.
    fn part_final(&self) -> Option<UploadEvent> {
        if self.outcomes.len() < self.part_count as usize {
            return None;
        }
        let failed_parts: Vec<u32> = self.outcomes.values().filter(|o| !o.ok).map(|o| o.part_number).collect();
        let mut result = String::new();
        let mut truncated = false;
        for o in self.outcomes.values().filter(|o| o.ok) {
            let text = o.result.as_deref().unwrap_or_default();
            if result.len() + text.len() > MAX_FINAL_RESULT {
                result.push_str(cut(text, MAX_FINAL_RESULT - result.len()));
                truncated = true;
                break;
            }
            result.push_str(text);
        }
        let status = if failed_parts.is_empty() { FinalStatus::Completed } else { FinalStatus::Failed };
        let error = (!failed_parts.is_empty()).then(|| format!("{} part(s) failed processing", failed_parts.len()));
        let outcome = FinalResult { status, result, failed_parts, error, truncated };
        (self.final_result.as_ref() != Some(&outcome)).then_some(UploadEvent::FinalResult(outcome))
    }

    pub fn part_received(&self, part_number: u32) -> bool {
        self.received.contains_key(&part_number)
    }

    /// Parts received but without a processing outcome, in order.
    pub fn unprocessed(&self) -> Vec<u32> {
        self.received.keys().copied().filter(|n| !self.outcomes.contains_key(n)).collect()
    }

    pub fn outcomes(&self) -> impl Iterator<Item = &PartOutcome> {
        self.outcomes.values()
    }

    pub fn is_completed(&self) -> bool {
        self.completed
    }

    pub fn final_result(&self) -> Option<&FinalResult> {
        self.final_result.as_ref()
    }

    /// Whether the log has reached an event a stream ends on ([`ends_stream`]).
    pub fn is_settled(&self) -> bool {
        self.ended || self.final_result.is_some() || (self.completed && self.processor.is_none())
    }

    /// Whether the upload was cancelled, expired or failed: its log takes no more events.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether `part_number` was received with this ETag.
    pub fn has_part(&self, part_number: u32, etag: &str) -> bool {
        self.etags.get(&part_number).is_some_and(|e| bare_etag(e) == bare_etag(etag))
    }
}

/// Whether a stream of an upload with `processor` can end after `event`: nothing more follows it
/// unless a client asks for reprocessing.
pub fn ends_stream(event: &UploadEvent, processor: Option<ProcessorKind>) -> bool {
    match event {
        UploadEvent::Failed { .. } | UploadEvent::Cancelled | UploadEvent::Expired => true,
        UploadEvent::FinalResult(_) => true,
        UploadEvent::Completed { .. } => processor.is_none(),
        _ => false,
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, event: UploadEvent) -> EventRecord {
        EventRecord { id, at: OffsetDateTime::UNIX_EPOCH, event }
    }

    /// Folds `event` in and then every follow-up, as the server does; returns what was emitted.
    fn emit(t: &mut Tally, event: UploadEvent) -> Vec<UploadEvent> {
        let mut queue = vec![event];
        let mut out = Vec::new();
        while !queue.is_empty() {
            let e = queue.remove(0);
            t.apply(&record(t.last_id() + 1, e.clone()));
            let mut next = t.follow_ups(&e);
            next.append(&mut queue);
            queue = next;
            out.push(e);
        }
        out
    }

    fn processed(n: u32, text: &str) -> UploadEvent {
        UploadEvent::PartProcessed {
            part_number: n,
            ok: true,
            result: Some(text.into()),
            error: None,
            truncated: false,
        }
    }

    fn failed(n: u32) -> UploadEvent {
        UploadEvent::PartProcessed {
            part_number: n,
            ok: false,
            result: None,
            error: Some("exit 1".into()),
            truncated: false,
        }
    }

    fn received(n: u32, size: u64) -> UploadEvent {
        UploadEvent::PartReceived { part_number: n, size, etag: "\"e\"".into() }
    }

    fn completed() -> UploadEvent {
        UploadEvent::Completed { key: "k".into(), size: 30, sha256: None, etag: "\"x\"".into() }
    }

    fn kinds(events: &[UploadEvent]) -> Vec<&'static str> {
        events.iter().map(UploadEvent::kind).collect()
    }

    #[test]
    fn wire_shape() {
        let r = record(7, processed(2, "two"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["type"], "part_processed");
        assert_eq!(json["id"], 7);
        assert_eq!(json["part_number"], 2);
        assert_eq!(json["result"], "two");
        assert!(json.get("error").is_none() && json.get("truncated").is_none());
        let back: EventRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        let c = serde_json::to_value(record(1, UploadEvent::Cancelled)).unwrap();
        assert_eq!(c["type"], "cancelled");
        let p = serde_json::to_value(UploadEvent::Progress(Progress { size: 5, ..Progress::default() })).unwrap();
        assert_eq!((p["type"].as_str(), p["size"].as_u64()), (Some("progress"), Some(5)));
        assert!(serde_json::from_str::<UploadEvent>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn progress_counts_distinct_parts() {
        let mut t = Tally::new(30, 3, None);
        let out = emit(&mut t, received(1, 10));
        assert_eq!(kinds(&out), ["part_received", "progress"]);
        emit(&mut t, received(1, 10));
        let out = emit(&mut t, received(3, 10));
        let UploadEvent::Progress(p) = &out[1] else { panic!("{out:?}") };
        assert_eq!((p.parts_received, p.bytes_received, p.parts_processed), (2, 20, 0));
        assert_eq!(t.unprocessed(), [1, 3]);
        assert!(t.has_part(1, "e") && t.has_part(1, "\"e\"") && !t.has_part(1, "f") && !t.has_part(2, "e"));
    }

    #[test]
    fn partial_results_follow_part_order() {
        let mut t = Tally::new(30, 3, Some(ProcessorKind::Part));
        for n in 1..=3 {
            emit(&mut t, received(n, 10));
        }
        // Part 2 first: nothing to append yet.
        assert_eq!(kinds(&emit(&mut t, processed(2, "b"))), ["part_processed", "progress"]);
        let out = emit(&mut t, processed(1, "a"));
        assert_eq!(kinds(&out), ["part_processed", "progress", "partial_result"]);
        assert_eq!(
            out[2],
            UploadEvent::PartialResult { through_part: 2, appended: "ab".into(), result: Some("ab".into()) }
        );
        // All processed but not completed: no final result yet.
        let out = emit(&mut t, processed(3, "c"));
        assert_eq!(kinds(&out), ["part_processed", "progress", "partial_result"]);
        let out = emit(&mut t, completed());
        assert_eq!(kinds(&out), ["completed", "final_result"]);
        assert!(
            matches!(&out[1], UploadEvent::FinalResult(f) if f.status == FinalStatus::Completed && f.result == "abc")
        );
        assert!(t.is_settled());
        let part = Some(ProcessorKind::Part);
        assert!(ends_stream(&out[1], part) && !ends_stream(&out[0], part) && ends_stream(&out[0], None));
    }

    #[test]
    fn a_failed_part_holds_the_prefix_until_reprocessed() {
        let mut t = Tally::new(20, 2, Some(ProcessorKind::Part));
        emit(&mut t, completed());
        emit(&mut t, failed(1));
        let out = emit(&mut t, processed(2, "b"));
        assert_eq!(kinds(&out), ["part_processed", "progress", "final_result"]);
        let UploadEvent::FinalResult(f) = &out[2] else { panic!() };
        assert_eq!((f.status, f.failed_parts.as_slice(), f.result.as_str()), (FinalStatus::Failed, &[1][..], "b"));
        let out = emit(&mut t, processed(1, "a"));
        assert_eq!(kinds(&out), ["part_processed", "progress", "partial_result", "final_result"]);
        assert!(
            matches!(&out[3], UploadEvent::FinalResult(f) if f.status == FinalStatus::Completed && f.result == "ab")
        );
        // The same outcome again changes nothing, so no new final result.
        assert_eq!(kinds(&emit(&mut t, processed(1, "a"))), ["part_processed", "progress"]);
    }

    #[test]
    fn long_partials_carry_only_what_they_append() {
        let mut t = Tally::new(20, 2, Some(ProcessorKind::Part));
        let big = "x".repeat(MAX_PARTIAL_IN_EVENT - 1);
        let out = emit(&mut t, processed(1, &big));
        assert!(matches!(&out[2], UploadEvent::PartialResult { result: Some(r), .. } if r.len() == big.len()));
        let out = emit(&mut t, processed(2, "yy"));
        assert!(
            matches!(&out[2], UploadEvent::PartialResult { result: None, appended, through_part: 2 } if appended == "yy")
        );
    }

    #[test]
    fn replaying_the_log_rebuilds_the_tally() {
        let mut live = Tally::new(30, 3, Some(ProcessorKind::Part));
        let mut log = Vec::new();
        for e in [received(1, 10), received(2, 10), processed(2, "b"), received(3, 10), processed(1, "a"), completed()]
        {
            for x in emit(&mut live, e) {
                log.push(record(log.len() as u64 + 1, x));
            }
        }
        let mut replayed = Tally::new(30, 3, Some(ProcessorKind::Part));
        log.iter().for_each(|r| replayed.apply(r));
        assert_eq!(replayed.last_id(), log.len() as u64);
        assert_eq!(replayed.progress(), live.progress());
        assert_eq!(replayed.unprocessed(), [3]);
        assert_eq!(replayed.follow_ups(&processed(3, "c")), live.follow_ups(&processed(3, "c")));
        assert!(!replayed.is_settled());
    }

    #[test]
    fn ends() {
        let mut t = Tally::new(1, 1, None);
        emit(&mut t, completed());
        assert!(t.is_settled());
        let mut t = Tally::new(1, 1, Some(ProcessorKind::Complete));
        let out = emit(&mut t, completed());
        assert_eq!(kinds(&out), ["completed"], "the complete processor's result comes from outside");
        assert!(!t.is_settled());
        emit(&mut t, UploadEvent::Cancelled);
        assert!(t.is_settled() && t.is_ended());
    }

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
