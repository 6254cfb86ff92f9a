//! Session lifecycle of `ferry serve`: complete's checks, cancel, expiry, crash recovery,
//! concurrency and shutdown — against a real server process.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const KIB: usize = 1024;

async fn status(srv: &TestServer, id: &str) -> Value {
    srv.get(&format!("/uploads/{id}")).await.json().await.unwrap()
}

#[tokio::test]
async fn complete_checks_parts_etags_and_sha256() {
    let srv = TestServer::start(&[]);
    let body = data(200 * KIB, 10);
    let created = srv.create("checked", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap();
    let parts = created["parts"].as_array().unwrap();
    for p in &parts[..2] {
        assert_eq!(srv.put_url(p["url"].as_str().unwrap(), slice(&body, p).to_vec()).await.status(), 200);
    }
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({})).await, 400, "missing_parts").await;

    // Part 3 with the wrong bytes (right size): the SHA-256 check refuses the object.
    let p3 = &parts[2];
    let mut wrong = slice(&body, p3).to_vec();
    wrong[0] ^= 0xff;
    assert_eq!(srv.put_url(p3["url"].as_str().unwrap(), wrong).await.status(), 200);
    let p4 = &parts[3];
    assert_eq!(srv.put_url(p4["url"].as_str().unwrap(), slice(&body, p4).to_vec()).await.status(), 200);
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({})).await, 422, "sha256_mismatch").await;
    let st = status(&srv, id).await;
    assert_eq!(st["state"], "uploading", "a mismatch leaves the upload resumable");
    assert_error(srv.get("/objects/checked").await, 404, "object_not_found").await;

    // ETag lists: wrong ETag, missing entry, duplicate entry, out-of-range entry.
    let etags: Vec<Value> = st["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"part_number": p["part_number"], "etag": p["etag"]}))
        .collect();
    let mut bad = etags.clone();
    bad[1]["etag"] = json!("\"00000000000000000000000000000000\"");
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({ "parts": bad })).await, 400, "etag_mismatch")
        .await;
    let short = etags[..3].to_vec();
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({ "parts": short })).await, 400, "invalid_parts")
        .await;
    let mut dup = etags.clone();
    dup[3] = dup[2].clone();
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({ "parts": dup })).await, 400, "invalid_parts")
        .await;
    let mut out = etags.clone();
    out.push(json!({"part_number": 9, "etag": "x"}));
    assert_error(
        srv.post(&format!("/uploads/{id}/complete"), json!({ "parts": out })).await,
        400,
        "invalid_part_number",
    )
    .await;

    // Re-sending a part replaces it; now everything matches (bare ETags accepted too).
    assert_eq!(srv.put_url(p3["url"].as_str().unwrap(), slice(&body, p3).to_vec()).await.status(), 200);
    let st = status(&srv, id).await;
    let bare: Vec<Value> = st["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"part_number": p["part_number"], "etag": p["etag"].as_str().unwrap().trim_matches('"')}))
        .collect();
    let res = srv.post(&format!("/uploads/{id}/complete"), json!({ "parts": bare })).await;
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.unwrap();
    assert_eq!(done["sha256"], sha256_hex(&body));
    // Idempotent: the same answer again.
    let again: Value = srv.post(&format!("/uploads/{id}/complete"), json!({})).await.json().await.unwrap();
    assert_eq!(again, done);
    let st = status(&srv, id).await;
    assert_eq!(st["state"], "completed");
    assert_eq!(st["result"], done);
    assert!(!srv.data_dir().join("uploads").join(id).exists(), "parts are freed once completed");
}

