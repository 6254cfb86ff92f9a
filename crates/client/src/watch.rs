//! Following an upload's events (`GET /v1/uploads/{id}/events`) to their end.
//!
//! The stream is Server-Sent Events; each event's id is remembered, so when the connection drops
//! (or the server restarts) the watch reconnects with `Last-Event-ID` and misses nothing. It ends
//! at the upload's final event: `final_result` when it has a processor, `completed` when it has
//! none, or `failed`, `cancelled`, `expired`.

use std::time::{Duration, Instant};

use ferry_core::events::{EventRecord, ends_stream};
use ferry_core::schedule::{Action, RetryPolicy, Scheduler};
use futures_util::StreamExt as _;

use crate::api::Api;
use crate::error::ClientError;
use crate::upload::seed;

/// Reads the upload's events after `after` and hands each to `on_event`, reconnecting as needed,
/// until the final one; returns it.
pub async fn watch(
    api: &Api,
    upload_id: &str,
    after: u64,
    policy: &RetryPolicy,
    mut on_event: impl FnMut(&EventRecord),
) -> Result<EventRecord, ClientError> {
    let processor = api.status(upload_id).await?.processing.map(|p| p.kind);
    let mut last = after;
    // Reconnections are spaced like retries of one part; an event received resets the count.
    let one = ferry_core::plan::PartSpan { part_number: 1, offset: 0, size: 0 };
    let mut sched = Scheduler::new(vec![one], |_| false, 1, *policy, seed());
    let mut error: Option<ClientError> = None;
    loop {
        match sched.poll(Instant::now()) {
            Action::Start { .. } => {}
            Action::WaitUntil(t) => {
                tokio::time::sleep_until(t.into()).await;
                continue;
            }
            Action::Idle | Action::Complete | Action::Fail(_) => {
                return Err(error.unwrap_or_else(|| ClientError::Protocol("the event stream kept failing".to_owned())));
            }
        }
        let res = match api.events(upload_id, last).await {
            Ok(r) => r,
            Err(e) => {
                sched.on_failure(1, Instant::now(), e.failure());
                error = Some(e);
                continue;
            }
        };
        let mut stream = eventsource_stream::EventStream::new(res.bytes_stream());
        let mut got_any = false;
        let ended = loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    let record: EventRecord = serde_json::from_str(&ev.data)
                        .map_err(|e| ClientError::Protocol(format!("an event is not what ferry sends: {e}")))?;
                    if record.id <= last {
                        continue;
                    }
                    last = record.id;
                    got_any = true;
                    on_event(&record);
                    if ends_stream(&record.event, processor) {
                        return Ok(record);
                    }
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break None,
            }
        };
        let why = ended.unwrap_or_else(|| "the server closed the stream".to_owned());
        tracing::debug!(upload_id, last, %why, "event stream ended; reconnecting");
        if got_any {
            sched = Scheduler::new(vec![one], |_| false, 1, *policy, seed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            sched.on_failure(1, Instant::now(), ferry_core::schedule::Failure::Retryable { retry_after: None });
        }
        error = Some(ClientError::Protocol(format!("the event stream broke: {why}")));
    }
}
