//! Three `ferry serve` instances on one s3s-fs bucket and one Redis, behind nginx round-robin:
//! one system whichever instance each connection lands on. Uploads and downloads through the
//! balancer, a peer-to-peer send whose two sides sit on different instances (checked from the
//! instances' metrics), an event stream on one instance while parts are reported to another, and
//! the peers of a `kill -9`ed instance reported left, their ids free again.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use ferry_core::signal::{Outbound, Role};
use ferry_rtc::signaling::Signaling;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;
const CONNECTIONS: &str = "ferry_signal_connections_total";

/// Which instance's count of signaling connections went up since `before`.
fn which(before: &[f64], after: &[f64]) -> Vec<usize> {
    (0..before.len()).filter(|i| after[*i] > before[*i]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_load_balancer_the_instances_are_one_system() {
    let cluster = Cluster::start(&[]);
    let url = cluster.url().to_owned();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");

    // put and get, each request to whichever instance.
    let bytes = data((12 * MIB + 3) as usize, 71);
    let file = write_file(work.path(), "lb.bin", &bytes);
    let (ok, lines, err) =
        run_json(ferry(&url, &state, &["put", file.to_str().unwrap(), "--part-size", "5MiB", "--json"])).await;
    assert!(ok, "{err}");
    let key = result_of(&lines)["key"].as_str().unwrap().to_owned();
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&bytes));
    let out = work.path().join("lb.out");
    let (ok, lines, err) = run_json(ferry(&url, &state, &["get", &key, out.to_str().unwrap(), "--json"])).await;
    assert!(ok, "{err}");
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&bytes));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // send → recv until the two sides' signaling lands on different instances (the balancer
    // decides; the metrics say where each went).
    let mut crossed = false;
    for attempt in 0..4 {
        let dir = work.path().join(format!("p2p-{attempt}"));
        let payload = data(2 * MIB as usize + attempt, 72 + attempt as u64);
        let file = write_file(work.path(), &format!("p2p-{attempt}.bin"), &payload);
        let before = cluster.per_instance(CONNECTIONS).await;
        let recv = ferry(
            &url,
            &dir,
            &["recv", "--room", "lb", "--out", dir.join("out").to_str().unwrap(), "--peer-id", "receiver", "--json"],
        );
        let (recv, rlines, _) = run_until(recv, |v| v["type"] == "waiting").await;
        let mid = cluster.per_instance(CONNECTIONS).await;
        let (ok, sent, err) = run_json(ferry(
            &url,
            &dir,
            &["send", file.to_str().unwrap(), "--room", "lb", "--to", "receiver", "--json"],
        ))
        .await;
        assert!(ok, "{err}");
        assert_eq!(result_of(&sent)["sha256"], sha256_hex(&payload));
        let mut seen = Vec::new();
        assert!(finish(recv, rlines, &mut seen).await, "the receiver exits well");
        assert_eq!(std::fs::read(dir.join("out").join(format!("p2p-{attempt}.bin"))).unwrap(), payload);
        let after = cluster.per_instance(CONNECTIONS).await;
        let (r, s) = (which(&before, &mid), which(&mid, &after));
        assert_eq!((r.len(), s.len()), (1, 1), "one signaling connection each: {before:?} {mid:?} {after:?}");
        if r != s {
            crossed = true;
            break;
        }
        // Same instance this time: one more request moves the balancer's turn on.
        cluster.instances[0].http.get(format!("{url}/healthz")).send().await.unwrap();
    }
    assert!(crossed, "a send and a receive on different instances met");

    // An event stream held by one instance hears of parts reported to another.
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let payload = data((10 * MIB) as usize, 73);
    let created = a.create("events.bin", &payload, 5 * MIB).await;
    let id = created["upload_id"].as_str().unwrap().to_owned();
    let res = b.http.get(b.api(&format!("/uploads/{id}/events"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut events = eventsource_stream::EventStream::new(res.bytes_stream()).boxed();
    let woken_before = b.metric("ferry_bus_messages_received_total").await;
    for p in created["parts"].as_array().unwrap() {
        let body = slice(&payload, p).to_vec();
        let len = body.len();
        let res = a.put_url(p["url"].as_str().unwrap(), body).await;
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        let n = p["part_number"].as_u64().unwrap();
        let reported = Instant::now();
        let res = a.post(&format!("/uploads/{id}/parts/{n}/done"), json!({"etag": etag, "size": len})).await;
        assert_eq!(res.status(), 200);
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), events.next()).await.unwrap().unwrap().unwrap();
            let v: Value = serde_json::from_str(&e.data).unwrap();
            if v["type"] == "part_received" && v["part_number"] == n {
                eprintln!("part {n}: reported to one instance, streamed by another {:?} later", reported.elapsed());
                break;
            }
        }
    }
    assert!(b.metric("ferry_bus_messages_received_total").await > woken_before, "woken through the bus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_of_a_killed_instance_are_reported_left_and_their_ids_freed() {
    let mut cluster = Cluster::start(&[]);
    let urls: Vec<String> = cluster.instances.iter().map(|i| i.url.clone()).collect();
    let mut doomed = Signaling::join(&urls[0], "kill", Role::Worker, Some("w1"), TOKEN).await.unwrap();
    let mut stays = Signaling::join(&urls[1], "kill", Role::Client, Some("c1"), TOKEN).await.unwrap();
    assert_eq!(stays.peers().len(), 1, "w1, connected to another instance, is in the room");
    assert!(
        matches!(doomed.recv(Duration::from_secs(10)).await.unwrap(), Outbound::PeerJoined { peer_id, .. } if peer_id == "c1")
    );
    // A message crosses from instance 1 to instance 0.
    stays
        .send(ferry_core::signal::Inbound::PeerMessage { to: "w1".into(), payload: json!({"hello": 1}) })
        .await
        .unwrap();
    assert!(
        matches!(doomed.recv(Duration::from_secs(10)).await.unwrap(), Outbound::PeerMessage { from, .. } if from == "c1")
    );

    let killed = Instant::now();
    cluster.instances[0].kill9();
    match stays.recv(Duration::from_secs(15)).await.unwrap() {
        Outbound::PeerLeft { peer_id } => assert_eq!(peer_id, "w1"),
        other => panic!("expected peer_left, got {other:?}"),
    }
    let took = killed.elapsed();
    eprintln!("the killed instance's peer was reported left after {took:?}");
    assert!(took < Duration::from_secs(10), "within the documented 10 s: {took:?}");
    let back = Signaling::join(&urls[2], "kill", Role::Worker, Some("w1"), TOKEN).await.unwrap();
    assert_eq!(back.peer_id(), "w1", "its id is free again");
    drop(doomed);
}

