//! Where resume journals live and how they are written: one small JSON file per transfer under the
//! state directory, replaced atomically (temp file, fsync, rename) so a crash leaves the old or the
//! new journal, never half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// `$FERRY_STATE_DIR`, else `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("state").join("ferry")
}

/// The journal for a transfer identified by `parts` (e.g. server, local path, key).
pub(crate) fn path_for(state_dir: &Path, kind: &str, parts: &[&str]) -> PathBuf {
    let digest = Sha256::digest(parts.join("\n").as_bytes());
    state_dir.join(kind).join(format!("{}.json", &hex::encode(digest)[..32]))
}

/// Reads a journal; a missing one is `None`, and so is a damaged one (with a warning), since the
/// server's listing can always stand in for it.
pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the resume journal; starting afresh");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the resume journal is damaged; starting afresh");
            None
        }
    }
}

pub(crate) fn save<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("journal path has no parent"))?;
    fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    ferry_store::durable::write(path, &bytes)
}

pub(crate) fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove the finished journal"),
    }
}
