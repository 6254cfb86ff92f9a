//! The S3-compatible store: multipart uploads are S3 multipart uploads, objects are S3 objects
//! under the configured prefix, and records are small JSON objects under `{prefix}.ferry/records/`
//! written with `If-None-Match` / `If-Match`, so several servers can share one bucket.
//!
//! Requests are signed with SigV4 query signing (`rusty-s3`'s signer) and sent with the HTTP
//! client the rest of ferry uses; responses are parsed here, leniently, because S3-compatible
//! services differ in what they include (some list parts without ETags, some never paginate).
//!
//! An upload whose parts must be readable before it completes (one with a per-part processor)
//! keeps each part as an object of its own under `{prefix}.ferry/parts/{upload_id}/`; `complete`
//! then makes the multipart upload and fills it with server-side copies (UploadPartCopy).
//!
//! S3 cannot read the parts of an open multipart upload, so `complete` cannot check a SHA-256
//! before it publishes. It records the one it is given (or, given none, reads the object back to
//! compute it) in an object record next to the object, and readers verify it end to end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::api::{ObjectInfo, PartInfo, bare_etag, quote_etag};
use ferry_core::plan::{GIB, Limits, MIB, PartSpan, TIB};
use futures_util::{StreamExt as _, TryStreamExt as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method as HttpMethod, StatusCode};
use rusty_s3::{Bucket, Credentials, Method, UrlStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::{
    ByteStream, Condition, DirectPart, Multipart, MultipartOptions, ObjectMeta, ObjectReader, Record, Store,
    StoreError, check_record_name,
};

/// What S3 accepts: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 of them.
pub const S3_LIMITS: Limits =
    Limits { min_part_size: 5 * MIB, max_part_size: 5 * GIB, max_parts: 10_000, max_object_size: 5 * TIB };

/// Percent-encodes an `x-amz-copy-source` key, keeping its `/` separators.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// Keys under this folder of the prefix hold ferry's records; clients may not name objects there.
const RESERVED: &str = ".ferry/";
/// Lifetime of the signatures on the server's own requests.
const REQUEST_TTL: Duration = Duration::from_secs(300);
/// S3 refuses presigned URLs valid for longer.
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// An access key pair, and a session token for temporary credentials.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// The standard sources, in the AWS tools' order: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`), then the profile `AWS_PROFILE` (default `default`) of the shared
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
    pub fn from_environment() -> Result<S3Credentials, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(S3Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
            });
        }
        let path = match var("AWS_SHARED_CREDENTIALS_FILE") {
            Some(p) => std::path::PathBuf::from(p),
            None => match var("HOME") {
                Some(home) => std::path::Path::new(&home).join(".aws").join("credentials"),
                None => return Err("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned()),
            },
        };
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set and {} cannot be read ({e})",
                path.display()
            )
        })?;
        parse_credentials_file(&text, &profile)
            .ok_or_else(|| format!("{} has no complete [{profile}] profile", path.display()))
    }
}

/// The `[profile]` section of an AWS shared credentials file (an INI file).
fn parse_credentials_file(text: &str, profile: &str) -> Option<S3Credentials> {
    let mut in_profile = false;
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        if in_profile && let Some((k, v)) = line.split_once('=') {
            values.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Some(S3Credentials {
        access_key_id: values.remove("aws_access_key_id").filter(|v| !v.is_empty())?,
        secret_access_key: values.remove("aws_secret_access_key").filter(|v| !v.is_empty())?,
        session_token: values.remove("aws_session_token").filter(|v| !v.is_empty()),
    })
}

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key; empty or ending in `/`.
    pub prefix: String,
    /// Default: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key` (MinIO, Ceph, Garage and
    /// local test servers usually want this).
    pub path_style: bool,
    pub credentials: S3Credentials,
    pub max_object_size: u64,
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn from_url(url: &str, region: String, credentials: S3Credentials) -> Result<S3Config, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("{url:?} is not an s3://BUCKET/PREFIX URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!("{bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(format!("the prefix {prefix:?} may not contain '.' or '..' segments"));
        }
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix,
            endpoint: None,
            region,
            path_style: false,
            credentials,
            max_object_size: S3_LIMITS.max_object_size,
        })
    }
}

/// The store. Cloning shares the connection pool.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    limits: Limits,
}

/// What ferry knows about an object beyond what S3 keeps: written before and after a
/// multipart upload completes, and trusted only while its ETag is the object's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ObjectRecord {
    key: String,
    upload_id: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    /// `None` while the upload is being completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

