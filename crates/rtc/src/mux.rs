//! Many peers on one UDP port (`ferry serve --rtc-udp-port`), so a firewall needs one rule.
//!
//! Every peer connection sends from the one socket. What arrives is routed to its peer by
//! [`Routes`], a plain table with no I/O: an ICE check (a STUN binding request) names the peer
//! it is for in its USERNAME (`LOCAL_UFRAG:REMOTE_UFRAG`, RFC 8445 §7.2.2), and everything else
//! (STUN answers, DTLS, SCTP) goes by the address it comes from, learnt from those checks and
//! from where each peer sends. A datagram that matches no peer is dropped, as is one that
//! arrives while its peer's queue is full (UDP's own way: SCTP resends it).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::peer::PeerError;

/// Datagrams held for a peer that has not taken them yet.
const QUEUE: usize = 1024;
/// Remote addresses one peer may be reached from (its candidates, a relay, a NAT's rebinding).
const ADDRS_PER_PEER: usize = 32;
/// Larger than any datagram a peer sends (str0m keeps them under 1,400 bytes).
const DATAGRAM: usize = 2048;
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Who gets each datagram on a shared port: no I/O, so every rule is tested directly.
#[derive(Debug, Default)]
pub struct Routes {
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    addrs: HashMap<u64, HashSet<SocketAddr>>,
}

impl Routes {
    /// Adds a peer, known by its local ICE ufrag; false if the ufrag is someone's already.
    pub fn add(&mut self, peer: u64, ufrag: &str) -> bool {
        if self.by_ufrag.contains_key(ufrag) {
            return false;
        }
        self.by_ufrag.insert(ufrag.to_owned(), peer);
        self.addrs.insert(peer, HashSet::new());
        true
    }

    pub fn remove(&mut self, peer: u64) {
        self.by_ufrag.retain(|_, p| *p != peer);
        for addr in self.addrs.remove(&peer).unwrap_or_default() {
            self.by_addr.remove(&addr);
        }
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Traffic between `peer` and `remote` is `peer`'s, whoever had that address before.
    pub fn learn(&mut self, peer: u64, remote: SocketAddr) {
        if self.by_addr.get(&remote) == Some(&peer) {
            return;
        }
        let Some(own) = self.addrs.get_mut(&peer) else { return };
        if own.len() >= ADDRS_PER_PEER {
            return;
        }
        own.insert(remote);
        if let Some(before) = self.by_addr.insert(remote, peer)
            && let Some(theirs) = self.addrs.get_mut(&before)
        {
            theirs.remove(&remote);
        }
    }

    /// The peer a datagram from `source` is for, if any.
    pub fn route(&mut self, datagram: &[u8], source: SocketAddr) -> Option<u64> {
        if let Some(ufrag) = check_for(datagram)
            && let Some(&peer) = self.by_ufrag.get(ufrag)
        {
            self.learn(peer, source);
            return Some(peer);
        }
        self.by_addr.get(&source).copied()
    }
}

/// The local ufrag an ICE check is addressed to, when `datagram` is one.
fn check_for(datagram: &[u8]) -> Option<&str> {
    // STUN (RFC 8489 §5): the two top bits zero, and the magic cookie at bytes 4..8.
    if datagram.len() < 20 || datagram[0] & 0xc0 != 0 || datagram[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let message = str0m::ice::StunMessage::parse(datagram).ok()?;
    if !message.is_binding_request() {
        return None;
    }
    let username = message.username()?;
    Some(username.split_once(':').map_or(username, |(local, _)| local))
}

/// A datagram and where it came from.
type Datagram = (Vec<u8>, SocketAddr);
type Queues = HashMap<u64, mpsc::Sender<Datagram>>;

/// One UDP socket shared by every peer made with it.
pub struct UdpMux {
    socket: Arc<UdpSocket>,
    announced: SocketAddr,
    max_peers: usize,
    routes: Mutex<Routes>,
    queues: Mutex<Queues>,
    next: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpMux").field("announced", &self.announced).finish_non_exhaustive()
    }
}

impl UdpMux {
    /// Binds `bind` (a wildcard address binds every interface) and starts routing. Peers offer
    /// `announce` (a public address in front of a 1:1 NAT), or else the bound address, with the
    /// bound port; a wildcard bind needs `announce`. At most `max_peers` at once (0: any).
    pub async fn bind(bind: SocketAddr, announce: Option<IpAddr>, max_peers: usize) -> Result<Arc<UdpMux>, PeerError> {
        if bind.ip().is_unspecified() && announce.is_none() {
            return Err(PeerError::Config(format!(
                "{} binds every interface: say which address peers reach (a public IP)",
                bind.ip()
            )));
        }
        let raw = socket2::Socket::new(socket2::Domain::for_address(bind), socket2::Type::DGRAM, None)?;
        let _ = raw.set_send_buffer_size(SOCKET_BUFFER);
        let _ = raw.set_recv_buffer_size(SOCKET_BUFFER);
        raw.set_nonblocking(true)?;
        raw.bind(&bind.into())?;
        let socket = Arc::new(UdpSocket::from_std(raw.into())?);
        let bound = socket.local_addr()?;
        let mux = Arc::new(UdpMux {
            socket: Arc::clone(&socket),
            announced: SocketAddr::new(announce.unwrap_or(bound.ip()), bound.port()),
            max_peers,
            routes: Mutex::new(Routes::default()),
            queues: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(1),
        });
        tokio::spawn(read(Arc::downgrade(&mux), socket));
        Ok(mux)
    }

