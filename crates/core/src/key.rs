//! Object keys: which names a client may give, and their one canonical spelling.

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {0} bytes long; the maximum is {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("the name contains a NUL or control character")]
    ControlCharacter,
    #[error("the name contains a backslash")]
    Backslash,
    #[error("the name starts with '/'")]
    Absolute,
    #[error("the name contains a '.' or '..' segment")]
    DotSegment,
    #[error("the name ends with '/'")]
    TrailingSlash,
}

/// Checks a client-supplied object name and returns its canonical key: runs of `/` collapse to one.
/// Everything else that could make a key mean two things or reach outside its store is refused
/// rather than rewritten, so a key is never silently different from what the client asked for.
pub fn normalize_key(name: &str) -> Result<String, KeyError> {
    if name.is_empty() {
        return Err(KeyError::Empty);
    }
    if name.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(KeyError::ControlCharacter);
    }
    if name.contains('\\') {
        return Err(KeyError::Backslash);
    }
    if name.starts_with('/') {
        return Err(KeyError::Absolute);
    }
    if name.ends_with('/') {
        return Err(KeyError::TrailingSlash);
    }
    let segments: Vec<&str> = name.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(KeyError::DotSegment);
    }
    Ok(segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_unchanged() {
        for name in ["a", "data/set.zip", "rooms/lab/results/1/out.bin", "über/naïve file.txt", "..a", "a..", ".hidden"]
        {
            assert_eq!(normalize_key(name).as_deref(), Ok(name));
        }
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert_eq!(normalize_key("a//b///c").as_deref(), Ok("a/b/c"));
    }

    #[test]
    fn hostile_names_are_refused() {
        let cases = [
            ("", KeyError::Empty),
            ("/etc/passwd", KeyError::Absolute),
            ("..", KeyError::DotSegment),
            ("a/../b", KeyError::DotSegment),
            ("a/./b", KeyError::DotSegment),
            ("a//..//b", KeyError::DotSegment),
            ("a\\..\\b", KeyError::Backslash),
            ("a\0b", KeyError::ControlCharacter),
            ("a\nb", KeyError::ControlCharacter),
            ("a\u{7f}", KeyError::ControlCharacter),
            ("a\u{85}", KeyError::ControlCharacter),
            ("dir/", KeyError::TrailingSlash),
        ];
        for (name, err) in cases {
            assert_eq!(normalize_key(name), Err(err), "{name:?}");
        }
    }

    #[test]
    fn length_limit_is_in_bytes() {
        assert!(normalize_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
        assert_eq!(normalize_key(&"a".repeat(MAX_KEY_LEN + 1)), Err(KeyError::TooLong(MAX_KEY_LEN + 1)));
        let multibyte = "é".repeat(MAX_KEY_LEN / 2 + 1);
        assert!(matches!(normalize_key(&multibyte), Err(KeyError::TooLong(_))));
    }
}
