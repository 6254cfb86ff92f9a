//! Streaming results while an upload runs: the SSE event stream and its resumption, per-part and
//! complete processors (real child processes), reprocessing, timeouts, the concurrency cap,
//! cancel killing processors, and signed webhooks with retries — against a real `ferry serve`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use common::*;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;
const PART: u64 = 64 * KIB as u64;

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>>>>;

/// A real SSE client on an upload's event stream.
struct Sse {
    events: Events,
}

impl Sse {
    async fn open(srv: &TestServer, id: &str, last: Option<u64>) -> Sse {
        let mut req = srv.http.get(srv.api(&format!("/uploads/{id}/events"))).bearer_auth(TOKEN);
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l.to_string());
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let events = eventsource_stream::EventStream::new(res.bytes_stream()).map(|r| r.map_err(|e| e.to_string()));
        Sse { events: Box::pin(events) }
    }

    /// The next event; `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Value> {
        let ev = tokio::time::timeout(Duration::from_secs(30), self.events.next()).await.expect("no event in 30 s")?;
        let ev = ev.unwrap();
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id, v["id"].to_string(), "the SSE id is the event's id");
        Some(v)
    }

    /// Events up to and including the first that satisfies `stop`.
    async fn until(&mut self, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self.next().await.unwrap_or_else(|| panic!("the stream ended; saw {seen:?}"));
            let done = stop(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }

    /// Everything until the server ends the stream.
    async fn rest(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(v) = self.next().await {
            seen.push(v);
        }
        seen
    }
}

fn is(kind: &str) -> impl FnMut(&Value) -> bool + '_ {
    move |v| v["type"] == kind
}

fn processed(n: u64) -> impl FnMut(&Value) -> bool {
    move |v| v["type"] == "part_processed" && v["part_number"] == n
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|v| v["id"].as_u64().unwrap()).collect()
}

async fn create_with(srv: &TestServer, name: &str, body: &[u8], extra: Value) -> Value {
    let mut req = json!({"name": name, "size": body.len(), "part_size": PART, "sha256": sha256_hex(body)});
    req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let res = srv.post("/uploads", req).await;
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    res.json().await.unwrap()
}

