//! A session's life beyond its parts: status, lists, cancel, and expiry (swept in the background).

use std::sync::Arc;

use ferry_core::api::{ProcessingStatus, UploadState, UploadStatus, UploadSummary};
use ferry_core::events::UploadEvent;
use ferry_store::{Condition, StoreError};

use super::Service;
use crate::error::{NotFound, ServiceError};

impl Service {
    /// What the session is, what it holds, and what processing and webhooks made of it.
    pub async fn status(&self, upload_id: &str) -> Result<UploadStatus, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        let processing = match (&session.processor, session.processor_kind) {
            (Some(name), Some(kind)) => {
                let tally = self.events.tally(session.log_spec()).await?;
                let progress = tally.progress();
                Some(ProcessingStatus {
                    processor: name.clone(),
                    kind,
                    parts_processed: progress.parts_processed,
                    parts_failed: progress.parts_failed,
                    parts: tally.outcomes().cloned().collect(),
                    final_result: tally.final_result().cloned(),
                })
            }
            _ => None,
        };
        let webhook = match &session.webhook_url {
            Some(url) => Some(
                self.webhooks
                    .status(upload_id)
                    .await?
                    .unwrap_or_else(|| ferry_core::api::WebhookStatus { url: url.clone(), deliveries: Vec::new() }),
            ),
            None => None,
        };
        let state = session.state_at(self.clock.now());
        let parts = if state == UploadState::Uploading {
            match self.store.list_parts(&session.multipart()).await {
                Ok(parts) => parts,
                Err(StoreError::NoSuchUpload) => Vec::new(),
                Err(e) => return Err(e.into()),
            }
        } else {
            Vec::new()
        };
        let bytes_received = match (&session.result, state) {
            (Some(r), UploadState::Completed) => r.size,
            _ => parts.iter().map(|p| p.size).sum(),
        };
        Ok(UploadStatus {
            upload_id: session.upload_id,
            key: session.key,
            name: session.name,
            state,
            size: session.size,
            part_size: session.part_size,
            part_count: session.part_count,
            parts,
            bytes_received,
            part_checksum: self.store.part_checksum().map(str::to_owned),
            sha256: session.sha256,
            content_type: session.content_type,
            metadata: session.metadata,
            created_at: session.created_at,
            updated_at: session.updated_at,
            expires_at: session.expires_at,
            result: session.result,
            processing,
            webhook,
        })
    }

    /// Cancels an open session and deletes its parts. Repeating it is fine.
    pub async fn cancel(self: &Arc<Self>, upload_id: &str) -> Result<UploadStatus, ServiceError> {
        let locks = self.locks(upload_id);
        {
            let _ops = locks.ops.lock().await;
            let mut attempts = 0;
            let session = loop {
                let (mut session, version) = self.load(upload_id).await?;
                let now = self.clock.now();
                match session.state_at(now) {
                    UploadState::Uploading => {
                        session.transition(UploadState::Cancelled, now)?;
                        match self.save(&session, Condition::IfMatch(version)).await {
                            Ok(_) => {
                                self.metrics.upload_entered(UploadState::Cancelled);
                                self.runner.cancel(upload_id);
                                self.record(&session, UploadEvent::Cancelled).await;
                            }
                            // Another server changed it meanwhile: look again at what it did.
                            Err(e) if e.is_concurrent_update() && attempts < 3 => {
                                attempts += 1;
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    UploadState::Cancelled => {}
                    _ => session.require_open(now)?,
                }
                break session;
            };
            // Also on a repeat: a crash between the record and the deletion leaves parts behind.
            self.store.abort_multipart(&session.multipart()).await?;
        }
        self.status(upload_id).await
    }

    /// Every session (in `filter`'s state), newest first.
    pub async fn list(&self, filter: Option<UploadState>) -> Result<Vec<UploadSummary>, ServiceError> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for name in self.store.list_records("sessions/").await? {
            let Some(id) = name.strip_prefix("sessions/") else {
                continue;
            };
            match self.load(id).await {
                Ok((s, _)) if filter.is_none_or(|f| s.state_at(now) == f) => out.push(s.summary(now)),
                Ok(_) | Err(ServiceError::NotFound(NotFound::Upload)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.upload_id.cmp(&b.upload_id)));
        Ok(out)
    }

    /// Marks overdue open sessions expired and deletes their parts. Returns how many expired.
    pub async fn expire_overdue(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let mut expired = 0;
        for name in self.store.list_records("sessions/").await? {
            let Some(id) = name.strip_prefix("sessions/") else {
                continue;
            };
            let Ok((session, _)) = self.load(id).await else {
                continue;
            };
            let overdue = |s: &crate::session::Session| {
                s.state == UploadState::Uploading && s.state_at(self.clock.now()) == UploadState::Expired
            };
            if !overdue(&session) {
                continue;
            }
            let locks = self.locks(id);
            let _ops = locks.ops.lock().await;
            let (mut session, version) = self.load(id).await?;
            if !overdue(&session) {
                continue;
            }
            session.transition(UploadState::Expired, self.clock.now())?;
            match self.save(&session, Condition::IfMatch(version)).await {
                Ok(_) => {}
                // Another server's sweep (or a complete) got there first.
                Err(e) if e.is_concurrent_update() => continue,
                Err(e) => return Err(e),
            }
            self.metrics.upload_entered(UploadState::Expired);
            self.runner.cancel(id);
            self.record(&session, UploadEvent::Expired).await;
            self.store.abort_multipart(&session.multipart()).await?;
            expired += 1;
        }
        Ok(expired)
    }

    /// Carries on what an earlier run left unfinished, then [sweeps](Service::sweep) every
    /// `sweep_interval`, until the future is dropped.
    pub async fn run_background(self: Arc<Self>) {
        if let Err(e) = self.recover().await {
            tracing::warn!(error = %e, "could not look for unfinished processing and webhooks");
        }
        loop {
            self.sweep().await;
            self.clock.sleep(self.config.sweep_interval).await;
        }
    }

    /// One round of background work, safe on every instance at once: expires overdue sessions
    /// (each expiry is a conditional write of the session, so of two instances expiring one
    /// upload, one does and the other skips) and takes over the webhook deliveries no instance
    /// is making (each is made under a lease on the bus).
    pub async fn sweep(self: &Arc<Self>) {
        match self.expire_overdue().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired overdue uploads"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
        match self.webhooks.resume().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "took over webhook deliveries"),
            Err(e) => tracing::warn!(error = %e, "webhook sweep failed"),
        }
    }
}
