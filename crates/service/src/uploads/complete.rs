//! `complete`: the parts become the object, atomically, with the SHA-256 checked.
//!
//! Servers sharing a store take turns through a claim written into the session record
//! (`completing_since`): the one whose claim is written completes, the others wait for its
//! result. A claim older than [`COMPLETE_CLAIM`] belonged to a server that died, and is taken over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::api::{CompletePart, ObjectInfo, PartInfo, UploadState, is_sha256_hex};
use ferry_core::etag::bare_etag;
use ferry_core::plan::{LayoutError, PartPlan};
use ferry_store::{Condition, StoreError};
use time::OffsetDateTime;

use super::Service;
use crate::error::{Invalid, Refused, ServiceError};
use crate::session::Session;

/// How long a claim to complete holds before another server may take over (its holder died).
const COMPLETE_CLAIM: Duration = Duration::from_secs(300);
/// How often a server waiting on another's claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(100);
/// How long a server that found an upload completed by another waits for that one's record.
const RECORD_WAIT: Duration = Duration::from_secs(30);
const CLOCK_SKEW: Duration = Duration::from_secs(60);

impl Service {
    /// Assembles the object. `check`, when given, must name every part with the ETag the store
    /// holds; `sha256`, when given (or given at create), must be the object's. Completing again
    /// returns the same result.
    pub async fn complete(
        self: &Arc<Self>,
        upload_id: &str,
        check: Option<Vec<CompletePart>>,
        sha256: Option<String>,
    ) -> Result<ObjectInfo, ServiceError> {
        if sha256.as_deref().is_some_and(|sha| !is_sha256_hex(sha)) {
            return Err(Invalid::Sha256.into());
        }
        let sha256 = sha256.map(|s| s.to_ascii_lowercase());
        if let Some(done) = self.completed_result(upload_id).await? {
            return match (sha256, &done.sha256) {
                (Some(given), Some(stored)) if given != *stored => Err(sha_mismatch(&given, stored)),
                _ => Ok(done),
            };
        }
        let locks = self.locks(upload_id);
        let _ops = locks.ops.lock().await;
        let _exclusive = locks.parts.write().await;
        for _ in 0..3 {
            // Another complete may have finished while this one waited.
            if let Some(done) = self.completed_result(upload_id).await? {
                return Ok(done);
            }
            let (mut session, version) = self.load(upload_id).await?;
            let now = self.clock.now();
            if let (UploadState::Completed, Some(done)) = (session.state, &session.result) {
                return Ok(done.clone());
            }
            session.require_open(now)?;
            if session.completing_since.is_some_and(|since| now - since < COMPLETE_CLAIM) {
                self.await_claim(upload_id).await?;
                continue;
            }
            session.completing_since = Some(now);
            if let Err(e) = self.save(&session, Condition::IfMatch(version)).await {
                if e.is_concurrent_update() {
                    continue;
                }
                return Err(e);
            }
            // On a store whose conditional write is not atomic (s3s-fs checks, then writes) two
            // claims can both be written: the one read back is the one that stands.
            let (read_back, version) = self.load(upload_id).await?;
            if read_back.completing_since != Some(now) {
                self.await_claim(upload_id).await?;
                continue;
            }
            let result = match self.complete_claimed(&mut session, version, check.as_deref(), sha256.as_deref()).await {
                Err(e) if self.completed_elsewhere(&session, &e).await => self.await_result(upload_id).await?.ok_or(e),
                result => result,
            };
            if result.is_err() {
                self.release_claim(upload_id, now).await;
            }
            return result;
        }
        Err(Refused::CompleteInProgress.into())
    }

