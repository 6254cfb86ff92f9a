//! A room's manifest of results ([`ferry_core::room`]), kept as a store record so both stores give
//! it conditional writes: a writer names the version it replaces, and loses if another writer got
//! there first.
//!
//! The servers also serialise these reads and writes themselves: not every S3-compatible store is
//! atomic here. s3s-fs checks the ETag, then writes, so two writers holding the same version can
//! both win; and a read of it opens the old body, then finds the new ETag, so a writer that read
//! during another's write would replace the newest entry unseen. Within a process a lock does it;
//! across instances, a lease on the bus. With the bus unreachable, the store's own
//! compare-and-swap is what counts (AWS S3's is atomic).

use std::time::Duration;

use ferry_core::room::Manifest;
use ferry_core::signal::valid_room;
use ferry_store::{Condition, StoreError};

use crate::Service;
use crate::error::{Invalid, Refused, ServiceError};

fn record_name(room: &str) -> Result<String, ServiceError> {
    if !valid_room(room) || room.chars().all(|c| c == '.') {
        return Err(Invalid::Room.into());
    }
    Ok(format!("rooms/{room}/manifest"))
}

impl Service {
    /// The room's manifest and its version; an empty one and no version before the first write.
    pub async fn manifest(&self, room: &str) -> Result<(Manifest, Option<String>), ServiceError> {
        let name = record_name(room)?;
        let record = {
            let _serialised = self.manifest_lock.lock().await;
            let lease = self.manifest_lease(room).await;
            let record = self.store.get_record(&name).await;
            self.release(lease).await;
            record?
        };
        match record {
            Some(r) => {
                let manifest: Manifest = serde_json::from_slice(&r.bytes)
                    .map_err(|e| ServiceError::bug(format!("the manifest of room {room} is unreadable: {e}")))?;
                Ok((manifest, Some(r.version)))
            }
            None => Ok((Manifest::default(), None)),
        }
    }

    /// Replaces the room's manifest if `condition` holds; returns the new version.
    pub async fn write_manifest(
        &self,
        room: &str,
        manifest: &Manifest,
        condition: Condition,
    ) -> Result<String, ServiceError> {
        let name = record_name(room)?;
        manifest.check().map_err(Invalid::Manifest)?;
        let bytes = serde_json::to_vec(manifest).map_err(|e| ServiceError::bug(e.to_string()))?;
        let _serialised = self.manifest_lock.lock().await;
        let lease = self.manifest_lease(room).await;
        let written = self.store.put_record(&name, bytes, condition).await;
        self.release(lease).await;
        match written {
            Ok(version) => Ok(version),
            Err(StoreError::ConditionFailed) => Err(Refused::ManifestChanged.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for the room's manifest lease on the bus: its name, or `None` if the bus cannot be
    /// reached (then the store's own conditions are all there is). A holder that died lets go
    /// after [`MANIFEST_LEASE`].
    async fn manifest_lease(&self, room: &str) -> Option<String> {
        let name = format!("manifest:{room}");
        let deadline = self.clock.now() + 2 * MANIFEST_LEASE;
        loop {
            match self.bus.try_lease(&name, MANIFEST_LEASE).await {
                Ok(true) => return Some(name),
                Ok(false) if self.clock.now() < deadline => self.clock.sleep(Duration::from_millis(5)).await,
                Ok(false) => {
                    tracing::warn!(room, "the manifest's lease stayed taken; writing on the store's conditions alone");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(room, error = %e, "no manifest lease; writing on the store's conditions alone");
                    return None;
                }
            }
        }
    }

    async fn release(&self, lease: Option<String>) {
        if let Some(name) = lease
            && let Err(e) = self.bus.release(&name).await
        {
            tracing::debug!(lease = name, error = %e, "the lease will lapse instead");
        }
    }
}

/// How long a manifest lease holds at most: far longer than one read or write of a record.
const MANIFEST_LEASE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_that_are_not_paths() {
        assert_eq!(record_name("lab-1.a_b").ok().as_deref(), Some("rooms/lab-1.a_b/manifest"));
        for bad in ["", ".", "..", "...", "a/b", "a b", "x*y", &"r".repeat(129)] {
            assert!(record_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