    /// The address peers offer as their candidate.
    pub fn announced(&self) -> SocketAddr {
        self.announced
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many peers use the port now.
    pub fn peers(&self) -> usize {
        self.routes().len()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A peer's share of the port, for the peer whose local ICE ufrag is `ufrag`.
    pub(crate) fn register(self: &Arc<Self>, ufrag: &str) -> Result<Link, PeerError> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        {
            let mut routes = self.routes();
            if self.max_peers > 0 && routes.len() >= self.max_peers {
                return Err(PeerError::Busy(self.max_peers));
            }
            if !routes.add(id, ufrag) {
                return Err(PeerError::Config("an ICE ufrag already in use on this port".into()));
            }
        }
        self.queues().insert(id, tx);
        Ok(Link { mux: Arc::clone(self), id, rx, sent_to: HashSet::new() })
    }
}

async fn read(mux: std::sync::Weak<UdpMux>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let received = socket.recv_from(&mut buf).await;
        let Some(mux) = mux.upgrade() else { return };
        let Ok((n, source)) = received else {
            // An ICMP error of an earlier send, reported here: nothing to route.
            continue;
        };
        let Some(peer) = mux.routes().route(&buf[..n], source) else { continue };
        let queue = mux.queues().get(&peer).cloned();
        if let Some(queue) = queue {
            let _ = queue.try_send((buf[..n].to_vec(), source));
        }
    }
}

/// Where a peer's datagrams go in and out: its own socket, or its share of a [`UdpMux`].
pub(crate) enum Port {
    Own(UdpSocket),
    Shared(Link),
}

impl Port {
    pub(crate) async fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        match self {
            Port::Own(s) => s.send_to(datagram, to).await,
            Port::Shared(l) => l.send_to(datagram, to).await,
        }
    }

    pub(crate) async fn recv_from(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Port::Own(s) => s.recv_from(buf).await,
            Port::Shared(l) => l.recv_from(buf).await,
        }
    }

    pub(crate) fn try_recv_from(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Port::Own(s) => s.try_recv_from(buf),
            Port::Shared(l) => l.try_recv_from(buf),
        }
    }
}

/// One peer's use of a [`UdpMux`]: what arrives for it, and sending from the shared socket.
pub(crate) struct Link {
    mux: Arc<UdpMux>,
    id: u64,
    rx: mpsc::Receiver<Datagram>,
    /// Where this peer has sent, so answers from there come back to it.
    sent_to: HashSet<SocketAddr>,
}

