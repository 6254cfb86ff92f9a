//! A WebRTC peer: str0m's sans-I/O `Rtc` driven by one tokio task over one UDP socket.
//!
//! The task owns the `Rtc` and the socket; everything else talks to it through channels.
//! [`Peer::offer`] / [`Peer::answer`] do the SDP exchange (the caller carries the SDP over
//! signaling or HTTP); once connected, data channels appear as [`DataChannel`]s: `send` waits
//! while the channel's buffered amount is above the high-water mark (backpressure, so a sender's
//! memory stays bounded whatever the file size), `recv` yields messages in order.
//!
//! The socket is bound to an explicit address (127.0.0.1 by default), which is also the one host
//! candidate offered unless a public address is given to announce instead (a wildcard bind
//! needs one). STUN and TURN servers are asked from the same socket; a TURN allocation's traffic
//! is told apart by its source (the relay server) and its destination (the relayed address).
//! Or every peer shares one socket, a [`UdpMux`] (one port for a firewall to open).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};

use crate::ice_server::IceServer;
use crate::mux::{Port, UdpMux};
use crate::relay::{Outbox, Relay};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Above this many bytes buffered in a channel, `send` waits.
pub const HIGH_WATER: usize = 1024 * 1024;
/// `send` resumes once the buffered amount falls below this.
pub const LOW_WATER: usize = 512 * 1024;
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Datagrams taken from the socket in one go.
const BATCH: usize = 64;
/// Messages a channel holds for a reader that has not taken them yet.
const INBOX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the UDP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebRTC: {0}")]
    Rtc(#[from] RtcError),
    #[error("the SDP is not usable: {0}")]
    Sdp(String),
    #[error("the peer connection is closed")]
    Closed,
    #[error("the message of {size} bytes is larger than the channel allows")]
    TooLarge { size: usize },
    #[error("relay-only, and no TURN relay gave an allocation: {0}")]
    NoRelay(String),
    #[error("{0}")]
    Config(String),
    #[error("the WebRTC port serves {0} peers already; try again later")]
    Busy(usize),
}

/// How to set a peer up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The address to bind and offer as the host candidate.
    pub bind: IpAddr,
    /// STUN servers asked for a server-reflexive candidate (a NAT's outside address), and TURN
    /// relays asked for a relayed one.
    pub ice_servers: Vec<IceServer>,
    /// Offer relayed candidates only (a browser's `iceTransportPolicy: "relay"`): the remote
    /// never learns this side's own addresses.
    pub relay_only: bool,
    /// The address to offer instead of `bind`'s: a public IP in front of a 1:1 NAT.
    pub public_ip: Option<IpAddr>,
    /// Share this socket with other peers instead of binding one (`bind` and `public_ip` are
    /// then the mux's; STUN and TURN are not asked).
    pub mux: Option<Arc<UdpMux>>,
}

impl Default for PeerConfig {
    fn default() -> PeerConfig {
        PeerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ice_servers: Vec::new(),
            relay_only: false,
            public_ip: None,
            mux: None,
        }
    }
}

/// How long a STUN or TURN server has to answer before the peer goes on without it.
const SERVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A browser-shaped ICE candidate (`RTCIceCandidateInit`), as peers trickle them over signaling:
/// `{"candidate":"candidate:…","sdpMid":"0","sdpMLineIndex":0}`. An empty `candidate` marks the
/// end of a peer's candidates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
}

/// A browser-shaped session description, `{"type":"offer","sdp":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Description {
    #[serde(rename = "type")]
    pub kind: String,
    pub sdp: String,
}

enum Command {
    Open { label: String, reply: oneshot::Sender<DataChannel> },
    Write { id: ChannelId, binary: bool, data: Vec<u8>, reply: oneshot::Sender<Result<(), PeerError>> },
    Answer { pending: SdpPendingOffer, answer: SdpAnswer, reply: oneshot::Sender<Result<(), PeerError>> },
    RemoteCandidate(Candidate),
    Close,
}

/// One message received on a data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub binary: bool,
    pub data: Vec<u8>,
}

