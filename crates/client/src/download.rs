//! Downloading one object: parallel ranged GETs written at their offsets into a pre-sized temp file
//! next to the destination, a journal of finished ranges so an interrupted download resumes, the
//! SHA-256 checked against the object's, and an atomic rename at the end.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferry_core::plan::{Limits, PartPlan, PartSpan};
use ferry_core::schedule::{Action, RetryPolicy, Scheduler};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::api::{Api, ObjectHead};
use crate::error::ClientError;
use crate::events::{Event, EventSink};
use crate::file::{self, blocking};
use crate::journal;
use crate::progress::Tracker;
use crate::upload::{seed, with_retries};

const JOURNAL_VERSION: u32 = 1;
/// Bytes gathered before each positional write.
const WRITE_BATCH: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Bytes per ranged GET.
    pub chunk_size: u64,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub state_dir: PathBuf,
}

impl DownloadOptions {
    pub fn new(state_dir: PathBuf) -> DownloadOptions {
        DownloadOptions { chunk_size: 8 << 20, concurrency: 8, retry: RetryPolicy::default(), state_dir }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DownloadResult {
    pub file: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub retries: u32,
    pub bytes_received: u64,
    pub resumed_bytes: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DownloadJournal {
    version: u32,
    server: String,
    key: String,
    etag: String,
    size: u64,
    chunk_size: u64,
    done: BTreeSet<u32>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::io(path, e)
}

/// Downloads `key` to `out` (a directory means "inside it, under the key's last segment").
pub async fn download(
    api: Arc<Api>,
    key: String,
    out: PathBuf,
    opts: DownloadOptions,
    events: EventSink,
    permits: Arc<Semaphore>,
) -> Result<DownloadResult, ClientError> {
    let result = run(&api, &key, out, &opts, &events, permits).await;
    if let Err(e) = &result {
        events.emit(Event::Failed { file: key.clone(), error: e.to_string() });
    }
    result
}

async fn run(
    api: &Arc<Api>,
    key: &str,
    out: PathBuf,
    opts: &DownloadOptions,
    events: &EventSink,
    permits: Arc<Semaphore>,
) -> Result<DownloadResult, ClientError> {
    let started = Instant::now();
    let head = with_retries(&opts.retry, || api.head_object(key)).await?;
    let name = key.rsplit('/').next().unwrap_or(key).to_owned();
    let out = if out.is_dir() { out.join(&name) } else { out };
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ClientError::Usage(format!("{} is not a file name", out.display())))?
        .to_owned();
    let temp = dir.join(format!(".{file_name}.ferry-download"));
    let abs_out = std::path::absolute(&out).map_err(io_err(&out))?;
    let journal_path = journal::path_for(&opts.state_dir, "downloads", &[api.base(), key, &abs_out.to_string_lossy()]);
    let label = out.display().to_string();

    let (jp, tp) = (journal_path.clone(), temp.clone());
    let earlier: Option<DownloadJournal> = blocking(&journal_path, move || Ok(journal::load(&jp))).await?;
    let temp_len = blocking(&temp, move || Ok(std::fs::metadata(&tp).map(|m| m.len()).ok())).await?;
    let resumable = earlier.filter(|j| {
        j.version == JOURNAL_VERSION
            && j.etag == head.etag
            && j.size == head.size
            && j.chunk_size == opts.chunk_size
            && temp_len == Some(head.size)
    });
    let journal = match resumable {
        Some(j) => j,
        None => {
            let (tp, size) = (temp.clone(), head.size);
            blocking(&temp, move || {
                let f = OpenOptions::new().create(true).write(true).truncate(true).open(&tp)?;
                f.set_len(size)
            })
            .await?;
            DownloadJournal {
                version: JOURNAL_VERSION,
                server: api.base().to_owned(),
                key: key.to_owned(),
                etag: head.etag.clone(),
                size: head.size,
                chunk_size: opts.chunk_size,
                done: BTreeSet::new(),
            }
        }
    };
    let tp = temp.clone();
    let file = Arc::new(blocking(&temp, move || OpenOptions::new().write(true).read(true).open(&tp)).await?);
    let limits = Limits { min_part_size: 1, max_part_size: u64::MAX, max_parts: u32::MAX, max_object_size: u64::MAX };
    let plan = PartPlan::new(head.size, Some(opts.chunk_size.max(1)), &limits)
        .map_err(|e| ClientError::Usage(format!("cannot plan the download: {e}")))?;
    let spans: Vec<PartSpan> = plan.parts().filter(|s| s.size > 0).collect();
    let sched = Scheduler::new(spans.clone(), |n| journal.done.contains(&n), opts.concurrency, opts.retry, seed());
    let resumed_bytes = sched.done_bytes();
    events.emit(Event::Started {
        file: label.clone(),
        key: key.to_owned(),
        upload_id: None,
        size: head.size,
        part_size: opts.chunk_size,
        part_count: plan.part_count(),
        resumed_bytes,
    });
    let tracker = Arc::new(Tracker::new(&label, head.size, resumed_bytes, events.clone()));
    let mut d = Downloader {
        api,
        key,
        head: &head,
        file: Arc::clone(&file),
        temp: temp.clone(),
        journal,
        journal_path: journal_path.clone(),
        journal_written: Instant::now(),
        journal_dirty: false,
        sched,
        spans,
        hasher: Sha256::new(),
        hashed: 0,
        tracker: Arc::clone(&tracker),
        permits,
        last_error: None,
    };
    d.hash_ready().await?;
    d.transfer().await?;
    let retries = d.sched.retries();

    events.emit(Event::Verifying { file: label.clone() });
    d.hash_ready().await?;
    let f = Arc::clone(&file);
    let size = head.size;
    let hasher = std::mem::take(&mut d.hasher);
    let sha256 = blocking(&temp, move || {
        f.sync_all()?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await?;
    if let Some(expected) = &head.sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        let _ = std::fs::remove_file(&temp);
        journal::remove(&journal_path);
        return Err(ClientError::Integrity(format!(
            "{key}: the downloaded bytes hash to {sha256}, not the object's {expected}; the partial file was removed"
        )));
    }
    let (tp, op) = (temp.clone(), out.clone());
    blocking(&out, move || ferry_store::durable::rename(&tp, &op)).await?;
    journal::remove(&journal_path);
    events.emit(Event::Completed { file: label.clone(), key: key.to_owned(), size, sha256: sha256.clone() });
    Ok(DownloadResult {
        file: label,
        key: key.to_owned(),
        size,
        sha256,
        retries,
        bytes_received: tracker.moved(),
        resumed_bytes,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

struct Downloader<'a> {
    api: &'a Arc<Api>,
    key: &'a str,
    head: &'a ObjectHead,
    file: Arc<File>,
    temp: PathBuf,
    journal: DownloadJournal,
    journal_path: PathBuf,
    journal_written: Instant,
    journal_dirty: bool,
    sched: Scheduler,
    spans: Vec<PartSpan>,
    /// The file's SHA-256 so far: ranges are hashed, from the temp file, as soon as every range
    /// before them is in, so verifying overlaps the download instead of following it.
    hasher: Sha256,
    /// How many of `spans` are hashed.
    hashed: usize,
    tracker: Arc<Tracker>,
    permits: Arc<Semaphore>,
    last_error: Option<ClientError>,
}

impl Downloader<'_> {
    async fn transfer(&mut self) -> Result<(), ClientError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Result<(), ClientError>)>();
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            match self.sched.poll(Instant::now()) {
                Action::Start { span, .. } => {
                    let permit = Arc::clone(&self.permits)
                        .acquire_owned()
                        .await
                        .map_err(|_| ClientError::Protocol("the transfer queue was closed".to_owned()))?;
                    let api = Arc::clone(self.api);
                    let key = self.key.to_owned();
                    let etag = self.head.etag.clone();
                    let file = Arc::clone(&self.file);
                    let tracker = Arc::clone(&self.tracker);
                    let temp = self.temp.clone();
                    let tx = tx.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        let counted = Arc::new(AtomicU64::new(0));
                        let r = fetch(&api, &key, &etag, span, file, &temp, &tracker, &counted).await;
                        tracker.attempt_ended(counted.load(Ordering::Relaxed), r.as_ref().ok().map(|_| span.size));
                        let _ = tx.send((span.part_number, r));
                    });
                }
                Action::WaitUntil(t) => {
                    self.save_journal(false).await?;
                    tokio::select! {
                        msg = rx.recv() => self.handle(msg).await?,
                        _ = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                Action::Idle => {
                    self.save_journal(false).await?;
                    let msg = rx.recv().await;
                    self.handle(msg).await?;
                }
                Action::Complete => return self.save_journal(true).await,
                Action::Fail(e) => {
                    self.save_journal(true).await?;
                    return Err(self.last_error.take().unwrap_or_else(|| ClientError::Protocol(e.to_string())));
                }
            }
        }
    }

    /// Hashes the ranges that are now contiguous from the start of the file.
    async fn hash_ready(&mut self) -> Result<(), ClientError> {
        let end = self.spans[self.hashed..].iter().take_while(|s| self.sched.is_done(s.part_number)).count();
        if end == 0 {
            return Ok(());
        }
        let ready: Vec<PartSpan> = self.spans[self.hashed..self.hashed + end].to_vec();
        let (f, mut hasher) = (Arc::clone(&self.file), std::mem::take(&mut self.hasher));
        self.hasher = blocking(&self.temp, move || {
            for s in ready {
                file::hash_range(&f, s.offset, s.size, &mut hasher)?;
            }
            Ok(hasher)
        })
        .await?;
        self.hashed += end;
        Ok(())
    }

    async fn handle(&mut self, msg: Option<(u32, Result<(), ClientError>)>) -> Result<(), ClientError> {
        let Some((n, result)) = msg else {
            return Err(ClientError::Protocol("the download tasks stopped unexpectedly".to_owned()));
        };
        match result {
            Ok(()) => {
                self.sched.on_success(n);
                self.journal.done.insert(n);
                self.journal_dirty = true;
                self.hash_ready().await?;
            }
            Err(e) => {
                if let Some(delay) = self.sched.on_failure(n, Instant::now(), e.failure()) {
                    tracing::debug!(chunk = n, ?delay, error = %e, "retrying a range");
                }
                self.last_error = Some(e);
            }
        }
        Ok(())
    }

    async fn save_journal(&mut self, force: bool) -> Result<(), ClientError> {
        if !self.journal_dirty || (!force && self.journal_written.elapsed().as_millis() < 500) {
            return Ok(());
        }
        // Ranges recorded as done must be on disk first.
        let (f, jp, j) = (Arc::clone(&self.file), self.journal_path.clone(), self.journal.clone());
        blocking(&self.journal_path, move || {
            f.sync_data()?;
            journal::save(&jp, &j)
        })
        .await?;
        self.journal_dirty = false;
        self.journal_written = Instant::now();
        Ok(())
    }
}

/// GETs one range and writes it at its offset; the object must still be the one we started on.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    api: &Api,
    key: &str,
    etag: &str,
    span: PartSpan,
    file: Arc<File>,
    temp: &Path,
    tracker: &Tracker,
    counted: &AtomicU64,
) -> Result<(), ClientError> {
    let end = span.offset + span.size - 1;
    let res = api.get_range(key, span.offset, end).await?;
    let got = res.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ferry_core::etag::bare_etag(got) != ferry_core::etag::bare_etag(etag) {
        return Err(ClientError::Integrity(format!("{key} changed on the server during the download; run it again")));
    }
    let mut stream = res.bytes_stream();
    let mut offset = span.offset;
    let mut batch = Vec::with_capacity(WRITE_BATCH.min(span.size as usize));
    let mut received = 0u64;
    loop {
        let chunk = stream.next().await;
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk = chunk.map_err(|e| ClientError::network(format!("downloading {key}"), e))?;
            received += chunk.len() as u64;
            if received > span.size {
                return Err(ClientError::Protocol(format!(
                    "the server sent more than the {} bytes asked for",
                    span.size
                )));
            }
            tracker.on_bytes(chunk.len() as u64);
            counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            batch.extend_from_slice(&chunk);
        }
        if batch.len() >= WRITE_BATCH || (last && !batch.is_empty()) {
            let data = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
            let f = Arc::clone(&file);
            let at = offset;
            offset += data.len() as u64;
            blocking(temp, move || f.write_all_at(&data, at)).await?;
        }
        if last {
            break;
        }
    }
    if received != span.size {
        return Err(ClientError::network_short(key, received, span.size));
    }
    Ok(())
}
