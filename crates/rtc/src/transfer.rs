//! Files over data channels: seed 004's framing on an upload channel (`upload` or
//! `video_upload`), and the JSON `control` channel (DESIGN.md, "Data-channel file transfer").
//!
//! The sender hashes the file, announces it (`upload_start`, with its SHA-256), waits for the
//! receiver's `resume_state`, sends the chunks the receiver lacks — waiting on the channel's
//! buffered amount, so memory stays flat — and waits for `complete`. The receiver writes each
//! chunk at its offset in a temporary file, keeps what it holds in a state file (so a sender that
//! reconnects sends only what is missing), verifies the SHA-256 and only then hands the file over.
//! A peer that sends only seed-004 frames, with no control channel, works too: its file is kept
//! once every chunk is in, and the answer is one JSON text message on the upload channel.
//!
//! Any error ends that transfer with an `error` message and leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use ferry_core::frames::{
    Accepted, Control, DEFAULT_CHUNK, Frame, FrameError, HEADER_LEN, KeepaliveBudget, Ranges, Reassembly,
    ReceiveLimits, chunk_count, decode, header,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::peer::{ChannelSender, DataChannel, PeerError};

/// Labels that carry file chunks.
pub const UPLOAD_LABELS: [&str; 2] = ["upload", "video_upload"];
pub const CONTROL_LABEL: &str = "control";
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const STATE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the peer sent something wrong: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer reported an error: {message} ({code})")]
    Remote { code: String, message: String },
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("the file's SHA-256 is {actual}, not the {expected} announced")]
    Checksum { expected: String, actual: String },
    #[error("the connection closed before the transfer finished")]
    Closed,
}

impl TransferError {
    /// The `code` of the `error` message this becomes.
    pub fn code(&self) -> &'static str {
        match self {
            TransferError::Frame(e) => e.code(),
            TransferError::Checksum { .. } => "checksum_mismatch",
            TransferError::Protocol(_) => "protocol_error",
            TransferError::Io { .. } => "storage_error",
            TransferError::Remote { .. } | TransferError::Peer(_) | TransferError::Closed => "transfer_failed",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io { path: path.to_owned(), source }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| TransferError::Protocol(format!("a worker died: {e}")))?
}

/// How a send went.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    pub transfer_id: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub chunks: u32,
    /// Chunks the receiver already held from an earlier connection.
    pub resumed_chunks: u64,
    /// The key or path the receiver stored it as.
    pub stored_as: String,
}

/// What a sender reports while it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SendEvent {
    Started { transfer_id: String, name: String, size: u64, chunks: u32, resumed_chunks: u64 },
    Progress { sent_bytes: u64, size: u64, received_chunks: u64 },
}

/// A stable id for sending this file again: its name, size and modification time.
pub fn transfer_id(name: &str, size: u64, modified_ns: u128) -> String {
    let digest = Sha256::digest(format!("ferry-transfer-v1\n{name}\n{size}\n{modified_ns}").as_bytes());
    hex::encode(&digest[..16])
}

