//! `ferry serve` as a receiving WebRTC peer: `POST /v1/rtc/offer` answers a browser-shaped offer
//! (the answer carries the server's candidate, so peers that do not trickle can connect), and so
//! does a `signal` sent to the peer id [`ferry_core::signal::SERVER_PEER`] in any room (candidates
//! trickled after it are added). Each upload channel (`upload`, or seed 004's `video_upload`) the
//! peer opens carries one file, with the `control` channel beside it when the peer has one; the
//! file is written into the store as it arrives, as an ordinary upload session
//! ([`ferry_service::Service::ingest`]), and the peer is told its key (or why not).
//!
//! A transfer may name a processor (`processor` in `upload_start`, or [`OfferOptions`] for a peer
//! without a control channel); its results (`part_processed`, `partial_result`, `final_result`,
//! `failed`, as the event stream shows them) go back to the peer as they come, as JSON text on
//! the `control` channel, or on seed 004's `inference` channel when the peer opened one.
//!
//! A peer without a control channel can come back: its offer's answer carries a `resume` token,
//! and an offer made again with it (in the same room, or again over HTTP) carries on the same
//! upload; the peer is first told the chunks held (`resume_state`, text on the upload channel).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::api::CreateUpload;
use ferry_core::events::UploadEvent;
use ferry_core::frames::{Ranges, ReceiveLimits};
use ferry_core::transfer::{Announce, Fault, Placement};
use ferry_rtc::transfer::{
    CONTROL_LABEL, Sink, Stored, TransferError, UPLOAD_LABELS, clean_name, receive, receive_rest,
};
use ferry_rtc::{ChannelSender, DataChannel, Description, Peer, PeerConfig, PeerEvent, RemoteCandidates};
use ferry_service::{Ingest, IngestHeld, IngestPlan, Service, ServiceError};
use ferry_store::StoreError;

use crate::AppState;
use crate::error::ApiError;

/// How long a connected peer may go without opening a channel.
const IDLE: Duration = Duration::from_secs(120);
/// Seed 004's channel for results.
const INFERENCE_LABEL: &str = "inference";

/// What an offer may ask for the uploads of a peer without a control channel (the query of
/// `POST /v1/rtc/offer`, or fields beside a signalled offer).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct OfferOptions {
    /// The object's name (default: `rtc/upload-frames-TOKEN.bin`).
    pub name: Option<String>,
    /// A processor this server was configured with.
    pub processor: Option<String>,
    /// The token of an earlier connection's upload, to carry it on.
    pub resume: Option<String>,
}

/// The answer to an offer, and what the peer needs to know beside it.
pub(crate) struct Accepted {
    pub answer: Description,
    pub candidates: RemoteCandidates,
    /// Names this peer's first upload without a control channel, to resume it.
    pub resume: String,
}

/// Answers `offer` and serves the peer. `scope` is where it came from (`api`, or a room):
/// uploads begun in one scope cannot be resumed from another.
pub(crate) async fn accept_offer(
    state: Arc<AppState>,
    offer: Description,
    options: OfferOptions,
    scope: &str,
) -> Result<Accepted, ApiError> {
    let plan = FramesPlan::check(&state, options, scope).await?;
    let config = PeerConfig {
        bind: state.config.rtc_bind,
        ice_servers: state.config.ice_servers.clone(),
        public_ip: state.config.rtc_public_ip,
        mux: state.rtc_mux.get().cloned(),
        ..PeerConfig::default()
    };
    let (peer, answer) = Peer::answer(&config, &offer).await?;
    let candidates = peer.remote_candidates();
    let resume = plan.token.clone();
    tokio::spawn(serve_peer(state, peer, plan, scope.to_owned()));
    Ok(Accepted { answer, candidates, resume })
}

/// How the uploads of a peer without a control channel are stored.
#[derive(Clone)]
struct FramesPlan {
    token: String,
    key: String,
    processor: Option<String>,
    /// Names the upload for a peer that comes back with the token (`None`: no token was given).
    resume_key: Option<String>,
    /// What the earlier connection left, when the offer resumes one.
    held: Option<IngestHeld>,
}

