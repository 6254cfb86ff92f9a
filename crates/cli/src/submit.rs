//! `ferry submit`: sends a job to a worker in a room and follows it to its result; `ferry job
//! pause|resume|cancel` steer a running job from anywhere.
//!
//! A local file is first stored under `rooms/{room}/inputs/{job}/`, over the transport seed 001's
//! rules choose (a data channel to the server's peer for a small file, resumable HTTP parts for
//! a large one or when no connection opens); an object key is used as it is. The worker reads
//! its input from the store either way. The job's progress arrives over a WebRTC data channel to the
//! job's own peer; Ctrl-C sends `cancel` and waits for the worker's answer, and on a terminal
//! the keys `p` and `r` pause and resume it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferry_client::{DownloadOptions, UploadOptions};
use ferry_core::job::{JobMessage, JobResult, JobSignal, job_peer, valid_job_id};
use ferry_core::signal::{Inbound, Outbound, Role};
use ferry_rtc::connect;
use ferry_rtc::messages::{MESSAGES_LABEL, Messages};
use ferry_rtc::signaling::{Signaling, SignalingError};

use crate::client::{OutputArgs, ServerArgs, human_bytes};

#[derive(Args)]
pub struct SubmitArgs {
    /// The room whose workers run the job.
    #[arg(long, env = "FERRY_ROOM")]
    room: String,

    /// A local file (uploaded first) or the key of an object already on the server.
    input: String,

    /// Arguments for the job, appended to the worker's command.
    #[arg(last = true)]
    args: Vec<String>,

    /// The worker to ask. Default: a free one: each worker in the room is asked in turn until
    /// one takes the job (waiting for one to join if the room has none).
    #[arg(long)]
    to: Option<String>,

    /// This job's id. Default: a random one.
    #[arg(long)]
    job_id: Option<String>,

    /// Download the job's outputs into this directory.
    #[arg(long)]
    download: Option<PathBuf>,

    /// How long to wait for a worker and for its answers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,

    #[command(flatten)]
    transport: crate::hybrid::TransportArgs,

    #[command(flatten)]
    net: crate::client::PeerNetArgs,

    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    output: OutputArgs,
}

