//! File transfer over a WebRTC data channel, in seed 004's framing, and the receiver's reassembly.
//!
//! On an upload channel (`video_upload` or `upload`) a message of at most one byte is a keepalive
//! that the receiver echoes; any other message is a chunk: `[chunk_index: u32 LE][total_chunks:
//! u32 LE][payload]`. Chunks are the same size (48 KiB by default) but the last. The receiver
//! keeps which chunks it holds as a set of ranges ([`Reassembly`]) — a bitmap that stays small
//! when chunks arrive in order — so duplicates are recognised, a resuming sender can be told what
//! to skip, and the transfer is complete when every chunk is in. Everything a peer can get wrong
//! is an error that ends that transfer: a message shorter than its header, an index past the
//! total, a total that changes, a chunk of the wrong size, chunks after completion, more chunks
//! than the limits allow, a flood of keepalives ([`KeepaliveBudget`]).
//!
//! No I/O here: the driver writes each accepted chunk at the offset it is given.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Bytes before a chunk's payload.
pub const HEADER_LEN: usize = 8;
/// Seed 004's recommended payload size: fits a data-channel message on every stack.
pub const DEFAULT_CHUNK: u32 = 48 * 1024;

/// Why a transfer cannot go on. Each has a stable snake_case [`code`](FrameError::code) for the
/// `error` message sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a {0}-byte message is shorter than the 8-byte chunk header")]
    TooShort(usize),
    #[error("the message is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("chunk {index} is not below the total of {total}")]
    IndexOutOfRange { index: u32, total: u32 },
    #[error("the total changed from {was} to {now} chunks")]
    TotalChanged { was: u32, now: u32 },
    #[error("a transfer has at least one chunk")]
    NoChunks,
    #[error("{total} chunks of {chunk_size} bytes exceed the limit of {max} bytes")]
    TransferTooLarge { total: u32, chunk_size: u32, max: u64 },
    #[error("chunk {index} has {size} bytes; chunks are {chunk_size} bytes (the last no more)")]
    WrongChunkSize { index: u32, size: usize, chunk_size: u32 },
    #[error("chunk {index} came before the chunk size was known")]
    ChunkSizeUnknown { index: u32 },
    #[error("chunk {index} came after the transfer was complete")]
    AfterComplete { index: u32 },
    #[error("more than {max} keepalives in {window:?}")]
    KeepaliveFlood { max: u32, window: Duration },
    #[error("the chunk size {0} is outside 1 byte to the message limit")]
    BadChunkSize(u32),
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooShort(_) => "message_too_short",
            FrameError::TooLarge { .. } => "message_too_large",
            FrameError::IndexOutOfRange { .. } => "index_out_of_range",
            FrameError::TotalChanged { .. } => "total_changed",
            FrameError::NoChunks => "no_chunks",
            FrameError::TransferTooLarge { .. } => "transfer_too_large",
            FrameError::WrongChunkSize { .. } => "wrong_chunk_size",
            FrameError::ChunkSizeUnknown { .. } => "chunk_size_unknown",
            FrameError::AfterComplete { .. } => "chunk_after_complete",
            FrameError::KeepaliveFlood { .. } => "keepalive_flood",
            FrameError::BadChunkSize(_) => "bad_chunk_size",
        }
    }
}

/// One message of an upload channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Echo it back unchanged.
    Keepalive(&'a [u8]),
    Chunk {
        index: u32,
        total: u32,
        payload: &'a [u8],
    },
}

/// Reads one message; `max` bounds its whole length.
pub fn decode(msg: &[u8], max: usize) -> Result<Frame<'_>, FrameError> {
    if msg.len() <= 1 {
        return Ok(Frame::Keepalive(msg));
    }
    if msg.len() > max {
        return Err(FrameError::TooLarge { size: msg.len(), max });
    }
    let (Some(index), Some(total), Some(payload)) = (msg.get(0..4), msg.get(4..8), msg.get(8..)) else {
        return Err(FrameError::TooShort(msg.len()));
    };
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    Ok(Frame::Chunk { index: word(index), total: word(total), payload })
}

/// The header of chunk `index` of `total`.
pub fn header(index: u32, total: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&index.to_le_bytes());
    h[4..].copy_from_slice(&total.to_le_bytes());
    h
}

