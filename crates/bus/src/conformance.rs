//! The behaviour every [`Bus`] must have, written against the trait so each implementation runs
//! the same suite: the in-process bus here, the Redis bus (in `ferry-redis`) against a real Redis
//! with its peers spread over several instances. [`suite`] panics at the first thing a bus gets
//! wrong.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ferry_core::signal::{Delivery, Outbound, PeerInfo, Refusal, Role};
use serde_json::json;

use crate::{Bus, BusError, Inbox};

/// One instance on the bus, as a server holds it.
pub struct Instance {
    pub bus: Arc<dyn Bus>,
    pub inbox: Inbox,
}

async fn next(i: &mut Instance) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), i.inbox.deliveries.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("the inbox is open")
}

async fn quiet(i: &mut Instance) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), i.inbox.deliveries.recv()).await {
        panic!("nothing more was due, got {d:?}");
    }
}

fn refused(r: Result<(), BusError>) -> Refusal {
    match r {
        Err(BusError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs every check on `instances` (built with rooms of at most 3 peers, on an empty bus). With
/// more than one, peer `a` is on the first and `b` on the second, so every rule is checked across
/// instances.
pub async fn suite(mut instances: Vec<Instance>) {
    assert!(!instances.is_empty());
    let n = instances.len();
    let (ia, ib) = (0, 1 % n);
    let room = format!("conformance-{}", instances[0].bus.instance());

    // Joining: the joiner hears `joined` with who is there; they hear `peer_joined`.
    instances[ia].bus.join(1, &room, Role::Worker, "a").await.unwrap();
    assert_eq!(
        next(&mut instances[ia]).await,
        (1, Outbound::Joined { room: room.clone(), peer_id: "a".into(), peers: vec![] })
    );
    instances[ib].bus.join(2, &room, Role::Client, "b").await.unwrap();
    assert_eq!(
        next(&mut instances[ib]).await,
        (
            2,
            Outbound::Joined {
                room: room.clone(),
                peer_id: "b".into(),
                peers: vec![PeerInfo { peer_id: "a".into(), role: Role::Worker }]
            }
        )
    );
    assert_eq!(next(&mut instances[ia]).await, (1, Outbound::PeerJoined { peer_id: "b".into(), role: Role::Client }));

    // An id is one peer's in a room, whatever instance asks.
    let last = n - 1;
    assert_eq!(refused(instances[last].bus.join(3, &room, Role::Peer, "a").await), Refusal::Taken("a".into()));
    instances[last].bus.join(3, &room, Role::Peer, "c").await.unwrap();
    assert!(matches!(next(&mut instances[last]).await, (3, Outbound::Joined { peers, .. }) if peers.len() == 2));
    let mut told = vec![next(&mut instances[ia]).await];
    if ib != ia {
        told.push(next(&mut instances[ib]).await);
    } else {
        told.push(next(&mut instances[ia]).await);
    }
    told.sort_by_key(|(c, _)| *c);
    assert_eq!(
        told,
        vec![
            (1, Outbound::PeerJoined { peer_id: "c".into(), role: Role::Peer }),
            (2, Outbound::PeerJoined { peer_id: "c".into(), role: Role::Peer }),
        ]
    );
    assert_eq!(refused(instances[ia].bus.join(4, &room, Role::Peer, "d").await), Refusal::Full);
    for i in &mut instances {
        quiet(i).await;
    }

    // Messages reach one peer, from whichever instance, in the order sent.
    for k in 0..50 {
        let m = Outbound::Signal { from: "a".into(), data: json!({ "k": k }) };
        instances[ia].bus.send(1, &room, "a", "b", &m).await.unwrap();
    }
    for k in 0..50 {
        assert_eq!(next(&mut instances[ib]).await, (2, Outbound::Signal { from: "a".into(), data: json!({ "k": k }) }));
    }
    let m = Outbound::PeerMessage { from: "b".into(), payload: json!({"app_message_type": "job_request"}) };
    instances[ib].bus.send(2, &room, "b", "a", &m).await.unwrap();
    assert_eq!(next(&mut instances[ia]).await, (1, m.clone()));
    assert_eq!(refused(instances[ia].bus.send(1, &room, "a", "zz", &m).await), Refusal::NotFound("zz".into()));
    assert_eq!(refused(instances[ia].bus.send(1, &room, "a", "a", &m).await), Refusal::ToSelf);
    assert_eq!(refused(instances[ia].bus.send(9, &room, "a", "b", &m).await), Refusal::NotJoined, "conn 9 is not a");

    // Rooms are apart.
    let other = format!("{room}-other");
    instances[ib].bus.join(5, &other, Role::Peer, "e").await.unwrap();
    assert!(matches!(next(&mut instances[ib]).await, (5, Outbound::Joined { peers, .. }) if peers.is_empty()));
    assert_eq!(refused(instances[ib].bus.send(5, &other, "e", "a", &m).await), Refusal::NotFound("a".into()));

    // Leaving is announced, frees the id, and twice is nothing.
    instances[ib].bus.leave(2, &room, "b").await.unwrap();
    let mut told = vec![next(&mut instances[ia]).await];
    told.push(next(&mut instances[last]).await);
    told.sort_by_key(|(c, _)| *c);
    assert_eq!(
        told,
        vec![(1, Outbound::PeerLeft { peer_id: "b".into() }), (3, Outbound::PeerLeft { peer_id: "b".into() })]
    );
    instances[ib].bus.leave(2, &room, "b").await.unwrap();
    instances[ia].bus.join(6, &room, Role::Peer, "b").await.unwrap();
    assert!(matches!(next(&mut instances[ia]).await, (6, Outbound::Joined { .. })));
    for c in [(ia, 1, "a"), (last, 3, "c"), (ia, 6, "b"), (ib, 5, "e")] {
        instances[c.0].bus.leave(c.1, if c.2 == "e" { &other } else { &room }, c.2).await.unwrap();
    }
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), instances[ia].inbox.deliveries.recv()).await
    {}

    // A wake-up from one instance reaches the others.
    if n > 1 {
        let mut wakes = instances[0].bus.wakes();
        instances[1].bus.wake("u-123", None).await.unwrap();
        instances[1].bus.wake("u-124", Some(r#"[{"id":1,"type":"cancelled"}]"#)).await.unwrap();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), wakes.recv()).await.expect("a wake-up within 5 s").unwrap()
        };
        assert_eq!(next().await, crate::Wake { upload_id: "u-123".into(), news: None });
        let news = next().await;
        assert_eq!(
            (news.upload_id.as_str(), news.news.as_deref()),
            ("u-124", Some(r#"[{"id":1,"type":"cancelled"}]"#))
        );
    }
    // A lease is one instance's until it is released or lapses.
    let (first, second) = (&instances[0].bus, &instances[n - 1].bus);
    let lease = format!("{room}-lease");
    let long = Duration::from_secs(30);
    assert!(first.try_lease(&lease, long).await.unwrap());
    assert!(!first.try_lease(&lease, long).await.unwrap(), "held");
    assert!(!second.try_lease(&lease, long).await.unwrap(), "held");
    if n > 1 {
        second.release(&lease).await.unwrap();
        assert!(!second.try_lease(&lease, long).await.unwrap(), "only its holder gives it back");
    }
    first.release(&lease).await.unwrap();
    assert!(second.try_lease(&lease, Duration::from_millis(300)).await.unwrap(), "released");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(first.try_lease(&lease, long).await.unwrap(), "lapsed");
    first.release(&lease).await.unwrap();

    instances[0].bus.check().await.unwrap();
}
