//! `GET /v1/uploads/{id}/events` (Server-Sent Events) and `POST …/parts/{n}/reprocess`.
//!
//! A stream first replays the log after `Last-Event-ID` (header, or `last_event_id` in the query
//! for clients that cannot set headers), then follows it live. Every event carries its id, so a
//! client that reconnects — to this server after a restart, or to another sharing the store —
//! misses nothing and sees nothing twice. Events appended by other servers are picked up by
//! reading the log every few seconds. The stream ends after the upload's final event, after
//! `events_idle_timeout` with nothing to send, or when the server shuts down; keep-alive comments
//! keep idle proxies from cutting it meanwhile.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_core::events::{EventRecord, ProcessorKind, ends_stream};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use super::json;
use super::uploads::parse_part_number;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::sessions::Sessions;

/// How often a stream reads the log for events other servers appended.
const POLL: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/uploads/{id}/events", get(events)).route("/uploads/{id}/parts/{n}/reprocess", post(reprocess))
}

#[derive(Deserialize)]
struct EventsQuery {
    last_event_id: Option<String>,
}

fn parse_last_id(raw: Option<&str>) -> Result<u64, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(0),
        Some(s) => s.parse().map_err(|_| {
            ApiError::bad_request("invalid_last_event_id", format!("Last-Event-ID {s:?} is not an event id"))
        }),
    }
}

async fn events(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header = headers.get("last-event-id").map(|v| v.to_str().unwrap_or("invalid"));
    let last = parse_last_id(header.or(q.last_event_id.as_deref()))?;
    let (session, _) = st.sessions.load(&id).await?;
    // Subscribe before reading the log, so nothing appended in between is missed.
    let rx = st.sessions.events.subscribe(&id);
    let replay = st.sessions.events.read_after(&id, last).await?;
    // Nothing to replay, nothing more coming: end at once rather than idle.
    let settled = replay.is_empty()
        && !st.sessions.runner.busy(&id)
        && st.sessions.events.tally(session.log_spec()).await?.is_settled();
    let follow = Follow {
        sessions: Arc::clone(&st.sessions),
        upload_id: id,
        processor: session.processor_kind,
        last,
        pending: replay.into_iter().map(Arc::new).collect(),
        rx,
        done: settled,
        idle: st.config.events_idle_timeout,
        shutdown: st.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let record = f.next().await?;
        let data = serde_json::to_string(record.as_ref()).unwrap_or_default();
        let event = Event::default().id(record.id.to_string()).data(data);
        Some((Ok::<_, Infallible>(event), f))
    });
    let keep_alive = KeepAlive::new().interval(st.config.events_keepalive).text("keep-alive");
    let mut res = Sse::new(stream).keep_alive(keep_alive).into_response();
    // Proxies that buffer responses (nginx) would hold events back.
    res.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// A stream's position in an upload's log.
struct Follow {
    sessions: Arc<Sessions>,
    upload_id: String,
    processor: Option<ProcessorKind>,
    last: u64,
    pending: VecDeque<Arc<EventRecord>>,
    rx: broadcast::Receiver<Arc<EventRecord>>,
    done: bool,
    idle: Duration,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Follow {
    /// The next event to send, or `None` when the stream should end.
    async fn next(&mut self) -> Option<Arc<EventRecord>> {
        let idle_until = tokio::time::Instant::now() + self.idle;
        loop {
            if self.done {
                return None;
            }
            while let Some(r) = self.pending.pop_front() {
                if r.id <= self.last {
                    continue;
                }
                self.last = r.id;
                self.done = ends_stream(&r.event, self.processor);
                return Some(r);
            }
            let catch_up = tokio::select! {
                msg = self.rx.recv() => match msg {
                    // The next one in order: no need to read the log.
                    Ok(r) if r.id == self.last + 1 => {
                        self.pending.push_back(r);
                        false
                    }
                    Ok(r) => r.id > self.last,
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(POLL) => true,
                _ = tokio::time::sleep_until(idle_until) => return None,
                _ = self.shutdown.cancelled() => return None,
            };
            if catch_up {
                match self.sessions.events.read_after(&self.upload_id, self.last).await {
                    Ok(records) => self.pending.extend(records.into_iter().map(Arc::new)),
                    Err(e) => {
                        tracing::warn!(upload_id = %self.upload_id, error = %e, "cannot read the event log; ending the stream");
                        return None;
                    }
                }
            }
        }
    }
}

async fn reprocess(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let n = parse_part_number(&n)?;
    let queued = st.sessions.reprocess(&id, n).await?;
    Ok(json(StatusCode::ACCEPTED, &queued))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids() {
        assert_eq!(parse_last_id(None).unwrap(), 0);
        assert_eq!(parse_last_id(Some(" 42 ")).unwrap(), 42);
        for bad in ["-1", "x", "1.5", "99999999999999999999999"] {
            assert_eq!(parse_last_id(Some(bad)).unwrap_err().code, "invalid_last_event_id", "{bad}");
        }
    }
}
