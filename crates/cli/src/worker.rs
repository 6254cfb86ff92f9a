//! `ferry worker`: joins a room as a worker and runs the jobs clients send it (seed 001).
//!
//! For each `job_request` it joins the room a second time as the job's own peer (`job-ID`), so the
//! client can connect to the job over WebRTC and reach it with `pause`/`resume`/`cancel`; it
//! downloads the input object (parallel ranged GETs, resumable), runs the command in its own
//! process group, forwards each stdout line (JSON objects as progress, the rest as log lines),
//! uploads what the command wrote to its output dir under `rooms/{room}/results/{job}/`, records
//! the job in the room's manifest and sends the result. A job outlives its client: results are
//! stored and recorded whether or not anyone is still listening. Jobs a killed worker left
//! behind are ended and recorded as failed when a worker next starts on the same work dir
//! ([`crate::leftovers`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use ferry_client::{Api, DownloadOptions, UploadOptions};
use ferry_core::job::{JobMessage, JobResult, JobSignal, classify_line, job_peer, result_key, valid_job_id};
use ferry_core::room::{ManifestEntry, ManifestOutput};
use ferry_core::signal::{Inbound, Outbound, Role};
use ferry_rtc::PeerConfig;
use ferry_rtc::connect::{self, Expect};
use ferry_rtc::messages::{MESSAGES_LABEL, MessageSender, Messages};
use ferry_rtc::signaling::{Signaling, SignalingError};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::client::ServerArgs;

#[derive(Args)]
pub struct WorkerArgs {
    /// The room to serve.
    #[arg(long, env = "FERRY_ROOM")]
    room: String,

    /// The command each job runs, split like a shell would but run without one (use `sh -c '…'`
    /// for one). `{input}` becomes the downloaded input file, `{output_dir}` the directory whose
    /// files become the job's results; the job's own arguments are appended.
    #[arg(long)]
    exec: String,

    /// This worker's peer id in the room. Default: one the server makes up.
    #[arg(long)]
    name: Option<String>,

    /// Jobs run at once; more are answered `busy`.
    #[arg(long, default_value_t = 1, value_parser = crate::client::parse_concurrency)]
    jobs: usize,

    /// Where jobs' inputs and outputs are kept while they run. Default: the system's temp dir.
    /// A worker that starts on it ends the commands of jobs a killed worker left there and
    /// records those jobs as failed.
    #[arg(long, env = "FERRY_WORKER_DIR")]
    work_dir: Option<PathBuf>,

    /// After `cancel`, how long the command has between SIGTERM and SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,

    #[command(flatten)]
    net: crate::client::PeerNetArgs,

    #[command(flatten)]
    server: ServerArgs,
}

