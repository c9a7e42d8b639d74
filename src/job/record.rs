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
//! - 3: adds live migration (attached volumes): the `live` section and the
//!   phases `replaying`, `cutting_over` and `repointed`. A record of a
//!   detached volume is still readable by format 1 readers; a live one needs 3.
//!   Later in format 3: `source_drivers` (a reader that ignores it only
//!   waits longer for a dead driver's watch on a resume).
//! - 4: adds continuous sync (the `sync` section): its rounds go on until
//!   an operator asks to cut over or stop, so a reader that ignored the
//!   section would cut over by itself. Records with it need 4; others are
//!   readable as before.

use crate::catalog::{Attachment, Backing, Volume};
use crate::error::{Error, ErrorKind, Result};
use crate::mirror::fence::FenceReport;

/// The format this release writes.
pub const FORMAT: u32 = 5;
/// The oldest reader that can read what this release writes for a detached
/// volume; records of live migrations need [`READABLE_BY_LIVE`].
pub const READABLE_BY: u32 = 1;
/// The oldest reader that can read a live migration's record.
pub const READABLE_BY_LIVE: u32 = 3;
/// The oldest reader that can read a continuous sync's record.
pub const READABLE_BY_SYNC: u32 = 4;
/// The oldest reader that can read a resync's record (a sync that starts
/// from a common point in time instead of a copy).
pub const READABLE_BY_RESYNC: u32 = 5;

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

impl RetirePolicy {
    /// Seconds a retired source stays in the trash by default.
    pub fn default_trash_delay() -> u64 {
        24 * 3600
    }
}

impl Default for RetirePolicy {
    fn default() -> Self {
        RetirePolicy::Trash {
            delay_secs: RetirePolicy::default_trash_delay(),
        }
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
    /// Live: the writes made since snapshot `base` are applied in rounds
    /// (round `round` is next) until the delta is small enough.
    Replaying {
        /// The snapshot the destination holds the content of.
        base: String,
        /// The next round's number.
        round: u32,
    },
    /// Live: the instance is held (or being held), the source fenced, and
    /// the last changes since `base` applied; ends with the switch.
    CuttingOver {
        /// The snapshot the destination holds the content of.
        base: String,
        /// This round's number.
        round: u32,
    },
    /// QEMU engine: QEMU mirrors the source into the destination; ends,
    /// once source and destination are in sync (write-blocking), with the switch.
    Mirroring {
        /// QEMU's job id.
        job: String,
    },
    /// Commit point passed: the catalog names the destination.
    Switched {
        /// Snapshot of the source (removed at cleanup); none for the QEMU
        /// engine (stored as `""`, as every release wrote it).
        #[serde(with = "none_as_empty")]
        snapshot: Option<String>,
    },
    /// Live: the instance uses the destination and runs again.
    Repointed {
        /// Snapshot of the source (removed at cleanup); as in `Switched`.
        #[serde(with = "none_as_empty")]
        snapshot: Option<String>,
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
    /// Sync: the source's cluster was lost and the replica's newest whole
    /// point in time became the volume (the catalog names it); the lost
    /// source is fenced and retired once its cluster is back (resume).
    FailedOver {
        /// The replica's point in time (the source's snapshot it holds).
        point: String,
    },
    /// Rolled back before the switch; the pre-migration state is restored.
    Aborted {
        /// Why.
        reason: String,
    },
}

/// An optional name stored as a string, `""` for none (the stored format
/// of the switched phases' snapshot).
mod none_as_empty {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or(""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = String::deserialize(d)?;
        Ok((!v.is_empty()).then_some(v))
    }
}

/// A phase without its data: what progress reports and the history keeps.
/// The names are the stored ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// [`Phase::Created`].
    #[default]
    Created,
    /// [`Phase::Marked`].
    Marked,
    /// [`Phase::Copying`].
    Copying,
    /// [`Phase::Copied`].
    Copied,
    /// [`Phase::Replaying`].
    Replaying,
    /// [`Phase::CuttingOver`].
    CuttingOver,
    /// [`Phase::Mirroring`].
    Mirroring,
    /// [`Phase::Switched`].
    Switched,
    /// [`Phase::Repointed`].
    Repointed,
    /// [`Phase::Done`].
    Done,
    /// [`Phase::Aborting`].
    Aborting,
    /// [`Phase::Aborted`].
    Aborted,
    /// [`Phase::FailedOver`].
    FailedOver,
    /// A phase of a newer release, read from its history.
    #[serde(other)]
    Other,
}

impl PhaseKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Created => "created",
            PhaseKind::Marked => "marked",
            PhaseKind::Copying => "copying",
            PhaseKind::Copied => "copied",
            PhaseKind::Replaying => "replaying",
            PhaseKind::CuttingOver => "cutting_over",
            PhaseKind::Mirroring => "mirroring",
            PhaseKind::Switched => "switched",
            PhaseKind::Repointed => "repointed",
            PhaseKind::Done => "done",
            PhaseKind::Aborting => "aborting",
            PhaseKind::Aborted => "aborted",
            PhaseKind::FailedOver => "failed_over",
            PhaseKind::Other => "other",
        }
    }
}

