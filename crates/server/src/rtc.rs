//! `ferry serve` as a receiving WebRTC peer: `POST /v1/rtc/offer` answers a browser-shaped offer
//! (the answer carries the server's candidate, so peers that do not trickle can connect), and so
//! does a `signal` sent to the peer id [`ferry_core::signal::SERVER_PEER`] in any room (candidates
//! trickled after it are added). Each upload channel (`upload`, or seed 004's `video_upload`) the
//! peer opens carries one file, with the `control` channel beside it when the peer has one; the
//! file is written into the store as it arrives, as an ordinary upload session
//! ([`ferry_service::Service::ingest`]), and the peer is told its key (or why not).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::api::CreateUpload;
use ferry_core::frames::{Ranges, ReceiveLimits};
use ferry_core::transfer::{Announce, Fault, Placement};
use ferry_rtc::transfer::{CONTROL_LABEL, Sink, Stored, TransferError, UPLOAD_LABELS, clean_name, receive};
use ferry_rtc::{DataChannel, Description, Peer, PeerConfig, PeerEvent, RemoteCandidates};
use ferry_service::{Ingest, IngestPlan, Service, ServiceError};
use ferry_store::StoreError;

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
        public_ip: state.config.rtc_public_ip,
        mux: state.rtc_mux.get().cloned(),
        ..PeerConfig::default()
    };
    let (peer, answer) = Peer::answer(&config, &offer).await?;
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

async fn receive_one(state: Arc<AppState>, mut control: Option<DataChannel>, mut upload: DataChannel) {
    let limits = ReceiveLimits { max_size: state.config.max_object_size, ..ReceiveLimits::default() };
    let mut sink = StoreSink { service: Arc::clone(&state.service), ingest: None };
    match receive(control.as_mut(), &mut upload, &mut sink, limits, |_| {}).await {
        // The transfer is over: keepalives are still echoed, anything else is an error.
        Ok((_, lingering)) => lingering.until_closed(&mut upload).await,
        Err(e) => tracing::info!(error = %e, "a data-channel upload failed"),
    }
}

/// Writes a transfer into the store as it arrives, through the service's ingest path.
struct StoreSink {
    service: Arc<Service>,
    ingest: Option<Ingest>,
}

/// A sender's name as a key: its own when the key rules take it, else a safe one under `rtc/`.
fn key_for(name: &str) -> String {
    ferry_core::key::normalize_key(name).unwrap_or_else(|_| format!("rtc/{}", clean_name(name)))
}

fn request(name: String, size: u64, sha256: Option<String>) -> CreateUpload {
    CreateUpload {
        name,
        size,
        part_size: None,
        sha256,
        content_type: None,
        metadata: Default::default(),
        processor: None,
        webhook_url: None,
    }
}

fn fault(e: ServiceError) -> TransferError {
    let fault = match e {
        ServiceError::Store(StoreError::ChecksumMismatch { expected, actual }) => Fault::Checksum { expected, actual },
        e => Fault::Storage(e.to_string()),
    };
    TransferError::Fault(fault)
}

impl Sink for StoreSink {
    async fn held(&mut self, a: &Announce) -> Result<Ranges, TransferError> {
        let plan = IngestPlan {
            request: request(key_for(&a.name), a.size, a.sha256.clone()),
            min_size: a.size,
            align: u64::from(a.chunk_size),
            resume_key: Some(format!("rtc/{}", a.transfer_id)),
        };
        let ingest = self.service.ingest(plan).await.map_err(fault)?;
        // Parts hold whole chunks, so what is stored is whole chunks.
        let chunk = u64::from(a.chunk_size.max(1));
        let mut held = Ranges::default();
        for (start, end) in ingest.stored_ranges() {
            let (first, last) = (start / chunk, end.div_ceil(chunk));
            for i in first..last.min(u64::from(a.total_chunks)) {
                held.insert(u32::try_from(i).unwrap_or(u32::MAX));
            }
        }
        self.ingest = Some(ingest);
        Ok(held)
    }

    async fn write(&mut self, at: Placement, payload: &[u8]) -> Result<(), TransferError> {
        if self.ingest.is_none() {
            // A peer that only sends frames: the size is known within a chunk, from the first.
            let (total, chunk) = (u64::from(at.total_chunks), u64::from(at.chunk_size));
            let (min, max) = if total == 1 {
                (payload.len() as u64, payload.len() as u64)
            } else {
                ((total - 1) * chunk + 1, total * chunk)
            };
            let name = format!("rtc/upload-frames-{}.bin", unique());
            let plan = IngestPlan { request: request(name, max, None), min_size: min, align: chunk, resume_key: None };
            self.ingest = Some(self.service.ingest(plan).await.map_err(fault)?);
        }
        let Some(ingest) = self.ingest.as_mut() else { return Ok(()) };
        ingest.write(at.offset, payload).await.map_err(fault)
    }

    async fn checkpoint(&mut self, _held: &Ranges) -> Result<(), TransferError> {
        // Parts are durable once stored; a sender that comes back is told what the store holds.
        Ok(())
    }

    async fn finish(&mut self, size: u64, sha256: Option<&str>) -> Result<Stored, TransferError> {
        let Some(ingest) = self.ingest.take() else {
            return Err(TransferError::Fault(Fault::Storage("nothing was received".into())));
        };
        let info = ingest.finish(size, sha256.map(str::to_owned)).await.map_err(fault)?;
        Ok(Stored { key: info.key, sha256: info.sha256.unwrap_or_default() })
    }

    async fn abandon(&mut self, keep: bool, _held: &Ranges) {
        if let Some(ingest) = self.ingest.take()
            && let Err(e) = ingest.abandon(keep).await
        {
            tracing::warn!(error = %e, "could not set aside an unfinished data-channel upload");
        }
    }
}

fn unique() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}
