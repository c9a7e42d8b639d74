//! The QEMU engine's mirror: QEMU copies the volume it has open to the
//! destination (`blockdev-mirror`), keeps both in sync once ready, and
//! pivots the guest to the destination without a pause (`job-complete`).
//!
//! Choices for RBD:
//! - granularity 64 KiB: the dirty bitmap tracks guest writes at this size,
//!   so a 4 KiB write re-copies 64 KiB, not a 4 MiB object;
//! - buffer 32 MiB: about eight RBD objects in flight, enough to keep an
//!   OSD busy without holding much of the guest's memory;
//! - `auto-dismiss: false`: a job that ended (well or not) stays queryable
//!   until livemig has seen how it ended, even across a crash of `migrate`.
//!
//! If the copy does not converge (the guest dirties faster than the mirror
//! copies), [`wait_ready`] says so and the caller can switch the job to
//! `write-blocking` (`block-job-change`, QEMU 8.2+): each guest write then
//! also waits for its copy, so the remaining bytes can only shrink.

use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::graph::add_rbd_node;
pub use super::graph::{find_rbd_node, RbdNode, RbdTarget};
use super::Qmp;
use crate::error::{Error, ErrorKind, Result};

fn engine_error(why: String) -> Error {
    Error::new(ErrorKind::Hypervisor, "qemu mirror").message(why)
}

/// Mirror granularity, bytes.
pub const GRANULARITY: u64 = 64 << 10;
/// Mirror buffer, bytes.
pub const BUF_SIZE: u64 = 32 << 20;

/// How the mirror runs.
#[derive(Debug, Clone, Default)]
pub struct MirrorOptions {
    /// Bytes per second at most (`None`: unlimited).
    pub speed: Option<u64>,
}

/// Adds the destination as a block node (with the source's cache
/// settings) and starts mirroring `source` into it as job `job_id`.
pub async fn start_mirror(
    qmp: &Qmp,
    source: &RbdNode,
    target: &RbdTarget,
    target_node: &str,
    job_id: &str,
    options: &MirrorOptions,
) -> Result<()> {
    add_rbd_node(qmp, source, target, target_node).await?;
    let mut mirror = json!({
        "job-id": job_id,
        "device": source.node_name,
        "target": target_node,
        "sync": "full",
        "granularity": GRANULARITY,
        "buf-size": BUF_SIZE,
        "auto-dismiss": false,
    });
    if let Some(speed) = options.speed {
        mirror["speed"] = json!(speed);
    }
    if let Err(e) = qmp.execute("blockdev-mirror", mirror).await {
        let _ = qmp.execute("blockdev-del", json!({"node-name": target_node})).await;
        return Err(e);
    }
    info!(job = job_id, source = %source.node_name, target = target_node, "mirror started");
    Ok(())
}

/// QEMU's job status (QAPI `JobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Being created.
    Created,
    /// Copying.
    Running,
    /// Paused by the user or an error policy.
    Paused,
    /// In sync: ready to complete (pivot).
    Ready,
    /// Paused while ready.
    Standby,
    /// Waiting for other jobs of its transaction.
    Waiting,
    /// About to conclude.
    Pending,
    /// Being cancelled or failed.
    Aborting,
    /// Ended; its outcome can be read until it is dismissed.
    Concluded,
    /// Dismissed.
    Null,
    /// A status this release does not know.
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// Whether the job ended or is ending without being ready.
    fn ended(self) -> bool {
        matches!(self, JobStatus::Concluded | JobStatus::Aborting | JobStatus::Null)
    }
}

/// One job's state from `query-jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// QEMU's job status.
    pub status: JobStatus,
    /// Bytes done.
    pub current: u64,
    /// Bytes in all (grows as the guest dirties).
    pub total: u64,
    /// The job's error, once concluded with one.
    pub error: Option<String>,
}

/// The state of job `job_id`, or `None` if QEMU has no such job.
pub async fn job_state(qmp: &Qmp, job_id: &str) -> Result<Option<JobState>> {
    let jobs = qmp.execute("query-jobs", json!({})).await?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j.get("id").and_then(Value::as_str) == Some(job_id))
        .map(|j| JobState {
            status: j
                .get("status")
                .and_then(|s| JobStatus::deserialize(s).ok())
                .unwrap_or(JobStatus::Unknown),
            current: j.get("current-progress").and_then(Value::as_u64).unwrap_or(0),
            total: j.get("total-progress").and_then(Value::as_u64).unwrap_or(0),
            error: j.get("error").and_then(Value::as_str).map(str::to_owned),
        }))
}

/// How waiting for readiness ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Source and destination are in sync.
    Ready {
        /// Seconds waited.
        seconds: f64,
    },
    /// The remaining bytes have not shrunk for the stall time: the guest
    /// dirties faster than the mirror copies. See [`make_write_blocking`].
    Stalled {
        /// Bytes still to copy.
        remaining: u64,
    },
}