impl std::fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Phase {
    /// The phase without its data.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Created => PhaseKind::Created,
            Phase::Marked => PhaseKind::Marked,
            Phase::Copying { .. } => PhaseKind::Copying,
            Phase::Copied { .. } => PhaseKind::Copied,
            Phase::Replaying { .. } => PhaseKind::Replaying,
            Phase::CuttingOver { .. } => PhaseKind::CuttingOver,
            Phase::Mirroring { .. } => PhaseKind::Mirroring,
            Phase::Switched { .. } => PhaseKind::Switched,
            Phase::Repointed { .. } => PhaseKind::Repointed,
            Phase::Done => PhaseKind::Done,
            Phase::Aborting { .. } => PhaseKind::Aborting,
            Phase::Aborted { .. } => PhaseKind::Aborted,
            Phase::FailedOver { .. } => PhaseKind::FailedOver,
        }
    }

    /// The phase's name.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether the job has nothing left to do.
    pub fn is_final(&self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted { .. })
    }

    /// Whether the commit point has been passed.
    pub fn is_switched(&self) -> bool {
        matches!(
            self,
            Phase::Switched { .. } | Phase::Repointed { .. } | Phase::Done | Phase::FailedOver { .. }
        )
    }
}

/// What a live migration does when the copy does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStall {
    /// Hold the instance anyway: the final delta (and so the pause) is larger.
    Cutover,
    /// Stop the job with [`crate::ErrorKind::NotConverging`]; it stays
    /// resumable and abortable, the instance untouched.
    Pause,
}

/// When a live migration stops replaying rounds and cuts over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LivePolicy {
    /// Cut over once a round's changed bytes are at most this.
    pub cutover_bytes: u64,
    /// A round that changed no fewer bytes than the one before is a stall;
    /// after this many stalls in a row the copy is not converging.
    pub stall_rounds: u32,
    /// Rounds at most before the copy counts as not converging.
    pub max_rounds: u32,
    /// What then.
    pub on_stall: OnStall,
    /// Milliseconds the source's lock owner has to hand the lock over
    /// before it is broken and blocklisted.
    pub fence_timeout_ms: u64,
    /// OSD priority of the replay rounds' and the final delta's operations
    /// (0: Ceph's client default, 63). At 196 and above the OSDs serve them
    /// before the instance's writes, so a round takes about as long as on
    /// an idle cluster and leaves less for the final delta; the instance's
    /// write latency rises while a round runs (the bench reports it).
    #[serde(default = "default_delta_op_priority")]
    pub delta_op_priority: u32,
}

/// See [`LivePolicy::delta_op_priority`].
pub const DEFAULT_DELTA_OP_PRIORITY: u32 = 200;

fn default_delta_op_priority() -> u32 {
    DEFAULT_DELTA_OP_PRIORITY
}

impl Default for LivePolicy {
    fn default() -> Self {
        LivePolicy {
            cutover_bytes: 8 << 20,
            stall_rounds: 3,
            max_rounds: 20,
            on_stall: OnStall::Cutover,
            fence_timeout_ms: 20_000,
            delta_op_priority: DEFAULT_DELTA_OP_PRIORITY,
        }
    }
}

