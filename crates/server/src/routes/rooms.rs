//! `GET`/`PUT /v1/rooms/{room}/manifest`: a room's manifest of results
//! ([`ferry_service::Service::manifest`]). A read returns the version as the `ETag`; a write must
//! name the version it replaces (`If-Match`) or say there is none yet (`If-None-Match: *`), and
//! loses with 412 if another writer got there first.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use ferry_core::room::Manifest;
use ferry_store::Condition;

use super::json;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Path};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/rooms/{room}/manifest", get(read).put(write))
}

fn with_etag(mut res: Response, version: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

async fn read(State(st): State<Arc<AppState>>, Path(room): Path<String>) -> Result<Response, ApiError> {
    let (manifest, version) = st.service.manifest(&room).await?;
    let res = json(StatusCode::OK, &manifest);
    // No manifest yet: no ETag (the first write says If-None-Match: *).
    Ok(match version {
        Some(v) => with_etag(res, &v),
        None => res,
    })
}

async fn write(
    State(st): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(manifest): Json<Manifest>,
) -> Result<Response, ApiError> {
    let header_of = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::trim);
    let condition = match (header_of(header::IF_MATCH), header_of(header::IF_NONE_MATCH)) {
        (Some(v), None) => Condition::IfMatch(v.trim_start_matches("W/").trim_matches('"').to_owned()),
        (None, Some("*")) => Condition::IfAbsent,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                "say which version this replaces: If-Match with the ETag read, or If-None-Match: * for the first",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_precondition",
                "send either If-Match: \"ETAG\" or If-None-Match: *, not both",
            ));
        }
    };
    let version = st.service.write_manifest(&room, &manifest, condition).await?;
    Ok(with_etag(json(StatusCode::OK, &manifest), &version))
}