/// Sends `path` as `name` over `control` and `upload` (both opened by this side).
pub async fn send_file(
    control: &mut DataChannel,
    upload: &mut DataChannel,
    path: &Path,
    name: &str,
    chunk_size: u32,
    mut on_event: impl FnMut(SendEvent),
) -> Result<SendReport, TransferError> {
    let owned = path.to_owned();
    let (file, size, modified_ns, sha256) = blocking(move || {
        let mut file = File::open(&owned).map_err(io(&owned))?;
        let meta = file.metadata().map_err(io(&owned))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io(&owned))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok((file, meta.len(), modified, hex::encode(hasher.finalize())))
    })
    .await?;
    let chunk_size = chunk_size.max(1);
    let total = u32::try_from(chunk_count(size, chunk_size))
        .map_err(|_| TransferError::Protocol(format!("{size} bytes need more than 2^32 chunks of {chunk_size}")))?;
    let transfer_id = transfer_id(name, size, modified_ns);
    let start = Control::UploadStart {
        transfer_id: transfer_id.clone(),
        name: name.to_owned(),
        size,
        chunk_size,
        total_chunks: total,
        sha256: Some(sha256.clone()),
    };
    send_control(&control.sender(), &start).await?;
    let held = loop {
        match recv_control(control).await? {
            Control::ResumeState { transfer_id: t, ranges } if t == transfer_id => {
                break Ranges::from_spans(&ranges, total)
                    .ok_or_else(|| TransferError::Protocol("resume_state names chunks outside the file".into()))?;
            }
            Control::Error { code, message, .. } => return Err(TransferError::Remote { code, message }),
            other => tracing::debug!(?other, "waiting for resume_state"),
        }
    };
    let resumed_chunks = held.len();
    on_event(SendEvent::Started {
        transfer_id: transfer_id.clone(),
        name: name.to_owned(),
        size,
        chunks: total,
        resumed_chunks,
    });
    let file = std::sync::Arc::new(file);
    let tx = upload.sender();
    let mut last_keepalive = Instant::now();
    let mut sent_bytes = 0u64;
    let mut received_chunks = resumed_chunks;
    let mut last_report = Instant::now();
    for index in held.missing(total).collect::<Vec<_>>() {
        let offset = u64::from(index) * u64::from(chunk_size);
        let len = (size - offset).min(u64::from(chunk_size)) as usize;
        let f = std::sync::Arc::clone(&file);
        let owned = path.to_owned();
        let message = blocking(move || {
            let mut m = Vec::with_capacity(HEADER_LEN + len);
            m.extend_from_slice(&header(index, total));
            m.resize(HEADER_LEN + len, 0);
            f.read_exact_at(&mut m[HEADER_LEN..], offset).map_err(io(&owned))?;
            Ok(m)
        })
        .await?;
        tx.send(true, message).await?;
        sent_bytes += len as u64;
        // The receiver's progress and errors arrive meanwhile, and the echoes of keepalives;
        // unread, they would fill the channels' queues.
        while let Some(m) = control.try_recv() {
            match serde_json::from_slice::<Control>(&m.data) {
                Ok(Control::Progress { received_chunks: r, .. }) => received_chunks = r,
                Ok(Control::Error { code, message, .. }) => return Err(TransferError::Remote { code, message }),
                _ => {}
            }
        }
        while upload.try_recv().is_some() {}
        if last_report.elapsed() >= PROGRESS_EVERY {
            on_event(SendEvent::Progress { sent_bytes, size, received_chunks });
            last_report = Instant::now();
        }
        if last_keepalive.elapsed() >= KEEPALIVE_EVERY {
            tx.send(true, vec![0]).await?;
            last_keepalive = Instant::now();
        }
    }
    loop {
        let message = tokio::select! {
            m = control.recv() => m,
            m = upload.recv() => match m {
                // An echoed keepalive.
                Some(m) if m.binary => continue,
                other => other,
            },
            _ = tokio::time::sleep(KEEPALIVE_EVERY) => {
                tx.send(true, vec![0]).await?;
                continue;
            }
        };
        let Some(message) = message else { return Err(TransferError::Closed) };
        match serde_json::from_slice::<Control>(&message.data) {
            Ok(Control::Complete { key, size: stored, sha256: theirs, .. }) => {
                if theirs != sha256 || stored != size {
                    return Err(TransferError::Checksum { expected: sha256, actual: theirs });
                }
                return Ok(SendReport {
                    transfer_id,
                    name: name.to_owned(),
                    size,
                    sha256,
                    chunks: total,
                    resumed_chunks,
                    stored_as: key,
                });
            }
            Ok(Control::Error { code, message, .. }) => return Err(TransferError::Remote { code, message }),
            Ok(Control::Progress { received_chunks: r, .. }) => {
                on_event(SendEvent::Progress { sent_bytes, size, received_chunks: r });
            }
            _ => {}
        }
    }
}

async fn send_control(control: &ChannelSender, message: &Control) -> Result<(), TransferError> {
    let text = serde_json::to_vec(message).map_err(|e| TransferError::Protocol(e.to_string()))?;
    Ok(control.send(false, text).await?)
}

