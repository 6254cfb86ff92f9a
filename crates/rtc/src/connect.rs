//! A peer connection made through signaling: the offer or answer goes over the room, each
//! side's candidates are trickled after it (they are in the SDP as well, for peers that do not
//! trickle), the remote's trickled candidates are added as they come, and the call returns once
//! the data channels are open.

use std::time::Duration;

use ferry_core::signal::Outbound;

use crate::peer::{DataChannel, Description, Peer, PeerConfig, PeerError, PeerEvent};
use crate::signaling::{Signaling, SignalingError, candidate_in};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("no data channel opened within {0:?}")]
    Timeout(Duration),
    #[error("the peer connection failed before its channels opened")]
    Failed,
}

/// Which channels a connection waits for.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// Return as soon as this many channels are open.
    pub count: usize,
    /// Once a channel with one of these labels is open, a quiet second ends the wait even if
    /// fewer than `count` came (a receiver takes an upload channel with or without `control`).
    pub enough: &'a [&'a str],
}

/// Connects to `to` as the offerer, opening `labels`; returns the peer and its open channels.
pub async fn offer(
    sig: &mut Signaling,
    to: &str,
    config: &PeerConfig,
    labels: &[&str],
    wait: Duration,
) -> Result<(Peer, Vec<DataChannel>), ConnectError> {
    let (mut peer, offer) = Peer::offer(config, labels).await?;
    sig.send_description(to, &offer).await?;
    let (_, answer) = sig.wait_description("answer", Some(to), wait, |_| {}).await?;
    peer.accept_answer(&answer).await?;
    let channels = channels(&mut peer, sig, to, Expect { count: labels.len(), enough: &[] }, wait).await?;
    Ok((peer, channels))
}

/// Answers `offer` from `from`; returns the peer once the channels `expect` describes are open.
pub async fn answer(
    sig: &mut Signaling,
    from: &str,
    offer: &Description,
    config: &PeerConfig,
    expect: Expect<'_>,
    wait: Duration,
) -> Result<(Peer, Vec<DataChannel>), ConnectError> {
    let (mut peer, answer) = Peer::answer(config, offer).await?;
    sig.send_description(from, &answer).await?;
    let channels = channels(&mut peer, sig, from, expect, wait).await?;
    Ok((peer, channels))
}

fn satisfied(got: &[DataChannel], expect: &Expect<'_>) -> bool {
    got.iter().any(|c| expect.enough.contains(&c.label()))
}

async fn channels(
    peer: &mut Peer,
    sig: &mut Signaling,
    remote: &str,
    expect: Expect<'_>,
    wait: Duration,
) -> Result<Vec<DataChannel>, ConnectError> {
    sig.send_candidates(remote, peer.local_candidates()).await?;
    let candidates = peer.remote_candidates();
    let mut got: Vec<DataChannel> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut signaling_open = true;
    while got.len() < expect.count {
        let limit = if satisfied(&got, &expect) {
            (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline)
        } else {
            deadline
        };
        let event = tokio::select! {
            e = tokio::time::timeout_at(limit, peer.next_event()) => e,
            m = sig.recv(limit.saturating_duration_since(tokio::time::Instant::now())), if signaling_open => {
                match m {
                    Ok(Outbound::Signal { from, data }) if from == remote => {
                        if let Some(c) = candidate_in(&data)
                            && let Err(e) = candidates.add(&c).await
                        {
                            tracing::debug!(error = %e, "skipping a candidate");
                        }
                    }
                    Ok(_) | Err(SignalingError::Timeout(_)) => {}
                    // The connection may still open without more candidates.
                    Err(_) => signaling_open = false,
                }
                continue;
            }
        };
        match event {
            Ok(Some(PeerEvent::Channel(c))) => got.push(c),
            Ok(Some(PeerEvent::Connected)) => {}
            Ok(Some(PeerEvent::Disconnected) | None) => return Err(ConnectError::Failed),
            Err(_) if satisfied(&got, &expect) => break,
            Err(_) => return Err(ConnectError::Timeout(wait)),
        }
    }
    Ok(got)
}