fn random_id() -> anyhow::Result<String> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for a job id: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let token = args.server.token()?;
    let api = args.server.api()?;
    let out = args.output;
    let job_id = match args.job_id.clone() {
        Some(id) => id,
        None => random_id()?,
    };
    if !valid_job_id(&job_id) {
        bail!("job ids are 1 to 60 letters, digits, '-', '_'");
    }
    let say = |human: String, json: serde_json::Value| {
        if out.json {
            crate::output::line(&json.to_string());
        } else {
            eprintln!("{human}");
        }
    };

    let input = if Path::new(&args.input).is_file() {
        store_input(&args, &api, &job_id, &say).await?
    } else {
        args.input.clone()
    };

    let mut sig = Signaling::join(&args.server.server, &args.room, Role::Client, None, &token).await?;
    let request = JobSignal::JobRequest { job_id: job_id.clone(), input: input.clone(), args: args.args.clone() };
    let requested = std::time::Instant::now();
    let (worker, peer) = place_job(&mut sig, args.to.as_deref(), &request, &job_id, args.wait).await?;
    // JSON lines carry the time since the request, so a caller can tell how soon the job spoke.
    let stamped = |m: &JobMessage| -> anyhow::Result<String> {
        let mut v = serde_json::to_value(m)?;
        v["elapsed_ms"] = (requested.elapsed().as_secs_f64() * 1000.0).into();
        Ok(v.to_string())
    };
    say(
        format!("job {job_id} accepted by {worker}"),
        serde_json::json!({"type": "accepted", "job_id": job_id, "worker": worker,
            "elapsed_ms": requested.elapsed().as_secs_f64() * 1000.0}),
    );

    let config = args.net.config();
    let (_peer, mut chans) = match connect::offer(&mut sig, &peer, &config, &[MESSAGES_LABEL], args.wait).await {
        Ok(c) => c,
        // No data channel (a NAT in the way, UDP blocked): the job runs anyway, and its result
        // still arrives, through the room's manifest, without the live progress.
        Err(e) => {
            say(
                format!("no data channel to job {job_id} ({e}); following it through the room's manifest instead"),
                serde_json::json!({"type": "fallback", "job_id": job_id, "reason": e.to_string()}),
            );
            let result = wait_in_manifest(&api, &args.room, &job_id, JOB_WAIT, out).await?;
            return finish_result(&api, &args.room, result, args.download.as_deref(), out).await;
        }
    };
    let mut messages = Messages::new(chans.pop().context("no message channel")?);
    let commands = messages.sender();
    let mut keys = crate::keys::Keys::start();
    if keys.is_some() && !out.json {
        eprintln!("keys: p pauses the job, r resumes it, Ctrl-C cancels it");
    }
    let mut cancel_sent = false;
    let mut signaling_open = true;
    let result: JobResult = loop {
        let next = tokio::select! {
            m = messages.recv::<JobMessage>() => m,
            _ = tokio::signal::ctrl_c(), if !cancel_sent => {
                cancel_sent = true;
                say(format!("cancelling job {job_id}…"), serde_json::json!({"type": "cancelling", "job_id": job_id}));
                commands.send(&JobMessage::Cancel { job_id: job_id.clone() }).await?;
                continue;
            }
            key = async { keys.as_mut()?.next().await }, if keys.is_some() => {
                let command = match key {
                    Some(b'p' | b'P') => JobMessage::Pause { job_id: job_id.clone() },
                    Some(b'r' | b'R') => JobMessage::Resume { job_id: job_id.clone() },
                    Some(_) => continue,
                    // stdin closed: no more keys, and the terminal's settings back.
                    None => {
                        keys = None;
                        continue;
                    }
                };
                commands.send(&command).await?;
                continue;
            }
            // A worker that dies takes its signaling connection with it at once; its side of the
            // data channel would only time out.
            m = sig.recv(Duration::from_secs(3600)), if signaling_open => {
                match m {
                    Ok(Outbound::PeerLeft { peer_id }) if peer_id == worker => {
                        // A result already on its way still counts.
                        match tokio::time::timeout(Duration::from_secs(1), messages.recv::<JobMessage>()).await {
                            Ok(Some(Ok(JobMessage::Result(r)))) => break r,
                            _ => return Err(worker_lost(&say, &job_id, &worker)),
                        }
                    }
                    Ok(_) | Err(SignalingError::Timeout(_)) => {}
                    Err(_) => signaling_open = false,
                }
                continue;
            }
        };
        match next {
            Some(Ok(JobMessage::Result(r))) => break r,
            Some(Ok(m @ JobMessage::Progress { .. })) if out.json => crate::output::line(&stamped(&m)?),
            Some(Ok(JobMessage::Progress { data, .. })) => eprintln!("progress {data}"),
            Some(Ok(m @ (JobMessage::Log { .. } | JobMessage::State { .. }))) if out.json => {
                crate::output::line(&stamped(&m)?)
            }
            Some(Ok(JobMessage::Log { line, .. })) => eprintln!("  | {line}"),
            Some(Ok(JobMessage::State { state, .. })) => eprintln!("job {job_id}: {state}"),
            Some(Ok(_) | Err(_)) => {}
            None => {
                if gone(&mut sig, &worker).await {
                    return Err(worker_lost(&say, &job_id, &worker));
                }
                bail!(
                    "the connection to job {job_id} closed before its result; it runs on: `ferry job attach {job_id} --room {}` waits for it",
                    args.room
                )
            }
        }
    };

    finish_result(&api, &args.room, result, args.download.as_deref(), out).await
}

/// Stores the local input under `rooms/{room}/inputs/{job}/`, by the rules; returns its key.
async fn store_input(
    args: &SubmitArgs,
    api: &Arc<ferry_client::Api>,
    job_id: &str,
    say: &impl Fn(String, serde_json::Value),
) -> anyhow::Result<String> {
    let path = PathBuf::from(&args.input);
    let name = path.file_name().and_then(|n| n.to_str()).context("the input file has no name")?;
    let key = format!("rooms/{}/inputs/{job_id}/{name}", args.room);
    let sent = crate::hybrid::send(&args.room, &args.transport, &args.net, &args.server, args.output, &path, &key)
        .await
        .context("sending the input")?;
    let (key, size, sha256, over) = match sent {
        crate::hybrid::Outcome::Sent(r) => (r.stored_as, r.size, r.sha256, "a data channel"),
        crate::hybrid::Outcome::Parts => {
            let mut opts = UploadOptions::new(ferry_client::journal::default_state_dir());
            opts.key = Some(key.clone());
            let (events, _) = ferry_client::events::channel();
            let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
            let up = ferry_client::upload(Arc::clone(api), path.clone(), opts, events, permits)
                .await
                .context("uploading the input")?;
            (up.key, up.size, up.sha256, "HTTP parts")
        }
    };
    say(
        format!("input {name}: {} stored as {key} over {over}", human_bytes(size)),
        serde_json::json!({"type": "input", "key": key, "size": size, "sha256": sha256}),
    );
    Ok(key)
}

