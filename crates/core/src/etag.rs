//! ETags as HTTP quotes them and as stores report them (`"abc"`, `W/"abc"`, `abc`).

/// An ETag without its quotes or weak marker, for comparing a quoted ETag with a bare one.
pub fn bare_etag(etag: &str) -> &str {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(e)
}

/// Quotes an ETag for HTTP.
pub fn quote_etag(etag: &str) -> String {
    format!("\"{}\"", bare_etag(etag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_quoted_or_bare() {
        assert_eq!(bare_etag("\"abc\""), "abc");
        assert_eq!(bare_etag("abc"), "abc");
        assert_eq!(bare_etag("W/\"abc\""), "abc");
        assert_eq!(bare_etag("\""), "\"");
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
    }
}
