//! A room's manifest, read and updated with optimistic concurrency: read it with its version,
//! apply the change, write it on condition that nobody else wrote meanwhile; on a lost race, read
//! again and retry after a short, randomised pause.

use std::time::Duration;

use ferry_core::room::{Manifest, ManifestEntry};
use reqwest::{StatusCode, header};

use crate::api::Api;
use crate::error::ClientError;

/// Lost races a writer sits out before it gives up.
const MAX_ATTEMPTS: u32 = 30;

impl Api {
    /// The room's manifest and its version (`None` while there is none).
    pub async fn manifest(&self, room: &str) -> Result<(Manifest, Option<String>), ClientError> {
        let res = self.send("reading the room's manifest", self.authed(self.http.get(self.manifest_url(room)))).await?;
        let version =
            res.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(|v| v.trim_matches('"').to_owned());
        let manifest = res.json().await.map_err(|e| ClientError::network("reading the room's manifest", e))?;
        Ok((manifest, version))
    }

    /// Writes the manifest if its version is still `version` (`None`: if there is none yet).
    /// Returns the new version; another writer's win is `ClientError::Api` with status 412.
    pub async fn put_manifest(&self, room: &str, m: &Manifest, version: Option<&str>) -> Result<String, ClientError> {
        let req = self.http.put(self.manifest_url(room)).json(m);
        let req = match version {
            Some(v) => req.header(header::IF_MATCH, format!("\"{v}\"")),
            None => req.header(header::IF_NONE_MATCH, "*"),
        };
        let res = self.send("writing the room's manifest", self.authed(req)).await?;
        res.headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned())
            .ok_or_else(|| ClientError::Protocol("the server sent no version for the manifest it wrote".into()))
    }

    /// Records `entry` in the room's manifest (replacing the same job's entry), however many
    /// other writers are at it. Returns how many times it lost a race first.
    pub async fn record_in_manifest(&self, room: &str, entry: &ManifestEntry) -> Result<u32, ClientError> {
        for lost in 0..MAX_ATTEMPTS {
            let (mut m, version) = self.manifest(room).await?;
            m.record(entry.clone());
            match self.put_manifest(room, &m, version.as_deref()).await {
                Ok(_) => return Ok(lost),
                Err(ClientError::Api { status, .. }) if status == StatusCode::PRECONDITION_FAILED.as_u16() => {
                    tokio::time::sleep(pause(lost)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(format!(
            "the manifest of room {room} kept changing: gave up after {MAX_ATTEMPTS} tries"
        )))
    }

    fn manifest_url(&self, room: &str) -> String {
        self.url(&format!("/rooms/{room}/manifest"))
    }
}

/// 10 ms doubling to 640 ms, each scaled by a random factor in [0.5, 1.5) so racing writers spread out.
fn pause(lost: u32) -> Duration {
    let base = 10u64 << lost.min(6);
    let r = crate::upload::seed() & 0xffff;
    Duration::from_millis(base / 2 + base * r / 65_536)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_stay_bounded() {
        for lost in 0..40 {
            let p = pause(lost);
            let base = 10u64 << lost.min(6);
            assert!(p >= Duration::from_millis(base / 2) && p < Duration::from_millis(base * 3 / 2), "{lost}: {p:?}");
        }
    }
}
