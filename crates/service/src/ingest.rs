//! One ingest path: bytes that reach this process as one stream — a WebRTC data channel, a form
//! POST — become an object through an ordinary upload session, with the same events while they
//! arrive, the same processors and the same checks as an upload over HTTP parts. Each byte is
//! written once, into the store, at its place: the stream is cut into the session's parts and
//! each part goes to [`Service::put_part`] as it arrives.
//!
//! A part whose size is known (the stream's size is, or the part is not the last) streams
//! straight to the store. A part whose size is not known yet — the last of a stream of unknown
//! length — is held in memory until the stream ends; all such buffers together stay under the
//! service's `ingest_buffer`, so memory is bounded by configuration, not by file size.
//!
//! A stream that breaks leaves its stored parts in an open session: an ingest opened again with
//! the same resume key carries on from the first part it lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::api::{CreateUpload, ObjectInfo, UploadState};
use ferry_core::plan::PartPlan;
use ferry_store::{ByteStream, Condition};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use crate::Service;
use crate::error::{Invalid, ServiceError};
use crate::session::Session;
use crate::uploads::Layout;

/// Bytes a stream may run ahead of where it is being written (a data channel that is not
/// ordered delivers chunks a little out of order).
const REORDER_WINDOW: usize = 4 << 20;
/// Pieces of a part on their way to the store.
const PIPE: usize = 16;

/// What an ingest is told up front.
#[derive(Debug, Clone)]
pub struct IngestPlan {
    pub request: CreateUpload,
    /// The stream is at least this many bytes (`request.size` is taken as the most it can be;
    /// when both are equal the size is known).
    pub min_size: u64,
    /// Parts are a multiple of this many bytes, so that a stream's own units (data-channel
    /// chunks) never straddle two parts.
    pub align: u64,
    /// Names the stream across reconnections: an ingest opened with the key of one whose
    /// session is still open resumes it.
    pub resume_key: Option<String>,
}

/// A part on its way to the store.
enum Current {
    /// Its size is known: its bytes stream to the store as they come.
    Streaming { end: u64, tx: mpsc::Sender<std::io::Result<Bytes>>, put: JoinHandle<Result<(), ServiceError>> },
    /// The last part of a stream of unknown length: held until the stream ends.
    Holding { start: u64, buf: Vec<u8>, _permit: OwnedSemaphorePermit },
}

/// A stream being written as an upload.
pub struct Ingest {
    service: Arc<Service>,
    session: Session,
    part_size: u64,
    min_size: u64,
    max_size: u64,
    resume_key: Option<String>,
    /// Parts stored (before a resume, and by this ingest).
    stored: BTreeSet<u32>,
    /// Where the next byte goes.
    next: u64,
    current: Option<(u32, Current)>,
    /// Bytes that came before their turn, by offset.
    ahead: BTreeMap<u64, Vec<u8>>,
}

fn record_name(key: &str) -> String {
    format!("ingests/{}", hex::encode(&Sha256::digest(key.as_bytes())[..16]))
}

/// What a resume key names: the session, the unit its stream came in (`align`), and the most
/// the stream can be (an open-ended session does not say).
#[derive(serde::Serialize, serde::Deserialize)]
struct IngestRecord {
    upload_id: String,
    align: u64,
    max_size: u64,
}

/// What an open ingest holds, for a stream that comes back before it says what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestHeld {
    pub upload_id: String,
    /// What the stream was opened as: its name and processor.
    pub name: String,
    pub processor: Option<String>,
    /// The most the stream can be, and the unit it came in.
    pub max_size: u64,
    pub align: u64,
    /// Byte ranges `[start, end)` stored, in order.
    pub stored: Vec<(u64, u64)>,
}

impl Service {
    /// Opens an ingest: resumes the open session the plan's resume key names, if it is for the
    /// same object, or opens a new one.
    pub async fn ingest(self: &Arc<Self>, plan: IngestPlan) -> Result<Ingest, ServiceError> {
        let max_size = plan.request.size;
        if plan.min_size > max_size {
            return Err(ServiceError::bug(format!(
                "a stream of at least {} and at most {max_size} bytes",
                plan.min_size
            )));
        }
        let limits = self.store.limits();
        let default = PartPlan::new(max_size, None, &limits)?.part_size();
        let align = plan.align.max(1);
        let part_size = default.div_ceil(align) * align;
        let exact = plan.min_size == max_size;
        // A stream known within one unit (a data channel's frames: all but the last chunk's
        // length) has as many parts whatever it turns out to be: it is planned at the most it
        // can be, so a processor can run on each part as it comes, and the last part takes the
        // real size when the stream ends.
        let planned = exact || (plan.request.processor.is_some() && max_size - plan.min_size < align);
        if let Some(key) = &plan.resume_key
            && let Some(ingest) = self.resume(key, &plan, part_size).await?
        {
            return Ok(ingest);
        }
        let layout = if planned {
            Layout::Planned(PartPlan::new(max_size, Some(part_size), &limits)?)
        } else {
            Layout::Even(part_size)
        };
        let session = self.open(plan.request, layout).await?;
        if let Some(key) = &plan.resume_key {
            let record = IngestRecord { upload_id: session.upload_id.clone(), align, max_size };
            let bytes = serde_json::to_vec(&record).map_err(|e| ServiceError::bug(e.to_string()))?;
            self.store.put_record(&record_name(key), bytes, Condition::Any).await?;
        }
        Ok(Ingest {
            service: Arc::clone(self),
            session,
            part_size,
            min_size: plan.min_size,
            max_size,
            resume_key: plan.resume_key,
            stored: BTreeSet::new(),
            next: 0,
            current: None,
            ahead: BTreeMap::new(),
        })
    }

