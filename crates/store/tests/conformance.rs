//! The embedded store passes the [conformance suite](ferry_store::conformance), and keeps its
//! own promises about the directory it lives in.
#![allow(clippy::unwrap_used)]

use ferry_core::plan::Limits;
use ferry_store::conformance::{body, read_all, sp, suite};
use ferry_store::{FsStore, MultipartOptions, ObjectMeta, Store, StoreError};

#[tokio::test]
async fn fs_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), Limits::EMBEDDED).unwrap();
    suite(&store, MultipartOptions { readable_parts: true, unknown_sizes: false }).await;
    // Parts of an upload of unknown size, each in a file of its own until complete.
    let separate = tempfile::tempdir().unwrap();
    let unknown = FsStore::open(separate.path(), Limits::EMBEDDED).unwrap();
    suite(&unknown, MultipartOptions { readable_parts: true, unknown_sizes: true }).await;
    assert_eq!(std::fs::read_dir(separate.path().join("tmp")).unwrap().count(), 0, "no temp file is left behind");
    // `a` and `a/b` can both be keys here (not on `s3s-fs`, which keeps objects as files).
    let up = store.create_multipart("u", "k/obj/x", &ObjectMeta::default(), MultipartOptions::default()).await.unwrap();
    let p = store.put_part(&up, sp(1, 0, 1), body(b"x")).await.unwrap();
    store.complete_multipart(&up, &[p], None, ObjectMeta::default()).await.unwrap();
    assert_eq!(read_all(&store, "k/obj/x", 0, 1).await, b"x");
    assert_eq!(store.head_object("k/obj").await.unwrap().size, 5);
    assert!(matches!(
        store.create_multipart("../escape", "k", &ObjectMeta::default(), MultipartOptions::default()).await,
        Err(StoreError::InvalidName(_))
    ));
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temp file is left behind");
}

#[tokio::test]
async fn fs_store_sweeps_temp_files_and_ignores_damaged_parts_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), Limits::EMBEDDED).unwrap();
    let u = store.create_multipart("u", "k", &ObjectMeta::default(), MultipartOptions::default()).await.unwrap();
    store.put_part(&u, sp(1, 0, 3), body(b"abc")).await.unwrap();
    std::fs::write(dir.path().join("tmp").join("debris"), b"half a part").unwrap();
    std::fs::write(dir.path().join("uploads").join("u").join("00002.part"), b"no trailer").unwrap();
    drop(store);
    let store = FsStore::open(dir.path(), Limits::EMBEDDED).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let parts = store.list_parts(&u).await.unwrap();
    assert_eq!(parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![1]);
}
