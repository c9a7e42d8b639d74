//! Migration jobs: DESIGN's flow, crash-safe.
//!
//! The job record is persisted before each step acts and after it has
//! acted; every step first checks whether its action already happened (a
//! crash may fall between the two), so running a job again from its record
//! always converges. One process drives a job at a time, holding its lease.
//! Before the switch an abort restores the pre-migration state; after it,
//! only rolling forward is allowed.
//!
//! Where things are, in the order a job meets them:
//! - `options`: how a [`Migrator`] runs jobs ([`MigrateOptions`]); what it
//!   reports ([`JobProgress`]).
//! - `create`: the precheck and the new record.
//! - `driver`: the [`Migrator`] and its drive loop (lease, run, next step).
//! - `pipeline`: which step comes next, per engine (a pure function).
//! - `steps/`: one file per step, numbered in flow order.
//! - `run`, `progress`, `source`, `live`, `qemu`: what the steps share.
//! - `sync`: continuous sync, a live job whose rounds go on until an
//!   operator asks for the cutover or a stop; `failover` (the volume's
//!   cluster lost) and `resync` (the way back, from the point both sides
//!   hold).
//! - [`record`](JobRecord), [`store`](JobStore), [`fault`]: the persisted
//!   record, where it lives and its lease, and the kill points of the
//!   crash tests.

mod create;
mod driver;
mod failover;
pub mod fault;
mod live;
mod options;
mod pipeline;
mod progress;
mod qemu;
mod record;
mod resync;
mod run;
mod source;
mod steps;
mod store;
mod sync;

pub use driver::Migrator;
pub use failover::REACHABLE_PROBE;
pub use live::round_snapshot;
pub use options::{JobProgress, MigrateOptions};
pub use record::{
    decode, encode, CutoverReport, CutoverSteps, Engine, FailoverReport, JobRecord, LivePolicy, LivePolicyPatch,
    LiveRecord, OnStall, Phase, PhaseKind, QemuMirror, ResyncOrigin, RetirePolicy, RoundReport, SyncRecord,
    SyncRequest, FORMAT, READABLE_BY, READABLE_BY_LIVE, READABLE_BY_RESYNC, READABLE_BY_SYNC,
};
pub use store::{check_job_id, JobStore, Lease, Stored};
pub use sync::{SyncOptions, SyncStatus, SYNC_STOPPED};

/// Image-meta key on a destination image naming the job that made it; only
/// images carrying it are removed by an abort.
pub const JOB_META_KEY: &str = "livemig.job";

/// The source snapshot a job reads from (the live rounds' snapshots add `.N`).
pub fn snapshot_name(job: &str) -> String {
    format!("livemig-job-{job}")
}
