//! `/v1/signal` against a real `ferry serve` with real WebSocket clients: joining with the
//! server's token or a room's own, relaying signals and peer messages within a room only, peers
//! that leave or vanish, and the limits on size and rate.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(srv: &TestServer) -> Ws {
    let url = format!("{}/v1/signal", srv.url.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message; `None` when the server closed the socket.
async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no message in 10 s") {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

async fn join(srv: &TestServer, room: &str, id: &str, token: &str) -> (Ws, Value) {
    let mut ws = connect(srv).await;
    send(&mut ws, json!({"type": "join", "room": room, "role": "peer", "peer_id": id, "token": token})).await;
    let joined = recv(&mut ws).await.unwrap();
    (ws, joined)
}

#[tokio::test]
async fn peers_in_a_room_find_each_other_and_talk() {
    let srv = TestServer::start(&[]);
    let (mut a, joined) = join(&srv, "lab", "alice", TOKEN).await;
    assert_eq!(joined, json!({"type": "joined", "room": "lab", "peer_id": "alice", "peers": []}));
    let (mut b, joined) = join(&srv, "lab", "bob", TOKEN).await;
    assert_eq!(joined["peers"], json!([{"peer_id": "alice", "role": "peer"}]));
    assert_eq!(recv(&mut a).await.unwrap(), json!({"type": "peer_joined", "peer_id": "bob", "role": "peer"}));

    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    send(&mut a, json!({"type": "signal", "to": "bob", "data": offer})).await;
    assert_eq!(recv(&mut b).await.unwrap(), json!({"type": "signal", "from": "alice", "data": offer}));
    let job = json!({"app_message_type": "job_request", "dataset": {"type": "s3"}});
    send(&mut b, json!({"type": "peer_message", "to": "alice", "payload": job})).await;
    assert_eq!(recv(&mut a).await.unwrap(), json!({"type": "peer_message", "from": "bob", "payload": job}));

    // A peer that drops its connection without a word is announced as gone.
    drop(b);
    assert_eq!(recv(&mut a).await.unwrap(), json!({"type": "peer_left", "peer_id": "bob"}));
    send(&mut a, json!({"type": "signal", "to": "bob", "data": {}})).await;
    assert_eq!(recv(&mut a).await.unwrap()["code"], "peer_not_found");
}

#[tokio::test]
async fn rooms_cannot_see_each_other_and_room_tokens_open_only_their_room() {
    let srv = TestServer::start(&["--room-token", "red=red-secret", "--room-token", "blue=blue-secret"]);
    let (mut red1, j) = join(&srv, "red", "r1", "red-secret").await;
    assert_eq!(j["type"], "joined");
    let (mut blue1, j) = join(&srv, "blue", "b1", "blue-secret").await;
    assert_eq!(j["type"], "joined");
    assert_eq!(j["peers"], json!([]), "the blue room does not list red's peers");
    // Another room's token, a wrong token, no token.
    let (_, j) = join(&srv, "red", "intruder", "blue-secret").await;
    assert_eq!(j["code"], "unauthorized");
    let (_, j) = join(&srv, "red", "intruder", "nope").await;
    assert_eq!(j["code"], "unauthorized");
    // The server's own token opens any room.
    let (mut red2, j) = join(&srv, "red", "r2", TOKEN).await;
    assert_eq!(j["peers"], json!([{"peer_id": "r1", "role": "peer"}]));
    assert_eq!(recv(&mut red1).await.unwrap()["peer_id"], "r2");

    // Blue cannot reach red, even by name.
    send(&mut blue1, json!({"type": "signal", "to": "r1", "data": "hello"})).await;
    assert_eq!(recv(&mut blue1).await.unwrap()["code"], "peer_not_found");
    send(&mut red2, json!({"type": "peer_message", "to": "r1", "payload": 42})).await;
    assert_eq!(recv(&mut red1).await.unwrap()["payload"], 42);
    // Nothing leaked to blue meanwhile.
    send(&mut blue1, json!({"type": "leave"})).await;
    send(&mut blue1, json!({"type": "signal", "to": "b1", "data": 1})).await;
    assert_eq!(recv(&mut blue1).await.unwrap()["code"], "not_joined");
}

#[tokio::test]
async fn bad_messages_get_errors_and_floods_or_oversized_messages_close_the_socket() {
    let srv = TestServer::start(&["--signal-rate", "20"]);
    let (mut a, _) = join(&srv, "lab", "a", TOKEN).await;
    for bad in ["not json", r#"{"type":"teleport"}"#, r#"{"type":"signal"}"#] {
        a.send(Message::Text(bad.into())).await.unwrap();
        let err = recv(&mut a).await.unwrap();
        assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some("invalid_message")), "{bad}");
    }
    a.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(recv(&mut a).await.unwrap()["code"], "invalid_message");
    send(&mut a, json!({"type": "join", "room": "other", "role": "peer", "token": TOKEN})).await;
    assert_eq!(recv(&mut a).await.unwrap()["code"], "already_joined");

    // More than 20 messages in a second closes the connection, and the room hears it left.
    let (mut watcher, _) = join(&srv, "lab", "w", TOKEN).await;
    assert_eq!(recv(&mut a).await.unwrap()["type"], "peer_joined");
    for _ in 0..40 {
        if a.send(Message::Text(json!({"type": "signal", "to": "nobody", "data": 0}).to_string().into())).await.is_err()
        {
            break;
        }
    }
    let mut closed = false;
    for _ in 0..60 {
        match recv(&mut a).await {
            Some(v) => assert_eq!(v["code"], "peer_not_found"),
            None => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the flood closed the socket");
    assert_eq!(recv(&mut watcher).await.unwrap(), json!({"type": "peer_left", "peer_id": "a"}));

    // A message over 64 KiB closes it too.
    let (mut big, _) = join(&srv, "lab", "big", TOKEN).await;
    let huge = json!({"type": "signal", "to": "w", "data": "x".repeat(70 * 1024)});
    let _ = big.send(Message::Text(huge.to_string().into())).await;
    assert!(recv(&mut big).await.is_none());
    assert_eq!(recv(&mut watcher).await.unwrap()["type"], "peer_joined");
    assert_eq!(recv(&mut watcher).await.unwrap(), json!({"type": "peer_left", "peer_id": "big"}));
}

/// Peers joining one room at the same moment: each must hear `joined` (the answer to its own
/// `join`) before any `peer_joined` about the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_comes_before_news_of_peers_joining_at_the_same_moment() {
    let srv = TestServer::start(&[]);
    for round in 0..30 {
        let room = format!("rush-{round}");
        let mut sockets = Vec::new();
        for _ in 0..8 {
            sockets.push(connect(&srv).await);
        }
        let joins = sockets.iter_mut().enumerate().map(|(i, ws)| {
            let msg = json!({"type": "join", "room": room, "role": "peer", "peer_id": format!("p{i}"), "token": TOKEN});
            send(ws, msg)
        });
        futures_util::future::join_all(joins).await;
        for (i, ws) in sockets.iter_mut().enumerate() {
            let first = recv(ws).await.unwrap();
            assert_eq!(first["type"], "joined", "round {round}, peer p{i} first heard {first}");
        }
    }
}
