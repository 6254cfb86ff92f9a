//! The client's side of a job: [`submit`] stores the input and sends the job to a worker, follows
//! it over a data channel to the job's own peer (or, without one, through the room's manifest)
//! and steers it with [`Command`]s; [`steer`] reaches a running job from anywhere; [`attach`]
//! waits for the result of a job whose client is long gone; [`download_outputs`] fetches what
//! it produced, checked against the SHA-256s the worker recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::{Api, DownloadOptions, UploadOptions};
use ferry_core::job::{JobMessage, JobResult, JobSignal, Placement, PlacementAction, job_peer, valid_job_id};
use ferry_core::signal::{Inbound, Outbound, Role};
use ferry_core::transport::Choice;
use ferry_rtc::connect;
use ferry_rtc::messages::{MESSAGES_LABEL, Messages};
use ferry_rtc::signaling::{Signaling, SignalingError};
use tokio::sync::mpsc;

use crate::Connection;
use crate::deliver::{Delivered, Rules, deliver};
use crate::error::{JobError, io};

/// How long a job followed through the manifest may take.
const JOB_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A job to send.
#[derive(Debug, Clone)]
pub struct Submission {
    pub room: String,
    /// A local file (stored first) or the key of an object already on the server.
    pub input: String,
    /// Appended to the worker's command.
    pub args: Vec<String>,
    /// The worker to ask; `None`: a free one.
    pub to: Option<String>,
    pub job_id: String,
    /// How long to wait for a worker and for its answers.
    pub wait: Duration,
    /// How a local input travels.
    pub rules: Rules,
}

/// What a client can tell a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Cancel,
}

impl Command {
    fn message(self, job_id: &str) -> JobMessage {
        let job_id = job_id.to_owned();
        match self {
            Command::Pause => JobMessage::Pause { job_id },
            Command::Resume => JobMessage::Resume { job_id },
            Command::Cancel => JobMessage::Cancel { job_id },
        }
    }
}

/// What a submission reports while it runs; `elapsed` counts from the job request.
#[derive(Debug)]
pub enum SubmitEvent<'a> {
    /// How the local input travels, and why (again if it falls back).
    Transport(&'a Choice),
    /// The input is stored.
    Input {
        name: &'a str,
        key: &'a str,
        size: u64,
        sha256: &'a str,
        over: &'a str,
    },
    Accepted {
        worker: &'a str,
        elapsed: Duration,
    },
    /// No data channel to the job: it is followed through the room's manifest instead.
    Fallback {
        reason: String,
    },
    /// A message from the job (state, progress, log).
    Message {
        message: &'a JobMessage,
        elapsed: Duration,
    },
    /// A command went to the job.
    Sent(Command),
}

