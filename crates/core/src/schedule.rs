//! The transfer scheduler: which part to send next, when to retry, when to give up.
//!
//! A plain state machine with no I/O and no clock: the driver calls [`Scheduler::poll`] with the
//! current time and acts on the [`Action`] it gets, then reports each attempt's outcome with
//! [`Scheduler::on_success`], [`Scheduler::on_failure`] or [`Scheduler::on_retry_now`]. The same
//! scheduler drives uploads (parts) and downloads (ranges).
//!
//! Rules: at most `concurrency` parts in flight; the lowest-numbered eligible part goes first (so
//! first attempts happen in increasing order, which lets the driver hash the file in one pass); a
//! failed part waits a random delay in `[0, min(max_delay, base_delay × 2^(attempt-1))]` ("full
//! jitter"), and never less than the server's `Retry-After`; a part that fails `max_attempts` times,
//! or more than `max_retries` retries overall, fails the transfer; a fatal failure fails it at once.
//!
//! An upload's drivers report how each attempt went with [`Scheduler::on_attempt`], which also
//! decides the remedies particular to parts sent to signed URLs: a URL that expired is renewed and
//! the part sent again at once, the first time at no cost; when the store's own URLs cannot be
//! reached but the API can, every part goes through the API from then on; a part sent but not
//! confirmed is sent again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::plan::PartSpan;

/// How retries are spaced and capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Attempts per part, the first included.
    pub max_attempts: u32,
    /// Retries over the whole transfer.
    pub max_retries: u32,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: 10,
            max_retries: 1000,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send this part now; `attempt` counts from 1.
    Start { span: PartSpan, attempt: u32 },
    /// Nothing can start before this instant unless an attempt finishes first.
    WaitUntil(Instant),
    /// Wait for an attempt in flight to finish.
    Idle,
    /// Every part is done.
    Complete,
    /// The transfer cannot succeed.
    Fail(ScheduleError),
}

/// How an attempt at a part went wrong, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The part's signed URL had expired.
    UrlExpired,
    /// The store's own URL could not be reached, and the API can be.
    StoreUnreachable,
    /// The part went out, but the server could not confirm it has it.
    Unconfirmed,
    Failed(Failure),
}

/// What the driver does about an [`Attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Get the part a fresh URL and send it again at once; no retry is counted.
    RenewUrl,
    /// Send this part and every later one through the API from now on, starting at once.
    ViaApi,
    /// Send it again after `delay`, with a fresh URL when `renew_url`.
    RetryAfter { delay: Duration, renew_url: bool },
    /// The part cannot be sent: the transfer fails once the parts in flight settle.
    GiveUp,
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth another try (network trouble, 5xx, 429), perhaps after the server's `Retry-After`.
    Retryable { retry_after: Option<Duration> },
    /// Another try cannot help (the session is gone, the request is refused).
    Fatal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("part {part} failed {attempts} times")]
    PartAttemptsExhausted { part: u32, attempts: u32 },
    #[error("gave up after {0} retries")]
    RetriesExhausted(u32),
    #[error("part {0} failed and cannot be retried")]
    Fatal(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending { attempts: u32, not_before: Option<Instant> },
    InFlight { attempts: u32 },
    Done,
}

/// Schedules the parts of one transfer.
#[derive(Debug, Clone)]
pub struct Scheduler {
    spans: Vec<PartSpan>,
    slots: Vec<Slot>,
    /// Every slot before this index is done.
    done_prefix: usize,
    in_flight: usize,
    concurrency: usize,
    policy: RetryPolicy,
    retries: u32,
    done_bytes: u64,
    failed: Option<ScheduleError>,
    rng: u64,
    /// Parts whose URL was renewed once at no cost.
    renewed: BTreeSet<u32>,
    /// Parts go through the API rather than to the store's URLs.
    via_api: bool,
}

