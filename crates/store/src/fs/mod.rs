//! The embedded store: one directory on local disk.
//!
//! Layout under the root:
//! - `tmp/` — files being written; anything here at start-up is debris of a crash and is removed.
//! - `uploads/{upload_id}/data` — the object being uploaded: each part is written straight at its
//!   offset, so completing never copies the bytes a second time.
//! - `uploads/{upload_id}/{n:05}.part` — part `n`'s marker (16 bytes of the part's SHA-256, which is
//!   its ETag, its size and a magic), published by rename only once the part's bytes are fsync'd
//!   in `data`. No marker, no part: a write that fails half-way leaves nothing that counts.
//! - `objects/{h[0..2]}/{h}` where `h` is the hex SHA-256 of the key — the object's bytes, then its
//!   [`ObjectInfo`] as JSON, its length (u32 LE) and a magic. Hashed names keep every key inside the
//!   directory whatever it spells, and let `a` and `a/b` both exist. Completing appends the trailer
//!   to `data` and renames it here: readers see the old object or the new one.
//! - `records/{name}.json` — small documents such as session records.
//! - `reserve` — 1 MiB kept aside for records. When the disk is full, a record write (cancelling
//!   or expiring an upload, whose parts are deleted only once its new state is recorded) uses it
//!   up; it is put back once deletions have made room.
//!
//! Small files are written to `tmp/`, fsync'd, renamed into place, and the directory fsync'd, so
//! after a crash a file is either absent or complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::api::{ObjectInfo, PartInfo};
use ferry_core::etag::{bare_etag, quote_etag};
use ferry_core::plan::{Limits, PartSpan};
use sha2::{Digest, Sha256};
use tokio_util::io::ReaderStream;

use crate::{
    ByteStream, Condition, Multipart, MultipartOptions, ObjectMeta, ObjectReader, Record, Store, StoreError,
    check_record_name,
};

mod files;

use files::*;

const DATA: &str = "data";
const RESERVE: &str = "reserve";
const RESERVE_SIZE: usize = 1 << 20;

type PartLock = Arc<tokio::sync::Mutex<()>>;

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
    /// One writer per part at a time: two bodies for one part must not interleave in `data`.
    part_locks: Mutex<std::collections::HashMap<(String, u32), PartLock>>,
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
        if let Err(e) = keep_reserve(&root) {
            tracing::warn!(error = %e, "cannot keep space aside for records");
        }
        Ok(FsStore { inner: Arc::new(Inner { root, limits, records: Mutex::new(()), part_locks: Mutex::default() }) })
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

    /// Puts the reserve for records back after a deletion (best effort: the disk may still be full).
    async fn restore_reserve(&self) {
        let root = self.inner.root.clone();
        if let Err(e) = blocking(move || Ok(keep_reserve(&root)?)).await {
            tracing::debug!(error = %e, "the space for records is not kept aside yet");
        }
    }
}

/// Creates the reserve for records if it is missing.
fn keep_reserve(root: &std::path::Path) -> io::Result<()> {
    let path = root.join(RESERVE);
    if path.exists() {
        return Ok(());
    }
    crate::durable::write(&path, &vec![0u8; RESERVE_SIZE])
}

/// Writes a record's bytes through `tmp` to `path`.
fn write_record(tmp: &mut TempPath, path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    // A first try that ran out of room may have left its half.
    let _ = fs::remove_file(&tmp.path);
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp.path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    publish(tmp, path)
}

impl FsStore {
    /// Makes the part's bytes (in `data`) durable, then publishes its marker: from then on the
    /// part is stored.
    async fn publish_marker(
        &self,
        data: Arc<File>,
        marker: PathBuf,
        span: PartSpan,
        digest: [u8; 32],
    ) -> Result<PartInfo, StoreError> {
        let mut tmp = self.temp();
        blocking(move || {
            data.sync_data()?;
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp.path)?;
            f.write_all(&marker_bytes(&digest, span.size))?;
            f.sync_all()?;
            drop(f);
            match publish(&mut tmp, &marker) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NoSuchUpload),
                other => Ok(other?),
            }
        })
        .await?;
        Ok(PartInfo { part_number: span.part_number, size: span.size, etag: quote_etag(&hex::encode(&digest[..16])) })
    }

    /// A part kept in a file of its own (its offset is not known): written aside, then renamed
    /// into place, so a failed re-send leaves the stored copy as it was.
    async fn put_separate_part(
        &self,
        dir: PathBuf,
        marker: PathBuf,
        span: PartSpan,
        body: ByteStream,
    ) -> Result<PartInfo, StoreError> {
        let d = dir.clone();
        if !blocking(move || Ok(d.is_dir())).await? {
            return Err(StoreError::NoSuchUpload);
        }
        let mut staged = self.temp();
        let sp = staged.path.clone();
        let file = Arc::new(
            blocking(move || Ok(OpenOptions::new().read(true).write(true).create_new(true).open(&sp)?)).await?,
        );
        let digest = write_body(&file, 0, span.size, body).await?;
        let dest = dir.join(separate_data_name(span.part_number));
        let (f, m) = (Arc::clone(&file), marker.clone());
        blocking(move || {
            f.sync_data()?;
            // As for a part written in place: the old marker goes for good before its bytes do.
            remove_durably(&m, |p| fs::remove_file(p))?;
            match publish(&mut staged, &dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NoSuchUpload),
                other => Ok(other?),
            }
        })
        .await?;
        self.publish_marker(file, marker, span, digest).await
    }
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
        stream_range(self.file, start, len)
    }
}

