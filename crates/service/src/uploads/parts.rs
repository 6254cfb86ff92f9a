//! Part bodies, and reports of parts a client stored straight in the store.

use std::sync::Arc;

use ferry_core::api::PartInfo;
use ferry_core::etag::bare_etag;
use ferry_store::{ByteStream, StoreError};

use super::Service;
use crate::error::{Invalid, NotFound, Refused, ServiceError};

impl Service {
    /// Stores one part body, replacing an earlier copy. `content_length` is what the client
    /// declared (an upload of unknown size needs it); the caller counts the bytes it reads.
    pub async fn put_part(
        self: &Arc<Self>,
        upload_id: &str,
        part_number: u32,
        content_length: Option<u64>,
        body: ByteStream,
    ) -> Result<PartInfo, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        session.require_open(self.clock.now())?;
        if session.open_ended && content_length.is_none() {
            return Err(Invalid::LengthRequired.into());
        }
        let span = self.part_span(&session, part_number, content_length)?;
        if let Some(len) = content_length
            && len != span.size
        {
            return Err(Invalid::PartSize { part: part_number, expected: span.size, given: len }.into());
        }
        let locks = self.locks(upload_id);
        let _shared = locks.parts.read().await;
        // Complete or cancel may have happened while this request waited for the lock.
        let (session, _) = self.load(upload_id).await?;
        session.require_open(self.clock.now())?;
        let part = match self.store.put_part(&session.multipart(), span, body).await {
            Err(StoreError::NoSuchUpload) => {
                let (session, _) = self.load(upload_id).await?;
                session.require_open(self.clock.now())?;
                return Err(StoreError::NoSuchUpload.into());
            }
            other => other?,
        };
        self.metrics.parts_received.inc();
        self.part_stored(&session, &part).await;
        Ok(part)
    }

    /// A part the client reports it stored straight in the store: confirmed with the store
    /// before it is recorded and processed.
    pub async fn part_done(
        self: &Arc<Self>,
        upload_id: &str,
        part_number: u32,
        etag: &str,
        size: u64,
    ) -> Result<PartInfo, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        session.require_open(self.clock.now())?;
        self.part_span(&session, part_number, None)?;
        let part = self.store.head_part(&session.multipart(), part_number).await?;
        let mut part = part.ok_or(NotFound::Part(part_number))?;
        // A store that lists parts without ETags can confirm only the size.
        if part.etag.is_empty() {
            part.etag = ferry_core::etag::quote_etag(etag);
        }
        if bare_etag(&part.etag) != bare_etag(etag) || part.size != size {
            return Err(Refused::PartMismatch {
                part: part_number,
                stored_size: part.size,
                stored_etag: part.etag,
                size,
                etag: etag.to_owned(),
            }
            .into());
        }
        // A part that came through this server was recorded when it was stored.
        if !self.events.knows_part(session.log_spec(), part_number, &part.etag).await {
            self.part_stored(&session, &part).await;
        }
        Ok(part)
    }
}