#[tokio::test]
async fn part_done_confirms_only_what_is_stored() {
    let srv = TestServer::start(&[]);
    let body = data(100 * KIB, 11);
    let created = srv.create("confirm", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap();
    let p1 = &created["parts"][0];
    let res = srv.put_url(p1["url"].as_str().unwrap(), slice(&body, p1).to_vec()).await;
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let done = srv.post(&format!("/uploads/{id}/parts/1/done"), json!({"etag": etag, "size": 64 * KIB})).await;
    assert_eq!(done.status(), 200);
    let bare = srv
        .post(&format!("/uploads/{id}/parts/1/done"), json!({"etag": etag.trim_matches('"'), "size": 64 * KIB}))
        .await;
    assert_eq!(bare.status(), 200);
    let wrong = srv.post(&format!("/uploads/{id}/parts/1/done"), json!({"etag": "\"beef\"", "size": 64 * KIB})).await;
    assert_error(wrong, 409, "part_mismatch").await;
    let wrong = srv.post(&format!("/uploads/{id}/parts/1/done"), json!({"etag": etag, "size": 5})).await;
    assert_error(wrong, 409, "part_mismatch").await;
    let missing = srv.post(&format!("/uploads/{id}/parts/2/done"), json!({"etag": etag, "size": 36 * KIB})).await;
    assert_error(missing, 404, "part_not_found").await;
    let outside = srv.post(&format!("/uploads/{id}/parts/3/done"), json!({"etag": etag, "size": 1})).await;
    assert_error(outside, 400, "invalid_part_number").await;
}

#[tokio::test]
async fn cancelled_and_completed_sessions_refuse_changes() {
    let srv = TestServer::start(&[]);
    let body = data(130 * KIB, 12);
    let created = srv.create("to-cancel", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap();
    let p1 = &created["parts"][0];
    assert_eq!(srv.put_url(p1["url"].as_str().unwrap(), slice(&body, p1).to_vec()).await.status(), 200);
    let parts_dir = srv.data_dir().join("uploads").join(id);
    assert!(parts_dir.exists());
    let res = srv.delete(&format!("/uploads/{id}")).await;
    assert_eq!(res.status(), 200);
    let st: Value = res.json().await.unwrap();
    assert_eq!(st["state"], "cancelled");
    assert_eq!(st["parts"].as_array().unwrap().len(), 0);
    assert!(!parts_dir.exists(), "cancel frees the parts at once");
    assert_eq!(srv.delete(&format!("/uploads/{id}")).await.status(), 200, "cancel is idempotent");
    let p2 = &created["parts"][1];
    assert_error(srv.put_url(p2["url"].as_str().unwrap(), slice(&body, p2).to_vec()).await, 410, "upload_cancelled")
        .await;
    assert_error(
        srv.post(&format!("/uploads/{id}/parts/sign"), json!({"part_numbers": [1]})).await,
        410,
        "upload_cancelled",
    )
    .await;
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({})).await, 410, "upload_cancelled").await;
    assert!(!parts_dir.exists(), "a refused PUT does not bring the parts back");

    // Completed: part PUTs, signing and cancel are 409, and the object stays.
    let other = data(10 * KIB, 13);
    let created = srv.create("kept", &other, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap();
    srv.put_all(&created, &other).await;
    assert_eq!(srv.post(&format!("/uploads/{id}/complete"), json!({})).await.status(), 200);
    let url = created["parts"][0]["url"].as_str().unwrap();
    assert_error(srv.put_url(url, other.clone()).await, 409, "upload_completed").await;
    assert_error(
        srv.post(&format!("/uploads/{id}/parts/sign"), json!({"part_numbers": [1]})).await,
        409,
        "upload_completed",
    )
    .await;
    assert_error(srv.delete(&format!("/uploads/{id}")).await, 409, "upload_completed").await;
    let got = srv.get("/objects/kept").await.bytes().await.unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&other));
}

#[tokio::test]
async fn sessions_expire_and_free_their_parts() {
    let srv = TestServer::start(&["--session-ttl", "2s", "--sweep-interval", "200ms"]);
    let body = data(100 * KIB, 14);
    let created = srv.create("late", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    let p1 = &created["parts"][0];
    assert_eq!(srv.put_url(p1["url"].as_str().unwrap(), slice(&body, p1).to_vec()).await.status(), 200);
    let parts_dir = srv.data_dir().join("uploads").join(&id);
    eventually(Duration::from_secs(10), async || !parts_dir.exists()).await;
    let st = status(&srv, &id).await;
    assert_eq!(st["state"], "expired");
    let p2 = &created["parts"][1];
    assert_error(srv.put_url(p2["url"].as_str().unwrap(), slice(&body, p2).to_vec()).await, 410, "upload_expired")
        .await;
    assert_error(srv.post(&format!("/uploads/{id}/complete"), json!({})).await, 410, "upload_expired").await;
    assert_eq!(srv.metric("ferry_uploads_total{state=\"expired\"}").await, 1.0);
    let listed: Value = srv.get("/uploads?state=expired").await.json().await.unwrap();
    assert_eq!(listed["uploads"][0]["upload_id"], id.as_str());
}

#[tokio::test]
async fn kill_9_mid_upload_loses_nothing_acknowledged() {
    let mut srv = TestServer::start(&[]);
    let body = data(320 * KIB + 5, 15);
    let created = srv.create("crash/survivor.bin", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    let parts = created["parts"].as_array().unwrap().clone();
    for p in &parts[..3] {
        assert_eq!(srv.put_url(p["url"].as_str().unwrap(), slice(&body, p).to_vec()).await.status(), 200);
    }
    // Part 4 is half sent when the server dies.
    let p4 = &parts[3];
    let url = p4["url"].as_str().unwrap();
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", 64 * KIB);
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&slice(&body, p4)[..40 * KIB]).await.unwrap();
    conn.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    srv.crash_and_restart();
    drop(conn);
    assert_eq!(files_in(&srv.data_dir().join("tmp")), 0, "start-up sweeps temp files");
    let st = status(&srv, &id).await;
    assert_eq!(st["state"], "uploading");
    let have: Vec<u64> = st["parts"].as_array().unwrap().iter().map(|p| p["part_number"].as_u64().unwrap()).collect();
    assert_eq!(have, vec![1, 2, 3]);
    // Resume: fresh URLs (the server's address changed) for what is missing.
    let signed: Value =
        srv.post(&format!("/uploads/{id}/parts/sign"), json!({"part_numbers": [4, 5, 6]})).await.json().await.unwrap();
    for p in signed["parts"].as_array().unwrap() {
        assert!(p["url"].as_str().unwrap().starts_with(&srv.url));
        assert_eq!(srv.put_url(p["url"].as_str().unwrap(), slice(&body, p).to_vec()).await.status(), 200);
    }
    let done: Value = srv.post(&format!("/uploads/{id}/complete"), json!({})).await.json().await.unwrap();
    assert_eq!(done["sha256"], sha256_hex(&body));
    // The finished object survives a crash too.
    srv.crash_and_restart();
    let got = srv.get("/objects/crash/survivor.bin").await.bytes().await.unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&body));
    assert_eq!(status(&srv, &id).await["state"], "completed");
}