/// Changes to a [`LivePolicy`]: `None` keeps the current value. A new job
/// applies them to the default policy; resuming a job applies them to the
/// policy in its record (so `resume --on-stall cutover` changes only that).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LivePolicyPatch {
    /// See [`LivePolicy::cutover_bytes`].
    pub cutover_bytes: Option<u64>,
    /// See [`LivePolicy::stall_rounds`].
    pub stall_rounds: Option<u32>,
    /// See [`LivePolicy::max_rounds`].
    pub max_rounds: Option<u32>,
    /// See [`LivePolicy::on_stall`].
    pub on_stall: Option<OnStall>,
    /// See [`LivePolicy::fence_timeout_ms`].
    pub fence_timeout_ms: Option<u64>,
    /// See [`LivePolicy::delta_op_priority`].
    pub delta_op_priority: Option<u32>,
}

impl LivePolicyPatch {
    /// `policy` with these changes.
    pub fn apply(&self, policy: &LivePolicy) -> LivePolicy {
        LivePolicy {
            cutover_bytes: self.cutover_bytes.unwrap_or(policy.cutover_bytes),
            stall_rounds: self.stall_rounds.unwrap_or(policy.stall_rounds),
            max_rounds: self.max_rounds.unwrap_or(policy.max_rounds),
            on_stall: self.on_stall.unwrap_or(policy.on_stall),
            fence_timeout_ms: self.fence_timeout_ms.unwrap_or(policy.fence_timeout_ms),
            delta_op_priority: self.delta_op_priority.unwrap_or(policy.delta_op_priority),
        }
    }
}

/// One replay round of a live migration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundReport {
    /// Round number (the full copy is round 0).
    pub round: u32,
    /// Bytes of changed extents read from the source.
    pub changed_bytes: u64,
    /// Bytes written to the destination (the rest were zeros).
    pub written_bytes: u64,
    /// Milliseconds the round took.
    pub millis: u64,
    /// Whether this was the final delta, applied with the instance held.
    #[serde(default)]
    pub cutover: bool,
    /// Objects of the delta the OSDs copied whole (changed enough that
    /// this beat moving the changed extents).
    #[serde(default)]
    pub whole_objects: u64,
}

/// The cutover of a live migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CutoverReport {
    /// Why the rounds stopped (converged, or the policy's verdict).
    pub reason: String,
    /// Unix milliseconds when the hold was requested (0: not yet). It is
    /// written before the hold, so that whoever finds the record knows the
    /// instance may be held, and set again when the hold is requested: the
    /// downtime counts from there.
    pub held_at_ms: u64,
    /// Unix milliseconds when the instance ran again on the destination.
    pub resumed_at_ms: Option<u64>,
    /// How the source was fenced.
    #[serde(default)]
    pub fence: FenceReport,
    /// Where the downtime went.
    #[serde(default)]
    pub steps: CutoverSteps,
}

/// Milliseconds each step of a cutover took, as measured by the run that
/// carried it out (a step redone after a crash records its last run). The
/// downtime also counts the job record's saves between steps, which these
/// do not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CutoverSteps {
    /// The hypervisor hook's hold, until every acknowledged write is on the source.
    pub hold_ms: u64,
    /// Taking the source's exclusive lock (and breaking it, if need be).
    pub fence_ms: u64,
    /// Finding and applying the last changes.
    pub final_delta_ms: u64,
    /// The atomic catalog switch, the commit point.
    pub switch_ms: u64,
    /// The hook's re-point to the destination and its resume.
    pub repoint_ms: u64,
}

impl CutoverReport {
    /// Milliseconds from hold to resume, once resumed.
    pub fn downtime_ms(&self) -> Option<u64> {
        self.resumed_at_ms.map(|r| r.saturating_sub(self.held_at_ms))
    }
}

/// Which engine moves a live volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// livemig copies with librbd; the instance is held for the final delta.
    #[default]
    Native,
    /// The instance's QEMU mirrors the volume and pivots without a pause.
    Qemu,
}

/// The QEMU mirror of a job, once started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuMirror {
    /// QEMU's job id.
    pub job: String,
    /// The node QEMU opened the source with (deleted after the pivot).
    pub source_node: String,
    /// The node livemig added for the destination.
    pub target_node: String,
    /// Whether the job had to be switched to write-blocking to converge.
    #[serde(default)]
    pub write_blocking_forced: bool,
}

