//! One job on a worker: connect its client's data channel (if the client comes), fetch the input,
//! run the command with [`ferry_core::job::Run`] deciding what `pause`, `resume` and `cancel` do,
//! forward each line it prints, store what it wrote, record it in the room's manifest and send
//! the result. A job outlives its client: results are stored and recorded whether or not anyone
//! is still listening.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_client::{DownloadOptions, UploadOptions};
use ferry_core::job::{
    JobMessage, JobResult, JobStatus, ManifestOutput, Run, RunAction, Signal, classify_line, result_key,
};
use ferry_core::room::ManifestEntry;
use ferry_core::signal::{Inbound, Outbound};
use ferry_rtc::connect::{self, Expect};
use ferry_rtc::messages::{MESSAGES_LABEL, MessageSender, Messages};
use ferry_rtc::signaling::{Signaling, SignalingError};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::{Slot, Worker, now};
use crate::error::{JobError, io};
use crate::leftovers::{JobRecord, Process};

/// How long a job waits for its client's offer, and then for the data channel, before it runs
/// without one (the client then follows it through the room's manifest).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// What one job was asked to do.
pub(crate) struct Request {
    pub client: String,
    pub job_id: String,
    pub input: String,
    pub args: Vec<String>,
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

    /// Carries out what the job's state machine decided.
    async fn act(&mut self, run: &mut Run, group: Option<Pid>) {
        while let Some(action) = run.poll() {
            match action {
                RunAction::Report(state) => {
                    self.send(&JobMessage::State { job_id: self.job_id.clone(), state }).await;
                }
                RunAction::Signal(s) => {
                    let signal = match s {
                        Signal::Stop => nix::sys::signal::Signal::SIGSTOP,
                        Signal::Continue => nix::sys::signal::Signal::SIGCONT,
                        Signal::Terminate => nix::sys::signal::Signal::SIGTERM,
                        Signal::Kill => nix::sys::signal::Signal::SIGKILL,
                    };
                    if let Some(g) = group {
                        // ESRCH: the group is gone already.
                        let _ = nix::sys::signal::killpg(g, signal);
                    }
                }
            }
        }
    }
}

