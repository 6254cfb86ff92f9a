//! TURN relays (`--ice-server turn:USER:PASSWORD@HOST[:PORT]`): an allocation on the relay,
//! made from the peer's own socket, is offered as a relayed candidate; the peer's traffic from
//! that candidate goes to the relay wrapped in TURN, and what the relay forwards is unwrapped
//! and handed to ICE as if it had arrived at the relayed address.
//!
//! [`Relay`] is sans-I/O (turn-client-proto does the protocol: long-term credentials,
//! permissions, channels, refreshes): it takes datagrams and the time, and appends what is to
//! be sent to an outbox. Only [`allocate`] touches the socket, once, while the peer is set up.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::attribute::ErrorCode;
use turn_client_proto::stun::types::message::{Message, MessageClass};
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

use crate::ice_server::IceServer;

type TurnInstant = turn_client_proto::stun::Instant;

/// Datagrams held per peer address while its permission is being installed; ICE retransmits
/// its checks, so what does not fit is only dropped, not lost.
const HELD: usize = 32;

/// Datagrams to send: where to, and the bytes.
pub(crate) type Outbox = Vec<(SocketAddr, Vec<u8>)>;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0} has no address reachable from {1}")]
    Unresolved(String, SocketAddr),
    #[error("{0} refused the allocation (wrong credentials, or no quota)")]
    Refused(String),
    #[error("{0} did not answer within {1:?}")]
    Silent(String, Duration),
    #[error("the socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One allocation on a TURN server.
pub(crate) struct Relay {
    client: TurnClientUdp,
    server: SocketAddr,
    relayed: SocketAddr,
    /// The zero of turn-client-proto's clock.
    epoch: Instant,
    held: HashMap<IpAddr, Vec<(SocketAddr, Vec<u8>)>>,
    /// Peers a channel was asked for: their data then costs 4 bytes of header, not 36.
    channels: HashSet<SocketAddr>,
    /// The server said no to the allocation.
    refused: bool,
}

impl Relay {
    fn new(server: &IceServer, local: SocketAddr, server_addr: SocketAddr, epoch: Instant) -> Option<Relay> {
        let c = server.relay.as_ref()?;
        let config = TurnConfig::new(TurnCredentials::new(&c.username, &c.password));
        let client = TurnClientUdp::allocate(local, server_addr, config);
        Some(Relay {
            client,
            server: server_addr,
            relayed: local,
            epoch,
            held: HashMap::new(),
            channels: HashSet::new(),
            refused: false,
        })
    }

    /// The relay's address for this peer: the relayed candidate, and the source ICE sends from.
    pub(crate) fn relayed(&self) -> SocketAddr {
        self.relayed
    }

