//! `/s3/…`: the Companion-style routes Uppy's `@uppy/aws-s3` plugin calls, so an existing Uppy
//! app uploads to ferry with only its endpoint changed and a bearer token added (DESIGN.md,
//! "Browsers and Uppy"). They sit on the same sessions as `/v1`:
//!
//! - `POST /s3/multipart` `{filename, type, metadata}` → `{key, uploadId}`: an upload whose size is
//!   not known (Uppy does not say it), completed from the parts it receives;
//! - `GET /s3/multipart/{uploadId}/{n}?key=` → `{url, expires}`, and `…/batch?partNumbers=1,2`;
//! - `GET /s3/multipart/{uploadId}?key=` → `[{PartNumber, ETag, Size}]`;
//! - `POST /s3/multipart/{uploadId}/complete?key=` `{parts: [{PartNumber, ETag}]}` →
//!   `{location, key}`;
//! - `DELETE /s3/multipart/{uploadId}?key=` → `{}`;
//! - `GET /s3/params?filename=&type=&metadata[k]=` → `{method: "POST", url, fields}`, and the
//!   multipart/form-data POST it leads to (`POST /s3/form`, authorized by its signed policy alone),
//!   which small files use instead of multipart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use ferry_core::api::{CompletePart, CreateUpload, PartUrl, UploadState};
use ferry_core::sign::Scope;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::json;
use super::uploads::parse_part_number;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use ferry_service::Session;

/// Routes that need the bearer token.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/s3/multipart", post(create))
        .route("/s3/multipart/{id}", get(list_parts).delete(abort))
        .route("/s3/multipart/{id}/batch", get(sign_batch))
        .route("/s3/multipart/{id}/complete", post(complete))
        .route("/s3/multipart/{id}/{n}", get(sign_part))
        .route("/s3/params", get(params))
}

/// The form POST, authorized by the policy `GET /s3/params` signed.
pub(super) fn form_routes() -> Router<Arc<AppState>> {
    Router::new().route("/s3/form", post(form_upload).layer(DefaultBodyLimit::disable()))
}

#[derive(Deserialize)]
struct CreateBody {
    filename: String,
    #[serde(default, rename = "type")]
    content_type: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

/// Uppy sends whatever is in the file's `meta`: strings are kept, numbers and booleans written
/// out, the rest left out.
fn metadata_strings(metadata: serde_json::Map<String, Value>) -> BTreeMap<String, String> {
    metadata
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect()
}

fn content_type(t: Option<String>) -> Option<String> {
    t.filter(|t| !t.is_empty())
}

async fn create(State(st): State<Arc<AppState>>, Json(body): Json<CreateBody>) -> Result<Response, ApiError> {
    let req = CreateUpload {
        name: body.filename,
        size: 0,
        part_size: None,
        sha256: None,
        content_type: content_type(body.content_type),
        metadata: metadata_strings(body.metadata),
        processor: None,
        webhook_url: None,
    };
    let session = st.service.create_open_ended(req).await?;
    Ok(json(StatusCode::OK, &json!({ "key": session.key, "uploadId": session.upload_id })))
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// The session, checked against the `key` Uppy sends along.
async fn session(st: &AppState, id: &str, key: Option<&str>) -> Result<Session, ApiError> {
    let (session, _) = st.service.load(id).await?;
    if key.is_some_and(|k| k != session.key) {
        return Err(ApiError::bad_request("key_mismatch", format!("upload {id} is not for that key")));
    }
    Ok(session)
}

fn expires_in(st: &AppState, url: &PartUrl) -> i64 {
    (url.expires_at - st.service.now()).whole_seconds().max(0)
}

async fn sign_part(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    let n = parse_part_number(&n)?;
    session(&st, &id, q.key.as_deref()).await?;
    let signed = st.service.sign(&id, &[n], &BTreeMap::new()).await?;
    let url = signed.first().ok_or_else(|| ApiError::internal("no URL was signed"))?;
    Ok(json(StatusCode::OK, &json!({ "url": url.url, "expires": expires_in(&st, url) })))
}

#[derive(Deserialize)]
struct BatchQuery {
    key: Option<String>,
    #[serde(rename = "partNumbers")]
    part_numbers: Option<String>,
}

async fn sign_batch(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<BatchQuery>,
) -> Result<Response, ApiError> {
    session(&st, &id, q.key.as_deref()).await?;
    let numbers = q.part_numbers.unwrap_or_default();
    let numbers: Vec<u32> = numbers
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_part_number(s.trim()))
        .collect::<Result<_, _>>()?;
    if numbers.is_empty() {
        return Err(ApiError::bad_request("invalid_part_number", "partNumbers names no part"));
    }
    let signed = st.service.sign(&id, &numbers, &BTreeMap::new()).await?;
    let urls: HashMap<String, String> = signed.into_iter().map(|u| (u.part_number.to_string(), u.url)).collect();
    Ok(json(StatusCode::OK, &json!({ "presignedUrls": urls })))
}

#[derive(Serialize)]
struct ListedPart {
    #[serde(rename = "PartNumber")]
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "Size")]
    size: u64,
}

