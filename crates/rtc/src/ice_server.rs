//! ICE server URLs (`--ice-server`), RFC 7064/7065 shaped: `stun:HOST[:PORT]` for a STUN server,
//! `turn:USER:PASSWORD@HOST[:PORT][?transport=udp]` for a TURN relay with its long-term
//! credentials. Browsers take the credentials apart from the URL; a command line has only the
//! one string, so they ride in the user-info part. The password is what follows the last `:` of
//! it (TURN REST usernames carry a `:` of their own) and the host what follows the last `@`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A TURN server's long-term credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"…").finish()
    }
}

/// One STUN server, or a TURN relay when it has credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub host: String,
    pub port: u16,
    /// Set for a TURN relay (`turn:`), which always wants them.
    pub relay: Option<Credentials>,
}

impl IceServer {
    pub fn stun(host: &str, port: u16) -> IceServer {
        IceServer { host: host.to_owned(), port, relay: None }
    }

    pub fn turn(host: &str, port: u16, username: &str, password: &str) -> IceServer {
        let relay = Some(Credentials { username: username.to_owned(), password: password.to_owned() });
        IceServer { host: host.to_owned(), port, relay }
    }

    /// The server's address in the family of `local` (a socket talks to one family only).
    pub async fn resolve(&self, local: SocketAddr) -> Option<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port)).await.ok()?.find(|a| a.is_ipv4() == local.is_ipv4())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceServerError {
    #[error("{0:?}: TURN over TLS (turns:) is not supported; use turn:USER:PASSWORD@HOST[:PORT]")]
    TurnTls(String),
    #[error("{0:?}: TURN over TCP is not supported; ferry relays over UDP (?transport=udp)")]
    TurnTcp(String),
    #[error("{0:?} has no credentials: a TURN relay is given as turn:USER:PASSWORD@HOST[:PORT]")]
    NoCredentials(String),
    #[error("{0:?} is not an ICE server URL: expected stun:HOST[:PORT] or turn:USER:PASSWORD@HOST[:PORT]")]
    Invalid(String),
}

impl FromStr for IceServer {
    type Err = IceServerError;

    fn from_str(url: &str) -> Result<IceServer, IceServerError> {
        let invalid = || IceServerError::Invalid(url.to_owned());
        if url.starts_with("turns:") {
            return Err(IceServerError::TurnTls(url.to_owned()));
        }
        let (rest, relay) = match (url.strip_prefix("stun:"), url.strip_prefix("turn:")) {
            (Some(rest), _) => (rest, None),
            (None, Some(rest)) => {
                let (rest, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
                match query {
                    None | Some("transport=udp") => {}
                    Some("transport=tcp") => return Err(IceServerError::TurnTcp(url.to_owned())),
                    Some(_) => return Err(invalid()),
                }
                let (user_info, host) =
                    rest.rsplit_once('@').ok_or_else(|| IceServerError::NoCredentials(url.to_owned()))?;
                let (username, password) =
                    user_info.rsplit_once(':').ok_or_else(|| IceServerError::NoCredentials(url.to_owned()))?;
                if username.is_empty() {
                    return Err(IceServerError::NoCredentials(url.to_owned()));
                }
                (host, Some(Credentials { username: username.to_owned(), password: password.to_owned() }))
            }
            (None, None) => return Err(invalid()),
        };
        let (host, port) = match rest.strip_prefix('[') {
            // [v6]:port or [v6]
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(invalid)?;
                let port = match after.strip_prefix(':') {
                    Some(p) => p.parse().map_err(|_| invalid())?,
                    None if after.is_empty() => 3478,
                    None => return Err(invalid()),
                };
                (h, port)
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| invalid())?),
                None => (rest, 3478),
            },
        };
        let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
        if !valid || port == 0 {
            return Err(invalid());
        }
        Ok(IceServer { host: host.to_owned(), port, relay })
    }
}

/// The URL without the password, for logs and messages.
impl fmt::Display for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.relay {
            Some(c) => write!(f, "turn:{}@", c.username)?,
            None => write!(f, "stun:")?,
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_urls() {
        let s = |h: &str, p| Ok(IceServer::stun(h, p));
        assert_eq!("stun:stun.example.org".parse(), s("stun.example.org", 3478));
        assert_eq!("stun:127.0.0.1:19302".parse(), s("127.0.0.1", 19302));
        assert_eq!("stun:[::1]:5000".parse(), s("::1", 5000));
        assert_eq!("stun:[::1]".parse(), s("::1", 3478));
        for bad in [
            "",
            "stun:",
            "stun:host:",
            "stun:host:0",
            "stun:host:99999",
            "stun:[::1",
            "stun:[::1]x",
            "http://stun.example.org",
            "stun:a b",
            "stun://host",
            "stun:host/path",
            "stun:host?transport=udp",
            "stun:user:pass@host",
        ] {
            assert!(matches!(bad.parse::<IceServer>(), Err(IceServerError::Invalid(_))), "{bad:?} was accepted");
        }
        assert_eq!(IceServer::stun("::1", 9).to_string(), "stun:[::1]:9");
        assert_eq!(IceServer::stun("h", 9).to_string(), "stun:h:9");
    }

    #[test]
    fn turn_urls() {
        let t = |h: &str, p, u: &str, pw: &str| Ok(IceServer::turn(h, p, u, pw));
        assert_eq!("turn:alice:s3cret@relay.example.org".parse(), t("relay.example.org", 3478, "alice", "s3cret"));
        assert_eq!("turn:alice:s3cret@127.0.0.1:3479?transport=udp".parse(), t("127.0.0.1", 3479, "alice", "s3cret"));
        assert_eq!("turn:alice:pw@[::1]:5349".parse(), t("::1", 5349, "alice", "pw"));
        // A TURN REST username (expiry:user) and a password with an `@`.
        assert_eq!("turn:1735689600:bob:p@ss@relay:3478".parse(), t("relay", 3478, "1735689600:bob", "p@ss"));
        assert_eq!(
            "turn:alice:@relay".parse(),
            t("relay", 3478, "alice", ""),
            "an empty password is the server's call"
        );
        let err = |url: &str| url.parse::<IceServer>().unwrap_err();
        assert!(matches!(err("turns:alice:pw@relay:5349"), IceServerError::TurnTls(_)));
        assert!(matches!(err("turn:alice:pw@relay?transport=tcp"), IceServerError::TurnTcp(_)));
        assert!(matches!(err("turn:relay.example.org"), IceServerError::NoCredentials(_)));
        assert!(matches!(err("turn:alice@relay"), IceServerError::NoCredentials(_)));
        assert!(matches!(err("turn::pw@relay"), IceServerError::NoCredentials(_)));
        assert!(matches!(err("turn:alice:pw@relay?transport=sctp"), IceServerError::Invalid(_)));
        assert!(matches!(err("turn:alice:pw@"), IceServerError::Invalid(_)));
        assert!(matches!(err("turn:alice:pw@relay:0"), IceServerError::Invalid(_)));
        // The password stays out of what is printed.
        let server = IceServer::turn("relay", 3478, "alice", "s3cret");
        assert_eq!(server.to_string(), "turn:alice@relay:3478");
        assert!(!format!("{server:?}").contains("s3cret"));
    }
}