async fn recv_control(control: &mut DataChannel) -> Result<Control, TransferError> {
    let m = control.recv().await.ok_or(TransferError::Closed)?;
    serde_json::from_slice(&m.data).map_err(|e| TransferError::Protocol(format!("a control message is not JSON: {e}")))
}

/// Where a receiver keeps a transfer in progress: its bytes and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    transfer_id: String,
    /// As the sender gave it.
    given: String,
    name: String,
    size: u64,
    chunk_size: u32,
    sha256: Option<String>,
    ranges: Vec<[u32; 2]>,
}

/// What a receiver reports while it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReceiveEvent {
    /// A sender announced a file (peers without a control channel announce nothing).
    Started {
        transfer_id: String,
        name: String,
        size: u64,
        chunks: u32,
        resumed_chunks: u64,
    },
    Progress {
        received_chunks: u64,
        chunks: u32,
    },
}

/// A file received and verified, still in its temporary place.
#[derive(Debug)]
pub struct Received {
    pub transfer_id: String,
    /// The name the sender gave, made safe as a file name (its last segment), or a made-up one
    /// for a frames-only peer.
    pub name: String,
    /// The name exactly as the sender gave it (a store may keep its `/` segments as a key).
    pub given_name: Option<String>,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Receives one transfer from `upload` (and `control`, when the peer has one), keeping its
/// in-progress files under `work_dir`. Returns the verified file; the caller moves it where it
/// belongs and then calls [`answer_complete`].
pub async fn receive(
    mut control: Option<&mut DataChannel>,
    upload: &mut DataChannel,
    work_dir: &Path,
    limits: ReceiveLimits,
    mut on_event: impl FnMut(ReceiveEvent),
) -> Result<Received, TransferError> {
    let wd = work_dir.to_owned();
    blocking(move || std::fs::create_dir_all(&wd).map_err(io(&wd))).await?;
    let echo = upload.sender();
    let mut keepalives = KeepaliveBudget::default();
    // With a control channel, wait for its `upload_start`; frames that come first wait in the
    // channel's queue.
    let (mut state, mut progress) = match control.as_deref_mut() {
        Some(control) => {
            let (state, progress) = loop {
                match recv_control(control).await? {
                    Control::UploadStart { transfer_id, name, size, chunk_size, total_chunks, sha256 } => {
                        let p = Progress {
                            transfer_id,
                            name: clean_name(&name),
                            given: name,
                            size,
                            chunk_size,
                            sha256,
                            ranges: Vec::new(),
                        };
                        let (r, p) = resume(work_dir, p, limits).await?;
                        if r.total() != Some(total_chunks) {
                            return Err(TransferError::Protocol(format!(
                                "{size} bytes in chunks of {chunk_size} are not {total_chunks} chunks"
                            )));
                        }
                        break (r, Some(p));
                    }
                    other => tracing::debug!(?other, "waiting for upload_start"),
                }
            };
            let ranges = state.held().spans();
            let t = progress.as_ref().map(|p| p.transfer_id.clone()).unwrap_or_default();
            if let Some(p) = &progress {
                on_event(ReceiveEvent::Started {
                    transfer_id: t.clone(),
                    name: p.name.clone(),
                    size: p.size,
                    chunks: state.total().unwrap_or(0),
                    resumed_chunks: state.held().len(),
                });
            }
            send_control(&control.sender(), &Control::ResumeState { transfer_id: t, ranges }).await?;
            (state, progress)
        }
        None => (Reassembly::new(limits), None),
    };
    let transfer_id = progress.as_ref().map_or_else(|| format!("frames-{}", unique()), |p| p.transfer_id.clone());
    let data_path = work_dir.join(format!("{}.part", stem(&transfer_id)));
    let state_path = work_dir.join(format!("{}.json", stem(&transfer_id)));
    let dp = data_path.clone();
    let file = std::sync::Arc::new(
        blocking(move || {
            OpenOptions::new().create(true).truncate(false).write(true).read(true).open(&dp).map_err(io(&dp))
        })
        .await?,
    );
    let mut last_state = Instant::now();
    let mut last_progress = Instant::now();
    let outcome: Result<(), TransferError> = async {
        while !state.is_complete() {
            let message = match control.as_deref_mut() {
                Some(c) => tokio::select! {
                    m = upload.recv() => m,
                    m = c.recv() => match m {
                        Some(m) => match serde_json::from_slice::<Control>(&m.data) {
                            Ok(Control::Error { code, message, .. }) => return Err(TransferError::Remote { code, message }),
                            _ => continue,
                        },
                        None => return Err(TransferError::Closed),
                    },
                },
                None => upload.recv().await,
            };
            let message = message.ok_or(TransferError::Closed)?;
            match decode(&message.data, limits.max_message)? {
                Frame::Keepalive(bytes) => {
                    keepalives.on_keepalive(Instant::now())?;
                    echo.send(message.binary, bytes.to_vec()).await?;
                }
                Frame::Chunk { index, total, payload } => {
                    if let Accepted::Write { offset } = state.accept(index, total, payload.len())? {
                        let (f, dp, bytes) = (std::sync::Arc::clone(&file), data_path.clone(), payload.to_vec());
                        blocking(move || f.write_all_at(&bytes, offset).map_err(io(&dp))).await?;
                    }
                }
            }
            if let (Some(p), true) = (progress.as_mut(), last_state.elapsed() >= STATE_EVERY) {
                save_state(&file, &data_path, &state_path, p, &state).await?;
                last_state = Instant::now();
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                let (received_chunks, chunks) = (state.held().len(), state.total().unwrap_or(0));
                on_event(ReceiveEvent::Progress { received_chunks, chunks });
                if let Some(c) = control.as_deref_mut() {
                    let update = Control::Progress { transfer_id: transfer_id.clone(), received_chunks, total_chunks: chunks };
                    send_control(&c.sender(), &update).await?;
                }
                last_progress = Instant::now();
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        // A broken connection keeps what arrived for the sender's next try; anything the peer
        // got wrong throws the transfer away.
        match (&e, progress.as_mut()) {
            (TransferError::Closed | TransferError::Peer(_), Some(p)) => {
                save_state(&file, &data_path, &state_path, p, &state).await?;
            }
            _ => discard(&data_path, &state_path).await,
        }
        return Err(e);
    }
    let size = state.size().unwrap_or(0);
    let (f, dp) = (std::sync::Arc::clone(&file), data_path.clone());
    let sha256 = blocking(move || {
        f.set_len(size).map_err(io(&dp))?;
        f.sync_all().map_err(io(&dp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], at).map_err(io(&dp))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await?;
    if let Some(expected) = progress.as_ref().and_then(|p| p.sha256.clone())
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        discard(&data_path, &state_path).await;
        return Err(TransferError::Checksum { expected, actual: sha256 });
    }
    let sp = state_path.clone();
    let _ = blocking(move || std::fs::remove_file(&sp).map_err(io(&sp))).await;
    let (name, given_name) = match progress {
        Some(p) => (p.name, Some(p.given)),
        None => (format!("upload-{transfer_id}.bin"), None),
    };
    Ok(Received { transfer_id, name, given_name, path: data_path, size, sha256 })
}

/// Tells the sender where the file went: on `control`, or (for a frames-only peer) as one text
/// message on the upload channel.
pub async fn answer_complete(
    control: Option<&DataChannel>,
    upload: &DataChannel,
    received: &Received,
    key: &str,
) -> Result<(), TransferError> {
    let complete = Control::Complete {
        transfer_id: control.is_some().then(|| received.transfer_id.clone()),
        key: key.to_owned(),
        size: received.size,
        sha256: received.sha256.clone(),
    };
    let channel = control.map_or_else(|| upload.sender(), DataChannel::sender);
    send_control(&channel, &complete).await
}

/// Tells the sender the transfer failed, the same way.
pub async fn answer_error(control: Option<&DataChannel>, upload: &DataChannel, error: &TransferError) {
    let message = Control::Error { transfer_id: None, code: error.code().to_owned(), message: error.to_string() };
    let channel = control.map_or_else(|| upload.sender(), DataChannel::sender);
    let _ = send_control(&channel, &message).await;
}

/// The reassembly for an announced transfer, carried on from what an earlier connection stored.
async fn resume(
    work_dir: &Path,
    mut p: Progress,
    limits: ReceiveLimits,
) -> Result<(Reassembly, Progress), TransferError> {
    let state_path = work_dir.join(format!("{}.json", stem(&p.transfer_id)));
    let sp = state_path.clone();
    let earlier: Option<Progress> =
        blocking(move || Ok(std::fs::read(&sp).ok().and_then(|b| serde_json::from_slice(&b).ok()))).await?;
    let total = u32::try_from(chunk_count(p.size, p.chunk_size)).map_err(|_| FrameError::TransferTooLarge {
        total: u32::MAX,
        chunk_size: p.chunk_size,
        max: limits.max_size,
    })?;
    let held = earlier
        .filter(|e| e.size == p.size && e.chunk_size == p.chunk_size && e.sha256 == p.sha256)
        .and_then(|e| Ranges::from_spans(&e.ranges, total))
        .unwrap_or_default();
    p.ranges = held.spans();
    Ok((Reassembly::announced(limits, p.size, p.chunk_size, held)?, p))
}

/// Makes what arrived durable, then records it.
async fn save_state(
    file: &std::sync::Arc<File>,
    data_path: &Path,
    state_path: &Path,
    p: &mut Progress,
    state: &Reassembly,
) -> Result<(), TransferError> {
    p.ranges = state.held().spans();
    let bytes = serde_json::to_vec(p).map_err(|e| TransferError::Protocol(e.to_string()))?;
    let (f, dp, sp) = (std::sync::Arc::clone(file), data_path.to_owned(), state_path.to_owned());
    blocking(move || {
        f.sync_data().map_err(io(&dp))?;
        let tmp = sp.with_extension("json.tmp");
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &sp).map_err(io(&sp))
    })
    .await
}

async fn discard(data_path: &Path, state_path: &Path) {
    let (dp, sp) = (data_path.to_owned(), state_path.to_owned());
    let _ = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(dp);
        let _ = std::fs::remove_file(sp);
    })
    .await;
}

/// A sender's file name made safe to use as a file name here: its last path segment, with
/// control characters and separators replaced.
pub fn clean_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().map(|c| if c.is_control() || c == ':' { '_' } else { c }).take(200).collect();
    match cleaned.trim() {
        "" | "." | ".." => "upload.bin".to_owned(),
        s => s.to_owned(),
    }
}