impl Link {
    pub(crate) async fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        if self.sent_to.len() < ADDRS_PER_PEER && self.sent_to.insert(to) {
            self.mux.routes().learn(self.id, to);
        }
        self.mux.socket.send_to(datagram, to).await
    }

    pub(crate) async fn recv_from(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self.rx.recv().await {
            Some(d) => Ok(copy(d, buf)),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    pub(crate) fn try_recv_from(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self.rx.try_recv() {
            Ok(d) => Ok(copy(d, buf)),
            Err(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

fn copy((datagram, source): Datagram, buf: &mut [u8]) -> (usize, SocketAddr) {
    let n = datagram.len().min(buf.len());
    buf[..n].copy_from_slice(&datagram[..n]);
    (n, source)
}

impl Drop for Link {
    fn drop(&mut self) {
        self.mux.routes().remove(self.id);
        self.mux.queues().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A binding request as an ICE agent sends it: USERNAME `to:from`, PRIORITY, and a
    /// MESSAGE-INTEGRITY (not checked by the router: the peer's own agent checks it).
    fn check(to: &str, from: &str) -> Vec<u8> {
        let username = format!("{to}:{from}");
        let mut attrs = Vec::new();
        let mut attr = |kind: u16, value: &[u8]| {
            attrs.extend_from_slice(&kind.to_be_bytes());
            attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
            attrs.extend_from_slice(value);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        };
        attr(0x0006, username.as_bytes());
        attr(0x0024, &[0x6e, 0, 0x1e, 0xff]);
        attr(0x0008, &[0; 20]);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn checks_go_by_ufrag_and_the_rest_by_the_address_they_taught() {
        let mut r = Routes::default();
        assert!(r.add(1, "aaaa"));
        assert!(r.add(2, "bbbb"));
        assert!(!r.add(3, "aaaa"), "a ufrag is one peer's");
        let dtls = [22u8, 254, 253, 0, 0];
        assert_eq!(r.route(&dtls, addr(5000)), None, "nobody has spoken from there yet");
        assert_eq!(r.route(&check("bbbb", "remote"), addr(5000)), Some(2));
        assert_eq!(r.route(&dtls, addr(5000)), Some(2), "then its DTLS follows");
        assert_eq!(r.route(&check("aaaa", "x"), addr(6000)), Some(1));
        assert_eq!(r.route(&check("zzzz", "x"), addr(7000)), None, "a ufrag nobody has");
        r.learn(1, addr(8000));
        assert_eq!(r.route(&dtls, addr(8000)), Some(1), "answers to where a peer sent");
        r.remove(2);
        assert_eq!(r.route(&dtls, addr(5000)), None, "a peer gone takes its addresses");
        assert_eq!(r.route(&check("bbbb", "remote"), addr(5000)), None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn an_address_moves_to_the_peer_that_last_claimed_it() {
        let mut r = Routes::default();
        r.add(1, "aaaa");
        r.add(2, "bbbb");
        r.learn(1, addr(5000));
        assert_eq!(r.route(&check("bbbb", "r"), addr(5000)), Some(2));
        assert_eq!(r.route(&[0u8; 4], addr(5000)), Some(2));
        r.remove(1);
        assert_eq!(r.route(&[0u8; 4], addr(5000)), Some(2), "removing the old owner leaves it alone");
    }

    #[test]
    fn a_peer_learns_a_bounded_number_of_addresses() {
        let mut r = Routes::default();
        r.add(1, "aaaa");
        for port in 0..1000 {
            r.route(&check("aaaa", "r"), addr(10_000 + port));
        }
        let known = (0..1000).filter(|p| r.route(&[0u8; 4], addr(10_000 + p)).is_some()).count();
        assert_eq!(known, ADDRS_PER_PEER);
        // Checks are routed by ufrag all the same.
        assert_eq!(r.route(&check("aaaa", "r"), addr(20_000)), Some(1));
    }

    #[test]
    fn hostile_datagrams_route_nowhere_and_never_panic() {
        let mut r = Routes::default();
        r.add(1, "aaaa");
        let mut long_name = check("aaaa", "r");
        long_name[3] = 0xff; // a length beyond the datagram
        for d in [&[][..], &[0u8; 19], &[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42], &long_name, &[0xff; 40]] {
            assert_eq!(r.route(d, addr(9)), None, "{d:?}");
        }
        let mut no_colon = check("aaaa", "r");
        let at = no_colon.iter().position(|b| *b == b':').unwrap_or(0);
        no_colon[at] = b'a';
        assert_eq!(r.route(&no_colon, addr(9)), None, "USERNAME `aaaaar` names no peer");
    }
}
