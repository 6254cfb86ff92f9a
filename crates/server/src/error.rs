use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::api::{ErrorBody, ErrorDetail};
use ferry_core::key::KeyError;
use ferry_core::plan::{LayoutError, PlanError};
use ferry_core::range::RangeError;
use ferry_core::sign::SignError;
use ferry_service::webhooks::WebhookUrlError;
use ferry_service::{Invalid, NotFound, Refused, ServiceError};
use ferry_store::StoreError;

/// An error as the client sees it: a status, a stable snake_case code, and a sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Set for 416, so the client learns the object's length.
    pub content_range: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), content_range: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut res = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(cr) = self.content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
            res.headers_mut().insert(header::CONTENT_RANGE, cr);
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let msg = e.to_string();
        match e {
            StoreError::NoSuchUpload => ApiError::new(StatusCode::GONE, "upload_gone", "the upload's parts are gone"),
            StoreError::NoSuchObject => ApiError::not_found("object_not_found", "no such object"),
            StoreError::MissingPart(_) => ApiError::bad_request("missing_parts", msg),
            StoreError::PartChanged { .. } => ApiError::conflict("part_changed", msg),
            StoreError::BodyTooLong { .. } | StoreError::BodyTooShort { .. } => {
                ApiError::bad_request("wrong_part_size", msg)
            }
            StoreError::Body(_) => ApiError::bad_request("body_incomplete", msg),
            StoreError::ChecksumMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "sha256_mismatch", msg)
            }
            StoreError::ConditionFailed => ApiError::conflict("concurrent_update", msg),
            StoreError::InvalidName(_) => ApiError::bad_request("invalid_name", msg),
            StoreError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", "the server's disk is full")
            }
            StoreError::ReservedKey(_) => ApiError::bad_request("invalid_name", msg),
            StoreError::Corrupt(_) | StoreError::Io(_) | StoreError::Unreadable => ApiError::internal(msg),
            StoreError::Remote { status: 503, .. } | StoreError::Unreachable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg)
            }
            StoreError::Remote { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "store_error", msg),
        }
    }
}

fn plan_code(e: &PlanError) -> &'static str {
    match e {
        PlanError::ObjectTooLarge { .. } => "object_too_large",
        PlanError::PartTooSmall { .. } => "part_size_too_small",
        PlanError::PartTooLarge { .. } => "part_size_too_large",
        PlanError::TooManyParts { .. } => "too_many_parts",
    }
}