#[tokio::test]
async fn concurrent_completes_give_one_result() {
    let srv = TestServer::start(&[]);
    let body = data(1024 * KIB, 16);
    let created = srv.create("race", &body, 64 * KIB as u64).await;
    srv.put_all(&created, &body).await;
    let id = created["upload_id"].as_str().unwrap();
    let url = srv.api(&format!("/uploads/{id}/complete"));
    let calls = (0..6).map(|_| {
        let http = srv.http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let res = http.post(url).bearer_auth(TOKEN).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        })
    });
    let mut results = Vec::new();
    for c in calls.collect::<Vec<_>>() {
        results.push(c.await.unwrap());
    }
    for (code, v) in &results {
        assert_eq!(*code, 200, "{v}");
        assert_eq!(v, &results[0].1, "every complete sees the same object");
    }
    assert_eq!(results[0].1["sha256"], sha256_hex(&body));
    assert_eq!(srv.metric("ferry_uploads_total{state=\"completed\"}").await, 1.0);
}

#[tokio::test]
async fn sigterm_finishes_parts_in_flight_then_exits_0() {
    let mut srv = TestServer::start(&[]);
    let body = data(64 * KIB, 17);
    let created = srv.create("graceful", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    let url = created["parts"][0]["url"].as_str().unwrap().to_owned();
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..10 * KIB]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pid = srv.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(srv.child.try_wait().unwrap().is_none(), "the server waits for the part in flight");
    conn.write_all(&body[10 * KIB..]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let exit = tokio::task::spawn_blocking(move || srv.child.wait().map(|s| (s, srv))).await.unwrap().unwrap();
    assert!(exit.0.success(), "exit status {:?}", exit.0);
    // Restarted, the part is there.
    let mut srv = exit.1;
    srv.crash_and_restart();
    let st = status(&srv, &id).await;
    assert_eq!(st["parts"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn complete_checks_a_sha256_given_at_complete() {
    let srv = TestServer::start(&[]);
    let body = data(90 * KIB, 18);
    let res = srv.post("/uploads", json!({"name": "late-hash", "size": body.len(), "part_size": 65536})).await;
    let created: Value = res.json().await.unwrap();
    srv.put_all(&created, &body).await;
    let id = created["upload_id"].as_str().unwrap();
    let path = format!("/uploads/{id}/complete");
    let complete = |sha: String| srv.post(&path, json!({ "sha256": sha }));
    assert_error(complete("0".repeat(64)).await, 422, "sha256_mismatch").await;
    assert_eq!(status(&srv, id).await["state"], "uploading");
    assert_error(complete("xyz".into()).await, 400, "invalid_sha256").await;
    let res = complete(sha256_hex(&body).to_uppercase()).await;
    assert_eq!(res.status(), 200);
    assert_error(complete("0".repeat(64)).await, 422, "sha256_mismatch").await;
    assert_eq!(complete(sha256_hex(&body)).await.status(), 200);
}
