//! `ferry serve --store s3://…` against a real S3-compatible server (`s3s-fs`, which checks every
//! signature): parts go straight to the store, `kill -9` of either side resumes, several servers
//! share one bucket, and the store itself refuses altered presigned URLs.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::proxy::{FaultProxy, Faults};
use common::s3::S3Server;
use common::*;
use md5::Digest as _;
use serde_json::{Value, json};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn content_md5(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

async fn done(srv: &TestServer, id: &str, n: u64, etag: &str, size: usize) -> reqwest::Response {
    srv.post(&format!("/uploads/{id}/parts/{n}/done"), json!({"etag": etag, "size": size})).await
}

/// PUTs each part of `created` straight to its presigned URL and reports it to `report_to`.
async fn put_parts_direct(srv: &TestServer, report_to: &TestServer, created: &Value, bytes: &[u8]) {
    let id = created["upload_id"].as_str().unwrap();
    for p in created["parts"].as_array().unwrap() {
        let body = slice(bytes, p).to_vec();
        let len = body.len();
        let res = srv.put_url(p["url"].as_str().unwrap(), body).await;
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        let res = done(report_to, id, p["part_number"].as_u64().unwrap(), &etag, len).await;
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_on_s3_send_no_part_bytes_through_the_server() {
    let s3 = S3Server::s3s_fs();
    let srv = TestServer::start_s3(&s3.endpoint, "e2e", &[]);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let bytes = data((21 * MIB + 777) as usize, 31);
    let file = write_file(work.path(), "big.bin", &bytes);
    let args = ["put", file.to_str().unwrap(), "--part-size", "5MiB", "--concurrency", "4", "--json"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    assert_eq!(r["sha256"], sha256_hex(&bytes));
    assert_eq!(r["parts"], 5);
    assert_eq!(srv.metric("ferry_bytes_received_total").await, 0.0, "part bytes passed through the server");
    // The object is a plain object in the bucket, under the prefix.
    assert_eq!(std::fs::read(s3.object_file("e2e/big.bin").unwrap()).unwrap(), bytes);
    let status: Value = srv.get(&format!("/uploads/{}", r["upload_id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(status["state"], "completed");
    assert_eq!(status["result"]["sha256"], sha256_hex(&bytes));

    let out = work.path().join("big.down");
    let args = ["get", "big.bin", out.to_str().unwrap(), "--part-size", "4MiB", "--json"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&bytes));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // S3's limits shape the plan, and a plan S3 would refuse is a 400 naming the limit.
    let res = srv.post("/uploads", json!({"name": "x", "size": 20 * MIB, "part_size": MIB})).await;
    let text = res.text().await.unwrap();
    assert!(text.contains("part_size_too_small") && text.contains(&(5 * MIB).to_string()), "{text}");
    let created: Value = srv.post("/uploads", json!({"name": "y", "size": 3 * MIB})).await.json().await.unwrap();
    assert_eq!((created["part_count"].as_u64(), created["part_checksum"].as_str()), (Some(1), Some("md5")));

    // Bytes changed in the bucket behind ferry's back are caught end to end.
    let stored = s3.object_file("e2e/big.bin").unwrap();
    let mut damaged = bytes.clone();
    damaged[12_345] ^= 0xff;
    std::fs::write(&stored, &damaged).unwrap();
    let out = work.path().join("damaged.down");
    let (ok, _, err) = run_json(ferry(&srv.url, &state, &["get", "big.bin", out.to_str().unwrap(), "--json"])).await;
    assert!(!ok, "a damaged object was accepted");
    assert!(err.contains("hash"), "{err}");
    assert!(!out.exists());
}

/// A server on `s3`, whose store requests and presigned URLs all go through a proxy that holds
/// each connection to `rate` bytes/s.
async fn s3_behind_proxy(s3: &S3Server, prefix: &str, rate: u64) -> (TestServer, FaultProxy) {
    let proxy = FaultProxy::start(Faults { rate, ..Faults::NONE }).await;
    proxy.set_target(&s3.endpoint);
    let srv = TestServer::start_s3(&proxy.url(), prefix, &[]);
    (srv, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_put_on_s3_resumes_and_resends_only_what_was_in_flight() {
    let s3 = S3Server::s3s_fs();
    let (srv, proxy) = s3_behind_proxy(&s3, "resume", 4 * MIB).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let size = 40 * MIB;
    let file = write_file(work.path(), "data.bin", &data(size as usize, 32));
    let args = ["put", file.to_str().unwrap(), "--part-size", "5MiB", "--concurrency", "4", "--json"];
    // Stopped once 4 parts are acknowledged and the journal has had time to note them.
    let mut acknowledged = 0;
    let (mut child, _, _) = run_until(ferry(&srv.url, &state, &args), |v| {
        acknowledged += usize::from(v["type"] == "part_done");
        acknowledged >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    assert_eq!(r["sha256"], sha256_hex(&std::fs::read(&file).unwrap()));
    assert!(r["resumed_parts"].as_u64().unwrap() >= 4, "{r}");
    // What reached the store: the file, plus at most the 4 parts in flight at the kill, plus
    // request heads and the server's own small requests.
    let delivered = proxy.upstream_bytes();
    assert!(delivered <= size + 4 * 5 * MIB + 512 * KIB, "the store was sent {delivered} bytes for {size}");
    assert_eq!(std::fs::read(s3.object_file("resume/data.bin").unwrap()).unwrap(), std::fs::read(&file).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_mid_put_on_s3_is_ridden_out() {
    let s3 = S3Server::s3s_fs();
    let proxy = FaultProxy::start(Faults { rate: 4 * MIB, ..Faults::NONE }).await;
    proxy.set_target(&s3.endpoint);
    let mut srv = TestServer::start_s3(&proxy.url(), "outage", &[]);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let file = write_file(work.path(), "data.bin", &data((30 * MIB) as usize, 33));
    let args = ["put", file.to_str().unwrap(), "--part-size", "5MiB", "--concurrency", "3", "--json"];
    let (child, rest, mut lines) =
        run_until(ferry(&srv.url, &state, &args), |v| progress_fraction(v).is_some_and(|f| f >= 0.3)).await;
    srv.crash_and_restart_in_place(Duration::from_secs(1));
    assert!(finish(child, rest, &mut lines).await, "the upload did not survive the outage: {:?}", lines.last());
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&std::fs::read(&file).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_bucket_and_a_double_complete_has_one_winner() {
    let s3 = S3Server::s3s_fs();
    let mut a = TestServer::start_s3(&s3.endpoint, "shared", &[]);
    let b = TestServer::start_s3(&s3.endpoint, "shared", &[]);
    let bytes = data((12 * MIB) as usize, 34);

    // Create on A, send the parts, report them to B; then A dies.
    let created = a.create("two.bin", &bytes, 5 * MIB).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    put_parts_direct(&a, &b, &created, &bytes).await;
    a.kill9();
    let status: Value = b.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!((status["state"].as_str(), status["parts"].as_array().unwrap().len()), (Some("uploading"), 3));
    let listed: Value = b.get("/uploads").await.json().await.unwrap();
    assert!(listed["uploads"].as_array().unwrap().iter().any(|u| u["upload_id"] == id.as_str()));
    let res = b.post(&format!("/uploads/{id}/complete"), json!({})).await;
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["sha256"], sha256_hex(&bytes));
    let got = b.get("/objects/two.bin").await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), bytes.as_slice());

    // Both servers asked to complete the same upload at once: one object, one answer.
    let c = TestServer::start_s3(&s3.endpoint, "shared", &[]);
    let created = b.create("race.bin", &bytes, 5 * MIB).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    put_parts_direct(&b, &c, &created, &bytes).await;
    let path = format!("/uploads/{id}/complete");
    let (rb, rc) = tokio::join!(b.post(&path, json!({})), c.post(&path, json!({})));
    let (sb, sc) = (rb.status(), rc.status());
    let (vb, vc): (Value, Value) = (rb.json().await.unwrap(), rc.json().await.unwrap());
    assert_eq!((sb.as_u16(), sc.as_u16()), (200, 200), "{vb} {vc}");
    assert_eq!((&vb["etag"], &vb["sha256"]), (&vc["etag"], &vc["sha256"]));
    assert_eq!(vb["sha256"], sha256_hex(&bytes));
    for srv in [&b, &c] {
        let st: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
        assert_eq!(st["state"], "completed");
    }
    // The servers share their URL-signing secret: a URL one signs, the other honours.
    let signed: Value = b.post("/objects/race.bin/sign", json!({})).await.json().await.unwrap();
    let url = signed["url"].as_str().unwrap().replace(&b.url, &c.url);
    let res = c.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), bytes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_refuses_a_presigned_part_url_altered_in_any_signed_component() {
    let s3 = S3Server::s3s_fs();
    let srv = TestServer::start_s3(&s3.endpoint, "sig", &[]);
    let bytes = data((6 * MIB) as usize, 35);
    let created = srv.create("sig.bin", &bytes, 5 * MIB).await;
    let id = created["upload_id"].as_str().unwrap();
    let part = &bytes[..(5 * MIB) as usize];
    let md5 = content_md5(part);
    let res =
        srv.post(&format!("/uploads/{id}/parts/sign"), json!({"part_numbers": [1], "content_md5": {"1": md5}})).await;
    let signed: Value = res.json().await.unwrap();
    let url = signed["parts"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(signed["parts"][0]["headers"]["content-md5"], md5.as_str());

    let param =
        |name: &str| url.split(['?', '&']).find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_owned();
    let swap = |name: &str, value: &str| url.replace(&format!("{name}={}", param(name)), &format!("{name}={value}"));
    let sig = param("X-Amz-Signature");
    let flipped: String = sig.chars().rev().collect();
    let altered = [
        swap("partNumber", "2"),
        swap("uploadId", "00000000-0000-0000-0000-000000000000"),
        swap("X-Amz-Expires", "604800"),
        swap("X-Amz-Date", "20300101T000000Z"),
        swap("X-Amz-Credential", &param("X-Amz-Credential").replace("us-east-1", "eu-west-1")),
        swap("X-Amz-SignedHeaders", "content-length%3Bhost"),
        swap("X-Amz-Signature", &flipped),
        url.replace("sig/sig.bin", "sig/other.bin"),
    ];
    for u in &altered {
        assert_ne!(u, &url);
        // Refused with 403, or cut off mid-body once the store has refused the head.
        if let Ok(res) = srv.http.put(u).header("content-md5", &md5).body(part.to_vec()).send().await {
            assert_eq!(res.status(), 403, "{u}: {:?}", res.text().await);
        }
    }
    // The signed headers: another MD5 (with bytes that match it), or another length.
    let mut other = part.to_vec();
    other[0] ^= 1;
    let longer = [part, b"x"].concat();
    for body in [other, longer] {
        if let Ok(res) = srv.http.put(&url).header("content-md5", content_md5(&body)).body(body).send().await {
            assert_eq!(res.status(), 403);
        }
    }
    let status: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(status["parts"].as_array().unwrap().len(), 0, "{status}");
    // A malformed MD5 is refused by ferry before anything is signed.
    let res =
        srv.post(&format!("/uploads/{id}/parts/sign"), json!({"part_numbers": [1], "content_md5": {"1": "abc"}})).await;
    assert_error(res, 400, "invalid_content_md5").await;

    // The URL as signed works.
    let res = srv.http.put(&url).header("content-md5", &md5).body(part.to_vec()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let status: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(status["parts"].as_array().unwrap().len(), 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_part_route_streams_to_s3_and_expiry_aborts_on_the_store_with_two_sweepers() {
    let s3 = S3Server::s3s_fs();
    let args = ["--session-ttl", "3s", "--sweep-interval", "1s"];
    let a = TestServer::start_s3(&s3.endpoint, "sweep", &args);
    let b = TestServer::start_s3(&s3.endpoint, "sweep", &args);
    let bytes = data((5 * MIB + 10) as usize, 36);
    let created = a.create("fallback.bin", &bytes, 5 * MIB).await;
    let id = created["upload_id"].as_str().unwrap();
    // The fallback path: parts through the API, streamed on to the bucket.
    for p in created["parts"].as_array().unwrap() {
        let n = p["part_number"].as_u64().unwrap();
        let res = b
            .http
            .put(b.api(&format!("/uploads/{id}/parts/{n}")))
            .bearer_auth(TOKEN)
            .body(slice(&bytes, p).to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
    }
    assert_eq!(b.metric("ferry_bytes_received_total").await as u64, bytes.len() as u64);
    let root = s3.root.clone().unwrap();
    let part_files = || {
        std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".upload_id-"))
            .count()
    };
    assert!(part_files() >= 2, "the parts are in the store");
    // Both servers sweep; the session expires once and its parts leave the store.
    eventually(Duration::from_secs(30), async || {
        let st: Value = b.get(&format!("/uploads/{id}")).await.json().await.unwrap();
        st["state"] == "expired" && part_files() == 0
    })
    .await;
    let st: Value = a.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(st["state"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_part_processing_on_s3_reads_parts_before_complete() {
    let s3 = S3Server::s3s_fs();
    let script = r#"part-size=sh -c 'printf "%s:%s;" "$FERRY_PART_NUMBER" "$(wc -c | tr -d " ")"'"#;
    let srv = TestServer::start_s3(&s3.endpoint, "proc", &["--part-processor", script]);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let bytes = data((11 * MIB + 5) as usize, 37);
    let file = write_file(work.path(), "processed.bin", &bytes);
    let args = ["put", file.to_str().unwrap(), "--part-size", "5MiB", "--processor", "part-size", "--follow", "--json"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    assert_eq!(r["sha256"], sha256_hex(&bytes));
    assert_eq!(srv.metric("ferry_bytes_received_total").await, 0.0, "part bytes went straight to the bucket");
    let events: Vec<&Value> = lines.iter().filter(|v| v["type"] == "server").map(|v| &v["event"]).collect();
    // Each part was processed from the bucket while the upload was still open.
    let completed_at = events.iter().position(|e| e["type"] == "completed").unwrap();
    for n in 1..=3u64 {
        let at = events.iter().position(|e| e["type"] == "part_processed" && e["part_number"] == n).unwrap();
        assert!(at < completed_at, "part {n} was processed before complete: {events:?}");
    }
    let fin = events.last().unwrap();
    assert_eq!(fin["type"], "final_result");
    assert_eq!(fin["result"], format!("1:{};2:{};3:{};", 5 * MIB, 5 * MIB, MIB + 5));
    // Assembled by server-side copies into a plain object; the part objects are gone.
    assert_eq!(std::fs::read(s3.object_file("proc/processed.bin").unwrap()).unwrap(), bytes);
    use ferry_store::Store as _;
    let left = s3.store("").list_objects("proc/.ferry/parts/").await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppy_uploads_of_unknown_size_go_straight_to_s3() {
    let s3 = S3Server::s3s_fs();
    let srv = TestServer::start_s3(&s3.endpoint, "uppy", &[]);
    let bytes = data((10 * MIB + 999) as usize, 41);
    let s3_route = |path: &str| format!("{}/s3{path}", srv.url);
    let created: Value = srv
        .http
        .post(s3_route("/multipart"))
        .bearer_auth(TOKEN)
        .json(&json!({"filename": "from-uppy.bin", "type": "application/octet-stream", "metadata": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, key) = (created["uploadId"].as_str().unwrap(), created["key"].as_str().unwrap());
    let mut parts = Vec::new();
    for (i, chunk) in bytes.chunks(5 * MIB as usize).enumerate() {
        let n = i + 1;
        let signed: Value = srv
            .http
            .get(s3_route(&format!("/multipart/{id}/{n}?key={key}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = signed["url"].as_str().unwrap();
        assert!(url.starts_with(&s3.endpoint), "the part goes straight to the bucket: {url}");
        let res = srv.http.put(url).body(chunk.to_vec()).send().await.unwrap();
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
        parts.push(json!({"PartNumber": n, "ETag": res.headers()["etag"].to_str().unwrap()}));
    }
    let done = srv
        .http
        .post(s3_route(&format!("/multipart/{id}/complete?key={key}")))
        .bearer_auth(TOKEN)
        .json(&json!({ "parts": parts }))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "{:?}", done.text().await);
    assert_eq!(std::fs::read(s3.object_file("uppy/from-uppy.bin").unwrap()).unwrap(), bytes);
    let st: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(
        (st["result"]["sha256"].as_str(), st["part_count"].as_u64()),
        (Some(sha256_hex(&bytes).as_str()), Some(3))
    );
    assert_eq!(srv.metric("ferry_bytes_received_total").await, 0.0);
}
