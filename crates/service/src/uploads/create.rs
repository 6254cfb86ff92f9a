//! New sessions, and signed URLs for their parts.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::api::{CreateUpload, CreatedUpload, PartUrl, UploadState, is_base64_md5, is_sha256_hex};
use ferry_core::events::{ProcessorKind, UploadEvent};
use ferry_core::key::normalize_key;
use ferry_core::plan::{PartPlan, PartSpan};
use ferry_store::{Condition, MultipartOptions, ObjectMeta};

use super::Service;
use crate::error::{Invalid, Refused, ServiceError};
use crate::session::{Session, new_upload_id};
use crate::webhooks;

/// How a session's parts make up its object.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout {
    /// Its size is known: the plan says every part's place and size.
    Planned(PartPlan),
    /// Parts of any size, laid end to end at complete (an Uppy upload, which says no size).
    Uneven,
    /// Parts of this size but the last, which is shorter; how many is known at complete.
    Even(u64),
}

impl Service {
    /// Opens a session for `req.size` bytes and signs a URL for each of its parts.
    pub async fn create(self: &Arc<Self>, req: CreateUpload) -> Result<CreatedUpload, ServiceError> {
        let plan = PartPlan::new(req.size, req.part_size, &self.store.limits())?;
        // Say it now rather than when the disk fills, parts later.
        if let Some(free) = self.store.free_space().await?
            && plan.size() > free
        {
            return Err(Refused::NoSpace { needed: plan.size(), free }.into());
        }
        let session = self.open(req, Layout::Planned(plan)).await?;
        let parts = plan.parts().map(|span| self.part_url(&session, span, None)).collect();
        Ok(CreatedUpload {
            events_url: Some(format!("{}/v1/uploads/{}/events", self.config.public_url, session.upload_id)),
            upload_id: session.upload_id,
            key: session.key,
            size: plan.size(),
            part_size: plan.part_size(),
            part_count: plan.part_count(),
            parts,
            part_checksum: self.store.part_checksum().map(str::to_owned),
            expires_at: session.expires_at,
        })
    }

    /// Opens a session whose size is not known (`req.size` is ignored): parts of any size may
    /// arrive, and `complete` works out the object from them. Uppy uploads are made this way.
    pub async fn create_open_ended(self: &Arc<Self>, req: CreateUpload) -> Result<Session, ServiceError> {
        self.open(req, Layout::Uneven).await
    }

    /// Validates a create request and opens the session, laid out as `layout` says.
    /// What kind of processor `name` is, if this service has it.
    pub fn check_processor(&self, name: &str) -> Result<ProcessorKind, ServiceError> {
        match self.config.processors.get(name) {
            Some(spec) => Ok(spec.kind),
            None => {
                let known: Vec<&str> = self.config.processors.keys().map(String::as_str).collect();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                Err(Invalid::UnknownProcessor { name: name.to_owned(), known }.into())
            }
        }
    }

