//! Which bucket, where, and with which credentials.

use ferry_core::plan::{GIB, Limits, MIB, TIB};

use crate::S3Credentials;

/// What S3 accepts: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 of them.
pub const S3_LIMITS: Limits =
    Limits { min_part_size: 5 * MIB, max_part_size: 5 * GIB, max_parts: 10_000, max_object_size: 5 * TIB };

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
