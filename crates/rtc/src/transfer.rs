//! Files over data channels: seed 004's framing on an upload channel (`upload` or
//! `video_upload`) and the JSON `control` channel beside it (DESIGN.md, "Data-channel file
//! transfer"). The protocol is [`ferry_core::transfer`]'s two state machines; this module drives
//! them with real channels, the file being sent, and a [`Sink`] that keeps what is received.
//!
//! [`send_file`] hashes the file, announces it, sends the chunks the receiver lacks — waiting on
//! the channel's buffered amount, so memory stays flat — and waits for `complete`. [`receive`]
//! answers a sender (or a peer with no control channel, which only sends frames), writes each
//! chunk through its sink, checkpoints what it holds so a sender that comes back sends only the
//! rest, and has the sink verify and store the file. Any error ends the transfer with an `error`
//! message to the peer.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use ferry_core::frames::{DEFAULT_CHUNK, HEADER_LEN, Ranges, ReceiveLimits, chunk_count, header};
use ferry_core::transfer::{Announce, Control, Fault, Receiver, ReceiverAction, Sender, SenderAction};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::peer::{ChannelSender, DataChannel, PeerError};
pub use crate::sink::{FileSink, Sink, Stored, clean_name};

/// Labels that carry file chunks.
pub const UPLOAD_LABELS: [&str; 2] = ["upload", "video_upload"];
pub const CONTROL_LABEL: &str = "control";
/// The default chunk payload: seed 004's 48 KiB.
pub const CHUNK: u32 = DEFAULT_CHUNK;

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
    #[error(transparent)]
    Fault(#[from] Fault),
}

impl TransferError {
    /// The `code` of the `error` message this becomes.
    pub fn code(&self) -> &str {
        match self {
            TransferError::Fault(f) => f.code(),
            TransferError::Io { .. } => "storage_error",
            TransferError::Peer(_) => "transfer_failed",
        }
    }