    pub(crate) async fn open(self: &Arc<Self>, req: CreateUpload, layout: Layout) -> Result<Session, ServiceError> {
        let plan = match layout {
            Layout::Planned(plan) => Some(plan),
            Layout::Uneven | Layout::Even(_) if req.processor.is_some() => {
                return Err(Invalid::ProcessorNeedsSize.into());
            }
            Layout::Uneven | Layout::Even(_) => None,
        };
        let key = normalize_key(&req.name)?;
        if req.sha256.as_deref().is_some_and(|sha| !is_sha256_hex(sha)) {
            return Err(Invalid::Sha256.into());
        }
        let processor_kind = req.processor.as_deref().map(|p| self.check_processor(p)).transpose()?;
        let webhook_url =
            req.webhook_url.as_deref().map(|u| webhooks::check_url(&self.config.webhooks, u)).transpose()?;
        let meta_bytes: usize = req.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if meta_bytes > 8 * 1024 || req.content_type.as_ref().is_some_and(|c| c.len() > 256) {
            return Err(Invalid::MetadataTooLarge.into());
        }
        if req
            .metadata
            .keys()
            .chain(req.metadata.values())
            .chain(req.content_type.iter())
            .any(|s| s.chars().any(char::is_control))
        {
            return Err(Invalid::MetadataControlCharacter.into());
        }
        let now = self.clock.now();
        let upload_id = new_upload_id()?;
        let meta = ObjectMeta { content_type: req.content_type.clone(), metadata: req.metadata.clone() };
        let options = MultipartOptions {
            readable_parts: processor_kind == Some(ProcessorKind::Part),
            unknown_sizes: matches!(layout, Layout::Uneven),
        };
        // Parts may arrive as soon as the client has the answer, so the store is ready first.
        let multipart = self.store.create_multipart(&upload_id, &key, &meta, options).await?;
        let session = Session {
            upload_id,
            key,
            store_id: multipart.store_id,
            parts_as_objects: multipart.parts_as_objects,
            name: req.name,
            size: plan.map_or(0, |p| p.size()),
            part_size: match layout {
                Layout::Planned(p) => p.part_size(),
                Layout::Even(part_size) => part_size,
                Layout::Uneven => 0,
            },
            part_count: plan.map_or(0, |p| p.part_count()),
            sha256: req.sha256.map(|s| s.to_ascii_lowercase()),
            content_type: req.content_type,
            metadata: req.metadata,
            state: UploadState::Uploading,
            created_at: now,
            updated_at: now,
            expires_at: now + self.config.session_ttl,
            result: None,
            completing_since: None,
            processor: req.processor,
            processor_kind,
            webhook_url,
            open_ended: plan.is_none(),
        };
        self.save(&session, Condition::IfAbsent).await?;
        self.metrics.upload_entered(UploadState::Uploading);
        let event = UploadEvent::Initialized {
            upload_id: session.upload_id.clone(),
            key: session.key.clone(),
            size: session.size,
            part_size: session.part_size,
            part_count: session.part_count,
            processor: session.processor.clone(),
        };
        self.record(&session, event).await;
        Ok(session)
    }

    /// Fresh URLs for `part_numbers`; a part with a `content_md5` gets a URL bound to it.
    pub async fn sign(
        &self,
        upload_id: &str,
        part_numbers: &[u32],
        content_md5: &BTreeMap<u32, String>,
    ) -> Result<Vec<PartUrl>, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        session.require_open(self.clock.now())?;
        let count = self.part_count_bound(&session)?;
        if part_numbers.len() > count as usize {
            return Err(Invalid::TooManyPartNumbers.into());
        }
        if let Some((n, _)) = content_md5.iter().find(|(_, md5)| !is_base64_md5(md5)) {
            return Err(Invalid::ContentMd5(*n).into());
        }
        if let Some(n) = content_md5.keys().find(|n| !part_numbers.contains(n)) {
            return Err(Invalid::ContentMd5Unsigned(*n).into());
        }
        part_numbers
            .iter()
            .map(|&n| {
                let span = self.part_span(&session, n, None)?;
                Ok(self.part_url(&session, span, content_md5.get(&n).map(String::as_str)))
            })
            .collect()
    }

    /// The highest part number the session takes: its plan's, or the store's limit for an
    /// open-ended session.
    fn part_count_bound(&self, session: &Session) -> Result<u32, ServiceError> {
        if session.open_ended { Ok(self.store.limits().max_parts) } else { Ok(session.plan()?.part_count()) }
    }

    /// Part `n` of the session. For an open-ended session, its size is the request's
    /// `Content-Length` (needed when storing it; `None` when only signing), and its offset is
    /// known only when its parts are known to be equal.
    pub(crate) fn part_span(
        &self,
        session: &Session,
        n: u32,
        content_length: Option<u64>,
    ) -> Result<PartSpan, ServiceError> {
        if !session.open_ended {
            let plan = session.plan()?;
            return plan.part(n).ok_or_else(|| Invalid::PartNumber { part: n, count: plan.part_count() }.into());
        }
        let limits = self.store.limits();
        if n == 0 || n > limits.max_parts {
            return Err(Invalid::PartNumber { part: n, count: limits.max_parts }.into());
        }
        let size = content_length.unwrap_or(0);
        if size > limits.max_part_size {
            return Err(Invalid::PartTooLarge { max: limits.max_part_size }.into());
        }
        let offset = u64::from(n - 1) * session.part_size;
        Ok(PartSpan { part_number: n, offset, size })
    }
}
