//! The S3 store: multipart uploads are S3 multipart uploads, objects are S3 objects under the
//! configured prefix, and records are small JSON objects under `{prefix}.ferry/records/` written
//! with `If-None-Match` / `If-Match`, so several servers can share one bucket.
//!
//! S3 cannot read the parts of an open multipart upload, so `complete` cannot check a SHA-256
//! before it publishes. It records the one it is given (or, given none, reads the object back to
//! compute it) in an object record next to the object, and readers verify it end to end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::api::{ObjectInfo, PartInfo};
use ferry_core::etag::{bare_etag, quote_etag};
use ferry_core::plan::{Limits, PartSpan};
use ferry_store::{
    ByteStream, Condition, DirectPart, Multipart, MultipartOptions, ObjectMeta, ObjectReader, Record, Store,
    StoreError, check_record_name,
};
use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::Method as HttpMethod;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::signing::{Method, Signer};
use crate::xml::{self, Listed};
use crate::{S3_LIMITS, S3Config};

/// Keys under this folder of the prefix hold ferry's records; clients may not name objects there.
pub(crate) const RESERVED: &str = ".ferry/";
/// Lifetime of the signatures on the server's own requests.
pub(crate) const REQUEST_TTL: Duration = Duration::from_secs(300);

/// The store. Cloning shares the connection pool.
#[derive(Clone)]
pub struct S3Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    pub(crate) signer: Signer,
    pub(crate) prefix: String,
    limits: Limits,
}

/// What ferry knows about an object beyond what S3 keeps: written before and after a
/// multipart upload completes, and trusted only while its ETag is the object's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ObjectRecord {
    pub(crate) key: String,
    pub(crate) upload_id: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<String>,
    /// `None` while the upload is being completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) metadata: BTreeMap<String, String>,
}