/// `kill -9` of the instance holding the receiver's signaling mid-transfer: the data channel is
/// peer to peer, so the file still arrives whole and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_survives_the_death_of_an_instance_it_met_through() {
    let mut cluster = Cluster::start(&[]);
    let url = cluster.url().to_owned();
    let work = tempfile::tempdir().unwrap();
    let payload = data((48 * MIB) as usize, 74);
    let file = write_file(work.path(), "long.bin", &payload);
    let out = work.path().join("out");
    let before = cluster.per_instance(CONNECTIONS).await;
    let recv = ferry(
        &url,
        work.path(),
        &["recv", "--room", "dies", "--out", out.to_str().unwrap(), "--peer-id", "receiver", "--json"],
    );
    let (recv, rlines, mut seen) = run_until(recv, |v| v["type"] == "waiting").await;
    let after = cluster.per_instance(CONNECTIONS).await;
    let held_by = which(&before, &after)[0];
    let send =
        ferry(&url, work.path(), &["send", file.to_str().unwrap(), "--room", "dies", "--to", "receiver", "--json"]);
    let (send, slines, mut sent) =
        run_until(send, |v| v["type"] == "progress" && v["received_chunks"].as_u64() > Some(0)).await;
    cluster.instances[held_by].kill9();
    assert!(finish(send, slines, &mut sent).await, "the sender finished: {:?}", sent.last());
    assert_eq!(result_of(&sent)["sha256"], sha256_hex(&payload));
    assert!(finish(recv, rlines, &mut seen).await, "the receiver finished");
    assert_eq!(std::fs::read(out.join("long.bin")).unwrap(), payload);
}

/// Redis stopped under running instances: uploads and downloads go on, signaling answers
/// `bus_unavailable` at once and /healthz says so; Redis back (empty), rooms work again across
/// instances without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_uploads_go_on_and_signaling_comes_back_by_itself() {
    let mut cluster = Cluster::start(&[]);
    let url = cluster.url().to_owned();
    let urls: Vec<String> = cluster.instances.iter().map(|i| i.url.clone()).collect();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let port = cluster.redis.port;
    cluster.redis.stop();

    for i in &cluster.instances {
        let health: Value = i.http.get(format!("{}/healthz", i.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            (health["status"].as_str(), health["bus"]["status"].as_str()),
            (Some("degraded"), Some("unavailable"))
        );
    }
    let bytes = data((7 * MIB) as usize, 75);
    let file = write_file(work.path(), "outage.bin", &bytes);
    let (ok, lines, err) =
        run_json(ferry(&url, &state, &["put", file.to_str().unwrap(), "--part-size", "5MiB", "--json"])).await;
    assert!(ok, "an upload while the bus is down: {err}");
    assert_eq!(result_of(&lines)["sha256"], sha256_hex(&bytes));
    let asked = Instant::now();
    match Signaling::join(&urls[0], "outage", Role::Peer, Some("a"), TOKEN).await {
        Err(ferry_rtc::signaling::SignalingError::Refused { code, .. }) => assert_eq!(code, "bus_unavailable"),
        other => panic!("expected bus_unavailable, got {:?}", other.map(|s| s.peer_id().to_owned())),
    }
    assert!(asked.elapsed() < Duration::from_secs(5), "answered in {:?}", asked.elapsed());

    cluster.redis = common::redis::RedisServer::start_on(port);
    // Each instance finds Redis again on its own next heartbeat; until then it may still refuse.
    let deadline = Instant::now() + Duration::from_secs(30);
    let join_when_back = |url: String, id: &'static str| async move {
        loop {
            match Signaling::join(&url, "outage", Role::Peer, Some(id), TOKEN).await {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "signaling on {url} did not come back: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut a = join_when_back(urls[0].clone(), "a").await;
    let mut b = join_when_back(urls[1].clone(), "b").await;
    b.send(ferry_core::signal::Inbound::PeerMessage { to: "a".into(), payload: json!({"after": "the outage"}) })
        .await
        .unwrap();
    loop {
        if let Outbound::PeerMessage { from, .. } = a.recv(Duration::from_secs(10)).await.unwrap() {
            assert_eq!(from, "b");
            break;
        }
    }
    let health: Value =
        cluster.instances[2].http.get(format!("{}/healthz", urls[2])).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}
