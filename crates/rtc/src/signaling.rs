//! A client of `ferry serve`'s signaling WebSocket (`/v1/signal`): join a room, find a peer,
//! exchange session descriptions ([`ferry_core::signal`] has the protocol).

use std::time::Duration;

use ferry_core::signal::{Inbound, Outbound, PeerInfo, Role};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::peer::{Description, IceCandidate};

#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error("cannot reach the signaling server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the signaling server refused: {message} ({code})")]
    Refused { code: String, message: String },
    #[error("the signaling connection closed")]
    Closed,
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
    #[error("the signaling server sent something unexpected: {0}")]
    Protocol(String),
}

impl SignalingError {
    /// Whether trying again soon may succeed: the server is away, its bus is, or this peer's id
    /// is still held by its old connection.
    fn is_passing(&self) -> bool {
        match self {
            SignalingError::Connect { .. } | SignalingError::Closed | SignalingError::Timeout(_) => true,
            SignalingError::Refused { code, .. } => code == "peer_id_taken" || code == "bus_unavailable",
            SignalingError::Protocol(_) => false,
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A joined signaling connection.
pub struct Signaling {
    socket: Socket,
    peer_id: String,
    peers: Vec<PeerInfo>,
    /// Where and as what it joined, to join again.
    server: String,
    room: String,
    role: Role,
    token: String,
}

/// How long [`Signaling::rejoin`] keeps trying: long enough for the peers of a dead instance to be
/// reaped (8 s) and for a broker or a server to come back from a restart.
pub const REJOIN_WAIT: Duration = Duration::from_secs(60);

/// The WebSocket URL of a server's signaling route, from its http(s) URL.
pub fn signal_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let ws = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    format!("{ws}/v1/signal")
}

impl Signaling {
    /// Connects to `server` (its http(s) URL) and joins `room`.
    pub async fn join(
        server: &str,
        room: &str,
        role: Role,
        peer_id: Option<&str>,
        token: &str,
    ) -> Result<Signaling, SignalingError> {
        let url = signal_url(server);
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| SignalingError::Connect { url: url.clone(), source: Box::new(e) })?;
        let mut s = Signaling {
            socket,
            peer_id: String::new(),
            peers: Vec::new(),
            server: server.to_owned(),
            room: room.to_owned(),
            role,
            token: token.to_owned(),
        };
        s.send(Inbound::Join {
            room: room.to_owned(),
            role,
            peer_id: peer_id.map(str::to_owned),
            token: Some(token.to_owned()),
        })
        .await?;
        match s.recv(Duration::from_secs(10)).await? {
            Outbound::Joined { peer_id, peers, .. } => {
                s.peer_id = peer_id;
                s.peers = peers;
                Ok(s)
            }
            other => Err(SignalingError::Protocol(format!("expected joined, got {other:?}"))),
        }
    }

    /// Joins again, through the same URL (a load balancer may pick another instance), as the same
    /// peer id, after the connection dropped. Retries for up to [`REJOIN_WAIT`] while the server
    /// cannot be reached, its bus is unavailable, or the id is still held (by this peer's old
    /// connection on an instance that died, until that instance's peers are reaped).
    pub async fn rejoin(&mut self) -> Result<(), SignalingError> {
        let deadline = tokio::time::Instant::now() + REJOIN_WAIT;
        let mut pause = Duration::from_millis(250);
        loop {
            match Signaling::join(&self.server, &self.room, self.role, Some(&self.peer_id), &self.token).await {
                Ok(s) => {
                    tracing::info!(peer_id = %self.peer_id, "joined the room again");
                    *self = s;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() + pause < deadline && e.is_passing() => {
                    tracing::debug!(error = %e, "joining again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The peers that were in the room when this one joined.
    pub fn peers(&self) -> &[PeerInfo] {
        &self.peers
    }

    pub async fn send(&mut self, message: Inbound) -> Result<(), SignalingError> {
        let text = serde_json::to_string(&message).map_err(|e| SignalingError::Protocol(e.to_string()))?;
        self.socket.send(Message::Text(text.into())).await.map_err(|_| SignalingError::Closed)
    }

    /// The next message within `wait`; an `error` from the server is a [`SignalingError::Refused`].
    pub async fn recv(&mut self, wait: Duration) -> Result<Outbound, SignalingError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| SignalingError::Timeout(wait))?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let out: Outbound =
                        serde_json::from_str(&t).map_err(|e| SignalingError::Protocol(e.to_string()))?;
                    if let Outbound::Error { code, message } = out {
                        return Err(SignalingError::Refused { code, message });
                    }
                    return Ok(out);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    return Err(SignalingError::Protocol("a binary message".into()));
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(SignalingError::Closed),
            }
        }
    }

    /// Sends a session description to `to`.
    pub async fn send_description(&mut self, to: &str, d: &Description) -> Result<(), SignalingError> {
        let data = serde_json::to_value(d).map_err(|e| SignalingError::Protocol(e.to_string()))?;
        self.send(Inbound::Signal { to: to.to_owned(), data }).await
    }

    /// Trickles this side's candidates to `to`, one `signal` each, as
    /// `{"type":"candidate","candidate":…,"sdpMid":…,"sdpMLineIndex":…}`.
    pub async fn send_candidates(&mut self, to: &str, candidates: &[IceCandidate]) -> Result<(), SignalingError> {
        for c in candidates {
            let mut data = serde_json::to_value(c).map_err(|e| SignalingError::Protocol(e.to_string()))?;
            data["type"] = "candidate".into();
            self.send(Inbound::Signal { to: to.to_owned(), data }).await?;
        }
        Ok(())
    }

    /// Waits for a session description of `kind` ("offer" or "answer"), from `from` if given;
    /// returns who sent it. Other messages are passed to `other`.
    pub async fn wait_description(
        &mut self,
        kind: &str,
        from: Option<&str>,
        wait: Duration,
        mut other: impl FnMut(&Outbound),
    ) -> Result<(String, Description), SignalingError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let out = self.recv(left).await?;
            if let Outbound::Signal { from: sender, data } = &out
                && from.is_none_or(|f| f == sender)
                && data.get("type").and_then(Value::as_str) == Some(kind)
                && let Ok(d) = serde_json::from_value::<Description>(data.clone())
            {
                return Ok((sender.clone(), d));
            }
            other(&out);
        }
    }

    /// A peer to send to: `wanted` if given (waiting for it to join), else the first other peer.
    pub async fn find_peer(&mut self, wanted: Option<&str>, wait: Duration) -> Result<String, SignalingError> {
        if let Some(p) = self.peers.iter().find(|p| wanted.is_none_or(|w| w == p.peer_id)) {
            return Ok(p.peer_id.clone());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Outbound::PeerJoined { peer_id, .. } = self.recv(left).await?
                && wanted.is_none_or(|w| w == peer_id)
            {
                return Ok(peer_id);
            }
        }
    }
}

/// The ICE candidate a `signal` message carries, if it is one: `{"type":"candidate",…}` with the
/// candidate's fields inline, or with them in a `candidate` object (both shapes are common).
pub fn candidate_in(data: &Value) -> Option<IceCandidate> {
    if data.get("type").and_then(Value::as_str) != Some("candidate") {
        return None;
    }
    match data.get("candidate") {
        Some(Value::Object(_)) => data.get("candidate").and_then(|c| serde_json::from_value(c.clone()).ok()),
        _ => serde_json::from_value(data.clone()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_in_signal_data() {
        let line = "candidate:1 1 udp 2130706175 127.0.0.1 5000 typ host";
        let inline = serde_json::json!({"type": "candidate", "candidate": line, "sdpMid": "0", "sdpMLineIndex": 0});
        let nested = serde_json::json!({"type": "candidate", "candidate": {"candidate": line, "sdpMid": "0"}});
        assert_eq!(candidate_in(&inline).map(|c| (c.candidate, c.sdp_m_line_index)), Some((line.to_owned(), Some(0))));
        assert_eq!(candidate_in(&nested).map(|c| c.sdp_mid), Some(Some("0".to_owned())));
        assert_eq!(
            candidate_in(&serde_json::json!({"type": "candidate", "candidate": ""})).map(|c| c.candidate),
            Some(String::new())
        );
        assert!(candidate_in(&serde_json::json!({"type": "offer", "sdp": "v=0"})).is_none());
        assert!(candidate_in(&serde_json::json!({"type": "candidate", "candidate": 7})).is_none());
        assert!(candidate_in(&serde_json::json!(["candidate"])).is_none());
    }

    #[test]
    fn signaling_urls() {
        assert_eq!(signal_url("http://127.0.0.1:7070"), "ws://127.0.0.1:7070/v1/signal");
        assert_eq!(signal_url("https://ferry.example/"), "wss://ferry.example/v1/signal");
    }
}