/// How many chunks of `chunk_size` make `size` bytes (an empty file is one empty chunk).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1))).max(1)
}

/// A set of chunk indices, kept as disjoint half-open ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    /// start → end
    spans: BTreeMap<u32, u32>,
    count: u64,
}

impl Ranges {
    pub fn contains(&self, i: u32) -> bool {
        self.spans.range(..=i).next_back().is_some_and(|(_, &end)| i < end)
    }

    /// Adds `i`; false if it was already in.
    pub fn insert(&mut self, i: u32) -> bool {
        if self.contains(i) {
            return false;
        }
        let mut start = i;
        let mut end = i + 1;
        if let Some((&s, &e)) = self.spans.range(..i).next_back()
            && e == i
        {
            start = s;
        }
        if let Some(&e) = self.spans.get(&(i + 1)) {
            self.spans.remove(&(i + 1));
            end = e;
        }
        self.spans.insert(start, end);
        self.count += 1;
        true
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ranges, in order, as `[start, end)` pairs (the `resume_state` message carries these).
    pub fn spans(&self) -> Vec<[u32; 2]> {
        self.spans.iter().map(|(&s, &e)| [s, e]).collect()
    }

    /// Rebuilds a set from `[start, end)` pairs a peer sent, refusing empty, reversed or
    /// out-of-range ones (`end` at most `total`).
    pub fn from_spans(spans: &[[u32; 2]], total: u32) -> Option<Ranges> {
        let mut r = Ranges::default();
        for &[s, e] in spans {
            if s >= e || e > total {
                return None;
            }
            for i in s..e {
                r.insert(i);
            }
        }
        Some(r)
    }

    /// The indices below `total` not in the set, in order.
    pub fn missing(&self, total: u32) -> impl Iterator<Item = u32> + '_ {
        (0..total).filter(move |i| !self.contains(*i))
    }
}

/// What the receiver can accept from one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// Largest message, header included.
    pub max_message: usize,
    /// Largest file.
    pub max_size: u64,
}

impl Default for ReceiveLimits {
    fn default() -> ReceiveLimits {
        ReceiveLimits { max_message: 256 * 1024, max_size: 5 << 40 }
    }
}

/// What to do with an accepted chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Write the payload at this offset of the file.
    Write { offset: u64 },
    /// Already held: nothing to do.
    Duplicate,
}

/// The receiving side of one transfer: which chunks are in, where each goes, when it is done.
#[derive(Debug, Clone)]
pub struct Reassembly {
    limits: ReceiveLimits,
    total: Option<u32>,
    chunk_size: Option<u32>,
    held: Ranges,
    /// The last chunk's length, once it is in.
    last_len: Option<u64>,
    /// The file's size, when the sender announced it.
    announced_size: Option<u64>,
}

impl Reassembly {
    pub fn new(limits: ReceiveLimits) -> Reassembly {
        Reassembly {
            limits,
            total: None,
            chunk_size: None,
            held: Ranges::default(),
            last_len: None,
            announced_size: None,
        }
    }

    /// Starts from what an `upload_start` says — `size` bytes in chunks of `chunk_size` — and
    /// what an earlier connection already stored.
    pub fn announced(
        limits: ReceiveLimits,
        size: u64,
        chunk_size: u32,
        held: Ranges,
    ) -> Result<Reassembly, FrameError> {
        let mut r = Reassembly::new(limits);
        r.set_chunk_size(chunk_size)?;
        let count = chunk_count(size, chunk_size);
        let total = u32::try_from(count).map_err(|_| FrameError::TransferTooLarge {
            total: u32::MAX,
            chunk_size,
            max: limits.max_size,
        })?;
        if size > limits.max_size {
            return Err(FrameError::TransferTooLarge { total, chunk_size, max: limits.max_size });
        }
        r.set_total(total)?;
        if held.spans().last().is_some_and(|s| s[1] > total) {
            return Err(FrameError::IndexOutOfRange { index: total, total });
        }
        r.held = held;
        r.announced_size = Some(size);
        if r.held.contains(total - 1) {
            r.last_len = Some(size - u64::from(total - 1) * u64::from(chunk_size));
        }
        Ok(r)
    }

