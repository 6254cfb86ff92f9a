//! Jobs a worker left behind when it was killed (`kill -9`, a crash, a reboot): their commands
//! may still run, orphaned, and nothing records that they never finished. Each job keeps a
//! record in its work dir naming the worker process that owns it and the command's process; a
//! worker that starts ends the commands of jobs whose owner is gone, records those jobs as
//! failed in their room's manifest (so `ferry job attach` learns it) and removes their dirs.
//!
//! Processes are named by pid and start time (from `/proc`), so a pid the system has since given
//! to another process is never signalled.

use std::path::{Path, PathBuf};

use ferry_client::Api;
use ferry_core::job::JobStatus;
use ferry_core::room::ManifestEntry;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

const RECORD: &str = "job.json";

/// A process, told apart from a later one with the same pid by when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start: u64,
}

impl Process {
    pub fn of(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Process { pid, start: start_time(&stat)? })
    }

    fn alive(&self) -> bool {
        Process::of(self.pid).is_some_and(|now| now.start == self.start)
    }
}

/// The start time in a `/proc/PID/stat` line. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so the fields are counted from the last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What a job's work dir says about it while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub room: String,
    pub worker: String,
    pub input: String,
    pub started_at: u64,
    /// The worker process running the job.
    pub owner: Process,
    /// The command, leader of its own process group, once started.
    pub command: Option<Process>,
}

impl JobRecord {
    /// Writes the record into the job's dir, replacing it whole and durably: a worker killed
    /// (or a machine that loses power) just after leaves the record for the next one to find.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        ferry_store::durable::write(&dir.join(RECORD), &serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }
}

/// What to do with a job found in the work dir.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its worker still runs it.
    Running,
    /// Its worker is gone: end the command's process group if `kill`, and record the job failed.
    Orphaned { kill: bool },
}

/// Decides from what is alive: the owner, the command's leader, and whether a live process
/// with the leader's pid is some other process (then the group is not ours to signal).
pub fn verdict(owner_alive: bool, command: Option<(bool, bool)>) -> Verdict {
    match (owner_alive, command) {
        (true, _) => Verdict::Running,
        (false, None) => Verdict::Orphaned { kill: false },
        // The leader is gone but members of its group may remain: while any does, the kernel
        // does not give the group's number to a new process, so signalling it reaches only them.
        (false, Some((leader_alive, pid_reused))) => Verdict::Orphaned { kill: leader_alive || !pid_reused },
    }
}

/// Jobs in `work_dir` with a record, and their dirs.
fn found(work_dir: &Path) -> Vec<(PathBuf, JobRecord)> {
    let Ok(entries) = std::fs::read_dir(work_dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let record = std::fs::read(e.path().join(RECORD)).ok()?;
            Some((e.path(), serde_json::from_slice(&record).ok()?))
        })
        .collect()
}

/// Ends and records the jobs in `work_dir` whose worker is gone. A job whose manifest entry
/// cannot be written now keeps its dir, for the next start to try again.
pub async fn sweep(work_dir: &Path, api: &Api, now: u64) {
    for (dir, job) in found(work_dir) {
        let command = job.command.map(|c| (c.alive(), Process::of(c.pid).is_some_and(|p| p.start != c.start)));
        let Verdict::Orphaned { kill } = verdict(job.owner.alive(), command) else { continue };
        if let (true, Some(c)) = (kill, job.command)
            && let Ok(group) = i32::try_from(c.pid)
        {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
        // The worker may have died after recording the job and before removing its dir.
        let recorded = match api.manifest(&job.room).await {
            Ok((m, _)) if m.entries.iter().any(|e| e.job_id == job.job_id) => Ok(false),
            Ok(_) => {
                let entry = ManifestEntry {
                    job_id: job.job_id.clone(),
                    worker: job.worker.clone(),
                    status: JobStatus::Failed,
                    inputs: vec![job.input.clone()],
                    outputs: Vec::new(),
                    started_at: job.started_at,
                    finished_at: now,
                };
                api.record_in_manifest(&job.room, &entry).await.map(|_| true)
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok(failed) => {
                if failed {
                    tracing::warn!(
                        job = %job.job_id,
                        room = %job.room,
                        "a job was left behind by a worker that stopped; it is recorded as failed"
                    );
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e) => tracing::warn!(job = %job.job_id, error = %e, "a job was left behind, and recording it failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_come_from_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(stat), Some(987_654));
        assert_eq!(start_time("4242 (sh) S 1 2 3"), None, "too few fields");
        assert_eq!(start_time("no parenthesis at all"), None);
        assert_eq!(start_time("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_different_start_is_not() {
        let me = Process::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(!Process { start: me.start + 1, ..me }.alive());
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(true, None), Verdict::Running);
        assert_eq!(verdict(true, Some((true, false))), Verdict::Running);
        assert_eq!(verdict(false, None), Verdict::Orphaned { kill: false }, "killed before the command started");
        assert_eq!(verdict(false, Some((true, false))), Verdict::Orphaned { kill: true });
        assert_eq!(verdict(false, Some((false, false))), Verdict::Orphaned { kill: true }, "the leader's children");
        assert_eq!(verdict(false, Some((false, true))), Verdict::Orphaned { kill: false }, "the pid is another's now");
    }

    #[test]
    fn records_round_trip_and_only_dirs_with_one_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobRecord {
            job_id: "j1".into(),
            room: "lab".into(),
            worker: "w1".into(),
            input: "rooms/lab/inputs/x".into(),
            started_at: 5,
            owner: Process { pid: 1, start: 2 },
            command: Some(Process { pid: 3, start: 4 }),
        };
        let with = dir.path().join("j1");
        std::fs::create_dir(&with).unwrap();
        job.save(&with).unwrap();
        std::fs::create_dir(dir.path().join("no-record")).unwrap();
        let garbled = dir.path().join("garbled");
        std::fs::create_dir(&garbled).unwrap();
        std::fs::write(garbled.join(RECORD), b"{not json").unwrap();
        assert_eq!(found(dir.path()), vec![(with, job)]);
        assert!(found(&dir.path().join("missing")).is_empty());
    }
}
