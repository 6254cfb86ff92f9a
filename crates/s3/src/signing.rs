//! Request signing: SigV4 query signing by `rusty-s3`, for the server's own requests and for the
//! presigned part URLs handed to clients.

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, UrlStyle};
use url::Url;

use crate::S3Config;

pub use rusty_s3::Method;

/// S3 refuses presigned URLs valid for longer.
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Signs requests on one bucket with one set of credentials.
pub(crate) struct Signer {
    bucket: Bucket,
    credentials: Credentials,
}

impl Signer {
    pub(crate) fn new(config: &S3Config) -> Result<Signer, String> {
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
        Ok(Signer { bucket, credentials })
    }

    pub(crate) fn bucket_name(&self) -> &str {
        self.bucket.name()
    }

    /// A presigned URL for `method` on `key` (`None`: the bucket itself), valid for `ttl`.
    /// `headers` are signed and must be sent as given.
    pub(crate) fn url(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        ttl: Duration,
    ) -> Url {
        let url = match key {
            Some(k) => self.bucket.object_url(k),
            None => self.bucket.base_url().clone(),
        };
        let mut query = query.to_vec();
        query.sort_unstable();
        let mut headers = headers.to_vec();
        headers.sort_unstable();
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            self.credentials.key(),
            self.credentials.secret(),
            self.credentials.token(),
            self.bucket.region(),
            ttl.min(MAX_PRESIGN_TTL).as_secs().max(1),
            query.into_iter(),
            headers.into_iter(),
        )
    }
}
