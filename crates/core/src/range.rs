//! The HTTP `Range` request header, as ferry serves it: one byte range per request.

/// An inclusive byte range inside an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value for this range of an object of `total` bytes.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("the Range header is malformed")]
    Malformed,
    #[error("only one range per request is supported")]
    Multiple,
    #[error("the range is outside the object")]
    Unsatisfiable,
}

/// Parses a `Range` header value against an object of `len` bytes.
///
/// Accepts `bytes=a-b`, `bytes=a-` and `bytes=-n` (the last `n` bytes). An end beyond the object is
/// clamped to its last byte, as RFC 9110 says; a start beyond it, or any range of an empty object,
/// is unsatisfiable.
pub fn parse_range(header: &str, len: u64) -> Result<ByteRange, RangeError> {
    let spec = header.trim();
    let (unit, set) = spec.split_once('=').ok_or(RangeError::Malformed)?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Err(RangeError::Malformed);
    }
    if set.contains(',') {
        return Err(RangeError::Multiple);
    }
    let (first, last) = set.trim().split_once('-').ok_or(RangeError::Malformed)?;
    let first = first.trim();
    let last = last.trim();
    match (first.is_empty(), last.is_empty()) {
        (true, true) => Err(RangeError::Malformed),
        (true, false) => {
            let suffix = parse_u64(last)?;
            if suffix == 0 || len == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            Ok(ByteRange { start: len.saturating_sub(suffix), end: len - 1 })
        }
        (false, _) => {
            let start = parse_u64(first)?;
            let end = if last.is_empty() { None } else { Some(parse_u64(last)?) };
            if end.is_some_and(|e| e < start) {
                return Err(RangeError::Malformed);
            }
            if start >= len {
                return Err(RangeError::Unsatisfiable);
            }
            let end = end.map_or(len - 1, |e| e.min(len - 1));
            Ok(ByteRange { start, end })
        }
    }
}

fn parse_u64(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed);
    }
    s.parse().map_err(|_| RangeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Result<ByteRange, RangeError> {
        Ok(ByteRange { start, end })
    }

    #[test]
    fn the_three_forms() {
        assert_eq!(parse_range("bytes=0-99", 1000), r(0, 99));
        assert_eq!(parse_range("bytes=500-", 1000), r(500, 999));
        assert_eq!(parse_range("bytes=-100", 1000), r(900, 999));
        assert_eq!(parse_range(" Bytes = 1 - 2 ", 1000), r(1, 2));
    }

    #[test]
    fn clamping_and_edges() {
        assert_eq!(parse_range("bytes=0-5000", 1000), r(0, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), r(0, 999));
        assert_eq!(parse_range("bytes=999-999", 1000), r(999, 999));
        assert_eq!(parse_range("bytes=0-0", 1), r(0, 0));
        assert_eq!(parse_range("bytes=0-0", 1).map(|b| b.len()), Ok(1));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse_range("bytes=1000-", 1000), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=0-", 0), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=-1", 0), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 10), Err(RangeError::Unsatisfiable));
    }

    #[test]
    fn malformed_and_multiple() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "items=0-1",
            "bytes=a-b",
            "bytes=1-0",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=1--2",
            "bytes=18446744073709551616-",
            "bytes=-18446744073709551616",
            "bytes=1-2-3",
        ] {
            assert_eq!(parse_range(h, 1000), Err(RangeError::Malformed), "{h:?}");
        }
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Err(RangeError::Multiple));
        assert_eq!(parse_range("bytes=0-1,", 1000), Err(RangeError::Multiple));
    }

    #[test]
    fn every_accepted_range_lies_inside_the_object() {
        let headers = ["bytes=0-", "bytes=-1", "bytes=3-7", "bytes=7-3", "bytes=-9", "bytes=9-", "bytes=0-100"];
        for len in 0..12u64 {
            for h in headers {
                if let Ok(b) = parse_range(h, len) {
                    assert!(b.start <= b.end && b.end < len, "{h} on {len}: {b:?}");
                }
            }
        }
    }
}
