//! Where a received transfer goes: a [`Sink`]. [`FileSink`] keeps it as a file in a directory
//! (`ferry recv`); `ferry serve` has one that writes it into its store as an upload.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::frames::Ranges;
use ferry_core::transfer::{Announce, Fault, Placement};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transfer::{TransferError, blocking, io};

/// A file stored: where, and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub sha256: String,
}

/// Keeps what a receiver takes in. Calls come in order: `held` (for an announced transfer),
/// `write`s and `checkpoint`s, then `finish` or `abandon`.
pub trait Sink: Send {
    /// What an earlier connection left of the announced transfer (nothing, if none).
    fn held(&mut self, announce: &Announce) -> impl Future<Output = Result<Ranges, TransferError>> + Send;

    /// Writes a chunk's payload where `at` says.
    fn write(&mut self, at: Placement, payload: &[u8]) -> impl Future<Output = Result<(), TransferError>> + Send;

    /// Makes what was written durable, then records that `held` is held.
    fn checkpoint(&mut self, held: &Ranges) -> impl Future<Output = Result<(), TransferError>> + Send;

    /// Every chunk is in: the file is `size` bytes. Verifies it against `sha256` when given,
    /// and stores it.
    fn finish(&mut self, size: u64, sha256: Option<&str>)
    -> impl Future<Output = Result<Stored, TransferError>> + Send;

    /// The transfer is over without its file: keep what arrived (`keep`: the connection broke,
    /// and the sender may come back), or let it go.
    fn abandon(&mut self, keep: bool, held: &Ranges) -> impl Future<Output = ()> + Send;
}

/// What a [`FileSink`] keeps beside a transfer in progress, to resume it.
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

/// Receives into `work_dir` (each transfer's partial file and state, named by a digest of its
/// id) and publishes the verified file into `out_dir` under the sender's name made safe — or
/// `name (1)`, `(2)`, … when taken, never replacing a file there.
pub struct FileSink {
    work_dir: PathBuf,
    out_dir: PathBuf,
    progress: Option<Progress>,
    data: Option<(Arc<File>, PathBuf)>,
    state_path: Option<PathBuf>,
    /// The name a frames-only transfer's file gets.
    unnamed: String,
}

impl FileSink {
    pub fn new(work_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> FileSink {
        FileSink {
            work_dir: work_dir.into(),
            out_dir: out_dir.into(),
            progress: None,
            data: None,
            state_path: None,
            unnamed: format!("upload-{}.bin", unique()),
        }
    }

    /// The partial file of transfer `id`, created if missing.
    async fn open(&mut self, id: &str) -> Result<Arc<File>, TransferError> {
        if let Some((f, _)) = &self.data {
            return Ok(Arc::clone(f));
        }
        let (wd, path) = (self.work_dir.clone(), self.work_dir.join(format!("{}.part", stem(id))));
        let p = path.clone();
        let file = blocking(move || {
            std::fs::create_dir_all(&wd).map_err(io(&wd))?;
            OpenOptions::new().create(true).truncate(false).write(true).read(true).open(&p).map_err(io(&p))
        })
        .await?;
        let file = Arc::new(file);
        self.data = Some((Arc::clone(&file), path));
        Ok(file)
    }

    async fn discard(&mut self) {
        let paths: Vec<PathBuf> = self.data.take().map(|(_, p)| p).into_iter().chain(self.state_path.take()).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
    }
}

impl Sink for FileSink {
    async fn held(&mut self, announce: &Announce) -> Result<Ranges, TransferError> {
        let state_path = self.work_dir.join(format!("{}.json", stem(&announce.transfer_id)));
        let sp = state_path.clone();
        let earlier: Option<Progress> =
            blocking(move || Ok(std::fs::read(&sp).ok().and_then(|b| serde_json::from_slice(&b).ok()))).await?;
        let held = earlier
            .filter(|e| e.size == announce.size && e.chunk_size == announce.chunk_size && e.sha256 == announce.sha256)
            .and_then(|e| Ranges::from_spans(&e.ranges, announce.total_chunks))
            .unwrap_or_default();
        self.progress = Some(Progress {
            transfer_id: announce.transfer_id.clone(),
            given: announce.name.clone(),
            name: clean_name(&announce.name),
            size: announce.size,
            chunk_size: announce.chunk_size,
            sha256: announce.sha256.clone(),
            ranges: held.spans(),
        });
        self.state_path = Some(state_path);
        self.open(&announce.transfer_id).await?;
        Ok(held)
    }