/// The file name a transfer's partial files take: a digest of the id the peer chose, so no id
/// (`../x`, `/etc/passwd`, 10,000 characters) can name a path outside the work dir, and the same
/// id finds the same files when its sender comes back.
fn stem(transfer_id: &str) -> String {
    hex::encode(&Sha256::digest(transfer_id.as_bytes())[..16])
}

fn unique() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// The default chunk payload: seed 004's 48 KiB.
pub const CHUNK: u32 = DEFAULT_CHUNK;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_senders_are_made_safe() {
        assert_eq!(clean_name("clip.mp4"), "clip.mp4");
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\Users\\x\\a.bin"), "a.bin");
        assert_eq!(clean_name(".."), "upload.bin");
        assert_eq!(clean_name("a\u{0}b\nc"), "a_b_c");
        assert_eq!(clean_name(""), "upload.bin");
    }

    #[test]
    fn transfer_ids_follow_the_file() {
        let a = transfer_id("a", 5, 1);
        assert_eq!(a.len(), 32);
        assert_eq!(a, transfer_id("a", 5, 1));
        assert_ne!(a, transfer_id("a", 6, 1));
        assert_ne!(a, transfer_id("a", 5, 2));
        assert_ne!(a, transfer_id("b", 5, 1));
    }
}
