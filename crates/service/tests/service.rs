//! The service on the embedded store in a temp dir, with no socket and a clock moved by hand:
//! the life of an upload, expiry, webhook retry schedules and processor timeouts, in virtual time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::api::{CreateUpload, DeliveryState, UploadState};
use ferry_core::events::{ProcessorKind, UploadEvent};
use ferry_core::plan::Limits;
use ferry_core::sign::Signer;
use ferry_service::processing::ProcessorSpec;
use ferry_service::{
    Clock, IngestPlan, Invalid, ManualClock, Parts, Refused, Service, ServiceConfig, ServiceError, WebhookRequest,
    WebhookSender,
};
use ferry_store::{ByteStream, FsStore};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::mpsc;

const START: OffsetDateTime = time::macros::datetime!(2026-01-01 00:00 UTC);

/// Webhook attempts, answered from a script of statuses (then 200), each reported with its time.
struct Recorder {
    clock: Arc<ManualClock>,
    statuses: Arc<Mutex<Vec<u16>>>,
    attempts: mpsc::UnboundedSender<(OffsetDateTime, WebhookRequest)>,
}

#[async_trait::async_trait]
impl WebhookSender for Recorder {
    async fn post(&self, request: WebhookRequest) -> Result<u16, String> {
        let status = {
            let mut s = self.statuses.lock().unwrap();
            if s.is_empty() { 200 } else { s.remove(0) }
        };
        let _ = self.attempts.send((self.clock.now(), request));
        Ok(status)
    }
}

struct World {
    service: Arc<Service>,
    clock: Arc<ManualClock>,
    attempts: mpsc::UnboundedReceiver<(OffsetDateTime, WebhookRequest)>,
    _dir: tempfile::TempDir,
}

fn world(statuses: Vec<u16>, configure: impl FnOnce(&mut ServiceConfig)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let (tx, attempts) = mpsc::unbounded_channel();
    let mut config = ServiceConfig::new("http://ferry.test");
    configure(&mut config);
    let recorder = Recorder { clock: Arc::clone(&clock), statuses: Arc::new(Mutex::new(statuses)), attempts: tx };
    let service = instance(dir.path(), config, &clock, &local_bus(), recorder);
    World { service, clock, attempts, _dir: dir }
}

fn local_bus() -> Arc<dyn ferry_bus::Bus> {
    Arc::new(ferry_bus::LocalBus::new(0, ferry_bus::BusMetrics::default()).0)
}

/// One instance of the service on the store in `dir`; several may share a store, clock and bus.
fn instance(
    dir: &std::path::Path,
    mut config: ServiceConfig,
    clock: &Arc<ManualClock>,
    bus: &Arc<dyn ferry_bus::Bus>,
    recorder: Recorder,
) -> Arc<Service> {
    config.webhooks.secret = Some("a webhook secret of 32 bytes....".into());
    Arc::new(Service::new(Parts {
        store: Arc::new(FsStore::open(dir, Limits::EMBEDDED).unwrap()),
        config,
        signer: Signer::new(b"secret".to_vec()),
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        webhook_sender: Arc::new(recorder),
        metrics: ferry_service::Metrics::default(),
        bus: Arc::clone(bus),
    }))
}

fn request(name: &str, size: u64, part_size: u64) -> CreateUpload {
    serde_json::from_value(serde_json::json!({"name": name, "size": size, "part_size": part_size})).unwrap()
}

fn body(bytes: &[u8]) -> ByteStream {
    let chunk = Bytes::copy_from_slice(bytes);
    Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]))
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every event of an upload's log, in order, as far as it goes now.
async fn events(service: &Arc<Service>, upload_id: &str) -> Vec<UploadEvent> {
    let mut follow = service.follow(upload_id, 0, Default::default()).await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), follow.next()).await {
        out.push(r.event.clone());
    }
    out
}

/// The next webhook attempt, within 10 s of real time.
async fn next_attempt(
    attempts: &mut mpsc::UnboundedReceiver<(OffsetDateTime, WebhookRequest)>,
) -> (OffsetDateTime, WebhookRequest) {
    tokio::time::timeout(Duration::from_secs(10), attempts.recv()).await.expect("no webhook attempt").unwrap()
}

