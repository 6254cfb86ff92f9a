//! STUN servers (`--ice-server stun:HOST[:PORT]`): a binding request from the peer's own socket
//! learns the address a NAT maps it to, offered as a server-reflexive candidate beside the host
//! one.

use std::net::SocketAddr;
use std::time::Duration;

use str0m::ice::{StunMessageBuilder, TransId};
use tokio::net::UdpSocket;

use crate::ice_server::IceServer;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Asks `server` which address `socket` appears from; `None` if it does not answer within
/// `wait` (requests are repeated, as UDP may lose them).
pub async fn reflexive_address(socket: &UdpSocket, server: &IceServer, wait: Duration) -> Option<SocketAddr> {
    let local = socket.local_addr().ok()?;
    let target = server.resolve(local).await?;
    let id = TransId::new();
    let mut request = [0u8; 64];
    // No credentials: a plain binding request needs no MESSAGE-INTEGRITY, so no HMAC is computed.
    let len =
        StunMessageBuilder::new().binding().request().build(id).to_bytes(None, &mut request, |_, _| [0; 20]).ok()?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 1500];
    let mut resend = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= resend {
            socket.send_to(&request[..len], target).await.ok()?;
            resend = tokio::time::Instant::now() + Duration::from_millis(500);
        }
        let until = resend.min(deadline);
        match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == target => {
                if let Some(mapped) = mapped_address(&buf[..n], &request[8..20]) {
                    return Some(mapped);
                }
            }
            Ok(_) => {}
            Err(_) if until >= deadline => return None,
            Err(_) => {}
        }
    }
}

/// The XOR-MAPPED-ADDRESS of a binding success response to the request with transaction id
/// `id` (RFC 5389). str0m's own parser is for ICE checks and wants MESSAGE-INTEGRITY, which a
/// STUN server's plain answer does not carry.
fn mapped_address(msg: &[u8], id: &[u8]) -> Option<SocketAddr> {
    let u16_at = |i: usize| Some(u16::from_be_bytes(msg.get(i..i + 2)?.try_into().ok()?));
    if u16_at(0)? != BINDING_SUCCESS
        || msg.get(4..8)? != MAGIC_COOKIE.to_be_bytes()
        || msg.get(8..20)? != id
        || usize::from(u16_at(2)?) + 20 != msg.len()
    {
        return None;
    }
    let mut at = 20;
    while at + 4 <= msg.len() {
        let (kind, len) = (u16_at(at)?, usize::from(u16_at(at + 2)?));
        let value = msg.get(at + 4..at + 4 + len)?;
        if kind == XOR_MAPPED_ADDRESS {
            let port = u16::from_be_bytes(value.get(2..4)?.try_into().ok()?) ^ (MAGIC_COOKIE >> 16) as u16;
            let ip = match *value.get(1)? {
                0x01 => {
                    let raw = u32::from_be_bytes(value.get(4..8)?.try_into().ok()?) ^ MAGIC_COOKIE;
                    std::net::IpAddr::from(raw.to_be_bytes())
                }
                0x02 => {
                    let mut raw: [u8; 16] = value.get(4..20)?.try_into().ok()?;
                    let key = msg.get(4..20)?; // the cookie, then the transaction id
                    raw.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
                    std::net::IpAddr::from(raw)
                }
                _ => return None,
            };
            return Some(SocketAddr::new(ip, port));
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding success from coturn 4.6.1 for 127.0.0.1:49339 (with RESPONSE-ORIGIN and SOFTWARE).
    const COTURN: &[u8] = b"\x01\x01\x00<!\x12\xa4Bu\\\x19\xc3\xe9G\xca\xaa\xb7t\xd9\xe8\x00 \x00\x08\x00\x01\xe1\xa9^\x12\xa4C\x00\x01\x00\x08\x00\x01\xc0\xbb\x7f\x00\x00\x01\x80+\x00\x08\x00\x01\x88\xb7\x7f\x00\x00\x01\x80\"\x00\x14Coturn-4.6.1 'Gorst'";

    #[test]
    fn mapped_addresses_and_hostile_answers() {
        let id = &COTURN[8..20];
        assert_eq!(mapped_address(COTURN, id), Some("127.0.0.1:49339".parse().unwrap()));
        assert_eq!(mapped_address(COTURN, &[0; 12]), None, "another request's answer");
        for cut in 0..COTURN.len() {
            assert_eq!(mapped_address(&COTURN[..cut], id), None, "truncated at {cut}");
        }
        let mut bad_type = COTURN.to_vec();
        bad_type[1] = 0x11; // an error response
        assert_eq!(mapped_address(&bad_type, id), None);
        let mut long_attr = COTURN.to_vec();
        long_attr[23] = 0xff; // an attribute longer than the message
        assert_eq!(mapped_address(&long_attr, id), None);
        let mut family = COTURN.to_vec();
        family[25] = 0x07;
        assert_eq!(mapped_address(&family, id), None);
        // IPv6: the address is XORed with the cookie and the transaction id.
        let mut v6 = vec![0x01, 0x01, 0, 24, 0x21, 0x12, 0xa4, 0x42];
        v6.extend_from_slice(id);
        v6.extend_from_slice(&[0, 0x20, 0, 20, 0, 2, 0x12 ^ 0x21, 0x34 ^ 0x12]); // port 0x1234
        let want: std::net::Ipv6Addr = "::1".parse().unwrap();
        v6.extend(want.octets().iter().zip(COTURN[4..20].iter()).map(|(a, k)| a ^ k));
        assert_eq!(mapped_address(&v6, id), Some(SocketAddr::new(want.into(), 0x1234)));
    }
}