    /// Waits until no other server is completing the upload (or its claim is stale).
    async fn await_claim(&self, upload_id: &str) -> Result<(), ServiceError> {
        let deadline = self.clock.now() + COMPLETE_CLAIM;
        while self.clock.now() < deadline {
            self.clock.sleep(CLAIM_POLL).await;
            let (session, _) = self.load(upload_id).await?;
            let now = self.clock.now();
            if session.state_at(now) != UploadState::Uploading
                || session.completing_since.is_none_or(|since| now - since >= COMPLETE_CLAIM)
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether `error` may only mean that another server completed the upload meanwhile: its
    /// parts were consumed, and the object at the key is newer than the upload (give or take
    /// [`CLOCK_SKEW`] between this server and the store, whose times have whole seconds).
    async fn completed_elsewhere(&self, session: &Session, error: &ServiceError) -> bool {
        let consumed = matches!(
            error,
            ServiceError::Invalid(Invalid::MissingParts { .. })
                | ServiceError::Store(
                    StoreError::NoSuchUpload | StoreError::MissingPart(_) | StoreError::ConditionFailed
                )
        );
        consumed
            && self
                .store
                .head_object(&session.key)
                .await
                .is_ok_and(|o| o.last_modified >= session.created_at - CLOCK_SKEW)
    }

    /// The completed result once the server completing the upload has recorded it.
    async fn await_result(&self, upload_id: &str) -> Result<Option<ObjectInfo>, ServiceError> {
        let deadline = self.clock.now() + RECORD_WAIT;
        loop {
            if let Some(done) = self.completed_result(upload_id).await? {
                return Ok(Some(done));
            }
            if self.clock.now() >= deadline {
                return Ok(None);
            }
            self.clock.sleep(CLAIM_POLL).await;
        }
    }

    /// Clears this server's claim after a complete that failed, so the upload can be completed again.
    async fn release_claim(&self, upload_id: &str, claimed_at: OffsetDateTime) {
        if let Ok((mut session, version)) = self.load(upload_id).await
            && session.state == UploadState::Uploading
            && session.completing_since == Some(claimed_at)
        {
            session.completing_since = None;
            if let Err(e) = self.save(&session, Condition::IfMatch(version)).await {
                tracing::warn!(upload_id, error = %e, "could not release the claim to complete");
            }
        }
    }

    async fn complete_claimed(
        self: &Arc<Self>,
        session: &mut Session,
        version: String,
        check: Option<&[CompletePart]>,
        sha256: Option<&str>,
    ) -> Result<ObjectInfo, ServiceError> {
        let upload_id = session.upload_id.clone();
        let upload_id = upload_id.as_str();
        let multipart = session.multipart();
        let stored = self.store.list_parts(&multipart).await?;
        if session.open_ended {
            // The parts say what the object is: those the client names (all, if it names none).
            let named: Option<Vec<u32>> = check.map(|c| c.iter().map(|p| p.part_number).collect());
            let sizes: Vec<(u32, u64)> = stored
                .iter()
                .filter(|p| named.as_ref().is_none_or(|n| n.contains(&p.part_number)))
                .map(|p| (p.part_number, p.size))
                .collect();
            let plan = PartPlan::from_uploaded(&sizes, &self.store.limits()).map_err(Invalid::Layout)?;
            // Parts stored in place were cut at the session's part size: they must be that size.
            let cut = session.part_size;
            if cut != 0 && plan.part_count() > 1 && plan.part_size() != cut {
                let part = 1;
                return Err(
                    Invalid::Layout(LayoutError::Irregular { part, size: plan.part_size(), expected: cut }).into()
                );
            }
            (session.size, session.part_size, session.part_count) = (plan.size(), plan.part_size(), plan.part_count());
        }
        let plan = session.plan()?;
        let by_number: HashMap<u32, &PartInfo> = stored.iter().map(|p| (p.part_number, p)).collect();
        let missing: Vec<u32> = plan
            .parts()
            .filter(|s| by_number.get(&s.part_number).is_none_or(|p| p.size != s.size))
            .map(|s| s.part_number)
            .collect();
        if !missing.is_empty() {
            return Err(Invalid::MissingParts { missing, count: plan.part_count() }.into());
        }
        if let Some(check) = check {
            check_etags(check, &by_number, plan.part_count())?;
        }
        // Where the store lists parts without ETags, the client's list names them.
        let reported: HashMap<u32, &str> =
            check.unwrap_or_default().iter().map(|c| (c.part_number, c.etag.as_str())).collect();
        let parts: Vec<PartInfo> = plan
            .parts()
            .filter_map(|s| by_number.get(&s.part_number).map(|p| (*p).clone()))
            .map(|mut p| {
                if p.etag.is_empty() {
                    p.etag = reported.get(&p.part_number).map(|e| ferry_core::etag::quote_etag(e)).unwrap_or_default();
                }
                p
            })
            .collect();
        let expected = match (&session.sha256, sha256) {
            (Some(at_create), Some(now)) if at_create != now => return Err(sha_mismatch(now, at_create)),
            (at_create, now) => at_create.clone().or_else(|| now.map(str::to_owned)),
        };
        let info = self.store.complete_multipart(&multipart, &parts, expected.as_deref(), session.meta()).await?;
        if let Some(recorded) = self.record_completed(session, version, &info).await? {
            // Another server recorded the same object first, and told about it.
            return Ok(recorded);
        }
        if let Err(e) = self.store.discard_completed_parts(&multipart).await {
            tracing::warn!(upload_id, error = %e, "completed, but its parts could not be removed");
        }
        self.upload_completed(session, &info).await;
        Ok(info)
    }

    /// Records the assembled object in the session. The object exists whatever else changed in
    /// the record meanwhile (another server's claim, or its own record of the same object), so
    /// a write that loses is read again and retried. Returns the other's result if another
    /// server recorded it first.
    async fn record_completed(
        &self,
        session: &mut Session,
        mut version: String,
        info: &ObjectInfo,
    ) -> Result<Option<ObjectInfo>, ServiceError> {
        for _ in 0..5 {
            if let (UploadState::Completed, Some(recorded)) = (session.state, &session.result) {
                return Ok(Some(recorded.clone()));
            }
            session.transition(UploadState::Completed, self.clock.now())?;
            session.result = Some(info.clone());
            session.completing_since = None;
            match self.save(session, Condition::IfMatch(version)).await {
                Ok(_) => {
                    self.metrics.upload_entered(UploadState::Completed);
                    return Ok(None);
                }
                Err(e) if e.is_concurrent_update() => (*session, version) = self.load(&session.upload_id).await?,
                Err(e) => return Err(e),
            }
        }
        Err(Refused::CompleteInProgress.into())
    }

    async fn completed_result(&self, upload_id: &str) -> Result<Option<ObjectInfo>, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        Ok(match (session.state, session.result) {
            (UploadState::Completed, Some(result)) => Some(result),
            _ => None,
        })
    }
}

fn sha_mismatch(given: &str, actual: &str) -> ServiceError {
    Refused::Sha256Mismatch { given: given.to_owned(), actual: actual.to_owned() }.into()
}

/// The client's ETag list must name every part once, each with the ETag the server holds.
fn check_etags(check: &[CompletePart], stored: &HashMap<u32, &PartInfo>, part_count: u32) -> Result<(), Invalid> {
    let mut seen = vec![false; part_count as usize + 1];
    for c in check {
        let Some(slot) = seen.get_mut(c.part_number as usize).filter(|_| c.part_number > 0) else {
            return Err(Invalid::PartNumber { part: c.part_number, count: part_count });
        };
        if std::mem::replace(slot, true) {
            return Err(Invalid::PartListedTwice(c.part_number));
        }
        let held = stored.get(&c.part_number).map(|p| bare_etag(&p.etag)).unwrap_or_default();
        // An empty ETag: the store does not say, so there is nothing to check against.
        if !held.is_empty() && held != bare_etag(&c.etag) {
            return Err(Invalid::Etag { part: c.part_number, held: held.to_owned(), given: c.etag.clone() });
        }
    }
    let unlisted = seen.iter().skip(1).filter(|s| !**s).count();
    if unlisted > 0 {
        return Err(Invalid::PartsLeftOut { unlisted, count: part_count });
    }
    Ok(())
}
