use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::api::{ErrorBody, ErrorDetail};
use ferry_core::key::KeyError;
use ferry_core::plan::PlanError;
use ferry_core::range::RangeError;
use ferry_core::sign::SignError;
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

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> ApiError {
        let code = match e {
            PlanError::ObjectTooLarge { .. } => "object_too_large",
            PlanError::PartTooSmall { .. } => "part_size_too_small",
            PlanError::PartTooLarge { .. } => "part_size_too_large",
            PlanError::TooManyParts { .. } => "too_many_parts",
        };
        ApiError::bad_request(code, e.to_string())
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
