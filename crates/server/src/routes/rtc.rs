//! `POST /v1/rtc/offer[?name=&processor=&resume=]`: a WebRTC offer in
//! (`{"type":"offer","sdp":"…"}`), the server's answer out (with the `resume` token of the
//! peer's upload beside it), the server then a receiving peer for data-channel uploads
//! ([`crate::rtc`]). The query is for peers without a control channel: the object's name, a
//! processor, and the token of an upload to carry on.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use ferry_rtc::Description;

use super::json;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::Json;
use crate::rtc::OfferOptions;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/rtc/offer", post(offer))
}

async fn offer(
    State(st): State<Arc<AppState>>,
    Query(options): Query<OfferOptions>,
    Json(offer): Json<Description>,
) -> Result<Response, ApiError> {
    let accepted = crate::rtc::accept_offer(Arc::clone(&st), offer, options, "api").await?;
    let body =
        serde_json::json!({ "type": accepted.answer.kind, "sdp": accepted.answer.sdp, "resume": accepted.resume });
    Ok(json(StatusCode::OK, &body))
}