    async fn write(&mut self, at: Placement, payload: &[u8]) -> Result<(), TransferError> {
        let id = self.progress.as_ref().map_or_else(|| format!("frames-{}", self.unnamed), |p| p.transfer_id.clone());
        let file = self.open(&id).await?;
        let path = self.data.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let bytes = payload.to_vec();
        blocking(move || file.write_all_at(&bytes, at.offset).map_err(io(&path))).await
    }

    async fn checkpoint(&mut self, held: &Ranges) -> Result<(), TransferError> {
        let (Some(p), Some(sp), Some((file, dp))) = (self.progress.as_mut(), &self.state_path, &self.data) else {
            return Ok(());
        };
        p.ranges = held.spans();
        let bytes = serde_json::to_vec(p).map_err(|e| Fault::Storage(e.to_string()))?;
        let (f, dp, sp) = (Arc::clone(file), dp.clone(), sp.clone());
        blocking(move || {
            // The chunks the state names are on disk before the state says so.
            f.sync_data().map_err(io(&dp))?;
            ferry_store::durable::write(&sp, &bytes).map_err(io(&sp))
        })
        .await
    }

    async fn finish(&mut self, size: u64, expected: Option<&str>) -> Result<Stored, TransferError> {
        let id = self.progress.as_ref().map_or_else(|| format!("frames-{}", self.unnamed), |p| p.transfer_id.clone());
        let file = self.open(&id).await?;
        let path = self.data.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let dp = path.clone();
        let sha256 = blocking(move || {
            file.set_len(size).map_err(io(&dp))?;
            file.sync_all().map_err(io(&dp))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < size {
                let n = (size - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], at).map_err(io(&dp))?;
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok(hex::encode(hasher.finalize()))
        })
        .await?;
        if let Some(expected) = expected.filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
            self.discard().await;
            return Err(Fault::Checksum { expected: expected.to_owned(), actual: sha256 }.into());
        }
        let name = self.progress.as_ref().map_or_else(|| self.unnamed.clone(), |p| p.name.clone());
        let (out, from) = (self.out_dir.clone(), path.clone());
        let dest = blocking(move || publish(&from, &out, &name).map_err(io(&out))).await?;
        if let Some(sp) = self.state_path.take() {
            let _ = blocking(move || std::fs::remove_file(&sp).map_err(io(&sp))).await;
        }
        self.data = None;
        Ok(Stored { key: dest.display().to_string(), sha256 })
    }

    async fn abandon(&mut self, keep: bool, held: &Ranges) {
        if keep && self.progress.is_some() {
            if let Err(e) = self.checkpoint(held).await {
                tracing::warn!(error = %e, "could not keep what arrived of a transfer");
            }
            return;
        }
        self.discard().await;
    }
}

/// Publishes the received file `from` as `dir/name`, or `dir/name (1)`, `(2)`, … if taken. The
/// name is claimed and the file published in one step, so two receivers never take the same
/// name and nothing already there is replaced.
fn publish(from: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.to_owned(), String::new()),
    };
    let candidates = std::iter::once(dir.join(name)).chain((1..10_000).map(|i| dir.join(format!("{stem} ({i}){ext}"))));
    for to in candidates {
        match ferry_store::durable::publish_new(from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("every name like {name} is taken")))
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
    fn a_taken_name_gets_a_number_and_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"there first").unwrap();
        for n in 0..2 {
            let from = dir.path().join(format!("partial{n}"));
            std::fs::write(&from, b"new").unwrap();
            let to = publish(&from, dir.path(), "a.txt").unwrap();
            assert_eq!(to, dir.path().join(format!("a ({}).txt", n + 1)));
        }
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"there first");
    }
}
