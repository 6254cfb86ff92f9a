//! `ferry serve` as a receiving WebRTC peer: `POST /v1/rtc/offer` answers a browser-shaped offer
//! (the answer carries the server's candidate, so peers that do not trickle can connect), and so
//! does a `signal` sent to the peer id [`ferry_core::signal::SERVER_PEER`] in any room (candidates
//! trickled after it are added). Each
//! upload channel (`upload`, or seed 004's `video_upload`) the peer opens carries one file, with
//! the `control` channel beside it when the peer has one; each file becomes an object in the
//! store, through an ordinary upload session, and the peer is told its key (or why not).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::frames::{Frame, ReceiveLimits, decode};
use ferry_rtc::transfer::{CONTROL_LABEL, UPLOAD_LABELS, answer_complete, answer_error, receive};
use ferry_rtc::{DataChannel, Description, Peer, PeerConfig, PeerEvent, RemoteCandidates};

use crate::AppState;
use crate::error::ApiError;

/// How long a connected peer may go without opening a channel.
const IDLE: Duration = Duration::from_secs(120);

/// Answers `offer` and serves the peer; returns the answer and where its trickled candidates go.
pub(crate) async fn accept_offer(
    state: Arc<AppState>,
    offer: Description,
) -> Result<(Description, RemoteCandidates), ApiError> {
    let config = PeerConfig {
        bind: state.config.rtc_bind,
        ice_servers: state.config.ice_servers.clone(),
        ..PeerConfig::default()
    };
    let (peer, answer) = Peer::answer(&config, &offer)
        .await
        .map_err(|e| ApiError::bad_request("invalid_offer", format!("cannot answer this offer: {e}")))?;
    let candidates = peer.remote_candidates();
    tokio::spawn(serve_peer(state, peer));
    Ok((answer, candidates))
}

async fn serve_peer(state: Arc<AppState>, mut peer: Peer) {
    let mut control: Option<DataChannel> = None;
    let mut held: Option<PeerEvent> = None;
    loop {
        let event = match held.take() {
            Some(e) => Ok(Some(e)),
            None => tokio::select! {
                e = tokio::time::timeout(IDLE, peer.next_event()) => e,
                _ = state.shutdown.cancelled() => return,
            },
        };
        match event {
            Ok(Some(PeerEvent::Channel(c))) if c.label() == CONTROL_LABEL => control = Some(c),
            Ok(Some(PeerEvent::Channel(c))) if UPLOAD_LABELS.contains(&c.label()) => {
                // A control channel opens with its upload channel: give it a moment.
                if control.is_none()
                    && let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(1), peer.next_event()).await
                {
                    match next {
                        PeerEvent::Channel(c2) if c2.label() == CONTROL_LABEL => control = Some(c2),
                        other => held = Some(other),
                    }
                }
                tokio::spawn(receive_one(Arc::clone(&state), control.take(), c));
            }
            // Channels for other purposes (seed 004's `inference`) are not ferry's business.
            Ok(Some(PeerEvent::Channel(_) | PeerEvent::Connected)) => {}
            Ok(Some(PeerEvent::Disconnected) | None) | Err(_) => return,
        }
    }
}

/// Removes partial files not written to for `ttl`.
fn sweep(dir: &std::path::Path, ttl: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ttl));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

async fn receive_one(state: Arc<AppState>, mut control: Option<DataChannel>, mut upload: DataChannel) {
    // In the data dir, so a sender that comes back after a server restart resumes; transfers
    // nobody came back for within the session lifetime are removed.
    let work = state.config.data_dir.join("rtc-partial");
    let (dir, ttl) = (work.clone(), state.config.session_ttl);
    let _ = tokio::task::spawn_blocking(move || sweep(&dir, ttl)).await;
    let limits = ReceiveLimits { max_size: state.config.max_object_size, ..ReceiveLimits::default() };
    let received = match receive(control.as_mut(), &mut upload, &work, limits, |_| {}).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "a data-channel upload failed");
            answer_error(control.as_ref(), &upload, &e).await;
            return;
        }
    };
    // A name the key rules refuse (or none) still gets stored, under `rtc/` and a safe name.
    let key = match received.given_name.as_deref().map(ferry_core::key::normalize_key) {
        Some(Ok(k)) => k,
        _ => format!("rtc/{}", received.name),
    };
    let stored = state
        .sessions
        .store_file(&state.signer, &key, &received.path, received.size, &received.sha256, Default::default())
        .await;
    let _ = std::fs::remove_file(&received.path);
    match stored {
        Ok(info) => {
            if let Err(e) = answer_complete(control.as_ref(), &upload, &received, &info.key).await {
                tracing::info!(error = %e, "could not say a data-channel upload was stored");
            }
        }
        Err(e) => {
            let e =
                ferry_rtc::transfer::TransferError::Protocol(format!("the file could not be stored: {}", e.message));
            answer_error(control.as_ref(), &upload, &e).await;
            return;
        }
    }
    // The transfer is over: keepalives are still echoed, anything else is an error.
    let sender = upload.sender();
    while let Some(m) = upload.recv().await {
        let e = match decode(&m.data, limits.max_message) {
            Ok(Frame::Keepalive(bytes)) => {
                let _ = sender.send(m.binary, bytes.to_vec()).await;
                continue;
            }
            Ok(Frame::Chunk { index, .. }) => ferry_core::frames::FrameError::AfterComplete { index },
            Err(e) => e,
        };
        answer_error(control.as_ref(), &upload, &ferry_rtc::transfer::TransferError::Frame(e)).await;
        return;
    }
}
