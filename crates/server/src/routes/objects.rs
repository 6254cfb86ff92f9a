//! Objects: `GET`/`HEAD /v1/objects/{key}` with single ranges, `POST /v1/objects/{key}/sign` for
//! a signed GET URL, and `GET`/`HEAD /o/{key}?expires=…&signature=…` that serves it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use ferry_core::key::normalize_key;
use ferry_core::range::parse_range;
use ferry_core::sign::Scope;

use super::json;
use super::parts::SignatureQuery;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub(super) fn api_routes() -> Router<Arc<AppState>> {
    Router::new().route("/objects/{*key}", get(get_object).post(sign_object))
}

pub(super) fn signed_routes() -> Router<Arc<AppState>> {
    Router::new().route("/o/{*key}", get(get_signed))
}

async fn get_object(
    State(st): State<Arc<AppState>>,
    method: Method,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve_object(&st, &key, method == Method::HEAD, &headers).await
}

async fn get_signed(
    State(st): State<Arc<AppState>>,
    method: Method,
    Path(key): Path<String>,
    Query(q): Query<SignatureQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = normalize_key(&key)?;
    q.verify(&st, "GET", Scope::Object { key: &key })?;
    serve_object(&st, &key, method == Method::HEAD, &headers).await
}

async fn sign_object(State(st): State<Arc<AppState>>, Path(path): Path<String>) -> Result<Response, ApiError> {
    let Some(key) = path.strip_suffix("/sign") else {
        return Err(ApiError::not_found("not_found", "POST /v1/objects/{key}/sign is the only POST on objects"));
    };
    Ok(json(StatusCode::OK, &st.service.sign_object(key).await?))
}

const HTTP_DATE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

async fn serve_object(st: &AppState, key: &str, head: bool, headers: &HeaderMap) -> Result<Response, ApiError> {
    let reader = st.service.open_object(key).await?;
    let info = reader.info().clone();
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => {
            let text = v.to_str().map_err(|_| ferry_core::range::RangeError::Malformed);
            match text.and_then(|t| parse_range(t, info.size)) {
                Ok(r) => Some(r),
                Err(e) => {
                    let mut err = ApiError::from(e);
                    err.content_range = Some(format!("bytes */{}", info.size));
                    return Err(err);
                }
            }
        }
    };
    let (status, start, len) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.len()),
        None => (StatusCode::OK, 0, info.size),
    };
    let body = if head { Body::empty() } else { Body::from_stream(reader.read(start, len)) };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let content_type = info.content_type.as_deref().unwrap_or("application/octet-stream");
    let pairs = [
        (header::CONTENT_TYPE, Some(content_type.to_owned())),
        (header::ETAG, Some(info.etag.clone())),
        (header::LAST_MODIFIED, info.last_modified.format(HTTP_DATE).ok()),
        (header::CONTENT_RANGE, range.map(|r| r.content_range(info.size))),
    ];
    for (name, value) in pairs {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
    if let Some(v) = info.sha256.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("x-ferry-sha256", v);
    }
    Ok(res)
}
