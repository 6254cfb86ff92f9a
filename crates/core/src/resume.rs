//! Resuming an upload: the client's journal, whether it still applies to the file on disk, and how
//! it is reconciled with the server's part listing — which is the truth.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::PartInfo;
use crate::etag::bare_etag;
use crate::plan::PartPlan;

pub const JOURNAL_VERSION: u32 = 1;

/// What identifies the file an upload was reading, to detect that it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: String,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Hex SHA-256 of the first and the last MiB (the whole file when smaller).
    pub edge_sha256: String,
}

/// The client's record of an upload in progress, rewritten atomically as parts are acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadJournal {
    pub version: u32,
    pub server: String,
    pub key: String,
    pub upload_id: String,
    pub file: FileIdentity,
    pub part_size: u64,
    pub part_count: u32,
    /// Acknowledged parts and their ETags.
    #[serde(default)]
    pub parts: BTreeMap<u32, String>,
}

/// Whether an earlier journal can be continued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeDecision {
    /// Keep uploading into the journal's session.
    Continue,
    /// Start a new session; the old one must not be mixed with this file. The reason is for the user.
    Restart(String),
}

/// Decides whether `journal` may be continued for the file now described by `current`.
pub fn decide(journal: &UploadJournal, current: &FileIdentity, requested_part_size: Option<u64>) -> ResumeDecision {
    if journal.version != JOURNAL_VERSION {
        return ResumeDecision::Restart(format!("the resume journal has unknown version {}", journal.version));
    }
    let was = &journal.file;
    if was.size != current.size {
        return ResumeDecision::Restart(format!("the file changed size ({} → {} bytes)", was.size, current.size));
    }
    if was.mtime_ns != current.mtime_ns {
        return ResumeDecision::Restart("the file was modified since the interrupted upload".to_owned());
    }
    if was.edge_sha256 != current.edge_sha256 {
        return ResumeDecision::Restart("the file's content changed since the interrupted upload".to_owned());
    }
    if let Some(p) = requested_part_size
        && p != journal.part_size
    {
        return ResumeDecision::Restart(format!("the part size changed ({} → {p} bytes)", journal.part_size));
    }
    ResumeDecision::Continue
}

/// The journal and the server's listing, reconciled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reconciled {
    /// Parts the server holds at their planned size, whose content is not in doubt: these are not sent.
    pub done: BTreeMap<u32, PartInfo>,
    /// Parts the journal acknowledged that the server no longer holds: sent again.
    pub lost: Vec<u32>,
    /// Parts the server holds with an ETag other than the one the journal acknowledged: another
    /// writer's bytes, sent again so they are never mixed into this file.
    pub conflicting: Vec<u32>,
    /// Parts the server holds that the journal had not recorded yet (acknowledged just before a crash).
    pub unjournaled: Vec<u32>,
}

pub fn reconcile(plan: &PartPlan, journal_parts: &BTreeMap<u32, String>, server_parts: &[PartInfo]) -> Reconciled {
    let mut r = Reconciled::default();
    for p in server_parts {
        let Some(span) = plan.part(p.part_number) else { continue };
        if span.size != p.size {
            continue;
        }
        match journal_parts.get(&p.part_number) {
            // An empty ETag: the store lists parts without them, so the journal's stands.
            Some(etag) if p.etag.is_empty() => {
                r.done.insert(p.part_number, PartInfo { etag: etag.clone(), ..p.clone() });
            }
            Some(etag) if bare_etag(etag) != bare_etag(&p.etag) => r.conflicting.push(p.part_number),
            Some(_) => {
                r.done.insert(p.part_number, p.clone());
            }
            None => {
                r.unjournaled.push(p.part_number);
                r.done.insert(p.part_number, p.clone());
            }
        }
    }
    r.lost = journal_parts.keys().filter(|n| !r.done.contains_key(n) && !r.conflicting.contains(n)).copied().collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Limits;

    fn ident() -> FileIdentity {
        FileIdentity { path: "/data/f".into(), size: 1000, mtime_ns: 5, edge_sha256: "ab".into() }
    }

    fn journal() -> UploadJournal {
        UploadJournal {
            version: JOURNAL_VERSION,
            server: "http://127.0.0.1:7070".into(),
            key: "f".into(),
            upload_id: "u".into(),
            file: ident(),
            part_size: 65536,
            part_count: 1,
            parts: BTreeMap::new(),
        }
    }

    #[test]
    fn an_unchanged_file_continues() {
        assert_eq!(decide(&journal(), &ident(), None), ResumeDecision::Continue);
        assert_eq!(decide(&journal(), &ident(), Some(65536)), ResumeDecision::Continue);
    }

    #[test]
    fn any_change_restarts() {
        let changes = [
            FileIdentity { size: 1001, ..ident() },
            FileIdentity { mtime_ns: 6, ..ident() },
            FileIdentity { edge_sha256: "cd".into(), ..ident() },
        ];
        for c in changes {
            assert!(matches!(decide(&journal(), &c, None), ResumeDecision::Restart(_)), "{c:?}");
        }
        assert!(matches!(decide(&journal(), &ident(), Some(131072)), ResumeDecision::Restart(_)));
        let old = UploadJournal { version: 0, ..journal() };
        assert!(matches!(decide(&old, &ident(), None), ResumeDecision::Restart(_)));
    }

    fn part(n: u32, size: u64, etag: &str) -> PartInfo {
        PartInfo { part_number: n, size, etag: format!("\"{etag}\"") }
    }

    #[test]
    fn the_server_listing_is_the_truth() {
        let plan = PartPlan::new(4 * 65536 + 10, Some(65536), &Limits::EMBEDDED).unwrap();
        let journal: BTreeMap<u32, String> =
            [(1, "a".to_owned()), (2, "\"b\"".to_owned()), (3, "c".to_owned())].into_iter().collect();
        let server = [
            part(1, 65536, "a"), // agreed
            part(2, 65536, "x"), // someone else's bytes
            part(4, 65536, "d"), // stored, not yet journaled
            part(5, 9, "e"),     // wrong size for the plan: not done
            part(9, 65536, "z"), // not in the plan
        ];
        let r = reconcile(&plan, &journal, &server);
        assert_eq!(r.done.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(r.conflicting, vec![2]);
        assert_eq!(r.lost, vec![3]);
        assert_eq!(r.unjournaled, vec![4]);
    }

    #[test]
    fn a_listing_without_etags_keeps_the_journals() {
        let plan = PartPlan::new(2 * 65536, Some(65536), &Limits::EMBEDDED).unwrap();
        let journal: BTreeMap<u32, String> = [(1, "\"a\"".to_owned())].into_iter().collect();
        let server = [
            PartInfo { part_number: 1, size: 65536, etag: String::new() },
            PartInfo { part_number: 2, size: 65536, etag: String::new() },
        ];
        let r = reconcile(&plan, &journal, &server);
        assert_eq!(r.done[&1].etag, "\"a\"");
        assert_eq!(r.done[&2].etag, "");
        assert!(r.conflicting.is_empty() && r.lost.is_empty());
        assert_eq!(r.unjournaled, vec![2]);
    }

    #[test]
    fn journal_round_trips_as_json() {
        let mut j = journal();
        j.parts.insert(1, "\"e\"".into());
        let text = serde_json::to_string(&j).unwrap();
        assert_eq!(serde_json::from_str::<UploadJournal>(&text).unwrap(), j);
    }
}
