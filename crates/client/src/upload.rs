//! Uploading one file: resume or create the session, then drive the scheduler — read each part with
//! a positional read, hash the file in order as parts are first read, PUT parts in parallel, confirm
//! each, journal what the server acknowledged — and complete with the SHA-256.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use ferry_core::api::{Complete, CompletePart, CreateUpload, PartInfo, PartUrl, UploadState};
use ferry_core::plan::{PartPlan, PartSpan};
use ferry_core::resume::{FileIdentity, JOURNAL_VERSION, ResumeDecision, UploadJournal, decide, reconcile};
use ferry_core::schedule::{Action, Attempt, Remedy, RetryPolicy, Scheduler};
use futures_util::StreamExt as _;
use md5::Digest as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::api::{Api, origin_of};
use crate::error::ClientError;
use crate::events::{Event, EventSink};
use crate::file::{self, blocking};
use crate::journal;
use crate::progress::Tracker;

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Object key; default: the file's name.
    pub key: Option<String>,
    /// Default: the server's choice.
    pub part_size: Option<u64>,
    /// Parts in flight for this file (the shared permits bound the total).
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub content_type: Option<String>,
    /// A processor configured on the server, by name.
    pub processor: Option<String>,
    /// Where the server POSTs the upload's terminal events.
    pub webhook_url: Option<String>,
    /// Where resume journals are kept.
    pub state_dir: PathBuf,
}

impl UploadOptions {
    pub fn new(state_dir: PathBuf) -> UploadOptions {
        UploadOptions {
            key: None,
            part_size: None,
            concurrency: 8,
            retry: RetryPolicy::default(),
            content_type: None,
            processor: None,
            webhook_url: None,
            state_dir,
        }
    }
}

/// What a finished upload reports.
#[derive(Debug, Clone, Serialize)]
pub struct UploadResult {
    pub file: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub upload_id: String,
    pub parts: u32,
    /// Parts that were already on the server when this run started.
    pub resumed_parts: u32,
    pub retries: u32,
    /// Part-body bytes put on the wire by this run, retries included.
    pub bytes_sent: u64,
    pub elapsed_s: f64,
    /// Parts went through the API because signed URLs were unreachable.
    pub fallback: bool,
}

/// Uploads `path`. Parts in flight hold a permit from `permits`, so several uploads sharing one
/// semaphore stay within one memory budget.
pub async fn upload(
    api: Arc<Api>,
    path: PathBuf,
    opts: UploadOptions,
    events: EventSink,
    permits: Arc<Semaphore>,
) -> Result<UploadResult, ClientError> {
    let label = path.display().to_string();
    let result = run(&api, &path, &opts, &events, permits, &label).await;
    if let Err(e) = &result {
        events.emit(Event::Failed { file: label, error: e.to_string() });
    }
    result
}

pub(crate) fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

/// Calls `call` until it succeeds, fails for good, or the policy's attempts run out — with the same
/// backoff and jitter as parts, by scheduling it as a one-part transfer.
pub(crate) async fn with_retries<T, F, Fut>(policy: &RetryPolicy, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let span = PartSpan { part_number: 1, offset: 0, size: 0 };
    let mut s = Scheduler::new(vec![span], |_| false, 1, *policy, seed());
    let mut last = None;
    loop {
        match s.poll(Instant::now()) {
            Action::Start { .. } => match call().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let failure = e.failure();
                    last = Some(e);
                    s.on_failure(1, Instant::now(), failure);
                }
            },
            Action::WaitUntil(t) => tokio::time::sleep_until(t.into()).await,
            Action::Idle | Action::Complete | Action::Fail(_) => {
                return Err(
                    last.unwrap_or_else(|| ClientError::Protocol("retry loop ended without a result".to_owned()))
                );
            }
        }
    }
}

struct Session {
    upload_id: String,
    plan: PartPlan,
    /// `Some("md5")`: parts go straight to a store that checks each part's `Content-MD5`.
    part_checksum: Option<String>,
    done: BTreeMap<u32, PartInfo>,
    urls: HashMap<u32, PartUrl>,
    journal: UploadJournal,
}