/// Waits (in real time, bounded) until `n` sleeps are waiting on the clock.
async fn asleep(clock: &ManualClock, n: usize) {
    for _ in 0..500 {
        if clock.sleepers() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no task went to sleep on the clock");
}

#[tokio::test]
async fn an_upload_completes_once_with_its_sha256_checked() {
    let w = world(vec![], |_| {});
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let created = w.service.create(request("dir/a.bin", data.len() as u64, 65536)).await.unwrap();
    assert_eq!(created.part_count, 4);
    let id = created.upload_id.clone();
    for p in &created.parts {
        let slice = &data[p.offset as usize..(p.offset + p.size) as usize];
        w.service.put_part(&id, p.part_number, Some(p.size), body(slice)).await.unwrap();
    }
    // A wrong SHA-256 is refused and changes nothing.
    let wrong = sha256(b"something else");
    let e = w.service.complete(&id, None, Some(wrong)).await.unwrap_err();
    assert!(matches!(e, ServiceError::Store(ferry_store::StoreError::ChecksumMismatch { .. })), "{e}");
    assert_eq!(w.service.status(&id).await.unwrap().state, UploadState::Uploading);
    let info = w.service.complete(&id, None, Some(sha256(&data))).await.unwrap();
    assert_eq!((info.key.as_str(), info.size), ("dir/a.bin", data.len() as u64));
    assert_eq!(w.service.complete(&id, None, None).await.unwrap(), info, "complete is idempotent");
    let e = w.service.put_part(&id, 1, Some(65536), body(&data[..65536])).await.unwrap_err();
    assert!(matches!(e, ServiceError::Refused(Refused::Completed)), "{e}");
    let kinds: Vec<&str> = events(&w.service, &id).await.iter().map(UploadEvent::kind).collect();
    assert_eq!(kinds.first(), Some(&"initialized"));
    assert_eq!(kinds.iter().filter(|k| **k == "part_received").count(), 4);
    assert_eq!(kinds.last(), Some(&"completed"));
}

#[tokio::test]
async fn an_upload_expires_in_virtual_time_and_its_parts_go() {
    let w = world(vec![], |c| c.session_ttl = Duration::from_secs(3600));
    let created = w.service.create(request("late.bin", 10, 65536)).await.unwrap();
    let id = created.upload_id;
    w.service.put_part(&id, 1, Some(10), body(b"0123456789")).await.unwrap();
    w.clock.advance(Duration::from_secs(3599));
    assert_eq!(w.service.expire_overdue().await.unwrap(), 0);
    assert_eq!(w.service.status(&id).await.unwrap().state, UploadState::Uploading);
    w.clock.advance(Duration::from_secs(1));
    // Expired as soon as its time is up, before the sweep records it.
    let e = w.service.put_part(&id, 1, Some(10), body(b"0123456789")).await.unwrap_err();
    assert!(matches!(e, ServiceError::Refused(Refused::Expired)), "{e}");
    assert_eq!(w.service.expire_overdue().await.unwrap(), 1);
    assert_eq!(w.service.expire_overdue().await.unwrap(), 0, "once");
    let status = w.service.status(&id).await.unwrap();
    assert_eq!((status.state, status.parts.len()), (UploadState::Expired, 0));
    assert_eq!(events(&w.service, &id).await.last().map(UploadEvent::kind), Some("expired"));
}

#[tokio::test]
async fn a_failing_webhook_is_retried_on_its_schedule_until_it_is_delivered() {
    let mut w = world(vec![500, 503, 500], |_| {});
    let mut req = request("hooked.bin", 1, 65536);
    req.webhook_url = Some("http://127.0.0.1:9/hook".into());
    let id = w.service.create(req).await.unwrap().upload_id;
    w.service.cancel(&id).await.unwrap();
    let mut at = Vec::new();
    for step in [1, 2, 4] {
        let (t, r) = w.attempts.recv().await.unwrap();
        at.push((t - START).whole_seconds());
        assert!(r.body.contains("\"cancelled\""), "{}", r.body);
        asleep(&w.clock, 1).await;
        w.clock.advance(Duration::from_secs(step));
    }
    let (t, r) = w.attempts.recv().await.unwrap();
    at.push((t - START).whole_seconds());
    assert_eq!(at, [0, 1, 3, 7], "1 s, 2 s, 4 s apart");
    let signature = r.headers.iter().find(|(h, _)| *h == "ferry-webhook-signature").map(|(_, v)| v.clone());
    let timestamp = (t.unix_timestamp(), r.body.as_bytes());
    let expected = ferry_core::sign::webhook_signature(b"a webhook secret of 32 bytes....", timestamp.0, timestamp.1);
    assert_eq!(signature, Some(expected), "signed with the time of the attempt");
    for _ in 0..100 {
        let delivery = w.service.status(&id).await.unwrap().webhook.unwrap().deliveries.remove(0);
        if delivery.state == DeliveryState::Delivered {
            assert_eq!(delivery.attempts, 4);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the delivery was not recorded as delivered");
}

/// Two instances on one store and one bus, both sweeping for deliveries to take over while one
/// makes a delivery's attempts: each attempt is made once, on the schedule.
#[tokio::test]
async fn with_two_instances_sweeping_each_webhook_attempt_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let bus = local_bus();
    let statuses = Arc::new(Mutex::new(vec![500, 503, 500]));
    let (tx, mut attempts) = mpsc::unbounded_channel();
    let recorder = |tx| Recorder { clock: Arc::clone(&clock), statuses: Arc::clone(&statuses), attempts: tx };
    let config = ServiceConfig::new("http://ferry.test");
    let a = instance(dir.path(), config.clone(), &clock, &bus, recorder(tx.clone()));
    let b = instance(dir.path(), config, &clock, &bus, recorder(tx));
    let mut req = request("twice.bin", 1, 65536);
    req.webhook_url = Some("http://127.0.0.1:9/hook".into());
    let id = a.create(req).await.unwrap().upload_id;
    a.cancel(&id).await.unwrap();
    let mut at = Vec::new();
    for step in [1, 2, 4] {
        let (t, _) = next_attempt(&mut attempts).await;
        at.push((t - START).whole_seconds());
        asleep(&clock, 1).await;
        b.sweep().await;
        a.sweep().await;
        clock.advance(Duration::from_secs(step));
    }
    let (t, _) = next_attempt(&mut attempts).await;
    at.push((t - START).whole_seconds());
    assert_eq!(at, [0, 1, 3, 7], "1 s, 2 s, 4 s apart, each once");
    for _ in 0..100 {
        let delivery = b.status(&id).await.unwrap().webhook.unwrap().deliveries.remove(0);
        if delivery.state == DeliveryState::Delivered {
            assert_eq!(delivery.attempts, 4);
            b.sweep().await;
            a.sweep().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(attempts.try_recv().is_err(), "an attempt after the delivery");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the delivery was not recorded as delivered");
}

/// An instance dies between two attempts (its runtime, and the tasks on it, are dropped); the
/// next one to start carries the delivery on from its record.
#[test]
fn a_delivery_cut_off_by_a_dying_instance_is_carried_on_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let statuses = Arc::new(Mutex::new(vec![500, 500]));
    let recorder = |tx| Recorder { clock: Arc::clone(&clock), statuses: Arc::clone(&statuses), attempts: tx };
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = ServiceConfig::new("http://ferry.test");
    let id = runtime().block_on(async {
        let (tx, mut attempts) = mpsc::unbounded_channel();
        let dying = instance(dir.path(), config.clone(), &clock, &local_bus(), recorder(tx));
        let mut req = request("orphan.bin", 1, 65536);
        req.webhook_url = Some("http://127.0.0.1:9/hook".into());
        let id = dying.create(req).await.unwrap().upload_id;
        dying.cancel(&id).await.unwrap();
        next_attempt(&mut attempts).await;
        asleep(&clock, 1).await;
        id
    });
    clock.advance(Duration::from_secs(30));
    runtime().block_on(async {
        let (tx, mut attempts) = mpsc::unbounded_channel();
        let next = instance(dir.path(), config, &clock, &local_bus(), recorder(tx));
        tokio::spawn(Arc::clone(&next).run_background());
        let (t, _) = next_attempt(&mut attempts).await;
        assert_eq!((t - START).whole_seconds(), 30, "at once on start, the first wait being over");
        asleep(&clock, 2).await; // the retry's wait and the sweeper's
        clock.advance(Duration::from_secs(2));
        let (t, _) = next_attempt(&mut attempts).await;
        assert_eq!((t - START).whole_seconds(), 32, "then 2 s later: the schedule goes on from attempt 2");
        for _ in 0..100 {
            let delivery = next.status(&id).await.unwrap().webhook.unwrap().deliveries.remove(0);
            if delivery.state == DeliveryState::Delivered {
                assert_eq!(delivery.attempts, 3);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the delivery was not recorded as delivered");
    });
}

#[tokio::test]
async fn a_webhook_that_never_answers_2xx_is_given_up_when_its_time_is_out() {
    let mut w = world(vec![500; 100], |c| c.webhooks.retry_for = Duration::from_secs(10));
    let mut req = request("doomed.bin", 1, 65536);
    req.webhook_url = Some("http://127.0.0.1:9/hook".into());
    let id = w.service.create(req).await.unwrap().upload_id;
    w.service.cancel(&id).await.unwrap();
    let mut at = Vec::new();
    // 1, 2, 4, then the 8 s step is cut to the 3 s left.
    for step in [1, 2, 4, 3] {
        let (t, _) = w.attempts.recv().await.unwrap();
        at.push((t - START).whole_seconds());
        asleep(&w.clock, 1).await;
        w.clock.advance(Duration::from_secs(step));
    }
    let (t, _) = w.attempts.recv().await.unwrap();
    at.push((t - START).whole_seconds());
    assert_eq!(at, [0, 1, 3, 7, 10]);
    for _ in 0..100 {
        let delivery = w.service.status(&id).await.unwrap().webhook.unwrap().deliveries.remove(0);
        if delivery.state == DeliveryState::Failed {
            assert_eq!(delivery.attempts, 5);
            assert_eq!(delivery.recent.iter().filter(|a| a.status == Some(500)).count(), 5);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the delivery was not given up");
}

#[tokio::test]
async fn a_processor_that_overruns_is_killed_at_its_timeout_in_virtual_time() {
    let w = world(vec![], |c| {
        let spec = ProcessorSpec::new("slow", "sleep 600", ProcessorKind::Part, Some(Duration::from_secs(30))).unwrap();
        c.processors.insert("slow".into(), spec);
    });
    let mut req = request("slow.bin", 5, 65536);
    req.processor = Some("slow".into());
    let id = w.service.create(req).await.unwrap().upload_id;
    w.service.put_part(&id, 1, Some(5), body(b"hello")).await.unwrap();
    asleep(&w.clock, 1).await;
    w.clock.advance(Duration::from_secs(30));
    for _ in 0..200 {
        let processing = w.service.status(&id).await.unwrap().processing.unwrap();
        if let Some(outcome) = processing.parts.first() {
            assert!(!outcome.ok);
            assert_eq!(outcome.error.as_deref(), Some("timed out after 30s"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the run was not ended at its timeout");
}

fn ingest_plan(name: &str, min_size: u64, max_size: u64, key: Option<&str>) -> IngestPlan {
    IngestPlan { request: request(name, max_size, 0), min_size, align: 48 * 1024, resume_key: key.map(str::to_owned) }
}

/// Writes `data[from..to]` in 48 KiB pieces, as a data channel delivers it.
async fn pour(ingest: &mut ferry_service::Ingest, data: &[u8], from: usize, to: usize) {
    for start in (from..to).step_by(48 * 1024) {
        let end = (start + 48 * 1024).min(to);
        ingest.write(start as u64, &data[start..end]).await.unwrap();
    }
}

#[tokio::test]
async fn a_stream_of_known_size_becomes_an_object_part_by_part() {
    let w = world(vec![], |_| {});
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let size = data.len() as u64;
    let mut ingest = w.service.ingest(ingest_plan("streams/a.bin", size, size, None)).await.unwrap();
    assert_eq!(ingest.part_size() % (48 * 1024), 0, "parts hold whole chunks");
    let id = ingest.upload_id().to_owned();
    pour(&mut ingest, &data, 0, data.len()).await;
    let info = ingest.finish(size, Some(sha256(&data))).await.unwrap();
    assert_eq!((info.key.as_str(), info.size), ("streams/a.bin", size));
    let kinds: Vec<&str> = events(&w.service, &id).await.iter().map(UploadEvent::kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "part_received").count(), 3, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"));
    let mut read = Vec::new();
    let reader = w.service.open_object("streams/a.bin").await.unwrap();
    let mut body = reader.read(0, size);
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(read, data);
}

#[tokio::test]
async fn a_stream_of_unknown_length_holds_only_its_last_part_and_may_arrive_a_little_out_of_order() {
    let w = world(vec![], |_| {});
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 241) as u8).collect();
    let mut ingest = w.service.ingest(ingest_plan("u.bin", 8_000_000, 10_000_000, None)).await.unwrap();
    let piece = 48 * 1024;
    // The second piece before the first.
    ingest.write(piece as u64, &data[piece..2 * piece]).await.unwrap();
    ingest.write(0, &data[..piece]).await.unwrap();
    // Sent twice: ignored.
    ingest.write(0, &data[..piece]).await.unwrap();
    pour(&mut ingest, &data, 2 * piece, data.len()).await;
    let far = ingest.write(data.len() as u64 + (5 << 20), &[0; 10]).await.unwrap_err();
    assert!(matches!(far, ServiceError::Invalid(Invalid::Stream(_))), "{far}");
    let info = ingest.finish(data.len() as u64, Some(sha256(&data))).await.unwrap();
    assert_eq!(info.sha256, Some(sha256(&data)));
}

#[tokio::test]
async fn a_broken_stream_resumes_from_the_first_part_it_lacks() {
    let w = world(vec![], |_| {});
    let data: Vec<u8> = (0..30_000_000u32).map(|i| (i % 239) as u8).collect();
    let size = data.len() as u64;
    let plan = || ingest_plan("r.bin", size, size, Some("peer-transfer-1"));
    let mut first = w.service.ingest(plan()).await.unwrap();
    let part = first.part_size() as usize;
    let id = first.upload_id().to_owned();
    // Two parts and a half, then the connection breaks.
    pour(&mut first, &data, 0, 2 * part + part / 2).await;
    first.abandon(true).await.unwrap();
    // What a stream that comes back is told before it says what it is.
    let held = w.service.ingest_held("peer-transfer-1").await.unwrap().unwrap();
    assert_eq!((held.upload_id.as_str(), held.max_size, held.align), (id.as_str(), size, 48 * 1024));
    assert_eq!(held.stored, vec![(0, part as u64), (part as u64, 2 * part as u64)]);
    assert_eq!(w.service.ingest_held("another-transfer").await.unwrap(), None);
    let mut second = w.service.ingest(plan()).await.unwrap();
    assert_eq!(second.upload_id(), id, "the same upload");
    assert_eq!(second.stored_ranges(), vec![(0, part as u64), (part as u64, 2 * part as u64)]);
    pour(&mut second, &data, 2 * part, data.len()).await;
    second.finish(size, Some(sha256(&data))).await.unwrap();
    let status = w.service.status(&id).await.unwrap();
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(w.service.ingest_held("peer-transfer-1").await.unwrap(), None, "a finished ingest holds nothing");
    // Another stream with the key starts afresh: the finished one is not resumed.
    let third = w.service.ingest(plan()).await.unwrap();
    assert_ne!(third.upload_id(), id);
    third.abandon(false).await.unwrap();
}

#[tokio::test]
async fn an_empty_stream_is_an_empty_object() {
    let w = world(vec![], |_| {});
    let ingest = w.service.ingest(ingest_plan("empty.bin", 0, 0, None)).await.unwrap();
    let info = ingest.finish(0, Some(sha256(b""))).await.unwrap();
    assert_eq!(info.size, 0);
}

#[tokio::test]
async fn a_stream_is_processed_part_by_part_like_an_http_upload() {
    let w = world(vec![], |c| {
        let spec = ProcessorSpec::new("count", "wc -c", ProcessorKind::Part, None).unwrap();
        c.processors.insert("count".into(), spec);
    });
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let size = data.len() as u64;
    let chunk = 48 * 1024;
    // Its size known, and known only within a chunk (a data channel's frames, until the last).
    let at_most = size.div_ceil(chunk) * chunk;
    for (min, max) in [(size, size), (at_most - chunk + 1, at_most)] {
        let mut plan = ingest_plan("streams/p.bin", min, max, None);
        plan.request.processor = Some("count".into());
        let mut ingest = w.service.ingest(plan).await.unwrap();
        let (id, part) = (ingest.upload_id().to_owned(), ingest.part_size());
        pour(&mut ingest, &data, 0, data.len()).await;
        ingest.finish(size, Some(sha256(&data))).await.unwrap();
        let mut counted = Vec::new();
        for _ in 0..500 {
            let processing = w.service.status(&id).await.unwrap().processing.unwrap();
            counted = processing.parts.iter().map(|p| p.result.clone().unwrap_or_default().trim().to_owned()).collect();
            if counted.len() == size.div_ceil(part) as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expected: Vec<String> = data.chunks(part as usize).map(|c| c.len().to_string()).collect();
        assert_eq!(counted, expected, "each part went to the processor, whole ({min}..={max})");
        let events = events(&w.service, &id).await;
        let kinds: Vec<&str> = events.iter().map(UploadEvent::kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "part_processed").count(), expected.len(), "{kinds:?}");
        assert!(kinds.contains(&"final_result"), "{kinds:?}");
        let completed = events.iter().find_map(|e| match e {
            UploadEvent::Completed { size, .. } => Some(*size),
            _ => None,
        });
        assert_eq!(completed, Some(size), "the object has the stream's real size");
    }
}
