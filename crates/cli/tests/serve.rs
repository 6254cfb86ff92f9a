//! Black-box tests of `ferry serve`: a real server process on 127.0.0.1, real files, plain HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;

/// Opens a raw connection and sends a PUT that declares `declared` body bytes but sends `body`.
async fn raw_put(url: &str, declared: usize, body: &[u8]) -> tokio::net::TcpStream {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Sends one request exactly as written (no client-side path normalization) and returns the raw
/// response.
async fn raw_request(base: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let host = base.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn multipart_upload_round_trips_with_sha256_ranges_and_signed_get() {
    let srv = TestServer::start(&[]);
    let body = data(300 * KIB + 123, 1);
    let created = srv.create("datasets/mice/train.bin", &body, 64 * KIB as u64).await;
    assert_eq!(created["part_count"], 5);
    assert_eq!(created["key"], "datasets/mice/train.bin");
    // Parts in parallel and out of order.
    let parts = created["parts"].as_array().unwrap().clone();
    let mut tasks = Vec::new();
    for p in parts.iter().rev() {
        let url = p["url"].as_str().unwrap().to_owned();
        let chunk = slice(&body, p).to_vec();
        let http = srv.http.clone();
        tasks.push(tokio::spawn(async move { http.put(url).body(chunk).send().await.unwrap() }));
    }
    for t in tasks {
        let res = t.await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("etag").unwrap().to_str().unwrap().starts_with('"'));
    }
    let id = created["upload_id"].as_str().unwrap();
    let status: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(status["state"], "uploading");
    assert_eq!(status["parts"].as_array().unwrap().len(), 5);
    assert_eq!(status["bytes_received"], body.len());

    let etags: Vec<Value> = status["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"part_number": p["part_number"], "etag": p["etag"]}))
        .collect();
    let res = srv.post(&format!("/uploads/{id}/complete"), json!({ "parts": etags })).await;
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.unwrap();
    assert_eq!(done["sha256"], sha256_hex(&body));
    assert_eq!(done["size"], body.len());

    let got = srv.get("/objects/datasets/mice/train.bin").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["x-ferry-sha256"], sha256_hex(&body).as_str());
    assert_eq!(sha256_hex(&got.bytes().await.unwrap()), sha256_hex(&body));

    let ranged = |range: &'static str| {
        srv.http.get(srv.api("/objects/datasets/mice/train.bin")).bearer_auth(TOKEN).header("range", range).send()
    };
    let res = ranged("bytes=100-199").await.unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], format!("bytes 100-199/{}", body.len()).as_str());
    assert_eq!(&res.bytes().await.unwrap()[..], &body[100..200]);
    let res = ranged("bytes=-10").await.unwrap();
    assert_eq!(&res.bytes().await.unwrap()[..], &body[body.len() - 10..]);
    let res = ranged("bytes=307000-").await.unwrap();
    assert_eq!(&res.bytes().await.unwrap()[..], &body[307000..]);
    for bad in ["bytes=0-1,4-5", "bytes=99999999-", "lines=1-2", "bytes=5-1"] {
        let res = ranged(bad).await.unwrap();
        assert_eq!(res.headers()["content-range"], format!("bytes */{}", body.len()).as_str());
        assert_error(res, 416, "invalid_range").await;
    }
    let head = srv.http.head(srv.api("/objects/datasets/mice/train.bin")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], body.len().to_string().as_str());

    // A signed GET URL works without the token, for that object only.
    let signed: Value = srv.post("/objects/datasets/mice/train.bin/sign", json!({})).await.json().await.unwrap();
    let url = signed["url"].as_str().unwrap();
    let res = srv.http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(sha256_hex(&res.bytes().await.unwrap()), sha256_hex(&body));
    let moved = url.replace("/o/datasets/mice/train.bin", "/o/datasets/mice/other.bin");
    assert_error(srv.http.get(moved).send().await.unwrap(), 403, "invalid_signature").await;
    assert_error(srv.post("/objects/nothing/here/sign", json!({})).await, 404, "object_not_found").await;

    assert_eq!(srv.metric("ferry_bytes_received_total").await, body.len() as f64);
    assert_eq!(srv.metric("ferry_parts_received_total").await, 5.0);
    assert_eq!(srv.metric("ferry_uploads_total{state=\"completed\"}").await, 1.0);
    let listed: Value = srv.get("/uploads?state=completed").await.json().await.unwrap();
    assert_eq!(listed["uploads"].as_array().unwrap().len(), 1);
    assert_error(srv.get("/uploads?state=finished").await, 400, "invalid_state").await;
}

