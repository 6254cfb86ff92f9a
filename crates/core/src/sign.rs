//! Signed URLs: a part URL lets its holder PUT one part of one upload until it expires; an object
//! URL lets its holder GET one object until it expires. Nothing else.
//!
//! The signature is HMAC-SHA256 under a server secret over a canonical string that names the
//! method, the kind of resource, the resource and the expiry, so a signature cannot be moved to
//! another part, upload, object, method or lifetime.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a signature grants access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// PUT of one part of one upload session.
    Part { upload_id: &'a str, part_number: u32 },
    /// GET (and HEAD) of one object.
    Object { key: &'a str },
    /// A form POST of one object, described by a policy (base64, so it has no newline).
    Policy { policy: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the signature is malformed")]
    Malformed,
    #[error("the signature does not match")]
    Invalid,
    #[error("the signed URL has expired")]
    Expired,
}

/// Signs and verifies with one secret.
#[derive(Clone)]
pub struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: impl Into<Vec<u8>>) -> Signer {
        Signer { secret: secret.into() }
    }

    fn mac(&self, method: &str, scope: Scope<'_>, expires: u64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        // Fields are separated by '\n', which neither methods, hex upload ids, numbers nor
        // validated keys (no control characters) can contain, so the encoding is unambiguous.
        let canonical = match scope {
            Scope::Part { upload_id, part_number } => {
                format!("ferry-url-v1\n{method}\npart\n{upload_id}\n{part_number}\n{expires}")
            }
            Scope::Object { key } => format!("ferry-url-v1\n{method}\nobject\n{key}\n{expires}"),
            Scope::Policy { policy } => format!("ferry-url-v1\n{method}\npolicy\n{policy}\n{expires}"),
        };
        mac.update(canonical.as_bytes());
        mac
    }

    /// The hex signature for `method` on `scope` until `expires` (Unix seconds).
    pub fn sign(&self, method: &str, scope: Scope<'_>, expires: u64) -> String {
        hex::encode(self.mac(method, scope, expires).finalize().into_bytes())
    }

    /// Checks a signature in constant time, then its expiry against `now` (Unix seconds).
    pub fn verify(
        &self,
        method: &str,
        scope: Scope<'_>,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), SignError> {
        if signature.len() != 64 {
            return Err(SignError::Malformed);
        }
        let sig = hex::decode(signature).map_err(|_| SignError::Malformed)?;
        self.mac(method, scope, expires).verify_slice(&sig).map_err(|_| SignError::Invalid)?;
        if now >= expires {
            return Err(SignError::Expired);
        }
        Ok(())
    }

    /// Checks the `expires` and `signature` query values of a signed URL as they arrived (either
    /// may be missing or garbage).
    pub fn verify_query(
        &self,
        method: &str,
        scope: Scope<'_>,
        expires: Option<&str>,
        signature: Option<&str>,
        now: u64,
    ) -> Result<(), SignError> {
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(SignError::Malformed);
        };
        if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignError::Malformed);
        }
        let expires: u64 = expires.parse().map_err(|_| SignError::Malformed)?;
        self.verify(method, scope, expires, signature, now)
    }
}

/// The signature of a webhook delivery: `v1=` and the hex HMAC-SHA256 under `secret` of
/// `"{timestamp}.{body}"`, sent in `Ferry-Webhook-Signature` with the timestamp (Unix seconds) in
/// `Ferry-Webhook-Timestamp`. A receiver recomputes it and compares in constant time.
pub fn webhook_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: Scope<'static> = Scope::Part { upload_id: "u1", part_number: 3 };

    #[test]
    fn a_signature_verifies_until_it_expires() {
        let s = Signer::new(b"secret".to_vec());
        let sig = s.sign("PUT", PART, 1000);
        assert_eq!(s.verify("PUT", PART, 1000, &sig, 999), Ok(()));
        assert_eq!(s.verify("PUT", PART, 1000, &sig, 1000), Err(SignError::Expired));
        assert_eq!(s.verify("PUT", PART, 1000, &sig.to_uppercase(), 0), Ok(()));
    }

    #[test]
    fn a_signature_cannot_be_retargeted() {
        let s = Signer::new(b"secret".to_vec());
        let sig = s.sign("PUT", PART, 1000);
        let others = [
            ("GET", PART, 1000),
            ("PUT", Scope::Part { upload_id: "u1", part_number: 4 }, 1000),
            ("PUT", Scope::Part { upload_id: "u2", part_number: 3 }, 1000),
            ("PUT", Scope::Object { key: "u1" }, 1000),
            ("PUT", PART, 1001),
        ];
        for (method, scope, exp) in others {
            assert_eq!(s.verify(method, scope, exp, &sig, 0), Err(SignError::Invalid), "{method} {scope:?} {exp}");
        }
        assert_eq!(Signer::new(b"other".to_vec()).verify("PUT", PART, 1000, &sig, 0), Err(SignError::Invalid));
    }

    #[test]
    fn query_values_are_checked_as_strings() {
        let s = Signer::new(b"secret".to_vec());
        let sig = s.sign("PUT", PART, 1000);
        assert_eq!(s.verify_query("PUT", PART, Some("1000"), Some(&sig), 5), Ok(()));
        for exp in [None, Some(""), Some("+1000"), Some("1000 "), Some("0x3e8"), Some("99999999999999999999999")] {
            assert_eq!(s.verify_query("PUT", PART, exp, Some(&sig), 5), Err(SignError::Malformed), "{exp:?}");
        }
        assert_eq!(s.verify_query("PUT", PART, Some("1000"), None, 5), Err(SignError::Malformed));
        // The signature covers the number, so another spelling of it grants nothing more.
        assert_eq!(s.verify_query("PUT", PART, Some("01000"), Some(&sig), 5), Ok(()));
        assert_eq!(s.verify_query("PUT", PART, Some("1001"), Some(&sig), 5), Err(SignError::Invalid));
    }

    #[test]
    fn malformed_signatures_are_told_apart_from_wrong_ones() {
        let s = Signer::new(b"secret".to_vec());
        for bad in ["", "zz", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65), "é"] {
            assert_eq!(s.verify("PUT", PART, 1000, bad, 0), Err(SignError::Malformed), "{bad:?}");
        }
        assert_eq!(s.verify("PUT", PART, 1000, &"0".repeat(64), 0), Err(SignError::Invalid));
    }

    #[test]
    fn webhook_signature_covers_timestamp_and_body() {
        let s = webhook_signature(b"secret", 1_700_000_000, b"{}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert_ne!(s, webhook_signature(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(s, webhook_signature(b"secret", 1_700_000_000, b"{ }"));
        assert_ne!(s, webhook_signature(b"other", 1_700_000_000, b"{}"));
        assert_eq!(s, webhook_signature(b"secret", 1_700_000_000, b"{}"));
    }
}
