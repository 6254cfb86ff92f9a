//! The behaviour every `Store` must have, written against the trait so each implementation runs
//! the same suite. Here: the embedded filesystem store on a temp dir.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ferry_core::plan::{Limits, PartSpan};
use ferry_store::{ByteStream, Condition, FsStore, ObjectMeta, Store, StoreError};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

fn sp(part_number: u32, offset: u64, size: u64) -> PartSpan {
    PartSpan { part_number, offset, size }
}

fn body(data: &[u8]) -> ByteStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data.chunks(7000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures_util::stream::iter(chunks))
}

fn failing_body(data: &[u8]) -> ByteStream {
    let first: Result<Bytes, std::io::Error> = Ok(Bytes::copy_from_slice(data));
    let err: Result<Bytes, std::io::Error> =
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client left"));
    Box::pin(futures_util::stream::iter(vec![first, err]))
}

async fn read_all(store: &dyn Store, key: &str, start: u64, len: u64) -> Vec<u8> {
    let reader = store.open_object(key).await.unwrap();
    let mut s = reader.read(start, len);
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn suite(store: &dyn Store) {
    let a = vec![1u8; 70_000];
    let b = vec![2u8; 30_000];
    store.create_multipart("up1").await.unwrap();
    assert!(store.list_parts("up1").await.unwrap().is_empty());

    // Wrong sizes and failing bodies store nothing.
    assert!(matches!(
        store.put_part("up1", sp(1, 0, 70_000), body(&a[..100])).await,
        Err(StoreError::BodyTooShort { .. })
    ));
    let mut long = a.clone();
    long.push(0);
    assert!(matches!(store.put_part("up1", sp(1, 0, 70_000), body(&long)).await, Err(StoreError::BodyTooLong { .. })));
    assert!(matches!(store.put_part("up1", sp(1, 0, 70_000), failing_body(&a[..5])).await, Err(StoreError::Body(_))));
    assert!(store.list_parts("up1").await.unwrap().is_empty());
    assert!(matches!(store.put_part("nope", sp(1, 0, 1), body(&[0])).await, Err(StoreError::NoSuchUpload)));

    // Parts in any order; a re-sent part replaces the old one.
    let p2 = store.put_part("up1", sp(2, 70_000, 30_000), body(&vec![9u8; 30_000])).await.unwrap();
    let p2b = store.put_part("up1", sp(2, 70_000, 30_000), body(&b)).await.unwrap();
    assert_ne!(p2.etag, p2b.etag);
    let p1 = store.put_part("up1", sp(1, 0, 70_000), body(&a)).await.unwrap();
    // A re-send that fails keeps the stored copy, bytes and ETag.
    assert!(matches!(
        store.put_part("up1", sp(2, 70_000, 30_000), failing_body(&[7u8; 100])).await,
        Err(StoreError::Body(_))
    ));
    assert!(matches!(
        store.put_part("up1", sp(2, 70_000, 30_000), body(&[7u8; 10])).await,
        Err(StoreError::BodyTooShort { .. })
    ));
    let listed = store.list_parts("up1").await.unwrap();
    assert_eq!(listed, vec![p1.clone(), p2b.clone()]);
    assert_eq!(store.head_part("up1", 2).await.unwrap(), Some(p2b.clone()));
    assert_eq!(store.head_part("up1", 3).await.unwrap(), None);

    // Complete checks ETags and the checksum; a failure publishes nothing and keeps the parts.
    let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let sha = hex::encode(Sha256::digest(&whole));
    let stale = [p1.clone(), p2.clone()];
    assert!(matches!(
        store.complete_multipart("up1", "k/obj", &stale, None, ObjectMeta::default()).await,
        Err(StoreError::PartChanged { part: 2, .. })
    ));
    let parts = [p1.clone(), p2b.clone()];
    let wrong = "0".repeat(64);
    assert!(matches!(
        store.complete_multipart("up1", "k/obj", &parts, Some(&wrong), ObjectMeta::default()).await,
        Err(StoreError::ChecksumMismatch { .. })
    ));
    assert!(matches!(store.open_object("k/obj").await, Err(StoreError::NoSuchObject)));
    let meta =
        ObjectMeta { content_type: Some("application/x-test".into()), metadata: [("a".into(), "b".into())].into() };
    let info = store.complete_multipart("up1", "k/obj", &parts, Some(&sha.to_uppercase()), meta).await.unwrap();
    assert_eq!((info.size, info.sha256.as_str(), info.key.as_str()), (100_000, sha.as_str(), "k/obj"));
    assert_eq!(info.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(store.head_object("k/obj").await.unwrap(), info);
    assert_eq!(read_all(store, "k/obj", 0, 100_000).await, whole);
    // Completing again (a caller that crashed before recording the result) finds the same object.
    assert_eq!(store.complete_multipart("up1", "k/obj", &parts, None, ObjectMeta::default()).await.unwrap(), info);
    assert_eq!(read_all(store, "k/obj", 69_990, 20).await, whole[69_990..70_010]);

    // A reader keeps the version it opened while the key is replaced.
    let old_reader = store.open_object("k/obj").await.unwrap();
    store.create_multipart("up2").await.unwrap();
    let q = store.put_part("up2", sp(1, 0, 5), body(b"hello")).await.unwrap();
    let info2 = store.complete_multipart("up2", "k/obj", &[q], None, ObjectMeta::default()).await.unwrap();
    assert_eq!(info2.size, 5);
    let mut s = old_reader.read(0, 100_000);
    let mut n = 0;
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, 100_000);
    assert_eq!(read_all(store, "k/obj", 0, 5).await, b"hello");

    // `a` and `a/b` are both keys; listing filters by prefix.
    store.create_multipart("up3").await.unwrap();
    let r = store.put_part("up3", sp(1, 0, 1), body(b"x")).await.unwrap();
    store.complete_multipart("up3", "k", &[r], None, ObjectMeta::default()).await.unwrap();
    let keys: Vec<String> = store.list_objects("k/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, vec!["k/obj"]);
    assert_eq!(store.list_objects("").await.unwrap().len(), 2);
    store.delete_object("k").await.unwrap();
    store.delete_object("k").await.unwrap();
    assert!(matches!(store.head_object("k").await, Err(StoreError::NoSuchObject)));

    // Abort is idempotent and removes parts.
    store.abort_multipart("up1").await.unwrap();
    store.abort_multipart("up1").await.unwrap();
    assert!(matches!(store.list_parts("up1").await, Err(StoreError::NoSuchUpload)));

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
    let rec = store.get_record("sessions/s1").await.unwrap().unwrap();
    assert_eq!((rec.bytes.as_slice(), rec.version), (&b"two"[..], v2));
    store.put_record("sessions/s2", b"x".to_vec(), Condition::Any).await.unwrap();
    assert_eq!(store.list_records("sessions/").await.unwrap(), vec!["sessions/s1", "sessions/s2"]);
    store.delete_record("sessions/s1").await.unwrap();
    assert_eq!(store.get_record("sessions/s1").await.unwrap(), None);
    for bad in ["../x", "a/../b", "", "a//b", "/abs", "a\\b"] {
        assert!(matches!(store.get_record(bad).await, Err(StoreError::InvalidName(_))), "{bad:?}");
    }
    assert!(matches!(store.create_multipart("../escape").await, Err(StoreError::InvalidName(_))));
}

#[tokio::test]
async fn fs_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), Limits::EMBEDDED).unwrap();
    suite(&store).await;
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temp file is left behind");
}

#[tokio::test]
async fn fs_store_sweeps_temp_files_and_ignores_damaged_parts_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), Limits::EMBEDDED).unwrap();
    store.create_multipart("u").await.unwrap();
    store.put_part("u", sp(1, 0, 3), body(b"abc")).await.unwrap();
    std::fs::write(dir.path().join("tmp").join("debris"), b"half a part").unwrap();
    std::fs::write(dir.path().join("uploads").join("u").join("00002.part"), b"no trailer").unwrap();
    drop(store);
    let store = FsStore::open(dir.path(), Limits::EMBEDDED).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let parts = store.list_parts("u").await.unwrap();
    assert_eq!(parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![1]);
}