async fn list_parts(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    session(&st, &id, q.key.as_deref()).await?;
    let status = st.service.status(&id).await?;
    if status.state != UploadState::Uploading {
        // After an abort (or completion) there is nothing to resume: Uppy must start afresh.
        return Err(ApiError::new(StatusCode::NOT_FOUND, "upload_not_open", "the upload is no longer open"));
    }
    let parts: Vec<ListedPart> = status
        .parts
        .into_iter()
        .map(|p| ListedPart { part_number: p.part_number, etag: p.etag, size: p.size })
        .collect();
    Ok(json(StatusCode::OK, &parts))
}

#[derive(Deserialize)]
struct CompleteBody {
    #[serde(default)]
    parts: Vec<UppyPart>,
}

#[derive(Deserialize)]
struct UppyPart {
    #[serde(rename = "PartNumber")]
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
}

async fn complete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    Json(body): Json<CompleteBody>,
) -> Result<Response, ApiError> {
    session(&st, &id, q.key.as_deref()).await?;
    let parts: Vec<CompletePart> =
        body.parts.into_iter().map(|p| CompletePart { part_number: p.part_number, etag: p.etag }).collect();
    let check = (!parts.is_empty()).then_some(parts);
    let info = st.service.complete(&id, check, None).await?;
    let location = object_location(&st, &info.key);
    Ok(json(
        StatusCode::OK,
        &json!({ "location": location, "key": info.key, "etag": info.etag, "sha256": info.sha256 }),
    ))
}

fn object_location(st: &AppState, key: &str) -> String {
    format!("{}/v1/objects/{}", st.config.public_url, st.service.object_path(key))
}

async fn abort(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    session(&st, &id, q.key.as_deref()).await?;
    st.service.cancel(&id).await?;
    Ok(json(StatusCode::OK, &json!({})))
}

/// What a form POST may store, signed into its `policy` field.
#[derive(Serialize, Deserialize)]
struct Policy {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    expires: u64,
}

async fn params(
    State(st): State<Arc<AppState>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let mut filename = None;
    let mut ctype = None;
    let mut metadata = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "filename" => filename = Some(v.into_owned()),
            "type" => ctype = Some(v.into_owned()),
            other => {
                if let Some(name) = other.strip_prefix("metadata[").and_then(|n| n.strip_suffix(']')) {
                    metadata.insert(name.to_owned(), v.into_owned());
                }
            }
        }
    }
    let filename = filename.ok_or_else(|| ApiError::bad_request("invalid_name", "filename is missing"))?;
    let key = ferry_core::key::normalize_key(&filename)?;
    let expires = st.service.now() + st.config.url_ttl;
    let expires = u64::try_from(expires.unix_timestamp()).unwrap_or(0);
    let policy = Policy { key: key.clone(), content_type: content_type(ctype.clone()), metadata, expires };
    let policy = serde_json::to_vec(&policy).map_err(|e| ApiError::internal(e.to_string()))?;
    let policy = base64::engine::general_purpose::STANDARD.encode(policy);
    let signature = st.signer.sign("POST", Scope::Policy { policy: &policy }, expires);
    let mut fields = BTreeMap::from([
        ("key".to_owned(), key),
        ("policy".to_owned(), policy),
        ("x-ferry-signature".to_owned(), signature),
        ("x-ferry-expires".to_owned(), expires.to_string()),
    ]);
    if let Some(t) = content_type(ctype) {
        fields.insert("Content-Type".to_owned(), t);
    }
    let url = format!("{}/s3/form", st.config.public_url);
    Ok(json(StatusCode::OK, &json!({ "method": "POST", "url": url, "fields": fields, "headers": {} })))
}

