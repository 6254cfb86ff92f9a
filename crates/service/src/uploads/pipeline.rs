//! What follows a session's changes: its events, its processing and its webhooks.
//!
//! A stored part is recorded in the upload's event log before the PUT is answered, then handed to
//! the part processor (if the upload named one) in the background; each outcome is recorded as
//! `part_processed`, and the log's tally derives `partial_result` and `final_result`. A completed
//! upload with a complete processor has the assembled object processed. Terminal events go to the
//! webhook. After a restart, `recover` finds what was left unfinished — parts stored
//! but not recorded or not processed, objects not processed, terminal events not recorded,
//! webhooks not delivered — and carries it on.

use std::sync::Arc;

use ferry_core::api::{ObjectInfo, PartInfo, Reprocessing, UploadState};
use ferry_core::etag::bare_etag;
use ferry_core::events::{
    FinalResult, FinalStatus, MAX_FINAL_RESULT, MAX_PART_RESULT, ProcessorKind, UploadEvent, cut,
};
use ferry_core::plan::PartSpan;
use ferry_store::StoreError;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::Service;
use crate::error::{Invalid, Refused, ServiceError};
use crate::processing::{Input, Outcome};
use crate::session::Session;

impl Service {
    /// Appends `event` to the session's log, and sends what calls for it to the webhook. A log
    /// that cannot be written is logged, not failed: the event's cause already happened.
    pub(crate) async fn record(self: &Arc<Self>, session: &Session, event: UploadEvent) {
        let appended = match self.events.emit(session.log_spec(), event).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(upload_id = %session.upload_id, error = %e, "could not record an event");
                return;
            }
        };
        let Some(url) = &session.webhook_url else { return };
        for record in appended.iter().filter(|r| {
            matches!(
                r.event,
                UploadEvent::Completed { .. }
                    | UploadEvent::FinalResult(_)
                    | UploadEvent::Failed { .. }
                    | UploadEvent::Cancelled
                    | UploadEvent::Expired
            )
        }) {
            self.webhooks.deliver(&session.upload_id, &session.key, url, record).await;
        }
    }

    /// A part is stored: record it and process it.
    pub(crate) async fn part_stored(self: &Arc<Self>, session: &Session, part: &PartInfo) {
        let event =
            UploadEvent::PartReceived { part_number: part.part_number, size: part.size, etag: part.etag.clone() };
        self.record(session, event).await;
        if session.processor_kind == Some(ProcessorKind::Part) {
            self.spawn_part(session.upload_id.clone(), part.part_number);
        }
    }

    pub(crate) async fn upload_completed(self: &Arc<Self>, session: &Session, info: &ObjectInfo) {
        let event = UploadEvent::Completed {
            key: info.key.clone(),
            size: info.size,
            sha256: info.sha256.clone(),
            etag: info.etag.clone(),
        };
        self.record(session, event).await;
        if session.processor_kind == Some(ProcessorKind::Complete) {
            self.spawn_object(session.upload_id.clone());
        }
    }

    fn spawn_part(self: &Arc<Self>, upload_id: String, part_number: u32) {
        let this = Arc::clone(self);
        let pending = self.runner.track(&upload_id);
        tokio::spawn(async move {
            let _pending = pending;
            if let Err(e) = this.process_part(&upload_id, part_number).await {
                tracing::warn!(upload_id, part_number, error = %e, "could not process a part");
            }
        });
    }

    fn spawn_object(self: &Arc<Self>, upload_id: String) {
        let this = Arc::clone(self);
        let pending = self.runner.track(&upload_id);
        tokio::spawn(async move {
            let _pending = pending;
            if let Err(e) = this.process_object(&upload_id).await {
                tracing::warn!(upload_id, error = %e, "could not process the object");
            }
        });
    }

    /// Runs the part processor on one part, once a processing slot is free.
    async fn process_part(self: &Arc<Self>, upload_id: &str, part_number: u32) -> Result<(), ServiceError> {
        let Some(slot) = self.runner.slot(upload_id).await else { return Ok(()) };
        // Read now, not when queued: the upload may have completed or gone meanwhile.
        let (session, _) = self.load(upload_id).await?;
        let Some(span) = session.plan()?.part(part_number) else { return Ok(()) };
        let Some(name) = session.processor.as_deref() else { return Ok(()) };
        let spec = self.config.processors.get(name).filter(|s| s.kind == ProcessorKind::Part);
        let outcome = match spec {
            None => Outcome::failed(format!("processor {name:?} is no longer configured on this server")),
            Some(spec) => {
                let Some(input) = self.part_bytes(&session, span).await? else { return Ok(()) };
                let env = [
                    ("FERRY_UPLOAD_ID", session.upload_id.clone()),
                    ("FERRY_KEY", session.key.clone()),
                    ("FERRY_SIZE", session.size.to_string()),
                    ("FERRY_PART_NUMBER", span.part_number.to_string()),
                    ("FERRY_PART_OFFSET", span.offset.to_string()),
                    ("FERRY_PART_SIZE", span.size.to_string()),
                    ("FERRY_PART_COUNT", session.part_count.to_string()),
                ];
                match self.runner.run(&slot, spec, &env, Input::Stream(input), MAX_PART_RESULT).await {
                    Some(o) => o,
                    None => return Ok(()),
                }
            }
        };
        drop(slot);
        let event = UploadEvent::PartProcessed {
            part_number,
            ok: outcome.ok,
            result: outcome.ok.then(|| cut(&outcome.output, MAX_PART_RESULT).to_owned()),
            error: outcome.error,
            truncated: outcome.truncated,
        };
        self.record(&session, event).await;
        Ok(())
    }

    /// The part's bytes: from the open upload, or from the object once it is completed. `None`
    /// when there is nothing left to process (cancelled, expired, or the object replaced).
    async fn part_bytes(
        &self,
        session: &Session,
        span: PartSpan,
    ) -> Result<Option<ferry_store::ByteStream>, ServiceError> {
        match session.state_at(self.clock.now()) {
            UploadState::Uploading => match self.store.read_part(&session.multipart(), span).await {
                Ok(s) => return Ok(Some(s)),
                // Completed meanwhile: its parts are in the object now.
                Err(StoreError::NoSuchUpload) => {}
                Err(e) => return Err(e.into()),
            },
            UploadState::Completed => {}
            _ => return Ok(None),
        }
        let (session, _) = self.load(&session.upload_id).await?;
        let Some(result) = session.result.as_ref().filter(|_| session.state == UploadState::Completed) else {
            return Ok(None);
        };
        let reader = match self.store.open_object(&session.key).await {
            Ok(r) => r,
            Err(StoreError::NoSuchObject) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if bare_etag(&reader.info().etag) != bare_etag(&result.etag) {
            tracing::info!(upload_id = %session.upload_id, "the object was replaced before its parts were processed");
            return Ok(None);
        }
        Ok(Some(reader.read(span.offset, span.size)))
    }

    /// Runs the complete processor on the assembled object: a temporary copy of it is the
    /// processor's stdin and `FERRY_OBJECT_PATH`.
    async fn process_object(self: &Arc<Self>, upload_id: &str) -> Result<(), ServiceError> {
        let Some(slot) = self.runner.slot(upload_id).await else { return Ok(()) };
        let (session, _) = self.load(upload_id).await?;
        let (Some(name), Some(result)) = (session.processor.as_deref(), session.result.as_ref()) else {
            return Ok(());
        };
        let spec = self.config.processors.get(name).filter(|s| s.kind == ProcessorKind::Complete);
        let outcome = match spec {
            None => Outcome::failed(format!("processor {name:?} is no longer configured on this server")),
            Some(spec) => match self.object_copy(&session.key, result).await? {
                None => Outcome::failed("the object was replaced or deleted before it was processed".to_owned()),
                Some(copy) => {
                    let stdin = copy.reopen().map_err(StoreError::Io)?;
                    let env = [
                        ("FERRY_UPLOAD_ID", session.upload_id.clone()),
                        ("FERRY_KEY", session.key.clone()),
                        ("FERRY_SIZE", result.size.to_string()),
                        ("FERRY_SHA256", result.sha256.clone().unwrap_or_default()),
                        ("FERRY_OBJECT_PATH", copy.path().display().to_string()),
                    ];
                    match self.runner.run(&slot, spec, &env, Input::File(stdin), MAX_FINAL_RESULT).await {
                        Some(o) => o,
                        None => return Ok(()),
                    }
                }
            },
        };
        drop(slot);
        let status = if outcome.ok { FinalStatus::Completed } else { FinalStatus::Failed };
        let event = UploadEvent::FinalResult(FinalResult {
            status,
            result: if outcome.ok { cut(&outcome.output, MAX_FINAL_RESULT).to_owned() } else { String::new() },
            failed_parts: Vec::new(),
            error: outcome.error,
            truncated: outcome.truncated,
        });
        self.record(&session, event).await;
        Ok(())
    }

    /// A temporary copy of the object `result` describes; `None` if it was replaced or deleted.
    async fn object_copy(
        &self,
        key: &str,
        result: &ObjectInfo,
    ) -> Result<Option<tempfile::NamedTempFile>, ServiceError> {
        let reader = match self.store.open_object(key).await {
            Ok(r) if bare_etag(&r.info().etag) == bare_etag(&result.etag) => r,
            Ok(_) | Err(StoreError::NoSuchObject) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let io = StoreError::Io;
        let copy = tempfile::NamedTempFile::new().map_err(io)?;
        let mut file = tokio::fs::File::from_std(copy.reopen().map_err(io)?);
        let mut body = reader.read(0, result.size);
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk.map_err(io)?).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(Some(copy))
    }

    /// `POST /v1/uploads/{id}/parts/{n}/reprocess`: runs the processor on the part again.
    pub async fn reprocess(self: &Arc<Self>, upload_id: &str, part_number: u32) -> Result<Reprocessing, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        let now = self.clock.now();
        match session.state_at(now) {
            UploadState::Uploading | UploadState::Completed => {}
            _ => session.require_open(now)?,
        }
        if session.processor_kind != Some(ProcessorKind::Part) {
            return Err(Invalid::NoPartProcessor.into());
        }
        let plan = session.plan()?;
        if plan.part(part_number).is_none() {
            return Err(Invalid::PartNumber { part: part_number, count: plan.part_count() }.into());
        }
        let tally = self.events.tally(session.log_spec()).await?;
        if !tally.outcomes().any(|o| o.part_number == part_number) && !tally.unprocessed().contains(&part_number) {
            return Err(Refused::PartNotReceived(part_number).into());
        }
        self.spawn_part(session.upload_id.clone(), part_number);
        Ok(Reprocessing { part_number, queued: true })
    }

    /// Carries on what a previous run of the server left unfinished.
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<(), ServiceError> {
        if let Err(e) = self.webhooks.resume().await {
            tracing::warn!(error = %e, "could not resume webhook deliveries");
        }
        for name in self.store.list_records("sessions/").await? {
            let Some(id) = name.strip_prefix("sessions/") else { continue };
            let Ok((session, _)) = self.load(id).await else { continue };
            if let Err(e) = self.recover_one(&session).await {
                tracing::warn!(upload_id = id, error = %e, "could not recover an upload's processing");
            }
        }
        Ok(())
    }

    async fn recover_one(self: &Arc<Self>, session: &Session) -> Result<(), ServiceError> {
        let tally = self.events.tally(session.log_spec()).await?;
        if tally.is_settled() {
            return Ok(());
        }
        match session.state_at(self.clock.now()) {
            UploadState::Uploading => {
                // Parts stored just before a crash, and not yet recorded.
                let parts = match self.store.list_parts(&session.multipart()).await {
                    Ok(p) => p,
                    Err(StoreError::NoSuchUpload) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                for part in parts.iter().filter(|p| !tally.part_received(p.part_number)) {
                    self.part_stored(session, part).await;
                }
            }
            UploadState::Completed if !tally.is_completed() => {
                if let Some(info) = &session.result {
                    self.upload_completed(session, info).await;
                    return Ok(());
                }
            }
            UploadState::Completed => {
                if session.processor_kind == Some(ProcessorKind::Complete) && tally.final_result().is_none() {
                    self.spawn_object(session.upload_id.clone());
                }
            }
            UploadState::Cancelled => self.record(session, UploadEvent::Cancelled).await,
            UploadState::Expired => self.record(session, UploadEvent::Expired).await,
            UploadState::Failed => {}
        }
        if session.processor_kind == Some(ProcessorKind::Part) {
            for n in tally.unprocessed() {
                self.spawn_part(session.upload_id.clone(), n);
            }
        }
        Ok(())
    }
}