    /// Starts from what an earlier connection of a peer without a control channel left:
    /// `total` chunks of `chunk_size`, `held` of them in. (The last chunk is never among them:
    /// its length, which gives the file's size, comes when it does.)
    pub fn resumed(limits: ReceiveLimits, total: u32, chunk_size: u32, held: Ranges) -> Result<Reassembly, FrameError> {
        let mut r = Reassembly::new(limits);
        r.set_chunk_size(chunk_size)?;
        r.set_total(total)?;
        if held.spans().last().is_some_and(|s| s[1] > total) {
            return Err(FrameError::IndexOutOfRange { index: total, total });
        }
        r.held = if held.contains(total - 1) {
            let mut without_last = Ranges::default();
            for [start, end] in held.spans() {
                (start..end.min(total - 1)).for_each(|i| {
                    without_last.insert(i);
                });
            }
            without_last
        } else {
            held
        };
        Ok(r)
    }

    fn set_chunk_size(&mut self, chunk_size: u32) -> Result<(), FrameError> {
        if chunk_size == 0 || chunk_size as usize > self.limits.max_message - HEADER_LEN {
            return Err(FrameError::BadChunkSize(chunk_size));
        }
        self.chunk_size = Some(chunk_size);
        self.check_size()
    }

    fn set_total(&mut self, total: u32) -> Result<(), FrameError> {
        if total == 0 {
            return Err(FrameError::NoChunks);
        }
        self.total = Some(total);
        self.check_size()
    }

    fn check_size(&self) -> Result<(), FrameError> {
        if let (Some(total), Some(chunk_size)) = (self.total, self.chunk_size)
            && u64::from(total - 1) * u64::from(chunk_size) >= self.limits.max_size.max(1)
        {
            return Err(FrameError::TransferTooLarge { total, chunk_size, max: self.limits.max_size });
        }
        Ok(())
    }

    pub fn total(&self) -> Option<u32> {
        self.total
    }

    pub fn chunk_size(&self) -> Option<u32> {
        self.chunk_size
    }

    pub fn held(&self) -> &Ranges {
        &self.held
    }

    pub fn is_complete(&self) -> bool {
        self.total.is_some_and(|t| self.held.len() == u64::from(t))
    }

    /// The file's length, once complete.
    pub fn size(&self) -> Option<u64> {
        let (total, chunk_size, last) = (self.total?, self.chunk_size.unwrap_or(0), self.last_len?);
        self.is_complete().then(|| u64::from(total - 1) * u64::from(chunk_size) + last)
    }

    /// Takes chunk `index` of `total` with `len` payload bytes.
    pub fn accept(&mut self, index: u32, total: u32, len: usize) -> Result<Accepted, FrameError> {
        match self.total {
            Some(t) if t != total => return Err(FrameError::TotalChanged { was: t, now: total }),
            Some(_) => {}
            None => self.set_total(total)?,
        }
        if index >= total {
            return Err(FrameError::IndexOutOfRange { index, total });
        }
        if self.is_complete() {
            return Err(FrameError::AfterComplete { index });
        }
        let last = index == total - 1;
        let chunk_size = match self.chunk_size {
            Some(c) => c,
            // The first chunk that is not the last sets the size; a lone chunk is its own size.
            None if !last || total == 1 => {
                let size = u32::try_from(len).map_err(|_| FrameError::BadChunkSize(u32::MAX))?;
                self.set_chunk_size(size.max(1))?;
                size.max(1)
            }
            None => return Err(FrameError::ChunkSizeUnknown { index }),
        };
        let fits = match (last, self.announced_size) {
            (true, Some(size)) => len as u64 == size - u64::from(total - 1) * u64::from(chunk_size),
            (true, None) => len as u64 <= u64::from(chunk_size),
            (false, _) => len as u64 == u64::from(chunk_size),
        };
        if !fits || (len == 0 && total > 1) {
            return Err(FrameError::WrongChunkSize { index, size: len, chunk_size });
        }
        if !self.held.insert(index) {
            return Ok(Accepted::Duplicate);
        }
        if last {
            self.last_len = Some(len as u64);
        }
        Ok(Accepted::Write { offset: u64::from(index) * u64::from(chunk_size) })
    }
}

/// Keepalives a peer may send: at most `max` in any `window`; more is a flood.
#[derive(Debug, Clone)]
pub struct KeepaliveBudget(crate::rate::Window);