/// An open data channel.
pub struct DataChannel {
    id: ChannelId,
    label: String,
    commands: mpsc::Sender<Command>,
    inbox: mpsc::Receiver<Message>,
}

impl DataChannel {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends one message, waiting while the channel is above its high-water mark.
    pub async fn send(&self, binary: bool, data: Vec<u8>) -> Result<(), PeerError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Write { id: self.id, binary, data, reply }).await.map_err(|_| PeerError::Closed)?;
        answer.await.map_err(|_| PeerError::Closed)?
    }

    /// The next message; `None` once the channel or the connection is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.inbox.recv().await
    }

    /// A message already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.inbox.try_recv().ok()
    }

    /// A handle that sends on this channel (the receiving side stays here).
    pub fn sender(&self) -> ChannelSender {
        ChannelSender { id: self.id, commands: self.commands.clone() }
    }
}

/// Sends on a channel from another task.
#[derive(Clone)]
pub struct ChannelSender {
    id: ChannelId,
    commands: mpsc::Sender<Command>,
}

impl ChannelSender {
    pub async fn send(&self, binary: bool, data: Vec<u8>) -> Result<(), PeerError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Write { id: self.id, binary, data, reply }).await.map_err(|_| PeerError::Closed)?;
        answer.await.map_err(|_| PeerError::Closed)?
    }
}

/// What the connection reports.
pub enum PeerEvent {
    Connected,
    /// The remote opened a channel.
    Channel(DataChannel),
    Disconnected,
}

/// A peer connection; dropping it (or [`Peer::close`]) ends it.
pub struct Peer {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<PeerEvent>,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    candidates: Vec<IceCandidate>,
}

/// Adds a peer's trickled candidates to its connection from another task.
#[derive(Clone)]
pub struct RemoteCandidates {
    commands: mpsc::Sender<Command>,
}

impl RemoteCandidates {
    /// Adds one; an end-of-candidates marker (empty) is accepted and changes nothing. A
    /// candidate this side cannot use (an mDNS `.local` name, TCP) is refused with the reason.
    pub async fn add(&self, candidate: &IceCandidate) -> Result<(), PeerError> {
        let line = candidate.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(());
        }
        let c = Candidate::from_sdp_string(line).map_err(|e| PeerError::Sdp(format!("candidate {line:?}: {e}")))?;
        self.commands.send(Command::RemoteCandidate(c)).await.map_err(|_| PeerError::Closed)
    }
}

impl Peer {
    /// Starts a peer that offers, with data channels labelled `channels` (opened once connected;
    /// they arrive as [`PeerEvent::Channel`] like remote ones). Returns the offer to send.
    pub async fn offer(config: &PeerConfig, channels: &[&str]) -> Result<(Peer, Description), PeerError> {
        let (mut rtc, port, local, relays) = Self::setup(config).await?;
        let mut change = rtc.sdp_api();
        for label in channels {
            change.add_channel((*label).to_owned());
        }
        let (offer, pending) = change.apply().ok_or_else(|| PeerError::Sdp("nothing to offer".into()))?;
        let description = Description { kind: "offer".into(), sdp: offer.to_sdp_string() };
        let mut peer = Self::spawn(rtc, port, local, relays, &description);
        peer.pending = Some(pending);
        Ok((peer, description))
    }