/// Every failure of the domain, as a status and a stable code: the one place they are decided.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        let (status, code) = match e {
            ServiceError::Store(e) => return e.into(),
            ServiceError::Bug(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ServiceError::NotFound(NotFound::Upload) => (StatusCode::NOT_FOUND, "upload_not_found"),
            ServiceError::NotFound(NotFound::Part(_)) => (StatusCode::NOT_FOUND, "part_not_found"),
            ServiceError::Invalid(e) => match e {
                Invalid::Name(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
                Invalid::Plan(e) => (StatusCode::BAD_REQUEST, plan_code(&e)),
                Invalid::Sha256 => (StatusCode::BAD_REQUEST, "invalid_sha256"),
                Invalid::UnknownProcessor { .. } | Invalid::ProcessorNeedsSize => {
                    (StatusCode::BAD_REQUEST, "unknown_processor")
                }
                Invalid::Webhook(WebhookUrlError::Unsupported) => (StatusCode::BAD_REQUEST, "webhooks_unsupported"),
                Invalid::Webhook(WebhookUrlError::Invalid { .. }) => (StatusCode::BAD_REQUEST, "invalid_webhook_url"),
                Invalid::MetadataTooLarge => (StatusCode::BAD_REQUEST, "metadata_too_large"),
                Invalid::MetadataControlCharacter => (StatusCode::BAD_REQUEST, "invalid_metadata"),
                Invalid::TooManyPartNumbers => (StatusCode::BAD_REQUEST, "too_many_parts"),
                Invalid::ContentMd5(_) | Invalid::ContentMd5Unsigned(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_content_md5")
                }
                Invalid::PartNumber { .. } => (StatusCode::BAD_REQUEST, "invalid_part_number"),
                Invalid::PartTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "part_too_large"),
                Invalid::LengthRequired => (StatusCode::LENGTH_REQUIRED, "length_required"),
                Invalid::PartSize { .. } => (StatusCode::BAD_REQUEST, "wrong_part_size"),
                Invalid::MissingParts { .. } | Invalid::Layout(LayoutError::Missing(_) | LayoutError::Empty) => {
                    (StatusCode::BAD_REQUEST, "missing_parts")
                }
                Invalid::Layout(_) => (StatusCode::BAD_REQUEST, "irregular_parts"),
                Invalid::Etag { .. } => (StatusCode::BAD_REQUEST, "etag_mismatch"),
                Invalid::PartListedTwice(_) | Invalid::PartsLeftOut { .. } => {
                    (StatusCode::BAD_REQUEST, "invalid_parts")
                }
                Invalid::NoPartProcessor => (StatusCode::BAD_REQUEST, "no_part_processor"),
                Invalid::Room => (StatusCode::BAD_REQUEST, "invalid_room"),
                Invalid::Manifest(_) => (StatusCode::BAD_REQUEST, "invalid_manifest"),
                Invalid::Stream(_) => (StatusCode::BAD_REQUEST, "invalid_stream"),
            },
            ServiceError::Refused(e) => match e {
                Refused::Completed => (StatusCode::CONFLICT, "upload_completed"),
                Refused::Failed => (StatusCode::CONFLICT, "upload_failed"),
                Refused::Cancelled => (StatusCode::GONE, "upload_cancelled"),
                Refused::Expired => (StatusCode::GONE, "upload_expired"),
                Refused::CompleteInProgress => (StatusCode::CONFLICT, "complete_in_progress"),
                Refused::PartNotReceived(_) => (StatusCode::CONFLICT, "part_not_received"),
                Refused::PartMismatch { .. } => (StatusCode::CONFLICT, "part_mismatch"),
                Refused::Sha256Mismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "sha256_mismatch"),
                Refused::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
                Refused::ManifestChanged => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            },
        };
        ApiError::new(status, code, message)
    }
}

/// Starting the server's WebRTC peer for an offer.
impl From<ferry_rtc::PeerError> for ApiError {
    fn from(e: ferry_rtc::PeerError) -> ApiError {
        use ferry_rtc::PeerError;
        match e {
            PeerError::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "rtc_busy", e.to_string()),
            PeerError::Io(_) | PeerError::Config(_) | PeerError::NoRelay(_) => {
                ApiError::internal(format!("cannot start a WebRTC peer: {e}"))
            }
            PeerError::Sdp(_) | PeerError::Rtc(_) | PeerError::Closed | PeerError::TooLarge { .. } => {
                ApiError::bad_request("invalid_offer", format!("cannot answer this offer: {e}"))
            }
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> ApiError {
        ApiError::bad_request(plan_code(&e), e.to_string())
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        ApiError::bad_request("invalid_name", e.to_string())
    }
}

impl From<SignError> for ApiError {
    fn from(e: SignError) -> ApiError {
        let code = match e {
            SignError::Expired => "url_expired",
            SignError::Malformed | SignError::Invalid => "invalid_signature",
        };
        ApiError::new(StatusCode::FORBIDDEN, code, e.to_string())
    }
}

impl From<RangeError> for ApiError {
    fn from(e: RangeError) -> ApiError {
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "invalid_range", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_and_codes() {
        let cases = [
            (StoreError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)), 507, "insufficient_storage"),
            (StoreError::Io(std::io::Error::other("disk on fire")), 500, "internal"),
            (StoreError::NoSuchObject, 404, "object_not_found"),
            (StoreError::BodyTooLong { expected: 1 }, 400, "wrong_part_size"),
            (StoreError::ChecksumMismatch { expected: "a".into(), actual: "b".into() }, 422, "sha256_mismatch"),
            (StoreError::ConditionFailed, 409, "concurrent_update"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
        }
    }
}
