//! How a migrator runs jobs, and what it reports while it does.

use std::time::Duration;

use super::record::{Engine, LivePolicyPatch, PhaseKind, RetirePolicy};
use crate::mirror::{CopyOptions, Progress};

/// How jobs run.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Tuning of the bulk copy.
    pub copy: CopyOptions,
    /// Lease duration; a crashed holder's job can be resumed this long after it died.
    pub lease: Duration,
    /// What happens to the source after the switch.
    pub policy: RetirePolicy,
    /// How often copy progress is persisted.
    pub save_every: Duration,
    /// When a live migration cuts over: changes to the default policy for a
    /// new job, or to the recorded one when resuming.
    pub live: LivePolicyPatch,
    /// QEMU engine: milliseconds without progress before the mirror is
    /// switched to write-blocking.
    pub qemu_stall_ms: u64,
    /// The engine for an attached volume; `None` chooses by the instance
    /// (the QEMU engine for a QMP socket, the native engine otherwise).
    pub engine: Option<Engine>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            copy: CopyOptions::default(),
            lease: Duration::from_secs(30),
            policy: RetirePolicy::default(),
            save_every: Duration::from_secs(1),
            live: LivePolicyPatch::default(),
            qemu_stall_ms: 10_000,
            engine: None,
        }
    }
}

/// What a running job reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobProgress {
    /// Job id.
    pub job: String,
    /// Current phase.
    pub phase: PhaseKind,
    /// Copy progress while copying or replaying.
    pub copy: Option<Progress>,
    /// The replay round, while replaying or cutting over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
}
