//! What can go wrong, sorted by whose fault it is (as rustls sorts its errors): the request is
//! wrong ([`Invalid`]), the upload's state forbids it ([`Refused`]), something named does not
//! exist ([`NotFound`]), the store failed or refused ([`StoreError`]), or ferry itself broke a
//! rule of its own ([`ServiceError::Bug`]). Callers match the variants; the HTTP layer maps each
//! to a status and a stable code in one place.

use ferry_core::key::KeyError;
use ferry_core::plan::{LayoutError, PlanError};
use ferry_core::units::human;
use ferry_store::StoreError;

use crate::webhooks::WebhookUrlError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    NotFound(#[from] NotFound),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An invariant of ferry's own does not hold (a damaged record, a state no rule leads to).
    #[error("{0}")]
    Bug(String),
}

impl ServiceError {
    /// Another writer changed the record between this one's read and its write.
    pub fn is_concurrent_update(&self) -> bool {
        matches!(self, ServiceError::Store(StoreError::ConditionFailed))
    }

    pub(crate) fn bug(message: impl Into<String>) -> ServiceError {
        ServiceError::Bug(message.into())
    }
}

impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> ServiceError {
        Invalid::Name(e).into()
    }
}

impl From<PlanError> for ServiceError {
    fn from(e: PlanError) -> ServiceError {
        Invalid::Plan(e).into()
    }
}

impl From<WebhookUrlError> for ServiceError {
    fn from(e: WebhookUrlError) -> ServiceError {
        Invalid::Webhook(e).into()
    }
}

/// The request is wrong: sending it again unchanged fails again.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Name(KeyError),
    #[error(transparent)]
    Plan(PlanError),
    #[error("sha256 must be 64 hex digits")]
    Sha256,
    #[error("no processor named {name:?} is configured on this server (configured: {known})")]
    UnknownProcessor { name: String, known: String },
    #[error("uploads of unknown size take no processor")]
    ProcessorNeedsSize,
    #[error(transparent)]
    Webhook(WebhookUrlError),
    #[error("metadata is limited to 8 KiB and content_type to 256 bytes")]
    MetadataTooLarge,
    #[error("metadata and content_type may not contain control characters")]
    MetadataControlCharacter,
    #[error("more part numbers than the upload has parts")]
    TooManyPartNumbers,
    #[error("content_md5 of part {0} is not a base64 MD5 digest")]
    ContentMd5(u32),
    #[error("content_md5 names part {0}, which is not being signed")]
    ContentMd5Unsigned(u32),
    #[error("part number {part} is outside 1..={count}")]
    PartNumber { part: u32, count: u32 },
    #[error("a part may be at most {max} bytes")]
    PartTooLarge { max: u64 },
    #[error("a part of an upload of unknown size needs a Content-Length")]
    LengthRequired,
    #[error("part {part} is {expected} bytes; the request says {given}")]
    PartSize { part: u32, expected: u64, given: u64 },
    #[error("{} of {count} parts are missing: {}", .missing.len(), list_numbers(.missing))]
    MissingParts { missing: Vec<u32>, count: u32 },
    #[error(transparent)]
    Layout(LayoutError),
    #[error("part {part} has ETag \"{held}\", not {given}")]
    Etag { part: u32, held: String, given: String },
    #[error("part {0} is listed twice")]
    PartListedTwice(u32),
    #[error("the parts list leaves out {unlisted} of {count} parts")]
    PartsLeftOut { unlisted: usize, count: u32 },
    #[error("this upload has no per-part processor")]
    NoPartProcessor,
    #[error("room names are 1 to 128 letters, digits, '.', '_', '-'")]
    Room,
    #[error("{0}")]
    Manifest(String),
    /// A stream being ingested did not hold together.
    #[error("{0}")]
    Stream(String),
}

/// The upload (or the server's storage) is in a state that forbids the request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the upload is already completed")]
    Completed,
    #[error("the upload has failed")]
    Failed,
    #[error("the upload was cancelled")]
    Cancelled,
    #[error("the upload expired before it was completed")]
    Expired,
    #[error("another server is completing this upload; ask again shortly")]
    CompleteInProgress,
    #[error("part {0} has not been received")]
    PartNotReceived(u32),
    #[error(
        "part {part} is stored as {stored_size} bytes with ETag {stored_etag}; the report says {size} bytes, {etag}"
    )]
    PartMismatch { part: u32, stored_size: u64, stored_etag: String, size: u64, etag: String },
    #[error("the SHA-256 given, {given}, does not match {actual}")]
    Sha256Mismatch { given: String, actual: String },
    #[error("{} ({needed} bytes) do not fit: the server has {} free", human(*.needed), human(*.free))]
    NoSpace { needed: u64, free: u64 },
    #[error("the manifest changed since it was read: read it again and reapply the change")]
    ManifestChanged,
}

#[derive(Debug, thiserror::Error)]
pub enum NotFound {
    #[error("no such upload")]
    Upload,
    #[error("part {0} has not been stored")]
    Part(u32),
}

fn list_numbers(ns: &[u32]) -> String {
    let shown: Vec<String> = ns.iter().take(20).map(u32::to_string).collect();
    if ns.len() > 20 { format!("{}, …", shown.join(", ")) } else { shown.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_of_parts_are_cut() {
        let e = Invalid::MissingParts { missing: (1..=30).collect(), count: 40 };
        let text = e.to_string();
        assert!(text.starts_with("30 of 40 parts are missing: 1, 2,"), "{text}");
        assert!(text.ends_with("20, …"), "{text}");
        assert!(ServiceError::Store(StoreError::ConditionFailed).is_concurrent_update());
        assert!(!ServiceError::from(Refused::Completed).is_concurrent_update());
    }
}
