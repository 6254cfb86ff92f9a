//! Each upload's event log: appended durably, folded into a [`Tally`], and fanned out to the
//! streams watching it.
//!
//! The log lives in the store as batch records `events/{upload_id}/{first_id}` (one per append,
//! written `IfAbsent`), so it survives a restart and every server sharing the store sees the same
//! ids. An append folds the new event and the follow-ups it calls for (`progress`,
//! `partial_result`, `final_result`) into the tally and writes them as one record; if another
//! server took those ids first, the log is re-read and the append tried again. Within this process
//! a per-upload lock orders appends, and a broadcast channel wakes the streams.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ferry_bus::{Bus, Wake};
use ferry_core::events::{EventRecord, ProcessorKind, Tally, UploadEvent};
use ferry_store::{Condition, Store, StoreError};
use tokio::sync::{Mutex as AsyncMutex, broadcast};

use crate::clock::Clock;
use crate::error::ServiceError;

/// What an upload's log needs to know about the upload.
#[derive(Debug, Clone, Copy)]
pub struct LogSpec<'a> {
    pub upload_id: &'a str,
    pub size: u64,
    pub part_count: u32,
    pub processor: Option<ProcessorKind>,
}

/// The largest batch of records sent to other instances with its wake-up.
const MAX_NEWS: usize = 16 * 1024;

struct Log {
    tally: AsyncMutex<Option<Tally>>,
    tx: broadcast::Sender<Arc<EventRecord>>,
}

pub struct Events {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    bus: Arc<dyn Bus>,
    logs: Mutex<HashMap<String, Arc<Log>>>,
}

fn folder(upload_id: &str) -> String {
    format!("events/{upload_id}/")
}

fn batch_name(upload_id: &str, first_id: u64) -> String {
    format!("events/{upload_id}/{first_id:012}")
}

fn first_id_of(name: &str) -> Option<u64> {
    name.rsplit('/').next()?.parse().ok()
}