fn object_record_name(key: &str) -> String {
    format!("objects/{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// An object's `HEAD`.
pub(crate) struct Head {
    pub(crate) size: u64,
    pub(crate) etag: String,
    content_type: Option<String>,
    modified: Option<time::OffsetDateTime>,
}

pub(crate) fn unreachable(what: &str, e: &reqwest::Error) -> StoreError {
    StoreError::Unreachable(format!("{what}: {e}"))
}

impl S3Store {
    pub fn new(config: S3Config) -> Result<S3Store, String> {
        let signer = Signer::new(&config)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let limits = S3_LIMITS.with_max_object_size(config.max_object_size.min(S3_LIMITS.max_object_size));
        Ok(S3Store { inner: Arc::new(Inner { http, signer, prefix: config.prefix, limits }) })
    }

    /// Checks that the bucket answers and the credentials are accepted, so a misconfigured server
    /// stops at start-up rather than at its first upload.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.list_keys(&format!("{}{RESERVED}", self.inner.prefix), Some(1)).await.map(|_| ())
    }

    pub(crate) fn object_key(&self, key: &str) -> Result<String, StoreError> {
        if key.starts_with(RESERVED) || key == RESERVED.trim_end_matches('/') {
            return Err(StoreError::ReservedKey(key.to_owned()));
        }
        Ok(format!("{}{key}", self.inner.prefix))
    }

    fn record_key(&self, name: &str) -> Result<String, StoreError> {
        check_record_name(name)?;
        Ok(format!("{}{RESERVED}records/{name}.json", self.inner.prefix))
    }

    /// Sends a signed request; any status but 2xx becomes the S3 error it carries.
    pub(crate) async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, StoreError> {
        let res = req.send().await.map_err(|e| unreachable(what, &e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        Err(xml::s3_error(status, &body, what))
    }

    /// Sends a signed request and reads its answer as text.
    pub(crate) async fn send_for_text(&self, req: reqwest::RequestBuilder, what: &str) -> Result<String, StoreError> {
        let res = self.send(req, what).await?;
        res.text().await.map_err(|e| unreachable(what, &e))
    }

    pub(crate) fn request(&self, method: HttpMethod, url: Url) -> reqwest::RequestBuilder {
        self.inner.http.request(method, url.as_str())
    }

    pub(crate) async fn list_keys(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            }
            let max = limit.map(|l| l.to_string());
            if let Some(m) = &max {
                query.push(("max-keys", m.as_str()));
            }
            let url = self.inner.signer.url(Method::Get, None, &query, &[], REQUEST_TTL);
            let text = self.send_for_text(self.request(HttpMethod::GET, url), "listing objects").await?;
            let page = xml::objects_page(&text)?;
            out.extend(page.listed);
            if limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        let url = self.inner.signer.url(Method::Head, Some(key), &[], &[], REQUEST_TTL);
        let res = match self.send(self.request(HttpMethod::HEAD, url), "looking up an object").await {
            Err(StoreError::NoSuchObject) => return Ok(None),
            other => other?,
        };
        let h = res.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let size = text("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let etag = text("etag").map(|e| quote_etag(bare_etag(&e))).unwrap_or_default();
        let modified = text("last-modified")
            .and_then(|v| time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc2822).ok());
        Ok(Some(Head { size, etag, content_type: text("content-type"), modified }))
    }

    pub(crate) async fn object_record(&self, key: &str) -> Result<Option<ObjectRecord>, StoreError> {
        let Some(rec) = self.get_record(&object_record_name(key)).await? else { return Ok(None) };
        Ok(serde_json::from_slice(&rec.bytes).ok())
    }

    async fn save_object_record(&self, rec: &ObjectRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_record(&object_record_name(&rec.key), bytes, Condition::Any).await.map(|_| ())
    }

    pub(crate) fn info(key: &str, head: &Head, rec: Option<&ObjectRecord>) -> ObjectInfo {
        let rec = rec.filter(|r| r.etag.as_deref().is_some_and(|e| bare_etag(e) == bare_etag(&head.etag)));
        ObjectInfo {
            key: key.to_owned(),
            size: head.size,
            sha256: rec.and_then(|r| r.sha256.clone()),
            etag: head.etag.clone(),
            content_type: rec.and_then(|r| r.content_type.clone()).or_else(|| head.content_type.clone()),
            metadata: rec.map(|r| r.metadata.clone()).unwrap_or_default(),
            last_modified: head.modified.unwrap_or_else(time::OffsetDateTime::now_utc),
        }
    }

    /// Streams `len` bytes of `key` from `start`, refusing a different version than `etag`.
    pub(crate) fn get_range(&self, key: String, etag: String, start: u64, len: u64) -> ByteStream {
        if len == 0 {
            return Box::pin(futures_util::stream::empty());
        }
        let store = self.clone();
        let fut = async move {
            let url = store.inner.signer.url(Method::Get, Some(&key), &[], &[], REQUEST_TTL);
            let req = store
                .request(HttpMethod::GET, url)
                .header("range", format!("bytes={start}-{}", start + len - 1))
                .header("if-match", etag.as_str());
            let expected = etag;
            let res = store.send(req, "reading an object").await.map_err(std::io::Error::other)?;
            // Not every service honours If-Match on GET: check the version and length ourselves.
            let h = res.headers();
            let got = h.get("etag").and_then(|v| v.to_str().ok()).map(bare_etag);
            let length = h.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            if got.is_some_and(|g| g != bare_etag(&expected)) || length.is_some_and(|l| l != len) {
                return Err(std::io::Error::other(format!("{key} changed while it was being read")));
            }
            Ok::<_, std::io::Error>(res.bytes_stream().map_err(std::io::Error::other))
        };
        Box::pin(futures_util::stream::once(fut).try_flatten())
    }

    pub(crate) async fn delete_key(&self, s3_key: &str) -> Result<(), StoreError> {
        let url = self.inner.signer.url(Method::Delete, Some(s3_key), &[], &[], REQUEST_TTL);
        match self.send(self.request(HttpMethod::DELETE, url), "deleting an object").await {
            Ok(_) | Err(StoreError::NoSuchObject) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn hash_object(&self, key: &str, etag: &str, size: u64) -> Result<String, StoreError> {
        let mut stream = self.get_range(key.to_owned(), etag.to_owned(), 0, size);
        let mut hasher = Sha256::new();
        let mut seen = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::Unreachable(format!("reading the object back: {e}")))?;
            seen += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if seen != size {
            return Err(StoreError::Unreachable(format!("reading the object back gave {seen} of {size} bytes")));
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// A part body on its way to S3: counts bytes, and fails the request (so S3 stores nothing) if
/// the body is not exactly `size` bytes or the client's stream breaks, remembering why.
fn checked_body(body: ByteStream, size: u64, why: Arc<Mutex<Option<StoreError>>>) -> reqwest::Body {
    let fail = move |e: StoreError| {
        let msg = e.to_string();
        *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        std::io::Error::other(msg)
    };
    let stream =
        futures_util::stream::unfold((body, 0u64, false, fail), move |(mut body, seen, ended, fail)| async move {
            if ended {
                return None;
            }
            let (item, seen, ended) = match body.next().await {
                Some(Ok(chunk)) if seen + chunk.len() as u64 > size => {
                    (Err(fail(StoreError::BodyTooLong { expected: size })), seen, true)
                }
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    (Ok(chunk), seen, false)
                }
                Some(Err(e)) => (Err(fail(StoreError::Body(e))), seen, true),
                None if seen < size => {
                    (Err(fail(StoreError::BodyTooShort { expected: size, received: seen })), seen, true)
                }
                None => return None,
            };
            Some((item, (body, seen, ended, fail)))
        });
    reqwest::Body::wrap_stream(stream)
}

struct S3ObjectReader {
    store: S3Store,
    info: ObjectInfo,
    s3_key: String,
}

impl ObjectReader for S3ObjectReader {
    fn info(&self) -> &ObjectInfo {
        &self.info
    }

    fn read(self: Box<Self>, start: u64, len: u64) -> ByteStream {
        self.store.get_range(self.s3_key, self.info.etag, start, len)
    }
}

#[async_trait]
impl Store for S3Store {
    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn verifies_sha256(&self) -> bool {
        false
    }

    fn part_checksum(&self) -> Option<&'static str> {
        Some("md5")
    }

    async fn create_multipart(
        &self,
        upload_id: &str,
        key: &str,
        meta: &ObjectMeta,
        options: MultipartOptions,
    ) -> Result<Multipart, StoreError> {
        let s3_key = self.object_key(key)?;
        // Parts of unknown size need nothing special: S3 places them at complete.
        if options.readable_parts {
            // The multipart upload is made at complete, from the part objects. Until then a
            // marker says the upload is open, so parts sent after an abort are refused.
            let upload = Multipart {
                upload_id: upload_id.to_owned(),
                key: key.to_owned(),
                store_id: String::new(),
                parts_as_objects: true,
            };
            let marker = self.open_marker_key(&upload);
            let url = self.inner.signer.url(Method::Put, Some(&marker), &[], &[("content-length", "0")], REQUEST_TTL);
            self.send(self.request(HttpMethod::PUT, url).header("content-length", "0"), "creating an upload").await?;
            return Ok(upload);
        }
        let store_id = self.start_multipart(&s3_key, meta.content_type.as_deref()).await?;
        Ok(Multipart { upload_id: upload_id.to_owned(), key: key.to_owned(), store_id, parts_as_objects: false })
    }

    fn presign_part(
        &self,
        upload: &Multipart,
        part_number: u32,
        size: Option<u64>,
        content_md5: Option<&str>,
        ttl: Duration,
    ) -> Option<DirectPart> {
        let s3_key = self.object_key(&upload.key).ok()?;
        let n = part_number.to_string();
        let len = size.map(|s| s.to_string());
        let mut headers: Vec<(&str, &str)> = len.iter().map(|l| ("content-length", l.as_str())).collect();
        let mut to_send = BTreeMap::new();
        if let Some(md5) = content_md5 {
            headers.push(("content-md5", md5));
            to_send.insert("content-md5".to_owned(), md5.to_owned());
        }
        let url = if upload.parts_as_objects {
            self.inner.signer.url(Method::Put, Some(&self.part_object_key(upload, part_number)), &[], &headers, ttl)
        } else {
            let query = [("partNumber", n.as_str()), ("uploadId", upload.store_id.as_str())];
            self.inner.signer.url(Method::Put, Some(&s3_key), &query, &headers, ttl)
        };
        Some(DirectPart { url: url.into(), headers: to_send })
    }

    async fn put_part(&self, upload: &Multipart, span: PartSpan, body: ByteStream) -> Result<PartInfo, StoreError> {
        if upload.parts_as_objects && self.head(&self.open_marker_key(upload)).await?.is_none() {
            return Err(StoreError::NoSuchUpload);
        }
        let Some(direct) = self.presign_part(upload, span.part_number, Some(span.size), None, REQUEST_TTL) else {
            return Err(StoreError::ReservedKey(upload.key.clone()));
        };
        let why = Arc::new(Mutex::new(None));
        let req = self.inner.http.put(&direct.url).header("content-length", span.size).body(checked_body(
            body,
            span.size,
            Arc::clone(&why),
        ));
        let sent = self.send(req, "storing a part").await;
        if let Some(e) = why.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        let res = sent?;
        let etag = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(|e| quote_etag(bare_etag(e)));
        let etag = etag.ok_or_else(|| StoreError::Remote {
            status: res.status().as_u16(),
            code: "MissingETag".to_owned(),
            message: "the answer to UploadPart has no ETag".to_owned(),
        })?;
        Ok(PartInfo { part_number: span.part_number, size: span.size, etag })
    }

    async fn list_parts(&self, upload: &Multipart) -> Result<Vec<PartInfo>, StoreError> {
        if upload.parts_as_objects {
            return self.list_part_objects(upload).await;
        }
        let mut all: BTreeMap<u32, PartInfo> = BTreeMap::new();
        let mut marker = 0;
        loop {
            let (parts, next) = self.list_part_page(upload, marker, None).await?;
            all.extend(parts.into_iter().map(|p| (p.part_number, p)));
            match next {
                Some(n) => marker = n,
                None => return Ok(all.into_values().collect()),
            }
        }
    }

    async fn head_part(&self, upload: &Multipart, part_number: u32) -> Result<Option<PartInfo>, StoreError> {
        if upload.parts_as_objects {
            let head = self.head(&self.part_object_key(upload, part_number)).await?;
            return Ok(head.map(|h| PartInfo { part_number, size: h.size, etag: h.etag }));
        }
        let (parts, _) = self.list_part_page(upload, part_number.saturating_sub(1), Some(1)).await?;
        Ok(parts.into_iter().find(|p| p.part_number == part_number))
    }

    async fn read_part(&self, upload: &Multipart, span: PartSpan) -> Result<ByteStream, StoreError> {
        if !upload.parts_as_objects {
            return Err(StoreError::Unreadable);
        }
        let key = self.part_object_key(upload, span.part_number);
        match self.head(&key).await? {
            Some(h) if h.size == span.size => Ok(self.get_range(key, h.etag, 0, span.size)),
            _ => Err(StoreError::MissingPart(span.part_number)),
        }
    }

    async fn complete_multipart(
        &self,
        upload: &Multipart,
        parts: &[PartInfo],
        expected_sha256: Option<&str>,
        meta: ObjectMeta,
    ) -> Result<ObjectInfo, StoreError> {
        let s3_key = self.object_key(&upload.key)?;
        let size: u64 = parts.iter().map(|p| p.size).sum();
        let earlier = self.object_record(&upload.key).await?.filter(|r| r.upload_id == upload.upload_id);
        // Completed before, and the caller did not get to record it.
        if let Some(rec) = earlier.as_ref().filter(|r| r.etag.is_some())
            && let Some(head) = self.head(&s3_key).await?
            && rec.etag.as_deref().is_some_and(|e| bare_etag(e) == bare_etag(&head.etag))
        {
            return Ok(Self::info(&upload.key, &head, Some(rec)));
        }
        let stored = match self.list_parts(upload).await {
            Err(StoreError::NoSuchUpload) if earlier.is_some() => None,
            other => Some(other?),
        };
        if let Some(stored) = &stored {
            let by_number: BTreeMap<u32, &PartInfo> = stored.iter().map(|p| (p.part_number, p)).collect();
            for p in parts {
                let Some(s) = by_number.get(&p.part_number) else { return Err(StoreError::MissingPart(p.part_number)) };
                let etag_known = !s.etag.is_empty();
                if s.size != p.size || (etag_known && bare_etag(&s.etag) != bare_etag(&p.etag)) {
                    return Err(StoreError::PartChanged {
                        part: p.part_number,
                        expected: p.etag.clone(),
                        actual: s.etag.clone(),
                    });
                }
            }
        }
        let mut rec = ObjectRecord {
            key: upload.key.clone(),
            upload_id: upload.upload_id.clone(),
            size,
            sha256: expected_sha256.map(str::to_ascii_lowercase),
            etag: None,
            content_type: meta.content_type,
            metadata: meta.metadata,
        };
        if stored.is_some() {
            // Written first, so a crash between completing and recording can be recognised.
            self.save_object_record(&rec).await?;
            let (store_id, parts) = if upload.parts_as_objects {
                self.copy_parts(upload, &s3_key, parts, rec.content_type.as_deref()).await?
            } else {
                (upload.store_id.clone(), parts.to_vec())
            };
            let url = self.inner.signer.url(
                Method::Post,
                Some(&s3_key),
                &[("uploadId", store_id.as_str())],
                &[],
                REQUEST_TTL,
            );
            let req = self
                .request(HttpMethod::POST, url)
                .header("content-type", "application/xml")
                .body(xml::complete_body(&parts));
            match self.send_complete(req).await {
                Ok(()) | Err(StoreError::NoSuchUpload) => {}
                // A concurrent complete of the same upload may have won the race; if so its
                // object record says so shortly.
                Err(e) => return self.adopt_completed(upload, &s3_key, size).await.ok_or(e),
            }
        }
        let head = self.head(&s3_key).await?.filter(|h| h.size == size).ok_or(StoreError::NoSuchUpload)?;
        if rec.sha256.is_none() {
            rec.sha256 = Some(self.hash_object(&s3_key, &head.etag, size).await?);
        }
        rec.etag = Some(head.etag.clone());
        self.save_object_record(&rec).await?;
        Ok(Self::info(&upload.key, &head, Some(&rec)))
    }

    async fn abort_multipart(&self, upload: &Multipart) -> Result<(), StoreError> {
        if upload.parts_as_objects {
            // The marker first, so parts still arriving are refused.
            self.delete_key(&self.open_marker_key(upload)).await?;
            let folder = self.parts_folder(upload);
            for listed in self.list_keys(&folder, None).await? {
                self.delete_key(&listed.key).await?;
            }
            return Ok(());
        }
        if upload.store_id.is_empty() {
            return Ok(());
        }
        let s3_key = self.object_key(&upload.key)?;
        self.abort_store_upload(&s3_key, &upload.store_id, &upload.upload_id).await
    }

    async fn discard_completed_parts(&self, upload: &Multipart) -> Result<(), StoreError> {
        // CompleteMultipartUpload removed a native upload's parts; aborting it afterwards only
        // earns a NoSuchUpload (or, from some services, an AccessDenied).
        if upload.parts_as_objects { self.abort_multipart(upload).await } else { Ok(()) }
    }

    async fn open_object(&self, key: &str) -> Result<Box<dyn ObjectReader>, StoreError> {
        let s3_key = self.object_key(key)?;
        let head = self.head(&s3_key).await?.ok_or(StoreError::NoSuchObject)?;
        let rec = self.object_record(key).await?;
        let info = Self::info(key, &head, rec.as_ref());
        Ok(Box::new(S3ObjectReader { store: self.clone(), info, s3_key }))
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.delete_key(&self.object_key(key)?).await?;
        self.delete_record(&object_record_name(key)).await
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let base = &self.inner.prefix;
        let listed = self.list_keys(&format!("{base}{prefix}"), None).await?;
        let mut out: Vec<ObjectInfo> = listed
            .into_iter()
            .filter_map(|l| {
                let key = l.key.strip_prefix(base.as_str())?.to_owned();
                if key.starts_with(RESERVED) {
                    return None;
                }
                Some(ObjectInfo {
                    key,
                    size: l.size,
                    sha256: None,
                    etag: l.etag,
                    content_type: None,
                    metadata: BTreeMap::new(),
                    last_modified: l.modified.unwrap_or_else(time::OffsetDateTime::now_utc),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let key = self.record_key(name)?;
        let url = self.inner.signer.url(Method::Get, Some(&key), &[], &[], REQUEST_TTL);
        let res = match self.send(self.request(HttpMethod::GET, url), "reading a record").await {
            Err(StoreError::NoSuchObject) => return Ok(None),
            other => other?,
        };
        let version = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(|e| bare_etag(e).to_owned());
        let version = version.ok_or_else(|| StoreError::Corrupt(format!("record {name} has no ETag")))?;
        let bytes = res.bytes().await.map_err(|e| unreachable("reading a record", &e))?;
        Ok(Some(Record { bytes: bytes.to_vec(), version }))
    }

    async fn put_record(&self, name: &str, bytes: Vec<u8>, condition: Condition) -> Result<String, StoreError> {
        let key = self.record_key(name)?;
        let (header, value) = match &condition {
            Condition::Any => (None, String::new()),
            Condition::IfAbsent => (Some("if-none-match"), "*".to_owned()),
            Condition::IfMatch(v) => (Some("if-match"), quote_etag(v)),
        };
        let len = bytes.len().to_string();
        let mut signed = vec![("content-length", len.as_str())];
        if let Some(h) = header {
            signed.push((h, value.as_str()));
        }
        let url = self.inner.signer.url(Method::Put, Some(&key), &[], &signed, REQUEST_TTL);
        let mut req = self.request(HttpMethod::PUT, url).header("content-type", "application/json").body(bytes);
        if let Some(h) = header {
            req = req.header(h, value.as_str());
        }
        let res = match self.send(req, "writing a record").await {
            // Without the object, `If-Match` fails as "not found" on some services.
            Err(StoreError::NoSuchObject) if matches!(condition, Condition::IfMatch(_)) => {
                return Err(StoreError::ConditionFailed);
            }
            other => other?,
        };
        let version = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(|e| bare_etag(e).to_owned());
        version.ok_or_else(|| StoreError::Corrupt(format!("the write of record {name} returned no ETag")))
    }

    async fn list_records(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let folder = prefix.trim_end_matches('/');
        check_record_name(folder)?;
        let base = format!("{}{RESERVED}records/", self.inner.prefix);
        let listed = self.list_keys(&format!("{base}{folder}/"), None).await?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|l| l.key.strip_prefix(base.as_str())?.strip_suffix(".json").map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn delete_record(&self, name: &str) -> Result<(), StoreError> {
        let key = self.record_key(name)?;
        let url = self.inner.signer.url(Method::Delete, Some(&key), &[], &[], REQUEST_TTL);
        match self.send(self.request(HttpMethod::DELETE, url), "deleting a record").await {
            Ok(_) | Err(StoreError::NoSuchObject) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::S3Credentials;

    #[test]
    fn reserved_keys() {
        let creds = S3Credentials { access_key_id: "k".into(), secret_access_key: "s".into(), session_token: None };
        let mut c = S3Config::from_url("s3://bkt/p", "us-east-1".into(), creds).unwrap();
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.path_style = true;
        let s = S3Store::new(c).unwrap();
        assert_eq!(s.object_key("a/b").unwrap(), "p/a/b");
        assert!(matches!(s.object_key(".ferry/records/x"), Err(StoreError::ReservedKey(_))));
        assert!(matches!(s.object_key(".ferry"), Err(StoreError::ReservedKey(_))));
        assert_eq!(s.record_key("sessions/x").unwrap(), "p/.ferry/records/sessions/x.json");
        assert!(s.record_key("../x").is_err());
    }
}
