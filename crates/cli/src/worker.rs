//! `ferry worker`: joins a room as a worker and runs the jobs clients send it
//! ([`ferry_jobs::worker`] does the work; this parses the flags).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

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

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let program = shlex::split(&args.exec).filter(|p| !p.is_empty()).context("--exec is not a command line")?;
    let config = ferry_jobs::WorkerConfig {
        room: args.room.clone(),
        name: args.name.clone(),
        program,
        jobs: args.jobs,
        work_dir: args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("ferry-worker")),
        kill_grace: args.kill_grace,
    };
    let conn = args.server.connection(Some(&args.net))?;
    let (room, jobs) = (args.room.clone(), args.jobs);
    ferry_jobs::worker::serve(conn, config, |name| {
        eprintln!("ferry worker: {name} in room {room}, up to {jobs} job(s) at once");
    })
    .await?;
    Ok(())
}
