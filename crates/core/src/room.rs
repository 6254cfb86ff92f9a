//! A room's manifest: the results its workers produced (`GET`/`PUT /v1/rooms/{room}/manifest`).
//!
//! Several writers update one manifest, so every write is conditional on the version it read
//! (`If-Match`, or `If-None-Match: *` for the first); a writer that loses the race reads again,
//! re-applies its change and retries. [`Manifest::record`] is that change: it replaces the entry
//! with the same job id or adds it, so a retried write never records a job twice.

use serde::{Deserialize, Serialize};

use crate::job::{JobStatus, ManifestOutput};

/// Entries a manifest may hold; a room with more should start a new one.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

/// One job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub job_id: String,
    pub worker: String,
    pub status: JobStatus,
    /// Object keys the job read.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub outputs: Vec<ManifestOutput>,
    /// Unix seconds.
    pub started_at: u64,
    pub finished_at: u64,
}

impl Manifest {
    /// Adds `entry`, or replaces the entry of the same job.
    pub fn record(&mut self, entry: ManifestEntry) {
        match self.entries.iter_mut().find(|e| e.job_id == entry.job_id) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    /// Why this manifest cannot be stored, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!("a manifest holds at most {MAX_ENTRIES} entries, not {}", self.entries.len()));
        }
        let mut ids: Vec<&str> = self.entries.iter().map(|e| e.job_id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("job {:?} appears twice", w[0]));
        }
        if let Some(e) = self.entries.iter().find(|e| e.job_id.is_empty() || e.job_id.len() > 128) {
            return Err(format!("job ids are 1 to 128 characters, not {:?}", e.job_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::job::JobStatus;

    fn entry(job: &str, status: JobStatus) -> ManifestEntry {
        ManifestEntry {
            job_id: job.into(),
            worker: "w1".into(),
            status,
            inputs: vec!["in.bin".into()],
            outputs: vec![],
            started_at: 1,
            finished_at: 2,
        }
    }

    #[test]
    fn recording_twice_keeps_one_entry_per_job() {
        let mut m = Manifest::default();
        m.record(entry("a", JobStatus::Failed));
        m.record(entry("b", JobStatus::Succeeded));
        m.record(entry("a", JobStatus::Succeeded));
        assert_eq!(m.entries, vec![entry("a", JobStatus::Succeeded), entry("b", JobStatus::Succeeded)]);
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn manifests_that_cannot_be_stored() {
        let x = JobStatus::Failed;
        let twice = Manifest { entries: vec![entry("a", x), entry("b", x), entry("a", JobStatus::Cancelled)] };
        assert!(twice.check().unwrap_err().contains("twice"));
        assert!(Manifest { entries: vec![entry("", x)] }.check().is_err());
        assert!(Manifest { entries: vec![entry(&"j".repeat(129), x)] }.check().is_err());
        let many = Manifest { entries: (0..=MAX_ENTRIES).map(|i| entry(&i.to_string(), x)).collect() };
        assert!(many.check().unwrap_err().contains("at most"));
        let parsed: Result<Manifest, _> = serde_json::from_str(r#"{"entries":[{"job_id":"a"}]}"#);
        assert!(parsed.is_err(), "an entry without its fields is refused");
        let odd = r#"{"entries":[{"job_id":"a","worker":"w","status":"asleep","started_at":1,"finished_at":2}]}"#;
        assert!(serde_json::from_str::<Manifest>(odd).is_err(), "a status that is none of the three");
    }
}
