//! `GET /v1/uploads/{id}/events` (Server-Sent Events) and `POST …/parts/{n}/reprocess`.
//!
//! A stream replays the log after `Last-Event-ID` (header, or `last_event_id` in the query for
//! clients that cannot set headers), then follows it live ([`ferry_service::Follow`]). Every
//! event carries its id, so a client that reconnects — to this server after a restart, or to
//! another sharing the store — misses nothing and sees nothing twice. Keep-alive comments keep
//! idle proxies from cutting the stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::json;
use super::uploads::parse_part_number;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

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
    let follow = st.service.follow(&id, last, st.shutdown.clone()).await?;
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

async fn reprocess(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let n = parse_part_number(&n)?;
    let queued = st.service.reprocess(&id, n).await?;
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
