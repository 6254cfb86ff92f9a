//! `ferry submit`: sends a job to a worker in a room and follows it to its result; `ferry job
//! pause|resume|cancel|attach` reach a job from anywhere. [`ferry_jobs::client`] does the work;
//! this parses the flags, turns Ctrl-C and the `p`/`r` keys into commands, and prints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use ferry_core::job::{JobMessage, JobResult, JobStatus};
use ferry_jobs::JobError;
use ferry_jobs::client::{self, Command, Submission, SubmitEvent};
use tokio::sync::mpsc;

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

/// A line for a person on stderr, or a JSON object on stdout.
fn say(out: OutputArgs, human: String, json: serde_json::Value) {
    if out.json {
        crate::output::line(&json.to_string());
    } else {
        eprintln!("{human}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let conn = args.server.connection(Some(&args.net))?;
    let out = args.output;
    let job_id = match args.job_id.clone() {
        Some(id) => id,
        None => random_id()?,
    };
    let submission = Submission {
        room: args.room.clone(),
        input: args.input.clone(),
        args: args.args.clone(),
        to: args.to.clone(),
        job_id: job_id.clone(),
        wait: args.wait,
        rules: args.transport.rules()?,
    };
    let (commands, rx) = mpsc::channel(8);
    let keys = crate::keys::Keys::start();
    let keyed = keys.is_some();
    let forward = tokio::spawn(forward_commands(keys, commands));
    let id = job_id.as_str();
    let result = client::submit(&conn, &submission, rx, |event| match event {
        SubmitEvent::Transport(choice) => crate::hybrid::say(out, choice),
        SubmitEvent::Input { name, key, size, sha256, over } => say(
            out,
            format!("input {name}: {} stored as {key} over {over}", human_bytes(size)),
            serde_json::json!({"type": "input", "key": key, "size": size, "sha256": sha256}),
        ),
        SubmitEvent::Accepted { worker, elapsed } => {
            say(
                out,
                format!("job {id} accepted by {worker}"),
                serde_json::json!({"type": "accepted", "job_id": id, "worker": worker, "elapsed_ms": ms(elapsed)}),
            );
            if keyed && !out.json {
                eprintln!("keys: p pauses the job, r resumes it, Ctrl-C cancels it");
            }
        }
        SubmitEvent::Fallback { reason } => say(
            out,
            format!("no data channel to job {id} ({reason}); following it through the room's manifest instead"),
            serde_json::json!({"type": "fallback", "job_id": id, "reason": reason}),
        ),
        SubmitEvent::Message { message, elapsed } if out.json => {
            // JSON lines carry the time since the request, so a caller can tell how soon the job spoke.
            let mut v = serde_json::to_value(message).unwrap_or_default();
            v["elapsed_ms"] = ms(elapsed).into();
            crate::output::line(&v.to_string());
        }
        SubmitEvent::Message { message, .. } => match message {
            JobMessage::Progress { data, .. } => eprintln!("progress {data}"),
            JobMessage::Log { line, .. } => eprintln!("  | {line}"),
            JobMessage::State { state, .. } => eprintln!("job {id}: {}", state.as_str()),
            _ => {}
        },
        SubmitEvent::Sent(Command::Cancel) => {
            say(out, format!("cancelling job {id}…"), serde_json::json!({"type": "cancelling", "job_id": id}))
        }
        SubmitEvent::Sent(_) => {}
    })
    .await;
    forward.abort();
    let result = match result {
        Ok(r) => r,
        Err(JobError::WorkerLost { job_id, worker }) => {
            let message = format!("{worker} went away before the job finished");
            say(
                out,
                format!("job {job_id}: failed: {worker} went away before it finished"),
                serde_json::json!({"type": "result", "job_id": job_id, "status": "failed", "message": message, "outputs": []}),
            );
            bail!("job {job_id} failed: {worker} went away before it finished");
        }
        Err(e) => return Err(e.into()),
    };
    finish_result(&conn, &args.room, result, args.download.as_deref(), out).await
}

/// Turns Ctrl-C into `cancel` (once), and `p` and `r` on a terminal into `pause` and `resume`.
async fn forward_commands(mut keys: Option<crate::keys::Keys>, commands: mpsc::Sender<Command>) {
    let mut cancelled = false;
    loop {
        let command = tokio::select! {
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                Command::Cancel
            }
            key = async { keys.as_mut()?.next().await }, if keys.is_some() => match key {
                Some(b'p' | b'P') => Command::Pause,
                Some(b'r' | b'R') => Command::Resume,
                Some(_) => continue,
                // stdin closed: no more keys, and the terminal's settings back.
                None => {
                    keys = None;
                    continue;
                }
            },
            else => return,
        };
        if commands.send(command).await.is_err() {
            return;
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
    let (t, command) = match args.command {
        JobCommand::Pause(t) => (t, Command::Pause),
        JobCommand::Resume(t) => (t, Command::Resume),
        JobCommand::Cancel(t) => (t, Command::Cancel),
        JobCommand::Attach { target, download, wait, output } => {
            let conn = target.server.connection(None)?;
            let result = client::attach(&conn, &target.room, &target.id, wait, || {
                if !output.json {
                    eprintln!("job {}: waiting for its result…", target.id);
                }
            })
            .await?;
            return finish_result(&conn, &target.room, result, download.as_deref(), output).await;
        }
    };
    let conn = t.server.connection(None)?;
    client::steer(&conn, &t.room, &t.id, command).await?;
    Ok(())
}

/// Downloads (and checks) the outputs if asked, prints the result, and fails unless it succeeded.
async fn finish_result(
    conn: &ferry_jobs::Connection,
    room: &str,
    result: JobResult,
    download: Option<&Path>,
    out: OutputArgs,
) -> anyhow::Result<()> {
    let job_id = result.job_id.clone();
    let downloaded: Vec<PathBuf> = match download {
        Some(dir) => client::download_outputs(conn, room, &result, dir).await?,
        None => Vec::new(),
    };
    if out.json {
        let mut v = serde_json::to_value(&result)?;
        v["type"] = "result".into();
        v["downloaded"] = serde_json::to_value(&downloaded)?;
        crate::output::line(&v.to_string());
    } else {
        crate::output::line(&format!(
            "job {job_id}: {}{}",
            result.status.as_str(),
            result.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        ));
        for o in &result.outputs {
            crate::output::line(&format!("  {}  {}  sha256 {}", o.key, human_bytes(o.size), o.sha256));
        }
    }
    if result.status == JobStatus::Succeeded { Ok(()) } else { bail!("job {job_id} {}", result.status.as_str()) }
}
