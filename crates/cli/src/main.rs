//! `ferry`: move large files reliably and fast. This binary is thin: it parses the command line,
//! sets up logging, and hands over to the library crates.

mod admin;
mod client;
mod get;
mod hybrid;
mod keys;
mod output;
mod p2p;
mod progress;
mod put;
mod room;
mod serve;
mod submit;
mod watch;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Move large files reliably and fast: resumable parallel uploads over HTTP, and peer-to-peer transfers over WebRTC."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: control-plane API, signed part URLs and the embedded store.
    Serve(Box<serve::ServeArgs>),
    /// Upload files: parallel parts, retries, resumes after a crash of either side.
    Put(put::PutArgs),
    /// Download an object: parallel ranges, resumable, SHA-256 verified.
    Get(get::GetArgs),
    /// Show an upload session.
    Status(admin::StatusArgs),
    /// List upload sessions.
    Ls(admin::LsArgs),
    /// Cancel an upload session and delete its parts.
    Cancel(admin::CancelArgs),
    /// Follow an upload's events (parts received, processing results) until its final one.
    Watch(watch::WatchArgs),
    /// Run an upload's part processor on one part again.
    Reprocess(admin::ReprocessArgs),
    /// Send a file peer to peer over a WebRTC data channel (the peers meet in a signaling room).
    Send(p2p::SendArgs),
    /// Receive files sent with `ferry send` (or any seed-004 peer) into a directory.
    Recv(p2p::RecvArgs),
    /// A room's manifest: the results its workers recorded.
    Room(room::RoomArgs),
    /// Join a room as a worker and run the jobs clients submit.
    Worker(Box<worker::WorkerArgs>),
    /// Send a job to a worker in a room and follow it to its result.
    ///
    /// A local input is stored first, over a data channel or as HTTP parts by the same rules as
    /// `ferry put --to`. While the job runs, `p` pauses it and `r` resumes it (on a terminal) and
    /// Ctrl-C cancels it.
    Submit(Box<submit::SubmitArgs>),
    /// Pause, resume or cancel a running job.
    Job(submit::JobArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes are for a terminal, not for a log file stderr is sent to.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Put(args) => put::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Status(args) => admin::status(args).await,
            Command::Ls(args) => admin::ls(args).await,
            Command::Cancel(args) => admin::cancel(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Reprocess(args) => admin::reprocess(args).await,
            Command::Send(args) => p2p::send(args).await,
            Command::Recv(args) => p2p::recv(args).await,
            Command::Room(args) => room::run(args).await,
            Command::Worker(args) => worker::run(*args).await,
            Command::Submit(args) => submit::submit(*args).await,
            Command::Job(args) => submit::job(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
