//! A worker: joins a room and runs the jobs clients send it (seed 001).
//!
//! For each `job_request` it joins the room a second time as the job's own peer (`job-ID`),
//! before it answers, so the client can connect to the job over WebRTC at once and reach it with
//! `pause`/`resume`/`cancel`; then it runs the job (`worker/job.rs`). Beyond `jobs` at once it
//! answers `busy`. Jobs a killed worker left behind in the work dir are ended and recorded as
//! failed when a worker starts on it ([`crate::leftovers`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::job::{JobSignal, job_peer, valid_job_id};
use ferry_core::signal::{Inbound, Outbound, Role};
use ferry_rtc::signaling::{Signaling, SignalingError};

use crate::Connection;
use crate::error::JobError;
use crate::leftovers::{self, Process};

mod job;

use job::Request;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub room: String,
    /// Its peer id; `None`: one the server makes up.
    pub name: Option<String>,
    /// The command each job runs: `{input}` becomes the input file, `{output_dir}` the directory
    /// whose files become the results; the job's own arguments are appended.
    pub program: Vec<String>,
    /// Jobs at once.
    pub jobs: usize,
    pub work_dir: PathBuf,
    /// After `cancel`, how long the command has between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// What every job of one worker shares.
pub(crate) struct Worker {
    pub conn: Connection,
    pub config: WorkerConfig,
    pub name: String,
    running: AtomicUsize,
    /// This process, named in each job's record so a later worker can tell its jobs from
    /// orphans (`None` without /proc: then no records are kept).
    pub owner: Option<Process>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Joins the room and serves jobs until the signaling server refuses it; `on_ready` hears the
/// worker's peer id once it has joined.
pub async fn serve(conn: Connection, config: WorkerConfig, on_ready: impl FnOnce(&str)) -> Result<(), JobError> {
    if config.program.is_empty() {
        return Err(JobError::Usage("the worker's command is empty".into()));
    }
    let mut sig =
        Signaling::join(&conn.server, &config.room, Role::Worker, config.name.as_deref(), &conn.token).await?;
    let worker = Arc::new(Worker {
        name: sig.peer_id().to_owned(),
        running: AtomicUsize::new(0),
        owner: Process::of(std::process::id()),
        conn,
        config,
    });
    leftovers::sweep(&worker.config.work_dir, &worker.conn.api, now()).await;
    on_ready(&worker.name);
    loop {
        let (from, payload) = match sig.recv(Duration::from_secs(3600)).await {
            Ok(Outbound::PeerMessage { from, payload }) => (from, payload),
            Ok(_) | Err(SignalingError::Timeout(_)) => continue,
            // Its instance died or the network blinked: join again as the same worker (its
            // running jobs go on meanwhile).
            Err(SignalingError::Closed) => {
                sig.rejoin().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(JobSignal::JobRequest { job_id, input, args }) = serde_json::from_value::<JobSignal>(payload) else {
            continue;
        };
        let request = Request { client: from.clone(), job_id, input, args };
        let reply = accept(&worker, request).await;
        let payload = serde_json::to_value(&reply).unwrap_or_default();
        // A lost connection is found by the next read, which joins again; the worker goes on.
        if let Err(e) = sig.send(Inbound::PeerMessage { to: from.clone(), payload }).await {
            tracing::warn!(client = %from, error = %e, "could not answer a job request");
        }
    }
}

/// Answers one request: starts the job (with its own signaling connection, joined before the
/// answer so the client can reach it at once), or says why not.
async fn accept(worker: &Arc<Worker>, req: Request) -> JobSignal {
    let job_id = req.job_id.clone();
    if !valid_job_id(&job_id) {
        return JobSignal::JobRejected { job_id, message: "job ids are 1 to 60 letters, digits, '-', '_'".into() };
    }
    let Some(slot) = Slot::take(worker) else {
        let message = format!("{} runs {} job(s) already", worker.name, worker.config.jobs);
        return JobSignal::Busy { job_id, message };
    };
    let peer = job_peer(&job_id);
    let (server, room, token) = (&worker.conn.server, &worker.config.room, &worker.conn.token);
    // A plain peer, not a worker: clients looking for a worker must not ask a job for work.
    let sig = match Signaling::join(server, room, Role::Peer, Some(&peer), token).await {
        Ok(s) => s,
        Err(e) => return JobSignal::JobRejected { job_id, message: format!("cannot listen as {peer}: {e}") },
    };
    let w = Arc::clone(worker);
    tokio::spawn(async move {
        let id = req.job_id.clone();
        if let Err(e) = job::run(&w, slot, sig, req).await {
            tracing::warn!(job = %id, error = %e, "the job could not be carried through");
        }
    });
    JobSignal::JobAccepted { job_id, peer }
}

/// One of the worker's `jobs` places, held by a job until it has done its work (or failed).
pub(crate) struct Slot(Arc<Worker>);

impl Slot {
    fn take(worker: &Arc<Worker>) -> Option<Slot> {
        let taken = worker.running.fetch_add(1, Ordering::SeqCst);
        if taken >= worker.config.jobs {
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