impl Scheduler {
    /// `spans` in part order; `is_done` says which are already stored (a resume); `seed` feeds the
    /// jitter.
    pub fn new(
        spans: Vec<PartSpan>,
        is_done: impl Fn(u32) -> bool,
        concurrency: usize,
        policy: RetryPolicy,
        seed: u64,
    ) -> Scheduler {
        let slots: Vec<Slot> = spans
            .iter()
            .map(|s| if is_done(s.part_number) { Slot::Done } else { Slot::Pending { attempts: 0, not_before: None } })
            .collect();
        let done_bytes = spans.iter().zip(&slots).filter(|(_, s)| **s == Slot::Done).map(|(sp, _)| sp.size).sum();
        let mut s = Scheduler {
            spans,
            slots,
            done_prefix: 0,
            in_flight: 0,
            concurrency: concurrency.max(1),
            policy,
            retries: 0,
            done_bytes,
            failed: None,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            renewed: BTreeSet::new(),
            via_api: false,
        };
        s.advance_prefix();
        s
    }

    fn advance_prefix(&mut self) {
        while self.slots.get(self.done_prefix) == Some(&Slot::Done) {
            self.done_prefix += 1;
        }
    }

    fn index(&self, part_number: u32) -> Option<usize> {
        // Spans are in part order; numbers are usually 1..=n, so try the direct slot first.
        let guess = (part_number as usize).wrapping_sub(1);
        if self.spans.get(guess).is_some_and(|s| s.part_number == part_number) {
            return Some(guess);
        }
        self.spans.binary_search_by_key(&part_number, |s| s.part_number).ok()
    }

    /// The next thing to do at `now`.
    pub fn poll(&mut self, now: Instant) -> Action {
        if let Some(e) = self.failed {
            return if self.in_flight > 0 { Action::Idle } else { Action::Fail(e) };
        }
        if self.done_prefix == self.slots.len() {
            return Action::Complete;
        }
        let mut earliest: Option<Instant> = None;
        if self.in_flight < self.concurrency {
            for i in self.done_prefix..self.slots.len() {
                if let Slot::Pending { attempts, not_before } = self.slots[i] {
                    match not_before {
                        Some(t) if t > now => earliest = Some(earliest.map_or(t, |e: Instant| e.min(t))),
                        _ => {
                            self.slots[i] = Slot::InFlight { attempts: attempts + 1 };
                            self.in_flight += 1;
                            return Action::Start { span: self.spans[i], attempt: attempts + 1 };
                        }
                    }
                }
            }
        }
        match earliest {
            Some(t) => Action::WaitUntil(t),
            None => Action::Idle,
        }
    }

    fn take_in_flight(&mut self, part_number: u32) -> Option<(usize, u32)> {
        let i = self.index(part_number)?;
        match self.slots[i] {
            Slot::InFlight { attempts } => {
                self.in_flight -= 1;
                Some((i, attempts))
            }
            _ => None,
        }
    }

    /// The part is stored. Reports for parts not in flight are ignored.
    pub fn on_success(&mut self, part_number: u32) {
        if let Some((i, _)) = self.take_in_flight(part_number) {
            self.slots[i] = Slot::Done;
            self.done_bytes += self.spans[i].size;
            self.advance_prefix();
        }
    }

    /// The attempt failed. Returns the delay before the part may be tried again, if it will be.
    pub fn on_failure(&mut self, part_number: u32, now: Instant, failure: Failure) -> Option<Duration> {
        let (i, attempts) = self.take_in_flight(part_number)?;
        let retry_after = match failure {
            Failure::Fatal => {
                self.fail(ScheduleError::Fatal(part_number));
                self.slots[i] = Slot::Pending { attempts, not_before: None };
                return None;
            }
            Failure::Retryable { retry_after } => retry_after,
        };
        self.retries += 1;
        if attempts >= self.policy.max_attempts {
            self.fail(ScheduleError::PartAttemptsExhausted { part: part_number, attempts });
        } else if self.retries > self.policy.max_retries {
            self.fail(ScheduleError::RetriesExhausted(self.retries - 1));
        }
        let ceiling = self.backoff_ceiling(attempts);
        let jittered = ceiling.mul_f64(self.next_unit());
        let delay = match retry_after {
            Some(ra) => jittered.max(ra.min(self.policy.max_retry_after)),
            None => jittered,
        };
        self.slots[i] = Slot::Pending { attempts, not_before: Some(now + delay) };
        if self.failed.is_some() { None } else { Some(delay) }
    }

