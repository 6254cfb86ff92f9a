//! Any sequence of data-channel messages into the receiver's reassembly: never panics; every
//! accepted chunk lies inside the limits and does not overlap another; a complete transfer's size
//! is the sum of its distinct chunks.
#![no_main]

use std::collections::BTreeMap;

use ferry_core::frames::{Accepted, Frame, ReceiveLimits, Reassembly, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|messages: Vec<Vec<u8>>| {
    let limits = ReceiveLimits { max_message: 4096, max_size: 1 << 20 };
    let mut r = Reassembly::new(limits);
    let mut placed: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for m in &messages {
        let Ok(Frame::Chunk { index, total, payload }) = decode(m, limits.max_message) else { continue };
        match r.accept(index, total, payload.len()) {
            Ok(Accepted::Write { offset }) => {
                let end = offset + payload.len() as u64;
                assert!(end <= limits.max_size + limits.max_message as u64, "{offset}+{}", payload.len());
                for (&i, &(s, e)) in &placed {
                    assert!(end <= s || offset >= e || (s == e && e == offset), "chunk {index} overlaps {i}");
                }
                assert!(placed.insert(index, (offset, end)).is_none(), "chunk {index} written twice");
            }
            Ok(Accepted::Duplicate) => assert!(placed.contains_key(&index)),
            // An error ends a transfer; the driver drops it.
            Err(_) => return,
        }
        if r.is_complete() {
            let sum: u64 = placed.values().map(|(s, e)| e - s).sum();
            assert_eq!(r.size(), Some(sum));
        }
    }
});
