//! Upload sessions: their record, the one function that moves them between states, and the
//! operations on them. Every rule about what may happen to a session lives here.
//!
//! Records are kept in the store (`sessions/{id}`), re-read on every request, and written with a
//! conditional put, so they are durable, there is no cache to go stale, and several servers
//! sharing one store serve the same sessions: when two change a session at once, one write wins
//! and the other re-reads what it did. Within this process a per-session lock pair also orders the
//! operations that must not interleave: part PUTs hold `parts` shared; `complete` holds `ops` and
//! `parts` exclusively (so no part lands in an object being assembled); `cancel` and expiry hold
//! `ops` only, so they never wait for a slow part body.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use ferry_core::api::{
    CompletePart, CreateUpload, CreatedUpload, ObjectInfo, PartInfo, PartUrl, ProcessingStatus, UploadState,
    UploadStatus, UploadSummary, bare_etag, is_base64_md5, is_sha256_hex,
};
use ferry_core::events::{ProcessorKind, UploadEvent};
use ferry_core::key::normalize_key;
use ferry_core::plan::{LayoutError, PartPlan, PartSpan};
use ferry_core::sign::{Scope, Signer};
use ferry_store::{ByteStream, Condition, Multipart, MultipartOptions, ObjectMeta, Store, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Mutex as AsyncMutex, RwLock};

use crate::AppState;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::events::{Events, LogSpec};
use crate::metrics::Metrics;
use crate::processing::Runner;
use crate::webhooks::{self, Webhooks};

/// The durable record of one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub upload_id: String,
    pub key: String,
    /// The store's own id for the multipart upload (S3's `UploadId`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store_id: String,
    /// The store keeps each part as an object until completion, so parts can be processed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parts_as_objects: bool,
    pub name: String,
    pub size: u64,
    pub part_size: u64,
    pub part_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub state: UploadState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ObjectInfo>,
    /// Set by the server completing the upload, so that servers sharing the store do not
    /// complete it twice at once.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub completing_since: Option<OffsetDateTime>,
    /// The processor's name and kind, fixed at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_kind: Option<ProcessorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Created without a size (an Uppy upload): parts of any size arrive, and `complete` works
    /// out the plan from them. `size`, `part_size` and `part_count` are 0 until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_ended: bool,
}

impl Session {
    pub fn multipart(&self) -> Multipart {
        Multipart {
            upload_id: self.upload_id.clone(),
            key: self.key.clone(),
            store_id: self.store_id.clone(),
            parts_as_objects: self.parts_as_objects,
        }
    }

    pub fn meta(&self) -> ObjectMeta {
        ObjectMeta { content_type: self.content_type.clone(), metadata: self.metadata.clone() }
    }

    pub fn log_spec(&self) -> LogSpec<'_> {
        LogSpec {
            upload_id: &self.upload_id,
            size: self.size,
            part_count: self.part_count,
            processor: self.processor_kind,
        }
    }

    pub fn plan(&self) -> Result<PartPlan, ApiError> {
        PartPlan::from_parts(self.size, self.part_size, self.part_count)
            .ok_or_else(|| ApiError::internal(format!("session {} has an inconsistent plan", self.upload_id)))
    }

    /// The state as of `now`: an open session past its deadline is expired even before the sweeper
    /// has recorded it.
    pub fn state_at(&self, now: OffsetDateTime) -> UploadState {
        if self.state == UploadState::Uploading && now >= self.expires_at { UploadState::Expired } else { self.state }
    }

    /// The error for an operation that needs the session open, or `Ok` if it is.
    pub fn require_open(&self, now: OffsetDateTime) -> Result<(), ApiError> {
        match self.state_at(now) {
            UploadState::Uploading => Ok(()),
            UploadState::Completed => Err(ApiError::conflict("upload_completed", "the upload is already completed")),
            UploadState::Failed => Err(ApiError::conflict("upload_failed", "the upload has failed")),
            UploadState::Cancelled => {
                Err(ApiError::new(StatusCode::GONE, "upload_cancelled", "the upload was cancelled"))
            }
            UploadState::Expired => {
                Err(ApiError::new(StatusCode::GONE, "upload_expired", "the upload expired before it was completed"))
            }
        }
    }

    /// The only way a session changes state. Terminal states never change again.
    pub fn transition(&mut self, to: UploadState, now: OffsetDateTime) -> Result<(), ApiError> {
        use UploadState::*;
        let from = self.state;
        let allowed = matches!((from, to), (Uploading, Completed | Cancelled | Expired | Failed));
        if !allowed {
            return Err(ApiError::internal(format!(
                "session {} cannot go from {} to {}",
                self.upload_id,
                from.as_str(),
                to.as_str()
            )));
        }
        self.state = to;
        self.updated_at = now;
        Ok(())
    }

    fn summary(&self, now: OffsetDateTime) -> UploadSummary {
        UploadSummary {
            upload_id: self.upload_id.clone(),
            key: self.key.clone(),
            state: self.state_at(now),
            size: self.size,
            part_count: self.part_count,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(Default)]
struct SessionLocks {
    ops: AsyncMutex<()>,
    parts: RwLock<()>,
}

fn record_name(upload_id: &str) -> String {
    format!("sessions/{upload_id}")
}

fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn new_upload_id() -> Result<String, ApiError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(id))
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

