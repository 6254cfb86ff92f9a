//! The embedded store: one directory on local disk.
//!
//! Layout under the root:
//! - `tmp/` — files being written; anything here at start-up is debris of a crash and is removed.
//! - `uploads/{upload_id}/{n:05}.part` — part `n`: its bytes, then a 24-byte trailer (16 bytes of
//!   the part's SHA-256, which is its ETag, and a magic). One file per part means one rename
//!   publishes the bytes and their ETag together.
//! - `objects/{h[0..2]}/{h}` where `h` is the hex SHA-256 of the key — the object's bytes, then its
//!   [`ObjectInfo`] as JSON, its length (u32 LE) and a magic. Hashed names keep every key inside the
//!   directory whatever it spells, and let `a` and `a/b` both exist.
//! - `records/{name}.json` — small documents such as session records.
//!
//! Every write goes to `tmp/`, is fsync'd, renamed into place, and the target directory fsync'd, so
//! after a crash a file is either absent or complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::api::{ObjectInfo, PartInfo, bare_etag, quote_etag};
use ferry_core::plan::Limits;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use crate::{ByteStream, Condition, ObjectMeta, ObjectReader, Record, Store, StoreError};

const PART_MAGIC: &[u8; 8] = b"FERRYPT1";
const PART_TRAILER: u64 = 16 + 8;
const OBJECT_MAGIC: &[u8; 8] = b"FERRYOB1";
const COPY_BUF: usize = 1 << 20;

/// The embedded filesystem store. Cheap to clone.
#[derive(Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    limits: Limits,
    /// Serializes record writes so a conditional write's check and write are one step.
    records: Mutex<()>,
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes temp files a crash left.
    pub fn open(root: impl Into<PathBuf>, limits: Limits) -> io::Result<FsStore> {
        let root = root.into();
        for dir in ["tmp", "uploads", "objects", "records"] {
            fs::create_dir_all(root.join(dir))?;
        }
        fsync_dir(&root)?;
        let mut swept = 0u64;
        for entry in fs::read_dir(root.join("tmp"))? {
            let entry = entry?;
            fs::remove_file(entry.path())?;
            swept += 1;
        }
        if swept > 0 {
            tracing::info!(swept, "removed temp files left by an interrupted write");
        }
        Ok(FsStore { inner: Arc::new(Inner { root, limits, records: Mutex::new(()) }) })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf, StoreError> {
        check_id(upload_id)?;
        Ok(self.inner.root.join("uploads").join(upload_id))
    }

    fn object_path(&self, key: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        self.inner.root.join("objects").join(&h[..2]).join(h)
    }

    fn record_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_record_name(name)?;
        Ok(self.inner.root.join("records").join(format!("{name}.json")))
    }

    fn temp(&self) -> TempPath {
        let mut id = [0u8; 12];
        // An OS without randomness fails loudly at create_new below rather than here; the
        // all-zero fallback name then collides and errors instead of overwriting.
        let _ = getrandom::fill(&mut id);
        TempPath { path: self.inner.root.join("tmp").join(hex::encode(id)), keep: false }
    }
}

/// Removes its file on drop unless kept: an abandoned write leaves nothing behind.
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves a complete, fsync'd temp file into place and makes the rename durable.
fn publish(tmp: &mut TempPath, dest: &Path) -> io::Result<()> {
    fs::rename(&tmp.path, dest)?;
    tmp.keep = true;
    match dest.parent() {
        Some(dir) => fsync_dir(dir),
        None => Ok(()),
    }
}

/// Creates `dir` (and its parent) if missing, making the new entry durable.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

fn check_id(id: &str) -> Result<(), StoreError> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(StoreError::InvalidName(id.to_owned())) }
}

fn check_record_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok { Ok(()) } else { Err(StoreError::InvalidName(name.to_owned())) }
}

fn part_file_name(n: u32) -> String {
    format!("{n:05}.part")
}

fn parse_part_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".part")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn version_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// Reads a part file's trailer: its data length and ETag (bare hex).
fn read_part_trailer(file: &File, path: &Path) -> Result<(u64, String), StoreError> {
    let len = file.metadata()?.len();
    if len < PART_TRAILER {
        return Err(StoreError::Corrupt(format!("{} is shorter than its trailer", path.display())));
    }
    let mut trailer = [0u8; PART_TRAILER as usize];
    file.read_exact_at(&mut trailer, len - PART_TRAILER)?;
    if &trailer[16..] != PART_MAGIC {
        return Err(StoreError::Corrupt(format!("{} has no part trailer", path.display())));
    }
    Ok((len - PART_TRAILER, hex::encode(&trailer[..16])))
}

