//! The JSON message channel: a data channel labelled [`MESSAGES_LABEL`] whose messages are JSON
//! text, one value each — progress reports, commands such as `pause` or `cancel`, anything an
//! application exchanges in real time beside (or instead of) a file.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::peer::{ChannelSender, DataChannel, PeerError};

pub const MESSAGES_LABEL: &str = "messages";

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("a message that is not the JSON expected: {0}")]
    Invalid(String),
    #[error("the message could not be encoded: {0}")]
    Encode(String),
}

/// A data channel carrying JSON values.
pub struct Messages {
    channel: DataChannel,
}

impl Messages {
    pub fn new(channel: DataChannel) -> Messages {
        Messages { channel }
    }

    pub async fn send(&self, value: &impl Serialize) -> Result<(), MessageError> {
        let text = serde_json::to_vec(value).map_err(|e| MessageError::Encode(e.to_string()))?;
        Ok(self.channel.send(false, text).await?)
    }

    /// The next message; `None` once the channel closes. A message that is binary or not the
    /// JSON `T` is an error for that message only: the channel stays usable.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Option<Result<T, MessageError>> {
        let m = self.channel.recv().await?;
        if m.binary {
            return Some(Err(MessageError::Invalid(format!("a binary message of {} bytes", m.data.len()))));
        }
        Some(serde_json::from_slice(&m.data).map_err(|e| MessageError::Invalid(e.to_string())))
    }

    /// A handle that sends from another task while this one receives.
    pub fn sender(&self) -> MessageSender {
        MessageSender { inner: self.channel.sender() }
    }
}

#[derive(Clone)]
pub struct MessageSender {
    inner: ChannelSender,
}

impl MessageSender {
    pub async fn send(&self, value: &impl Serialize) -> Result<(), MessageError> {
        let text = serde_json::to_vec(value).map_err(|e| MessageError::Encode(e.to_string()))?;
        Ok(self.inner.send(false, text).await?)
    }
}
