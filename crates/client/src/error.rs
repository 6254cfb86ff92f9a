use std::path::PathBuf;
use std::time::Duration;

use ferry_core::schedule::Failure;

/// Why a transfer step failed, sorted by whose fault it is: the server said no ([`ClientError::Api`]),
/// the network failed ([`ClientError::Network`]), the local disk failed ([`ClientError::Io`]), or
/// the bytes do not add up ([`ClientError::Integrity`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the server answered {status}: {message} ({code})")]
    Api { status: u16, code: String, message: String, retry_after: Option<Duration> },
    #[error("{what}: {source}")]
    Network {
        what: String,
        /// The connection could not be made at all (refused, DNS, TLS).
        connect: bool,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Truncated(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    pub(crate) fn network(what: impl Into<String>, source: reqwest::Error) -> ClientError {
        let connect = source.is_connect();
        ClientError::Network { what: what.into(), connect, source }
    }

    /// A body that ended early: the connection broke, so another try can help.
    pub(crate) fn network_short(what: &str, got: u64, expected: u64) -> ClientError {
        ClientError::Truncated(format!("{what}: the connection ended after {got} of {expected} bytes"))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ClientError {
        ClientError::Io { path: path.into(), source }
    }

    /// The server's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Network { connect: true, .. })
    }

    /// Whether trying again can help, and after how long at least.
    pub fn failure(&self) -> Failure {
        match self {
            ClientError::Network { .. } | ClientError::Truncated(_) => Failure::Retryable { retry_after: None },
            ClientError::Api { status, retry_after, .. } => {
                if *status == 408 || *status == 429 || *status >= 500 {
                    Failure::Retryable { retry_after: *retry_after }
                } else {
                    Failure::Fatal
                }
            }
            ClientError::Io { .. } | ClientError::Integrity(_) | ClientError::Protocol(_) | ClientError::Usage(_) => {
                Failure::Fatal
            }
        }
    }
}
