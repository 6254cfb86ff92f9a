//! The S3 side of multipart uploads: creating, listing, aborting and assembling them.
//!
//! An upload whose parts must be readable before it completes (one with a per-part processor)
//! keeps each part as an object of its own under `{prefix}.ferry/parts/{upload_id}/`, with a
//! marker there while it is open; `complete` then makes the multipart upload and fills it with
//! server-side copies (UploadPartCopy: no byte passes through ferry).

use std::time::Duration;

use ferry_core::api::{ObjectInfo, PartInfo};
use ferry_core::etag::{bare_etag, quote_etag};
use ferry_store::{Multipart, StoreError};
use futures_util::StreamExt as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method as HttpMethod;

use crate::signing::Method;
use crate::store::{REQUEST_TTL, RESERVED, S3Store};
use crate::xml;

/// Percent-encodes an `x-amz-copy-source` key, keeping its `/` separators.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

impl S3Store {
    /// One page of a native upload's parts, after `marker`.
    pub(crate) async fn list_part_page(
        &self,
        upload: &Multipart,
        marker: u32,
        max: Option<u32>,
    ) -> Result<(Vec<PartInfo>, Option<u32>), StoreError> {
        let key = self.object_key(&upload.key)?;
        let marker_s = marker.to_string();
        let max_s = max.map(|m| m.to_string());
        let mut query = vec![("uploadId", upload.store_id.as_str())];
        if marker > 0 {
            query.push(("part-number-marker", marker_s.as_str()));
        }
        if let Some(m) = &max_s {
            query.push(("max-parts", m.as_str()));
        }
        let url = self.inner.signer.url(Method::Get, Some(&key), &query, &[], REQUEST_TTL);
        let text = self.send_for_text(self.request(HttpMethod::GET, url), "listing parts").await?;
        let page = xml::parts_page(&text, marker)?;
        Ok((page.parts, page.next_marker))
    }

    /// Where part `n` of an upload with `parts_as_objects` is kept until completion.
    pub(crate) fn part_object_key(&self, upload: &Multipart, n: u32) -> String {
        format!("{}{RESERVED}parts/{}/{n:05}", self.inner.prefix, upload.upload_id)
    }

    /// Present while an upload with `parts_as_objects` is open.
    pub(crate) fn open_marker_key(&self, upload: &Multipart) -> String {
        format!("{}{RESERVED}parts/{}/open", self.inner.prefix, upload.upload_id)
    }

    pub(crate) fn parts_folder(&self, upload: &Multipart) -> String {
        format!("{}{RESERVED}parts/{}/", self.inner.prefix, upload.upload_id)
    }

