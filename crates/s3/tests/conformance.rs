//! The S3 store passes the [conformance suite](ferry_store::conformance) against two real
//! S3-compatible servers: `s3s-fs`, which checks every signature, and moto.
#![allow(clippy::unwrap_used)]

#[path = "support/s3_servers.rs"]
mod s3_servers;

use ferry_store::conformance::suite;
use ferry_store::{MultipartOptions, ObjectMeta, Store, StoreError};
use s3_servers::{Kind, S3Server};

async fn s3_suite(kind: Kind) {
    let server = S3Server::start(kind);
    let store = server.store("conformance");
    store.check().await.unwrap();
    suite(&store, MultipartOptions::default()).await;
    // Everything stays under the prefix, and clients cannot reach the store's records.
    let keys: Vec<String> = server.store("").list_objects("").await.unwrap().into_iter().map(|o| o.key).collect();
    assert!(keys.contains(&"conformance/k/obj".to_owned()), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("conformance/")), "{keys:?}");
    assert!(matches!(
        store
            .create_multipart(
                "x",
                ".ferry/records/sessions/s2.json",
                &ObjectMeta::default(),
                MultipartOptions::default()
            )
            .await,
        Err(StoreError::ReservedKey(_))
    ));
    // Parts kept as objects (for per-part processing), assembled by server-side copies.
    suite(&server.store("readable"), MultipartOptions { readable_parts: true, unknown_sizes: false }).await;
    // Parts of unknown size: URLs that bind no length.
    suite(&server.store("unknown"), MultipartOptions { readable_parts: false, unknown_sizes: true }).await;
}

#[tokio::test]
async fn s3_store_conforms_on_s3s_fs() {
    s3_suite(Kind::S3sFs).await;
}

#[tokio::test]
async fn s3_store_conforms_on_moto() {
    s3_suite(Kind::Moto).await;
}

#[tokio::test]
async fn s3_store_refuses_wrong_credentials_and_missing_buckets() {
    let server = S3Server::s3s_fs();
    let mut config = server.config("p");
    config.credentials.secret_access_key = "wrong".to_owned();
    let err = ferry_s3::S3Store::new(config).unwrap().check().await.unwrap_err();
    assert!(matches!(&err, StoreError::Remote { status: 403, .. }), "{err}");
    let mut config = server.config("p");
    config.bucket = "no-such-bucket".to_owned();
    let err = ferry_s3::S3Store::new(config).unwrap().check().await.unwrap_err();
    assert!(matches!(&err, StoreError::Remote { status: 404, .. }), "{err}");
    let mut config = server.config("p");
    config.endpoint = Some("http://127.0.0.1:1".to_owned());
    let err = ferry_s3::S3Store::new(config).unwrap().check().await.unwrap_err();
    assert!(matches!(&err, StoreError::Unreachable(_)), "{err}");
}
