//! `GET`/`PUT /v1/rooms/{room}/manifest`: a room's manifest of results ([`ferry_core::room`]),
//! kept as a store record so both stores give it conditional writes. A read returns the version
//! as the `ETag`; a write must name the version it replaces (`If-Match`) or say there is none yet
//! (`If-None-Match: *`), and loses with 412 if another writer got there first.
//!
//! One server also serialises these reads and writes itself: not every S3-compatible store is
//! atomic here. s3s-fs checks the ETag, then writes, so two writers holding the same version can
//! both win; and a read of it opens the old body, then finds the new ETag, so a writer that read
//! during another's write would replace the newest entry unseen. Across several servers sharing a
//! bucket, the store's own compare-and-swap and reads are what count (AWS S3's are atomic).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use ferry_core::room::Manifest;
use ferry_core::signal::valid_room;
use ferry_store::{Condition, StoreError};

use super::json;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Path};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/rooms/{room}/manifest", get(read).put(write))
}

fn record_name(room: &str) -> Result<String, ApiError> {
    if !valid_room(room) || room.chars().all(|c| c == '.') {
        return Err(ApiError::bad_request("invalid_room", "room names are 1 to 128 letters, digits, '.', '_', '-'"));
    }
    Ok(format!("rooms/{room}/manifest"))
}

fn with_etag(mut res: Response, version: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

async fn read(State(st): State<Arc<AppState>>, Path(room): Path<String>) -> Result<Response, ApiError> {
    let name = record_name(&room)?;
    let record = {
        let _serialised = st.manifest_lock.lock().await;
        st.sessions.store().get_record(&name).await?
    };
    match record {
        Some(r) => {
            let manifest: Manifest = serde_json::from_slice(&r.bytes)
                .map_err(|e| ApiError::internal(format!("the manifest of room {room} is unreadable: {e}")))?;
            Ok(with_etag(json(StatusCode::OK, &manifest), &r.version))
        }
        // No manifest yet: an empty one, and no ETag (the first write says If-None-Match: *).
        None => Ok(json(StatusCode::OK, &Manifest::default())),
    }
}

async fn write(
    State(st): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(manifest): Json<Manifest>,
) -> Result<Response, ApiError> {
    let name = record_name(&room)?;
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
    manifest.check().map_err(|m| ApiError::bad_request("invalid_manifest", m))?;
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ApiError::internal(e.to_string()))?;
    let _serialised = st.manifest_lock.lock().await;
    match st.sessions.store().put_record(&name, bytes, condition).await {
        Ok(version) => Ok(with_etag(json(StatusCode::OK, &manifest), &version)),
        Err(StoreError::ConditionFailed) => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the manifest changed since it was read: read it again and reapply the change",
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_that_are_not_paths() {
        assert_eq!(record_name("lab-1.a_b").ok().as_deref(), Some("rooms/lab-1.a_b/manifest"));
        for bad in ["", ".", "..", "...", "a/b", "a b", "x*y", &"r".repeat(129)] {
            assert!(record_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