/// Waits until the mirror is ready (source and destination in sync) or,
/// unless `stall` is `None`, stops converging. A job that ends otherwise
/// (error, cancelled, QEMU gone) is an error; the guest keeps running on
/// the source.
pub async fn wait_ready(
    qmp: &Qmp,
    job_id: &str,
    stall: Option<Duration>,
    progress: impl FnMut(&JobState),
) -> Result<Readiness> {
    wait_ready_guarded(qmp, job_id, stall, progress, |_| std::future::ready(Ok(()))).await
}

/// As [`wait_ready`]; in addition, about once a second, `guard` is given
/// the bytes the mirror still has to copy and may end the wait with an
/// error (e.g. the destination pool is filling up: better to stop while the
/// mirror can still be cancelled than to let its writes hang on a full pool).
pub async fn wait_ready_guarded<G, F>(
    qmp: &Qmp,
    job_id: &str,
    stall: Option<Duration>,
    mut progress: impl FnMut(&JobState),
    mut guard: G,
) -> Result<Readiness>
where
    G: FnMut(u64) -> F,
    F: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let mut best_remaining = u64::MAX;
    let mut best_at = Instant::now();
    let mut guarded_at = Instant::now();
    loop {
        let Some(state) = job_state(qmp, job_id).await? else {
            return Err(engine_error(format!(
                "QEMU has no mirror job `{job_id}` (it was cancelled or dismissed)"
            )));
        };
        progress(&state);
        match state.status {
            JobStatus::Ready => {
                return Ok(Readiness::Ready {
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
            status if status.ended() => {
                return Err(engine_error(format!(
                    "mirror job `{job_id}` ended before it was ready: {}",
                    state.error.unwrap_or_else(|| "cancelled".into())
                )))
            }
            _ => {}
        }
        let remaining = state.total.saturating_sub(state.current);
        if guarded_at.elapsed() >= Duration::from_secs(1) {
            guard(remaining).await?;
            guarded_at = Instant::now();
        }
        if remaining < best_remaining {
            best_remaining = remaining;
            best_at = Instant::now();
        } else if stall.is_some_and(|s| best_at.elapsed() >= s) {
            warn!(job = job_id, remaining, "mirror is not converging");
            return Ok(Readiness::Stalled { remaining });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Switches the mirror to write-blocking: each guest write then also waits
/// for its copy to the destination, so the remaining bytes can only shrink.
/// (Only safe while the destination can take writes: a full destination
/// pool would then block the guest.)
pub async fn make_write_blocking(qmp: &Qmp, job_id: &str) -> Result<()> {
    qmp.execute(
        "block-job-change",
        json!({"id": job_id, "type": "mirror", "copy-mode": "write-blocking"}),
    )
    .await
    .map(|_| ())
}

/// Pivots the guest to the destination (`job-complete`), waits until the
/// job concluded without error, dismisses it and deletes the old node.
pub async fn complete(qmp: &Qmp, job_id: &str, old_node: &str) -> Result<()> {
    match job_state(qmp, job_id).await? {
        Some(s) if s.status == JobStatus::Ready => {
            qmp.execute("job-complete", json!({"id": job_id})).await?;
        }
        // Completed already (a crash after job-complete).
        Some(s) if matches!(s.status, JobStatus::Concluded | JobStatus::Pending | JobStatus::Waiting) => {}
        Some(s) => {
            return Err(engine_error(format!(
                "mirror job `{job_id}` is `{:?}`, not ready: cannot pivot",
                s.status
            )))
        }
        None => {}
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match job_state(qmp, job_id).await? {
            Some(s) if s.status == JobStatus::Concluded => {
                if let Some(e) = s.error {
                    return Err(engine_error(format!("mirror job `{job_id}` failed at the pivot: {e}")));
                }
                qmp.execute("job-dismiss", json!({"id": job_id})).await?;
                break;
            }
            None => break,
            Some(_) if Instant::now() > deadline => {
                return Err(engine_error(format!(
                    "mirror job `{job_id}` did not conclude within 120 s"
                )))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // The old node has no users left once the job is gone.
    match qmp.execute("blockdev-del", json!({"node-name": old_node})).await {
        Ok(_) => {}
        // Deleted already (a crash after the deletion).
        Err(e) if e.to_string().contains("Failed to find node") => {}
        Err(e) => return Err(e),
    }
    info!(job = job_id, "pivoted to the destination; old node deleted");
    Ok(())
}

/// Cancels the mirror and removes the destination node; the guest stays
/// on the source.
pub async fn cancel(qmp: &Qmp, job_id: &str, target_node: &str) -> Result<()> {
    if let Some(s) = job_state(qmp, job_id).await? {
        if s.status != JobStatus::Concluded {
            qmp.execute("job-cancel", json!({"id": job_id})).await?;
        }
        for _ in 0..600 {
            match job_state(qmp, job_id).await? {
                Some(s) if s.status == JobStatus::Concluded => {
                    qmp.execute("job-dismiss", json!({"id": job_id})).await?;
                    break;
                }
                None => break,
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let _ = qmp.execute("blockdev-del", json!({"node-name": target_node})).await;
    Ok(())
}
