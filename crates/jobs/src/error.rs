use std::path::PathBuf;

use ferry_client::ClientError;
use ferry_rtc::connect::ConnectError;
use ferry_rtc::messages::MessageError;
use ferry_rtc::signaling::SignalingError;
use ferry_rtc::transfer::TransferError;

/// Why a job (or a delivery) could not go on, by where it failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Messages(#[from] MessageError),
    #[error(transparent)]
    Http(#[from] ClientError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No worker took the job: the reason, in words.
    #[error("{0}")]
    Unplaced(String),
    #[error("job {job_id} failed: {worker} went away before it finished")]
    WorkerLost { job_id: String, worker: String },
    #[error(
        "the connection to job {job_id} closed before its result; it runs on: `ferry job attach {job_id} --room {room}` waits for it"
    )]
    Detached { job_id: String, room: String },
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Usage(String),
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> JobError {
    let path = path.into();
    move |source| JobError::Io { path, source }
}