/// How long a job waits for its client's offer, and then for the data channel, before it runs
/// without one (the client then follows it through the room's manifest).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// What every job of this worker shares.
struct Worker {
    room: String,
    name: String,
    program: Vec<String>,
    work_dir: PathBuf,
    kill_grace: Duration,
    peer: PeerConfig,
    server: ServerArgs,
    token: String,
    api: Arc<Api>,
    running: AtomicUsize,
    max: usize,
    /// This process, named in each job's record so a later worker can tell its jobs from
    /// orphans (`None` without /proc: then no records are kept).
    owner: Option<crate::leftovers::Process>,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let program = shlex::split(&args.exec).filter(|p| !p.is_empty()).context("--exec is not a command line")?;
    let token = args.server.token()?;
    let work_dir = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("ferry-worker"));
    let mut sig = Signaling::join(&args.server.server, &args.room, Role::Worker, args.name.as_deref(), &token).await?;
    let worker = Arc::new(Worker {
        room: args.room.clone(),
        name: sig.peer_id().to_owned(),
        program,
        work_dir,
        kill_grace: args.kill_grace,
        peer: args.net.config(),
        api: args.server.api()?,
        server: args.server.clone(),
        token,
        running: AtomicUsize::new(0),
        max: args.jobs,
        owner: crate::leftovers::Process::of(std::process::id()),
    });
    crate::leftovers::sweep(&worker.work_dir, &worker.api, now()).await;
    eprintln!("ferry worker: {} in room {}, up to {} job(s) at once", worker.name, worker.room, worker.max);
    loop {
        let (from, payload) = match sig.recv(Duration::from_secs(3600)).await {
            Ok(Outbound::PeerMessage { from, payload }) => (from, payload),
            Ok(_) | Err(SignalingError::Timeout(_)) => continue,
            Err(SignalingError::Closed) => {
                sig = Signaling::join(
                    &worker.server.server,
                    &worker.room,
                    Role::Worker,
                    Some(&worker.name),
                    &worker.token,
                )
                .await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(JobSignal::JobRequest { job_id, input, args }) = serde_json::from_value::<JobSignal>(payload) else {
            continue;
        };
        let reply = accept(&worker, &from, &job_id, input, args).await;
        let payload = serde_json::to_value(&reply)?;
        // A lost connection is found by the next read, which joins again; the worker goes on.
        if let Err(e) = sig.send(Inbound::PeerMessage { to: from.clone(), payload }).await {
            eprintln!("ferry worker: could not answer {from}: {e}");
        }
    }
}

/// Answers one request: starts the job (with its own signaling connection, joined before the
/// answer so the client can reach it at once), or says why not.
async fn accept(worker: &Arc<Worker>, client: &str, job_id: &str, input: String, args: Vec<String>) -> JobSignal {
    let job_id = job_id.to_owned();
    if !valid_job_id(&job_id) {
        return JobSignal::JobRejected { job_id, message: "job ids are 1 to 60 letters, digits, '-', '_'".into() };
    }
    let Some(slot) = Slot::take(worker) else {
        return JobSignal::Busy { job_id, message: format!("{} runs {} job(s) already", worker.name, worker.max) };
    };
    let peer = job_peer(&job_id);
    // A plain peer, not a worker: clients looking for a worker must not ask a job for work.
    let sig = match Signaling::join(&worker.server.server, &worker.room, Role::Peer, Some(&peer), &worker.token).await {
        Ok(s) => s,
        Err(e) => return JobSignal::JobRejected { job_id, message: format!("cannot listen as {peer}: {e}") },
    };
    let w = Arc::clone(worker);
    let (client, id) = (client.to_owned(), job_id.clone());
    tokio::spawn(async move {
        if let Err(e) = run_job(&w, slot, sig, &client, &id, &input, &args).await {
            eprintln!("ferry worker: job {id}: {e:#}");
        }
    });
    JobSignal::JobAccepted { job_id, peer }
}

/// One of the worker's `--jobs` places, held by a job until it has done its work (or failed).
struct Slot(Arc<Worker>);

impl Slot {
    fn take(worker: &Arc<Worker>) -> Option<Slot> {
        let taken = worker.running.fetch_add(1, Ordering::SeqCst);
        if taken >= worker.max {
            worker.running.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Arc::clone(worker)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the job's messages go: the client's data channel once it is connected. Sending to a
/// client that has gone is not an error: the job goes on.
struct Reporter {
    job_id: String,
    channel: Option<MessageSender>,
}

impl Reporter {
    async fn send(&mut self, m: &JobMessage) {
        if let Some(c) = &self.channel
            && c.send(m).await.is_err()
        {
            self.channel = None;
        }
    }

    async fn state(&mut self, state: &str) {
        let m = JobMessage::State { job_id: self.job_id.clone(), state: state.to_owned() };
        self.send(&m).await;
    }
}

async fn run_job(
    w: &Worker,
    slot: Slot,
    mut sig: Signaling,
    client: &str,
    job_id: &str,
    input: &str,
    args: &[String],
) -> anyhow::Result<()> {
    let started = now();
    // The client connects to the job's peer; without it (gone, or no data channel) the job runs
    // anyway and its result is still stored.
    let mut channel: Option<Messages> = None;
    let mut peer = None;
    if let Ok((from, offer)) = sig.wait_description("offer", Some(client), CONNECT_WAIT, |_| {}).await {
        let expect = Expect { count: 1, enough: &[MESSAGES_LABEL] };
        match connect::answer(&mut sig, &from, &offer, &w.peer, expect, CONNECT_WAIT).await {
            Ok((p, mut chans)) => {
                channel = chans.pop().map(Messages::new);
                peer = Some(p);
            }
            Err(e) => eprintln!("ferry worker: job {job_id}: no data channel to {client}: {e}"),
        }
    }
    let mut report = Reporter { job_id: job_id.to_owned(), channel: channel.as_ref().map(Messages::sender) };
    let dir = w.work_dir.join(job_id);
    let outcome = execute(w, &mut sig, &mut channel, &mut report, &dir, job_id, input, args).await;
    // The command has ended: nothing is left to pause or cancel, so the job's peer leaves.
    let _ = sig.send(Inbound::Leave).await;
    drop(sig);
    let (status, message) = match &outcome {
        Ok(Exit::Succeeded) => ("succeeded", None),
        Ok(Exit::Cancelled) => ("cancelled", None),
        Ok(Exit::Failed(m)) => ("failed", Some(m.clone())),
        Err(e) => ("failed", Some(format!("{e:#}"))),
    };
    // What the command wrote is kept even when it failed: it may say why.
    let mut outputs = Vec::new();
    let out_dir = dir.join("out");
    if out_dir.is_dir() {
        report.state("uploading").await;
        for (path, rel) in files_under(&out_dir)? {
            let mut opts = UploadOptions::new(dir.join("journal"));
            opts.key = Some(result_key(&w.room, job_id, &rel));
            let (events, _) = ferry_client::events::channel();
            let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
            let up = ferry_client::upload(Arc::clone(&w.api), path, opts, events, permits).await?;
            outputs.push(ManifestOutput { key: up.key, size: up.size, sha256: up.sha256 });
        }
    }
    let entry = ManifestEntry {
        job_id: job_id.to_owned(),
        worker: w.name.clone(),
        status: status.to_owned(),
        inputs: vec![input.to_owned()],
        outputs: outputs.clone(),
        started_at: started,
        finished_at: now(),
    };
    let lost = w.api.record_in_manifest(&w.room, &entry).await.context("recording the job in the room's manifest")?;
    tracing::debug!(job = job_id, lost_races = lost, "recorded in the room's manifest");
    let _ = std::fs::remove_dir_all(&dir);
    // The job's slot is free before its result leaves: a client that submits its next job the
    // moment it hears this one end must not be told `busy`.
    drop(slot);
    let result = JobResult { job_id: job_id.to_owned(), status: status.to_owned(), message, outputs };
    report.send(&JobMessage::Result(result)).await;
    // The connection stays a moment for the result to leave.
    if let Some(peer) = peer.take() {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peer.close().await;
        });
    }
    Ok(())
}

enum Exit {
    Succeeded,
    Cancelled,
    Failed(String),
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    w: &Worker,
    sig: &mut Signaling,
    channel: &mut Option<Messages>,
    report: &mut Reporter,
    dir: &Path,
    job_id: &str,
    input: &str,
    args: &[String],
) -> anyhow::Result<Exit> {
    report.state("downloading").await;
    let name = input.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("input");
    let (input_path, out_dir) = (dir.join("in").join(name), dir.join("out"));
    std::fs::create_dir_all(dir.join("in")).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut record = w.owner.map(|owner| crate::leftovers::JobRecord {
        job_id: job_id.to_owned(),
        room: w.room.clone(),
        worker: w.name.clone(),
        input: input.to_owned(),
        started_at: now(),
        owner,
        command: None,
    });
    if let Some(r) = &record {
        r.save(dir).with_context(|| format!("cannot write the job's record in {}", dir.display()))?;
    }
    let (events, _) = ferry_client::events::channel();
    let opts = DownloadOptions::new(dir.join("journal"));
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
    ferry_client::download(Arc::clone(&w.api), input.to_owned(), input_path.clone(), opts, events, permits)
        .await
        .with_context(|| format!("downloading the input {input}"))?;

    let fill = |s: &str| {
        s.replace("{input}", &input_path.to_string_lossy()).replace("{output_dir}", &out_dir.to_string_lossy())
    };
    let mut argv = w.program.iter().map(|a| fill(a));
    let Some(program) = argv.next() else { bail!("empty command") };
    let mut child = tokio::process::Command::new(&program)
        .args(argv)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    if let Some(r) = &mut record {
        r.command = child.id().and_then(crate::leftovers::Process::of);
        r.save(dir).with_context(|| format!("cannot write the job's record in {}", dir.display()))?;
    }
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let signal = |s: Signal| {
        if let Some(g) = group {
            let _ = killpg(g, s);
        }
    };
    report.state("running").await;
    let mut stdout = child.stdout.take().map(|o| BufReader::new(o).lines());
    let mut stderr = child.stderr.take().map(|e| BufReader::new(e).lines());
    let mut cancelled = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut commands_open = true;
    let status = loop {
        let command = async {
            match channel.as_mut() {
                Some(c) if commands_open => c.recv::<JobMessage>().await,
                _ => std::future::pending().await,
            }
        };
        let peer_command = async {
            match sig.recv(Duration::from_secs(3600)).await {
                Ok(Outbound::PeerMessage { payload, .. }) => serde_json::from_value::<JobMessage>(payload).ok(),
                Ok(_) | Err(SignalingError::Timeout(_)) => None,
                // A refusal (a candidate for a client that has left) leaves the connection usable.
                Err(e @ (SignalingError::Refused { .. } | SignalingError::Protocol(_))) => {
                    tracing::debug!(job_id, error = %e, "signaling");
                    None
                }
                Err(_) => std::future::pending().await,
            }
        };
        let kill = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let control: Option<JobMessage> = tokio::select! {
            line = async { stdout.as_mut()?.next_line().await.ok().flatten() }, if stdout.is_some() => {
                match line {
                    Some(l) => report.send(&classify_line(job_id, &l)).await,
                    None => stdout = None,
                }
                None
            }
            line = async { stderr.as_mut()?.next_line().await.ok().flatten() }, if stderr.is_some() => {
                match line {
                    Some(l) => report.send(&JobMessage::Log { job_id: job_id.to_owned(), line: l }).await,
                    None => stderr = None,
                }
                None
            }
            m = command => match m {
                Some(Ok(m)) => Some(m),
                Some(Err(_)) => None,
                None => {
                    commands_open = false;
                    None
                }
            },
            m = peer_command => m,
            () = kill => {
                signal(Signal::SIGKILL);
                kill_at = None;
                None
            }
            status = child.wait(), if stdout.is_none() && stderr.is_none() => break status?,
        };
        if let Some(c) = &control {
            tracing::debug!(job_id, command = ?c, "job command");
        }
        match control {
            Some(JobMessage::Pause { job_id: id }) if id == job_id => {
                signal(Signal::SIGSTOP);
                report.state("paused").await;
            }
            Some(JobMessage::Resume { job_id: id }) if id == job_id => {
                signal(Signal::SIGCONT);
                report.state("running").await;
            }
            Some(JobMessage::Cancel { job_id: id }) if id == job_id && !cancelled => {
                cancelled = true;
                // A stopped process cannot act on SIGTERM until it runs again.
                signal(Signal::SIGTERM);
                signal(Signal::SIGCONT);
                kill_at = Some(tokio::time::Instant::now() + w.kill_grace);
                report.state("cancelling").await;
            }
            _ => {}
        }
    };
    Ok(if cancelled {
        Exit::Cancelled
    } else if status.success() {
        Exit::Succeeded
    } else {
        Exit::Failed(match status.code() {
            Some(c) => format!("the command exited with {c}"),
            None => "the command was killed by a signal".to_owned(),
        })
    })
}

/// Every regular file under `dir`, with its `/`-separated path relative to it.
fn files_under(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(dir)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((entry.path(), rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}
