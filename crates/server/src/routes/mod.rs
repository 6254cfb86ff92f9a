//! The HTTP surface: one module per route family. Handlers decode, authorize, call the service
//! and encode — nothing else.

mod cors;
mod events;
mod objects;
mod ops;
mod parts;
mod rooms;
mod rtc;
pub(crate) mod signal;
mod uploads;
mod uppy;
mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::RequestLabels;
use ferry_store::ByteStream;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .merge(uploads::routes())
        .merge(events::routes())
        .merge(rtc::routes())
        .merge(objects::api_routes())
        .merge(rooms::routes())
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), crate::auth::require_bearer))
        // After the bearer layer: a WebSocket from a browser cannot carry the header, so the
        // token travels in its `join` message.
        .merge(signal::routes());
    let uppy =
        uppy::routes().route_layer(middleware::from_fn_with_state(Arc::clone(&state), crate::auth::require_bearer));
    Router::new()
        .nest("/v1", v1)
        .merge(uppy)
        .merge(uppy::form_routes())
        .merge(parts::signed_routes())
        .merge(objects::signed_routes())
        .merge(ops::routes())
        .merge(web::routes())
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.config.max_json_bytes))
        .layer(middleware::from_fn_with_state(Arc::new(Semaphore::new(state.config.max_requests)), shed_load))
        .layer(middleware::from_fn(close_after_refusal))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), cors::cors))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}

/// Records each request's latency by route template, and logs it.
async fn track(State(state): State<Arc<AppState>>, matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.run(req).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    tracing::debug!(%method, %route, status, ms = elapsed.as_millis() as u64, "request");
    state
        .metrics
        .request_duration
        .get_or_create(&RequestLabels { route, method, status })
        .observe(elapsed.as_secs_f64());
    res
}

/// A part body as a store stream: every byte read is counted (accepted or not), and a sender that
/// goes quiet for `idle` is cut off rather than holding its slot forever.
pub(crate) fn part_body(body: Body, metrics: ferry_service::Metrics, idle: Duration) -> ByteStream {
    let stream = body.into_data_stream();
    Box::pin(futures_util::stream::unfold((stream, false), move |(mut s, failed)| {
        let metrics = metrics.clone();
        async move {
            if failed {
                return None;
            }
            match tokio::time::timeout(idle, s.next()).await {
                Err(_) => {
                    Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the part body stalled")), (s, true)))
                }
                Ok(None) => None,
                Ok(Some(Ok(bytes))) => {
                    metrics.bytes_received.inc_by(bytes.len() as u64);
                    Some((Ok(bytes), (s, false)))
                }
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), (s, true))),
            }
        }
    }))
}

/// The answer to a part PUT: its ETag as a header and the part as JSON.
pub(crate) fn part_put_response(result: Result<ferry_core::api::PartInfo, ApiError>) -> Response {
    let part = match result {
        Ok(part) => part,
        Err(e) => return e.into_response(),
    };
    let mut res = json(StatusCode::OK, &part);
    if let Ok(v) = HeaderValue::from_str(&part.etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// Past `max_requests` in flight, answer at once with 503 and `Retry-After` rather than queue: a
/// client backs off and comes back, and memory stays bounded by configuration.
async fn shed_load(State(slots): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    let Ok(_slot) = slots.try_acquire() else {
        let mut res =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the server is at capacity; retry shortly")
                .into_response();
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    next.run(req).await
}

/// A refusal often comes before the request body is read (bad signature, wrong size, too large),
/// and the server will not read the rest. Saying `Connection: close` stops the client from sending
/// its next request on a connection that is about to be dropped.
async fn close_after_refusal(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    let mut res = next.run(req).await;
    if has_body && (res.status().is_client_error() || res.status().is_server_error()) {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A JSON response with a status.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}