    /// The TURN server, the only source of datagrams meant for [`Relay::receive`].
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    fn now(&self, now: Instant) -> TurnInstant {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        TurnInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// Sends `data` to `peer` through the relay, installing a permission first if needed.
    pub(crate) fn send(&mut self, peer: SocketAddr, data: Vec<u8>, now: Instant, out: &mut Outbox) {
        let at = self.now(now);
        if !self.client.have_permission(TransportType::Udp, peer.ip()) {
            let held = self.held.entry(peer.ip()).or_default();
            if held.is_empty() {
                let _ = self.client.create_permission(TransportType::Udp, peer.ip(), at);
            }
            if held.len() < HELD {
                held.push((peer, data));
            }
            self.poll(now, out);
            return;
        }
        if self.channels.insert(peer) {
            let _ = self.client.bind_channel(TransportType::Udp, peer, at);
        }
        match self.client.send_to(TransportType::Udp, peer, data, at) {
            Ok(Some(t)) => {
                let t = t.build();
                out.push((t.to, t.data));
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(%peer, error = ?e, "the relay cannot send"),
        }
        self.poll(now, out);
    }

    /// Takes a datagram from the TURN server: the peer's data and who sent it, or `None` when
    /// it was the relay's own business (answers, refreshes) or not understood.
    pub(crate) fn receive(&mut self, datagram: &[u8], now: Instant, out: &mut Outbox) -> Option<(SocketAddr, Vec<u8>)> {
        let at = self.now(now);
        let transmit = Transmit::new(datagram, TransportType::Udp, self.server, self.client.local_addr());
        let data = match self.client.recv(transmit, at) {
            TurnRecvRet::PeerData(d) => Some((d.peer, d.data().to_vec())),
            TurnRecvRet::Handled | TurnRecvRet::Ignored(_) | TurnRecvRet::PeerIcmp { .. } => None,
        };
        self.poll(now, out);
        data
    }

    /// Runs the relay's timers and events; returns when it next wants [`Relay::poll`], or `None`
    /// once the allocation is gone.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Outbox) -> Option<Instant> {
        let at = self.now(now);
        // Bounded: each round sends or reports something, and then the client waits.
        for _ in 0..64 {
            while let Some(t) = self.client.poll_transmit(at) {
                out.push((t.to, t.data.to_vec()));
            }
            while let Some(event) = self.client.poll_event() {
                self.event(event, now, out);
            }
            match self.client.poll(at) {
                TurnPollRet::WaitUntil(t) if t > at => return Some(now + (t - at)),
                TurnPollRet::WaitUntil(_) => {}
                TurnPollRet::Closed => return None,
                // TCP allocations only; this client asks for UDP.
                TurnPollRet::AllocateTcpSocket { .. } | TurnPollRet::TcpClose { .. } => {}
            }
        }
        Some(now + Duration::from_millis(10))
    }

    fn event(&mut self, event: TurnEvent, now: Instant, out: &mut Outbox) {
        match event {
            TurnEvent::AllocationCreated(_, relayed) => self.relayed = relayed,
            TurnEvent::AllocationCreateFailed(_) => self.refused = true,
            TurnEvent::PermissionCreated(_, ip) => {
                for (peer, data) in self.held.remove(&ip).unwrap_or_default() {
                    self.send(peer, data, now, out);
                }
            }
            TurnEvent::PermissionCreateFailed(_, ip) => {
                tracing::warn!(server = %self.server, peer = %ip, "the relay refused a permission");
                self.held.remove(&ip);
            }
            other => tracing::debug!(server = %self.server, event = ?other, "relay"),
        }
    }

    /// Gives the allocation back, so the relay frees it now rather than at its expiry.
    pub(crate) fn close(&mut self, now: Instant, out: &mut Outbox) {
        let at = self.now(now);
        if self.client.delete(at).is_ok() {
            while let Some(t) = self.client.poll_transmit(at) {
                out.push((t.to, t.data.to_vec()));
            }
        }
    }

    fn allocated(&self) -> bool {
        self.client.relayed_addresses().next().is_some()
    }
}

/// Makes an allocation on `server` from `socket`; the socket is not read by anyone else while
/// this runs (the peer is being set up).
pub(crate) async fn allocate(socket: &UdpSocket, server: &IceServer, wait: Duration) -> Result<Relay, RelayError> {
    let local = socket.local_addr()?;
    let server_addr = server.resolve(local).await.ok_or_else(|| RelayError::Unresolved(server.to_string(), local))?;
    let epoch = Instant::now();
    let mut relay =
        Relay::new(server, local, server_addr, epoch).ok_or_else(|| RelayError::Refused(server.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    let mut unauthorized = 0;
    loop {
        let mut out = Outbox::new();
        let next = relay.poll(Instant::now(), &mut out);
        for (to, datagram) in out {
            socket.send_to(&datagram, to).await?;
        }
        if relay.allocated() {
            return Ok(relay);
        }
        let Some(next) = next.filter(|_| !relay.refused) else { return Err(RelayError::Refused(server.to_string())) };
        let until = deadline.min(next.into());
        match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == server_addr => {
                // A 401 to the request that carried the credentials means they are wrong; the
                // client would only give up once its retransmissions time out.
                if error_code(&buf[..n]) == Some(ErrorCode::UNAUTHORIZED) {
                    unauthorized += 1;
                    if unauthorized > 1 {
                        return Err(RelayError::Refused(server.to_string()));
                    }
                }
                let mut out = Outbox::new();
                relay.receive(&buf[..n], Instant::now(), &mut out);
                for (to, datagram) in out {
                    socket.send_to(&datagram, to).await?;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if until >= deadline => return Err(RelayError::Silent(server.to_string(), wait)),
            Err(_) => {}
        }
    }
}

/// The error code of a STUN error response.
fn error_code(datagram: &[u8]) -> Option<u16> {
    let msg = Message::from_bytes(datagram).ok()?;
    if msg.class() != MessageClass::Error {
        return None;
    }
    msg.attribute::<ErrorCode>().ok().map(|e| e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Allocate error response (0x0113) with ERROR-CODE 401 "Unauthorized".
    fn unauthorized() -> Vec<u8> {
        let mut attr = vec![0x00, 0x09, 0x00, 16, 0, 0, 4, 1];
        attr.extend_from_slice(b"Unauthorized");
        let mut msg = vec![0x01, 0x13, 0x00, attr.len() as u8, 0x21, 0x12, 0xa4, 0x42];
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn error_codes_of_stun_errors_and_nothing_for_the_rest() {
        let msg = unauthorized();
        assert_eq!(error_code(&msg), Some(401));
        let mut success = msg.clone();
        success[1] = 0x03; // an Allocate success response carries no error
        assert_eq!(error_code(&success), None);
        for cut in 0..msg.len() {
            assert_eq!(error_code(&msg[..cut]), None, "truncated at {cut}");
        }
        assert_eq!(error_code(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]), None, "channel data");
    }

    #[test]
    fn hostile_datagrams_from_the_relay_are_dropped() {
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let turn = IceServer::turn("127.0.0.1", 3478, "u", "p");
        let now = Instant::now();
        let mut relay = Relay::new(&turn, local, server, now).unwrap();
        let mut out = Outbox::new();
        relay.poll(now, &mut out);
        assert_eq!(out.len(), 1, "the first Allocate goes out");
        assert_eq!(out[0].0, server);
        // Channel data for a channel never bound, with lengths that lie; garbage; empty; and a
        // STUN answer to a request never made: none is peer data, and none panics.
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
            vec![0x40, 0x00, 0xff, 0xff, 1],
            vec![0x7f, 0xff, 0x00, 0x00],
            unauthorized(),
            (0..=255).collect(),
        ];
        let valid = unauthorized();
        cases.extend((0..valid.len()).map(|cut| valid[..cut].to_vec()));
        for (i, datagram) in cases.iter().enumerate() {
            assert!(relay.receive(datagram, now, &mut out).is_none(), "case {i}");
        }
        assert!(!relay.allocated());
    }
}