/// The session domain over a store.
pub struct Sessions {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: ServerConfig,
    metrics: Metrics,
    locks: Mutex<HashMap<String, Arc<SessionLocks>>>,
    pub(crate) events: Events,
    pub(crate) runner: Runner,
    pub(crate) webhooks: Arc<Webhooks>,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, config: ServerConfig, metrics: Metrics) -> Sessions {
        let events = Events::new(Arc::clone(&store));
        let runner = Runner::new(config.processing_concurrency, config.processing_timeout);
        let webhooks = Arc::new(Webhooks::new(Arc::clone(&store), config.webhooks.clone()));
        Sessions { store, config, metrics, locks: Mutex::new(HashMap::new()), events, runner, webhooks }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn locks(&self, upload_id: &str) -> Arc<SessionLocks> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            // Drop entries nobody holds; they are recreated on demand.
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(map.entry(upload_id.to_owned()).or_default())
    }

    /// Reads a session record; 404 for an id that is malformed or unknown.
    pub async fn load(&self, upload_id: &str) -> Result<(Session, String), ApiError> {
        if !valid_upload_id(upload_id) {
            return Err(ApiError::not_found("upload_not_found", "no such upload"));
        }
        let record = self.store.get_record(&record_name(upload_id)).await?;
        let record = record.ok_or_else(|| ApiError::not_found("upload_not_found", "no such upload"))?;
        let session: Session = serde_json::from_slice(&record.bytes)
            .map_err(|e| ApiError::internal(format!("session record {upload_id} is unreadable: {e}")))?;
        Ok((session, record.version))
    }

    async fn save(&self, session: &Session, condition: Condition) -> Result<String, ApiError> {
        let bytes = serde_json::to_vec(session).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(self.store.put_record(&record_name(&session.upload_id), bytes, condition).await?)
    }

    /// Where the client sends a part: straight to the store when it gives such URLs, else this
    /// server's own signed part route.
    pub fn part_url(
        &self,
        signer: &Signer,
        session: &Session,
        span: ferry_core::plan::PartSpan,
        content_md5: Option<&str>,
        now: OffsetDateTime,
    ) -> PartUrl {
        let expires_at = now + self.config.url_ttl;
        let expires = unix(expires_at);
        let expires_at = time::OffsetDateTime::from_unix_timestamp(expires as i64).unwrap_or(expires_at);
        let size = (!session.open_ended).then_some(span.size);
        let direct =
            self.store.presign_part(&session.multipart(), span.part_number, size, content_md5, self.config.url_ttl);
        let (url, headers) = match direct {
            Some(direct) => (direct.url, direct.headers),
            None => {
                let upload_id = session.upload_id.as_str();
                let sig = signer.sign("PUT", Scope::Part { upload_id, part_number: span.part_number }, expires);
                let url = format!(
                    "{}/p/{upload_id}/{}?expires={expires}&signature={sig}",
                    self.config.public_url, span.part_number
                );
                (url, BTreeMap::new())
            }
        };
        PartUrl { part_number: span.part_number, offset: span.offset, size: span.size, url, headers, expires_at }
    }

    pub async fn create(self: &Arc<Self>, signer: &Signer, req: CreateUpload) -> Result<CreatedUpload, ApiError> {
        let plan = PartPlan::new(req.size, req.part_size, &self.store.limits())?;
        let session = self.open(req, Some(plan)).await?;
        let now = now();
        let parts = plan.parts().map(|span| self.part_url(signer, &session, span, None, now)).collect();
        Ok(CreatedUpload {
            events_url: Some(format!("{}/v1/uploads/{}/events", self.config.public_url, session.upload_id)),
            upload_id: session.upload_id,
            key: session.key,
            size: plan.size(),
            part_size: plan.part_size(),
            part_count: plan.part_count(),
            parts,
            part_checksum: self.store.part_checksum().map(str::to_owned),
            expires_at: session.expires_at,
        })
    }

    /// Creates a session whose size is not known (`req.size` is ignored): parts of any size may
    /// arrive, and `complete` works out the object from them. Uppy uploads are made this way.
    pub async fn create_open_ended(self: &Arc<Self>, req: CreateUpload) -> Result<Session, ApiError> {
        if req.processor.is_some() {
            return Err(ApiError::bad_request("unknown_processor", "uploads of unknown size take no processor"));
        }
        self.open(req, None).await
    }

    /// Validates a create request and opens the session, with `plan` or open-ended.
    async fn open(self: &Arc<Self>, req: CreateUpload, plan: Option<PartPlan>) -> Result<Session, ApiError> {
        let key = normalize_key(&req.name)?;
        if let Some(sha) = &req.sha256
            && !is_sha256_hex(sha)
        {
            return Err(ApiError::bad_request("invalid_sha256", "sha256 must be 64 hex digits"));
        }
        let processor_kind = match &req.processor {
            None => None,
            Some(p) => match self.config.processors.get(p) {
                Some(spec) => Some(spec.kind),
                None => {
                    let known: Vec<&str> = self.config.processors.keys().map(String::as_str).collect();
                    let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                    return Err(ApiError::bad_request(
                        "unknown_processor",
                        format!("no processor named {p:?} is configured on this server (configured: {known})"),
                    ));
                }
            },
        };
        let webhook_url =
            req.webhook_url.as_deref().map(|u| webhooks::check_url(&self.config.webhooks, u)).transpose()?;
        let meta_bytes: usize = req.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if meta_bytes > 8 * 1024 || req.content_type.as_ref().is_some_and(|c| c.len() > 256) {
            return Err(ApiError::bad_request(
                "metadata_too_large",
                "metadata is limited to 8 KiB and content_type to 256 bytes",
            ));
        }
        if req
            .metadata
            .keys()
            .chain(req.metadata.values())
            .chain(req.content_type.iter())
            .any(|s| s.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(
                "invalid_metadata",
                "metadata and content_type may not contain control characters",
            ));
        }
        let now = now();
        let upload_id = new_upload_id()?;
        let meta = ObjectMeta { content_type: req.content_type.clone(), metadata: req.metadata.clone() };
        let options = MultipartOptions {
            readable_parts: processor_kind == Some(ProcessorKind::Part),
            unknown_sizes: plan.is_none(),
        };
        // Parts may arrive as soon as the client has the answer, so the store is ready first.
        let multipart = self.store.create_multipart(&upload_id, &key, &meta, options).await?;
        let session = Session {
            upload_id,
            key,
            store_id: multipart.store_id,
            parts_as_objects: multipart.parts_as_objects,
            name: req.name,
            size: plan.map_or(0, |p| p.size()),
            part_size: plan.map_or(0, |p| p.part_size()),
            part_count: plan.map_or(0, |p| p.part_count()),
            sha256: req.sha256.map(|s| s.to_ascii_lowercase()),
            content_type: req.content_type,
            metadata: req.metadata,
            state: UploadState::Uploading,
            created_at: now,
            updated_at: now,
            expires_at: now + self.config.session_ttl,
            result: None,
            completing_since: None,
            processor: req.processor,
            processor_kind,
            webhook_url,
            open_ended: plan.is_none(),
        };
        self.save(&session, Condition::IfAbsent).await?;
        self.metrics.upload_entered(UploadState::Uploading);
        let event = UploadEvent::Initialized {
            upload_id: session.upload_id.clone(),
            key: session.key.clone(),
            size: session.size,
            part_size: session.part_size,
            part_count: session.part_count,
            processor: session.processor.clone(),
        };
        self.record(&session, event).await;
        Ok(session)
    }

    pub async fn sign(
        &self,
        signer: &Signer,
        upload_id: &str,
        part_numbers: &[u32],
        content_md5: &BTreeMap<u32, String>,
    ) -> Result<Vec<PartUrl>, ApiError> {
        let (session, _) = self.load(upload_id).await?;
        let now = now();
        session.require_open(now)?;
        let count = self.part_count_bound(&session)?;
        if part_numbers.len() > count as usize {
            return Err(ApiError::bad_request("too_many_parts", "more part numbers than the upload has parts"));
        }
        if let Some((n, _)) = content_md5.iter().find(|(_, md5)| !is_base64_md5(md5)) {
            return Err(ApiError::bad_request(
                "invalid_content_md5",
                format!("content_md5 of part {n} is not a base64 MD5 digest"),
            ));
        }
        if let Some(n) = content_md5.keys().find(|n| !part_numbers.contains(n)) {
            return Err(ApiError::bad_request(
                "invalid_content_md5",
                format!("content_md5 names part {n}, which is not being signed"),
            ));
        }
        part_numbers
            .iter()
            .map(|&n| {
                let span = self.part_span(&session, n, None)?;
                Ok(self.part_url(signer, &session, span, content_md5.get(&n).map(String::as_str), now))
            })
            .collect()
    }

    /// The highest part number the session takes: its plan's, or the store's limit for an
    /// open-ended session.
    fn part_count_bound(&self, session: &Session) -> Result<u32, ApiError> {
        if session.open_ended { Ok(self.store.limits().max_parts) } else { Ok(session.plan()?.part_count()) }
    }

    /// Part `n` of the session. For an open-ended session, its size is the request's
    /// `Content-Length` (needed when storing it; `None` when only signing), and its offset unknown.
    fn part_span(&self, session: &Session, n: u32, content_length: Option<u64>) -> Result<PartSpan, ApiError> {
        if !session.open_ended {
            let plan = session.plan()?;
            return plan.part(n).ok_or_else(|| invalid_part(n, plan.part_count()));
        }
        let limits = self.store.limits();
        if n == 0 || n > limits.max_parts {
            return Err(invalid_part(n, limits.max_parts));
        }
        let size = content_length.unwrap_or(0);
        if size > limits.max_part_size {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "part_too_large",
                format!("a part may be at most {} bytes", limits.max_part_size),
            ));
        }
        Ok(PartSpan { part_number: n, offset: 0, size })
    }

    /// Stores one part body (the route has already wrapped it so every byte read is counted).
    pub async fn put_part(
        self: &Arc<Self>,
        upload_id: &str,
        part_number: u32,
        content_length: Option<u64>,
        body: ByteStream,
    ) -> Result<PartInfo, ApiError> {
        let (session, _) = self.load(upload_id).await?;
        session.require_open(now())?;
        if session.open_ended && content_length.is_none() {
            return Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "a part of an upload of unknown size needs a Content-Length",
            ));
        }
        let span = self.part_span(&session, part_number, content_length)?;
        if let Some(len) = content_length
            && len != span.size
        {
            return Err(ApiError::bad_request(
                "wrong_part_size",
                format!("part {part_number} is {} bytes; the request says {len}", span.size),
            ));
        }
        let locks = self.locks(upload_id);
        let _shared = locks.parts.read().await;
        // Complete or cancel may have happened while this request waited for the lock.
        let (session, _) = self.load(upload_id).await?;
        session.require_open(now())?;
        let part = match self.store.put_part(&session.multipart(), span, body).await {
            Err(StoreError::NoSuchUpload) => {
                let (session, _) = self.load(upload_id).await?;
                session.require_open(now())?;
                return Err(StoreError::NoSuchUpload.into());
            }
            other => other?,
        };
        self.metrics.parts_received.inc();
        self.part_stored(&session, &part).await;
        Ok(part)
    }

    pub async fn part_done(
        self: &Arc<Self>,
        upload_id: &str,
        part_number: u32,
        etag: &str,
        size: u64,
    ) -> Result<PartInfo, ApiError> {
        let (session, _) = self.load(upload_id).await?;
        session.require_open(now())?;
        self.part_span(&session, part_number, None)?;
        let part = self.store.head_part(&session.multipart(), part_number).await?;
        let mut part = part
            .ok_or_else(|| ApiError::not_found("part_not_found", format!("part {part_number} has not been stored")))?;
        // A store that lists parts without ETags can confirm only the size.
        if part.etag.is_empty() {
            part.etag = ferry_core::api::quote_etag(etag);
        }
        if bare_etag(&part.etag) != bare_etag(etag) || part.size != size {
            return Err(ApiError::conflict(
                "part_mismatch",
                format!(
                    "part {part_number} is stored as {} bytes with ETag {}; the report says {size} bytes, {etag}",
                    part.size, part.etag
                ),
            ));
        }
        // A part that came through this server was recorded when it was stored.
        if !self.events.knows_part(session.log_spec(), part_number, &part.etag).await {
            self.part_stored(&session, &part).await;
        }
        Ok(part)
    }

    pub async fn status(&self, upload_id: &str) -> Result<UploadStatus, ApiError> {
        let (session, _) = self.load(upload_id).await?;
        let processing = match (&session.processor, session.processor_kind) {
            (Some(name), Some(kind)) => {
                let tally = self.events.tally(session.log_spec()).await?;
                let progress = tally.progress();
                Some(ProcessingStatus {
                    processor: name.clone(),
                    kind,
                    parts_processed: progress.parts_processed,
                    parts_failed: progress.parts_failed,
                    parts: tally.outcomes().cloned().collect(),
                    final_result: tally.final_result().cloned(),
                })
            }
            _ => None,
        };
        let webhook = match &session.webhook_url {
            Some(url) => Some(
                self.webhooks
                    .status(upload_id)
                    .await?
                    .unwrap_or_else(|| ferry_core::api::WebhookStatus { url: url.clone(), deliveries: Vec::new() }),
            ),
            None => None,
        };
        let state = session.state_at(now());
        let parts = if state == UploadState::Uploading {
            match self.store.list_parts(&session.multipart()).await {
                Ok(parts) => parts,
                Err(StoreError::NoSuchUpload) => Vec::new(),
                Err(e) => return Err(e.into()),
            }
        } else {
            Vec::new()
        };
        let bytes_received = match (&session.result, state) {
            (Some(r), UploadState::Completed) => r.size,
            _ => parts.iter().map(|p| p.size).sum(),
        };
        Ok(UploadStatus {
            upload_id: session.upload_id,
            key: session.key,
            name: session.name,
            state,
            size: session.size,
            part_size: session.part_size,
            part_count: session.part_count,
            parts,
            bytes_received,
            part_checksum: self.store.part_checksum().map(str::to_owned),
            sha256: session.sha256,
            content_type: session.content_type,
            metadata: session.metadata,
            created_at: session.created_at,
            updated_at: session.updated_at,
            expires_at: session.expires_at,
            result: session.result,
            processing,
            webhook,
        })
    }

    pub async fn complete(
        self: &Arc<Self>,
        upload_id: &str,
        check: Option<Vec<CompletePart>>,
        sha256: Option<String>,
    ) -> Result<ObjectInfo, ApiError> {
        if let Some(sha) = &sha256
            && !is_sha256_hex(sha)
        {
            return Err(ApiError::bad_request("invalid_sha256", "sha256 must be 64 hex digits"));
        }
        let sha256 = sha256.map(|s| s.to_ascii_lowercase());
        if let Some(done) = self.completed_result(upload_id).await? {
            return match (sha256, &done.sha256) {
                (Some(given), Some(stored)) if given != *stored => Err(sha_mismatch(&given, stored)),
                _ => Ok(done),
            };
        }
        let locks = self.locks(upload_id);
        let _ops = locks.ops.lock().await;
        let _exclusive = locks.parts.write().await;
        for _ in 0..3 {
            // Another complete may have finished while this one waited.
            if let Some(done) = self.completed_result(upload_id).await? {
                return Ok(done);
            }
            let (mut session, version) = self.load(upload_id).await?;
            let now = now();
            if let (UploadState::Completed, Some(done)) = (session.state, &session.result) {
                return Ok(done.clone());
            }
            session.require_open(now)?;
            // Servers sharing the store take turns: the one whose claim is written completes,
            // the others wait for its result.
            if session.completing_since.is_some_and(|since| now - since < COMPLETE_CLAIM) {
                self.await_claim(upload_id).await?;
                continue;
            }
            session.completing_since = Some(now);
            let version = match self.save(&session, Condition::IfMatch(version)).await {
                Ok(v) => v,
                Err(e) if e.code == CONCURRENT => continue,
                Err(e) => return Err(e),
            };
            let result = self.complete_claimed(&mut session, version, check.as_deref(), sha256.as_deref()).await;
            // Two servers can both win the claim on a store whose conditional PUT is not atomic
            // (s3s-fs checks, then writes): the one whose final write loses returns the winner's
            // result, which is the same object, once the winner (maybe still assembling it) has
            // recorded it.
            if let Err(e) = &result
                && e.code == CONCURRENT
            {
                self.await_claim(upload_id).await?;
                if let Some(done) = self.completed_result(upload_id).await? {
                    return Ok(done);
                }
            }
            if result.is_err() {
                self.release_claim(upload_id, now).await;
            }
            return result;
        }
        Err(ApiError::conflict("complete_in_progress", "another server is completing this upload; ask again shortly"))
    }

    /// Waits until no other server is completing the upload (or its claim is stale).
    async fn await_claim(&self, upload_id: &str) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + COMPLETE_CLAIM;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let (session, _) = self.load(upload_id).await?;
            let now = now();
            if session.state_at(now) != UploadState::Uploading
                || session.completing_since.is_none_or(|since| now - since >= COMPLETE_CLAIM)
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Clears this server's claim after a complete that failed, so the upload can be completed again.
    async fn release_claim(&self, upload_id: &str, claimed_at: OffsetDateTime) {
        if let Ok((mut session, version)) = self.load(upload_id).await
            && session.state == UploadState::Uploading
            && session.completing_since == Some(claimed_at)
        {
            session.completing_since = None;
            if let Err(e) = self.save(&session, Condition::IfMatch(version)).await {
                tracing::warn!(upload_id, error = %e.message, "could not release the claim to complete");
            }
        }
    }

    async fn complete_claimed(
        self: &Arc<Self>,
        session: &mut Session,
        version: String,
        check: Option<&[CompletePart]>,
        sha256: Option<&str>,
    ) -> Result<ObjectInfo, ApiError> {
        let upload_id = session.upload_id.clone();
        let upload_id = upload_id.as_str();
        let now = now();
        let multipart = session.multipart();
        let stored = self.store.list_parts(&multipart).await?;
        if session.open_ended {
            // The parts say what the object is: those the client names (all, if it names none).
            let named: Option<Vec<u32>> = check.map(|c| c.iter().map(|p| p.part_number).collect());
            let sizes: Vec<(u32, u64)> = stored
                .iter()
                .filter(|p| named.as_ref().is_none_or(|n| n.contains(&p.part_number)))
                .map(|p| (p.part_number, p.size))
                .collect();
            let plan = PartPlan::from_uploaded(&sizes, &self.store.limits()).map_err(|e| match e {
                LayoutError::Missing(_) | LayoutError::Empty => ApiError::bad_request("missing_parts", e.to_string()),
                e => ApiError::bad_request("irregular_parts", e.to_string()),
            })?;
            (session.size, session.part_size, session.part_count) = (plan.size(), plan.part_size(), plan.part_count());
        }
        let plan = session.plan()?;
        let by_number: HashMap<u32, &PartInfo> = stored.iter().map(|p| (p.part_number, p)).collect();
        let missing: Vec<u32> = plan
            .parts()
            .filter(|s| by_number.get(&s.part_number).is_none_or(|p| p.size != s.size))
            .map(|s| s.part_number)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::bad_request(
                "missing_parts",
                format!("{} of {} parts are missing: {}", missing.len(), plan.part_count(), list_numbers(&missing)),
            ));
        }
        if let Some(check) = check {
            check_etags(check, &by_number, plan.part_count())?;
        }
        // Where the store lists parts without ETags, the client's list names them.
        let reported: HashMap<u32, &str> =
            check.unwrap_or_default().iter().map(|c| (c.part_number, c.etag.as_str())).collect();
        let parts: Vec<PartInfo> = plan
            .parts()
            .filter_map(|s| by_number.get(&s.part_number).map(|p| (*p).clone()))
            .map(|mut p| {
                if p.etag.is_empty() {
                    p.etag = reported.get(&p.part_number).map(|e| ferry_core::api::quote_etag(e)).unwrap_or_default();
                }
                p
            })
            .collect();
        let expected = match (&session.sha256, sha256) {
            (Some(at_create), Some(now)) if at_create != now => return Err(sha_mismatch(now, at_create)),
            (at_create, now) => at_create.clone().or_else(|| now.map(str::to_owned)),
        };
        let info = self.store.complete_multipart(&multipart, &parts, expected.as_deref(), session.meta()).await?;
        session.transition(UploadState::Completed, now)?;
        session.result = Some(info.clone());
        session.completing_since = None;
        match self.save(session, Condition::IfMatch(version)).await {
            Ok(_) => self.metrics.upload_entered(UploadState::Completed),
            // Another server sharing the store completed it at the same time; its record stands.
            Err(e) if e.code == CONCURRENT => {
                return self.completed_result(upload_id).await?.ok_or(e);
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = self.store.discard_completed_parts(&multipart).await {
            tracing::warn!(upload_id, error = %e, "completed, but its parts could not be removed");
        }
        self.upload_completed(session, &info).await;
        Ok(info)
    }

    async fn completed_result(&self, upload_id: &str) -> Result<Option<ObjectInfo>, ApiError> {
        let (session, _) = self.load(upload_id).await?;
        Ok(match (session.state, session.result) {
            (UploadState::Completed, Some(result)) => Some(result),
            _ => None,
        })
    }

    /// Cancels an open session and deletes its parts. Repeating it is fine.
    pub async fn cancel(self: &Arc<Self>, upload_id: &str) -> Result<UploadStatus, ApiError> {
        let locks = self.locks(upload_id);
        {
            let _ops = locks.ops.lock().await;
            let mut attempts = 0;
            let session = loop {
                let (mut session, version) = self.load(upload_id).await?;
                match session.state_at(now()) {
                    UploadState::Uploading => {
                        session.transition(UploadState::Cancelled, now())?;
                        match self.save(&session, Condition::IfMatch(version)).await {
                            Ok(_) => {
                                self.metrics.upload_entered(UploadState::Cancelled);
                                self.runner.cancel(upload_id);
                                self.record(&session, UploadEvent::Cancelled).await;
                            }
                            // Another server changed it meanwhile: look again at what it did.
                            Err(e) if e.code == CONCURRENT && attempts < 3 => {
                                attempts += 1;
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    UploadState::Cancelled => {}
                    _ => session.require_open(now())?,
                }
                break session;
            };
            // Also on a repeat: a crash between the record and the deletion leaves parts behind.
            self.store.abort_multipart(&session.multipart()).await?;
        }
        self.status(upload_id).await
    }

    pub async fn list(&self, filter: Option<UploadState>) -> Result<Vec<UploadSummary>, ApiError> {
        let now = now();
        let mut out = Vec::new();
        for name in self.store.list_records("sessions/").await? {
            let Some(id) = name.strip_prefix("sessions/") else {
                continue;
            };
            match self.load(id).await {
                Ok((s, _)) if filter.is_none_or(|f| s.state_at(now) == f) => out.push(s.summary(now)),
                Ok(_) => {}
                Err(e) if e.status == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.upload_id.cmp(&b.upload_id)));
        Ok(out)
    }

    /// Marks overdue open sessions expired and deletes their parts. Returns how many expired.
    pub async fn expire_overdue(self: &Arc<Self>) -> Result<usize, ApiError> {
        let mut expired = 0;
        for name in self.store.list_records("sessions/").await? {
            let Some(id) = name.strip_prefix("sessions/") else {
                continue;
            };
            let Ok((session, _)) = self.load(id).await else {
                continue;
            };
            if session.state != UploadState::Uploading || session.state_at(now()) != UploadState::Expired {
                continue;
            }
            let locks = self.locks(id);
            let _ops = locks.ops.lock().await;
            let (mut session, version) = self.load(id).await?;
            if session.state != UploadState::Uploading || session.state_at(now()) != UploadState::Expired {
                continue;
            }
            session.transition(UploadState::Expired, now())?;
            match self.save(&session, Condition::IfMatch(version)).await {
                Ok(_) => {}
                // Another server's sweep (or a complete) got there first.
                Err(e) if e.code == CONCURRENT => continue,
                Err(e) => return Err(e),
            }
            self.metrics.upload_entered(UploadState::Expired);
            self.runner.cancel(id);
            self.record(&session, UploadEvent::Expired).await;
            self.store.abort_multipart(&session.multipart()).await?;
            expired += 1;
        }
        Ok(expired)
    }
}

/// How long a claim to complete holds before another server may take over (its holder died).
const COMPLETE_CLAIM: std::time::Duration = std::time::Duration::from_secs(300);

/// The code of the error a lost conditional write becomes.
const CONCURRENT: &str = "concurrent_update";

fn sha_mismatch(given: &str, actual: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "sha256_mismatch",
        format!("the SHA-256 given, {given}, does not match {actual}"),
    )
}

fn invalid_part(n: u32, count: u32) -> ApiError {
    ApiError::bad_request("invalid_part_number", format!("part number {n} is outside 1..={count}"))
}

fn list_numbers(ns: &[u32]) -> String {
    let shown: Vec<String> = ns.iter().take(20).map(u32::to_string).collect();
    if ns.len() > 20 { format!("{}, …", shown.join(", ")) } else { shown.join(", ") }
}

/// The client's ETag list must name every part once, each with the ETag the server holds.
fn check_etags(check: &[CompletePart], stored: &HashMap<u32, &PartInfo>, part_count: u32) -> Result<(), ApiError> {
    let mut seen = vec![false; part_count as usize + 1];
    for c in check {
        let Some(slot) = seen.get_mut(c.part_number as usize).filter(|_| c.part_number > 0) else {
            return Err(invalid_part(c.part_number, part_count));
        };
        if std::mem::replace(slot, true) {
            return Err(ApiError::bad_request("invalid_parts", format!("part {} is listed twice", c.part_number)));
        }
        let held = stored.get(&c.part_number).map(|p| bare_etag(&p.etag)).unwrap_or_default();
        // An empty ETag: the store does not say, so there is nothing to check against.
        if !held.is_empty() && held != bare_etag(&c.etag) {
            return Err(ApiError::bad_request(
                "etag_mismatch",
                format!("part {} has ETag \"{held}\", not {}", c.part_number, c.etag),
            ));
        }
    }
    let unlisted = seen.iter().skip(1).filter(|s| !**s).count();
    if unlisted > 0 {
        return Err(ApiError::bad_request(
            "invalid_parts",
            format!("the parts list leaves out {unlisted} of {part_count} parts"),
        ));
    }
    Ok(())
}

/// Runs the expiry sweep every `sweep_interval` until the task is aborted.
pub(crate) async fn sweep_forever(state: Arc<AppState>) {
    if let Err(e) = state.sessions.recover().await {
        tracing::warn!(error = %e.message, "could not look for unfinished processing and webhooks");
    }
    let mut tick = tokio::time::interval(state.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.sessions.expire_overdue().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired overdue uploads"),
            Err(e) => tracing::warn!(error = %e.message, "expiry sweep failed"),
        }
    }
}