impl KeepaliveBudget {
    pub fn new(max: u32, window: Duration) -> KeepaliveBudget {
        KeepaliveBudget(crate::rate::Window::new(max, window))
    }

    /// Counts a keepalive received at `now`.
    pub fn on_keepalive(&mut self, now: Instant) -> Result<(), FrameError> {
        if self.0.hit(now) {
            Ok(())
        } else {
            Err(FrameError::KeepaliveFlood { max: self.0.max(), window: self.0.window() })
        }
    }
}

impl Default for KeepaliveBudget {
    /// Senders ping every few seconds; 50 a second is no keepalive.
    fn default() -> KeepaliveBudget {
        KeepaliveBudget::new(50, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReceiveLimits = ReceiveLimits { max_message: 64 * 1024, max_size: 1 << 30 };

    fn msg(index: u32, total: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = header(index, total).to_vec();
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn frames_round_trip_and_short_messages_are_keepalives_or_errors() {
        let m = msg(7, 9, b"abc");
        assert_eq!(decode(&m, 1024), Ok(Frame::Chunk { index: 7, total: 9, payload: b"abc" }));
        assert_eq!(decode(&[], 1024), Ok(Frame::Keepalive(&[])));
        assert_eq!(decode(&[0x42], 1024), Ok(Frame::Keepalive(&[0x42])));
        for len in 2..HEADER_LEN {
            assert_eq!(decode(&vec![1u8; len], 1024), Err(FrameError::TooShort(len)));
        }
        assert_eq!(decode(&msg(0, 1, &[]), 1024), Ok(Frame::Chunk { index: 0, total: 1, payload: &[] }));
        assert_eq!(decode(&[0u8; 2000], 1024), Err(FrameError::TooLarge { size: 2000, max: 1024 }));
        assert_eq!(&header(0x0102_0304, 5)[..], &[4, 3, 2, 1, 5, 0, 0, 0]);
    }

    #[test]
    fn ranges_merge_and_report_what_is_missing() {
        let mut r = Ranges::default();
        for i in [5, 1, 3, 2, 9, 4] {
            assert!(r.insert(i));
        }
        assert!(!r.insert(3));
        assert_eq!(r.spans(), vec![[1, 6], [9, 10]]);
        assert_eq!(r.len(), 6);
        assert!(r.contains(1) && r.contains(5) && !r.contains(6) && !r.contains(0) && r.contains(9));
        assert_eq!(r.missing(11).collect::<Vec<_>>(), vec![0, 6, 7, 8, 10]);
        let back = Ranges::from_spans(&r.spans(), 10).unwrap();
        assert_eq!(back, r);
        assert!(Ranges::from_spans(&[[3, 3]], 10).is_none());
        assert!(Ranges::from_spans(&[[4, 2]], 10).is_none());
        assert!(Ranges::from_spans(&[[0, 11]], 10).is_none());
    }

    #[test]
    fn ranges_match_a_plain_bitmap_for_every_order() {
        // Every insertion order of 7 chunks, against a bitmap.
        fn permute(items: &mut Vec<u32>, k: usize, out: &mut Vec<Vec<u32>>) {
            if k == items.len() {
                out.push(items.clone());
                return;
            }
            for i in k..items.len() {
                items.swap(k, i);
                permute(items, k + 1, out);
                items.swap(k, i);
            }
        }
        let mut orders = Vec::new();
        permute(&mut (0..7).collect(), 0, &mut orders);
        for order in orders {
            let mut r = Ranges::default();
            let mut bits = [false; 7];
            for i in order {
                assert_eq!(r.insert(i), !bits[i as usize]);
                bits[i as usize] = true;
                for (j, b) in bits.iter().enumerate() {
                    assert_eq!(r.contains(j as u32), *b);
                }
                let spans = r.spans();
                assert!(spans.windows(2).all(|w| w[0][1] < w[1][0]), "disjoint and merged: {spans:?}");
            }
            assert_eq!(r.spans(), vec![[0, 7]]);
        }
    }

    #[test]
    fn a_transfer_in_order_is_placed_and_completes() {
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(0, 3, 100), Ok(Accepted::Write { offset: 0 }));
        assert_eq!(r.accept(1, 3, 100), Ok(Accepted::Write { offset: 100 }));
        assert!(!r.is_complete() && r.size().is_none());
        assert_eq!(r.accept(1, 3, 100), Ok(Accepted::Duplicate));
        assert_eq!(r.accept(2, 3, 7), Ok(Accepted::Write { offset: 200 }));
        assert!(r.is_complete());
        assert_eq!(r.size(), Some(207));
        assert_eq!(r.accept(2, 3, 7), Err(FrameError::AfterComplete { index: 2 }));
        assert_eq!(r.accept(0, 3, 100).unwrap_err().code(), "chunk_after_complete");
    }

    #[test]
    fn bad_chunks_are_errors() {
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(0, 0, 10), Err(FrameError::NoChunks));
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(3, 3, 10).unwrap_err().code(), "index_out_of_range");
        let mut r = Reassembly::new(LIMITS);
        r.accept(0, 4, 10).unwrap();
        assert_eq!(r.accept(1, 5, 10), Err(FrameError::TotalChanged { was: 4, now: 5 }));
        assert_eq!(r.accept(1, 4, 9).unwrap_err().code(), "wrong_chunk_size");
        assert_eq!(r.accept(3, 4, 11).unwrap_err().code(), "wrong_chunk_size", "a last chunk larger than the rest");
        assert_eq!(r.accept(3, 4, 0).unwrap_err().code(), "wrong_chunk_size");
        // The last chunk first, size unknown.
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(4, 5, 3).unwrap_err().code(), "chunk_size_unknown");
        // Too large, by count or by chunk size.
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(0, u32::MAX, 60_000).unwrap_err().code(), "transfer_too_large");
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(0, 2, 70_000).unwrap_err().code(), "bad_chunk_size");
    }

    #[test]
    fn a_lone_chunk_is_the_whole_file_even_when_empty() {
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(r.accept(0, 1, 0), Ok(Accepted::Write { offset: 0 }));
        assert_eq!(r.size(), Some(0));
        let mut r = Reassembly::new(LIMITS);
        r.accept(0, 1, 5).unwrap();
        assert_eq!(r.size(), Some(5));
    }

    #[test]
    fn an_announced_transfer_resumes_from_what_is_held() {
        let held = Ranges::from_spans(&[[0, 2]], 4).unwrap();
        let mut r = Reassembly::announced(LIMITS, 34, 10, held).unwrap();
        assert_eq!(r.total(), Some(4));
        assert_eq!(r.accept(1, 4, 10), Ok(Accepted::Duplicate));
        // The last chunk must be exactly what the announced size leaves.
        assert_eq!(r.accept(3, 4, 3).unwrap_err().code(), "wrong_chunk_size");
        // Out of order is fine once the chunk size is known.
        assert_eq!(r.accept(3, 4, 4), Ok(Accepted::Write { offset: 30 }));
        assert_eq!(r.accept(2, 4, 10), Ok(Accepted::Write { offset: 20 }));
        assert_eq!(r.size(), Some(34));
        // Held through the end already: complete with the announced size.
        let all = Ranges::from_spans(&[[0, 4]], 4).unwrap();
        assert_eq!(Reassembly::announced(LIMITS, 34, 10, all).unwrap().size(), Some(34));
        assert!(Reassembly::announced(LIMITS, 40, 0, Ranges::default()).is_err());
        assert_eq!(Reassembly::announced(LIMITS, 0, 10, Ranges::default()).unwrap().total(), Some(1));
        let too_far = Ranges::from_spans(&[[0, 6]], 6).unwrap();
        assert!(Reassembly::announced(LIMITS, 34, 10, too_far).is_err());
        assert_eq!(
            Reassembly::announced(LIMITS, 2 << 30, 60_000, Ranges::default()).unwrap_err().code(),
            "transfer_too_large"
        );
    }

    #[test]
    fn keepalive_floods_are_caught() {
        let t0 = Instant::now();
        let mut b = KeepaliveBudget::new(3, Duration::from_secs(1));
        for i in 0..3 {
            assert!(b.on_keepalive(t0 + Duration::from_millis(i * 10)).is_ok());
        }
        assert_eq!(b.on_keepalive(t0 + Duration::from_millis(50)).unwrap_err().code(), "keepalive_flood");
        let mut b = KeepaliveBudget::new(3, Duration::from_secs(1));
        for s in 0..100 {
            assert!(b.on_keepalive(t0 + Duration::from_secs(s)).is_ok(), "one a second is fine");
        }
    }
}