/// Reports a job whose worker went away before its result.
fn worker_lost(say: &impl Fn(String, serde_json::Value), job_id: &str, worker: &str) -> anyhow::Error {
    say(
        format!("job {job_id}: failed: {worker} went away before it finished"),
        serde_json::json!({"type": "result", "job_id": job_id, "status": "failed",
            "message": format!("{worker} went away before the job finished"), "outputs": []}),
    );
    anyhow::anyhow!("job {job_id} failed: {worker} went away before it finished")
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

/// Asks for the job until a worker takes it: the one named, or each worker in the room in turn
/// (waiting for one to join if there is none), a busy one passing it on to the next. Returns the
/// worker and the job's peer id.
async fn place_job(
    sig: &mut Signaling,
    wanted: Option<&str>,
    request: &JobSignal,
    job_id: &str,
    wait: Duration,
) -> anyhow::Result<(String, String)> {
    let fits = |peer_id: &str, role: Role| wanted.map_or(role == Role::Worker, |w| w == peer_id);
    let mut untried: Vec<String> =
        sig.peers().iter().filter(|p| fits(&p.peer_id, p.role)).map(|p| p.peer_id.clone()).collect();
    let mut busy: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    loop {
        let worker = if untried.is_empty() {
            if !busy.is_empty() {
                bail!("every worker in the room is busy: {}", busy.join("; "));
            }
            match sig.recv(left()).await {
                Ok(Outbound::PeerJoined { peer_id, role }) if fits(&peer_id, role) => peer_id,
                Ok(_) => continue,
                Err(SignalingError::Timeout(_)) => {
                    bail!("no worker in the room within {}", humantime::format_duration(wait))
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            untried.remove(0)
        };
        sig.send(Inbound::PeerMessage { to: worker.clone(), payload: serde_json::to_value(request)? }).await?;
        loop {
            match sig.recv(left()).await.with_context(|| format!("no answer from {worker}"))? {
                Outbound::PeerMessage { from, payload } if from == worker => match serde_json::from_value(payload) {
                    Ok(JobSignal::JobAccepted { job_id: id, peer }) if id == job_id => return Ok((worker, peer)),
                    Ok(JobSignal::Busy { job_id: id, message }) if id == job_id => {
                        if wanted.is_some() {
                            bail!("{worker} is busy: {message}");
                        }
                        busy.push(format!("{worker} ({message})"));
                        break;
                    }
                    Ok(JobSignal::JobRejected { job_id: id, message }) if id == job_id => {
                        bail!("{worker} refused the job: {message}")
                    }
                    _ => {}
                },
                Outbound::PeerLeft { peer_id } if peer_id == worker => {
                    if wanted.is_some() {
                        bail!("{worker} left the room");
                    }
                    break;
                }
                Outbound::PeerLeft { peer_id } => untried.retain(|w| *w != peer_id),
                Outbound::PeerJoined { peer_id, role } if fits(&peer_id, role) => untried.push(peer_id),
                _ => {}
            }
        }
    }
}

#[derive(Args)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Stop a running job's command (SIGSTOP) until `resume`.
    Pause(JobTarget),
    /// Let a paused job's command run again (SIGCONT).
    Resume(JobTarget),
    /// End a job: SIGTERM, then SIGKILL after the worker's grace time.
    Cancel(JobTarget),
    /// Wait for a job's result (its client may be long gone) and optionally download its outputs.
    Attach {
        #[command(flatten)]
        target: JobTarget,
        /// Download the job's outputs into this directory.
        #[arg(long)]
        download: Option<PathBuf>,
        /// How long to wait for the job to finish.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Args)]
struct JobTarget {
    /// The job's id.
    id: String,
    #[arg(long, env = "FERRY_ROOM")]
    room: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn job(args: JobArgs) -> anyhow::Result<()> {
    let (t, make): (JobTarget, fn(String) -> JobMessage) = match args.command {
        JobCommand::Pause(t) => (t, |job_id| JobMessage::Pause { job_id }),
        JobCommand::Resume(t) => (t, |job_id| JobMessage::Resume { job_id }),
        JobCommand::Cancel(t) => (t, |job_id| JobMessage::Cancel { job_id }),
        JobCommand::Attach { target, download, wait, output } => return attach(target, download, wait, output).await,
    };
    if !valid_job_id(&t.id) {
        bail!("job ids are 1 to 60 letters, digits, '-', '_'");
    }
    let token = t.server.token()?;
    let mut sig = Signaling::join(&t.server.server, &t.room, Role::Client, None, &token).await?;
    let to = job_peer(&t.id);
    if !sig.peers().iter().any(|p| p.peer_id == to) {
        bail!("no running job {} in room {}", t.id, t.room);
    }
    sig.send(Inbound::PeerMessage { to, payload: serde_json::to_value(make(t.id.clone()))? }).await?;
    // A refusal (the job ended meanwhile) arrives as an error; silence means it was delivered.
    match sig.recv(Duration::from_millis(500)).await {
        Err(SignalingError::Refused { message, .. }) => bail!("{message}"),
        _ => Ok(()),
    }
}

/// Waits for the job's entry in the room's manifest: a worker records every job it ran, whether
/// or not its client stayed to hear the result.
async fn attach(t: JobTarget, download: Option<PathBuf>, wait: Duration, out: OutputArgs) -> anyhow::Result<()> {
    if !valid_job_id(&t.id) {
        bail!("job ids are 1 to 60 letters, digits, '-', '_'");
    }
    let api = t.server.api()?;
    let result = wait_in_manifest(&api, &t.room, &t.id, wait, out).await?;
    finish_result(&api, &t.room, result, download.as_deref(), out).await
}

/// How long a job followed through the manifest may take.
const JOB_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The job's result from the room's manifest, once its worker has recorded it.
async fn wait_in_manifest(
    api: &ferry_client::Api,
    room: &str,
    job_id: &str,
    wait: Duration,
    out: OutputArgs,
) -> anyhow::Result<JobResult> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        let (m, _) = api.manifest(room).await?;
        if let Some(e) = m.entries.into_iter().find(|e| e.job_id == job_id) {
            return Ok(JobResult { job_id: e.job_id, status: e.status, message: None, outputs: e.outputs });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("job {job_id} has no result in room {room} after {}", humantime::format_duration(wait));
        }
        if !said && !out.json {
            eprintln!("job {job_id}: waiting for its result…");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Downloads (and checks) the outputs if asked, prints the result, and fails unless it succeeded.
async fn finish_result(
    api: &Arc<ferry_client::Api>,
    room: &str,
    result: JobResult,
    download: Option<&Path>,
    out: OutputArgs,
) -> anyhow::Result<()> {
    let job_id = result.job_id.clone();
    let mut downloaded = Vec::new();
    if let Some(dir) = download {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let prefix = format!("rooms/{room}/results/{job_id}/");
        for o in &result.outputs {
            let rel = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
            let dest = rel
                .split('/')
                .filter(|s| !s.is_empty() && *s != "." && *s != "..")
                .fold(dir.to_owned(), |p, s| p.join(s));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let (events, _) = ferry_client::events::channel();
            let opts = DownloadOptions::new(ferry_client::journal::default_state_dir());
            let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
            let got =
                ferry_client::download(Arc::clone(api), o.key.clone(), dest.clone(), opts, events, permits).await?;
            if got.sha256 != o.sha256 {
                bail!("{} arrived with SHA-256 {}, not the worker's {}", o.key, got.sha256, o.sha256);
            }
            downloaded.push(dest.display().to_string());
        }
    }
    if out.json {
        let mut v = serde_json::to_value(&result)?;
        v["type"] = "result".into();
        v["downloaded"] = serde_json::to_value(&downloaded)?;
        crate::output::line(&v.to_string());
    } else {
        crate::output::line(&format!(
            "job {job_id}: {}{}",
            result.status,
            result.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        ));
        for o in &result.outputs {
            crate::output::line(&format!("  {}  {}  sha256 {}", o.key, human_bytes(o.size), o.sha256));
        }
    }
    if result.status == "succeeded" { Ok(()) } else { bail!("job {job_id} {}", result.status) }
}
