//! Test harness: a real `ferry serve` process on 127.0.0.1 with a temp data dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod proxy;
#[path = "../../../redis/tests/support/redis_server.rs"]
pub mod redis;
#[path = "../../../s3/tests/support/s3_servers.rs"]
pub mod s3;

use tokio::io::AsyncBufReadExt;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "test-token";

pub struct TestServer {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The data dir is a tmpfs of this size, mounted in the server's own mount namespace.
    tmpfs: Option<String>,
    pub http: reqwest::Client,
}

fn spawn(data_dir: &Path, listen: &str, extra: &[String], tmpfs: Option<&str>) -> (Child, String) {
    let mut cmd = match tmpfs {
        // The mount lives and dies with the server: nothing to unmount, whatever happens.
        Some(size) => {
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c", r#"mount -t tmpfs -o "size=$0" tmpfs "$1" && shift && exec "$@""#, size])
                .arg(data_dir)
                .arg(env!("CARGO_BIN_EXE_ferry"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ferry")),
    };
    let mut child = cmd
        .args(["serve", "--listen", listen, "--token", TOKEN, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (child, url)
}

impl TestServer {
    pub fn start(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn(dir.path(), "127.0.0.1:0", &extra, None);
        TestServer { child, url, dir, extra, tmpfs: None, http: reqwest::Client::new() }
    }

    /// A server whose data dir is a tmpfs of `size` (e.g. `24m`), so its disk can be filled.
    pub fn start_on_tmpfs(size: &str, extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn(dir.path(), "127.0.0.1:0", &extra, Some(size));
        TestServer { child, url, dir, extra, tmpfs: Some(size.to_owned()), http: reqwest::Client::new() }
    }

    /// A server keeping everything in `bucket_prefix` of a real S3-compatible server at `endpoint`.
    pub fn start_s3(endpoint: &str, prefix: &str, extra: &[&str]) -> TestServer {
        let store = format!("s3://{}/{prefix}", s3::BUCKET);
        let mut args = vec!["--store", store.as_str(), "--s3-endpoint", endpoint, "--s3-path-style"];
        args.extend_from_slice(extra);
        TestServer::start(&args)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// `kill -9`, then start again on the same data dir (on a new port).
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        let (child, url) = spawn(self.dir.path(), "127.0.0.1:0", &self.extra, self.tmpfs.as_deref());
        self.child = child;
        self.url = url;
    }

    /// `kill -9`, then start again on the same data dir and the same port, after `down` of outage.
    pub fn crash_and_restart_in_place(&mut self, down: Duration) {
        self.kill9();
        std::thread::sleep(down);
        let listen = self.url.strip_prefix("http://").unwrap().to_owned();
        let (child, url) = spawn(self.dir.path(), &listen, &self.extra, self.tmpfs.as_deref());
        self.child = child;
        self.url = url;
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/v1{}", self.url, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.api(path)).bearer_auth(TOKEN).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http.post(self.api(path)).bearer_auth(TOKEN).json(&body).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http.delete(self.api(path)).bearer_auth(TOKEN).send().await.unwrap()
    }

    pub async fn create(&self, name: &str, data: &[u8], part_size: u64) -> Value {
        let res = self
            .post(
                "/uploads",
                json!({"name": name, "size": data.len(), "part_size": part_size, "sha256": sha256_hex(data)}),
            )
            .await;
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        res.json().await.unwrap()
    }

    pub async fn put_url(&self, url: &str, body: Vec<u8>) -> reqwest::Response {
        self.http.put(url).body(body).send().await.unwrap()
    }

    /// PUTs every part of `created` from `data` through its signed URL.
    pub async fn put_all(&self, created: &Value, data: &[u8]) {
        for p in created["parts"].as_array().unwrap() {
            let res = self.put_url(p["url"].as_str().unwrap(), slice(data, p).to_vec()).await;
            assert_eq!(res.status(), 200, "{:?}", res.text().await);
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn slice<'a>(data: &'a [u8], part: &Value) -> &'a [u8] {
    let off = part["offset"].as_u64().unwrap() as usize;
    let size = part["size"].as_u64().unwrap() as usize;
    &data[off..off + size]
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Asserts an error response's status and JSON error code.
pub async fn assert_error(res: reqwest::Response, status: u16, code: &str) {
    let got = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    assert_eq!(v["error"]["code"], code, "body: {text}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {text}");
}

/// Waits until `cond` holds, polling; panics after `limit`.
pub async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A `ferry` client command against `server`, with its own state dir, printing JSON lines.
pub fn ferry(server: &str, state_dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .args(["--server", server, "--token", TOKEN])
        .env("FERRY_STATE_DIR", state_dir)
        .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a command to the end; returns its exit success, its JSON lines and its stderr.
pub async fn run_json(mut cmd: tokio::process::Command) -> (bool, Vec<Value>, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await.expect("command timed out").unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l:?}")))
        .collect();
    (out.status.success(), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

pub type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts a command and reads its JSON lines until `stop` says so; returns the running child and
/// the rest of its output, still open.
pub async fn run_until(
    mut cmd: tokio::process::Command,
    mut stop: impl FnMut(&Value) -> bool,
) -> (tokio::process::Child, Lines, Vec<Value>) {
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        let v: Value = serde_json::from_str(&line).unwrap();
        let done = stop(&v);
        seen.push(v);
        if done {
            return (child, lines, seen);
        }
    }
    panic!("the command ended before the stop condition; saw {} lines: {:?}", seen.len(), seen.last());
}

/// The final `result` line of a run.
pub fn result_of(lines: &[Value]) -> &Value {
    lines.iter().rev().find(|v| v["type"] == "result").expect("no result line")
}

/// Progress as a fraction, from a `progress` event.
pub fn progress_fraction(v: &Value) -> Option<f64> {
    (v["type"] == "progress").then(|| v["bytes"].as_f64().unwrap() / v["size"].as_f64().unwrap().max(1.0))
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Reads the rest of a command's JSON lines and waits for it; returns its exit success.
pub async fn finish(mut child: tokio::process::Child, mut lines: Lines, seen: &mut Vec<Value>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        seen.push(serde_json::from_str(&line).unwrap());
    }
    tokio::time::timeout_at(deadline, child.wait()).await.unwrap().unwrap().success()
}
