//! `ferry put` / `ferry get` against a real server, through a fault-injecting proxy where the test
//! needs faults: resume after `kill -9` of either side, changed files, resets, expired URLs, and
//! the fallback to the API when signed URLs are unreachable.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::proxy::{FaultProxy, Faults};
use common::*;
use serde_json::Value;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A server reached only through a proxy: API and signed URLs alike.
async fn behind_proxy(faults: Faults, extra: &[&str]) -> (TestServer, FaultProxy) {
    let proxy = FaultProxy::start(faults).await;
    let url = proxy.url();
    let mut args = vec!["--public-url", url.as_str()];
    args.extend_from_slice(extra);
    let srv = TestServer::start(&args);
    proxy.set_target(&srv.url);
    (srv, proxy)
}

fn retried(lines: &[Value]) -> usize {
    lines.iter().filter(|v| v["type"] == "retry").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_several_files_verified_by_sha256() {
    let srv = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let files = [
        write_file(work.path(), "big.bin", &data((5 * MIB + 12345) as usize, 21)),
        write_file(work.path(), "small.txt", b"hello, ferry\n"),
        write_file(work.path(), "empty", b""),
    ];
    let paths: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["put", "--part-size", "1MiB", "--concurrency", "4", "--json"];
    args.extend(&paths);
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    let results: Vec<&Value> = lines.iter().filter(|v| v["type"] == "result").collect();
    assert_eq!(results.len(), 3);
    for (path, r) in files.iter().zip(&results) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(r["sha256"], sha256_hex(&bytes));
        assert_eq!(r["size"], bytes.len());
        for field in ["key", "upload_id", "parts", "retries", "bytes_sent", "elapsed_s"] {
            assert!(!r[field].is_null(), "result lacks {field}: {r}");
        }
    }
    assert_eq!(results[0]["parts"], 6);
    assert!(lines.iter().any(|v| v["type"] == "progress"), "progress is reported");

    for (path, r) in files.iter().zip(&results) {
        let out = work.path().join(format!("{}.down", r["key"].as_str().unwrap()));
        let args = ["get", r["key"].as_str().unwrap(), out.to_str().unwrap(), "--part-size", "1MiB", "--json"];
        let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
        assert!(ok, "{err}");
        assert_eq!(result_of(&lines)["sha256"], r["sha256"]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(path).unwrap());
    }
    // Nothing is left in the state dir once everything finished.
    let leftovers: Vec<_> = walk(&state);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A missing object is a clear failure.
    let (ok, _, err) = run_json(ferry(&srv.url, &state, &["get", "no/such/key", "--json"])).await;
    assert!(!ok);
    assert!(err.contains("object_not_found"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_put_at_60_percent_resumes_and_resends_only_what_was_in_flight() {
    // 4 MiB/s per connection keeps the transfer slow enough to stop it part way.
    let (srv, proxy) = behind_proxy(Faults { rate: 4 * MIB, ..Faults::NONE }, &[]).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let size = 24 * MIB;
    let file = write_file(work.path(), "data.bin", &data(size as usize, 22));
    let args = ["put", file.to_str().unwrap(), "--part-size", "1MiB", "--concurrency", "4", "--json"];
    let (mut child, _, seen) =
        run_until(ferry(&proxy.url(), &state, &args), |v| progress_fraction(v).is_some_and(|f| f >= 0.6)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(seen.iter().any(|v| v["type"] == "started"));

    let (ok, lines, err) = run_json(ferry(&proxy.url(), &state, &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    assert_eq!(r["sha256"], sha256_hex(&std::fs::read(&file).unwrap()));
    assert!(r["resumed_parts"].as_u64().unwrap() >= 10, "{r}");
    let received = srv.metric("ferry_bytes_received_total").await as u64;
    let in_flight = 4 * MIB;
    assert!(received <= size + in_flight, "server read {received} bytes for a {size}-byte file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_mid_put_is_ridden_out() {
    let proxy = FaultProxy::start(Faults { rate: 4 * MIB, ..Faults::NONE }).await;
    let mut srv = TestServer::start(&["--public-url", &proxy.url()]);
    proxy.set_target(&srv.url);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let size = 24 * MIB;
    let file = write_file(work.path(), "data.bin", &data(size as usize, 23));
    let args = ["put", file.to_str().unwrap(), "--part-size", "1MiB", "--concurrency", "4", "--json"];
    let (child, rest, mut lines) =
        run_until(ferry(&proxy.url(), &state, &args), |v| progress_fraction(v).is_some_and(|f| f >= 0.5)).await;
    // The server dies and is back a second later on the same address; the client rides it out.
    srv.crash_and_restart_in_place(Duration::from_secs(1));
    assert!(finish(child, rest, &mut lines).await, "the upload did not survive the outage: {:?}", lines.last());
    let r = result_of(&lines);
    assert_eq!(r["sha256"], sha256_hex(&std::fs::read(&file).unwrap()));
    assert!(retried(&lines) > 0, "the outage was retried");
    // What reached the server: the file, plus at most the 4 parts in flight at the kill, plus
    // request heads and JSON.
    let delivered = proxy.upstream_bytes();
    assert!(delivered <= size + 4 * MIB + 256 * KIB, "the server was sent {delivered} bytes for a {size}-byte file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_between_runs_is_uploaded_afresh_never_mixed() {
    let (srv, proxy) = behind_proxy(Faults { rate: 4 * MIB, ..Faults::NONE }, &[]).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let size = 12 * MIB as usize;
    let file = write_file(work.path(), "changing.bin", &data(size, 24));
    let args = ["put", file.to_str().unwrap(), "--part-size", "1MiB", "--concurrency", "2", "--json"];
    let (mut child, _, _) =
        run_until(ferry(&proxy.url(), &state, &args), |v| progress_fraction(v).is_some_and(|f| f >= 0.3)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Same size, new bytes in the middle, new mtime.
    let mut changed = data(size, 24);
    changed[size / 2] ^= 0xff;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, &changed).unwrap();

    let (ok, lines, err) = run_json(ferry(&proxy.url(), &state, &args)).await;
    assert!(ok, "{err}");
    assert!(lines.iter().any(|v| v["type"] == "restarted"), "the change is noticed: {lines:?}");
    let r = result_of(&lines);
    assert_eq!(r["sha256"], sha256_hex(&changed));
    assert_eq!(r["resumed_parts"], 0);
    let got = srv.get("/objects/changing.bin").await.bytes().await.unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&changed));
    let cancelled: Value = srv.get("/uploads?state=cancelled").await.json().await.unwrap();
    assert_eq!(cancelled["uploads"].as_array().unwrap().len(), 1, "the superseded upload was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_and_delay_still_yield_identical_objects() {
    let faults = Faults {
        reset_per_mib: 0.05,
        delay: Duration::from_millis(2),
        first_reset_at: Some(300 * KIB),
        ..Faults::NONE
    };
    let (srv, proxy) = behind_proxy(faults, &[]).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let a = write_file(work.path(), "a.bin", &data((20 * MIB + 1) as usize, 25));
    let b = write_file(work.path(), "b.bin", &data((12 * MIB) as usize, 26));
    let args = ["put", a.to_str().unwrap(), b.to_str().unwrap(), "--part-size", "1MiB", "--json"];
    let (ok, lines, err) = run_json(ferry(&proxy.url(), &state, &args)).await;
    assert!(ok, "{err}");
    for path in [&a, &b] {
        let name = path.file_name().unwrap().to_str().unwrap();
        let got = srv.get(&format!("/objects/{name}")).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&std::fs::read(path).unwrap()), "{name}");
        let out = work.path().join(format!("{name}.down"));
        let args = ["get", name, out.to_str().unwrap(), "--part-size", "1MiB", "--json"];
        let (ok, _, err) = run_json(ferry(&proxy.url(), &state, &args)).await;
        assert!(ok, "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(path).unwrap());
    }
    assert!(proxy.resets() > 0, "the proxy reset no connection; the test proved nothing");
    assert!(retried(&lines) > 0, "a reset mid-part is retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_part_urls_are_renewed() {
    // URLs live 1 s; at 2 MiB/s per connection most parts outlive the URLs handed out at create.
    let (srv, proxy) = behind_proxy(Faults { rate: 2 * MIB, ..Faults::NONE }, &["--url-ttl", "1s"]).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let file = write_file(work.path(), "slow.bin", &data((8 * MIB) as usize, 27));
    let args = ["put", file.to_str().unwrap(), "--part-size", "1MiB", "--concurrency", "2", "--json"];
    let (ok, lines, err) = run_json(ferry(&proxy.url(), &state, &args)).await;
    assert!(ok, "{err}");
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&std::fs::read(&file).unwrap()));
    let metrics = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap().text().await.unwrap();
    let signs = metrics
        .lines()
        .filter(|l| l.starts_with("ferry_http_request_duration_seconds_count") && l.contains("parts/sign"))
        .count();
    assert!(signs > 0, "no part URL was renewed:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_part_urls_fall_back_to_the_api() {
    // Signed URLs name a port nothing listens on; the API itself is reachable.
    let srv = TestServer::start(&["--public-url", "http://127.0.0.1:1"]);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let file = write_file(work.path(), "detour.bin", &data((3 * MIB + 7) as usize, 28));
    let args = ["put", file.to_str().unwrap(), "--part-size", "1MiB", "--json"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &args)).await;
    assert!(ok, "{err}");
    let fallbacks = lines.iter().filter(|v| v["type"] == "fallback").count();
    assert_eq!(fallbacks, 1, "the fallback is announced once: {lines:?}");
    let r = result_of(&lines);
    assert_eq!(r["fallback"], true);
    assert_eq!(r["sha256"], sha256_hex(&std::fs::read(&file).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_get_resumes() {
    let (srv, proxy) = behind_proxy(Faults { rate: 4 * MIB, ..Faults::NONE }, &[]).await;
    let body = data((16 * MIB) as usize, 29);
    let created = srv.create("get/resume.bin", &body, MIB).await;
    srv.put_all(&created, &body).await;
    let id = created["upload_id"].as_str().unwrap();
    assert_eq!(srv.post(&format!("/uploads/{id}/complete"), serde_json::json!({})).await.status(), 200);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let out = work.path().join("resume.bin");
    let args = ["get", "get/resume.bin", out.to_str().unwrap(), "--part-size", "1MiB", "--concurrency", "2", "--json"];
    let (mut child, _, _) =
        run_until(ferry(&proxy.url(), &state, &args), |v| progress_fraction(v).is_some_and(|f| f >= 0.5)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(!out.exists(), "nothing appears at the destination until it is complete");
    let (ok, lines, err) = run_json(ferry(&proxy.url(), &state, &args)).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    // The journal trails the transfer by up to its write interval (more on a busy machine), so
    // not all of the half that arrived need count; some must.
    assert!(r["resumed_bytes"].as_u64().unwrap() >= MIB, "{r}");
    assert!(r["bytes_received"].as_u64().unwrap() < 16 * MIB, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_ls_and_cancel_commands() {
    let srv = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let body = data(100 * KIB as usize, 30);
    let created = srv.create("open.bin", &body, 64 * KIB).await;
    let id = created["upload_id"].as_str().unwrap();
    let p1 = &created["parts"][0];
    assert_eq!(srv.put_url(p1["url"].as_str().unwrap(), slice(&body, p1).to_vec()).await.status(), 200);

    let out = ferry(&srv.url, &state, &["status", id, "--json"]).output().await.unwrap();
    assert!(out.status.success());
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((st["state"].as_str(), st["bytes_received"].as_u64()), (Some("uploading"), Some(64 * KIB)));

    let out = ferry(&srv.url, &state, &["ls", "--state", "uploading", "--json"]).output().await.unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["upload_id"], id);

    let out = ferry(&srv.url, &state, &["cancel", id]).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
    let out = ferry(&srv.url, &state, &["ls", "--state", "uploading", "--json"]).output().await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), serde_json::json!([]));

    let out = ferry(&srv.url, &state, &["status", "0123456789abcdef0123456789abcdef"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upload_not_found"));
    let out = ferry(&srv.url, &state, &["ls", "--state", "bogus"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_state"));
}
