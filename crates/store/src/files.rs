//! Small helpers for work on files that every part of ferry touching files shares.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

/// Runs blocking file work off the async threads. A worker thread that died (a panic) is an I/O
/// error like any other.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<io::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| E::from(io::Error::other(e)))?
}

/// Feeds `len` bytes of `file`, from `offset`, to `hasher`.
pub fn hash_range(file: &File, offset: u64, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(())
}
