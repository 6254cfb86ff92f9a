//! The HTTP surface: one module per route family. Handlers decode, authorize, call the session
//! domain and encode — nothing else.

mod objects;
mod ops;
mod parts;
mod uploads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels};
use ferry_store::ByteStream;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .merge(uploads::routes())
        .merge(objects::api_routes())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::auth::require_bearer,
        ));
    Router::new()
        .nest("/v1", v1)
        .merge(parts::signed_routes())
        .merge(objects::signed_routes())
        .merge(ops::routes())
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_json_bytes,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Records each request's latency by route template, and logs it.
async fn track(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
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
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .observe(elapsed.as_secs_f64());
    res
}

/// A part body as a store stream: every byte read is counted (accepted or not), and a sender that
/// goes quiet for `idle` is cut off rather than holding its slot forever.
pub(crate) fn part_body(body: Body, metrics: Metrics, idle: Duration) -> ByteStream {
    let stream = body.into_data_stream();
    Box::pin(futures_util::stream::unfold(
        (stream, false),
        move |(mut s, failed)| {
            let metrics = metrics.clone();
            async move {
                if failed {
                    return None;
                }
                match tokio::time::timeout(idle, s.next()).await {
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the part body stalled",
                        )),
                        (s, true),
                    )),
                    Ok(None) => None,
                    Ok(Some(Ok(bytes))) => {
                        metrics.bytes_received.inc_by(bytes.len() as u64);
                        Some((Ok(bytes), (s, false)))
                    }
                    Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), (s, true))),
                }
            }
        },
    ))
}

/// A JSON response with a status.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}