    /// How an attempt at a part in flight went wrong, and what to do about it.
    pub fn on_attempt(&mut self, part_number: u32, now: Instant, attempt: Attempt) -> Remedy {
        let failure = match attempt {
            Attempt::UrlExpired if self.renewed.insert(part_number) => {
                self.on_retry_now(part_number);
                return Remedy::RenewUrl;
            }
            Attempt::StoreUnreachable if !self.via_api => {
                self.via_api = true;
                self.on_retry_now(part_number);
                return Remedy::ViaApi;
            }
            // Clocks disagree, or the URL aged in a queue: a fresh one will do, but this time
            // it costs a retry. A part sent but not confirmed is sent again.
            Attempt::UrlExpired | Attempt::StoreUnreachable | Attempt::Unconfirmed => {
                Failure::Retryable { retry_after: None }
            }
            Attempt::Failed(f) => f,
        };
        match self.on_failure(part_number, now, failure) {
            Some(delay) => Remedy::RetryAfter { delay, renew_url: attempt == Attempt::UrlExpired },
            None => Remedy::GiveUp,
        }
    }

    /// Whether parts go through the API (see [`Remedy::ViaApi`]).
    pub fn via_api(&self) -> bool {
        self.via_api
    }

    /// The attempt did not happen through no fault of the part (e.g. its URL had expired and has
    /// been renewed): try again at once, without counting a retry.
    pub fn on_retry_now(&mut self, part_number: u32) {
        if let Some((i, attempts)) = self.take_in_flight(part_number) {
            self.slots[i] = Slot::Pending { attempts: attempts.saturating_sub(1), not_before: None };
        }
    }

    fn fail(&mut self, e: ScheduleError) {
        self.failed.get_or_insert(e);
    }

    fn backoff_ceiling(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(31);
        self.policy.base_delay.saturating_mul(1u32 << exp).min(self.policy.max_delay)
    }

    /// A uniform number in [0, 1) from splitmix64.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Bytes of parts that are done.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    pub fn is_done(&self, part_number: u32) -> bool {
        self.index(part_number).is_some_and(|i| self.slots[i] == Slot::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Limits, PartPlan};

    fn spans(n: u32, size: u64) -> Vec<PartSpan> {
        PartPlan::new(u64::from(n) * size, Some(size), &Limits::EMBEDDED).unwrap().parts().collect()
    }

    const P: RetryPolicy = RetryPolicy {
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        max_attempts: 4,
        max_retries: 6,
        max_retry_after: Duration::from_secs(60),
    };

    fn started(a: Action) -> u32 {
        match a {
            Action::Start { span, .. } => span.part_number,
            other => panic!("expected Start, got {other:?}"),
        }
    }