impl FramesPlan {
    async fn check(state: &AppState, options: OfferOptions, scope: &str) -> Result<FramesPlan, ApiError> {
        if let Some(p) = &options.processor {
            state.service.check_processor(p)?;
        }
        let token = match &options.resume {
            Some(t) if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) => t.to_ascii_lowercase(),
            Some(_) => return Err(ApiError::bad_request("invalid_resume", "resume is the token of an earlier answer")),
            None => unique(16),
        };
        let mut key = match &options.name {
            Some(name) => ferry_core::key::normalize_key(name)?,
            None => format!("rtc/upload-frames-{token}.bin"),
        };
        let mut processor = options.processor;
        let resume_key = format!("rtc-frames/{scope}/{token}");
        let held = match options.resume {
            None => None,
            Some(_) => match state.service.ingest_held(&resume_key).await? {
                Some(held) if u32::try_from(held.align).is_ok() && held.align > 0 => {
                    // Carried on as it began: a name or processor given again must be the same.
                    if options.name.is_some_and(|_| key != held.name)
                        || processor.as_ref().is_some_and(|p| Some(p) != held.processor.as_ref())
                    {
                        return Err(ApiError::conflict(
                            "resume_mismatch",
                            format!("that upload is {:?} with processor {:?}", held.name, held.processor),
                        ));
                    }
                    key.clone_from(&held.name);
                    processor.clone_from(&held.processor);
                    Some(held)
                }
                _ => {
                    return Err(ApiError::not_found(
                        "resume_not_found",
                        "nothing here to resume under that token (finished, expired, or begun elsewhere)",
                    ));
                }
            },
        };
        Ok(FramesPlan { token, key, processor, resume_key: Some(resume_key), held })
    }
}

/// Where a peer's results go: its control channel, or the `inference` channel it opens.
#[derive(Clone)]
enum Results {
    Control(ChannelSender),
    Inference(Arc<Mutex<Option<ChannelSender>>>),
}

impl Results {
    fn sender(&self) -> Option<ChannelSender> {
        match self {
            Results::Control(tx) => Some(tx.clone()),
            Results::Inference(slot) => slot.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

async fn serve_peer(state: Arc<AppState>, mut peer: Peer, plan: FramesPlan, scope: String) {
    let mut control: Option<DataChannel> = None;
    let mut held: Option<PeerEvent> = None;
    let inference = Arc::new(Mutex::new(None));
    // The offer's plan is for its first upload without a control channel; others get their own.
    let mut plan = Some(plan);
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
            Ok(Some(PeerEvent::Channel(c))) if c.label() == INFERENCE_LABEL => {
                *inference.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.sender());
                // Its messages are the peer's own business; they are read and let go.
                tokio::spawn(async move {
                    let mut c = c;
                    while c.recv().await.is_some() {}
                });
            }
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
                let control = control.take();
                let results = match &control {
                    Some(c) => Results::Control(c.sender()),
                    None => Results::Inference(Arc::clone(&inference)),
                };
                let frames = match (&control, plan.take()) {
                    (None, Some(p)) => p,
                    (_, p) => {
                        plan = p;
                        fresh_plan()
                    }
                };
                let sink = StoreSink {
                    service: Arc::clone(&state.service),
                    ingest: None,
                    scope: scope.clone(),
                    frames,
                    results: None,
                };
                tokio::spawn(receive_one(Arc::clone(&state), control, c, sink, results));
            }
            Ok(Some(PeerEvent::Channel(_) | PeerEvent::Connected)) => {}
            Ok(Some(PeerEvent::Disconnected) | None) | Err(_) => return,
        }
    }
}

/// The plan of a peer's second (or later) upload without a control channel: no token was
/// handed out for it, so it cannot be resumed.
fn fresh_plan() -> FramesPlan {
    let token = unique(16);
    FramesPlan { key: format!("rtc/upload-frames-{token}.bin"), resume_key: None, token, processor: None, held: None }
}

async fn receive_one(
    state: Arc<AppState>,
    mut control: Option<DataChannel>,
    mut upload: DataChannel,
    mut sink: StoreSink,
    results: Results,
) {
    let limits = ReceiveLimits { max_size: state.config.max_object_size, ..ReceiveLimits::default() };
    let (tx, started) = tokio::sync::oneshot::channel();
    sink.results = Some((results, tx));
    tokio::spawn(forward_results(Arc::clone(&state), started));
    let outcome = match (control.as_mut(), sink.frames.held.clone()) {
        (None, Some(held)) => {
            let chunk = u32::try_from(held.align).unwrap_or(u32::MAX);
            let total = u32::try_from(held.max_size.div_ceil(held.align)).unwrap_or(u32::MAX);
            let chunks = chunks_in(&held.stored, held.align, total);
            let token = sink.frames.token.clone();
            receive_rest(&mut upload, &mut sink, limits, token, total, chunk, chunks, |_| {}).await
        }
        (control, _) => receive(control, &mut upload, &mut sink, limits, |_| {}).await,
    };
    match outcome {
        // The transfer is over: keepalives are still echoed, anything else is an error.
        Ok((_, lingering)) => lingering.until_closed(&mut upload).await,
        Err(e) => tracing::info!(error = %e, "a data-channel upload failed"),
    }
}