#[tokio::test]
async fn empty_and_single_part_objects() {
    let srv = TestServer::start(&[]);
    let created = srv.create("empty", &[], 64 * KIB as u64).await;
    assert_eq!(created["part_count"], 1);
    srv.put_all(&created, &[]).await;
    let id = created["upload_id"].as_str().unwrap();
    let done: Value = srv.post(&format!("/uploads/{id}/complete"), json!({})).await.json().await.unwrap();
    assert_eq!(done["sha256"], sha256_hex(&[]));
    let res = srv.get("/objects/empty").await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().is_empty());

    // part_size larger than size means one part; the default plan needs no part_size at all.
    let body = data(1000, 2);
    let res = srv.post("/uploads", json!({"name": "small", "size": 1000})).await;
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["part_count"], 1);
    assert_eq!(created["part_size"], 8 * 1024 * 1024);
    srv.put_all(&created, &body).await;
    let id = created["upload_id"].as_str().unwrap();
    // The bearer-authorized proxy path and an empty complete body work too.
    let res = srv.http.post(srv.api(&format!("/uploads/{id}/complete"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn tokens_are_required_and_errors_are_json() {
    let srv = TestServer::start(&[]);
    let res = srv.http.post(srv.api("/uploads")).json(&json!({"name": "a", "size": 1})).send().await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_error(res, 401, "unauthorized").await;
    let res = srv.http.get(srv.api("/uploads")).bearer_auth("wrong").send().await.unwrap();
    assert_error(res, 401, "unauthorized").await;
    let res = srv.http.get(srv.api("/objects/x")).header("authorization", "Basic dGVzdA==").send().await.unwrap();
    assert_error(res, 401, "unauthorized").await;
    assert_error(srv.http.get(format!("{}/nowhere", srv.url)).send().await.unwrap(), 404, "not_found").await;
    assert_error(srv.http.delete(format!("{}/healthz", srv.url)).send().await.unwrap(), 405, "method_not_allowed")
        .await;
    assert_error(srv.get("/uploads/0123456789abcdef0123456789abcdef").await, 404, "upload_not_found").await;
    assert_error(srv.get("/uploads/..%2F..%2Fetc").await, 404, "upload_not_found").await;
    let health: Value = srv.http.get(format!("{}/healthz", srv.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn bad_create_requests_are_refused() {
    let srv = TestServer::start(&["--max-object-size", "1GiB"]);
    let raw = |body: &'static str| {
        srv.http
            .post(srv.api("/uploads"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_error(raw("{not json").await.unwrap(), 400, "invalid_json").await;
    assert_error(raw(r#"{"name":"a","size":-5}"#).await.unwrap(), 400, "invalid_json").await;
    assert_error(raw(r#"{"name":"a"}"#).await.unwrap(), 400, "invalid_json").await;
    assert_error(raw(r#"{"name":"a","size":"big"}"#).await.unwrap(), 400, "invalid_json").await;
    let huge = format!(r#"{{"name":"a","size":1,"metadata":{{"k":"{}"}}}}"#, "x".repeat(2 << 20));
    let res = srv
        .http
        .post(srv.api("/uploads"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_error(res, 413, "body_too_large").await;
    let res =
        srv.http.post(srv.api("/uploads")).bearer_auth(TOKEN).body(r#"{"name":"a","size":1}"#).send().await.unwrap();
    assert_error(res, 415, "unsupported_media_type").await;

    let cases = [
        (json!({"name": "a", "size": (1u64 << 30) + 1}), "object_too_large"),
        (json!({"name": "a", "size": u64::MAX}), "object_too_large"),
        (json!({"name": "a", "size": 1000, "part_size": 1000}), "part_size_too_small"),
        (json!({"name": "a", "size": 1000, "part_size": 6u64 << 30}), "part_size_too_large"),
        (json!({"name": "a", "size": 1u64 << 30, "part_size": 65536}), "too_many_parts"),
        (json!({"name": "a", "size": 1, "sha256": "abc"}), "invalid_sha256"),
        (json!({"name": "a", "size": 1, "processor": "rm -rf /"}), "unknown_processor"),
        (json!({"name": "a", "size": 1, "webhook_url": "http://127.0.0.1:1/"}), "webhooks_unsupported"),
        (json!({"name": "a", "size": 1, "metadata": {"k": "a\nb"}}), "invalid_metadata"),
    ];
    for (body, code) in cases {
        assert_error(srv.post("/uploads", body).await, 400, code).await;
    }
    let long = "a".repeat(1025);
    for name in ["", "/etc/passwd", "../x", "a/../../b", "a/./b", "a\\b", "a\u{0}b", "a\u{1b}b", "dir/", long.as_str()]
    {
        assert_error(srv.post("/uploads", json!({"name": name, "size": 1})).await, 400, "invalid_name").await;
    }
    // Sent raw: URL libraries resolve %2e%2e themselves, a hostile client does not.
    for path in [
        "/objects/a/%2e%2e/b",
        "/objects/%2E%2E",
        "/objects/a/../b",
        "/objects/a%5Cb",
        "/objects/a%00b",
        "/objects/%2Fetc",
    ] {
        let res =
            raw_request(&srv.url, "GET", &format!("/v1{path}"), &[("authorization", &format!("Bearer {TOKEN}"))]).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{path}: {res}");
        assert!(res.contains(r#""code":"invalid_name""#), "{path}: {res}");
    }
    // Nothing was created by any of that.
    let listed: Value = srv.get("/uploads").await.json().await.unwrap();
    assert_eq!(listed["uploads"].as_array().unwrap().len(), 0);
    assert_eq!(files_in(&srv.data_dir().join("uploads")), 0);
}

#[tokio::test]
async fn signatures_are_scoped_and_expire() {
    let srv = TestServer::start(&["--url-ttl", "2s"]);
    let body = data(200 * KIB, 3);
    let a = srv.create("a", &body, 64 * KIB as u64).await;
    let b = srv.create("b", &body, 64 * KIB as u64).await;
    let url1 = a["parts"][0]["url"].as_str().unwrap();
    let part1 = slice(&body, &a["parts"][0]).to_vec();
    let a_id = a["upload_id"].as_str().unwrap();
    let b_id = b["upload_id"].as_str().unwrap();
    let sig_of = |u: &str| u.split("signature=").nth(1).unwrap().to_owned();
    let retargeted = [
        url1.replace(&sig_of(url1), &"0".repeat(64)),
        url1.replace(&format!("/p/{a_id}/1"), &format!("/p/{a_id}/2")),
        url1.replace(a_id, b_id),
        url1.replace("expires=", "expires=9"),
        url1.split('?').next().unwrap().to_owned(),
        format!("{}&signature=zz", url1.split("&signature").next().unwrap()),
    ];
    let codes = [
        "invalid_signature",
        "invalid_signature",
        "invalid_signature",
        "invalid_signature",
        "invalid_signature",
        "invalid_signature",
    ];
    for (u, code) in retargeted.iter().zip(codes) {
        assert_error(srv.put_url(u, part1.clone()).await, 403, code).await;
    }
    // A signed URL does not accept GET.
    assert_error(srv.http.get(url1).send().await.unwrap(), 405, "method_not_allowed").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_error(srv.put_url(url1, part1.clone()).await, 403, "url_expired").await;
    for id in [a_id, b_id] {
        let st: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
        assert_eq!(st["parts"].as_array().unwrap().len(), 0, "a refused PUT stored nothing");
    }
    // Re-signing gives fresh URLs that work.
    let signed: Value =
        srv.post(&format!("/uploads/{a_id}/parts/sign"), json!({"part_numbers": [1]})).await.json().await.unwrap();
    let fresh = signed["parts"][0]["url"].as_str().unwrap();
    assert_eq!(srv.put_url(fresh, part1).await.status(), 200);
    assert_error(
        srv.post(&format!("/uploads/{a_id}/parts/sign"), json!({"part_numbers": [0]})).await,
        400,
        "invalid_part_number",
    )
    .await;
    assert_error(
        srv.post(&format!("/uploads/{a_id}/parts/sign"), json!({"part_numbers": [5]})).await,
        400,
        "invalid_part_number",
    )
    .await;
}

#[tokio::test]
async fn wrong_part_numbers_and_sizes_change_nothing() {
    let srv = TestServer::start(&[]);
    let body = data(150 * KIB, 4);
    let created = srv.create("sized", &body, 64 * KIB as u64).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    let proxy = |n: &str| srv.api(&format!("/uploads/{id}/parts/{n}"));
    let put = |url: String, bytes: Vec<u8>| srv.http.put(url).bearer_auth(TOKEN).body(bytes).send();
    let part1 = slice(&body, &created["parts"][0]).to_vec();
    for n in ["0", "4", "4294967295"] {
        assert_error(put(proxy(n), part1.clone()).await.unwrap(), 400, "invalid_part_number").await;
    }
    assert_error(put(proxy("x"), part1.clone()).await.unwrap(), 400, "invalid_part_number").await;
    assert_error(put(proxy("99999999999"), part1.clone()).await.unwrap(), 400, "invalid_part_number").await;
    // Too short and too long, with Content-Length and without (chunked).
    assert_error(put(proxy("1"), part1[..1000].to_vec()).await.unwrap(), 400, "wrong_part_size").await;
    let mut longer = part1.clone();
    longer.push(0);
    assert_error(put(proxy("1"), longer.clone()).await.unwrap(), 400, "wrong_part_size").await;
    let chunked = |bytes: Vec<u8>| srv.http.put(proxy("1")).bearer_auth(TOKEN).body(chunked_body(bytes)).send();
    assert_error(chunked(longer).await.unwrap(), 400, "wrong_part_size").await;
    assert_error(chunked(part1[..10].to_vec()).await.unwrap(), 400, "wrong_part_size").await;
    // A client that disconnects mid-body.
    let url = created["parts"][0]["url"].as_str().unwrap();
    drop(raw_put(url, part1.len(), &part1[..30 * KIB]).await);
    let status = srv.get(&format!("/uploads/{id}")).await;
    let status: Value = status.json().await.unwrap();
    assert_eq!(status["parts"].as_array().unwrap().len(), 0);
    let tmp = srv.data_dir().join("tmp");
    eventually(Duration::from_secs(10), async || files_in(&tmp) == 0).await;
    // Now the real part, through the chunked path, is accepted.
    let res = chunked(part1).await.unwrap();
    assert_eq!(res.status(), 200);
    let status: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(status["parts"].as_array().unwrap().len(), 1);
    // Every byte read is counted, accepted or not; bodies refused by their Content-Length are never
    // read: the too-long chunked one (read until it overflowed), the short one, the abandoned one
    // and the accepted one.
    let received = srv.metric("ferry_bytes_received_total").await;
    assert_eq!(received, (64 * KIB + 1 + 10 + 30 * KIB + 64 * KIB) as f64);
}

/// A body sent with chunked transfer encoding (no Content-Length), in 16 KiB pieces.
fn chunked_body(bytes: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(16 * KIB).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn without_a_token_one_is_generated_kept_and_printed() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("FERRY_TOKEN")
            .env("FERRY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines: Vec<String> = (0..3)
            .map(|_| {
                let mut l = String::new();
                out.read_line(&mut l).unwrap();
                l
            })
            .collect();
        (child, lines)
    };
    let (mut child, lines) = start();
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap().trim().to_owned();
    assert!(token.len() >= 32, "{token:?}");
    let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the token file is private: {mode:o}");
    let url = lines[0].split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    assert!(lines[2].contains(&format!("ferry put FILE --server {url} --token {token}")), "{lines:?}");
    let http = reqwest::Client::new();
    let res = http.get(format!("{url}/v1/uploads")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
    // The same token after a restart.
    let (mut child, lines) = start();
    assert!(lines[2].ends_with(&format!("--token {token}\n")), "{lines:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn overload_is_a_json_503_with_retry_after() {
    let srv = TestServer::start(&["--max-requests", "1"]);
    let body = data(64 * KIB, 31);
    let created = srv.create("busy", &body, 64 * KIB as u64).await;
    // One request in flight: a part whose body is half sent.
    let conn = raw_put(created["parts"][0]["url"].as_str().unwrap(), body.len(), &body[..KIB]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = srv.get("/uploads").await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_error(res, 503, "overloaded").await;
    drop(conn);
    // Once it is gone, requests are served again.
    eventually(Duration::from_secs(10), async || srv.get("/uploads").await.status() == 200).await;
}
