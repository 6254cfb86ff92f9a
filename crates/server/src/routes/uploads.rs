//! `/v1/uploads…`: sessions and the bearer-authorized part path.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post, put};
use ferry_core::api::{Complete, CreateUpload, PartDone, SignParts, SignedParts, UploadList, UploadState};
use serde::Deserialize;

use super::{json, part_body, part_put_response};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, OptionalJson, Path, Query};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/uploads", post(create).get(list))
        .route("/uploads/{id}", get(status).delete(cancel))
        .route("/uploads/{id}/parts/sign", post(sign))
        .route("/uploads/{id}/parts/{n}", put(put_part).layer(DefaultBodyLimit::disable()))
        .route("/uploads/{id}/parts/{n}/done", post(part_done))
        .route("/uploads/{id}/complete", post(complete))
}

async fn create(State(st): State<Arc<AppState>>, Json(req): Json<CreateUpload>) -> Result<Response, ApiError> {
    let created = st.service.create(req).await?;
    Ok(json(StatusCode::CREATED, &created))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(State(st): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(UploadState::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_state", "state must be uploading, completed, cancelled, expired or failed")
        })?),
    };
    let uploads = st.service.list(filter).await?;
    Ok(json(StatusCode::OK, &UploadList { uploads }))
}

async fn status(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &st.service.status(&id).await?))
}

async fn cancel(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &st.service.cancel(&id).await?))
}

async fn sign(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(req): Json<SignParts>,
) -> Result<Response, ApiError> {
    let parts = st.service.sign(&id, &req.part_numbers, &req.content_md5).await?;
    Ok(json(StatusCode::OK, &SignedParts { parts }))
}

pub(super) fn parse_part_number(n: &str) -> Result<u32, ApiError> {
    n.parse::<u32>().map_err(|_| ApiError::bad_request("invalid_part_number", format!("{n:?} is not a part number")))
}

pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("invalid_content_length", "Content-Length is not a number"))
        })
        .transpose()
}

async fn put_part(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let n = parse_part_number(&n)?;
        let len = content_length(&headers)?;
        let body = part_body(body, st.metrics.service.clone(), st.config.body_idle_timeout);
        Ok(st.service.put_part(&id, n, len, body).await?)
    };
    part_put_response(result.await)
}

async fn part_done(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
    Json(req): Json<PartDone>,
) -> Result<Response, ApiError> {
    let n = parse_part_number(&n)?;
    let part = st.service.part_done(&id, n, &req.etag, req.size).await?;
    Ok(json(StatusCode::OK, &part))
}

async fn complete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<Complete>,
) -> Result<Response, ApiError> {
    let info = st.service.complete(&id, req.parts, req.sha256).await?;
    Ok(json(StatusCode::OK, &info))
}