async fn run(
    api: &Arc<Api>,
    path: &Path,
    opts: &UploadOptions,
    events: &EventSink,
    permits: Arc<Semaphore>,
    label: &str,
) -> Result<UploadResult, ClientError> {
    let started = Instant::now();
    let owned = path.to_path_buf();
    let (file, identity) = blocking(path, move || file::open_with_identity(&owned)).await?;
    let key = match &opts.key {
        Some(k) => k.clone(),
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Usage(format!("{label}: cannot make a key from this name; pass --key")))?,
    };
    let journal_path = journal::path_for(&opts.state_dir, "uploads", &[api.base(), &identity.path, &key]);
    let session = resume_or_create(api, opts, events, label, &key, &identity, &journal_path).await?;
    let mut engine = Engine::new(api, opts, events, permits, label, Arc::new(file), session, journal_path);
    engine.transfer().await?;
    let (sha256, info) = engine.finish().await?;
    let result = UploadResult {
        file: label.to_owned(),
        key: info.key.clone(),
        size: info.size,
        sha256,
        upload_id: engine.session.upload_id.clone(),
        parts: engine.session.plan.part_count(),
        resumed_parts: engine.resumed_parts,
        retries: engine.sched.retries(),
        bytes_sent: engine.tracker.moved(),
        elapsed_s: started.elapsed().as_secs_f64(),
        fallback: engine.sched.via_api(),
    };
    events.emit(Event::Completed {
        file: label.to_owned(),
        key: info.key,
        size: info.size,
        sha256: result.sha256.clone(),
    });
    Ok(result)
}

async fn resume_or_create(
    api: &Api,
    opts: &UploadOptions,
    events: &EventSink,
    label: &str,
    key: &str,
    identity: &FileIdentity,
    journal_path: &Path,
) -> Result<Session, ClientError> {
    let jp = journal_path.to_path_buf();
    let earlier: Option<UploadJournal> = blocking(journal_path, move || Ok(journal::load(&jp))).await?;
    if let Some(j) = earlier {
        let reason = match decide(&j, identity, opts.part_size) {
            ResumeDecision::Continue => match with_retries(&opts.retry, || api.status(&j.upload_id)).await {
                Ok(st) if st.state == UploadState::Uploading => {
                    match PartPlan::from_parts(st.size, st.part_size, st.part_count) {
                        Some(plan) if st.size == identity.size && st.key == key => {
                            let r = reconcile(&plan, &j.parts, &st.parts);
                            if !r.lost.is_empty() || !r.conflicting.is_empty() {
                                events.emit(Event::Reconciled {
                                    file: label.to_owned(),
                                    lost: r.lost.clone(),
                                    conflicting: r.conflicting.clone(),
                                });
                            }
                            let mut journal = j;
                            journal.parts = r.done.iter().map(|(n, p)| (*n, p.etag.clone())).collect();
                            return Ok(Session {
                                upload_id: journal.upload_id.clone(),
                                plan,
                                part_checksum: st.part_checksum,
                                done: r.done,
                                urls: HashMap::new(),
                                journal,
                            });
                        }
                        _ => "the server's session no longer matches this file".to_owned(),
                    }
                }
                Ok(st) => format!("the interrupted upload is {}", st.state.as_str()),
                Err(e) if e.code() == Some("upload_not_found") => {
                    "the server no longer knows the interrupted upload".to_owned()
                }
                Err(e) => return Err(e),
            },
            ResumeDecision::Restart(reason) => {
                // The old parts must never be mixed with this file; free them.
                if let Err(e) = api.cancel(&j.upload_id).await {
                    tracing::debug!(error = %e, "could not cancel the superseded upload");
                }
                reason
            }
        };
        events.emit(Event::Restarted { file: label.to_owned(), reason });
    }
    let req = CreateUpload {
        name: key.to_owned(),
        size: identity.size,
        part_size: opts.part_size,
        sha256: None,
        content_type: opts.content_type.clone(),
        metadata: BTreeMap::new(),
        processor: opts.processor.clone(),
        webhook_url: opts.webhook_url.clone(),
    };
    let created = with_retries(&opts.retry, || api.create(&req)).await?;
    let plan = PartPlan::from_parts(created.size, created.part_size, created.part_count)
        .ok_or_else(|| ClientError::Protocol("the server's part plan is inconsistent".to_owned()))?;
    let journal = UploadJournal {
        version: JOURNAL_VERSION,
        server: api.base().to_owned(),
        key: created.key.clone(),
        upload_id: created.upload_id.clone(),
        file: identity.clone(),
        part_size: created.part_size,
        part_count: created.part_count,
        parts: BTreeMap::new(),
    };
    let (jp, j) = (journal_path.to_path_buf(), journal.clone());
    blocking(journal_path, move || journal::save(&jp, &j)).await?;
    let urls = created.parts.into_iter().map(|p| (p.part_number, p)).collect();
    Ok(Session {
        upload_id: created.upload_id,
        plan,
        part_checksum: created.part_checksum,
        done: BTreeMap::new(),
        urls,
        journal,
    })
}