impl Events {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, bus: Arc<dyn Bus>) -> Events {
        Events { store, clock, bus, logs: Mutex::new(HashMap::new()) }
    }

    fn log(&self, upload_id: &str) -> Arc<Log> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.len() > 1024 {
            // Logs nobody is using are read again from the store when next needed.
            logs.retain(|_, l| Arc::strong_count(l) > 1 || l.tx.receiver_count() > 0);
        }
        Arc::clone(
            logs.entry(upload_id.to_owned())
                .or_insert_with(|| Arc::new(Log { tally: AsyncMutex::new(None), tx: broadcast::channel(1024).0 })),
        )
    }

    /// Every event after `after`, in order, read from the store.
    pub async fn read_after(&self, upload_id: &str, after: u64) -> Result<Vec<EventRecord>, StoreError> {
        let names = self.store.list_records(&folder(upload_id)).await?;
        let mut batches: Vec<(u64, String)> =
            names.into_iter().filter_map(|n| first_id_of(&n).map(|id| (id, n))).collect();
        batches.sort();
        // The batch holding `after + 1` starts at or before it.
        let start = batches.iter().rposition(|(id, _)| *id <= after + 1).unwrap_or(0);
        let mut out = Vec::new();
        for (_, name) in &batches[start..] {
            let Some(record) = self.store.get_record(name).await? else { continue };
            let events: Vec<EventRecord> = serde_json::from_slice(&record.bytes)
                .map_err(|e| StoreError::Corrupt(format!("event batch {name}: {e}")))?;
            out.extend(events.into_iter().filter(|e| e.id > after));
        }
        out.sort_by_key(|e| e.id);
        out.dedup_by_key(|e| e.id);
        Ok(out)
    }

    async fn load(&self, spec: LogSpec<'_>) -> Result<Tally, StoreError> {
        let mut tally = Tally::new(spec.size, spec.part_count, spec.processor);
        for record in self.read_after(spec.upload_id, 0).await? {
            tally.apply(&record);
        }
        Ok(tally)
    }

    /// Appends `event` and its follow-ups; returns what was appended (nothing once the upload was
    /// cancelled, expired or failed).
    pub async fn emit(&self, spec: LogSpec<'_>, event: UploadEvent) -> Result<Vec<Arc<EventRecord>>, ServiceError> {
        let log = self.log(spec.upload_id);
        let mut guard = log.tally.lock().await;
        for _ in 0..8 {
            let mut tally = match guard.take() {
                Some(t) => t,
                None => self.load(spec).await?,
            };
            if tally.is_ended() {
                *guard = Some(tally);
                return Ok(Vec::new());
            }
            let first = tally.last_id() + 1;
            let now = self.clock.now();
            let mut queue = VecDeque::from([event.clone()]);
            let mut batch = Vec::new();
            while let Some(e) = queue.pop_front() {
                let record = EventRecord { id: tally.last_id() + 1, at: now, event: e };
                tally.apply(&record);
                for f in tally.follow_ups(&record.event).into_iter().rev() {
                    queue.push_front(f);
                }
                batch.push(record);
            }
            let bytes = serde_json::to_vec(&batch).map_err(|e| ServiceError::bug(e.to_string()))?;
            let news = (bytes.len() <= MAX_NEWS).then(|| String::from_utf8_lossy(&bytes).into_owned());
            match self.store.put_record(&batch_name(spec.upload_id, first), bytes, Condition::IfAbsent).await {
                Ok(_) => {
                    *guard = Some(tally);
                    let batch: Vec<Arc<EventRecord>> = batch.into_iter().map(Arc::new).collect();
                    for r in &batch {
                        // No receivers is fine: nobody is watching.
                        let _ = log.tx.send(Arc::clone(r));
                    }
                    // Other instances' streams are told what was appended (a batch too large to
                    // carry, only that there is news: they read the log). Not awaited: an upload
                    // does not wait for (or fail with) the bus.
                    let (bus, upload_id) = (Arc::clone(&self.bus), spec.upload_id.to_owned());
                    tokio::spawn(async move {
                        if let Err(e) = bus.wake(&upload_id, news.as_deref()).await {
                            tracing::debug!(upload_id, error = %e, "could not wake other instances' event streams");
                        }
                    });
                    return Ok(batch);
                }
                // Another server appended first: read what it wrote, then try again.
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::bug(format!("could not append to the event log of {} (too much contention)", spec.upload_id)))
    }

    /// The upload's tally as of now.
    pub async fn tally(&self, spec: LogSpec<'_>) -> Result<Tally, ServiceError> {
        let log = self.log(spec.upload_id);
        let mut guard = log.tally.lock().await;
        let tally = match guard.take() {
            // Catch up with what other servers sharing the store appended.
            Some(mut t) => {
                for record in self.read_after(spec.upload_id, t.last_id()).await? {
                    t.apply(&record);
                }
                t
            }
            None => self.load(spec).await?,
        };
        *guard = Some(tally.clone());
        Ok(tally)
    }

    /// Whether the log records `part_number` received with `etag`, as far as this process knows
    /// (it does not re-read what other servers appended since).
    pub async fn knows_part(&self, spec: LogSpec<'_>, part_number: u32, etag: &str) -> bool {
        let log = self.log(spec.upload_id);
        let mut guard = log.tally.lock().await;
        if guard.is_none() {
            match self.load(spec).await {
                Ok(t) => *guard = Some(t),
                Err(e) => {
                    tracing::warn!(upload_id = spec.upload_id, error = %e, "cannot read the event log");
                    return false;
                }
            }
        }
        guard.as_ref().is_some_and(|t| t.has_part(part_number, etag))
    }

    /// Live events of an upload appended by this process from now on.
    pub fn subscribe(&self, upload_id: &str) -> broadcast::Receiver<Arc<EventRecord>> {
        self.log(upload_id).tx.subscribe()
    }

    /// What other instances appended events to, from now on.
    pub fn remote_appends(&self) -> broadcast::Receiver<Wake> {
        self.bus.wakes()
    }
}
