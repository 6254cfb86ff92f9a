//! The worker's side of one job: the life of its command, and what `pause`, `resume` and `cancel`
//! do to it. The driver runs the command in a process group of its own and sends each [`Signal`]
//! to the whole group.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{JobState, JobStatus};

/// A signal for the command's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGSTOP
    Stop,
    /// SIGCONT
    Continue,
    /// SIGTERM
    Terminate,
    /// SIGKILL
    Kill,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    /// Tell the client the job's state.
    Report(JobState),
    Signal(Signal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Downloading,
    Running,
    Paused,
    Cancelling,
    /// Cancelled before its command started: it never will.
    CancelledEarly,
    Uploading,
    Over,
}

/// One job on a worker.
#[derive(Debug)]
pub struct Run {
    phase: Phase,
    kill_grace: Duration,
    kill_at: Option<Instant>,
    cancelled: bool,
    actions: VecDeque<RunAction>,
}

impl Run {
    /// A job whose input is being fetched; a cancelled command gets `kill_grace` between SIGTERM
    /// and SIGKILL.
    pub fn new(kill_grace: Duration) -> Run {
        Run {
            phase: Phase::Downloading,
            kill_grace,
            kill_at: None,
            cancelled: false,
            actions: VecDeque::from([RunAction::Report(JobState::Downloading)]),
        }
    }

    pub fn poll(&mut self) -> Option<RunAction> {
        self.actions.pop_front()
    }

    /// Whether the command is to be started (the input is in and nobody cancelled the job).
    pub fn may_start(&self) -> bool {
        self.phase == Phase::Downloading
    }

    /// The command started.
    pub fn started(&mut self) {
        if self.phase == Phase::Downloading {
            self.phase = Phase::Running;
            self.actions.push_back(RunAction::Report(JobState::Running));
        }
    }

    pub fn pause(&mut self) {
        if self.phase == Phase::Running {
            self.phase = Phase::Paused;
            self.actions.push_back(RunAction::Signal(Signal::Stop));
            self.actions.push_back(RunAction::Report(JobState::Paused));
        }
    }

    pub fn resume(&mut self) {
        if self.phase == Phase::Paused {
            self.phase = Phase::Running;
            self.actions.push_back(RunAction::Signal(Signal::Continue));
            self.actions.push_back(RunAction::Report(JobState::Running));
        }
    }

    /// Asks the command to end, and ends it `kill_grace` later if it has not.
    pub fn cancel(&mut self, now: Instant) {
        match self.phase {
            Phase::Downloading => {
                self.phase = Phase::CancelledEarly;
                self.cancelled = true;
            }
            Phase::Running | Phase::Paused => {
                self.phase = Phase::Cancelling;
                self.cancelled = true;
                // A stopped process cannot act on SIGTERM until it runs again.
                self.actions.push_back(RunAction::Signal(Signal::Terminate));
                self.actions.push_back(RunAction::Signal(Signal::Continue));
                self.kill_at = Some(now + self.kill_grace);
                self.actions.push_back(RunAction::Report(JobState::Cancelling));
            }
            _ => {}
        }
    }

    /// When [`Run::tick`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.kill_at
    }

    pub fn tick(&mut self, now: Instant) {
        if self.kill_at.is_some_and(|at| now >= at) {
            self.kill_at = None;
            self.actions.push_back(RunAction::Signal(Signal::Kill));
        }
    }

    /// The command ended (or, cancelled early, never started): how the job went.
    pub fn exited(&mut self, success: bool, code: Option<i32>) -> (JobStatus, Option<String>) {
        self.kill_at = None;
        self.phase = Phase::Over;
        if self.cancelled {
            (JobStatus::Cancelled, None)
        } else if success {
            (JobStatus::Succeeded, None)
        } else {
            let why = match code {
                Some(c) => format!("the command exited with {c}"),
                None => "the command was killed by a signal".to_owned(),
            };
            (JobStatus::Failed, Some(why))
        }
    }

    /// The job's outputs are being stored.
    pub fn uploading(&mut self) {
        if self.phase != Phase::Uploading {
            self.phase = Phase::Uploading;
            self.actions.push_back(RunAction::Report(JobState::Uploading));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Run) -> Vec<RunAction> {
        std::iter::from_fn(|| r.poll()).collect()
    }

    use RunAction::{Report, Signal as S};

    #[test]
    fn pause_resume_and_a_clean_exit() {
        let mut r = Run::new(Duration::from_secs(5));
        assert_eq!(drain(&mut r), [Report(JobState::Downloading)]);
        assert!(r.may_start());
        r.started();
        r.pause();
        r.pause();
        r.resume();
        r.resume();
        assert_eq!(
            drain(&mut r),
            [
                Report(JobState::Running),
                S(Signal::Stop),
                Report(JobState::Paused),
                S(Signal::Continue),
                Report(JobState::Running)
            ],
            "a second pause or resume changes nothing"
        );
        assert_eq!(r.exited(true, Some(0)), (JobStatus::Succeeded, None));
        assert_eq!(r.exited(false, Some(3)), (JobStatus::Failed, Some("the command exited with 3".into())));
        r.uploading();
        assert_eq!(drain(&mut r), [Report(JobState::Uploading)]);
    }

    #[test]
    fn a_paused_job_is_cancelled_with_term_continue_then_kill_after_the_grace() {
        let t = Instant::now();
        let mut r = Run::new(Duration::from_secs(5));
        r.started();
        r.pause();
        drain(&mut r);
        r.cancel(t);
        assert_eq!(drain(&mut r), [S(Signal::Terminate), S(Signal::Continue), Report(JobState::Cancelling)]);
        r.cancel(t + Duration::from_secs(1));
        r.pause();
        r.resume();
        assert!(drain(&mut r).is_empty(), "once cancelling, commands change nothing");
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(5)));
        r.tick(t + Duration::from_secs(4));
        assert!(drain(&mut r).is_empty());
        r.tick(t + Duration::from_secs(5));
        assert_eq!(drain(&mut r), [S(Signal::Kill)]);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.exited(false, None), (JobStatus::Cancelled, None), "however it died");
    }

    #[test]
    fn a_job_cancelled_while_its_input_downloads_never_starts() {
        let t = Instant::now();
        let mut r = Run::new(Duration::from_secs(5));
        r.pause();
        r.cancel(t);
        assert!(!r.may_start());
        r.started();
        assert_eq!(drain(&mut r), [Report(JobState::Downloading)], "no signal: there is no command");
        assert_eq!(r.exited(false, None), (JobStatus::Cancelled, None));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_command_that_dies_of_a_signal_failed() {
        let mut r = Run::new(Duration::from_secs(5));
        r.started();
        let (status, why) = r.exited(false, None);
        assert_eq!((status, why.as_deref()), (JobStatus::Failed, Some("the command was killed by a signal")));
    }
}
