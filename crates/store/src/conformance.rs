//! The behaviour every [`Store`] must have, written against the trait so each implementation runs
//! the same suite: the embedded store on a temp dir here, the S3 store (in `ferry-s3`) against
//! real S3-compatible servers. [`suite`] panics at the first thing a store gets wrong.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ferry_core::api::PartInfo;
use ferry_core::plan::PartSpan;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::{ByteStream, Condition, MultipartOptions, ObjectMeta, Store, StoreError};

pub fn sp(part_number: u32, offset: u64, size: u64) -> PartSpan {
    PartSpan { part_number, offset, size }
}

pub fn body(data: &[u8]) -> ByteStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data.chunks(7000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures_util::stream::iter(chunks))
}

pub fn failing_body(data: &[u8]) -> ByteStream {
    let first: Result<Bytes, std::io::Error> = Ok(Bytes::copy_from_slice(data));
    let err: Result<Bytes, std::io::Error> =
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client left"));
    Box::pin(futures_util::stream::iter(vec![first, err]))
}

pub async fn read_all(store: &dyn Store, key: &str, start: u64, len: u64) -> Vec<u8> {
    let reader = store.open_object(key).await.unwrap();
    let mut s = reader.read(start, len);
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Same numbers and sizes, and the same ETags where the store reports them (`s3s-fs` lists parts
/// without ETags).
pub fn assert_same_parts(listed: &[PartInfo], expected: &[PartInfo]) {
    assert_eq!(listed.len(), expected.len(), "{listed:?} vs {expected:?}");
    for (l, e) in listed.iter().zip(expected) {
        assert_eq!((l.part_number, l.size), (e.part_number, e.size));
        assert!(l.etag.is_empty() || l.etag == e.etag, "{l:?} vs {e:?}");
    }
}

/// Collects a read; `Err` if the stream failed.
pub async fn try_read(stream: ByteStream) -> Result<Vec<u8>, std::io::Error> {
    let mut s = stream;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Every upload is created with `options`: with `readable_parts` the parts must be readable before
/// completion; with `unknown_sizes` they are laid end to end only at complete.
pub async fn suite(store: &dyn Store, options: MultipartOptions) {
    let readable = options.readable_parts;
    // Part 1 at the store's minimum part size, part 2 a shorter last part.
    let first = store.limits().min_part_size as usize;
    let total = (first + 30_000) as u64;
    let a: Vec<u8> = (0..first).map(|i| (i % 251) as u8).collect();
    let b = vec![2u8; 30_000];
    let up1 = store.create_multipart("up1", "k/obj", &ObjectMeta::default(), options).await.unwrap();
    assert!(store.list_parts(&up1).await.unwrap().is_empty());
    let s1 = sp(1, 0, first as u64);
    let s2 = sp(2, first as u64, 30_000);

    // Wrong sizes and failing bodies store nothing.
    assert!(matches!(store.put_part(&up1, s1, body(&a[..100])).await, Err(StoreError::BodyTooShort { .. })));
    let mut long = a.clone();
    long.push(0);
    assert!(matches!(store.put_part(&up1, s1, body(&long)).await, Err(StoreError::BodyTooLong { .. })));
    assert!(matches!(store.put_part(&up1, s1, failing_body(&a[..5])).await, Err(StoreError::Body(_))));
    assert!(store.list_parts(&up1).await.unwrap().is_empty());

    // Parts in any order; a re-sent part replaces the old one.
    let p2 = store.put_part(&up1, s2, body(&vec![9u8; 30_000])).await.unwrap();
    let p2b = store.put_part(&up1, s2, body(&b)).await.unwrap();
    assert_ne!(p2.etag, p2b.etag);
    let p1 = store.put_part(&up1, s1, body(&a)).await.unwrap();
    // A re-send that fails keeps the stored copy, bytes and ETag.
    assert!(matches!(store.put_part(&up1, s2, failing_body(&[7u8; 100])).await, Err(StoreError::Body(_))));
    assert!(matches!(store.put_part(&up1, s2, body(&[7u8; 10])).await, Err(StoreError::BodyTooShort { .. })));
    let listed = store.list_parts(&up1).await.unwrap();
    assert_same_parts(&listed, &[p1.clone(), p2b.clone()]);
    match store.read_part(&up1, s2).await {
        Ok(stream) => assert_eq!(try_read(stream).await.unwrap(), b, "the re-sent bytes"),
        Err(StoreError::Unreadable) => assert!(!readable, "parts must be readable when asked for"),
        Err(e) => panic!("{e}"),
    }
    if readable {
        assert_eq!(try_read(store.read_part(&up1, s1).await.unwrap()).await.unwrap(), a);
        assert!(matches!(store.read_part(&up1, sp(3, 0, 1)).await, Err(StoreError::MissingPart(3))));
    }
    let reports_etags = !listed[0].etag.is_empty();
    assert_same_parts(&[store.head_part(&up1, 2).await.unwrap().unwrap()], std::slice::from_ref(&p2b));
    assert_eq!(store.head_part(&up1, 3).await.unwrap(), None);

    // Complete checks ETags (where the store reports them) and, where the store can read its
    // parts, the checksum; a failure publishes nothing and keeps the parts.
    let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let sha = hex::encode(Sha256::digest(&whole));
    if reports_etags {
        let stale = [p1.clone(), p2.clone()];
        assert!(matches!(
            store.complete_multipart(&up1, &stale, None, ObjectMeta::default()).await,
            Err(StoreError::PartChanged { part: 2, .. })
        ));
    }
    let parts = [p1.clone(), p2b.clone()];
    if store.verifies_sha256() {
        let wrong = "0".repeat(64);
        assert!(matches!(
            store.complete_multipart(&up1, &parts, Some(&wrong), ObjectMeta::default()).await,
            Err(StoreError::ChecksumMismatch { .. })
        ));
    }
    assert!(matches!(store.open_object("k/obj").await, Err(StoreError::NoSuchObject)));
    assert_same_parts(&store.list_parts(&up1).await.unwrap(), &parts);
    let meta =
        ObjectMeta { content_type: Some("application/x-test".into()), metadata: [("a".into(), "b".into())].into() };
    let info = store.complete_multipart(&up1, &parts, Some(&sha.to_uppercase()), meta).await.unwrap();
    assert_eq!((info.size, info.sha256.as_deref(), info.key.as_str()), (total, Some(sha.as_str()), "k/obj"));
    assert_eq!(info.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(info.metadata.get("a").map(String::as_str), Some("b"));
    let head = store.head_object("k/obj").await.unwrap();
    assert_eq!(
        (head.size, &head.sha256, &head.etag, &head.metadata),
        (info.size, &info.sha256, &info.etag, &info.metadata)
    );
    assert_eq!(read_all(store, "k/obj", 0, total).await, whole);
    // Completing again (a caller that crashed before recording the result) finds the same object.
    let again = store.complete_multipart(&up1, &parts, None, ObjectMeta::default()).await.unwrap();
    assert_eq!((again.etag, again.sha256), (info.etag.clone(), info.sha256.clone()));
    let mid = first as u64 - 10;
    assert_eq!(read_all(store, "k/obj", mid, 20).await, whole[mid as usize..mid as usize + 20]);

    // A reader opened before the key is replaced gives its own version or fails; never the new
    // bytes, never a mix.
    let old_reader = store.open_object("k/obj").await.unwrap();
    let up2 = store.create_multipart("up2", "k/obj", &ObjectMeta::default(), options).await.unwrap();
    let q = store.put_part(&up2, sp(1, 0, 5), body(b"hello")).await.unwrap();
    let info2 = store.complete_multipart(&up2, &[q], None, ObjectMeta::default()).await.unwrap();
    assert_eq!(info2.size, 5);
    // Given no SHA-256, the store works it out.
    assert_eq!(info2.sha256.as_deref(), Some(hex::encode(Sha256::digest(b"hello")).as_str()));
    if let Ok(bytes) = try_read(old_reader.read(0, total)).await {
        assert_eq!(bytes, whole);
    }
    assert_eq!(read_all(store, "k/obj", 0, 5).await, b"hello");

    // Listing filters by prefix.
    let up3 = store.create_multipart("up3", "k2", &ObjectMeta::default(), options).await.unwrap();
    let r = store.put_part(&up3, sp(1, 0, 1), body(b"x")).await.unwrap();
    store.complete_multipart(&up3, &[r], None, ObjectMeta::default()).await.unwrap();
    let keys: Vec<String> = store.list_objects("k/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, vec!["k/obj"]);
    assert_eq!(store.list_objects("").await.unwrap().len(), 2);
    store.delete_object("k2").await.unwrap();
    store.delete_object("k2").await.unwrap();
    assert!(matches!(store.head_object("k2").await, Err(StoreError::NoSuchObject)));

    // Abort (cancel, expiry) is idempotent, removes the parts, and nothing can be added after it.
    let up4 = store.create_multipart("up4", "k/aborted", &ObjectMeta::default(), options).await.unwrap();
    store.put_part(&up4, sp(1, 0, 3), body(b"abc")).await.unwrap();
    store.abort_multipart(&up4).await.unwrap();
    store.abort_multipart(&up4).await.unwrap();
    assert!(store.put_part(&up4, sp(1, 0, 3), body(b"abc")).await.is_err());
    match store.list_parts(&up4).await {
        Err(StoreError::NoSuchUpload) => {}
        Ok(parts) => assert!(parts.is_empty(), "{parts:?}"),
        Err(e) => panic!("{e}"),
    }
    assert!(store.complete_multipart(&up4, &[], None, ObjectMeta::default()).await.is_err());
    assert!(matches!(store.head_object("k/aborted").await, Err(StoreError::NoSuchObject)));

    // Records: conditional writes.
    let v1 = store.put_record("sessions/s1", b"one".to_vec(), Condition::IfAbsent).await.unwrap();
    assert!(matches!(
        store.put_record("sessions/s1", b"x".to_vec(), Condition::IfAbsent).await,
        Err(StoreError::ConditionFailed)
    ));
    let v2 = store.put_record("sessions/s1", b"two".to_vec(), Condition::IfMatch(v1.clone())).await.unwrap();
    assert!(matches!(
        store.put_record("sessions/s1", b"three".to_vec(), Condition::IfMatch(v1)).await,
        Err(StoreError::ConditionFailed)
    ));
    assert!(matches!(
        store.put_record("sessions/none", b"x".to_vec(), Condition::IfMatch(v2.clone())).await,
        Err(StoreError::ConditionFailed)
    ));
    let rec = store.get_record("sessions/s1").await.unwrap().unwrap();
    assert_eq!((rec.bytes.as_slice(), rec.version), (&b"two"[..], v2));
    store.put_record("sessions/s2", b"x".to_vec(), Condition::Any).await.unwrap();
    assert_eq!(store.list_records("sessions/").await.unwrap(), vec!["sessions/s1", "sessions/s2"]);
    store.delete_record("sessions/s1").await.unwrap();
    assert_eq!(store.get_record("sessions/s1").await.unwrap(), None);
    for bad in ["../x", "a/../b", "", "a//b", "/abs", "a\\b"] {
        assert!(matches!(store.get_record(bad).await, Err(StoreError::InvalidName(_))), "{bad:?}");
    }
}
