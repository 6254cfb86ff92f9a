//! The Redis bus against a real `redis-server` on loopback: the suite every bus must pass, with
//! its peers spread over three instances; an instance that stops beating has its peers reaped;
//! Redis restarted under running instances.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_bus::conformance::{Instance, suite};
use ferry_bus::{BusError, BusMetrics};
use ferry_core::signal::{Outbound, Role};
use ferry_redis::RedisBus;
use support::RedisServer;

async fn instance(url: &str) -> (Arc<RedisBus>, Instance) {
    let (bus, inbox) = RedisBus::connect(url, 3, BusMetrics::default()).await.unwrap();
    (Arc::clone(&bus), Instance { bus, inbox })
}

async fn next(i: &mut Instance) -> (u64, Outbound) {
    tokio::time::timeout(Duration::from_secs(15), i.inbox.deliveries.recv()).await.expect("a delivery").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_conforms_across_three_instances() {
    let redis = RedisServer::start();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&redis.url()).await.1);
    }
    suite(instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_of_an_instance_that_stops_are_reported_left_and_their_ids_freed() {
    let redis = RedisServer::start();
    let (_a, mut a) = instance(&redis.url()).await;
    let (b_bus, mut b) = instance(&redis.url()).await;
    a.bus.join(1, "r", Role::Peer, "stays").await.unwrap();
    next(&mut a).await;
    b.bus.join(1, "r", Role::Worker, "goes").await.unwrap();
    next(&mut b).await;
    assert_eq!(next(&mut a).await, (1, Outbound::PeerJoined { peer_id: "goes".into(), role: Role::Worker }));
    // The instance vanishes without a word (its heartbeat stops with it).
    let stopped = Instant::now();
    drop((b, b_bus));
    assert_eq!(next(&mut a).await, (1, Outbound::PeerLeft { peer_id: "goes".into() }));
    let took = stopped.elapsed();
    assert!(took <= ferry_redis::ALIVE_TTL + 2 * ferry_redis::HEARTBEAT, "reported after {took:?}");
    let (_c, mut c) = instance(&redis.url()).await;
    c.bus.join(1, "r", Role::Worker, "goes").await.unwrap();
    assert!(matches!(next(&mut c).await, (1, Outbound::Joined { .. })), "the id is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_calls_fail_at_once_and_with_it_back_the_rooms_are_whole_again() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (_a, mut a) = instance(&redis.url()).await;
    let (_b, mut b) = instance(&redis.url()).await;
    a.bus.join(1, "r", Role::Peer, "a").await.unwrap();
    next(&mut a).await;
    b.bus.join(2, "r", Role::Peer, "b").await.unwrap();
    next(&mut b).await;
    next(&mut a).await;

    redis.stop();
    let asked = Instant::now();
    let m = Outbound::Signal { from: "a".into(), data: serde_json::json!(1) };
    let err = a.bus.send(1, "r", "a", "b", &m).await.unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(matches!(err.outbound(), Outbound::Error { code, .. } if code == "bus_unavailable"));
    assert!(asked.elapsed() < Duration::from_secs(10), "answered in {:?}", asked.elapsed());
    assert!(a.bus.check().await.is_err());

    // Redis comes back empty: the instances reconnect, resubscribe and put their peers back.
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if a.bus.send(1, "r", "a", "b", &m).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "signaling did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let (conn, got) = next(&mut b).await;
        if got == m {
            assert_eq!(conn, 2);
            break;
        }
    }
}
