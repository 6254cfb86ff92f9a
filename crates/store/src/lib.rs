//! # ferry-store
//!
//! Where ferry keeps bytes and state. The [`Store`] trait covers what an upload needs from a
//! storage backend: multipart objects (create, put a part from a stream, list parts, complete,
//! abort), object reads with ranges, and small *records* with conditional writes (session state,
//! manifests). [`FsStore`] is the embedded implementation: a directory on local disk, durable
//! against `kill -9` and power loss (temp file, fsync, rename, fsync the directory). The S3
//! store (`ferry-s3`) keeps everything in a bucket, so several servers can share it; both pass
//! the same [conformance suite](conformance) (feature `conformance`).
//!
//! This crate must not know about HTTP, auth, sessions or clients: it stores what it is given and
//! checks what it is asked to check (sizes, ETags, SHA-256). Limits and session rules belong to the
//! server; wire types and planning to `ferry-core`.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod durable;
mod error;
pub mod files;
mod fs;

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::api::{ObjectInfo, PartInfo};
use ferry_core::plan::{Limits, PartSpan};
use futures_util::Stream;
use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use fs::FsStore;

/// A body to store or a range being read. An `Err` item means the producer failed (for an upload,
/// usually a client that went away mid-body); the store then keeps nothing of it.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What to record with an object besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct ObjectMeta {
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A multipart upload as its store knows it. The caller keeps it (in its session record) and
/// hands it back on every call, so any process sharing the store can carry the upload on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multipart {
    /// The caller's id for the upload.
    pub upload_id: String,
    /// The object the parts become.
    pub key: String,
    /// The store's own id for it (S3's `UploadId`); empty where the store needs none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store_id: String,
    /// Each part is kept as an object (or file) of its own until completion: so it can be read
    /// before (an S3 multipart upload's parts cannot be), or because its offset is not known.
    #[serde(default, skip_serializing_if = "is_false")]
    pub parts_as_objects: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a multipart upload needs from its store besides keeping its parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MultipartOptions {
    /// [`read_part`](Store::read_part) must work before the upload completes (per-part processing).
    pub readable_parts: bool,
    /// The object's size is not known, so neither are part offsets: each part is kept on its own
    /// and the parts are laid end to end at complete (an Uppy upload, which says no size).
    pub unknown_sizes: bool,
}

/// A URL a client sends a part to straight, and the headers it must send with it (they are part
/// of the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectPart {
    pub url: String,
    pub headers: BTreeMap<String, String>,
}

/// When a record write may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Any,
    /// Only if no record of that name exists.
    IfAbsent,
    /// Only if the record's current version is this one.
    IfMatch(String),
}

/// A small document and its version (changes on every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub bytes: Vec<u8>,
    pub version: String,
}

/// An object opened for reading: its description, and its bytes, both of the same version even if
/// the object is replaced meanwhile.
pub trait ObjectReader: Send {
    fn info(&self) -> &ObjectInfo;
    /// Streams `len` bytes from `start`; the caller keeps the range inside the object.
    fn read(self: Box<Self>, start: u64, len: u64) -> ByteStream;
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What this backend accepts for a multipart object.
    fn limits(&self) -> Limits;

    /// Bytes it can still take, where it can tell (a local disk can, a bucket cannot).
    async fn free_space(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Whether `complete_multipart` reads the parts and checks `expected_sha256` before it
    /// publishes. A store that cannot (S3 cannot read an open multipart upload) records the
    /// SHA-256 it is given, and readers verify it end to end.
    fn verifies_sha256(&self) -> bool;

    /// Prepares to receive the parts of an upload that will become the object `key`.
    async fn create_multipart(
        &self,
        upload_id: &str,
        key: &str,
        meta: &ObjectMeta,
        options: MultipartOptions,
    ) -> Result<Multipart, StoreError>;

    /// The checksum a client should send with each part it PUTs straight to the store
    /// (`"md5"`: `Content-MD5`, signed into the part's URL), or `None` if parts come through
    /// the server.
    fn part_checksum(&self) -> Option<&'static str> {
        None
    }