async fn put_part(srv: &TestServer, created: &Value, body: &[u8], n: usize) {
    let p = &created["parts"][n - 1];
    let res = srv.put_url(p["url"].as_str().unwrap(), slice(body, p).to_vec()).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

async fn complete(srv: &TestServer, id: &str) {
    let res = srv.post(&format!("/uploads/{id}/complete"), json!({})).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

async fn status(srv: &TestServer, id: &str) -> Value {
    srv.get(&format!("/uploads/{id}")).await.json().await.unwrap()
}

/// `sh -c SCRIPT` as a processor argument.
fn sh(name: &str, script: &str) -> String {
    format!("{name}=sh -c '{script}'")
}

/// Tags each part's result with its number and byte count, so order and content are checkable.
const TAG: &str = r#"printf "%s:%s;" "$FERRY_PART_NUMBER" "$(wc -c | tr -d " ")""#;

fn tag(n: usize, body: &[u8]) -> String {
    let size = (body.len() - (n - 1) * PART as usize).min(PART as usize);
    format!("{n}:{size};")
}

#[tokio::test]
async fn results_stream_in_part_order_while_later_parts_are_uploading() {
    let srv = TestServer::start(&["--part-processor", &sh("tag", TAG)]);
    let body = data(4 * PART as usize - 1000, 1);
    let created = create_with(&srv, "streamed", &body, json!({"processor": "tag"})).await;
    let id = created["upload_id"].as_str().unwrap();
    assert_eq!(created["events_url"], format!("{}/v1/uploads/{id}/events", srv.url));
    let mut sse = Sse::open(&srv, id, None).await;
    let first = sse.next().await.unwrap();
    assert_eq!((first["type"].as_str(), first["id"].as_u64()), (Some("initialized"), Some(1)));
    assert_eq!(first["processor"], "tag");

    // Part 1's result arrives before part 2 is even sent.
    put_part(&srv, &created, &body, 1).await;
    let seen = sse.until(is("partial_result")).await;
    let p1 = seen.iter().find(|v| v["type"] == "part_processed").unwrap();
    assert_eq!((p1["ok"].as_bool(), p1["result"].as_str()), (Some(true), Some(tag(1, &body).as_str())));
    let partial = seen.last().unwrap();
    assert_eq!((partial["through_part"].as_u64(), partial["result"].as_str()), (Some(1), Some(tag(1, &body).as_str())));
    let progress = seen.iter().rfind(|v| v["type"] == "progress").unwrap();
    assert_eq!((progress["parts_received"].as_u64(), progress["parts_processed"].as_u64()), (Some(1), Some(1)));

    // Part 3 before part 2: its result is in, but the in-order result waits for part 2.
    put_part(&srv, &created, &body, 3).await;
    let seen = sse.until(processed(3)).await;
    assert!(!seen.iter().any(|v| v["type"] == "partial_result"), "{seen:?}");
    put_part(&srv, &created, &body, 2).await;
    let seen = sse.until(is("partial_result")).await;
    let partial = seen.last().unwrap();
    let through_3 = format!("{}{}{}", tag(1, &body), tag(2, &body), tag(3, &body));
    assert_eq!(partial["through_part"], 3);
    assert_eq!(partial["appended"], format!("{}{}", tag(2, &body), tag(3, &body)));
    assert_eq!(partial["result"], through_3);

    put_part(&srv, &created, &body, 4).await;
    sse.until(processed(4)).await;
    complete(&srv, id).await;
    let rest = sse.rest().await;
    let kinds: Vec<&str> = rest.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.last(), Some(&"final_result"), "the stream ends after the final result: {kinds:?}");
    assert!(kinds.contains(&"completed"));
    let fin = rest.last().unwrap();
    assert_eq!(fin["status"], "completed");
    assert_eq!(fin["result"], format!("{through_3}{}", tag(4, &body)));

    // Status keeps every part's result and the final one.
    let st = status(&srv, id).await;
    let p = &st["processing"];
    assert_eq!(
        (p["processor"].as_str(), p["kind"].as_str(), p["parts_processed"].as_u64()),
        (Some("tag"), Some("part"), Some(4))
    );
    assert_eq!(p["parts"].as_array().unwrap().len(), 4);
    assert_eq!(p["final_result"]["result"], fin["result"]);
}

#[tokio::test]
async fn last_event_id_resumes_after_a_dropped_connection_and_a_restart() {
    let mut srv = TestServer::start(&["--part-processor", &sh("tag", TAG)]);
    let body = data(4 * PART as usize, 2);
    let created = create_with(&srv, "resumed", &body, json!({"processor": "tag"})).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    let mut sse = Sse::open(&srv, &id, None).await;
    put_part(&srv, &created, &body, 1).await;
    let before = sse.until(is("partial_result")).await;
    let last = *ids(&before).last().unwrap();
    drop(sse);

    // Parts land while nobody watches; the reconnect starts right after `last`.
    put_part(&srv, &created, &body, 2).await;
    eventually(Duration::from_secs(20), async || status(&srv, &id).await["processing"]["parts_processed"] == 2).await;
    let mut sse = Sse::open(&srv, &id, Some(last)).await;
    let missed = sse.until(|v| v["type"] == "partial_result" && v["through_part"] == 2).await;
    assert_eq!(missed[0]["id"].as_u64(), Some(last + 1), "{missed:?}");
    assert!(ids(&missed).windows(2).all(|w| w[1] == w[0] + 1), "no gaps, no repeats: {:?}", ids(&missed));
    let last = *ids(&missed).last().unwrap();
    drop(sse);

    // A kill -9 loses nothing: the log replays the same events with the same ids, and the results
    // are still in the status.
    srv.crash_and_restart();
    let st = status(&srv, &id).await;
    assert_eq!(st["processing"]["parts"][1]["result"], tag(2, &body));
    let mut sse = Sse::open(&srv, &id, None).await;
    let replay = sse.until(|v| v["id"].as_u64() == Some(last)).await;
    let mut seen_before: Vec<Value> = before.into_iter().chain(missed).collect();
    seen_before.retain(|v| v["id"].as_u64().unwrap() > 1);
    assert_eq!(&replay[1..], &seen_before[..], "the replay after a restart is the same log");
    drop(sse);

    let mut sse = Sse::open(&srv, &id, Some(last)).await;
    let created = srv.post(&format!("/uploads/{id}/parts/sign"), json!({"part_numbers": [3, 4]})).await;
    let signed: Value = created.json().await.unwrap();
    for p in signed["parts"].as_array().unwrap() {
        assert_eq!(srv.put_url(p["url"].as_str().unwrap(), slice(&body, p).to_vec()).await.status(), 200);
    }
    sse.until(|v| v["type"] == "partial_result" && v["through_part"] == 4).await;
    complete(&srv, &id).await;
    let rest = sse.rest().await;
    assert_eq!(rest.last().unwrap()["type"], "final_result");

    // After the end, a reconnect at the last id ends at once.
    let end = *ids(&rest).last().unwrap();
    let mut sse = Sse::open(&srv, &id, Some(end)).await;
    assert!(sse.next().await.is_none());
    let bad = srv.http.get(srv.api(&format!("/uploads/{id}/events"))).bearer_auth(TOKEN).header("Last-Event-ID", "x");
    assert_error(bad.send().await.unwrap(), 400, "invalid_last_event_id").await;
    assert_error(srv.get("/uploads/00000000000000000000000000000000/events").await, 404, "upload_not_found").await;
}

#[tokio::test]
async fn idle_streams_get_keep_alives_and_close_after_the_idle_timeout() {
    let srv = TestServer::start(&["--events-keepalive", "200ms", "--events-idle-timeout", "1500ms"]);
    let body = data(10, 11);
    let created = create_with(&srv, "idle", &body, json!({})).await;
    let id = created["upload_id"].as_str().unwrap();
    let res = srv.http.get(srv.api(&format!("/uploads/{id}/events"))).bearer_auth(TOKEN).send().await.unwrap();
    let text =
        tokio::time::timeout(Duration::from_secs(20), res.text()).await.expect("the stream did not close").unwrap();
    assert!(text.starts_with("id: 1\n"), "{text}");
    assert!(text.matches(": keep-alive").count() >= 2, "{text}");
}

#[tokio::test]
async fn a_failed_part_does_not_fail_the_others_and_can_be_reprocessed() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("failed-once");
    // Part 2 fails the first time only.
    let script = format!(
        r#"if [ "$FERRY_PART_NUMBER" = 2 ] && [ ! -e {f} ]; then touch {f}; echo part two is cursed >&2; exit 3; fi; {TAG}"#,
        f = flag.display()
    );
    let srv = TestServer::start(&["--part-processor", &sh("flaky", &script), "--part-processor", &sh("tag", TAG)]);
    let body = data(3 * PART as usize, 3);
    let created = create_with(&srv, "flaky", &body, json!({"processor": "flaky"})).await;
    let id = created["upload_id"].as_str().unwrap();
    let mut sse = Sse::open(&srv, id, None).await;
    for n in 1..=3 {
        put_part(&srv, &created, &body, n).await;
    }
    complete(&srv, id).await;
    let seen = sse.until(is("final_result")).await;
    let failed = seen.iter().find(|v| v["type"] == "part_processed" && v["part_number"] == 2).unwrap();
    assert_eq!(failed["ok"], false);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("exited with status 3") && error.contains("part two is cursed"), "{error}");
    for n in [1u64, 3] {
        assert!(seen.iter().any(|v| processed(n)(v) && v["ok"] == true), "part {n} still processed");
    }
    let fin = seen.last().unwrap();
    assert_eq!((fin["status"].as_str(), fin["failed_parts"].clone()), (Some("failed"), json!([2])));
    assert_eq!(fin["result"], format!("{}{}", tag(1, &body), tag(3, &body)));
    // The stream stays open for a reprocess (the final result is not final for good).
    drop(sse);

    let res = srv.post(&format!("/uploads/{id}/parts/2/reprocess"), json!({})).await;
    assert_eq!(res.status(), 202);
    let mut sse = Sse::open(&srv, id, Some(*ids(&seen).last().unwrap())).await;
    let again = sse.until(is("final_result")).await;
    assert!(again.iter().any(|v| processed(2)(v) && v["ok"] == true), "{again:?}");
    let fin = again.last().unwrap();
    assert_eq!(fin["status"], "completed");
    assert_eq!(fin["result"], format!("{}{}{}", tag(1, &body), tag(2, &body), tag(3, &body)));
    let st = status(&srv, id).await;
    assert_eq!(
        (st["processing"]["parts_processed"].as_u64(), st["processing"]["parts_failed"].as_u64()),
        (Some(3), Some(0))
    );

    // Reprocess: only parts that exist, of uploads that have a part processor.
    assert_error(srv.post(&format!("/uploads/{id}/parts/9/reprocess"), json!({})).await, 400, "invalid_part_number")
        .await;
    let plain = create_with(&srv, "plain", &body, json!({})).await;
    let plain_id = plain["upload_id"].as_str().unwrap();
    assert_error(
        srv.post(&format!("/uploads/{plain_id}/parts/1/reprocess"), json!({})).await,
        400,
        "no_part_processor",
    )
    .await;
    let other = create_with(&srv, "other", &body, json!({"processor": "tag"})).await;
    let other_id = other["upload_id"].as_str().unwrap();
    assert_error(
        srv.post(&format!("/uploads/{other_id}/parts/1/reprocess"), json!({})).await,
        409,
        "part_not_received",
    )
    .await;
}

