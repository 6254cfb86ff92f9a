//! Where the server's S3 credentials come from: the environment, as the AWS tools read it.

use std::collections::BTreeMap;

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
}
