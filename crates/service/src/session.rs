//! An upload session's durable record, and the rules of its life: the one function that moves it
//! between states ([`Session::transition`]), and what each state allows. No I/O here.

use std::collections::BTreeMap;

use ferry_core::api::{ObjectInfo, UploadState, UploadSummary};
use ferry_core::events::ProcessorKind;
use ferry_core::plan::PartPlan;
use ferry_store::{Multipart, ObjectMeta};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Refused, ServiceError};
use crate::events::LogSpec;

/// The durable record of one session (the store's `sessions/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub upload_id: String,
    pub key: String,
    /// The store's own id for the multipart upload (S3's `UploadId`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store_id: String,
    /// The store keeps each part as an object until completion, so parts can be processed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parts_as_objects: bool,
    pub name: String,
    pub size: u64,
    pub part_size: u64,
    pub part_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub state: UploadState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ObjectInfo>,
    /// Set by the server completing the upload, so that servers sharing the store do not
    /// complete it twice at once.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub completing_since: Option<OffsetDateTime>,
    /// The processor's name and kind, fixed at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_kind: Option<ProcessorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Created without a size (an Uppy upload, a stream of unknown length): parts arrive, and
    /// `complete` works out the plan from them. `size` and `part_count` are 0 until then;
    /// `part_size` too, unless the parts are known to be equal (then they are stored in place).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_ended: bool,
}

impl Session {
    pub fn multipart(&self) -> Multipart {
        Multipart {
            upload_id: self.upload_id.clone(),
            key: self.key.clone(),
            store_id: self.store_id.clone(),
            parts_as_objects: self.parts_as_objects,
        }
    }

    pub fn meta(&self) -> ObjectMeta {
        ObjectMeta { content_type: self.content_type.clone(), metadata: self.metadata.clone() }
    }

    pub fn log_spec(&self) -> LogSpec<'_> {
        LogSpec {
            upload_id: &self.upload_id,
            size: self.size,
            part_count: self.part_count,
            processor: self.processor_kind,
        }
    }

    pub fn plan(&self) -> Result<PartPlan, ServiceError> {
        PartPlan::from_parts(self.size, self.part_size, self.part_count)
            .ok_or_else(|| ServiceError::bug(format!("session {} has an inconsistent plan", self.upload_id)))
    }

    /// The state as of `now`: an open session past its deadline is expired even before the sweeper
    /// has recorded it.
    pub fn state_at(&self, now: OffsetDateTime) -> UploadState {
        if self.state == UploadState::Uploading && now >= self.expires_at { UploadState::Expired } else { self.state }
    }

    /// Why an operation that needs the session open cannot happen, or `Ok` if it can.
    pub fn require_open(&self, now: OffsetDateTime) -> Result<(), Refused> {
        match self.state_at(now) {
            UploadState::Uploading => Ok(()),
            UploadState::Completed => Err(Refused::Completed),
            UploadState::Failed => Err(Refused::Failed),
            UploadState::Cancelled => Err(Refused::Cancelled),
            UploadState::Expired => Err(Refused::Expired),
        }
    }

    /// The only way a session changes state: from `uploading` to one of the terminal states,
    /// which never change again.
    pub fn transition(&mut self, to: UploadState, now: OffsetDateTime) -> Result<(), ServiceError> {
        if !may_transition(self.state, to) {
            return Err(ServiceError::bug(format!(
                "session {} cannot go from {} to {}",
                self.upload_id,
                self.state.as_str(),
                to.as_str()
            )));
        }
        self.state = to;
        self.updated_at = now;
        Ok(())
    }

    pub fn summary(&self, now: OffsetDateTime) -> UploadSummary {
        UploadSummary {
            upload_id: self.upload_id.clone(),
            key: self.key.clone(),
            state: self.state_at(now),
            size: self.size,
            part_count: self.part_count,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

fn may_transition(from: UploadState, to: UploadState) -> bool {
    use UploadState::*;
    matches!((from, to), (Uploading, Completed | Cancelled | Expired | Failed))
}

pub(crate) fn record_name(upload_id: &str) -> String {
    format!("sessions/{upload_id}")
}

/// Upload ids are 32 lowercase hex digits; anything else names no upload.
pub(crate) fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub(crate) fn new_upload_id() -> Result<String, ServiceError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| ServiceError::bug(format!("no randomness: {e}")))?;
    Ok(hex::encode(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ALL: [UploadState; 5] = [
        UploadState::Uploading,
        UploadState::Completed,
        UploadState::Cancelled,
        UploadState::Expired,
        UploadState::Failed,
    ];

    fn session(state: UploadState) -> Session {
        let t = OffsetDateTime::UNIX_EPOCH;
        Session {
            upload_id: "0".repeat(32),
            key: "k".into(),
            store_id: String::new(),
            parts_as_objects: false,
            name: "k".into(),
            size: 10,
            part_size: 10,
            part_count: 1,
            sha256: None,
            content_type: None,
            metadata: BTreeMap::new(),
            state,
            created_at: t,
            updated_at: t,
            expires_at: t + Duration::from_secs(100),
            result: None,
            completing_since: None,
            processor: None,
            processor_kind: None,
            webhook_url: None,
            open_ended: false,
        }
    }

    #[test]
    fn only_an_open_session_changes_state_and_terminal_states_stay() {
        let later = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(5);
        for from in ALL {
            for to in ALL {
                let mut s = session(from);
                let allowed = from == UploadState::Uploading && to != UploadState::Uploading;
                assert_eq!(s.transition(to, later).is_ok(), allowed, "{from:?} -> {to:?}");
                let expected = if allowed { (to, later) } else { (from, OffsetDateTime::UNIX_EPOCH) };
                assert_eq!((s.state, s.updated_at), expected, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn an_open_session_past_its_deadline_is_expired() {
        let s = session(UploadState::Uploading);
        let deadline = s.expires_at;
        assert_eq!(s.state_at(deadline - Duration::from_secs(1)), UploadState::Uploading);
        assert!(s.require_open(deadline - Duration::from_secs(1)).is_ok());
        assert_eq!(s.state_at(deadline), UploadState::Expired);
        assert!(matches!(s.require_open(deadline), Err(Refused::Expired)));
        assert_eq!(session(UploadState::Completed).state_at(deadline), UploadState::Completed);
        for (state, refusal) in [
            (UploadState::Completed, "already completed"),
            (UploadState::Cancelled, "cancelled"),
            (UploadState::Failed, "failed"),
        ] {
            let e = session(state).require_open(OffsetDateTime::UNIX_EPOCH).unwrap_err();
            assert!(e.to_string().contains(refusal), "{e}");
        }
    }

    #[test]
    fn records_read_what_older_servers_wrote() {
        let old = r#"{"upload_id":"00000000000000000000000000000000","key":"k","name":"k","size":10,
            "part_size":10,"part_count":1,"state":"uploading","created_at":"1970-01-01T00:00:00Z",
            "updated_at":"1970-01-01T00:00:00Z","expires_at":"1970-01-01T00:01:40Z"}"#;
        let s: Session = serde_json::from_str(old).unwrap();
        assert_eq!(s, session(UploadState::Uploading));
        assert!(valid_upload_id(&s.upload_id) && !valid_upload_id("ABC") && !valid_upload_id("../x"));
        assert!(valid_upload_id(&new_upload_id().unwrap()));
    }
}