    /// The part objects of an open upload; `NoSuchUpload` once it is completed or aborted.
    pub(crate) async fn list_part_objects(&self, upload: &Multipart) -> Result<Vec<PartInfo>, StoreError> {
        let folder = self.parts_folder(upload);
        let listed = self.list_keys(&folder, None).await?;
        if !listed.iter().any(|l| l.key == self.open_marker_key(upload)) {
            return Err(StoreError::NoSuchUpload);
        }
        let mut parts: Vec<PartInfo> = listed
            .into_iter()
            .filter_map(|l| {
                let part_number = l.key.strip_prefix(folder.as_str())?.parse().ok()?;
                Some(PartInfo { part_number, size: l.size, etag: l.etag })
            })
            .collect();
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    /// CreateMultipartUpload; its `UploadId`.
    pub(crate) async fn start_multipart(&self, s3_key: &str, content_type: Option<&str>) -> Result<String, StoreError> {
        let url = self.inner.signer.url(Method::Post, Some(s3_key), &[("uploads", "")], &[], REQUEST_TTL);
        let mut req = self.request(HttpMethod::POST, url);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        xml::upload_id(&self.send_for_text(req, "creating a multipart upload").await?)
    }

    pub(crate) async fn abort_store_upload(
        &self,
        s3_key: &str,
        store_id: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let url = self.inner.signer.url(Method::Delete, Some(s3_key), &[("uploadId", store_id)], &[], REQUEST_TTL);
        match self.send(self.request(HttpMethod::DELETE, url), "aborting a multipart upload").await {
            Ok(_) | Err(StoreError::NoSuchUpload) => Ok(()),
            // Some services (s3s-fs) deny an upload id they no longer know instead of answering
            // NoSuchUpload. Should it really be a missing permission, the bucket's lifecycle rule
            // for incomplete uploads still removes the parts.
            Err(StoreError::Remote { status: 403, code, .. }) if code == "AccessDenied" => {
                tracing::warn!(upload = %upload_id, "aborting was denied; taking the upload as already gone");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Assembles the part objects of `upload` into a new multipart upload of `s3_key` with
    /// server-side copies. Returns its `UploadId` and the copied parts' ETags; on failure the new
    /// multipart upload is aborted.
    pub(crate) async fn copy_parts(
        &self,
        upload: &Multipart,
        s3_key: &str,
        parts: &[PartInfo],
        content_type: Option<&str>,
    ) -> Result<(String, Vec<PartInfo>), StoreError> {
        let store_id = self.start_multipart(s3_key, content_type).await?;
        let copies: Vec<_> = parts.iter().map(|p| Box::pin(self.copy_part(upload, s3_key, &store_id, p))).collect();
        let copies = futures_util::stream::iter(copies).buffered(8).collect::<Vec<_>>().await;
        match copies.into_iter().collect::<Result<Vec<PartInfo>, StoreError>>() {
            Ok(copied) => Ok((store_id, copied)),
            Err(e) => {
                if let Err(abort) = self.abort_store_upload(s3_key, &store_id, &upload.upload_id).await {
                    tracing::warn!(upload = %upload.upload_id, error = %abort, "could not abort a failed assembly");
                }
                Err(e)
            }
        }
    }

    async fn copy_part(
        &self,
        upload: &Multipart,
        s3_key: &str,
        store_id: &str,
        part: &PartInfo,
    ) -> Result<PartInfo, StoreError> {
        let source_key = self.part_object_key(upload, part.part_number);
        let bucket = self.inner.signer.bucket_name();
        let source = format!("/{bucket}/{}", utf8_percent_encode(&source_key, COPY_SOURCE));
        let n = part.part_number.to_string();
        let query = [("partNumber", n.as_str()), ("uploadId", store_id)];
        // The part must still be the one that was checked.
        let if_match = quote_etag(bare_etag(&part.etag));
        let mut headers = vec![("x-amz-copy-source", source.as_str())];
        if !part.etag.is_empty() {
            headers.push(("x-amz-copy-source-if-match", if_match.as_str()));
        }
        let url = self.inner.signer.url(Method::Put, Some(s3_key), &query, &headers, REQUEST_TTL);
        let req = headers.iter().fold(self.request(HttpMethod::PUT, url), |r, (k, v)| r.header(*k, *v));
        let etag = xml::copied_etag(&self.send_for_text(req, "copying a part into the object").await?)?;
        Ok(PartInfo { part_number: part.part_number, size: part.size, etag })
    }

    /// Sends CompleteMultipartUpload; S3 may answer 200 and report a failure in the body.
    pub(crate) async fn send_complete(&self, req: reqwest::RequestBuilder) -> Result<(), StoreError> {
        xml::completed(&self.send_for_text(req, "completing a multipart upload").await?)
    }

    /// The object another complete of `upload` published, if one appears within a few seconds.
    pub(crate) async fn adopt_completed(&self, upload: &Multipart, s3_key: &str, size: u64) -> Option<ObjectInfo> {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let rec = self.object_record(&upload.key).await.ok().flatten();
            let Some(rec) = rec.filter(|r| r.upload_id == upload.upload_id && r.etag.is_some()) else { continue };
            let head = self.head(s3_key).await.ok().flatten()?;
            if head.size == size && rec.etag.as_deref().is_some_and(|e| bare_etag(e) == bare_etag(&head.etag)) {
                return Some(Self::info(&upload.key, &head, Some(&rec)));
            }
        }
        None
    }
}
