//! Time, injected: the service never reads the wall clock or sleeps on its own. Production runs
//! on [`SystemClock`]; tests run on [`ManualClock`] and move time forward by hand, so expiry,
//! TTLs, retry schedules and timeouts are tested in virtual time without waiting.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

/// A sleep in progress.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + 'static {
    /// The wall-clock time (records, expiry, event timestamps).
    fn now(&self) -> OffsetDateTime;
    /// Resolves once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The real time, and tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]); sleepers wake when it
/// passes their deadline.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<OffsetDateTime>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> ManualClock {
        ManualClock { now: watch::Sender::new(start) }
    }

    /// Moves time forward, waking every sleep whose deadline has come.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t += by);
    }

    /// How many sleeps are waiting: a test moves time only once the task it drives is asleep,
    /// or the task would measure its sleep from the time already moved.
    pub fn sleepers(&self) -> usize {
        self.now.receiver_count()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.borrow()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let mut rx = self.now.subscribe();
        let deadline = *rx.borrow() + duration;
        Box::pin(async move {
            // A clock that is gone never moves again: such a sleep never ends.
            while *rx.borrow_and_update() < deadline {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_time_passes_its_deadline() {
        let clock = std::sync::Arc::new(ManualClock::new(OffsetDateTime::UNIX_EPOCH));
        let sleep = tokio::spawn(clock.sleep(Duration::from_secs(10)));
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleep).await.unwrap().unwrap();
        assert_eq!(clock.now(), OffsetDateTime::UNIX_EPOCH + Duration::from_secs(10));
        clock.sleep(Duration::ZERO).await;
    }
}