    /// A URL the client can PUT part `part_number` to without going through the server, valid for
    /// `ttl`, or `None` if this store has no such URLs. With `size`, the store refuses a body of
    /// another length; with `content_md5` (base64), one with another MD5.
    fn presign_part(
        &self,
        upload: &Multipart,
        part_number: u32,
        size: Option<u64>,
        content_md5: Option<&str>,
        ttl: std::time::Duration,
    ) -> Option<DirectPart> {
        let _ = (upload, part_number, size, content_md5, ttl);
        None
    }

    /// Stores the part `span` describes (its number, offset in the object and size; the body must
    /// be exactly that size; the offset is ignored for an upload of unknown size), replacing any
    /// earlier copy. Returns only once the part is on stable
    /// storage. A body of the wrong length or one that fails mid-way changes nothing.
    async fn put_part(&self, upload: &Multipart, span: PartSpan, body: ByteStream) -> Result<PartInfo, StoreError>;

    /// The parts stored so far, in part-number order. A store that does not report part ETags
    /// gives an empty `etag`.
    async fn list_parts(&self, upload: &Multipart) -> Result<Vec<PartInfo>, StoreError>;

    /// One stored part, if present.
    async fn head_part(&self, upload: &Multipart, part_number: u32) -> Result<Option<PartInfo>, StoreError> {
        Ok(self.list_parts(upload).await?.into_iter().find(|p| p.part_number == part_number))
    }

    /// The bytes of a stored part of an open upload, for processing it before the upload
    /// completes. [`StoreError::MissingPart`] if it is not stored; [`StoreError::Unreadable`] if
    /// the upload was not created with `readable_parts` and this store cannot read open parts.
    async fn read_part(&self, upload: &Multipart, span: PartSpan) -> Result<ByteStream, StoreError>;

    /// Assembles `parts` (in order; each must still match its size and ETag) into the upload's
    /// object, atomically: readers see the previous object or the whole new one. With
    /// `expected_sha256`, a store that [verifies](Store::verifies_sha256) stores nothing on a
    /// mismatch and leaves the parts in place. Completing again after a success (a caller that
    /// crashed before recording the result) returns the same object.
    async fn complete_multipart(
        &self,
        upload: &Multipart,
        parts: &[PartInfo],
        expected_sha256: Option<&str>,
        meta: ObjectMeta,
    ) -> Result<ObjectInfo, StoreError>;

    /// Deletes every part of the upload. Idempotent.
    async fn abort_multipart(&self, upload: &Multipart) -> Result<(), StoreError>;

    /// Deletes what is left of the parts once the upload has completed (the object is kept).
    /// By default that is [`Store::abort_multipart`]; a store whose completion already consumed
    /// them has nothing to do.
    async fn discard_completed_parts(&self, upload: &Multipart) -> Result<(), StoreError> {
        self.abort_multipart(upload).await
    }

    async fn open_object(&self, key: &str) -> Result<Box<dyn ObjectReader>, StoreError>;

    async fn head_object(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        Ok(self.open_object(key).await?.info().clone())
    }

    /// Deletes an object. Idempotent.
    async fn delete_object(&self, key: &str) -> Result<(), StoreError>;

    /// Objects whose key starts with `prefix`, in key order.
    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError>;

    /// Writes a record if `condition` holds (else [`StoreError::ConditionFailed`]); returns its new version.
    async fn put_record(&self, name: &str, bytes: Vec<u8>, condition: Condition) -> Result<String, StoreError>;

    /// Names of the records under `prefix` (a `/`-terminated folder such as `sessions/`).
    async fn list_records(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    async fn delete_record(&self, name: &str) -> Result<(), StoreError>;
}

/// Record names are `/`-separated segments of ASCII letters, digits, `-`, `_` and `.`.
pub fn check_record_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok { Ok(()) } else { Err(StoreError::InvalidName(name.to_owned())) }
}