    /// Starts a peer that answers `offer`. Returns the answer to send back.
    pub async fn answer(config: &PeerConfig, offer: &Description) -> Result<(Peer, Description), PeerError> {
        if offer.kind != "offer" {
            return Err(PeerError::Sdp(format!("expected an offer, not {:?}", offer.kind)));
        }
        let offer = SdpOffer::from_sdp_string(&offer.sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let (mut rtc, port, local, relays) = Self::setup(config).await?;
        let answer = rtc.sdp_api().accept_offer(offer)?;
        let description = Description { kind: "answer".into(), sdp: answer.to_sdp_string() };
        Ok((Self::spawn(rtc, port, local, relays, &description), description))
    }

    /// Completes an offer with the remote's answer.
    pub async fn accept_answer(&mut self, answer: &Description) -> Result<(), PeerError> {
        if answer.kind != "answer" {
            return Err(PeerError::Sdp(format!("expected an answer, not {:?}", answer.kind)));
        }
        let answer = SdpAnswer::from_sdp_string(&answer.sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or_else(|| PeerError::Sdp("this peer made no offer".into()))?;
        let (reply, done) = oneshot::channel();
        self.commands.send(Command::Answer { pending, answer, reply }).await.map_err(|_| PeerError::Closed)?;
        done.await.map_err(|_| PeerError::Closed)?
    }

    /// Opens a data channel on a connected peer.
    pub async fn open(&self, label: &str) -> Result<DataChannel, PeerError> {
        let (reply, opened) = oneshot::channel();
        self.commands.send(Command::Open { label: label.to_owned(), reply }).await.map_err(|_| PeerError::Closed)?;
        opened.await.map_err(|_| PeerError::Closed)
    }

    /// The next connection event; `None` once the peer has stopped.
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This side's candidates, to trickle to a peer that wants them apart from the SDP (which
    /// carries them too).
    pub fn local_candidates(&self) -> &[IceCandidate] {
        &self.candidates
    }

    /// A handle that adds the remote's trickled candidates.
    pub fn remote_candidates(&self) -> RemoteCandidates {
        RemoteCandidates { commands: self.commands.clone() }
    }

    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }

    /// The `Rtc` with its local candidates, where its datagrams go, the address it offers, and
    /// its relays.
    async fn setup(config: &PeerConfig) -> Result<(Rtc, Port, SocketAddr, Vec<Relay>), PeerError> {
        if let Some(mux) = &config.mux {
            if !config.ice_servers.is_empty() || config.relay_only {
                return Err(PeerError::Config(
                    "peers on a shared UDP port use no STUN or TURN server: announce a public IP instead".into(),
                ));
            }
            let local = mux.announced();
            let mut rtc = Rtc::builder().build(Instant::now());
            rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| PeerError::Sdp(e.to_string()))?);
            let link = mux.register(&rtc.direct_api().local_ice_credentials().ufrag)?;
            return Ok((rtc, Port::Shared(link), local, Vec::new()));
        }
        if config.bind.is_unspecified() && config.public_ip.is_none() {
            return Err(PeerError::Config(format!(
                "{} binds every interface: say which address peers reach (a public IP)",
                config.bind
            )));
        }
        let addr = SocketAddr::new(config.bind, 0);
        let raw = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
        // Room for bursts both ways: a datagram the kernel drops is a loss SCTP slows down for.
        // (The kernel caps these at net.core.[rw]mem_max.)
        let _ = raw.set_send_buffer_size(SOCKET_BUFFER);
        let _ = raw.set_recv_buffer_size(SOCKET_BUFFER);
        raw.set_nonblocking(true)?;
        raw.bind(&addr.into())?;
        let socket = UdpSocket::from_std(raw.into())?;
        let bound = socket.local_addr()?;
        let local = SocketAddr::new(config.public_ip.unwrap_or(bound.ip()), bound.port());
        // str0m's default SCTP buffer (128 KiB) is what bounds a channel's buffered amount:
        // sctp-proto scans what is in flight for every packet it sends, so a larger buffer is
        // slower, not faster (20 MB/s at 8 MiB against 80 at the default, measured).
        let mut rtc = Rtc::builder().build(Instant::now());
        let mut relays = Vec::new();
        let mut refusals = Vec::new();
        for server in config.ice_servers.iter().filter(|s| s.relay.is_some()) {
            match crate::relay::allocate(&socket, server, SERVER_WAIT).await {
                Ok(relay) => match Candidate::relayed(relay.relayed(), local, "udp") {
                    Ok(c) => {
                        tracing::debug!(%server, relayed = %relay.relayed(), "relay allocated");
                        rtc.add_local_candidate(c);
                        relays.push(relay);
                    }
                    Err(e) => refusals.push(format!("{server}: an unusable relayed address: {e}")),
                },
                Err(e) => refusals.push(e.to_string()),
            }
        }
        for refusal in &refusals {
            tracing::warn!("{refusal}; going on without that relay");
        }
        if config.relay_only {
            if relays.is_empty() {
                let why =
                    if refusals.is_empty() { "no turn: server was given".to_owned() } else { refusals.join("; ") };
                return Err(PeerError::NoRelay(why));
            }
            return Ok((rtc, Port::Own(socket), local, relays));
        }
        let candidate = Candidate::host(local, "udp").map_err(|e| PeerError::Sdp(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        for server in config.ice_servers.iter().filter(|s| s.relay.is_none()) {
            match crate::stun::reflexive_address(&socket, server, SERVER_WAIT).await {
                Some(mapped) if mapped != local => match Candidate::server_reflexive(mapped, local, "udp") {
                    Ok(c) => {
                        rtc.add_local_candidate(c);
                    }
                    Err(e) => tracing::warn!(%server, error = %e, "unusable server-reflexive address"),
                },
                // Not behind a NAT: the host candidate says it all.
                Some(_) => {}
                None => tracing::warn!(%server, "the STUN server did not answer; offering the host candidate only"),
            }
        }
        Ok((rtc, Port::Own(socket), local, relays))
    }

    fn spawn(rtc: Rtc, port: Port, local: SocketAddr, relays: Vec<Relay>, description: &Description) -> Peer {
        let candidates = local_candidates(&description.sdp);
        let (commands, command_rx) = mpsc::channel(64);
        let (event_tx, events) = mpsc::channel(64);
        let driver = Driver {
            rtc,
            port,
            local,
            relays,
            commands: commands.clone(),
            events: event_tx,
            inboxes: HashMap::new(),
            waiting: HashMap::new(),
            opening: Vec::new(),
            deliveries: VecDeque::new(),
            outgoing: Vec::new(),
        };
        tokio::spawn(driver.run(command_rx));
        Peer { commands, events, local, pending: None, candidates }
    }
}

/// The `a=candidate` lines of a description, browser-shaped, with the media section they are in.
fn local_candidates(sdp: &str) -> Vec<IceCandidate> {
    let mut out: Vec<IceCandidate> = Vec::new();
    let (mut index, mut mid) = (None::<u16>, None::<String>);
    for line in sdp.lines().map(str::trim) {
        if line.starts_with("m=") {
            index = Some(index.map_or(0, |i| i + 1));
            mid = None;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
            for c in out.iter_mut().filter(|c| c.sdp_m_line_index == index && c.sdp_mid.is_none()) {
                c.sdp_mid = Some(m.to_owned());
            }
        } else if let Some(c) = line.strip_prefix("a=")
            && c.starts_with("candidate:")
        {
            out.push(IceCandidate { candidate: c.to_owned(), sdp_mid: mid.clone(), sdp_m_line_index: index });
        }
    }
    out
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::Close);
    }
}

