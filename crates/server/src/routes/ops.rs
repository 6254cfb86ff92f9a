//! `/healthz` and `/metrics`: unauthenticated, for load balancers and scrapers.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics))
}

/// `ok`, or `degraded` while the bus cannot be reached: uploads, downloads and events from the
/// store still work then (so a load balancer should keep sending), signaling does not.
async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let bus = match st.signal.bus.check().await {
        Ok(()) => serde_json::json!({ "status": "ok", "instance": st.signal.bus.instance() }),
        Err(e) => {
            serde_json::json!({ "status": "unavailable", "instance": st.signal.bus.instance(), "error": e.to_string() })
        }
    };
    let status = if bus["status"] == "ok" { "ok" } else { "degraded" };
    super::json(StatusCode::OK, &serde_json::json!({ "status": status, "bus": bus }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], st.metrics.render())
        .into_response()
}