/// How often, at most, the journal is rewritten while parts are acknowledged.
const JOURNAL_EVERY: Duration = Duration::from_millis(500);

/// A part body as a stream of 256 KiB slices of one buffer, counting what the HTTP client takes.
fn counted_body(bytes: Bytes, tracker: Arc<Tracker>, attempt: Arc<AtomicU64>) -> reqwest::Body {
    const SLICE: usize = 256 * 1024;
    let slices: Vec<Bytes> =
        (0..bytes.len()).step_by(SLICE).map(|i| bytes.slice(i..(i + SLICE).min(bytes.len()))).collect();
    let stream = futures_util::stream::iter(slices).map(move |chunk| {
        tracker.on_bytes(chunk.len() as u64);
        attempt.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Put,
    Confirm,
}

/// How one attempt at a part ended, as its task reports it.
struct Sent {
    part_number: u32,
    url: Option<String>,
    stage: Stage,
    result: Result<PartInfo, ClientError>,
}

struct Engine<'a> {
    api: &'a Arc<Api>,
    opts: &'a UploadOptions,
    events: &'a EventSink,
    permits: Arc<Semaphore>,
    label: &'a str,
    file: Arc<File>,
    session: Session,
    journal_path: PathBuf,
    spans: Vec<PartSpan>,
    sched: Scheduler,
    tracker: Arc<Tracker>,
    hasher: Sha256,
    /// The next part to feed the hasher; parts below it are hashed.
    hash_next: u32,
    last_error: Option<ClientError>,
    journal_dirty: bool,
    journal_written: Instant,
    resumed_parts: u32,
    tx: mpsc::UnboundedSender<Sent>,
    rx: mpsc::UnboundedReceiver<Sent>,
    tasks: JoinSet<()>,
}

impl<'a> Engine<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        api: &'a Arc<Api>,
        opts: &'a UploadOptions,
        events: &'a EventSink,
        permits: Arc<Semaphore>,
        label: &'a str,
        file: Arc<File>,
        session: Session,
        journal_path: PathBuf,
    ) -> Engine<'a> {
        let spans: Vec<PartSpan> = session.plan.parts().collect();
        let sched =
            Scheduler::new(spans.clone(), |n| session.done.contains_key(&n), opts.concurrency, opts.retry, seed());
        let size = session.plan.size();
        let tracker = Arc::new(Tracker::new(label, size, sched.done_bytes(), events.clone()));
        events.emit(Event::Started {
            file: label.to_owned(),
            key: session.journal.key.clone(),
            upload_id: Some(session.upload_id.clone()),
            size,
            part_size: session.plan.part_size(),
            part_count: session.plan.part_count(),
            resumed_bytes: sched.done_bytes(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let resumed_parts = session.done.len() as u32;
        Engine {
            api,
            opts,
            events,
            permits,
            label,
            file,
            session,
            journal_path,
            spans,
            sched,
            tracker,
            hasher: Sha256::new(),
            hash_next: 1,
            last_error: None,
            journal_dirty: false,
            journal_written: Instant::now(),
            resumed_parts,
            tx,
            rx,
            tasks: JoinSet::new(),
        }
    }

    fn path(&self) -> &Path {
        Path::new(self.label)
    }

    /// Runs the scheduler until every part is stored or the transfer fails.
    async fn transfer(&mut self) -> Result<(), ClientError> {
        loop {
            while self.tasks.try_join_next().is_some() {}
            match self.sched.poll(Instant::now()) {
                Action::Start { span, attempt } => self.start(span, attempt).await?,
                Action::WaitUntil(t) => {
                    self.write_journal_if_due(false).await?;
                    let wake = self.journal_due().map_or(t, |due| due.min(t));
                    tokio::select! {
                        msg = self.rx.recv() => self.handle(msg).await?,
                        _ = tokio::time::sleep_until(wake.into()) => {}
                    }
                }
                Action::Idle => {
                    self.write_journal_if_due(false).await?;
                    // Parts finish seconds apart: wake to journal what was acknowledged meanwhile.
                    match self.journal_due() {
                        Some(due) => tokio::select! {
                            msg = self.rx.recv() => self.handle(msg).await?,
                            _ = tokio::time::sleep_until(due.into()) => {}
                        },
                        None => {
                            let msg = self.rx.recv().await;
                            self.handle(msg).await?;
                        }
                    }
                }
                Action::Complete => {
                    self.write_journal_if_due(true).await?;
                    return Ok(());
                }
                Action::Fail(e) => {
                    self.write_journal_if_due(true).await?;
                    return Err(self.last_error.take().unwrap_or_else(|| ClientError::Protocol(e.to_string())));
                }
            }
        }
    }

    /// Reads the part (hashing it, and any already-stored parts before it, if this is its first
    /// read), finds its URL and sends it on a task.
    async fn start(&mut self, span: PartSpan, attempt: u32) -> Result<(), ClientError> {
        let permit: OwnedSemaphorePermit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Protocol("the transfer queue was closed".to_owned()))?;
        let file = Arc::clone(&self.file);
        let bytes = if span.part_number >= self.hash_next {
            // First attempts come in increasing order, so every part between the hash cursor and
            // this one was already stored when the run began: hash it from disk.
            let before: Vec<PartSpan> =
                self.spans[(self.hash_next - 1) as usize..(span.part_number - 1) as usize].to_vec();
            let mut hasher = std::mem::take(&mut self.hasher);
            let (hasher, buf) = blocking(self.path(), move || {
                for s in before {
                    file::hash_range(&file, s.offset, s.size, &mut hasher)?;
                }
                let buf = file::read_at(&file, span.offset, span.size)?;
                hasher.update(&buf);
                Ok((hasher, buf))
            })
            .await?;
            self.hasher = hasher;
            self.hash_next = span.part_number + 1;
            buf
        } else {
            blocking(self.path(), move || file::read_at(&file, span.offset, span.size)).await?
        };
        // A store that checks each part's MD5 needs a URL signed with it: the part's task hashes
        // and signs, so neither the digest nor the extra round trip holds up the next part.
        let md5_signed = !self.sched.via_api() && self.session.part_checksum.as_deref() == Some("md5");
        let url = if self.sched.via_api() || md5_signed { None } else { Some(self.url_for(span.part_number).await?) };
        let api = Arc::clone(self.api);
        let tx = self.tx.clone();
        let tracker = Arc::clone(&self.tracker);
        let upload_id = self.session.upload_id.clone();
        let retry = self.opts.retry;
        let label = self.label.to_owned();
        let n = span.part_number;
        tracing::debug!(part = n, attempt, proxy = self.sched.via_api(), "sending part");
        self.tasks.spawn(async move {
            let _permit = permit;
            let bytes = Bytes::from(bytes);
            let url = match url {
                Some(u) => Ok(Some(u)),
                None if md5_signed => sign_with_md5(&api, &upload_id, n, bytes.clone(), &retry, &label).await.map(Some),
                None => Ok(None),
            };
            let url = match url {
                Ok(u) => u,
                Err(e) => {
                    let _ = tx.send(Sent { part_number: n, url: None, stage: Stage::Put, result: Err(e) });
                    return;
                }
            };
            let counted = Arc::new(AtomicU64::new(0));
            let body = counted_body(bytes, Arc::clone(&tracker), Arc::clone(&counted));
            let (stage, result) = match api.put_part(&upload_id, n, url.as_ref(), span.size, body).await {
                Ok(part) => (Stage::Confirm, confirm(&api, &upload_id, part).await),
                Err(e) => (Stage::Put, Err(e)),
            };
            tracker.attempt_ended(counted.load(Ordering::Relaxed), result.as_ref().ok().map(|p| p.size));
            let _ = tx.send(Sent { part_number: n, url: url.map(|u| u.url), stage, result });
        });
        Ok(())
    }

    /// A usable signed URL for part `n`, renewing it (and the next parts' with it) when missing or
    /// expiring.
    async fn url_for(&mut self, n: u32) -> Result<PartUrl, ClientError> {
        let soon = time::OffsetDateTime::now_utc() + Duration::from_secs(1);
        if let Some(u) =
            self.session.urls.get(&n).filter(|u| u.expires_at > soon && !u.headers.contains_key("content-md5"))
        {
            return Ok(u.clone());
        }
        let batch: Vec<u32> =
            (n..=self.session.plan.part_count()).filter(|k| !self.sched.is_done(*k)).take(256).collect();
        let (api, id) = (self.api, &self.session.upload_id);
        let signed = with_retries(&self.opts.retry, || api.sign(id, &batch, BTreeMap::new())).await?;
        for u in signed {
            self.session.urls.insert(u.part_number, u);
        }
        self.session
            .urls
            .get(&n)
            .cloned()
            .ok_or_else(|| ClientError::Protocol(format!("the server did not sign part {n}")))
    }

    async fn handle(&mut self, msg: Option<Sent>) -> Result<(), ClientError> {
        let Some(Sent { part_number: n, url, stage, result }) = msg else {
            return Err(ClientError::Protocol("the part tasks stopped unexpectedly".to_owned()));
        };
        let e = match result {
            Ok(part) => {
                self.sched.on_success(n);
                self.session.journal.parts.insert(n, part.etag.clone());
                self.session.done.insert(n, part);
                self.journal_dirty = true;
                self.events.emit(Event::PartDone {
                    file: self.label.to_owned(),
                    part_number: n,
                    size: self.spans[n as usize - 1].size,
                });
                return Ok(());
            }
            Err(e) => e,
        };
        let attempt = match (stage, &e) {
            (_, e) if e.code() == Some("url_expired") => Attempt::UrlExpired,
            // The part was sent but the server cannot confirm it.
            (Stage::Confirm, ClientError::Api { status: 404 | 409, .. }) => Attempt::Unconfirmed,
            _ if e.is_connect()
                && !self.sched.via_api()
                && url.as_deref().is_some_and(|u| origin_of(u) != self.api.origin())
                && self.api.reachable().await =>
            {
                Attempt::StoreUnreachable
            }
            _ => Attempt::Failed(e.failure()),
        };
        match self.sched.on_attempt(n, Instant::now(), attempt) {
            Remedy::RenewUrl => {
                self.session.urls.remove(&n);
                return Ok(());
            }
            Remedy::ViaApi => {
                let origin = url.as_deref().map(origin_of).unwrap_or_default();
                self.events.emit(Event::Fallback {
                    file: self.label.to_owned(),
                    reason: format!("{origin} is unreachable ({e}); sending parts through the API"),
                });
                return Ok(());
            }
            Remedy::RetryAfter { delay, renew_url } => {
                if renew_url {
                    self.session.urls.remove(&n);
                }
                self.events.emit(Event::Retry {
                    file: self.label.to_owned(),
                    part_number: n,
                    attempt: self.sched.retries(),
                    delay_ms: delay.as_millis() as u64,
                    error: e.to_string(),
                });
            }
            Remedy::GiveUp => tracing::debug!(part = n, error = %e, "part failed for good"),
        }
        self.last_error = Some(e);
        Ok(())
    }

    /// When the journal, changed since it was written, may be written next.
    fn journal_due(&self) -> Option<Instant> {
        self.journal_dirty.then(|| self.journal_written + JOURNAL_EVERY)
    }

    /// Rewrites the journal at most twice a second, or now when `force`.
    async fn write_journal_if_due(&mut self, force: bool) -> Result<(), ClientError> {
        if !self.journal_dirty || (!force && self.journal_written.elapsed() < JOURNAL_EVERY) {
            return Ok(());
        }
        let (jp, j) = (self.journal_path.clone(), self.session.journal.clone());
        blocking(&self.journal_path, move || journal::save(&jp, &j)).await?;
        self.journal_dirty = false;
        self.journal_written = Instant::now();
        Ok(())
    }

    /// Hashes what is left, completes the upload with the SHA-256 and every ETag, and checks the answer.
    async fn finish(&mut self) -> Result<(String, ferry_core::api::ObjectInfo), ClientError> {
        let rest: Vec<PartSpan> = self.spans[(self.hash_next - 1) as usize..].to_vec();
        if !rest.is_empty() {
            self.events.emit(Event::Verifying { file: self.label.to_owned() });
        }
        let file = Arc::clone(&self.file);
        let mut hasher = std::mem::take(&mut self.hasher);
        let hasher = blocking(self.path(), move || {
            for s in rest {
                file::hash_range(&file, s.offset, s.size, &mut hasher)?;
            }
            Ok(hasher)
        })
        .await?;
        let sha256 = hex::encode(hasher.finalize());
        let parts: Vec<CompletePart> = self
            .session
            .journal
            .parts
            .iter()
            .map(|(n, etag)| CompletePart { part_number: *n, etag: etag.clone() })
            .collect();
        let body = Complete { parts: Some(parts), sha256: Some(sha256.clone()) };
        let (api, id) = (self.api, &self.session.upload_id);
        let info = match with_retries(&self.opts.retry, || api.complete(id, &body)).await {
            Ok(info) => info,
            Err(e) if e.code() == Some("sha256_mismatch") => {
                let _ = api.cancel(id).await;
                journal::remove(&self.journal_path);
                return Err(ClientError::Integrity(format!(
                    "{}: the file changed while it was being uploaded (the parts sent do not add up to its SHA-256 {sha256}); the upload was cancelled — run the command again",
                    self.label
                )));
            }
            Err(e) => return Err(e),
        };
        match info.sha256.as_deref() {
            Some(stored) if stored == sha256 => {}
            Some(stored) => {
                return Err(ClientError::Integrity(format!(
                    "{}: the server stored SHA-256 {stored} but the file's is {sha256}",
                    self.label
                )));
            }
            None => return Err(ClientError::Protocol("the server did not report the stored SHA-256".to_owned())),
        }
        journal::remove(&self.journal_path);
        Ok((sha256, info))
    }
}

/// Reports a stored part, retrying briefly: a part the server cannot confirm is sent again.
async fn confirm(api: &Api, upload_id: &str, part: PartInfo) -> Result<PartInfo, ClientError> {
    let policy = RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(200), ..RetryPolicy::default() };
    with_retries(&policy, || api.part_done(upload_id, &part)).await?;
    Ok(part)
}

/// A URL for part `n` bound to the MD5 of `bytes`, so the store refuses any other body.
async fn sign_with_md5(
    api: &Api,
    upload_id: &str,
    n: u32,
    bytes: Bytes,
    retry: &RetryPolicy,
    label: &str,
) -> Result<PartUrl, ClientError> {
    let md5 = blocking(Path::new(label), move || {
        Ok(base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&bytes)))
    })
    .await?;
    let (numbers, md5s) = ([n], BTreeMap::from([(n, md5)]));
    let signed = with_retries(retry, || api.sign(upload_id, &numbers, md5s.clone())).await?;
    signed
        .into_iter()
        .find(|u| u.part_number == n)
        .ok_or_else(|| ClientError::Protocol(format!("the server did not sign part {n}")))
}
