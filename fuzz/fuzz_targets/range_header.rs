//! Any `Range` header against any object length: never panics, and every accepted range lies
//! inside the object.
#![no_main]

use ferry_core::range::parse_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, &str)| {
    let (len, header) = input;
    if let Ok(r) = parse_range(header, len) {
        assert!(r.start <= r.end, "{header:?} on {len}: {r:?}");
        assert!(r.end < len, "{header:?} on {len}: {r:?}");
        assert_eq!(r.len(), r.end - r.start + 1);
    }
});