/// The live part of a job: the attachment being held, the policy, and what
/// the rounds and the cutover did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveRecord {
    /// The attachment whose instance keeps writing.
    pub attachment: Attachment,
    /// When to cut over.
    pub policy: LivePolicy,
    /// Rounds done so far.
    #[serde(default)]
    pub rounds: Vec<RoundReport>,
    /// Set when the cutover begins.
    #[serde(default)]
    pub cutover: Option<CutoverReport>,
    /// Which engine moves the volume.
    #[serde(default)]
    pub engine: Engine,
    /// The QEMU engine's mirror job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuMirror>,
}

/// A continuous sync: a live job whose rounds go on, one every
/// `interval_ms`, keeping a replica converging, until an operator asks
/// for the cutover (or stops it). Requests reach the driver through an
/// object of their own (see `JobStore::request`), so the driver's record
/// stays its own to write.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncRecord {
    /// Milliseconds from the start of one round to the start of the next.
    pub interval_ms: u64,
    /// Unix milliseconds of the newest point in time the replica holds
    /// whole (no later than the snapshot it was copied from was taken);
    /// `None` until the first copy is complete.
    #[serde(default)]
    pub synced_at_ms: Option<u64>,
    /// Rounds applied since the first copy.
    #[serde(default)]
    pub rounds: u64,
    /// Set by a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverReport>,
    /// Set for a resync: the sync back to the copy a failover replaced,
    /// from the point in time both still hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncOrigin>,
}

/// Where a resync starts: the failover it undoes, and the point in time
/// the volume and the copy the failover replaced both hold as a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResyncOrigin {
    /// The sync job that failed over.
    pub failed_over_job: String,
    /// The point's snapshot, as that job named it (on both sides).
    pub point: String,
    /// Unix milliseconds of the point in time.
    pub point_ms: u64,
    /// The replaced copy's image id (it waits in the RBD trash).
    pub old_image_id: String,
}

/// A sync's failover to its replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailoverReport {
    /// Unix milliseconds of the failover.
    pub at_ms: u64,
    /// Unix milliseconds of the point in time the replica was promoted at
    /// (no later than its snapshot: writes acknowledged after it may be lost).
    pub point_ms: u64,
    /// The source's cluster was reachable, and the operator forced it.
    pub forced: bool,
    /// A round was being applied: the replica was rolled back to the point.
    pub rolled_back: bool,
    /// The point's snapshot, kept on the new primary and on the replaced
    /// copy for a resync ("" in records of releases that kept none).
    #[serde(default)]
    pub point: String,
    /// Addresses of the sync's earlier driver, fenced out (blocklisted).
    #[serde(default)]
    pub fenced: Vec<String>,
    /// Unix milliseconds when the lost source was fenced and retired, its
    /// cluster back.
    #[serde(default)]
    pub source_retired_at_ms: Option<u64>,
}

/// What an operator asks of a running sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncRequest {
    /// One more round, then the fenced cutover to the replica.
    Cutover,
    /// Stop syncing: the job rolls back (snapshots and replica removed).
    Stop,
}

/// Round reports a sync keeps in its record (the latest).
pub const SYNC_ROUNDS_KEPT: usize = 20;

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
    pub history: Vec<(PhaseKind, u64)>,
    /// The last error that stopped a run, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Set for a volume attached to a running instance (live migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveRecord>,
    /// Addresses (as the image's watchers list them) of the connections
    /// through which this job's drivers opened the source read-write, the
    /// latest last. A driver that dies leaves its watch, and maybe the
    /// image's lock, for the OSD's watch timeout (30 s by default); the
    /// next driver blocklists what an earlier one left instead of waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_drivers: Vec<String>,
    /// The pool the destination keeps its data objects in, if not its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_data_pool: Option<String>,
    /// The storage location the volume declares after the switch (the
    /// pool map's), if it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_location: Option<String>,
    /// Set for a continuous sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncRecord>,
}

