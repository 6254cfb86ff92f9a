//! Following an upload's events: what was missed since an event id, then each event as it is
//! appended — by this process (woken at once) or by another server sharing the store (read from
//! the log when the bus says it appended, and every [`POLL`] in case a wake-up was lost). A follower ends after the upload's final event, after the configured
//! idle time with nothing to send, or when its caller's shutdown token is cancelled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Wake;
use ferry_core::events::{EventRecord, ProcessorKind, ends_stream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::uploads::Service;

/// How often a follower reads the log for events other servers appended, woken or not.
pub const POLL: Duration = Duration::from_secs(2);

/// A position in an upload's log.
pub struct Follow {
    service: Arc<Service>,
    upload_id: String,
    processor: Option<ProcessorKind>,
    last: u64,
    pending: VecDeque<Arc<EventRecord>>,
    rx: broadcast::Receiver<Arc<EventRecord>>,
    /// What other instances appended to (`None` once the bus is gone).
    remote: Option<broadcast::Receiver<Wake>>,
    done: bool,
    shutdown: CancellationToken,
}

impl Service {
    /// Follows the upload's log from after event `last` (0: from the start).
    pub async fn follow(
        self: &Arc<Self>,
        upload_id: &str,
        last: u64,
        shutdown: CancellationToken,
    ) -> Result<Follow, ServiceError> {
        let (session, _) = self.load(upload_id).await?;
        // Subscribe before reading the log, so nothing appended in between is missed.
        let rx = self.events.subscribe(upload_id);
        let remote = Some(self.events.remote_appends());
        let replay = self.events.read_after(upload_id, last).await?;
        // Nothing to replay, nothing more coming: end at once rather than idle.
        let settled = replay.is_empty()
            && !self.runner.busy(upload_id)
            && self.events.tally(session.log_spec()).await?.is_settled();
        Ok(Follow {
            service: Arc::clone(self),
            upload_id: upload_id.to_owned(),
            processor: session.processor_kind,
            last,
            pending: replay.into_iter().map(Arc::new).collect(),
            rx,
            remote,
            done: settled,
            shutdown,
        })
    }
}

impl Follow {
    /// The next event, or `None` when following should end.
    pub async fn next(&mut self) -> Option<Arc<EventRecord>> {
        let clock = Arc::clone(&self.service.clock);
        let mut idle = clock.sleep(self.service.config.events_idle_timeout);
        loop {
            if self.done {
                return None;
            }
            while let Some(r) = self.pending.pop_front() {
                if r.id <= self.last {
                    continue;
                }
                self.last = r.id;
                self.done = ends_stream(&r.event, self.processor);
                return Some(r);
            }
            let remote = &mut self.remote;
            let catch_up = tokio::select! {
                msg = self.rx.recv() => match msg {
                    // The next one in order: no need to read the log.
                    Ok(r) if r.id == self.last + 1 => {
                        self.pending.push_back(r);
                        false
                    }
                    Ok(r) => r.id > self.last,
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return None,
                },
                woken = async { Some(remote.as_mut()?.recv().await) }, if remote.is_some() => match woken {
                    Some(Ok(wake)) if wake.upload_id == self.upload_id => {
                        // The next ones in order, as the other instance appended them: no need to
                        // read the log. Anything else (a gap, no news): read it.
                        match wake.news.as_deref().and_then(|n| serde_json::from_str::<Vec<EventRecord>>(n).ok()) {
                            Some(batch) if batch.first().is_some_and(|r| r.id == self.last + 1) => {
                                self.pending.extend(batch.into_iter().map(Arc::new));
                                false
                            }
                            _ => true,
                        }
                    }
                    Some(Ok(_)) => false,
                    Some(Err(RecvError::Lagged(_))) => true,
                    // The bus is gone: polling from now on.
                    _ => {
                        *remote = None;
                        false
                    }
                },
                _ = clock.sleep(POLL) => true,
                _ = &mut idle => return None,
                _ = self.shutdown.cancelled() => return None,
            };
            if catch_up {
                match self.service.events.read_after(&self.upload_id, self.last).await {
                    Ok(records) => self.pending.extend(records.into_iter().map(Arc::new)),
                    Err(e) => {
                        tracing::warn!(upload_id = %self.upload_id, error = %e, "cannot read the event log; ending the stream");
                        return None;
                    }
                }
            }
        }
    }
}