/// A message waiting to be written: binary or text, its bytes, and who to tell.
type Write = (bool, Vec<u8>, oneshot::Sender<Result<(), PeerError>>);

/// The task that owns the `Rtc`.
struct Driver {
    rtc: Rtc,
    port: Port,
    /// The address offered: what the remote sends to, and what this side sends from.
    local: SocketAddr,
    /// TURN allocations, whose relayed addresses are local candidates too.
    relays: Vec<Relay>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Sender<PeerEvent>,
    inboxes: HashMap<ChannelId, mpsc::Sender<Message>>,
    /// Writes held back by backpressure, per channel, answered once written.
    waiting: HashMap<ChannelId, VecDeque<Write>>,
    /// Channels this side asked to open, waiting for their `ChannelOpen`.
    opening: Vec<(String, oneshot::Sender<DataChannel>)>,
    /// Messages received and not yet handed to their channel's reader.
    deliveries: VecDeque<(mpsc::Sender<Message>, Message)>,
    /// Datagrams to send, wrapped for the relay when they leave from a relayed address.
    outgoing: Outbox,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 2000];
        // ICE has no clock until it is first given the time, and until then it sends no checks:
        // it would only start when a check arrives, and a relay drops the remote's checks until
        // this side has sent to it (TURN permissions).
        self.tick();
        loop {
            let timeout = self.drain();
            // Waiting for room in the socket's buffer rather than dropping: a datagram dropped
            // here is a loss to SCTP, which then slows right down.
            for (to, datagram) in std::mem::take(&mut self.outgoing) {
                let _ = self.port.send_to(&datagram, to).await;
            }
            self.deliver();
            let timeout = match timeout {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "peer connection failed");
                    let _ = self.events.send(PeerEvent::Disconnected).await;
                    break;
                }
            };
            let sleep = tokio::time::sleep_until(timeout.into());
            // A reader that falls behind holds the connection up, not this side's memory: no
            // packet is read until its messages are taken (the remote then backs off). Commands
            // and timers still run meanwhile: the reader may itself be waiting on a write.
            let full = self.deliveries.front().map(|(inbox, _)| inbox.clone());
            tokio::select! {
                _ = async { full.as_ref()?.reserve().await.ok() }, if full.is_some() => {}
                received = self.port.recv_from(&mut buf), if full.is_none() => {
                    let Ok((n, source)) = received else { continue };
                    self.receive(&buf[..n], source);
                    // Take what else has arrived before the next round of output and timers.
                    for _ in 0..BATCH {
                        match self.port.try_recv_from(&mut buf) {
                            Ok((n, source)) => self.receive(&buf[..n], source),
                            Err(_) => break,
                        }
                    }
                }
                command = commands.recv() => match command {
                    None | Some(Command::Close) => {
                        // Closing the channels tells the remote at once (a stream reset); the
                        // connection itself would only time out there.
                        let open: Vec<ChannelId> = self.inboxes.keys().copied().collect();
                        for id in open {
                            self.rtc.direct_api().close_data_channel(id);
                        }
                        let _ = self.drain();
                        for (to, datagram) in std::mem::take(&mut self.outgoing) {
                            let _ = self.port.send_to(&datagram, to).await;
                        }
                        self.rtc.disconnect();
                        break;
                    }
                    Some(c) => self.command(c),
                },
                _ = sleep => self.tick(),
            }
        }
        // However the connection ended, its relay allocations are given back now rather than
        // held on the relay until they expire.
        for relay in &mut self.relays {
            relay.close(Instant::now(), &mut self.outgoing);
        }
        for (to, datagram) in std::mem::take(&mut self.outgoing) {
            let _ = self.port.send_to(&datagram, to).await;
        }
    }

    /// Gives the `Rtc` the time: its timers run, and new candidate pairs are checked at once.
    fn tick(&mut self) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
            tracing::debug!(error = %e, "timeout handling failed");
        }
    }

    /// Hands received messages to their readers, in order, as far as their inboxes have room.
    fn deliver(&mut self) {
        while let Some((inbox, message)) = self.deliveries.pop_front() {
            match inbox.try_send(message) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.deliveries.push_front((inbox, message));
                    return;
                }
            }
        }
    }

    fn receive(&mut self, datagram: &[u8], source: SocketAddr) {
        let now = Instant::now();
        let relayed = match self.relays.iter_mut().find(|r| r.server() == source) {
            Some(relay) => match relay.receive(datagram, now, &mut self.outgoing) {
                Some((peer, data)) => Some((peer, relay.relayed(), data)),
                None => return,
            },
            None => None,
        };
        let (source, destination, datagram) = match &relayed {
            Some((peer, relayed, data)) => (*peer, *relayed, data.as_slice()),
            None => (source, self.local, datagram),
        };
        let Ok(contents) = datagram.try_into() else { return };
        // No `rtc.accepts` filter: the socket, or the mux's routing, gives this connection only
        // its own traffic. The filter would drop a DTLS ClientHello that arrives before this
        // side's ICE has nominated a pair, and the OpenSSL DTLS backend never retransmits it on
        // a timer: the handshake would hang.
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, "dropping a packet");
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Open { label, reply } => {
                let mut change = self.rtc.sdp_api();
                change.add_channel(label.clone());
                // On an established connection a new channel needs no renegotiation in str0m
                // when SCTP is up: it is opened in-band (DCEP).
                let _ = change.apply();
                self.opening.push((label, reply));
            }
            Command::Write { id, binary, data, reply } => {
                let queue = self.waiting.entry(id).or_default();
                queue.push_back((binary, data, reply));
                self.flush(id);
            }
            Command::Answer { pending, answer, reply } => {
                let _ = reply.send(self.rtc.sdp_api().accept_answer(pending, answer).map_err(PeerError::Rtc));
                self.tick();
            }
            Command::RemoteCandidate(c) => {
                self.rtc.add_remote_candidate(c);
                self.tick();
            }
            Command::Close => {}
        }
    }

    /// Writes what is waiting on channel `id` while it is under the high-water mark.
    fn flush(&mut self, id: ChannelId) {
        let Some(queue) = self.waiting.get_mut(&id) else { return };
        let Some(mut channel) = self.rtc.channel(id) else {
            for (_, _, reply) in queue.drain(..) {
                let _ = reply.send(Err(PeerError::Closed));
            }
            return;
        };
        while channel.buffered_amount() < HIGH_WATER {
            let Some((binary, data, reply)) = queue.pop_front() else { break };
            match channel.write(binary, &data) {
                Ok(true) => {
                    let _ = reply.send(Ok(()));
                }
                // Not accepted even with nothing buffered: it can never be.
                Ok(false) if channel.buffered_amount() == 0 => {
                    let _ = reply.send(Err(PeerError::TooLarge { size: data.len() }));
                }
                Ok(false) => {
                    queue.push_front((binary, data, reply));
                    break;
                }
                Err(e) => {
                    let _ = reply.send(Err(PeerError::Rtc(e)));
                }
            }
        }
        // Wake up (ChannelBufferedAmountLow) once what is buffered now has half drained.
        let buffered = channel.buffered_amount();
        channel.set_buffered_amount_low_threshold(LOW_WATER.min(buffered / 2));
    }

    /// Sends what the `Rtc` wants sent and hands out its events; returns when it next needs a
    /// timeout, or `None` once it has stopped.
    fn drain(&mut self) -> Result<Option<Instant>, RtcError> {
        loop {
            if !self.rtc.is_alive() {
                let _ = self.events.try_send(PeerEvent::Disconnected);
                return Ok(None);
            }
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    let now = Instant::now();
                    let wake = self.relays.iter_mut().filter_map(|r| r.poll(now, &mut self.outgoing)).min();
                    return Ok(Some(wake.map_or(t, |w| w.min(t))));
                }
                Output::Transmit(t) if t.source == self.local => {
                    self.outgoing.push((t.destination, t.contents.to_vec()));
                }
                Output::Transmit(t) => match self.relays.iter_mut().find(|r| r.relayed() == t.source) {
                    Some(relay) => relay.send(t.destination, t.contents.to_vec(), Instant::now(), &mut self.outgoing),
                    None => self.outgoing.push((t.destination, t.contents.to_vec())),
                },
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::IceConnectionStateChange(IceConnectionState::Connected) => {
                let _ = self.events.try_send(PeerEvent::Connected);
            }
            // The peer is gone (killed, or its network is): end, so readers see their channels
            // close; a transfer carries on over a new connection.
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                let _ = self.events.try_send(PeerEvent::Disconnected);
                self.inboxes.clear();
                self.rtc.disconnect();
            }
            Event::ChannelOpen(id, label) => {
                let (tx, inbox) = mpsc::channel(INBOX);
                self.inboxes.insert(id, tx);
                let channel = DataChannel { id, label: label.clone(), commands: self.commands.clone(), inbox };
                if let Some(i) = self.opening.iter().position(|(l, _)| *l == label) {
                    let (_, reply) = self.opening.remove(i);
                    let _ = reply.send(channel);
                } else {
                    let _ = self.events.try_send(PeerEvent::Channel(channel));
                }
            }
            Event::ChannelData(d) => {
                if let Some(inbox) = self.inboxes.get(&d.id) {
                    self.deliveries.push_back((inbox.clone(), Message { binary: d.binary, data: d.data }));
                }
            }
            Event::ChannelClose(id) => {
                self.inboxes.remove(&id);
                self.flush(id);
            }
            Event::ChannelBufferedAmountLow(id) => self.flush(id),
            _ => {}
        }
    }
}