#[tokio::test]
async fn a_processor_past_its_timeout_is_killed() {
    let srv = TestServer::start(&["--part-processor", "slow=sleep 30", "--processing-timeout", "1s"]);
    let body = data(PART as usize, 4);
    let created = create_with(&srv, "slow", &body, json!({"processor": "slow"})).await;
    let id = created["upload_id"].as_str().unwrap();
    let mut sse = Sse::open(&srv, id, None).await;
    put_part(&srv, &created, &body, 1).await;
    let seen = sse.until(processed(1)).await;
    let outcome = seen.last().unwrap();
    assert_eq!(outcome["ok"], false);
    assert!(outcome["error"].as_str().unwrap().contains("timed out after 1s"), "{outcome}");
}

#[tokio::test]
async fn no_more_processors_run_at_once_than_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let running = dir.path().join("running");
    std::fs::create_dir(&running).unwrap();
    let log = dir.path().join("log");
    let script = format!(
        r#"touch {r}/$$; ls {r} | wc -l >> {l}; sleep 0.3; rm {r}/$$; cat > /dev/null"#,
        r = running.display(),
        l = log.display()
    );
    let srv = TestServer::start(&["--part-processor", &sh("count", &script), "--processing-concurrency", "2"]);
    let body = data(8 * PART as usize, 5);
    let created = create_with(&srv, "capped", &body, json!({"processor": "count"})).await;
    let id = created["upload_id"].as_str().unwrap();
    let mut sse = Sse::open(&srv, id, None).await;
    for n in 1..=8 {
        put_part(&srv, &created, &body, n).await;
    }
    sse.until(|v| v["type"] == "progress" && v["parts_processed"] == 8).await;
    let counts: Vec<u32> =
        std::fs::read_to_string(&log).unwrap().split_whitespace().map(|c| c.parse().unwrap()).collect();
    assert_eq!(counts.len(), 8);
    assert_eq!(counts.iter().max(), Some(&2), "runs overlapped, but never more than 2: {counts:?}");
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test]
async fn cancel_kills_running_processors_and_their_children() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // The shell starts a child of its own and waits: both must go.
    let script =
        format!(r#"echo $$ > {d}/sh.$FERRY_PART_NUMBER; sleep 300 & echo $! > {d}/child.$FERRY_PART_NUMBER; wait"#);
    let srv = TestServer::start(&["--part-processor", &sh("hang", &script)]);
    let body = data(2 * PART as usize, 6);
    let created = create_with(&srv, "hang", &body, json!({"processor": "hang"})).await;
    let id = created["upload_id"].as_str().unwrap();
    let mut sse = Sse::open(&srv, id, None).await;
    put_part(&srv, &created, &body, 1).await;
    put_part(&srv, &created, &body, 2).await;
    let files = ["sh.1", "child.1", "sh.2", "child.2"];
    eventually(Duration::from_secs(20), async || {
        files.iter().all(|f| std::fs::read_to_string(dir.path().join(f)).is_ok_and(|s| !s.trim().is_empty()))
    })
    .await;
    let pids: Vec<String> = files.iter().map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap()).collect();
    assert!(pids.iter().all(|p| alive(p)), "processors are running: {pids:?}");

    assert_eq!(srv.delete(&format!("/uploads/{id}")).await.status(), 200);
    eventually(Duration::from_secs(10), async || pids.iter().all(|p| !alive(p))).await;
    let rest = sse.rest().await;
    assert_eq!(rest.last().unwrap()["type"], "cancelled", "{rest:?}");
    assert!(!rest.iter().any(|v| v["type"] == "part_processed"), "{rest:?}");
}