impl JobRecord {
    /// Whether the QEMU engine moves this volume.
    pub fn is_qemu(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.engine == Engine::Qemu)
    }

    /// Whether this is a resync (a sync back to the copy a failover replaced).
    pub fn is_resync(&self) -> bool {
        self.sync.as_ref().is_some_and(|y| y.resync.is_some())
    }
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
        readable_by: if record.is_resync() {
            READABLE_BY_RESYNC
        } else if record.sync.is_some() {
            READABLE_BY_SYNC
        } else if record.live.is_some() {
            READABLE_BY_LIVE
        } else {
            READABLE_BY
        },
        record: serde_json::to_value(record).expect("job records serialize"),
    })
    .expect("job records serialize")
}

/// Decodes a record written by this or another release.
pub fn decode(job: &str, raw: &[u8]) -> Result<JobRecord> {
    let corrupt = |e: serde_json::Error| {
        Error::new(ErrorKind::CorruptRecord, "decode job record")
            .target(job.to_owned())
            .message(format!("job record `{job}` is unreadable: {e}"))
            .cause(e)
    };
    let env: Envelope = serde_json::from_slice(raw).map_err(corrupt)?;
    if env.readable_by > FORMAT {
        return Err(Error::new(ErrorKind::RecordTooNew, "decode job record").target(job.to_owned()).message(format!(
            "job `{job}` was written in format {} by a newer livemig and needs a reader of format {} or later; this release reads up to format {FORMAT}",
            env.format, env.readable_by
        )));
    }
    serde_json::from_value(env.record).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switched_phase_without_a_snapshot_is_stored_as_every_release_stored_it() {
        let stored = serde_json::json!({"phase": "switched", "snapshot": ""});
        let phase: Phase = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(phase, Phase::Switched { snapshot: None });
        assert_eq!(serde_json::to_value(&phase).unwrap(), stored);
        let named = serde_json::json!({"phase": "repointed", "snapshot": "livemig-job-x.3"});
        let phase: Phase = serde_json::from_value(named.clone()).unwrap();
        assert_eq!(
            phase,
            Phase::Repointed {
                snapshot: Some("livemig-job-x.3".into())
            }
        );
        assert_eq!(serde_json::to_value(&phase).unwrap(), named);
    }

    #[test]
    fn only_a_sync_s_record_needs_a_reader_that_knows_syncs() {
        let fixture = include_bytes!("../../tests/fixtures/job-record-before-house.json");
        let mut record = decode("j", fixture).unwrap();
        assert_eq!(record.sync, None);
        let readable_by = |r: &JobRecord| {
            let env: Envelope = serde_json::from_slice(&encode(r)).unwrap();
            (env.format, env.readable_by)
        };
        assert_eq!(readable_by(&record), (FORMAT, READABLE_BY));
        record.sync = Some(SyncRecord {
            interval_ms: 500,
            synced_at_ms: Some(7),
            rounds: 3,
            failover: None,
            resync: None,
        });
        assert_eq!(readable_by(&record), (FORMAT, READABLE_BY_SYNC));
        assert_eq!(decode("j", &encode(&record)).unwrap(), record);
        // A reader of format 3 would have refused it.
        const { assert!(READABLE_BY_SYNC > 3) };
        // A resync starts from a point instead of a copy: a reader of
        // format 4 would copy over the replaced copy.
        record.sync.as_mut().unwrap().resync = Some(ResyncOrigin {
            failed_over_job: "f".into(),
            point: "livemig-job-f.3".into(),
            point_ms: 5,
            old_image_id: "abc".into(),
        });
        assert_eq!(readable_by(&record), (FORMAT, READABLE_BY_RESYNC));
        assert_eq!(decode("j", &encode(&record)).unwrap(), record);
        const { assert!(READABLE_BY_RESYNC > READABLE_BY_SYNC) };
    }

    #[test]
    fn newer_incompatible_and_corrupt_records_are_refused() {
        let raw = br#"{"format": 7, "readable_by": 6, "record": {"anything": true}}"#;
        assert_eq!(decode("j", raw).unwrap_err().kind(), ErrorKind::RecordTooNew);
        assert_eq!(decode("j", b"{not json").unwrap_err().kind(), ErrorKind::CorruptRecord);
        let raw = br#"{"format": 2, "readable_by": 1, "record": {"id": 3}}"#;
        assert_eq!(decode("j", raw).unwrap_err().kind(), ErrorKind::CorruptRecord);
    }
}