    /// The open ingest `key` names, if it is for the same object in parts of `part_size`.
    async fn resume(
        self: &Arc<Self>,
        key: &str,
        plan: &IngestPlan,
        part_size: u64,
    ) -> Result<Option<Ingest>, ServiceError> {
        let Some((session, _)) = self.ingest_session(key).await? else { return Ok(None) };
        let exact = plan.min_size == plan.request.size;
        let same = session.state_at(self.clock.now()) == UploadState::Uploading
            && session.name == plan.request.name
            && session.part_size == part_size
            && session.sha256 == plan.request.sha256.as_ref().map(|s| s.to_ascii_lowercase())
            && (!exact || session.size == plan.request.size);
        if !same {
            return Ok(None);
        }
        let stored = match self.store.list_parts(&session.multipart()).await {
            Ok(parts) => parts.iter().map(|p| p.part_number).collect(),
            Err(ferry_store::StoreError::NoSuchUpload) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(Ingest {
            service: Arc::clone(self),
            session,
            part_size,
            min_size: plan.min_size,
            max_size: plan.request.size,
            resume_key: Some(key.to_owned()),
            stored,
            next: 0,
            current: None,
            ahead: BTreeMap::new(),
        }))
    }
}

impl Service {
    /// The session `key` names and its record, if it is there.
    async fn ingest_session(&self, key: &str) -> Result<Option<(Session, IngestRecord)>, ServiceError> {
        let Some(record) = self.store.get_record(&record_name(key)).await? else { return Ok(None) };
        let record = match serde_json::from_slice::<IngestRecord>(&record.bytes) {
            Ok(r) => r,
            // Records written before the unit and size were kept hold the bare upload id.
            Err(_) => {
                IngestRecord { upload_id: String::from_utf8_lossy(&record.bytes).into_owned(), align: 1, max_size: 0 }
            }
        };
        match self.load(&record.upload_id).await {
            Ok((s, _)) => Ok(Some((s, record))),
            Err(ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What the open ingest `key` names holds; `None` if there is none (never opened, finished,
    /// cancelled or expired).
    pub async fn ingest_held(&self, key: &str) -> Result<Option<IngestHeld>, ServiceError> {
        let Some((session, record)) = self.ingest_session(key).await? else { return Ok(None) };
        if session.state_at(self.clock.now()) != UploadState::Uploading {
            return Ok(None);
        }
        let max_size = record.max_size.max(session.size);
        let parts = match self.store.list_parts(&session.multipart()).await {
            Ok(parts) => parts,
            Err(ferry_store::StoreError::NoSuchUpload) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stored = parts
            .iter()
            .map(|p| {
                let start = u64::from(p.part_number - 1) * session.part_size;
                (start, (start + session.part_size).min(max_size))
            })
            .collect();
        Ok(Some(IngestHeld {
            upload_id: session.upload_id.clone(),
            name: session.name.clone(),
            processor: session.processor.clone(),
            max_size,
            align: record.align,
            stored,
        }))
    }
}

impl Ingest {
    pub fn upload_id(&self) -> &str {
        &self.session.upload_id
    }

    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The byte ranges `[start, end)` already stored, in order (after a resume: what the
    /// stream need not send again).
    pub fn stored_ranges(&self) -> Vec<(u64, u64)> {
        self.stored
            .iter()
            .map(|n| {
                let start = u64::from(n - 1) * self.part_size;
                (start, (start + self.part_size).min(self.max_size))
            })
            .collect()
    }

    fn part_of(&self, offset: u64) -> u32 {
        u32::try_from(offset / self.part_size + 1).unwrap_or(u32::MAX)
    }

    /// Writes `bytes` at `offset` of the object. Bytes before where the stream is (sent twice)
    /// are dropped; bytes after it wait their turn, within a window.
    pub async fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ServiceError> {
        let end = offset + bytes.len() as u64;
        if end > self.max_size {
            return Err(
                Invalid::Stream(format!("bytes up to {end} of a stream of at most {} bytes", self.max_size)).into()
            );
        }
        // A stream that resumes starts at a part it lacks: skip the stored parts before it.
        if self.current.is_none() && offset > self.next && offset % self.part_size == 0 {
            let (from, to) = (self.part_of(self.next), self.part_of(offset));
            if (from..to).all(|n| self.stored.contains(&n)) {
                self.next = offset;
            }
        }
        if offset > self.next {
            let waiting: usize = self.ahead.values().map(Vec::len).sum();
            if waiting + bytes.len() > REORDER_WINDOW {
                return Err(Invalid::Stream(format!(
                    "bytes at {offset} came while {} was awaited, with {waiting} bytes waiting already",
                    self.next
                ))
                .into());
            }
            self.ahead.insert(offset, bytes.to_vec());
            return Ok(());
        }
        let skip = (self.next - offset) as usize;
        if skip < bytes.len() {
            self.feed(&bytes[skip..]).await?;
        }
        while let Some(bytes) = self.ahead.remove(&self.next) {
            self.feed(&bytes).await?;
        }
        Ok(())
    }

    /// Writes bytes at `self.next`, across part boundaries.
    async fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ServiceError> {
        while !bytes.is_empty() {
            if self.current.is_none() {
                self.start_part().await?;
            }
            let Some((n, current)) = self.current.as_mut() else { return Err(ServiceError::bug("no part to write")) };
            let n = *n;
            let taken = match current {
                Current::Streaming { end, tx, .. } => {
                    let take = bytes.len().min((*end - self.next) as usize);
                    // A closed pipe means the put failed: its error comes from the join below.
                    let _ = tx.send(Ok(Bytes::copy_from_slice(&bytes[..take]))).await;
                    take
                }
                Current::Holding { start, buf, .. } => {
                    let take = bytes.len().min((*start + self.part_size - self.next) as usize);
                    buf.extend_from_slice(&bytes[..take]);
                    take
                }
            };
            self.next += taken as u64;
            bytes = &bytes[taken..];
            let full = match current {
                Current::Streaming { end, .. } => self.next == *end,
                Current::Holding { start, .. } => self.next == *start + self.part_size,
            };
            if full {
                self.end_part(n).await?;
            }
        }
        Ok(())
    }

    async fn start_part(&mut self) -> Result<(), ServiceError> {
        let n = self.part_of(self.next);
        let start = u64::from(n - 1) * self.part_size;
        let end = start + self.part_size;
        let current = if end <= self.min_size || (self.min_size == self.max_size) {
            let size = end.min(self.max_size) - start;
            let (tx, rx) = mpsc::channel(PIPE);
            let service = Arc::clone(&self.service);
            let upload_id = self.session.upload_id.clone();
            let put =
                tokio::spawn(async move { service.put_part(&upload_id, n, Some(size), pipe(rx)).await.map(|_| ()) });
            Current::Streaming { end: start + size, tx, put }
        } else {
            let permit = self.service.hold(self.part_size).await?;
            Current::Holding { start, buf: Vec::new(), _permit: permit }
        };
        self.current = Some((n, current));
        Ok(())
    }

    /// Stores the current part, now that all of it is in.
    async fn end_part(&mut self, n: u32) -> Result<(), ServiceError> {
        match self.current.take() {
            Some((_, Current::Streaming { tx, put, .. })) => {
                drop(tx);
                put.await.map_err(|e| ServiceError::bug(format!("a part's store task failed: {e}")))??;
            }
            Some((_, Current::Holding { buf, .. })) => {
                let size = buf.len() as u64;
                let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from(buf))]));
                self.service.put_part(&self.session.upload_id, n, Some(size), body).await?;
            }
            None => {}
        }
        self.stored.insert(n);
        Ok(())
    }

    /// The stream ended after `size` bytes: stores what is held, and completes the upload
    /// (checking `sha256`, when given, against what was stored).
    pub async fn finish(mut self, size: u64, sha256: Option<String>) -> Result<ObjectInfo, ServiceError> {
        if self.next != size || !self.ahead.is_empty() || size < self.min_size {
            return Err(Invalid::Stream(format!("the stream ended at {size} bytes with {} written", self.next)).into());
        }
        if let Some((n, current)) = &self.current {
            // A streaming part is stored once its last byte is in: one still open was cut short.
            if matches!(current, Current::Streaming { .. }) {
                return Err(Invalid::Stream(format!("part {n} was cut short")).into());
            }
            let n = *n;
            if !self.session.open_ended && size != self.session.size {
                self.session = self.service.settle_size(&self.session.upload_id, size).await?;
            }
            self.end_part(n).await?;
        }
        if size == 0 && self.stored.is_empty() {
            self.start_part().await?;
            self.end_part(1).await?;
        }
        let info = self.service.complete(&self.session.upload_id, None, sha256).await?;
        if let Some(key) = &self.resume_key
            && let Err(e) = self.service.store.delete_record(&record_name(key)).await
        {
            tracing::debug!(error = %e, "could not remove a finished ingest's record");
        }
        Ok(info)
    }

    /// The stream broke: what is stored stays, for the stream to resume with the same key, or
    /// (`keep` false) the upload is cancelled.
    pub async fn abandon(mut self, keep: bool) -> Result<(), ServiceError> {
        if let Some((_, Current::Streaming { tx, put, .. })) = self.current.take() {
            // The part's body ends short, so the store keeps nothing of it.
            drop(tx);
            let _ = put.await;
        }
        if !keep {
            self.service.cancel(&self.session.upload_id).await?;
        }
        Ok(())
    }
}

/// A part's body, as its pieces come through the pipe.
fn pipe(mut rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
