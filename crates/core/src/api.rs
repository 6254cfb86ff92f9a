//! The JSON bodies of the control-plane API v1 (see DESIGN.md). Server and client share these
//! definitions so the contract has one spelling. Unknown fields are ignored for forward
//! compatibility; missing optional fields are omitted, not sent as `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::{FinalResult, PartOutcome, ProcessorKind};

/// The phases of an upload session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    Uploading,
    Completed,
    Cancelled,
    Expired,
    Failed,
}

impl UploadState {
    pub const ALL: [UploadState; 5] = [
        UploadState::Uploading,
        UploadState::Completed,
        UploadState::Cancelled,
        UploadState::Expired,
        UploadState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Uploading => "uploading",
            UploadState::Completed => "completed",
            UploadState::Cancelled => "cancelled",
            UploadState::Expired => "expired",
            UploadState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<UploadState> {
        UploadState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// `POST /v1/uploads`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateUpload {
    pub name: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
    /// Hex SHA-256 of the whole file, checked at `complete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// A signed URL for one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartUrl {
    pub part_number: u32,
    pub offset: u64,
    pub size: u64,
    pub url: String,
    /// Headers the PUT must carry as given (they are covered by the URL's signature).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Answer to `POST /v1/uploads` (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedUpload {
    pub upload_id: String,
    pub key: String,
    pub size: u64,
    pub part_size: u64,
    pub part_count: u32,
    pub parts: Vec<PartUrl>,
    /// `"md5"` when part URLs go straight to a store that checks each part: a client should sign
    /// each part with its `content_md5` and send the headers its URL comes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /v1/uploads/{id}/parts/sign`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignParts {
    pub part_numbers: Vec<u32>,
    /// Base64 MD5 of a part's bytes, by part number: the store then refuses other bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub content_md5: BTreeMap<u32, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedParts {
    pub parts: Vec<PartUrl>,
}

/// `POST /v1/uploads/{id}/parts/{n}/done`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartDone {
    pub etag: String,
    pub size: u64,
}

/// A part the server holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub part_number: u32,
    pub size: u64,
    /// Quoted, as HTTP sends it.
    pub etag: String,
}

/// A stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Known for every object ferry stored; absent for one another tool wrote into a shared bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Quoted, as HTTP sends it.
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub last_modified: OffsetDateTime,
}

/// `GET /v1/uploads/{id}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStatus {
    pub upload_id: String,
    pub key: String,
    pub name: String,
    pub state: UploadState,
    pub size: u64,
    pub part_size: u64,
    pub part_count: u32,
    pub parts: Vec<PartInfo>,
    pub bytes_received: u64,
    /// As in [`CreatedUpload::part_checksum`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ObjectInfo>,
    /// Present when the upload named a processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing: Option<ProcessingStatus>,
    /// Present when the upload gave a `webhook_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,
}

/// What processing has produced so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessingStatus {
    pub processor: String,
    pub kind: ProcessorKind,
    pub parts_processed: u32,
    pub parts_failed: u32,
    /// Each processed part's outcome, in part order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_result: Option<FinalResult>,
}

/// An upload's webhook deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStatus {
    pub url: String,
    pub deliveries: Vec<WebhookDelivery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// One event's delivery to the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The event's id in the upload's log.
    pub event_id: u64,
    /// The event's type.
    #[serde(rename = "type")]
    pub kind: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The latest attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<WebhookAttempt>,
    /// Retried until then.
    #[serde(with = "time::serde::rfc3339")]
    pub give_up_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer to `POST /v1/uploads/{id}/parts/{n}/reprocess` (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reprocessing {
    pub part_number: u32,
    pub queued: bool,
}

/// One entry of `GET /v1/uploads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadSummary {
    pub upload_id: String,
    pub key: String,
    pub state: UploadState,
    pub size: u64,
    pub part_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadList {
    pub uploads: Vec<UploadSummary>,
}

/// `POST /v1/uploads/{id}/complete`; an empty body means "nothing more to check".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Complete {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<CompletePart>>,
    /// Hex SHA-256 of the whole file, for a client that learns it while uploading. Checked like the
    /// one given at create (both, when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletePart {
    pub part_number: u32,
    pub etag: String,
}

/// `POST /v1/objects/{key}/sign`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedUrl {
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Every error: `{"error":{"code":"snake_case","message":"…"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// True when `s` is a lowercase or uppercase hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True when `s` is the base64 form of an MD5 digest (16 bytes: 22 characters, the last of them
/// carrying only 2 bits, then `==`), as `Content-MD5` carries it.
pub fn is_base64_md5(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && s.ends_with("==")
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        && b"AQgw".contains(&b[21])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_shape() {
        // MD5("") and MD5("abc").
        assert!(is_base64_md5("1B2M2Y8AsgTpgAmY7PhCfg=="));
        assert!(is_base64_md5("kAFQmDzST7DWlj99KOF/cg=="));
        for bad in [
            "",
            "1B2M2Y8AsgTpgAmY7PhCfg",
            "1B2M2Y8AsgTpgAmY7PhCfh==",
            "1B2M2Y8AsgTpgAmY7PhC\n==",
            "kAFQmDzST7DWlj99KOF/cg==x",
        ] {
            assert!(!is_base64_md5(bad), "{bad}");
        }
    }

    #[test]
    fn states_round_trip() {
        for s in UploadState::ALL {
            assert_eq!(UploadState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert_eq!(UploadState::parse("done"), None);
    }

    #[test]
    fn create_accepts_the_minimal_body_and_refuses_negative_sizes() {
        let c: CreateUpload = serde_json::from_str(r#"{"name":"a","size":5,"extra":1}"#).unwrap();
        assert_eq!((c.name.as_str(), c.size, c.part_size), ("a", 5, None));
        assert!(serde_json::from_str::<CreateUpload>(r#"{"name":"a","size":-1}"#).is_err());
        assert!(serde_json::from_str::<CreateUpload>(r#"{"name":"a","size":1e30}"#).is_err());
    }

    #[test]
    fn sha256_hex_check() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }
}