fn stream_range(mut file: File, start: u64, len: u64) -> ByteStream {
    match file.seek(SeekFrom::Start(start)) {
        Ok(_) => {
            let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
            Box::pin(ReaderStream::with_capacity(reader, 256 * 1024))
        }
        Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
    }
}

#[async_trait]
impl Store for FsStore {
    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn free_space(&self) -> Result<Option<u64>, StoreError> {
        let root = self.inner.root.clone();
        blocking(move || {
            let fs = nix::sys::statvfs::statvfs(&root).map_err(io::Error::from)?;
            Ok(Some(fs.blocks_available().saturating_mul(fs.fragment_size())))
        })
        .await
    }

    fn verifies_sha256(&self) -> bool {
        true
    }

    async fn create_multipart(
        &self,
        upload_id: &str,
        key: &str,
        _meta: &ObjectMeta,
        options: MultipartOptions,
    ) -> Result<Multipart, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        blocking(move || {
            ensure_dir(&dir)?;
            OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(DATA))?.sync_all()?;
            Ok(fsync_dir(&dir)?)
        })
        .await?;
        // Parts are always readable here. They are written in place in the upload's data file,
        // or, when their offsets are not known, each in a file of its own.
        Ok(Multipart {
            upload_id: upload_id.to_owned(),
            key: key.to_owned(),
            store_id: String::new(),
            parts_as_objects: options.unknown_sizes,
        })
    }

    async fn put_part(&self, upload: &Multipart, span: PartSpan, body: ByteStream) -> Result<PartInfo, StoreError> {
        let upload_id = upload.upload_id.as_str();
        let dir = self.upload_dir(upload_id)?;
        let n = span.part_number;
        let lock = {
            let mut locks = self.inner.part_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(locks.entry((upload_id.to_owned(), n)).or_default())
        };
        let _one_writer = lock.lock().await;
        let marker = dir.join(part_file_name(n));
        if upload.parts_as_objects {
            return self.put_separate_part(dir, marker, span, body).await;
        }
        let data_path = dir.join(DATA);
        let dp = data_path.clone();
        let data = match blocking(move || Ok(OpenOptions::new().write(true).open(&dp)?)).await {
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NoSuchUpload),
            other => Arc::new(other?),
        };
        let mp = marker.clone();
        let replacing = blocking(move || Ok(mp.exists())).await?;
        let digest = if replacing {
            // The stored copy must survive a failed re-send: take the body into a temp file first.
            let tmp = self.temp();
            let tp = tmp.path.clone();
            let staged = Arc::new(
                blocking(move || Ok(OpenOptions::new().read(true).write(true).create_new(true).open(&tp)?)).await?,
            );
            let digest = write_body(&staged, 0, span.size, body).await?;
            let (m, d, upload) = (marker.clone(), Arc::clone(&data), dir.clone());
            blocking(move || {
                let _tmp = tmp;
                // The old marker must be gone for good before its bytes are overwritten, or a
                // crash could bring it back over bytes it does not describe. From here the part
                // is absent until its new marker lands.
                fs::remove_file(&m)?;
                fsync_dir(&upload)?;
                copy_range(&staged, 0, &d, span.offset, span.size)?;
                Ok(())
            })
            .await?;
            digest
        } else {
            write_body(&data, span.offset, span.size, body).await?
        };
        self.publish_marker(data, marker, span, digest).await
    }

    async fn list_parts(&self, upload: &Multipart) -> Result<Vec<PartInfo>, StoreError> {
        let dir = self.upload_dir(&upload.upload_id)?;
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NoSuchUpload),
                other => other?,
            };
            let mut parts = Vec::new();
            for entry in entries {
                let entry = entry?;
                let Some(n) = entry.file_name().to_str().and_then(parse_part_file_name) else { continue };
                match read_marker(&entry.path()) {
                    Ok(Some((size, etag))) => parts.push(PartInfo { part_number: n, size, etag: quote_etag(&etag) }),
                    Ok(None) => {}
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

    async fn head_part(&self, upload: &Multipart, part_number: u32) -> Result<Option<PartInfo>, StoreError> {
        let dir = self.upload_dir(&upload.upload_id)?;
        blocking(move || {
            if !dir.is_dir() {
                return Err(StoreError::NoSuchUpload);
            }
            Ok(read_marker(&dir.join(part_file_name(part_number)))?.map(|(size, etag)| PartInfo {
                part_number,
                size,
                etag: quote_etag(&etag),
            }))
        })
        .await
    }

    async fn read_part(&self, upload: &Multipart, span: PartSpan) -> Result<ByteStream, StoreError> {
        let dir = self.upload_dir(&upload.upload_id)?;
        let n = span.part_number;
        let separate = upload.parts_as_objects;
        let file = blocking(move || {
            if !dir.is_dir() {
                return Err(StoreError::NoSuchUpload);
            }
            match read_marker(&dir.join(part_file_name(n)))? {
                Some((size, _)) if size == span.size => {}
                _ => return Err(StoreError::MissingPart(n)),
            }
            if separate {
                Ok((File::open(dir.join(separate_data_name(n)))?, 0))
            } else {
                Ok((File::open(dir.join(DATA))?, span.offset))
            }
        })
        .await?;
        Ok(stream_range(file.0, file.1, span.size))
    }

    async fn complete_multipart(
        &self,
        upload: &Multipart,
        parts: &[PartInfo],
        expected_sha256: Option<&str>,
        meta: ObjectMeta,
    ) -> Result<ObjectInfo, StoreError> {
        let dir = self.upload_dir(&upload.upload_id)?;
        let dest = self.object_path(&upload.key);
        let parts = parts.to_vec();
        let key = upload.key.clone();
        let upload_id = upload.upload_id.clone();
        let expected = expected_sha256.map(str::to_ascii_lowercase);
        let separate = upload.parts_as_objects;
        let assembled = self.temp();
        blocking(move || {
            let data_path = if separate { assembled.path.clone() } else { dir.join(DATA) };
            if separate && dir.is_dir() {
                assemble(&dir, &parts, &data_path)?;
            }
            let data = match OpenOptions::new().read(true).write(true).open(&data_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Completed before, and the caller did not get to record it: find that result.
                    if let Ok(f) = File::open(&dest)
                        && let Ok(stored) = read_stored_meta(&f, &dest)
                        && stored.upload_id.as_deref() == Some(upload_id.as_str())
                    {
                        return Ok(stored.info);
                    }
                    return Err(StoreError::NoSuchUpload);
                }
                Err(e) => return Err(e.into()),
            };
            let mut total = 0u64;
            for part in &parts {
                let Some((size, etag)) = read_marker(&dir.join(part_file_name(part.part_number)))? else {
                    return Err(StoreError::MissingPart(part.part_number));
                };
                if etag != bare_etag(&part.etag) || size != part.size {
                    return Err(StoreError::PartChanged {
                        part: part.part_number,
                        expected: part.etag.clone(),
                        actual: quote_etag(&etag),
                    });
                }
                total += size;
            }
            let mut hasher = Sha256::new();
            hash_range(&data, 0, total, &mut hasher)?;
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
                sha256: Some(sha256),
                content_type: meta.content_type,
                metadata: meta.metadata,
                last_modified: now_utc(),
            };
            let trailer = serde_json::to_vec(&StoredMeta { info: info.clone(), upload_id: Some(upload_id) })
                .map_err(io::Error::other)?;
            let trailer_len = u32::try_from(trailer.len()).map_err(io::Error::other)?;
            // A previous attempt may have left a trailer: cut back to the data first.
            data.set_len(total)?;
            let mut tail = trailer;
            tail.extend_from_slice(&trailer_len.to_le_bytes());
            tail.extend_from_slice(OBJECT_MAGIC);
            data.write_all_at(&tail, total)?;
            data.sync_all()?;
            drop(data);
            if let Some(parent) = dest.parent() {
                ensure_dir(parent)?;
            }
            fs::rename(&data_path, &dest)?;
            if let Some(parent) = dest.parent() {
                fsync_dir(parent)?;
            }
            fsync_dir(&dir)?;
            Ok(info)
        })
        .await
    }

    async fn abort_multipart(&self, upload: &Multipart) -> Result<(), StoreError> {
        let dir = self.upload_dir(&upload.upload_id)?;
        blocking(move || {
            // A part finishing at this moment can publish its marker while the directory is
            // being emptied; once the directory is gone no later part can, so trying again settles it.
            let mut tries = 0;
            loop {
                match remove_durably(&dir, |p| fs::remove_dir_all(p)) {
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 5 => tries += 1,
                    other => return Ok(other?),
                }
            }
        })
        .await?;
        self.restore_reserve().await;
        Ok(())
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
        blocking(move || Ok(remove_durably(&path, |p| fs::remove_file(p))?)).await?;
        self.restore_reserve().await;
        Ok(())
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
            match write_record(&mut tmp, &path, &bytes) {
                Err(e)
                    if e.kind() == io::ErrorKind::StorageFull && fs::remove_file(inner.root.join(RESERVE)).is_ok() =>
                {
                    tracing::warn!("the disk is full: writing a record in the space kept aside for it");
                    write_record(&mut tmp, &path, &bytes)?;
                }
                other => other?,
            }
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
        blocking(move || Ok(remove_durably(&path, |p| fs::remove_file(p))?)).await
    }
}
