//! `POST /v1/rtc/offer`: a WebRTC offer in (`{"type":"offer","sdp":"…"}`), the server's answer
//! out, the server then a receiving peer for data-channel uploads ([`crate::rtc`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use ferry_rtc::Description;

use super::json;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::Json;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/rtc/offer", post(offer))
}

async fn offer(State(st): State<Arc<AppState>>, Json(offer): Json<Description>) -> Result<Response, ApiError> {
    let (answer, _) = crate::rtc::accept_offer(Arc::clone(&st), offer).await?;
    Ok(json(StatusCode::OK, &answer))
}
