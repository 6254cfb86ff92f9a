//! The local file being uploaded: its identity, and positional reads of its parts.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use ferry_core::resume::FileIdentity;
use sha2::{Digest, Sha256};

use crate::error::ClientError;

const EDGE: u64 = 1 << 20;

/// Opens `path` and describes it well enough to notice a change: size, mtime, and a hash of the
/// first and last MiB.
pub(crate) fn open_with_identity(path: &Path) -> io::Result<(File, FileIdentity)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let size = meta.len();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    let mut hasher = Sha256::new();
    hasher.update(read_at(&file, 0, size.min(EDGE))?);
    if size > EDGE {
        let start = (size - EDGE).max(EDGE);
        hasher.update(read_at(&file, start, size - start)?);
    }
    let canonical = std::fs::canonicalize(path)?;
    let identity = FileIdentity {
        path: canonical.to_string_lossy().into_owned(),
        size,
        mtime_ns,
        edge_sha256: hex::encode(hasher.finalize()),
    };
    Ok((file, identity))
}

/// Reads exactly `len` bytes at `offset`; a file that shrank is an error, not a short part.
pub(crate) fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the file became shorter while it was being read")
        } else {
            e
        }
    })?;
    Ok(buf)
}

/// Feeds `len` bytes at `offset` into `hasher` in bounded chunks.
pub(crate) use ferry_store::files::hash_range;

/// Runs blocking file work off the async threads; errors name `path`.
pub(crate) async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, ClientError> {
    match ferry_store::files::blocking(f).await {
        Ok(r) => Ok(r),
        Err(e) => Err(ClientError::io(path, e)),
    }
}
