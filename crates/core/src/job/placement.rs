//! The client's side of placing a job: ask the worker it names, or each worker in the room in
//! turn — waiting for one to join if there is none — until one takes the job. A worker that is
//! busy passes it on to the next; one that refuses it, or (when named) is busy, ends the attempt
//! with the reason. A worker that leaves while asked is waited for like one not there yet: it
//! may be joining again (its server instance died), and the driver's wait bounds it.

use std::collections::VecDeque;

use super::JobSignal;
use crate::signal::{Outbound, PeerInfo, Role};

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementAction {
    /// Send the `job_request` to this worker.
    Ask(String),
    /// The worker took the job, which listens as peer `peer`.
    Placed {
        worker: String,
        peer: String,
    },
    Fail(String),
}

/// Finding a worker for one job.
#[derive(Debug)]
pub struct Placement {
    job_id: String,
    wanted: Option<String>,
    untried: VecDeque<String>,
    busy: Vec<String>,
    asking: Option<String>,
    over: bool,
    actions: VecDeque<PlacementAction>,
}

impl Placement {
    /// Places job `job_id` with the worker `wanted`, or any worker among `peers` and those that
    /// join later.
    pub fn new(job_id: &str, wanted: Option<&str>, peers: &[PeerInfo]) -> Placement {
        let mut p = Placement {
            job_id: job_id.to_owned(),
            wanted: wanted.map(str::to_owned),
            untried: VecDeque::new(),
            busy: Vec::new(),
            asking: None,
            over: false,
            actions: VecDeque::new(),
        };
        p.untried = peers.iter().filter(|i| p.fits(&i.peer_id, i.role)).map(|i| i.peer_id.clone()).collect();
        p.next();
        p
    }

    pub fn poll(&mut self) -> Option<PlacementAction> {
        self.actions.pop_front()
    }

    /// The worker asked, whose answer is awaited.
    pub fn asking(&self) -> Option<&str> {
        self.asking.as_deref()
    }

    fn fits(&self, peer_id: &str, role: Role) -> bool {
        self.wanted.as_deref().map_or(role == Role::Worker, |w| w == peer_id)
    }

    /// Something the signaling connection delivered.
    pub fn handle(&mut self, message: &Outbound) {
        if self.over {
            return;
        }
        match message {
            Outbound::PeerMessage { from, payload } if Some(from.as_str()) == self.asking.as_deref() => {
                match serde_json::from_value::<JobSignal>(payload.clone()) {
                    Ok(JobSignal::JobAccepted { job_id, peer }) if job_id == self.job_id => {
                        self.end(PlacementAction::Placed { worker: from.clone(), peer });
                    }
                    Ok(JobSignal::Busy { job_id, message }) if job_id == self.job_id => {
                        if self.wanted.is_some() {
                            return self.end(PlacementAction::Fail(format!("{from} is busy: {message}")));
                        }
                        self.busy.push(format!("{from} ({message})"));
                        self.asking = None;
                        self.next();
                    }
                    Ok(JobSignal::JobRejected { job_id, message }) if job_id == self.job_id => {
                        self.end(PlacementAction::Fail(format!("{from} refused the job: {message}")));
                    }
                    _ => {}
                }
            }
            Outbound::PeerLeft { peer_id } if Some(peer_id.as_str()) == self.asking.as_deref() => {
                self.asking = None;
                self.next();
            }
            Outbound::PeerLeft { peer_id } => self.untried.retain(|w| w != peer_id),
            Outbound::PeerJoined { peer_id, role } if self.fits(peer_id, *role) => {
                self.untried.push_back(peer_id.clone());
                self.next();
            }
            _ => {}
        }
    }

    /// Asks the next worker, unless one is being asked; ends when every worker was busy.
    fn next(&mut self) {
        if self.asking.is_some() {
            return;
        }
        match self.untried.pop_front() {
            Some(w) => {
                self.asking = Some(w.clone());
                self.actions.push_back(PlacementAction::Ask(w));
            }
            None if !self.busy.is_empty() => {
                let why = format!("every worker in the room is busy: {}", self.busy.join("; "));
                self.end(PlacementAction::Fail(why));
            }
            // Nobody to ask yet: wait for a worker to join.
            None => {}
        }
    }

