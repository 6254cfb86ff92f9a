//! Jobs run by workers in a room (seed 001): what a client asks, what a worker answers, what
//! travels while the job runs, and the two state machines that decide it all.
//!
//! A client sends a `job_request` to a worker as a signaling `peer_message`. The worker answers
//! with `job_accepted` (naming the peer id the job listens on), `busy` or `job_rejected`; the
//! client's [`Placement`] asks worker after worker until one takes the job. The client then
//! connects to that peer id over WebRTC and the two talk on the JSON `messages` data channel: the
//! worker sends `state` changes, `progress` (each JSON line the command prints), `log` (its other
//! lines) and finally `result`; the client may send `pause`, `resume` and `cancel`, which the
//! worker's [`Run`] turns into signals for the command.

mod placement;
mod run;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use placement::{Placement, PlacementAction};
pub use run::{Run, RunAction, Signal};

/// Where a job is, as its worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Downloading,
    Running,
    Paused,
    Cancelling,
    Uploading,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Downloading => "downloading",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Cancelling => "cancelling",
            JobState::Uploading => "uploading",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Signaling `peer_message` payloads between a client and a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobSignal {
    JobRequest {
        job_id: String,
        /// The object the job reads.
        input: String,
        /// Extra arguments, appended to the worker's command.
        #[serde(default)]
        args: Vec<String>,
    },
    JobAccepted {
        job_id: String,
        /// The peer id to connect to for this job's data channel.
        peer: String,
    },
    Busy {
        job_id: String,
        message: String,
    },
    JobRejected {
        job_id: String,
        message: String,
    },
}

/// Messages on a job's `messages` data channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobMessage {
    /// A JSON line the command printed.
    Progress {
        job_id: String,
        data: Value,
    },
    /// Any other line it printed (stdout or stderr).
    Log {
        job_id: String,
        line: String,
    },
    /// The job's state changed.
    State {
        job_id: String,
        state: JobState,
    },
    Pause {
        job_id: String,
    },
    Resume {
        job_id: String,
    },
    Cancel {
        job_id: String,
    },
    Result(JobResult),
}

/// A file a job produced, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestOutput {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub outputs: Vec<ManifestOutput>,
}

/// Job ids: 1 to 60 letters, digits, `-` and `_` (they become object key segments and peer ids).
pub fn valid_job_id(id: &str) -> bool {
    (1..=60).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// What a line of the command's stdout is: a progress report if it is a JSON object, else a log
/// line.
pub fn classify_line(job_id: &str, line: &str) -> JobMessage {
    match serde_json::from_str::<Value>(line.trim()) {
        Ok(v @ Value::Object(_)) => JobMessage::Progress { job_id: job_id.to_owned(), data: v },
        _ => JobMessage::Log { job_id: job_id.to_owned(), line: line.trim_end().to_owned() },
    }
}

/// The peer id a job listens on (for its data channel, and for `pause`/`resume`/`cancel` sent as
/// peer messages by `ferry job`).
pub fn job_peer(job_id: &str) -> String {
    format!("job-{job_id}")
}

/// The object key of a job's output file `rel` (a `/`-separated path inside its output dir).
pub fn result_key(room: &str, job_id: &str, rel: &str) -> String {
    format!("rooms/{room}/results/{job_id}/{rel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_progress_only_when_they_are_json_objects() {
        assert_eq!(
            classify_line("j", "{\"pct\": 50}\n"),
            JobMessage::Progress { job_id: "j".into(), data: serde_json::json!({"pct": 50}) }
        );
        for line in ["50%", "[1,2]", "\"text\"", "42", "{broken", ""] {
            assert_eq!(classify_line("j", line), JobMessage::Log { job_id: "j".into(), line: line.into() }, "{line}");
        }
    }

    #[test]
    fn wire_shapes() {
        let req = JobSignal::JobRequest { job_id: "j1".into(), input: "in/a.csv".into(), args: vec![] };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"type": "job_request", "job_id": "j1", "input": "in/a.csv", "args": []})
        );
        let parsed: JobSignal = serde_json::from_str(r#"{"type":"job_request","job_id":"j1","input":"k"}"#).unwrap();
        assert_eq!(parsed, JobSignal::JobRequest { job_id: "j1".into(), input: "k".into(), args: vec![] });
        let result = JobMessage::Result(JobResult {
            job_id: "j1".into(),
            status: JobStatus::Succeeded,
            message: None,
            outputs: vec![],
        });
        assert_eq!(
            serde_json::to_value(&result).unwrap(),
            serde_json::json!({"type": "result", "job_id": "j1", "status": "succeeded", "outputs": []})
        );
        assert!(serde_json::from_str::<JobMessage>(r#"{"type":"shutdown"}"#).is_err());
        let state = JobMessage::State { job_id: "j1".into(), state: JobState::Cancelling };
        assert_eq!(
            serde_json::to_value(&state).unwrap(),
            serde_json::json!({"type": "state", "job_id": "j1", "state": "cancelling"})
        );
        assert!(serde_json::from_str::<JobMessage>(r#"{"type":"state","job_id":"j","state":"asleep"}"#).is_err());
    }

    #[test]
    fn ids_keys_and_peers() {
        assert!(valid_job_id("j-1_a") && !valid_job_id("") && !valid_job_id("a/b") && !valid_job_id(&"x".repeat(61)));
        assert_eq!(result_key("lab", "j1", "out/a.txt"), "rooms/lab/results/j1/out/a.txt");
        assert_eq!(job_peer("j1"), "job-j1");
        assert!(crate::signal::valid_peer_id(&job_peer(&"j".repeat(60))), "job ids are short enough for peer ids");
    }
}