/// The form POST: the signed fields first, then `file`, which becomes an object through an
/// ordinary upload session as it arrives.
async fn form_upload(State(st): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let result = async {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_form", format!("not a multipart/form-data body: {e}")))?;
        let mut fields: HashMap<String, String> = HashMap::new();
        loop {
            let field = form
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request("invalid_form", format!("the form is malformed: {e}")))?
                .ok_or_else(|| ApiError::bad_request("invalid_form", "the form has no file field"))?;
            let name = field.name().unwrap_or_default().to_owned();
            if name == "file" {
                let policy = check_policy(&st, &fields)?;
                return store_form_file(&st, policy, field, length).await;
            }
            if fields.len() >= 64 {
                return Err(ApiError::bad_request("invalid_form", "too many form fields"));
            }
            let value =
                field.text().await.map_err(|e| ApiError::bad_request("invalid_form", format!("field {name}: {e}")))?;
            if value.len() > 16 * 1024 {
                return Err(ApiError::bad_request("invalid_form", format!("field {name} is too long")));
            }
            fields.insert(name, value);
        }
    };
    match result.await {
        Ok(etag) => {
            let mut res = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&etag) {
                res.headers_mut().insert(header::ETAG, v);
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

fn check_policy(st: &AppState, fields: &HashMap<String, String>) -> Result<Policy, ApiError> {
    let field = |n: &str| fields.get(n).map(String::as_str);
    let policy = field("policy").unwrap_or_default();
    let now = u64::try_from(st.service.now().unix_timestamp()).unwrap_or(0);
    st.signer.verify_query(
        "POST",
        Scope::Policy { policy },
        field("x-ferry-expires"),
        field("x-ferry-signature"),
        now,
    )?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(policy)
        .map_err(|_| ApiError::bad_request("invalid_form", "the policy is not base64"))?;
    let policy: Policy = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("invalid_form", "the policy is unreadable"))?;
    if field("key").is_some_and(|k| k != policy.key) {
        return Err(ApiError::bad_request("key_mismatch", "the key field is not the one the policy was signed for"));
    }
    Ok(policy)
}

/// The file field, written into the store as it arrives (the service's ingest path): no copy
/// of it is staged anywhere. The request's length bounds its size.
async fn store_form_file(
    st: &Arc<AppState>,
    policy: Policy,
    mut field: axum::extract::multipart::Field<'_>,
    request_length: Option<u64>,
) -> Result<String, ApiError> {
    let max = st.config.max_object_size;
    let bound = request_length.unwrap_or(max).min(max);
    let request = CreateUpload {
        name: policy.key,
        size: bound,
        part_size: None,
        sha256: None,
        content_type: policy.content_type,
        metadata: policy.metadata,
        processor: None,
        webhook_url: None,
    };
    let plan = ferry_service::IngestPlan { request, min_size: 0, align: 1, resume_key: None };
    let mut ingest = st.service.ingest(plan).await?;
    let mut size = 0u64;
    let written = async {
        while let Some(chunk) =
            field.chunk().await.map_err(|e| ApiError::bad_request("body_incomplete", format!("the file field: {e}")))?
        {
            st.metrics.service.bytes_received.inc_by(chunk.len() as u64);
            if size + chunk.len() as u64 > bound {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "object_too_large",
                    format!("the file is larger than its request says, or than objects may be ({max} bytes)"),
                ));
            }
            ingest.write(size, &chunk).await?;
            size += chunk.len() as u64;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        // Nothing of an unfinished form is kept: the browser sends it again whole.
        if let Err(cancel) = ingest.abandon(false).await {
            tracing::warn!(error = %cancel, "could not cancel an unfinished form upload");
        }
        return Err(e);
    }
    Ok(ingest.finish(size, None).await?.etag)
}