/// Runs job `req` to its end, holding `slot` until its result is recorded.
pub(crate) async fn run(w: &Worker, slot: Slot, mut sig: Signaling, req: Request) -> Result<(), JobError> {
    let started = now();
    // The client connects to the job's peer; without it (gone, or no data channel) the job runs
    // anyway and its result is still stored.
    let mut channel: Option<Messages> = None;
    let mut peer = None;
    if let Ok((from, offer)) = sig.wait_description("offer", Some(&req.client), CONNECT_WAIT, |_| {}).await {
        let expect = Expect { count: 1, enough: &[MESSAGES_LABEL] };
        match connect::answer(&mut sig, &from, &offer, &w.conn.peer, expect, CONNECT_WAIT).await {
            Ok((p, mut chans)) => {
                channel = chans.pop().map(Messages::new);
                peer = Some(p);
            }
            Err(e) => {
                tracing::warn!(job = %req.job_id, client = %req.client, error = %e, "no data channel to the client")
            }
        }
    }
    let mut report = Reporter { job_id: req.job_id.clone(), channel: channel.as_ref().map(Messages::sender) };
    let dir = w.config.work_dir.join(&req.job_id);
    let mut run = Run::new(w.config.kill_grace);
    let outcome = execute(w, &mut sig, &mut channel, &mut report, &mut run, &dir, &req).await;
    // The command has ended: nothing is left to pause or cancel, so the job's peer leaves.
    let _ = sig.send(Inbound::Leave).await;
    drop(sig);
    let (status, message) = outcome.unwrap_or_else(|e| (JobStatus::Failed, Some(e.to_string())));
    // What the command wrote is kept even when it failed: it may say why.
    let mut outputs = Vec::new();
    let out_dir = dir.join("out");
    if out_dir.is_dir() {
        run.uploading();
        report.act(&mut run, None).await;
        for (path, rel) in files_under(&out_dir)? {
            let mut opts = UploadOptions::new(dir.join("journal"));
            opts.key = Some(result_key(&w.config.room, &req.job_id, &rel));
            let (events, _) = ferry_client::events::channel();
            let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
            let up = ferry_client::upload(Arc::clone(&w.conn.api), path, opts, events, permits).await?;
            outputs.push(ManifestOutput { key: up.key, size: up.size, sha256: up.sha256 });
        }
    }
    let entry = ManifestEntry {
        job_id: req.job_id.clone(),
        worker: w.name.clone(),
        status,
        inputs: vec![req.input.clone()],
        outputs: outputs.clone(),
        started_at: started,
        finished_at: now(),
    };
    let lost = w.conn.api.record_in_manifest(&w.config.room, &entry).await?;
    tracing::debug!(job = %req.job_id, lost_races = lost, "recorded in the room's manifest");
    let _ = std::fs::remove_dir_all(&dir);
    // The job's slot is free before its result leaves: a client that submits its next job the
    // moment it hears this one end must not be told `busy`.
    drop(slot);
    let result = JobResult { job_id: req.job_id.clone(), status, message, outputs };
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

/// Fetches the input and runs the command; how it ended.
async fn execute(
    w: &Worker,
    sig: &mut Signaling,
    channel: &mut Option<Messages>,
    report: &mut Reporter,
    run: &mut Run,
    dir: &Path,
    req: &Request,
) -> Result<(JobStatus, Option<String>), JobError> {
    report.act(run, None).await;
    let name = req.input.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("input");
    let (input_path, out_dir) = (dir.join("in").join(name), dir.join("out"));
    std::fs::create_dir_all(dir.join("in")).map_err(io(dir))?;
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    let mut record = w.owner.map(|owner| JobRecord {
        job_id: req.job_id.clone(),
        room: w.config.room.clone(),
        worker: w.name.clone(),
        input: req.input.clone(),
        started_at: now(),
        owner,
        command: None,
    });
    if let Some(r) = &record {
        r.save(dir).map_err(io(dir))?;
    }
    let (events, _) = ferry_client::events::channel();
    let opts = DownloadOptions::new(dir.join("journal"));
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
    let api = Arc::clone(&w.conn.api);
    let download = ferry_client::download(api, req.input.clone(), input_path.clone(), opts, events, permits);
    tokio::pin!(download);
    // A job can be cancelled while its input is still coming.
    let mut commands_open = true;
    loop {
        tokio::select! {
            done = &mut download => {
                done?;
                break;
            }
            m = next_command(channel, sig, &mut commands_open) => {
                if matches!(m, Some(JobMessage::Cancel { job_id }) if job_id == req.job_id) {
                    run.cancel(std::time::Instant::now());
                    return Ok(run.exited(false, None));
                }
            }
        }
    }
    let fill = |s: &str| {
        s.replace("{input}", &input_path.to_string_lossy()).replace("{output_dir}", &out_dir.to_string_lossy())
    };
    let mut argv = w.config.program.iter().map(|a| fill(a));
    let program = argv.next().ok_or_else(|| JobError::Usage("the worker's command is empty".into()))?;
    let mut child = tokio::process::Command::new(&program)
        .args(argv)
        .args(&req.args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(&program))?;
    if let Some(r) = &mut record {
        r.command = child.id().and_then(Process::of);
        r.save(dir).map_err(io(dir))?;
    }
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    run.started();
    report.act(run, group).await;
    let job_id = req.job_id.as_str();
    let mut stdout = child.stdout.take().map(|o| BufReader::new(o).lines());
    let mut stderr = child.stderr.take().map(|e| BufReader::new(e).lines());
    let status = loop {
        let kill = async {
            match run.poll_timeout() {
                Some(t) => tokio::time::sleep_until(t.into()).await,
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
            m = next_command(channel, sig, &mut commands_open) => m,
            () = kill => {
                run.tick(std::time::Instant::now());
                None
            }
            status = child.wait(), if stdout.is_none() && stderr.is_none() => break status.map_err(io(&program))?,
        };
        if let Some(m) = &control {
            tracing::debug!(job = job_id, command = ?m, "a command for the job");
        }
        match control {
            Some(JobMessage::Pause { job_id: id }) if id == job_id => run.pause(),
            Some(JobMessage::Resume { job_id: id }) if id == job_id => run.resume(),
            Some(JobMessage::Cancel { job_id: id }) if id == job_id => run.cancel(std::time::Instant::now()),
            _ => {}
        }
        report.act(run, group).await;
    };
    Ok(run.exited(status.success(), status.code()))
}

/// The next command for the job, from its client's data channel (until that closes) or as a
/// signaling message (`ferry job pause|resume|cancel` from anywhere); `None` for anything else.
async fn next_command(
    channel: &mut Option<Messages>,
    sig: &mut Signaling,
    channel_open: &mut bool,
) -> Option<JobMessage> {
    let from_channel = async {
        match channel.as_mut() {
            Some(c) if *channel_open => c.recv::<JobMessage>().await,
            _ => std::future::pending().await,
        }
    };
    let from_signaling = async {
        match sig.recv(Duration::from_secs(3600)).await {
            Ok(Outbound::PeerMessage { payload, .. }) => serde_json::from_value::<JobMessage>(payload).ok(),
            Ok(_) | Err(SignalingError::Timeout(_)) => None,
            // A refusal (a candidate for a client that has left) leaves the connection usable.
            Err(e @ (SignalingError::Refused { .. } | SignalingError::Protocol(_))) => {
                tracing::debug!(error = %e, "signaling");
                None
            }
            // The job's own connection dropped (its instance died): join again, so `ferry job`
            // reaches it; the job runs on meanwhile.
            Err(_) => match sig.rejoin().await {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "the job cannot be reached by signaling any more");
                    std::future::pending().await
                }
            },
        }
    };
    tokio::select! {
        m = from_channel => match m {
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => None,
            None => {
                *channel_open = false;
                None
            }
        },
        m = from_signaling => m,
    }
}

/// Every regular file under `dir`, with its `/`-separated path relative to it.
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, String)>, JobError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let kind = entry.file_type().map_err(io(entry.path()))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}
