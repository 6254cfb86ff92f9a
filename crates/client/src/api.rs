//! The control-plane API v1 as typed calls.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::api::{
    Complete, CreateUpload, CreatedUpload, ErrorBody, ObjectInfo, PartDone, PartInfo, PartUrl, Reprocessing, SignParts,
    SignedParts, UploadList, UploadStatus, UploadSummary,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{RequestBuilder, Response, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ClientError;

/// Everything but unreserved characters and `/` (which separates key segments) is percent-encoded.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// A connection to one ferry server with one token. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) http: reqwest::Client,
    base: String,
    token: String,
}

/// What a download needs to know about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: String,
    pub sha256: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Api, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "the server URL must start with http:// or https://, not {base:?}"
            )));
        }
        if token.is_empty() {
            return Err(ClientError::Usage("no token: pass --token or set FERRY_TOKEN".to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::network("cannot build the HTTP client", e))?;
        Ok(Api { http, base, token: token.to_owned() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `scheme://host:port` of the API, to tell whether a part URL points elsewhere.
    pub fn origin(&self) -> &str {
        origin_of(&self.base)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.base)
    }

    pub(crate) fn authed(&self, req: RequestBuilder) -> RequestBuilder {
        req.bearer_auth(&self.token)
    }

    pub(crate) async fn send(&self, what: &str, req: RequestBuilder) -> Result<Response, ClientError> {
        let res = req.send().await.map_err(|e| ClientError::network(what.to_owned(), e))?;
        if res.status().is_success() { Ok(res) } else { Err(api_error(res).await) }
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, req: RequestBuilder) -> Result<T, ClientError> {
        let res = self.send(what, req).await?;
        res.json().await.map_err(|e| ClientError::network(format!("{what}: reading the answer"), e))
    }

    pub async fn create(&self, req: &CreateUpload) -> Result<CreatedUpload, ClientError> {
        self.json("creating the upload", self.authed(self.http.post(self.url("/uploads")).json(req))).await
    }

    /// Fresh URLs for `part_numbers`; a part given a `content_md5` (base64) gets a URL that only
    /// accepts bytes with that MD5.
    pub async fn sign(
        &self,
        upload_id: &str,
        part_numbers: &[u32],
        content_md5: BTreeMap<u32, String>,
    ) -> Result<Vec<PartUrl>, ClientError> {
        let body = SignParts { part_numbers: part_numbers.to_vec(), content_md5 };
        let req = self.authed(self.http.post(self.url(&format!("/uploads/{upload_id}/parts/sign"))).json(&body));
        let signed: SignedParts = self.json("signing part URLs", req).await?;
        Ok(signed.parts)
    }

    pub async fn status(&self, upload_id: &str) -> Result<UploadStatus, ClientError> {
        self.json("reading the upload's status", self.authed(self.http.get(self.url(&format!("/uploads/{upload_id}")))))
            .await
    }

    pub async fn list(&self, state: Option<&str>) -> Result<Vec<UploadSummary>, ClientError> {
        let mut req = self.http.get(self.url("/uploads"));
        if let Some(s) = state {
            req = req.query(&[("state", s)]);
        }
        let list: UploadList = self.json("listing uploads", self.authed(req)).await?;
        Ok(list.uploads)
    }

    /// Opens the upload's event stream after event `after`.
    pub async fn events(&self, upload_id: &str, after: u64) -> Result<Response, ClientError> {
        let mut req = self
            .http
            .get(self.url(&format!("/uploads/{upload_id}/events")))
            .header(header::ACCEPT, "text/event-stream");
        if after > 0 {
            req = req.header("last-event-id", after.to_string());
        }
        self.send("opening the event stream", self.authed(req)).await
    }

    pub async fn reprocess(&self, upload_id: &str, part_number: u32) -> Result<Reprocessing, ClientError> {
        let url = self.url(&format!("/uploads/{upload_id}/parts/{part_number}/reprocess"));
        self.json("asking for reprocessing", self.authed(self.http.post(url))).await
    }

    pub async fn cancel(&self, upload_id: &str) -> Result<UploadStatus, ClientError> {
        self.json("cancelling the upload", self.authed(self.http.delete(self.url(&format!("/uploads/{upload_id}")))))
            .await
    }

    pub async fn complete(&self, upload_id: &str, body: &Complete) -> Result<ObjectInfo, ClientError> {
        let req = self.authed(self.http.post(self.url(&format!("/uploads/{upload_id}/complete"))).json(body));
        self.json("completing the upload", req).await
    }

    pub async fn part_done(&self, upload_id: &str, part: &PartInfo) -> Result<PartInfo, ClientError> {
        let body = PartDone { etag: part.etag.clone(), size: part.size };
        let url = self.url(&format!("/uploads/{upload_id}/parts/{}/done", part.part_number));
        self.json("confirming a part", self.authed(self.http.post(url).json(&body))).await
    }

    /// PUTs a part to its signed URL (`Some`) or through the API with the token (`None`).
    pub async fn put_part(
        &self,
        upload_id: &str,
        part_number: u32,
        signed: Option<&PartUrl>,
        size: u64,
        body: reqwest::Body,
    ) -> Result<PartInfo, ClientError> {
        let req = match signed {
            Some(u) => u.headers.iter().fold(self.http.put(&u.url), |req, (k, v)| req.header(k, v)),
            None => self.authed(self.http.put(self.url(&format!("/uploads/{upload_id}/parts/{part_number}")))),
        };
        let req = req.header(header::CONTENT_LENGTH, size).body(body);
        let res = self.send(&format!("sending part {part_number}"), req).await?;
        let etag = res.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        match etag {
            Some(etag) => Ok(PartInfo { part_number, size, etag }),
            None => Err(ClientError::Protocol(format!("the answer to part {part_number} has no ETag"))),
        }
    }

    fn object_url(&self, key: &str) -> String {
        self.url(&format!("/objects/{}", utf8_percent_encode(key, KEY_SEGMENT)))
    }

    pub async fn head_object(&self, key: &str) -> Result<ObjectHead, ClientError> {
        let res = match self.send("looking up the object", self.authed(self.http.head(self.object_url(key)))).await {
            Err(ClientError::Api { status: 404, retry_after, .. }) => {
                let message = format!("there is no object {key:?}");
                return Err(ClientError::Api {
                    status: 404,
                    code: "object_not_found".to_owned(),
                    message,
                    retry_after,
                });
            }
            other => other?,
        };
        let h = res.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let size = text("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Protocol("the object has no Content-Length".to_owned()))?;
        let etag = text("etag").ok_or_else(|| ClientError::Protocol("the object has no ETag".to_owned()))?;
        Ok(ObjectHead { size, etag, sha256: text("x-ferry-sha256") })
    }

    /// GETs bytes `start..=end` of an object.
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Response, ClientError> {
        let req =
            self.authed(self.http.get(self.object_url(key))).header(header::RANGE, format!("bytes={start}-{end}"));
        let res = self.send("downloading", req).await?;
        if res.status() != StatusCode::PARTIAL_CONTENT {
            return Err(ClientError::Protocol(format!("asked for a range, got HTTP {}", res.status())));
        }
        Ok(res)
    }

    /// Whether the API answers at all (used to tell "the store is unreachable" from "the server is down").
    pub async fn reachable(&self) -> bool {
        self.http.get(format!("{}/healthz", self.base)).send().await.is_ok_and(|r| r.status().is_success())
    }
}

pub(crate) fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

async fn api_error(res: Response) -> ClientError {
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = res.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Api { status, code: body.error.code, message: body.error.message, retry_after },
        Err(_) => {
            // A HEAD answer, or something in front of ferry that does not speak its error format.
            let code = match status {
                401 => "unauthorized",
                404 => "not_found",
                _ => "http_error",
            };
            let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
            let snippet: String = text.chars().take(200).collect();
            let message = if snippet.trim().is_empty() { reason.to_owned() } else { snippet };
            ClientError::Api { status, code: code.to_owned(), message, retry_after }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_of("http://127.0.0.1:7070/p/x/1?a=b"), "http://127.0.0.1:7070");
        assert_eq!(origin_of("https://s3.example/bucket"), "https://s3.example");
        assert_eq!(origin_of("http://h:1"), "http://h:1");
    }
}