/// Stores the input if it is a local file, places the job and follows it to its result.
/// `commands` carry what the user asks of the job while it runs.
pub async fn submit(
    conn: &Connection,
    s: &Submission,
    mut commands: mpsc::Receiver<Command>,
    mut on_event: impl FnMut(SubmitEvent<'_>),
) -> Result<JobResult, JobError> {
    if !valid_job_id(&s.job_id) {
        return Err(JobError::Usage("job ids are 1 to 60 letters, digits, '-', '_'".into()));
    }
    let input =
        if Path::new(&s.input).is_file() { store_input(conn, s, &mut on_event).await? } else { s.input.clone() };
    let job_id = s.job_id.as_str();
    let mut sig = Signaling::join(&conn.server, &s.room, Role::Client, None, &conn.token).await?;
    let request = JobSignal::JobRequest { job_id: job_id.to_owned(), input, args: s.args.clone() };
    let requested = Instant::now();
    let (worker, peer) = place(&mut sig, s, &request).await?;
    on_event(SubmitEvent::Accepted { worker: &worker, elapsed: requested.elapsed() });
    let (_peer, mut chans) = match connect::offer(&mut sig, &peer, &conn.peer, &[MESSAGES_LABEL], s.wait).await {
        Ok(c) => c,
        // No data channel (a NAT in the way, UDP blocked): the job runs anyway, and its result
        // still arrives, through the room's manifest, without the live progress.
        Err(e) => {
            on_event(SubmitEvent::Fallback { reason: e.to_string() });
            return wait_in_manifest(&conn.api, &s.room, job_id, JOB_WAIT, || {}).await;
        }
    };
    let channel = chans.pop().ok_or_else(|| JobError::Usage("the job opened no message channel".into()))?;
    let mut messages = Messages::new(channel);
    let sender = messages.sender();
    let mut signaling_open = true;
    let mut commands_open = true;
    loop {
        let next = tokio::select! {
            m = messages.recv::<JobMessage>() => m,
            c = commands.recv(), if commands_open => {
                match c {
                    Some(c) => {
                        sender.send(&c.message(job_id)).await?;
                        on_event(SubmitEvent::Sent(c));
                    }
                    None => commands_open = false,
                }
                continue;
            }
            // A worker that dies takes its signaling connection with it at once; its side of the
            // data channel would only time out.
            m = sig.recv(Duration::from_secs(3600)), if signaling_open => {
                match m {
                    Ok(Outbound::PeerLeft { peer_id }) if peer_id == worker => {
                        // A result already on its way still counts.
                        return match tokio::time::timeout(Duration::from_secs(1), messages.recv::<JobMessage>()).await {
                            Ok(Some(Ok(JobMessage::Result(r)))) => Ok(r),
                            _ => Err(JobError::WorkerLost { job_id: job_id.to_owned(), worker }),
                        };
                    }
                    Ok(_) | Err(SignalingError::Timeout(_)) => {}
                    Err(_) => signaling_open = false,
                }
                continue;
            }
        };
        match next {
            Some(Ok(JobMessage::Result(r))) => return Ok(r),
            Some(Ok(m)) => on_event(SubmitEvent::Message { message: &m, elapsed: requested.elapsed() }),
            Some(Err(_)) => {}
            None => {
                if gone(&mut sig, &worker).await {
                    return Err(JobError::WorkerLost { job_id: job_id.to_owned(), worker });
                }
                return Err(JobError::Detached { job_id: job_id.to_owned(), room: s.room.clone() });
            }
        }
    }
}

/// Stores the local input under `rooms/{room}/inputs/{job}/`, by the rules; returns its key.
async fn store_input(
    conn: &Connection,
    s: &Submission,
    on_event: &mut impl FnMut(SubmitEvent<'_>),
) -> Result<String, JobError> {
    let path = PathBuf::from(&s.input);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| JobError::Usage("the input file has no name".into()))?;
    let key = format!("rooms/{}/inputs/{}/{name}", s.room, s.job_id);
    let sent = deliver(conn, &s.room, &s.rules, &path, &key, |c| on_event(SubmitEvent::Transport(c))).await?;
    let (key, size, sha256, over) = match sent {
        Delivered::Sent(r) => (r.stored_as, r.size, r.sha256, "a data channel"),
        Delivered::Parts => {
            let mut opts = UploadOptions::new(ferry_client::journal::default_state_dir());
            opts.key = Some(key.clone());
            let (events, _) = ferry_client::events::channel();
            let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
            let up = ferry_client::upload(Arc::clone(&conn.api), path.clone(), opts, events, permits).await?;
            (up.key, up.size, up.sha256, "HTTP parts")
        }
    };
    on_event(SubmitEvent::Input { name, key: &key, size, sha256: &sha256, over });
    Ok(key)
}

/// Asks for the job until a worker takes it; returns the worker and the job's peer id.
async fn place(sig: &mut Signaling, s: &Submission, request: &JobSignal) -> Result<(String, String), JobError> {
    let mut placement = Placement::new(&s.job_id, s.to.as_deref(), sig.peers());
    let deadline = tokio::time::Instant::now() + s.wait;
    loop {
        while let Some(action) = placement.poll() {
            match action {
                PlacementAction::Ask(worker) => {
                    let payload = serde_json::to_value(request).unwrap_or_default();
                    sig.send(Inbound::PeerMessage { to: worker, payload }).await?;
                }
                PlacementAction::Placed { worker, peer } => return Ok((worker, peer)),
                PlacementAction::Fail(why) => return Err(JobError::Unplaced(why)),
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sig.recv(left).await {
            Ok(message) => placement.handle(&message),
            Err(SignalingError::Timeout(_)) => {
                let why = match placement.asking() {
                    Some(w) => format!("no answer from {w} within {:?}", s.wait),
                    None => match &s.to {
                        Some(w) => format!("{w} was not in the room within {:?}", s.wait),
                        None => format!("no worker in the room within {:?}", s.wait),
                    },
                };
                return Err(JobError::Unplaced(why));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the worker left the room (within a moment of the job's channel closing): then the job
/// ended without a result, rather than the connection to it being lost.
async fn gone(sig: &mut Signaling, worker: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sig.recv(left).await {
            Ok(Outbound::PeerLeft { peer_id }) if peer_id == worker => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Sends `command` to the running job `job_id` in `room`, from anywhere.
pub async fn steer(conn: &Connection, room: &str, job_id: &str, command: Command) -> Result<(), JobError> {
    if !valid_job_id(job_id) {
        return Err(JobError::Usage("job ids are 1 to 60 letters, digits, '-', '_'".into()));
    }
    let mut sig = Signaling::join(&conn.server, room, Role::Client, None, &conn.token).await?;
    let to = job_peer(job_id);
    if !sig.peers().iter().any(|p| p.peer_id == to) {
        return Err(JobError::Usage(format!("no running job {job_id} in room {room}")));
    }
    let payload = serde_json::to_value(command.message(job_id)).unwrap_or_default();
    sig.send(Inbound::PeerMessage { to, payload }).await?;
    // A refusal (the job ended meanwhile) arrives as an error; silence means it was delivered.
    match sig.recv(Duration::from_millis(500)).await {
        Err(e @ SignalingError::Refused { .. }) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Waits up to `wait` for the job's entry in the room's manifest: a worker records every job it
/// ran, whether or not its client stayed to hear the result. `on_waiting` is called once if the
/// result is not there at first.
pub async fn attach(
    conn: &Connection,
    room: &str,
    job_id: &str,
    wait: Duration,
    on_waiting: impl FnOnce(),
) -> Result<JobResult, JobError> {
    if !valid_job_id(job_id) {
        return Err(JobError::Usage("job ids are 1 to 60 letters, digits, '-', '_'".into()));
    }
    wait_in_manifest(&conn.api, room, job_id, wait, on_waiting).await
}

async fn wait_in_manifest(
    api: &Api,
    room: &str,
    job_id: &str,
    wait: Duration,
    on_waiting: impl FnOnce(),
) -> Result<JobResult, JobError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut on_waiting = Some(on_waiting);
    loop {
        let (m, _) = api.manifest(room).await?;
        if let Some(e) = m.entries.into_iter().find(|e| e.job_id == job_id) {
            return Ok(JobResult { job_id: e.job_id, status: e.status, message: None, outputs: e.outputs });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JobError::Unplaced(format!("job {job_id} has no result in room {room} after {wait:?}")));
        }
        if let Some(f) = on_waiting.take() {
            f();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Downloads the job's outputs into `dir` (under their paths inside the job's output dir),
/// checking each against the SHA-256 the worker recorded; returns where they went.
pub async fn download_outputs(
    conn: &Connection,
    room: &str,
    result: &JobResult,
    dir: &Path,
) -> Result<Vec<PathBuf>, JobError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let prefix = format!("rooms/{room}/results/{}/", result.job_id);
    let mut downloaded = Vec::new();
    for o in &result.outputs {
        let rel = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        let dest =
            rel.split('/').filter(|s| !s.is_empty() && *s != "." && *s != "..").fold(dir.to_owned(), |p, s| p.join(s));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let (events, _) = ferry_client::events::channel();
        let opts = DownloadOptions::new(ferry_client::journal::default_state_dir());
        let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
        let got =
            ferry_client::download(Arc::clone(&conn.api), o.key.clone(), dest.clone(), opts, events, permits).await?;
        if got.sha256 != o.sha256 {
            return Err(JobError::Integrity(format!(
                "{} arrived with SHA-256 {}, not the worker's {}",
                o.key, got.sha256, o.sha256
            )));
        }
        downloaded.push(dest);
    }
    Ok(downloaded)
}
