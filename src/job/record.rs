//! The persisted job record and its versioned encoding.
//!
//! A record is stored as an envelope `{format, readable_by, record}`:
//! `format` is the version the writer used, `readable_by` the oldest
//! reader version that understands it. A reader older than `readable_by`
//! refuses the record ([`ErrorKind::RecordTooNew`]) instead of misreading
//! it; a reader newer than `format` upgrades it (fields added since have
//! defaults). Format history:
//! - 1: first release; no retire policy (meant: trash, 24 h) and no copy watermark.
//! - 2: adds the retire policy, the copy watermark (resume mid-copy) and
//!   the source image id.

use crate::catalog::{Attachment, Backing, Volume};
use crate::error::{Error, ErrorKind, Result};

/// The format this release writes.
pub const FORMAT: u32 = 2;
/// The oldest reader that can read what this release writes.
pub const READABLE_BY: u32 = 1;

/// What happens to the source image once the destination is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RetirePolicy {
    /// Moved to the RBD trash, purgeable after `delay_secs`.
    Trash {
        /// Seconds before the trash may purge it.
        delay_secs: u64,
    },
    /// Left in place under its name.
    Keep,
}

impl Default for RetirePolicy {
    fn default() -> Self {
        RetirePolicy::Trash { delay_secs: 24 * 3600 }
    }
}

/// Where a job stands. Each phase carries what resuming it needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The record exists; nothing else has changed.
    Created,
    /// The catalog marks the volume as migrating (and holds it).
    Marked,
    /// Copying the source snapshot into the partial destination image.
    Copying {
        /// Snapshot of the source being read.
        snapshot: String,
        /// Name of the partial destination image (in the destination pool).
        partial: String,
        /// Every byte below this offset is copied.
        #[serde(default)]
        watermark: u64,
        /// Bytes copied so far.
        #[serde(default)]
        done_bytes: u64,
        /// Bytes to copy in all.
        #[serde(default)]
        total_bytes: u64,
    },
    /// The destination is complete under its final name.
    Copied {
        /// Snapshot of the source (removed at cleanup).
        snapshot: String,
    },
    /// Commit point passed: the catalog names the destination.
    Switched {
        /// Snapshot of the source (removed at cleanup).
        snapshot: String,
    },
    /// Finished; the source is retired per the policy.
    Done,
    /// Being rolled back to the pre-migration state.
    Aborting {
        /// Why.
        reason: String,
        /// Snapshot to remove, if one may exist.
        snapshot: Option<String>,
        /// Destination images to remove (partial and/or final), if they may exist.
        images: Vec<String>,
    },
    /// Rolled back before the switch; the pre-migration state is restored.
    Aborted {
        /// Why.
        reason: String,
    },
}

impl Phase {
    /// The phase's name.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Marked => "marked",
            Phase::Copying { .. } => "copying",
            Phase::Copied { .. } => "copied",
            Phase::Switched { .. } => "switched",
            Phase::Done => "done",
            Phase::Aborting { .. } => "aborting",
            Phase::Aborted { .. } => "aborted",
        }
    }

    /// Whether the job has nothing left to do.
    pub fn is_final(&self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted { .. })
    }

    /// Whether the commit point has been passed.
    pub fn is_switched(&self) -> bool {
        matches!(self, Phase::Switched { .. } | Phase::Done)
    }
}

/// One migration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// The volume being moved.
    pub volume_id: String,
    /// Its image before the move.
    pub source: Backing,
    /// Its image after the move.
    pub destination: Backing,
    /// The source image's id (it stays valid in the trash), for verification.
    #[serde(default)]
    pub source_image_id: Option<String>,
    /// The volume as it was before the job marked it (restored by abort).
    pub original_volume: Volume,
    /// Its attachments before the job (restored by abort).
    #[serde(default)]
    pub original_attachments: Vec<Attachment>,
    /// What happens to the source after the switch.
    #[serde(default)]
    pub policy: RetirePolicy,
    /// Where the job stands.
    pub phase: Phase,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of the last update.
    pub updated_at: u64,
    /// Phases entered so far, with unix seconds.
    #[serde(default)]
    pub history: Vec<(String, u64)>,
    /// The last error that stopped a run, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    format: u32,
    readable_by: u32,
    record: serde_json::Value,
}

/// Encodes a record in this release's format.
pub fn encode(record: &JobRecord) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        format: FORMAT,
        readable_by: READABLE_BY,
        record: serde_json::to_value(record).expect("job records serialize"),
    })
    .expect("job records serialize")
}

/// Decodes a record written by this or another release.
pub fn decode(job: &str, raw: &[u8]) -> Result<JobRecord> {
    let corrupt = |why: String| {
        Error::new(ErrorKind::CorruptRecord, "decode job record")
            .target(job.to_owned())
            .message(format!("job record `{job}` is unreadable: {why}"))
    };
    let env: Envelope = serde_json::from_slice(raw).map_err(|e| corrupt(e.to_string()))?;
    if env.readable_by > FORMAT {
        return Err(Error::new(ErrorKind::RecordTooNew, "decode job record").target(job.to_owned()).message(format!(
            "job `{job}` was written in format {} by a newer livemig and needs a reader of format {} or later; this release reads up to format {FORMAT}",
            env.format, env.readable_by
        )));
    }
    serde_json::from_value(env.record).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_incompatible_and_corrupt_records_are_refused() {
        let raw = br#"{"format": 7, "readable_by": 5, "record": {"anything": true}}"#;
        assert_eq!(decode("j", raw).unwrap_err().kind(), ErrorKind::RecordTooNew);
        assert_eq!(decode("j", b"{not json").unwrap_err().kind(), ErrorKind::CorruptRecord);
        let raw = br#"{"format": 2, "readable_by": 1, "record": {"id": 3}}"#;
        assert_eq!(decode("j", raw).unwrap_err().kind(), ErrorKind::CorruptRecord);
    }
}
