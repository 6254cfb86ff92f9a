//! # ferry-store
//!
//! Where ferry keeps bytes and state. The [`Store`] trait covers what an upload needs from a
//! storage backend: multipart objects (create, put a part from a stream, list parts, complete,
//! abort), object reads with ranges, and small *records* with conditional writes (session state,
//! manifests). [`FsStore`] is the embedded implementation: a directory on local disk, durable
//! against `kill -9` and power loss (temp file, fsync, rename, fsync the directory).
//!
//! This crate must not know about HTTP, auth, sessions or clients: it stores what it is given and
//! checks what it is asked to check (sizes, ETags, SHA-256). Limits and session rules belong to the
//! server; wire types and planning to `ferry-core`.

mod error;
mod fs;

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::api::{ObjectInfo, PartInfo};
use ferry_core::plan::{Limits, PartSpan};
use futures_util::Stream;

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

    /// Prepares to receive the parts of `upload_id`.
    async fn create_multipart(&self, upload_id: &str) -> Result<(), StoreError>;

    /// Stores the part `span` describes (its number, offset in the object and size; the body must
    /// be exactly that size), replacing any earlier copy. Returns only once the part is on stable
    /// storage. A body of the wrong length or one that fails mid-way changes nothing.
    async fn put_part(&self, upload_id: &str, span: PartSpan, body: ByteStream) -> Result<PartInfo, StoreError>;

    /// The parts stored so far, in part-number order.
    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, StoreError>;

    /// One stored part, if present.
    async fn head_part(&self, upload_id: &str, part_number: u32) -> Result<Option<PartInfo>, StoreError> {
        Ok(self.list_parts(upload_id).await?.into_iter().find(|p| p.part_number == part_number))
    }

    /// Assembles `parts` (in order; each must still match its size and ETag) into the object `key`,
    /// atomically: readers see the previous object or the whole new one. With `expected_sha256`, a
    /// mismatch stores nothing and leaves the parts in place. Parts may outlive a successful
    /// complete until [`Store::abort_multipart`], so a caller that crashes before recording the
    /// result can complete again.
    async fn complete_multipart(
        &self,
        upload_id: &str,
        key: &str,
        parts: &[PartInfo],
        expected_sha256: Option<&str>,
        meta: ObjectMeta,
    ) -> Result<ObjectInfo, StoreError>;

    /// Deletes every part of `upload_id`. Idempotent.
    async fn abort_multipart(&self, upload_id: &str) -> Result<(), StoreError>;

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
