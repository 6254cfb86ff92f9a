//! Any interleaving of control and upload messages into the data-channel receiver: never
//! panics; every placement lies inside the limits and is placed once; a file asked to be stored
//! is exactly the chunks placed (when nothing was resumed); once failed, it places nothing more.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_core::frames::{Ranges, ReceiveLimits};
use ferry_core::transfer::{Receiver, ReceiverAction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, Vec<(u8, Vec<u8>)>)| {
    let (control, messages) = input;
    let limits = ReceiveLimits { max_message: 4096, max_size: 1 << 20 };
    let t0 = Instant::now();
    let mut r = Receiver::new(limits, control, t0);
    let mut placed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut resumed = false;
    for (i, (kind, data)) in messages.into_iter().take(500).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 7);
        let failed_before = r.is_failed();
        match kind % 4 {
            0 => r.handle_control(now, &data),
            1 => {
                let held = Ranges::from_spans(&[[0, u32::from(kind / 4) + 1]], 8).unwrap_or_default();
                resumed |= r.announced().is_some();
                r.held(now, held);
            }
            _ => {
                if let Some(p) = r.handle_upload(now, true, &data) {
                    assert!(!failed_before, "a failed transfer placed a chunk");
                    assert!(p.index < p.total_chunks);
                    let len = data.len().saturating_sub(8) as u64;
                    assert!(p.offset + len <= limits.max_size + limits.max_message as u64);
                    assert!(placed.insert(p.index, len).is_none(), "chunk {} placed twice", p.index);
                }
            }
        }
        while let Some(action) = r.poll() {
            if let ReceiverAction::Finish { size, .. } = action {
                assert!(size <= limits.max_size);
                if !resumed {
                    assert_eq!(size, placed.values().sum::<u64>(), "the file is what was placed");
                }
                r.stored("k".into(), "s".into());
            }
        }
    }
});