    fn end(&mut self, action: PlacementAction) {
        self.over = true;
        self.asking = None;
        self.actions.push_back(action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> PeerInfo {
        PeerInfo { peer_id: id.into(), role: Role::Worker }
    }

    fn answer(from: &str, signal: JobSignal) -> Outbound {
        Outbound::PeerMessage { from: from.into(), payload: serde_json::to_value(signal).unwrap() }
    }

    fn busy(from: &str) -> Outbound {
        answer(from, JobSignal::Busy { job_id: "j".into(), message: "runs 1 job(s) already".into() })
    }

    fn drain(p: &mut Placement) -> Vec<PlacementAction> {
        std::iter::from_fn(|| p.poll()).collect()
    }

    #[test]
    fn busy_workers_pass_the_job_on_until_one_takes_it() {
        let peers = [worker("w1"), PeerInfo { peer_id: "c".into(), role: Role::Client }, worker("w2")];
        let mut p = Placement::new("j", None, &peers);
        assert_eq!(drain(&mut p), [PlacementAction::Ask("w1".into())]);
        p.handle(&busy("w2"));
        assert!(drain(&mut p).is_empty(), "only the worker asked is listened to");
        p.handle(&busy("w1"));
        assert_eq!(drain(&mut p), [PlacementAction::Ask("w2".into())]);
        p.handle(&answer("w2", JobSignal::JobAccepted { job_id: "other".into(), peer: "x".into() }));
        assert!(drain(&mut p).is_empty(), "an answer about another job");
        p.handle(&answer("w2", JobSignal::JobAccepted { job_id: "j".into(), peer: "job-j".into() }));
        assert_eq!(drain(&mut p), [PlacementAction::Placed { worker: "w2".into(), peer: "job-j".into() }]);
        p.handle(&busy("w2"));
        assert!(drain(&mut p).is_empty(), "over");
    }

    #[test]
    fn when_every_worker_is_busy_the_reasons_are_listed() {
        let mut p = Placement::new("j", None, &[worker("w1"), worker("w2")]);
        drain(&mut p);
        p.handle(&busy("w1"));
        drain(&mut p);
        p.handle(&busy("w2"));
        match drain(&mut p).as_slice() {
            [PlacementAction::Fail(why)] => {
                assert!(why.starts_with("every worker in the room is busy: w1 (runs 1"), "{why}");
                assert!(why.contains("; w2 ("), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_room_waits_for_a_worker_to_join() {
        let mut p = Placement::new("j", None, &[]);
        assert!(drain(&mut p).is_empty());
        p.handle(&Outbound::PeerJoined { peer_id: "c2".into(), role: Role::Client });
        assert!(drain(&mut p).is_empty(), "a client is not asked for work");
        p.handle(&Outbound::PeerJoined { peer_id: "w9".into(), role: Role::Worker });
        assert_eq!(drain(&mut p), [PlacementAction::Ask("w9".into())]);
        // The worker asked leaves: nobody else, so wait again.
        p.handle(&Outbound::PeerLeft { peer_id: "w9".into() });
        assert!(drain(&mut p).is_empty() && p.asking().is_none());
    }

    #[test]
    fn a_named_worker_that_is_busy_or_refuses_ends_it() {
        for (event, why) in [
            (busy("gpu1"), "gpu1 is busy: runs 1 job(s) already"),
            (
                answer("gpu1", JobSignal::JobRejected { job_id: "j".into(), message: "bad id".into() }),
                "gpu1 refused the job: bad id",
            ),
        ] {
            let mut p = Placement::new("j", Some("gpu1"), &[worker("w1"), worker("gpu1")]);
            assert_eq!(drain(&mut p), [PlacementAction::Ask("gpu1".into())], "only the one named");
            p.handle(&event);
            assert_eq!(drain(&mut p), [PlacementAction::Fail(why.into())]);
        }
        // Named but not there yet: it may join, in any role.
        let mut p = Placement::new("j", Some("gpu1"), &[]);
        p.handle(&Outbound::PeerJoined { peer_id: "gpu1".into(), role: Role::Peer });
        assert_eq!(drain(&mut p), [PlacementAction::Ask("gpu1".into())]);
    }

    #[test]
    fn a_named_worker_that_leaves_while_asked_is_asked_again_when_it_is_back() {
        let mut p = Placement::new("j", Some("gpu1"), &[worker("gpu1")]);
        assert_eq!(drain(&mut p), [PlacementAction::Ask("gpu1".into())]);
        p.handle(&Outbound::PeerLeft { peer_id: "gpu1".into() });
        assert!(drain(&mut p).is_empty() && p.asking().is_none(), "waiting for it");
        p.handle(&Outbound::PeerJoined { peer_id: "w1".into(), role: Role::Worker });
        assert!(drain(&mut p).is_empty(), "only the one named");
        p.handle(&Outbound::PeerJoined { peer_id: "gpu1".into(), role: Role::Worker });
        assert_eq!(drain(&mut p), [PlacementAction::Ask("gpu1".into())]);
    }
}