#[tokio::test]
async fn a_complete_processor_gets_the_object() {
    let script =
        r#"printf "%s %s " "$(wc -c < "$FERRY_OBJECT_PATH" | tr -d " ")" "$FERRY_SHA256"; sha256sum | cut -c1-64"#;
    let srv = TestServer::start(&["--complete-processor", &sh("digest", script)]);
    let body = data(3 * PART as usize + 17, 7);
    let created = create_with(&srv, "whole", &body, json!({"processor": "digest"})).await;
    let id = created["upload_id"].as_str().unwrap();
    srv.put_all(&created, &body).await;
    let mut sse = Sse::open(&srv, id, None).await;
    complete(&srv, id).await;
    let rest = sse.rest().await;
    let fin = rest.last().unwrap();
    assert_eq!((fin["type"].as_str(), fin["status"].as_str()), (Some("final_result"), Some("completed")));
    let sha = sha256_hex(&body);
    assert_eq!(fin["result"].as_str().unwrap().trim(), format!("{} {sha} {sha}", body.len()));
    assert!(!rest.iter().any(|v| v["type"] == "part_processed"), "a complete processor does not run per part");
}

#[tokio::test]
async fn create_refuses_unknown_processors_and_bad_webhooks() {
    let srv = TestServer::start(&["--part-processor", "wc=wc -c", "--webhook-secret", "0123456789abcdef"]);
    let body = data(10, 8);
    let base = json!({"name": "x", "size": body.len()});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let res = srv.post("/uploads", with(json!({"processor": "rm -rf /"}))).await;
    assert_error(res, 400, "unknown_processor").await;
    let res = srv.post("/uploads", with(json!({"processor": "nope"}))).await;
    let text = res.text().await.unwrap();
    assert!(text.contains("unknown_processor") && text.contains("wc"), "names what is configured: {text}");
    for url in ["ftp://127.0.0.1/x", "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "nonsense"] {
        assert_error(srv.post("/uploads", with(json!({"webhook_url": url}))).await, 400, "invalid_webhook_url").await;
    }
    let plain = TestServer::start(&[]);
    assert_error(
        plain.post("/uploads", with(json!({"webhook_url": "http://127.0.0.1:9/"}))).await,
        400,
        "webhooks_unsupported",
    )
    .await;
}

