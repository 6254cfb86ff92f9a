//! A room's manifest on a real `ferry serve`: the conditional-write contract over HTTP, and
//! writers racing to record their results (50 rounds of two at once) losing no entry, on the
//! embedded store and on a real S3-compatible server (s3s-fs).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::s3::S3Server;
use common::*;
use ferry_core::job::ManifestOutput;
use ferry_core::room::ManifestEntry;
use serde_json::{Value, json};

fn entry(job: &str, worker: &str) -> ManifestEntry {
    ManifestEntry {
        job_id: job.into(),
        worker: worker.into(),
        status: ferry_core::job::JobStatus::Succeeded,
        inputs: vec!["inputs/data.csv".into()],
        outputs: vec![ManifestOutput {
            key: format!("rooms/lab/results/{job}/out.txt"),
            size: 3,
            sha256: "ab".repeat(32),
        }],
        started_at: 1_780_000_000,
        finished_at: 1_780_000_010,
    }
}

async fn put(srv: &TestServer, room: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = srv.http.put(srv.api(&format!("/rooms/{room}/manifest"))).bearer_auth(TOKEN).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_writes_must_name_the_version_they_replace() {
    let srv = TestServer::start(&[]);
    let res = srv.get("/rooms/lab/manifest").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("etag").is_none(), "no manifest yet, no version");
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"entries": []}));

    let one = json!({"entries": [serde_json::to_value(entry("j1", "w1")).unwrap()]});
    assert_error(put(&srv, "lab", one.clone(), &[]).await, 428, "precondition_required").await;
    let both = [("if-match", "\"x\""), ("if-none-match", "*")];
    assert_error(put(&srv, "lab", one.clone(), &both).await, 400, "invalid_precondition").await;
    let first = put(&srv, "lab", one.clone(), &[("if-none-match", "*")]).await;
    assert_eq!(first.status(), 200);
    let v1 = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_error(put(&srv, "lab", one.clone(), &[("if-none-match", "*")]).await, 412, "precondition_failed").await;

    let res = srv.get("/rooms/lab/manifest").await;
    assert_eq!(res.headers()["etag"].to_str().unwrap(), v1);
    assert_eq!(res.json::<Value>().await.unwrap(), one);
    let two = json!({"entries": [serde_json::to_value(entry("j1", "w1")).unwrap(), serde_json::to_value(entry("j2", "w2")).unwrap()]});
    let second = put(&srv, "lab", two.clone(), &[("if-match", &v1)]).await;
    assert_eq!(second.status(), 200);
    assert_ne!(second.headers()["etag"].to_str().unwrap(), v1);
    assert_error(put(&srv, "lab", one.clone(), &[("if-match", &v1)]).await, 412, "precondition_failed").await;
    assert_eq!(
        srv.get("/rooms/lab/manifest").await.json::<Value>().await.unwrap(),
        two,
        "the stale write changed nothing"
    );

    // Bad input: nothing stored.
    let dup = json!({"entries": [serde_json::to_value(entry("j1", "w1")).unwrap(), serde_json::to_value(entry("j1", "w2")).unwrap()]});
    assert_error(put(&srv, "other", dup, &[("if-none-match", "*")]).await, 400, "invalid_manifest").await;
    assert_error(
        put(&srv, "other", json!({"entries": [{"job_id": "x"}]}), &[("if-none-match", "*")]).await,
        400,
        "invalid_json",
    )
    .await;
    assert_error(put(&srv, "x*y", one.clone(), &[("if-none-match", "*")]).await, 400, "invalid_room").await;
    assert_error(srv.get("/rooms/a%20b/manifest").await, 400, "invalid_room").await;
    let anonymous = srv.http.get(srv.api("/rooms/lab/manifest")).send().await.unwrap();
    assert_error(anonymous, 401, "unauthorized").await;
    assert_eq!(srv.get("/rooms/other/manifest").await.json::<Value>().await.unwrap(), json!({"entries": []}));

    // `ferry room ls` shows it.
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(&srv.url, dir.path(), &["room", "ls", "lab"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("j1")
            && text.contains("j2")
            && text.contains("rooms/lab/results/j2/out.txt"),
        "{text}"
    );
}

/// 50 rounds of two writers recording at the same moment: every entry is in the manifest.
async fn racing_writers_lose_nothing(srv: &TestServer) {
    let a = Arc::new(ferry_client::Api::new(&srv.url, TOKEN).unwrap());
    let b = Arc::new(ferry_client::Api::new(&srv.url, TOKEN).unwrap());
    let mut lost_races = 0;
    for round in 0..50 {
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let writer = |api: Arc<ferry_client::Api>, who: &'static str| {
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                api.record_in_manifest("race", &entry(&format!("r{round}-{who}"), who)).await
            })
        };
        let (ra, rb) = (writer(Arc::clone(&a), "a"), writer(Arc::clone(&b), "b"));
        lost_races += ra.await.unwrap().unwrap() + rb.await.unwrap().unwrap();
    }
    let (m, _) = a.manifest("race").await.unwrap();
    assert_eq!(m.entries.len(), 100, "every writer's entry is there ({lost_races} lost races were retried)");
    for round in 0..50 {
        for who in ["a", "b"] {
            assert!(m.entries.iter().any(|e| e.job_id == format!("r{round}-{who}")), "r{round}-{who} is missing");
        }
    }
    // A writer that records the same job again (a retry after a lost answer) adds nothing.
    a.record_in_manifest("race", &entry("r0-a", "a")).await.unwrap();
    assert_eq!(a.manifest("race").await.unwrap().0.entries.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_at_once_never_lose_an_entry_on_the_embedded_store() {
    let srv = TestServer::start(&[]);
    racing_writers_lose_nothing(&srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_at_once_never_lose_an_entry_on_s3() {
    let s3 = S3Server::s3s_fs();
    let srv = TestServer::start_s3(&s3.endpoint, "rooms", &[]);
    racing_writers_lose_nothing(&srv).await;
}
