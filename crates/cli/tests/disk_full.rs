//! A server whose disk is full (a small tmpfs): cancelling or expiring an upload still frees its
//! space, and a create that cannot fit is refused at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: usize = 1024 * 1024;

/// Two uploads of 12 MiB on a 24 MiB disk: each fits when created, together they cannot. The
/// first is stored whole; the second's parts go until the disk is full. Returns both.
async fn fill(srv: &TestServer) -> (Value, Value) {
    let a = data(12 * MIB, 1);
    let b = data(12 * MIB, 2);
    let first = srv.create("first.bin", &a, MIB as u64).await;
    let second = srv.create("second.bin", &b, MIB as u64).await;
    srv.put_all(&first, &a).await;
    for p in second["parts"].as_array().unwrap() {
        let res = srv.put_url(p["url"].as_str().unwrap(), slice(&b, p).to_vec()).await;
        if res.status() == 507 {
            assert_error(res, 507, "insufficient_storage").await;
            return (first, second);
        }
        assert_eq!(res.status(), 200);
    }
    panic!("24 MiB of parts fitted on a 24 MiB disk");
}

#[tokio::test]
async fn cancel_frees_a_full_disk() {
    let srv = TestServer::start_on_tmpfs("24m", &[]);
    let (first, second) = fill(&srv).await;
    // Nothing else fits now, not even a small upload.
    let res = srv.post("/uploads", serde_json::json!({"name": "more.bin", "size": MIB})).await;
    assert_error(res, 507, "insufficient_storage").await;
    let id = first["upload_id"].as_str().unwrap();
    let res = srv.delete(&format!("/uploads/{id}")).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let status: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(status["state"], "cancelled");
    // Its space is back: the second upload finishes.
    let b = data(12 * MIB, 2);
    srv.put_all(&second, &b).await;
    let id = second["upload_id"].as_str().unwrap();
    let res = srv.post(&format!("/uploads/{id}/complete"), serde_json::json!({})).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

#[tokio::test]
async fn expiry_frees_a_full_disk() {
    let srv = TestServer::start_on_tmpfs("24m", &["--session-ttl", "4s", "--sweep-interval", "1s"]);
    let (first, second) = fill(&srv).await;
    for upload in [&first, &second] {
        let path = format!("/uploads/{}", upload["upload_id"].as_str().unwrap());
        eventually(Duration::from_secs(30), async || {
            let status: Value = srv.get(&path).await.json().await.unwrap();
            status["state"] == "expired" && status["parts"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
    }
    // Both were swept and their space is back.
    let c = data(20 * MIB, 3);
    let third = srv.create("third.bin", &c, MIB as u64).await;
    srv.put_all(&third, &c).await;
}

#[tokio::test]
async fn a_create_larger_than_the_free_space_is_refused_with_the_numbers() {
    let srv = TestServer::start_on_tmpfs("24m", &[]);
    let res = srv.post("/uploads", serde_json::json!({"name": "huge.bin", "size": 100 * MIB})).await;
    assert_eq!(res.status(), 507);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("100.0 MiB (104857600 bytes) do not fit: the server has 2"), "{message}");
    let listed: Value = srv.get("/uploads").await.json().await.unwrap();
    assert_eq!(listed["uploads"].as_array().unwrap().len(), 0, "nothing was opened");
}