/// A webhook receiver on loopback: answers 500 to the first `failures` requests, then 200, and
/// hands every request over.
async fn receiver(
    failures: usize,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<(Vec<(String, String)>, Vec<u8>, u16)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body_start) = loop {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                raw.extend_from_slice(&buf[..n]);
                if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8(raw[..i].to_vec()).unwrap(), i + 4);
                }
            };
            let headers: Vec<(String, String)> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
                .collect();
            let len: usize = headers.iter().find(|(k, _)| k == "content-length").unwrap().1.parse().unwrap();
            let mut body = raw[body_start..].to_vec();
            while body.len() < len {
                let n = conn.read(&mut buf).await.unwrap();
                body.extend_from_slice(&buf[..n]);
            }
            let status = if served < failures { 500 } else { 200 };
            served += 1;
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            conn.write_all(reply.as_bytes()).await.unwrap();
            let _ = tx.send((headers, body, status));
        }
    });
    (url, rx)
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_after_a_500() {
    use hmac::Mac;
    let secret = "a-webhook-secret-of-some-length";
    let srv = TestServer::start(&["--webhook-secret", secret]);
    let (url, mut requests) = receiver(1).await;
    let body = data(2 * PART as usize, 9);
    let created = create_with(&srv, "hooked", &body, json!({"webhook_url": url})).await;
    let id = created["upload_id"].as_str().unwrap();
    srv.put_all(&created, &body).await;
    complete(&srv, id).await;

    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(tokio::time::timeout(Duration::from_secs(20), requests.recv()).await.unwrap().unwrap());
    }
    assert_eq!(got.iter().map(|(_, _, s)| *s).collect::<Vec<_>>(), [500, 200]);
    assert_eq!(got[0].1, got[1].1, "a retry sends the same event");
    let (headers, payload, _) = &got[1];
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
    let timestamp = header("ferry-webhook-timestamp");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header("ferry-webhook-signature"), expected, "the receiver can verify the signature");
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "a fresh timestamp: {age}");
    let event: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!((event["upload_id"].as_str(), event["key"].as_str()), (Some(id), Some("hooked")));
    assert_eq!(event["event"]["type"], "completed");
    assert_eq!(event["event"]["sha256"], sha256_hex(&body));

    eventually(Duration::from_secs(10), async || {
        status(&srv, id).await["webhook"]["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let d = &status(&srv, id).await["webhook"]["deliveries"][0];
    assert_eq!((d["type"].as_str(), d["attempts"].as_u64()), (Some("completed"), Some(2)));
    let statuses: Vec<u64> = d["recent"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [500, 200]);
}

#[tokio::test]
async fn put_follow_and_watch_print_results_as_they_stream() {
    let srv = TestServer::start(&["--part-processor", &sh("tag", TAG)]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(5 * PART as usize, 10);
    let file = write_file(dir.path(), "followed.bin", &body);
    let state = dir.path().join("state");
    let f = file.to_str().unwrap();
    let cmd = ferry(&srv.url, &state, &["put", f, "--part-size", "64KiB", "--processor", "tag", "--follow", "--json"]);
    let (ok, lines, err) = run_json(cmd).await;
    assert!(ok, "{err}");
    let server: Vec<&Value> = lines.iter().filter(|v| v["type"] == "server").map(|v| &v["event"]).collect();
    let fin = server.last().unwrap();
    assert_eq!(fin["type"], "final_result");
    let all: String = (1..=5).map(|n| tag(n, &body)).collect();
    assert_eq!(fin["result"], all);
    assert_eq!(server.iter().filter(|e| e["type"] == "part_processed").count(), 5);
    let id = result_of(&lines)["upload_id"].as_str().unwrap().to_owned();

    let (ok, watched, err) = run_json(ferry(&srv.url, &state, &["watch", &id, "--json"])).await;
    assert!(ok, "{err}");
    assert_eq!(ids(&watched), (1..=watched.len() as u64).collect::<Vec<_>>(), "the whole log, in order");
    assert_eq!(watched.last().unwrap()["result"], all);
    let (ok, after, _) = run_json(ferry(&srv.url, &state, &["watch", &id, "--json", "--after", "3"])).await;
    assert!(ok);
    assert_eq!(after[0]["id"], 4);

    // A processor that fails makes --follow fail, after printing why.
    let failing = TestServer::start(&["--part-processor", "bad=false"]);
    let mut cmd = ferry(&failing.url, &state, &["put", f, "--key", "bad", "--processor", "bad", "--follow"]);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed processing") && stderr.contains("processing failed for 1"), "{stderr}");
}

#[tokio::test]
async fn processors_can_come_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[processors.size]\non = \"complete\"\ncommand = \"wc -c\"\n\n[processors.tag]\non = \"part\"\ncommand = \"sh -c 'printf %s $FERRY_PART_NUMBER'\"\ntimeout = \"30s\"\n",
    )
    .unwrap();
    let srv = TestServer::start(&["--config", config.to_str().unwrap()]);
    let body = data(2 * PART as usize, 12);
    for (processor, expected) in [("size", format!("{}\n", body.len())), ("tag", "12".to_owned())] {
        let created = create_with(&srv, processor, &body, json!({"processor": processor})).await;
        let id = created["upload_id"].as_str().unwrap();
        srv.put_all(&created, &body).await;
        let mut sse = Sse::open(&srv, id, None).await;
        complete(&srv, id).await;
        let fin = sse.until(is("final_result")).await.pop().unwrap();
        assert_eq!(fin["result"], expected, "{processor}");
    }

    // A config that does not make sense stops the server with a clear message.
    for (text, says) in [
        ("[processors.x]\non = \"sometimes\"\ncommand = \"cat\"\n", "unknown variant"),
        ("[processors.x]\non = \"part\"\n", "missing field `command`"),
        ("[processors.x]\non = \"part\"\ncommand = \"cat\"\ncolour = \"red\"\n", "unknown field"),
        ("[processors.x]\non = \"part\"\ncommand = \"cat\"\ntimeout = \"soon\"\n", "timeout"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--config", config.to_str().unwrap()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{text}: {stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--part-processor", "a=cat", "--complete-processor", "a=cat"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("configured twice"));
}

#[tokio::test]
async fn stopping_the_server_stops_its_processors_and_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let script = format!(r#"sleep 300 & echo $! > {d}/child; wait"#);
    let mut srv = TestServer::start(&["--part-processor", &sh("hang", &script)]);
    let body = data(PART as usize, 13);
    let created = create_with(&srv, "hang", &body, json!({"processor": "hang"})).await;
    let id = created["upload_id"].as_str().unwrap();
    let mut sse = Sse::open(&srv, id, None).await;
    put_part(&srv, &created, &body, 1).await;
    let child = dir.path().join("child");
    eventually(Duration::from_secs(20), async || std::fs::read_to_string(&child).is_ok_and(|s| !s.trim().is_empty()))
        .await;
    let pid = std::fs::read_to_string(&child).unwrap();
    assert!(alive(&pid));
    let term = std::process::Command::new("kill").args(["-TERM", &srv.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    // The open event stream does not hold the shutdown up, and the processor goes with the server.
    sse.rest().await;
    let exited = tokio::task::spawn_blocking(move || srv.child.wait().unwrap()).await.unwrap();
    assert!(exited.success(), "{exited:?}");
    eventually(Duration::from_secs(10), async || !alive(&pid)).await;
}
