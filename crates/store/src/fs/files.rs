//! The embedded store's files: part markers, object trailers, names, and the I/O helpers that
//! write and read them durably.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::api::{ObjectInfo, PartInfo};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

pub(super) use crate::files::hash_range;
use crate::{ByteStream, StoreError};

/// [`crate::files::blocking`], for the store's own errors.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    crate::files::blocking(f).await
}

pub(super) const MARKER_MAGIC: &[u8; 8] = b"FERRYMK1";
pub(super) const MARKER_LEN: usize = 16 + 8 + 8;
pub(super) const OBJECT_MAGIC: &[u8; 8] = b"FERRYOB1";
pub(super) const COPY_BUF: usize = 1 << 20;

pub(super) fn separate_data_name(n: u32) -> String {
    format!("{n:05}.data")
}

/// Removes its file on drop unless kept: an abandoned write leaves nothing behind.
pub(super) struct TempPath {
    pub(super) path: PathBuf,
    pub(super) keep: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(super) use crate::durable::sync_dir as fsync_dir;

/// Moves a complete, fsync'd temp file into place and makes the rename durable.
pub(super) fn publish(tmp: &mut TempPath, dest: &Path) -> io::Result<()> {
    crate::durable::rename(&tmp.path, dest)?;
    tmp.keep = true;
    Ok(())
}

/// Removes `path` with `remove` (already gone is fine) and makes the removal durable.
pub(super) fn remove_durably(path: &Path, remove: impl Fn(&Path) -> io::Result<()>) -> io::Result<()> {
    match remove(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    match path.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Creates `dir` (and its parent) if missing, making the new entry durable.
pub(super) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

pub(super) fn check_id(id: &str) -> Result<(), StoreError> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(StoreError::InvalidName(id.to_owned())) }
}

pub(super) fn part_file_name(n: u32) -> String {
    format!("{n:05}.part")
}

pub(super) fn parse_part_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".part")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn version_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// Lays the separately kept `parts` end to end in a new file at `dest`.
pub(super) fn assemble(dir: &Path, parts: &[PartInfo], dest: &Path) -> Result<(), StoreError> {
    let mut out = OpenOptions::new().write(true).create_new(true).open(dest)?;
    for part in parts {
        let mut src = match File::open(dir.join(separate_data_name(part.part_number))) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::MissingPart(part.part_number)),
            other => other?,
        };
        io::copy(&mut src, &mut out)?;
    }
    Ok(())
}

/// Reads a part marker: the part's size and ETag (bare hex).
pub(super) fn read_marker(path: &Path) -> Result<Option<(u64, String)>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if bytes.len() != MARKER_LEN || &bytes[24..] != MARKER_MAGIC {
        return Err(StoreError::Corrupt(format!("{} is not a part marker", path.display())));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&bytes[16..24]);
    Ok(Some((u64::from_le_bytes(size), hex::encode(&bytes[..16]))))
}

pub(super) fn marker_bytes(etag: &[u8], size: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(MARKER_LEN);
    m.extend_from_slice(&etag[..16]);
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(MARKER_MAGIC);
    m
}

/// The object trailer's JSON: the description, and which upload made it (so a repeated complete
/// of that upload can find its own result).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredMeta {
    #[serde(flatten)]
    pub(super) info: ObjectInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) upload_id: Option<String>,
}

/// Reads an object file's trailer.
pub(super) fn read_object_trailer(file: &File, path: &Path) -> Result<ObjectInfo, StoreError> {
    Ok(read_stored_meta(file, path)?.info)
}

pub(super) fn read_stored_meta(file: &File, path: &Path) -> Result<StoredMeta, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("{}: {what}", path.display()));
    let len = file.metadata()?.len();
    if len < 12 {
        return Err(corrupt("shorter than its trailer"));
    }
    let mut tail = [0u8; 12];
    file.read_exact_at(&mut tail, len - 12)?;
    if &tail[4..] != OBJECT_MAGIC {
        return Err(corrupt("no object trailer"));
    }
    let meta_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if meta_len + 12 > len {
        return Err(corrupt("trailer longer than the file"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta, len - 12 - meta_len)?;
    let stored: StoredMeta = serde_json::from_slice(&meta).map_err(|e| corrupt(&e.to_string()))?;
    if stored.info.size != len - 12 - meta_len {
        return Err(corrupt("size in trailer does not match the data"));
    }
    Ok(stored)
}

/// Streams `body` into `file` at `offset`, hashing it; exactly `size` bytes or an error. Writes go
/// out in batches from a blocking thread so the async side never blocks on the disk.
pub(super) async fn write_body(
    file: &Arc<File>,
    offset: u64,
    size: u64,
    mut body: ByteStream,
) -> Result<[u8; 32], StoreError> {
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut batch = Vec::with_capacity(COPY_BUF.min(size as usize));
    let mut at = offset;
    loop {
        let chunk = body.next().await;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk = chunk.map_err(StoreError::Body)?;
            received += chunk.len() as u64;
            if received > size {
                return Err(StoreError::BodyTooLong { expected: size });
            }
            hasher.update(&chunk);
            batch.extend_from_slice(&chunk);
        }
        if batch.len() >= COPY_BUF || (end && !batch.is_empty()) {
            let data = std::mem::replace(&mut batch, Vec::with_capacity(COPY_BUF.min(size as usize)));
            let (f, pos) = (Arc::clone(file), at);
            at += data.len() as u64;
            blocking(move || Ok(f.write_all_at(&data, pos)?)).await?;
        }
        if end {
            break;
        }
    }
    if received != size {
        return Err(StoreError::BodyTooShort { expected: size, received });
    }
    Ok(hasher.finalize().into())
}

/// Copies `len` bytes from `src` at `from` to `dst` at `to`, then makes them durable.
pub(super) fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], from + done)?;
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    dst.sync_data()
}

pub(super) fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