/// Sends a processed upload's results to the peer as its event log records them, from the
/// upload the ingest names once it starts, until the last result or until the peer is gone.
async fn forward_results(state: Arc<AppState>, started: tokio::sync::oneshot::Receiver<(String, Results)>) {
    let Ok((upload_id, results)) = started.await else { return };
    let mut follow = match state.service.follow(&upload_id, 0, state.shutdown.clone()).await {
        Ok(f) => f,
        Err(e) => return tracing::debug!(upload_id, error = %e, "cannot follow an upload's results"),
    };
    while let Some(record) = follow.next().await {
        if !matches!(
            record.event,
            UploadEvent::PartProcessed { .. }
                | UploadEvent::PartialResult { .. }
                | UploadEvent::FinalResult(_)
                | UploadEvent::Failed { .. }
        ) {
            continue;
        }
        let Some(tx) = results.sender() else { continue };
        let Ok(text) = serde_json::to_vec(&*record) else { continue };
        if tx.send(false, text).await.is_err() {
            return;
        }
    }
}

/// Writes a transfer into the store as it arrives, through the service's ingest path.
struct StoreSink {
    service: Arc<Service>,
    ingest: Option<Ingest>,
    scope: String,
    frames: FramesPlan,
    /// Where results go, and who to tell the upload's id once it starts with a processor.
    results: Option<(Results, tokio::sync::oneshot::Sender<(String, Results)>)>,
}

impl StoreSink {
    fn started(&mut self, ingest: Ingest, processor: bool) {
        if processor && let Some((results, tx)) = self.results.take() {
            let _ = tx.send((ingest.upload_id().to_owned(), results));
        }
        self.ingest = Some(ingest);
    }
}

fn request(name: String, size: u64, sha256: Option<String>, processor: Option<String>) -> CreateUpload {
    CreateUpload {
        name,
        size,
        part_size: None,
        sha256,
        content_type: None,
        metadata: Default::default(),
        processor,
        webhook_url: None,
    }
}

/// What the peer is told when the service will not take its transfer, with the code the HTTP
/// API would answer; the store's own failures stay storage errors.
fn fault(e: ServiceError) -> TransferError {
    let fault = match e {
        ServiceError::Store(StoreError::ChecksumMismatch { expected, actual }) => Fault::Checksum { expected, actual },
        e => {
            let api = ApiError::from(e);
            if api.status.is_client_error() {
                Fault::Refused { code: api.code.to_owned(), message: api.message }
            } else {
                Fault::Storage(api.message)
            }
        }
    };
    TransferError::Fault(fault)
}

impl Sink for StoreSink {
    async fn held(&mut self, a: &Announce) -> Result<Ranges, TransferError> {
        let name = ferry_core::key::normalize_key(&a.name).unwrap_or_else(|_| format!("rtc/{}", clean_name(&a.name)));
        let plan = IngestPlan {
            request: request(name, a.size, a.sha256.clone(), a.processor.clone()),
            min_size: a.size,
            align: u64::from(a.chunk_size),
            resume_key: Some(format!("rtc/{}/{}", self.scope, a.transfer_id)),
        };
        let ingest = self.service.ingest(plan).await.map_err(fault)?;
        let held = chunks_in(&ingest.stored_ranges(), u64::from(a.chunk_size), a.total_chunks);
        self.started(ingest, a.processor.is_some());
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
            let f = &self.frames;
            let plan = IngestPlan {
                request: request(f.key.clone(), max, None, f.processor.clone()),
                min_size: min,
                align: chunk,
                resume_key: f.resume_key.clone(),
            };
            let processor = f.processor.is_some();
            let ingest = self.service.ingest(plan).await.map_err(fault)?;
            self.started(ingest, processor);
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

/// The chunks of `chunk` bytes (at most `total`) that the stored byte ranges hold: parts hold
/// whole chunks, so what is stored is whole chunks.
fn chunks_in(stored: &[(u64, u64)], chunk: u64, total: u32) -> Ranges {
    let chunk = chunk.max(1);
    let mut held = Ranges::default();
    for (start, end) in stored {
        for i in start / chunk..end.div_ceil(chunk).min(u64::from(total)) {
            held.insert(u32::try_from(i).unwrap_or(u32::MAX));
        }
    }
    held
}

fn unique(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}
