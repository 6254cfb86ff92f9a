//! Publishing files durably, the one way ferry does it everywhere: the bytes go to a temporary
//! file beside the destination, are fsync'd, and the file is moved into place by a rename (or a
//! link, when an existing file must never be replaced), after which the directory is fsync'd. A
//! reader — or the same program after a crash or a power cut — sees the old file or the whole
//! new one, never a mix, and a published file stays published.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Makes a directory's entries (a rename, a new or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no directory", path.display()))),
    }
}

/// Moves the complete, fsync'd file `from` to `to`, replacing whatever is there, and makes the
/// move durable.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(parent(to)?)
}

/// Gives the complete, fsync'd file `from` the new name `to` unless something is there already
/// ([`io::ErrorKind::AlreadyExists`], and `from` is left as it was): of two publishers racing
/// for one name, exactly one wins, and nothing is overwritten. Then `from` goes.
pub fn publish_new(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    sync_dir(parent(to)?)?;
    fs::remove_file(from)?;
    sync_dir(parent(from)?)
}

/// A temporary file beside `path`, removed on drop unless it was published.
struct Temp {
    path: PathBuf,
    published: bool,
}

impl Temp {
    fn beside(path: &Path, mode: u32) -> io::Result<(Temp, File)> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let mut nonce = [0u8; 6];
        getrandom::fill(&mut nonce).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
        let temp = parent(path)?.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
        let file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        Ok((Temp { path: temp, published: false }, file))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Temp> {
    let (temp, mut file) = Temp::beside(path, mode)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(temp)
}

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temp = write_temp(path, bytes, 0o644)?;
    rename(&temp.path, path)?;
    temp.published = true;
    Ok(())
}

/// Creates `path` with `bytes` and permissions `mode`, unless it exists
/// ([`io::ErrorKind::AlreadyExists`]): of two writers racing, exactly one creates it, whole.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut temp = write_temp(path, bytes, mode)?;
    publish_new(&temp.path, path)?;
    temp.published = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn write_replaces_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write(&p, b"one").unwrap();
        write(&p, b"two, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        assert_eq!(names(dir.path()), ["state.json"]);
        assert!(write(&dir.path().join("missing").join("x"), b"x").is_err());
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn write_new_and_publish_new_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_new(&p, b"first", 0o600).unwrap();
        let e = write_new(&p, b"second", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"first");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let partial = dir.path().join("partial");
        fs::write(&partial, b"received").unwrap();
        let e = publish_new(&partial, &p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(partial.exists(), "a refused publish leaves its source");
        publish_new(&partial, &dir.path().join("received")).unwrap();
        assert_eq!(names(dir.path()), ["received", "secret"]);
    }

    #[test]
    fn racing_publishers_of_one_name_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("name");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (dir, to) = (dir.path().to_owned(), to.clone());
                std::thread::spawn(move || {
                    let from = dir.join(format!("from{i}"));
                    fs::write(&from, format!("{i}")).unwrap();
                    publish_new(&from, &to).is_ok()
                })
            })
            .collect();
        let wins = handles.into_iter().map(|h| h.join().unwrap()).filter(|w| *w).count();
        assert_eq!(wins, 1);
    }
}