fn object_record_name(key: &str) -> String {
    format!("objects/{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl S3Store {
    pub fn new(config: S3Config) -> Result<S3Store, String> {
        let endpoint = match &config.endpoint {
            Some(e) => e.clone(),
            None => format!("https://s3.{}.amazonaws.com", config.region),
        };
        let endpoint: Url = endpoint.parse().map_err(|e| format!("the S3 endpoint {endpoint:?} is not a URL: {e}"))?;
        let style = if config.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, config.bucket.clone(), config.region.clone())
            .map_err(|e| format!("cannot address bucket {:?}: {e}", config.bucket))?;
        let c = &config.credentials;
        let credentials = match &c.session_token {
            Some(t) => Credentials::new_with_token(&c.access_key_id, &c.secret_access_key, t),
            None => Credentials::new(&c.access_key_id, &c.secret_access_key),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let limits = S3_LIMITS.with_max_object_size(config.max_object_size.min(S3_LIMITS.max_object_size));
        Ok(S3Store { inner: Arc::new(Inner { http, bucket, credentials, prefix: config.prefix, limits }) })
    }

    /// Checks that the bucket answers and the credentials are accepted, so a misconfigured server
    /// stops at start-up rather than at its first upload.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.list_keys(&format!("{}{RESERVED}", self.inner.prefix), Some(1)).await.map(|_| ())
    }

    fn object_key(&self, key: &str) -> Result<String, StoreError> {
        if key.starts_with(RESERVED) || key == RESERVED.trim_end_matches('/') {
            return Err(StoreError::ReservedKey(key.to_owned()));
        }
        Ok(format!("{}{key}", self.inner.prefix))
    }

    fn record_key(&self, name: &str) -> Result<String, StoreError> {
        check_record_name(name)?;
        Ok(format!("{}{RESERVED}records/{name}.json", self.inner.prefix))
    }

    /// A presigned URL for `method` on `key` (`None`: the bucket itself). `headers` are signed and
    /// must be sent as given.
    fn sign(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        ttl: Duration,
    ) -> Url {
        let inner = &self.inner;
        let url = match key {
            Some(k) => inner.bucket.object_url(k),
            None => inner.bucket.base_url().clone(),
        };
        let mut query = query.to_vec();
        query.sort_unstable();
        let mut headers = headers.to_vec();
        headers.sort_unstable();
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            inner.credentials.key(),
            inner.credentials.secret(),
            inner.credentials.token(),
            inner.bucket.region(),
            ttl.min(MAX_PRESIGN_TTL).as_secs().max(1),
            query.into_iter(),
            headers.into_iter(),
        )
    }

    /// Sends a signed request; any status but 2xx becomes the S3 error it carries.
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, StoreError> {
        let res = req.send().await.map_err(|e| unreachable(what, &e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        Err(s3_error(status, &body, what))
    }

    fn request(&self, method: HttpMethod, url: Url) -> reqwest::RequestBuilder {
        self.inner.http.request(method, url.as_str())
    }

    async fn list_keys(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<Listed>, StoreError> {
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
            let url = self.sign(Method::Get, None, &query, &[], REQUEST_TTL);
            let res = self.send(self.request(HttpMethod::GET, url), "listing objects").await?;
            let text = res.text().await.map_err(|e| unreachable("listing objects", &e))?;
            let doc = parse_xml(&text, "listing objects")?;
            let root = doc.root_element();
            for c in root.children().filter(|n| n.has_tag_name(tag(n, "Contents"))) {
                let key = child_text(c, "Key").unwrap_or_default().to_owned();
                let size = child_text(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                let etag = child_text(c, "ETag").map(|e| quote_etag(bare_etag(e))).unwrap_or_default();
                let modified = child_text(c, "LastModified").and_then(parse_time);
                out.push(Listed { key, size, etag, modified });
            }
            if limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
            let truncated = child_text(root, "IsTruncated") == Some("true");
            match child_text(root, "NextContinuationToken") {
                Some(t) if truncated && !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    async fn list_part_page(
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
        let url = self.sign(Method::Get, Some(&key), &query, &[], REQUEST_TTL);
        let res = self.send(self.request(HttpMethod::GET, url), "listing parts").await?;
        let text = res.text().await.map_err(|e| unreachable("listing parts", &e))?;
        let doc = parse_xml(&text, "listing parts")?;
        let root = doc.root_element();
        let mut parts = Vec::new();
        for p in root.children().filter(|n| n.has_tag_name(tag(n, "Part"))) {
            let number = child_text(p, "PartNumber").and_then(|s| s.parse::<u32>().ok());
            let size = child_text(p, "Size").and_then(|s| s.parse::<u64>().ok());
            let (Some(part_number), Some(size)) = (number, size) else {
                return Err(StoreError::Remote {
                    status: 200,
                    code: "MalformedListParts".to_owned(),
                    message: "a listed part has no number or size".to_owned(),
                });
            };
            let etag = child_text(p, "ETag").map(|e| quote_etag(bare_etag(e))).unwrap_or_default();
            parts.push(PartInfo { part_number, size, etag });
        }
        let truncated = child_text(root, "IsTruncated") == Some("true");
        let next = child_text(root, "NextPartNumberMarker").and_then(|s| s.parse::<u32>().ok());
        // A marker that does not advance would loop forever.
        let next = next.filter(|n| truncated && *n > marker);
        Ok((parts, next))
    }

    async fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        let url = self.sign(Method::Head, Some(key), &[], &[], REQUEST_TTL);
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

    async fn object_record(&self, key: &str) -> Result<Option<ObjectRecord>, StoreError> {
        let Some(rec) = self.get_record(&object_record_name(key)).await? else { return Ok(None) };
        Ok(serde_json::from_slice(&rec.bytes).ok())
    }

    async fn save_object_record(&self, rec: &ObjectRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_record(&object_record_name(&rec.key), bytes, Condition::Any).await.map(|_| ())
    }

    fn info(key: &str, head: &Head, rec: Option<&ObjectRecord>) -> ObjectInfo {
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
    fn get_range(&self, key: String, etag: String, start: u64, len: u64) -> ByteStream {
        if len == 0 {
            return Box::pin(futures_util::stream::empty());
        }
        let store = self.clone();
        let fut = async move {
            let url = store.sign(Method::Get, Some(&key), &[], &[], REQUEST_TTL);
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

    /// Where part `n` of an upload with `parts_as_objects` is kept until completion.
    fn part_object_key(&self, upload: &Multipart, n: u32) -> String {
        format!("{}{RESERVED}parts/{}/{n:05}", self.inner.prefix, upload.upload_id)
    }

    /// Present while an upload with `parts_as_objects` is open.
    fn open_marker_key(&self, upload: &Multipart) -> String {
        format!("{}{RESERVED}parts/{}/open", self.inner.prefix, upload.upload_id)
    }

    /// The part objects of an open upload; `NoSuchUpload` once it is completed or aborted.
    async fn list_part_objects(&self, upload: &Multipart) -> Result<Vec<PartInfo>, StoreError> {
        let folder = format!("{}{RESERVED}parts/{}/", self.inner.prefix, upload.upload_id);
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

    async fn delete_key(&self, s3_key: &str) -> Result<(), StoreError> {
        let url = self.sign(Method::Delete, Some(s3_key), &[], &[], REQUEST_TTL);
        match self.send(self.request(HttpMethod::DELETE, url), "deleting an object").await {
            Ok(_) | Err(StoreError::NoSuchObject) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// CreateMultipartUpload; its `UploadId`.
    async fn start_multipart(&self, s3_key: &str, content_type: Option<&str>) -> Result<String, StoreError> {
        let url = self.sign(Method::Post, Some(s3_key), &[("uploads", "")], &[], REQUEST_TTL);
        let mut req = self.request(HttpMethod::POST, url);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = self.send(req, "creating a multipart upload").await?;
        let text = res.text().await.map_err(|e| unreachable("creating a multipart upload", &e))?;
        let doc = parse_xml(&text, "creating a multipart upload")?;
        let id = child_text(doc.root_element(), "UploadId").filter(|s| !s.is_empty());
        id.map(str::to_owned).ok_or_else(|| StoreError::Remote {
            status: 200,
            code: "MissingUploadId".to_owned(),
            message: "the answer to CreateMultipartUpload has no UploadId".to_owned(),
        })
    }

    async fn abort_store_upload(&self, s3_key: &str, store_id: &str, upload_id: &str) -> Result<(), StoreError> {
        let url = self.sign(Method::Delete, Some(s3_key), &[("uploadId", store_id)], &[], REQUEST_TTL);
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
    /// server-side copies (UploadPartCopy: no bytes pass through ferry). Returns its `UploadId`
    /// and the copied parts' ETags; on failure the new multipart upload is aborted.
    async fn copy_parts(
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
        let what = "copying a part into the object";
        let source_key = self.part_object_key(upload, part.part_number);
        let source = format!("/{}/{}", self.inner.bucket.name(), utf8_percent_encode(&source_key, COPY_SOURCE));
        let n = part.part_number.to_string();
        let query = [("partNumber", n.as_str()), ("uploadId", store_id)];
        // The part must still be the one that was checked.
        let if_match = quote_etag(bare_etag(&part.etag));
        let mut headers = vec![("x-amz-copy-source", source.as_str())];
        if !part.etag.is_empty() {
            headers.push(("x-amz-copy-source-if-match", if_match.as_str()));
        }
        let url = self.sign(Method::Put, Some(s3_key), &query, &headers, REQUEST_TTL);
        let req = headers.iter().fold(self.request(HttpMethod::PUT, url), |r, (k, v)| r.header(*k, *v));
        let res = self.send(req, what).await?;
        let text = res.text().await.map_err(|e| unreachable(what, &e))?;
        let doc = parse_xml(&text, what)?;
        if doc.root_element().tag_name().name() == "Error" {
            return Err(s3_error(StatusCode::INTERNAL_SERVER_ERROR, &text, what));
        }
        let etag =
            child_text(doc.root_element(), "ETag").filter(|e| !e.is_empty()).ok_or_else(|| StoreError::Remote {
                status: 200,
                code: "MissingETag".to_owned(),
                message: format!("{what}: the answer to UploadPartCopy has no ETag"),
            })?;
        Ok(PartInfo { part_number: part.part_number, size: part.size, etag: quote_etag(bare_etag(etag)) })
    }

    async fn send_complete(&self, req: reqwest::RequestBuilder) -> Result<(), StoreError> {
        let what = "completing a multipart upload";
        let res = self.send(req, what).await?;
        // S3 may answer 200 and then report the failure in the body.
        let text = res.text().await.map_err(|e| unreachable(what, &e))?;
        let doc = parse_xml(&text, what)?;
        if doc.root_element().tag_name().name() == "Error" {
            return Err(s3_error(StatusCode::INTERNAL_SERVER_ERROR, &text, what));
        }
        Ok(())
    }

    /// The object another complete of `upload` published, if one appears within a few seconds.
    async fn adopt_completed(&self, upload: &Multipart, s3_key: &str, size: u64) -> Option<ObjectInfo> {
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

struct Head {
    size: u64,
    etag: String,
    content_type: Option<String>,
    modified: Option<time::OffsetDateTime>,
}

struct Listed {
    key: String,
    size: u64,
    etag: String,
    modified: Option<time::OffsetDateTime>,
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn unreachable(what: &str, e: &reqwest::Error) -> StoreError {
    StoreError::Unreachable(format!("{what}: {e}"))
}

fn parse_xml<'a>(text: &'a str, what: &str) -> Result<roxmltree::Document<'a>, StoreError> {
    roxmltree::Document::parse(text.trim_start()).map_err(|e| StoreError::Remote {
        status: 200,
        code: "MalformedXML".to_owned(),
        message: format!("{what}: the answer is not XML: {e}"),
    })
}

/// A tag name in the element's own namespace (S3 answers use one, some servers none).
fn tag<'a>(n: &roxmltree::Node<'a, '_>, name: &'a str) -> (&'a str, &'a str) {
    (n.tag_name().namespace().unwrap_or(""), name)
}

fn child_text<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name).map(|c| c.text().unwrap_or(""))
}

/// The error an S3 answer describes, by its `<Code>` where there is one.
fn s3_error(status: StatusCode, body: &str, what: &str) -> StoreError {
    let doc = roxmltree::Document::parse(body.trim_start()).ok();
    let root = doc.as_ref().map(|d| d.root_element());
    let code = root.and_then(|r| child_text(r, "Code")).unwrap_or_default().to_owned();
    let message = root.and_then(|r| child_text(r, "Message")).unwrap_or_default().to_owned();
    match (status.as_u16(), code.as_str()) {
        (_, "NoSuchUpload") => StoreError::NoSuchUpload,
        (_, "NoSuchKey") | (404, "") => StoreError::NoSuchObject,
        (_, "PreconditionFailed" | "ConditionalRequestConflict") | (412, _) => StoreError::ConditionFailed,
        (status, _) => StoreError::Remote {
            status,
            code: if code.is_empty() { format!("HTTP{status}") } else { code },
            message: if message.is_empty() { what.to_owned() } else { format!("{what}: {message}") },
        },
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

fn complete_body(parts: &[PartInfo]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for p in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            p.part_number,
            xml_escape(&quote_etag(bare_etag(&p.etag)))
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
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
            let url = self.sign(Method::Put, Some(&marker), &[], &[("content-length", "0")], REQUEST_TTL);
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
            self.sign(Method::Put, Some(&self.part_object_key(upload, part_number)), &[], &headers, ttl)
        } else {
            let query = [("partNumber", n.as_str()), ("uploadId", upload.store_id.as_str())];
            self.sign(Method::Put, Some(&s3_key), &query, &headers, ttl)
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
            let url = self.sign(Method::Post, Some(&s3_key), &[("uploadId", store_id.as_str())], &[], REQUEST_TTL);
            let req = self
                .request(HttpMethod::POST, url)
                .header("content-type", "application/xml")
                .body(complete_body(&parts));
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
            let folder = format!("{}{RESERVED}parts/{}/", self.inner.prefix, upload.upload_id);
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
        let url = self.sign(Method::Get, Some(&key), &[], &[], REQUEST_TTL);
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
        let url = self.sign(Method::Put, Some(&key), &[], &signed, REQUEST_TTL);
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
        let url = self.sign(Method::Delete, Some(&key), &[], &[], REQUEST_TTL);
        match self.send(self.request(HttpMethod::DELETE, url), "deleting a record").await {
            Ok(_) | Err(StoreError::NoSuchObject) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n# note\n[other]\n\
                    aws_access_key_id=C\naws_secret_access_key = D\naws_session_token = T\n[broken]\naws_access_key_id=E\n";
        let d = parse_credentials_file(text, "default").unwrap();
        assert_eq!((d.access_key_id.as_str(), d.secret_access_key.as_str(), d.session_token), ("A", "B", None));
        let o = parse_credentials_file(text, "other").unwrap();
        assert_eq!((o.access_key_id.as_str(), o.session_token.as_deref()), ("C", Some("T")));
        assert!(parse_credentials_file(text, "broken").is_none());
        assert!(parse_credentials_file(text, "missing").is_none());
    }

    #[test]
    fn store_urls() {
        let creds = S3Credentials { access_key_id: "k".into(), secret_access_key: "s".into(), session_token: None };
        let c = S3Config::from_url("s3://my-bucket/some/prefix/", "us-east-1".into(), creds.clone()).unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("my-bucket", "some/prefix/"));
        assert_eq!(S3Config::from_url("s3://bkt", "r".into(), creds.clone()).unwrap().prefix, "");
        for bad in ["http://b/x", "s3://", "s3://ab", "s3://Upper", "s3://b_x/p", "s3://bkt/../x"] {
            assert!(S3Config::from_url(bad, "r".into(), creds.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_errors_by_code() {
        let xml = |code: &str| format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>");
        assert!(matches!(s3_error(StatusCode::NOT_FOUND, &xml("NoSuchUpload"), "x"), StoreError::NoSuchUpload));
        assert!(matches!(s3_error(StatusCode::NOT_FOUND, &xml("NoSuchKey"), "x"), StoreError::NoSuchObject));
        assert!(matches!(s3_error(StatusCode::NOT_FOUND, "", "x"), StoreError::NoSuchObject));
        assert!(matches!(s3_error(StatusCode::PRECONDITION_FAILED, "", "x"), StoreError::ConditionFailed));
        assert!(matches!(
            s3_error(StatusCode::CONFLICT, &xml("ConditionalRequestConflict"), "x"),
            StoreError::ConditionFailed
        ));
        match s3_error(StatusCode::FORBIDDEN, &xml("SignatureDoesNotMatch"), "storing") {
            StoreError::Remote { status: 403, code, message } => {
                assert_eq!(code, "SignatureDoesNotMatch");
                assert_eq!(message, "storing: m");
            }
            other => panic!("{other:?}"),
        }
        match s3_error(StatusCode::BAD_GATEWAY, "<html>not xml", "listing") {
            StoreError::Remote { status: 502, code, .. } => assert_eq!(code, "HTTP502"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn complete_body_escapes_etags() {
        let parts = [PartInfo { part_number: 1, size: 5, etag: "\"a<b\"".into() }];
        assert_eq!(
            complete_body(&parts),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;a&lt;b&quot;</ETag></Part></CompleteMultipartUpload>"
        );
    }

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
