//! The server's own secrets: the key that signs URLs and, when no token is configured, the
//! generated bearer token. With the embedded store they are files in the data dir, readable only
//! by their owner; with a shared store they are records in it, so every server sharing the store
//! signs and accepts the same. Either way each is created once, and two servers starting at once
//! agree on one value.

use std::fs;
use std::io;
use std::path::Path;

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(hex::encode(buf))
}

/// Reads `name` from `dir`, or creates it with `make()` if absent. Returns the value and whether it
/// was created now.
fn load_or_create(dir: &Path, name: &str, make: impl FnOnce() -> io::Result<String>) -> io::Result<(String, bool)> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {
            return Err(io::Error::other(format!("{} is empty; delete it to have a new one made", path.display())));
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let value = make()?;
    // Never replaces, so two servers starting at once agree on one value.
    match ferry_store::durable::write_new(&path, format!("{value}\n").as_bytes(), 0o600) {
        Ok(()) => Ok((value, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((fs::read_to_string(&path)?.trim().to_owned(), false)),
        Err(e) => Err(e),
    }
}

/// The URL-signing key.
pub fn load_or_create_secret(dir: &Path) -> io::Result<Vec<u8>> {
    let (hex_secret, _) = load_or_create(dir, "secret", || random_hex(32))?;
    hex::decode(&hex_secret).map_err(|e| io::Error::other(format!("{}: {e}", dir.join("secret").display())))
}

/// The generated bearer token, and whether it was created now.
pub fn load_or_create_token(dir: &Path) -> io::Result<(String, bool)> {
    load_or_create(dir, "token", || random_hex(24))
}

/// Reads the record `server/{name}` from a shared store, or creates it with a random value of
/// `bytes` bytes (hex) if absent.
pub async fn load_or_create_shared(
    store: &dyn ferry_store::Store,
    name: &str,
    bytes: usize,
) -> Result<String, ferry_store::StoreError> {
    let record = format!("server/{name}");
    loop {
        if let Some(r) = store.get_record(&record).await? {
            return String::from_utf8(r.bytes)
                .map(|s| s.trim().to_owned())
                .map_err(|_| ferry_store::StoreError::Corrupt(format!("record {record} is not text")));
        }
        let value = random_hex(bytes)?;
        match store.put_record(&record, value.clone().into_bytes(), ferry_store::Condition::IfAbsent).await {
            Ok(_) => return Ok(value),
            // Another server created it first: use that one.
            Err(ferry_store::StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e),
        }
    }
}
