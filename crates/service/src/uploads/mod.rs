//! The service, and its upload sessions: their records, and every operation on them.
//!
//! Records are kept in the store (`sessions/{id}`), re-read on every request, and written with a
//! conditional put, so they are durable, there is no cache to go stale, and several servers
//! sharing one store serve the same sessions: when two change a session at once, one write wins
//! and the other re-reads what it did. Within this process a per-session lock pair also orders the
//! operations that must not interleave: part PUTs hold `parts` shared; `complete` holds `ops` and
//! `parts` exclusively (so no part lands in an object being assembled); `cancel` and expiry hold
//! `ops` only, so they never wait for a slow part body.
//!
//! - [`create`]: new sessions and their signed part URLs;
//! - [`parts`]: part bodies and reports of parts stored straight in the store;
//! - [`complete`]: assembling the object, with the claim that keeps servers from doing it twice;
//! - [`lifecycle`]: status, lists, cancel, expiry;
//! - [`pipeline`]: what follows a change: events, processing, webhooks, and recovery after a crash.

mod complete;
mod create;
pub(crate) use create::Layout;
mod lifecycle;
mod parts;
mod pipeline;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ferry_core::api::{PartUrl, UploadState};
use ferry_core::plan::{PartPlan, PartSpan};
use ferry_core::sign::{Scope, Signer};
use ferry_store::{Condition, Store};
use tokio::sync::{Mutex as AsyncMutex, OwnedSemaphorePermit, RwLock, Semaphore};

use crate::clock::Clock;
use crate::config::ServiceConfig;
use crate::error::{Invalid, NotFound, ServiceError};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::processing::Runner;
use crate::session::{Session, record_name, valid_upload_id};
use crate::webhooks::{WebhookSender, Webhooks};
use ferry_bus::Bus;

#[derive(Default)]
struct SessionLocks {
    ops: AsyncMutex<()>,
    parts: RwLock<()>,
}

/// ferry's domain over a store: upload sessions, objects and room manifests. Share it in an
/// `Arc`.
pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: ServiceConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) signer: Signer,
    pub(crate) metrics: Metrics,
    locks: Mutex<HashMap<String, Arc<SessionLocks>>>,
    pub(crate) events: Events,
    /// Leases across instances (see `manifests`, `lifecycle`).
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) runner: Runner,
    pub(crate) webhooks: Arc<Webhooks>,
    /// Held across a manifest's read and across its conditional write (see `manifests`).
    pub(crate) manifest_lock: AsyncMutex<()>,
    /// KiB that ingests may hold in memory (see `ingest`).
    holding: Arc<Semaphore>,
}

/// Everything [`Service`] is made of.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub config: ServiceConfig,
    /// Signs part URLs handed to clients (the server verifies them with the same secret).
    pub signer: Signer,
    pub clock: Arc<dyn Clock>,
    /// The HTTP client webhooks go out through.
    pub webhook_sender: Arc<dyn WebhookSender>,
    pub metrics: Metrics,
    /// Wakes the event streams other instances hold when this one appends (and this one's when
    /// they do).
    pub bus: Arc<dyn Bus>,
}

impl Service {
    pub fn new(p: Parts) -> Service {
        let events = Events::new(Arc::clone(&p.store), Arc::clone(&p.clock), Arc::clone(&p.bus));
        let runner = Runner::new(p.config.processing_concurrency, p.config.processing_timeout, Arc::clone(&p.clock));
        let webhooks = Arc::new(Webhooks::new(
            Arc::clone(&p.store),
            p.config.webhooks.clone(),
            Arc::clone(&p.clock),
            p.webhook_sender,
            Arc::clone(&p.bus),
        ));
        let holding = Arc::new(Semaphore::new(hold_capacity(&p.config) as usize));
        Service {
            store: p.store,
            config: p.config,
            clock: p.clock,
            signer: p.signer,
            metrics: p.metrics,
            locks: Mutex::new(HashMap::new()),
            events,
            bus: p.bus,
            runner,
            webhooks,
            manifest_lock: AsyncMutex::new(()),
            holding,
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// Kills every processor run under way (the server is stopping; runs cut short are run
    /// again after the restart, as their outcomes were not recorded).
    pub fn stop_processing(&self) {
        self.runner.kill_all();
    }

    /// Leave to hold `bytes` in memory, waiting while other ingests hold the rest.
    pub(crate) async fn hold(&self, bytes: u64) -> Result<OwnedSemaphorePermit, ServiceError> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, hold_capacity(&self.config));
        Arc::clone(&self.holding).acquire_many_owned(kib).await.map_err(|e| ServiceError::bug(e.to_string()))
    }

    fn locks(&self, upload_id: &str) -> Arc<SessionLocks> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            // Drop entries nobody holds; they are recreated on demand.
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(map.entry(upload_id.to_owned()).or_default())
    }

    /// Reads a session record and its version; a malformed or unknown id is not found.
    pub async fn load(&self, upload_id: &str) -> Result<(Session, String), ServiceError> {
        if !valid_upload_id(upload_id) {
            return Err(NotFound::Upload.into());
        }
        let record = self.store.get_record(&record_name(upload_id)).await?;
        let record = record.ok_or(NotFound::Upload)?;
        let session: Session = serde_json::from_slice(&record.bytes)
            .map_err(|e| ServiceError::bug(format!("session record {upload_id} is unreadable: {e}")))?;
        Ok((session, record.version))
    }

    async fn save(&self, session: &Session, condition: Condition) -> Result<String, ServiceError> {
        let bytes = serde_json::to_vec(session).map_err(|e| ServiceError::bug(e.to_string()))?;
        Ok(self.store.put_record(&record_name(&session.upload_id), bytes, condition).await?)
    }

    /// A stream planned at the most it could be has ended at `size`: its session takes that
    /// size, with the same parts but a shorter last one. Refused if the part count would change.
    pub(crate) async fn settle_size(&self, upload_id: &str, size: u64) -> Result<Session, ServiceError> {
        let locks = self.locks(upload_id);
        let _ops = locks.ops.lock().await;
        let (mut session, version) = self.load(upload_id).await?;
        if session.size == size {
            return Ok(session);
        }
        if session.state != UploadState::Uploading
            || size > session.size
            || PartPlan::from_parts(size, session.part_size, session.part_count).is_none()
        {
            return Err(Invalid::Stream(format!(
                "a stream of {} bytes in {} parts cannot end at {size}",
                session.size, session.part_count
            ))
            .into());
        }
        session.size = size;
        self.save(&session, Condition::IfMatch(version)).await?;
        Ok(session)
    }

    /// Where the client sends a part: straight to the store when it gives such URLs, else this
    /// server's own signed part route.
    fn part_url(&self, session: &Session, span: PartSpan, content_md5: Option<&str>) -> PartUrl {
        let now = self.clock.now();
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
                let sig = self.signer.sign("PUT", Scope::Part { upload_id, part_number: span.part_number }, expires);
                let url = format!(
                    "{}/p/{upload_id}/{}?expires={expires}&signature={sig}",
                    self.config.public_url, span.part_number
                );
                (url, BTreeMap::new())
            }
        };
        PartUrl { part_number: span.part_number, offset: span.offset, size: span.size, url, headers, expires_at }
    }
}

/// KiB ingests may hold in memory, as semaphore permits.
fn hold_capacity(config: &ServiceConfig) -> u32 {
    u32::try_from(config.ingest_buffer / 1024).unwrap_or(u32::MAX).max(1)
}

pub(crate) fn unix(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}