    /// What the receiving state machine makes of a failure to store.
    fn into_fault(self) -> Fault {
        match self {
            TransferError::Fault(f) => f,
            other => Fault::Storage(other.to_string()),
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io { path: path.to_owned(), source }
}

/// [`ferry_store::files::blocking`], for a transfer's errors.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    ferry_store::files::blocking(f).await
}

/// An I/O failure that names no file (a worker thread that died) is the storage's fault.
impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> TransferError {
        TransferError::Fault(Fault::Storage(e.to_string()))
    }
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
        .map_err(|_| Fault::Protocol(format!("{size} bytes need more than 2^32 chunks of {chunk_size}")))?;
    let announce = Announce {
        transfer_id: transfer_id(name, size, modified_ns),
        name: name.to_owned(),
        size,
        chunk_size,
        total_chunks: total,
        sha256: Some(sha256.clone()),
        processor: None,
    };
    let mut machine = Sender::new(announce.clone(), Instant::now());
    let file = std::sync::Arc::new(file);
    let (control_tx, upload_tx) = (control.sender(), upload.sender());
    loop {
        while let Some(action) = machine.poll(Instant::now()) {
            match action {
                SenderAction::Send(message) => send_control(&control_tx, &message).await?,
                SenderAction::Chunk { index, offset, len } => {
                    let (f, owned) = (std::sync::Arc::clone(&file), path.to_owned());
                    let message = blocking(move || {
                        let mut m = Vec::with_capacity(HEADER_LEN + len);
                        m.extend_from_slice(&header(index, total));
                        m.resize(HEADER_LEN + len, 0);
                        f.read_exact_at(&mut m[HEADER_LEN..], offset).map_err(io(&owned))?;
                        Ok(m)
                    })
                    .await?;
                    upload_tx.send(true, message).await?;
                    // The receiver's progress and errors arrive meanwhile, and the echoes of
                    // keepalives; unread, they would fill the channels' queues.
                    while let Some(m) = control.try_recv() {
                        machine.handle_control(Instant::now(), &m.data);
                    }
                    while upload.try_recv().is_some() {}
                }
                SenderAction::Keepalive => upload_tx.send(true, vec![0]).await?,
                SenderAction::Started { resumed_chunks } => on_event(SendEvent::Started {
                    transfer_id: announce.transfer_id.clone(),
                    name: name.to_owned(),
                    size,
                    chunks: total,
                    resumed_chunks,
                }),
                SenderAction::Progress { sent_bytes, received_chunks } => {
                    on_event(SendEvent::Progress { sent_bytes, size, received_chunks })
                }
                SenderAction::Done { key } => {
                    return Ok(SendReport {
                        transfer_id: announce.transfer_id,
                        name: name.to_owned(),
                        size,
                        sha256,
                        chunks: total,
                        resumed_chunks: machine.resumed_chunks(),
                        stored_as: key,
                    });
                }
                SenderAction::Fail(fault) => return Err(fault.into()),
            }
        }
        let wake = machine.poll_timeout().unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            m = control.recv() => match m {
                Some(m) => machine.handle_control(Instant::now(), &m.data),
                None => machine.closed(),
            },
            // Echoed keepalives; the channel closing ends the transfer.
            m = upload.recv() => if m.is_none() { machine.closed() },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

async fn send_control(channel: &ChannelSender, message: &Control) -> Result<(), TransferError> {
    let text = serde_json::to_vec(message).map_err(|e| Fault::Protocol(e.to_string()))?;
    Ok(channel.send(false, text).await?)
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

/// A file received and stored.
#[derive(Debug, Clone)]
pub struct Received {
    /// What the sender announced (`None` for a peer that only sends frames).
    pub announced: Option<Announce>,
    /// Where the sink stored it.
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// A receiver whose file is stored: it echoes keepalives, and answers anything else with an
/// error, until the peer goes.
pub struct Lingering {
    machine: Receiver,
}

/// Receives one transfer from `upload` (and `control`, when the peer has one) into `sink`, and
/// tells the peer how it went.
pub async fn receive<S: Sink>(
    control: Option<&mut DataChannel>,
    upload: &mut DataChannel,
    sink: &mut S,
    limits: ReceiveLimits,
    on_event: impl FnMut(ReceiveEvent),
) -> Result<(Received, Lingering), TransferError> {
    let machine = Receiver::new(limits, control.is_some(), Instant::now());
    drive(machine, control, upload, sink, on_event).await
}

/// Receives the rest of a transfer from a peer without a control channel whose earlier
/// connection left `held` of `total_chunks` chunks of `chunk_size` in `sink`: the peer is told
/// what is held (`resume_state` under `transfer_id`, as text on `upload`) first.
#[allow(clippy::too_many_arguments)]
pub async fn receive_rest<S: Sink>(
    upload: &mut DataChannel,
    sink: &mut S,
    limits: ReceiveLimits,
    transfer_id: String,
    total_chunks: u32,
    chunk_size: u32,
    held: Ranges,
    on_event: impl FnMut(ReceiveEvent),
) -> Result<(Received, Lingering), TransferError> {
    let machine = Receiver::resumed(limits, transfer_id, total_chunks, chunk_size, held, Instant::now());
    drive(machine, None, upload, sink, on_event).await
}

async fn drive<S: Sink>(
    mut machine: Receiver,
    mut control: Option<&mut DataChannel>,
    upload: &mut DataChannel,
    sink: &mut S,
    mut on_event: impl FnMut(ReceiveEvent),
) -> Result<(Received, Lingering), TransferError> {
    let reply = control.as_deref().map_or_else(|| upload.sender(), DataChannel::sender);
    let echo = upload.sender();
    let mut stored: Option<(String, u64, String)> = None;
    loop {
        while let Some(action) = machine.poll() {
            match action {
                ReceiverAction::Echo { binary, data } => echo.send(binary, data).await?,
                ReceiverAction::LookUp(announce) => {
                    let held = match sink.held(&announce).await {
                        Ok(h) => h,
                        Err(e) => {
                            machine.failed(e.into_fault());
                            continue;
                        }
                    };
                    on_event(ReceiveEvent::Started {
                        transfer_id: announce.transfer_id.clone(),
                        name: announce.name.clone(),
                        size: announce.size,
                        chunks: announce.total_chunks,
                        resumed_chunks: held.len(),
                    });
                    machine.held(Instant::now(), held);
                }
                ReceiverAction::Send(message) => {
                    // A peer that has gone cannot hear it; the outcome stands either way.
                    let _ = send_control(&reply, &message).await;
                }
                ReceiverAction::Checkpoint(held) => {
                    if let Err(e) = sink.checkpoint(&held).await {
                        machine.failed(e.into_fault());
                    }
                }
                ReceiverAction::Progress { received_chunks, total_chunks } => {
                    on_event(ReceiveEvent::Progress { received_chunks, chunks: total_chunks })
                }
                ReceiverAction::Finish { size, sha256 } => match sink.finish(size, sha256.as_deref()).await {
                    Ok(Stored { key, sha256 }) => {
                        stored = Some((key.clone(), size, sha256.clone()));
                        machine.stored(key, sha256);
                    }
                    Err(e) => machine.failed(e.into_fault()),
                },
                ReceiverAction::Fail(fault) => {
                    sink.abandon(fault.keeps_progress(), machine.held_chunks()).await;
                    return Err(fault.into());
                }
            }
        }
        if let Some((key, size, sha256)) = stored.take().filter(|_| machine.is_done()) {
            let received = Received { announced: machine.announced().cloned(), key, size, sha256 };
            return Ok((received, Lingering { machine }));
        }
        let reads_upload = machine.reads_upload();
        tokio::select! {
            m = async { control.as_deref_mut()?.recv().await }, if control.is_some() => match m {
                Some(m) => machine.handle_control(Instant::now(), &m.data),
                None => machine.closed(),
            },
            m = upload.recv(), if reads_upload => match m {
                Some(m) => {
                    if let Some(at) = machine.handle_upload(Instant::now(), m.binary, &m.data)
                        && let Err(e) = sink.write(at, &m.data[HEADER_LEN..]).await
                    {
                        machine.failed(e.into_fault());
                    }
                }
                None => machine.closed(),
            },
        }
    }
}

impl Lingering {
    /// Serves the upload channel until the peer closes it or sends something it should not.
    pub async fn until_closed(mut self, upload: &mut DataChannel) {
        let echo = upload.sender();
        while let Some(m) = upload.recv().await {
            let _ = self.machine.handle_upload(Instant::now(), m.binary, &m.data);
            while let Some(action) = self.machine.poll() {
                match action {
                    ReceiverAction::Echo { binary, data } => {
                        let _ = echo.send(binary, data).await;
                    }
                    ReceiverAction::Send(message) => {
                        let _ = send_control(&echo, &message).await;
                    }
                    _ => {}
                }
            }
            if self.machine.is_failed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