/// Reads an object file's trailer.
fn read_object_trailer(file: &File, path: &Path) -> Result<ObjectInfo, StoreError> {
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
    let info: ObjectInfo = serde_json::from_slice(&meta).map_err(|e| corrupt(&e.to_string()))?;
    if info.size != len - 12 - meta_len {
        return Err(corrupt("size in trailer does not match the data"));
    }
    Ok(info)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Io(io::Error::other(e)))?
}

struct FsObjectReader {
    info: ObjectInfo,
    file: File,
}

impl ObjectReader for FsObjectReader {
    fn info(&self) -> &ObjectInfo {
        &self.info
    }

    fn read(self: Box<Self>, start: u64, len: u64) -> ByteStream {
        let mut file = self.file;
        match file.seek(SeekFrom::Start(start)) {
            Ok(_) => {
                let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
                Box::pin(ReaderStream::with_capacity(reader, 256 * 1024))
            }
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }
}

#[async_trait]
impl Store for FsStore {
    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn create_multipart(&self, upload_id: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(upload_id)?;
        blocking(move || Ok(ensure_dir(&dir)?)).await
    }

    async fn put_part(
        &self,
        upload_id: &str,
        part_number: u32,
        size: u64,
        mut body: ByteStream,
    ) -> Result<PartInfo, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        if !tokio::fs::try_exists(&dir).await? {
            return Err(StoreError::NoSuchUpload);
        }
        let mut tmp = self.temp();
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&tmp.path).await?;
        let mut out = BufWriter::with_capacity(COPY_BUF, file);
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            received += chunk.len() as u64;
            if received > size {
                return Err(StoreError::BodyTooLong { expected: size });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await?;
        }
        if received != size {
            return Err(StoreError::BodyTooShort { expected: size, received });
        }
        let digest = hasher.finalize();
        out.write_all(&digest[..16]).await?;
        out.write_all(PART_MAGIC).await?;
        out.flush().await?;
        let file = out.into_inner();
        file.sync_all().await?;
        drop(file);
        let dest = dir.join(part_file_name(part_number));
        blocking(move || match publish(&mut tmp, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NoSuchUpload),
            other => Ok(other?),
        })
        .await?;
        Ok(PartInfo { part_number, size, etag: quote_etag(&hex::encode(&digest[..16])) })
    }

    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NoSuchUpload);
                }
                other => other?,
            };
            let mut parts = Vec::new();
            for entry in entries {
                let entry = entry?;
                let Some(n) = entry.file_name().to_str().and_then(parse_part_file_name) else {
                    continue;
                };
                let path = entry.path();
                let file = match File::open(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    other => other?,
                };
                match read_part_trailer(&file, &path) {
                    Ok((size, etag)) => parts.push(PartInfo { part_number: n, size, etag: quote_etag(&etag) }),
                    Err(StoreError::Corrupt(why)) => {
                        tracing::warn!(%why, "ignoring a damaged part; it will be uploaded again")
                    }
                    Err(e) => return Err(e),
                }
            }
            parts.sort_by_key(|p| p.part_number);
            Ok(parts)
        })
        .await
    }

    async fn head_part(&self, upload_id: &str, part_number: u32) -> Result<Option<PartInfo>, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        blocking(move || {
            if !dir.is_dir() {
                return Err(StoreError::NoSuchUpload);
            }
            let path = dir.join(part_file_name(part_number));
            let file = match File::open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                other => other?,
            };
            let (size, etag) = read_part_trailer(&file, &path)?;
            Ok(Some(PartInfo { part_number, size, etag: quote_etag(&etag) }))
        })
        .await
    }

    async fn complete_multipart(
        &self,
        upload_id: &str,
        key: &str,
        parts: &[PartInfo],
        expected_sha256: Option<&str>,
        meta: ObjectMeta,
    ) -> Result<ObjectInfo, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        let dest = self.object_path(key);
        let mut tmp = self.temp();
        let parts = parts.to_vec();
        let key = key.to_owned();
        let expected = expected_sha256.map(str::to_ascii_lowercase);
        blocking(move || {
            if !dir.is_dir() {
                return Err(StoreError::NoSuchUpload);
            }
            let mut out = OpenOptions::new().write(true).create_new(true).open(&tmp.path)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; COPY_BUF];
            let mut total = 0u64;
            for part in &parts {
                let path = dir.join(part_file_name(part.part_number));
                let file = match File::open(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(StoreError::MissingPart(part.part_number));
                    }
                    other => other?,
                };
                let (size, etag) = read_part_trailer(&file, &path)?;
                if etag != bare_etag(&part.etag) || size != part.size {
                    return Err(StoreError::PartChanged {
                        part: part.part_number,
                        expected: part.etag.clone(),
                        actual: quote_etag(&etag),
                    });
                }
                let mut offset = 0u64;
                while offset < size {
                    let want = (size - offset).min(COPY_BUF as u64) as usize;
                    file.read_exact_at(&mut buf[..want], offset)?;
                    hasher.update(&buf[..want]);
                    out.write_all(&buf[..want])?;
                    offset += want as u64;
                }
                total += size;
            }
            let sha256 = hex::encode(hasher.finalize());
            if let Some(expected) = expected
                && expected != sha256
            {
                return Err(StoreError::ChecksumMismatch { expected, actual: sha256 });
            }
            let info = ObjectInfo {
                key,
                size: total,
                etag: quote_etag(&sha256[..32]),
                sha256,
                content_type: meta.content_type,
                metadata: meta.metadata,
                last_modified: now_utc(),
            };
            let trailer = serde_json::to_vec(&info).map_err(io::Error::other)?;
            let trailer_len = u32::try_from(trailer.len()).map_err(io::Error::other)?;
            out.write_all(&trailer)?;
            out.write_all(&trailer_len.to_le_bytes())?;
            out.write_all(OBJECT_MAGIC)?;
            out.sync_all()?;
            drop(out);
            if let Some(parent) = dest.parent() {
                ensure_dir(parent)?;
            }
            publish(&mut tmp, &dest)?;
            Ok(info)
        })
        .await
    }

    async fn abort_multipart(&self, upload_id: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(upload_id)?;
        blocking(move || {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            }
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        })
        .await
    }

    async fn open_object(&self, key: &str) -> Result<Box<dyn ObjectReader>, StoreError> {
        let path = self.object_path(key);
        let key = key.to_owned();
        blocking(move || {
            let file = match File::open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NoSuchObject);
                }
                other => other?,
            };
            let info = read_object_trailer(&file, &path)?;
            if info.key != key {
                return Err(StoreError::Corrupt(format!("{} holds {:?}, not {key:?}", path.display(), info.key)));
            }
            Ok(Box::new(FsObjectReader { info, file }) as Box<dyn ObjectReader>)
        })
        .await
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let path = self.object_path(key);
        blocking(move || {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            }
            if let Some(parent) = path.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.inner.root.join("objects");
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            for shard in fs::read_dir(&root)? {
                let shard = shard?.path();
                if !shard.is_dir() {
                    continue;
                }
                for entry in fs::read_dir(&shard)? {
                    let path = entry?.path();
                    let file = match File::open(&path) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        other => other?,
                    };
                    match read_object_trailer(&file, &path) {
                        Ok(info) if info.key.starts_with(&prefix) => out.push(info),
                        Ok(_) => {}
                        Err(StoreError::Corrupt(why)) => {
                            tracing::warn!(%why, "skipping a damaged object")
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let path = self.record_path(name)?;
        blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(Record { version: version_of(&bytes), bytes })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn put_record(&self, name: &str, bytes: Vec<u8>, condition: Condition) -> Result<String, StoreError> {
        let path = self.record_path(name)?;
        let mut tmp = self.temp();
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let _guard = inner.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let current = match fs::read(&path) {
                Ok(b) => Some(version_of(&b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            let allowed = match &condition {
                Condition::Any => true,
                Condition::IfAbsent => current.is_none(),
                Condition::IfMatch(v) => current.as_deref() == Some(v.as_str()),
            };
            if !allowed {
                return Err(StoreError::ConditionFailed);
            }
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp.path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            if let Some(parent) = path.parent() {
                ensure_dir(parent)?;
            }
            publish(&mut tmp, &path)?;
            Ok(version_of(&bytes))
        })
        .await
    }

    async fn list_records(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let folder = prefix.trim_end_matches('/').to_owned();
        check_record_name(&folder)?;
        let dir = self.inner.root.join("records").join(&folder);
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                other => other?,
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry?;
                if let Some(stem) = entry.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                    names.push(format!("{folder}/{stem}"));
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn delete_record(&self, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(name)?;
        blocking(move || {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            }
            if let Some(parent) = path.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        })
        .await
    }
}

fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
