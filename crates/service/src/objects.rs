//! Stored objects: opened for reading, and signed GET URLs that work without the token.

use ferry_core::api::SignedUrl;
use ferry_core::key::normalize_key;
use ferry_core::sign::Scope;
use ferry_store::ObjectReader;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::Service;
use crate::error::ServiceError;
use crate::uploads::unix;

/// Percent-encodes everything but unreserved characters and `/`, which separates key segments.
pub const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

impl Service {
    /// The object `name` names, opened: its description and its bytes, of one version.
    pub async fn open_object(&self, name: &str) -> Result<Box<dyn ObjectReader>, ServiceError> {
        let key = normalize_key(name)?;
        Ok(self.store.open_object(&key).await?)
    }

    /// A signed URL that GETs the object `name` names until it expires.
    pub async fn sign_object(&self, name: &str) -> Result<SignedUrl, ServiceError> {
        let key = normalize_key(name)?;
        self.store.head_object(&key).await?;
        let expires_at = self.clock.now() + self.config.url_ttl;
        let expires = unix(expires_at);
        let sig = self.signer.sign("GET", Scope::Object { key: &key }, expires);
        let url = format!("{}/o/{}?expires={expires}&signature={sig}", self.config.public_url, self.object_path(&key));
        Ok(SignedUrl { url, expires_at: expires_at.replace_nanosecond(0).unwrap_or(expires_at) })
    }

    /// The key as it appears in a URL path.
    pub fn object_path(&self, key: &str) -> String {
        utf8_percent_encode(key, KEY_SEGMENT).to_string()
    }
}