    #[test]
    fn sends_lowest_first_within_concurrency_then_completes() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(5, 65536), |_| false, 2, P, 1);
        assert_eq!(started(s.poll(t)), 1);
        assert_eq!(started(s.poll(t)), 2);
        assert_eq!(s.poll(t), Action::Idle);
        s.on_success(2);
        assert_eq!(started(s.poll(t)), 3);
        s.on_success(1);
        s.on_success(3);
        assert_eq!(started(s.poll(t)), 4);
        assert_eq!(started(s.poll(t)), 5);
        s.on_success(5);
        assert_eq!(s.poll(t), Action::Idle);
        s.on_success(4);
        assert_eq!(s.poll(t), Action::Complete);
        assert_eq!(s.done_bytes(), 5 * 65536);
    }

    #[test]
    fn resume_skips_what_is_stored() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(6, 65536), |n| n % 2 == 1, 8, P, 1);
        assert_eq!(s.done_bytes(), 3 * 65536);
        let sent: Vec<u32> = (0..3).map(|_| started(s.poll(t))).collect();
        assert_eq!(sent, vec![2, 4, 6]);
        assert_eq!(s.poll(t), Action::Idle);
        let mut all_done = Scheduler::new(spans(3, 65536), |_| true, 8, P, 1);
        assert_eq!(all_done.poll(t), Action::Complete);
    }

    #[test]
    fn failures_back_off_with_full_jitter_in_virtual_time() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(spans(1, 65536), |_| false, 1, P, 7);
        for attempt in 1..=3u32 {
            let now = t0 + Duration::from_secs(u64::from(attempt) * 100);
            assert_eq!(s.poll(now), Action::Start { span: spans(1, 65536)[0], attempt });
            let delay = s.on_failure(1, now, Failure::Retryable { retry_after: None }).unwrap();
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1)));
            assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
            if !delay.is_zero() {
                assert_eq!(s.poll(now), Action::WaitUntil(now + delay));
            }
        }
        assert_eq!(s.retries(), 3);
    }

    #[test]
    fn jitter_spreads_and_is_capped() {
        let t = Instant::now();
        let mut delays = Vec::new();
        for seed in 0..200 {
            let mut s = Scheduler::new(
                spans(1, 65536),
                |_| false,
                1,
                RetryPolicy { max_attempts: 100, max_retries: 100, ..P },
                seed,
            );
            let mut last = Duration::ZERO;
            for _ in 0..10 {
                s.poll(t + Duration::from_secs(3600));
                last = s.on_failure(1, t, Failure::Retryable { retry_after: None }).unwrap();
                assert!(last <= P.max_delay);
            }
            delays.push(last);
        }
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*max - *min > Duration::from_millis(1000), "full jitter spreads retries: {min:?}..{max:?}");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(1, 65536), |_| false, 1, P, 3);
        s.poll(t);
        let d = s.on_failure(1, t, Failure::Retryable { retry_after: Some(Duration::from_secs(5)) }).unwrap();
        assert!(d >= Duration::from_secs(5));
        assert_eq!(s.poll(t + Duration::from_secs(4)), Action::WaitUntil(t + d));
        assert!(matches!(s.poll(t + d), Action::Start { attempt: 2, .. }));
        let d = s.on_failure(1, t, Failure::Retryable { retry_after: Some(Duration::from_secs(86_400)) }).unwrap();
        assert_eq!(d, P.max_retry_after, "an absurd Retry-After is capped");
    }

    #[test]
    fn a_part_that_keeps_failing_fails_the_transfer_after_in_flight_parts_settle() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(2, 65536), |_| false, 2, P, 1);
        assert_eq!(started(s.poll(t)), 1);
        assert_eq!(started(s.poll(t)), 2);
        let mut now = t;
        for _ in 1..P.max_attempts {
            s.on_failure(1, now, Failure::Retryable { retry_after: None });
            now += P.max_delay;
            assert_eq!(started(s.poll(now)), 1);
        }
        assert_eq!(s.on_failure(1, now, Failure::Retryable { retry_after: None }), None);
        assert_eq!(s.poll(now), Action::Idle, "part 2 is still in flight");
        s.on_success(2);
        assert_eq!(s.poll(now), Action::Fail(ScheduleError::PartAttemptsExhausted { part: 1, attempts: 4 }));
    }

    #[test]
    fn overall_retry_cap() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(10, 65536), |_| false, 10, P, 1);
        let mut now = t;
        for _ in 0..10 {
            s.poll(now);
        }
        for n in 1..=7 {
            s.on_failure(n, now, Failure::Retryable { retry_after: None });
        }
        now += Duration::from_secs(60);
        for n in 8..=10 {
            s.on_success(n);
        }
        assert_eq!(s.poll(now), Action::Fail(ScheduleError::RetriesExhausted(6)));
    }

    #[test]
    fn fatal_fails_at_once_and_retry_now_costs_nothing() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(2, 65536), |_| false, 1, P, 1);
        assert_eq!(s.poll(t), Action::Start { span: spans(2, 65536)[0], attempt: 1 });
        s.on_retry_now(1);
        assert_eq!(s.poll(t), Action::Start { span: spans(2, 65536)[0], attempt: 1 });
        assert_eq!(s.retries(), 0);
        assert_eq!(s.on_failure(1, t, Failure::Fatal), None);
        assert_eq!(s.poll(t), Action::Fail(ScheduleError::Fatal(1)));
    }

    #[test]
    fn stray_reports_are_ignored() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(2, 65536), |_| false, 1, P, 1);
        s.on_success(2);
        s.on_success(99);
        assert_eq!(s.on_failure(2, t, Failure::Fatal), None);
        assert_eq!(started(s.poll(t)), 1);
        s.on_success(1);
        s.on_success(1);
        assert_eq!(s.done_bytes(), 65536);
    }

    /// Random outcomes under many seeds: the invariants hold at every step and every run ends.
    #[test]
    fn invariants_under_random_outcomes() {
        for seed in 0..300u64 {
            let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let n = (next() % 12 + 1) as u32;
            let conc = (next() % 4 + 1) as usize;
            let policy = RetryPolicy { max_attempts: 6, max_retries: 40, ..P };
            let mut s = Scheduler::new(spans(n, 65536), |p| next_is(p, seed), conc, policy, seed);
            let mut now = Instant::now();
            let mut in_flight: Vec<u32> = Vec::new();
            let mut done = std::collections::BTreeSet::new();
            for p in 1..=n {
                if next_is(p, seed) {
                    done.insert(p);
                }
            }
            for _step in 0..10_000 {
                assert!(s.in_flight() <= conc);
                assert_eq!(s.in_flight(), in_flight.len());
                match s.poll(now) {
                    Action::Start { span, .. } => {
                        assert!(!done.contains(&span.part_number), "a done part is never sent again");
                        assert!(!in_flight.contains(&span.part_number));
                        in_flight.push(span.part_number);
                    }
                    Action::WaitUntil(t) => {
                        assert!(t > now);
                        now = t;
                    }
                    Action::Idle => {
                        assert!(!in_flight.is_empty(), "Idle only while something is in flight");
                        let i = (next() as usize) % in_flight.len();
                        let p = in_flight.swap_remove(i);
                        match next() % 10 {
                            0..=5 => {
                                s.on_success(p);
                                done.insert(p);
                            }
                            6 => s.on_retry_now(p),
                            7 if seed % 17 == 0 => {
                                s.on_failure(p, now, Failure::Fatal);
                            }
                            _ => {
                                s.on_failure(p, now, Failure::Retryable { retry_after: None });
                            }
                        }
                    }
                    Action::Complete => {
                        assert_eq!(done.len() as u32, n);
                        assert!(in_flight.is_empty());
                        break;
                    }
                    Action::Fail(_) => {
                        assert!(in_flight.is_empty(), "failure is reported once nothing is in flight");
                        break;
                    }
                }
            }
        }
    }

    fn next_is(p: u32, seed: u64) -> bool {
        (u64::from(p) * 31 + seed) % 5 == 0
    }

    #[test]
    fn an_expired_url_is_renewed_once_for_free_then_costs_a_retry() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(2, 65536), |_| false, 2, P, 5);
        assert_eq!(started(s.poll(t)), 1);
        assert_eq!(s.on_attempt(1, t, Attempt::UrlExpired), Remedy::RenewUrl);
        assert_eq!(s.retries(), 0);
        assert_eq!(s.poll(t), Action::Start { span: spans(2, 65536)[0], attempt: 1 }, "again at once, same attempt");
        match s.on_attempt(1, t, Attempt::UrlExpired) {
            Remedy::RetryAfter { renew_url: true, delay } => assert!(delay <= P.base_delay),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.retries(), 1);
        // Another part's first expiry is free too.
        assert_eq!(started(s.poll(t)), 2);
        assert_eq!(s.on_attempt(2, t, Attempt::UrlExpired), Remedy::RenewUrl);
    }

    #[test]
    fn an_unreachable_store_moves_every_part_to_the_api_once() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(3, 65536), |_| false, 3, P, 5);
        let (a, b) = (started(s.poll(t)), started(s.poll(t)));
        assert!(!s.via_api());
        assert_eq!(s.on_attempt(a, t, Attempt::StoreUnreachable), Remedy::ViaApi);
        assert!(s.via_api());
        // A part already on its way to the store that fails the same way is simply retried.
        assert!(matches!(s.on_attempt(b, t, Attempt::StoreUnreachable), Remedy::RetryAfter { renew_url: false, .. }));
        assert_eq!(s.retries(), 1);
    }

    #[test]
    fn unconfirmed_parts_are_sent_again_and_fatal_ones_give_up() {
        let t = Instant::now();
        let mut s = Scheduler::new(spans(2, 65536), |_| false, 2, P, 5);
        let (a, b) = (started(s.poll(t)), started(s.poll(t)));
        assert!(matches!(s.on_attempt(a, t, Attempt::Unconfirmed), Remedy::RetryAfter { .. }));
        assert_eq!(s.on_attempt(b, t, Attempt::Failed(Failure::Fatal)), Remedy::GiveUp);
        assert!(matches!(s.poll(t + Duration::from_secs(60)), Action::Fail(ScheduleError::Fatal(2))));
    }
}
