//! The state of one run of a job: what a driver holds between steps while
//! it drives the job, and lets go of when the run ends (however it ends).
//! The drive loop owns it and lends it to each step; nothing here outlives
//! the run, and nothing needs resetting by hand for the next one.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::source::{job_snapshots, remove_snapshot};
use crate::ceph::{Image, Watch};
use crate::error::Result;

/// How a sync's driver learns of an operator's requests.
pub(in crate::job) enum RequestWatch {
    /// Not watched yet: the first wait for a round watches.
    NotYet,
    /// A watch on the job's record, woken by a request's notify.
    Watching(Watch),
    /// The watch could not be made, or failed: the driver polls.
    Polling,
}

/// Per-run state, owned by the drive loop.
pub(in crate::job) struct Run {
    /// Cancelled when the lease is lost, and (as a child of the migrator's
    /// pause token) when the job is paused: a running copy stops on either.
    pub lost: CancellationToken,
    /// The first replay round of this run (stalls are counted from it).
    pub first_round: Option<u32>,
    /// When this run's last replay round started (a sync paces its rounds from it).
    pub round_started: Option<std::time::Instant>,
    /// The round at which this run first saw a sync's cutover request.
    pub cutover_asked_at_round: Option<u32>,
    /// The source whose exclusive lock this run took at a live cutover
    /// (released at cleanup or abort, or when the process dies).
    pub fence: Option<Image>,
    /// The source, read-write, kept open from round to round: round
    /// snapshots are taken through it, and the cutover fences it (it then
    /// moves to `fence`). Opening an image costs header reads and a watch,
    /// which each round would add to the next delta.
    pub source: Option<Image>,
    /// The destination the deltas are written to, kept open likewise.
    pub destination: Option<Image>,
    /// How a sync's driver learns of requests in this run.
    pub requests: RequestWatch,
    /// Removal of earlier rounds' snapshots, running beside the next round.
    sweeping: Option<JoinHandle<()>>,
}

impl Run {
    /// A run that stops when `lost` is cancelled.
    pub fn new(lost: CancellationToken) -> Self {
        Run {
            lost,
            first_round: None,
            round_started: None,
            cutover_asked_at_round: None,
            fence: None,
            source: None,
            destination: None,
            requests: RequestWatch::NotYet,
            sweeping: None,
        }
    }

    /// Waits for the background removal of earlier rounds' snapshots (and
    /// its letting go of the source's lock).
    pub async fn finish_sweep(&mut self) {
        if let Some(task) = self.sweeping.take() {
            let _ = task.await;
        }
    }

    /// Removes the job's snapshots on `src` other than `keep` in a task of
    /// its own (after the previous such task ended), unless there are at
    /// most `left` of them. The list is taken now, so snapshots that later
    /// rounds create are not touched; a removal that fails is left to
    /// cleanup, which sweeps again. `src` is shared with the rounds: the
    /// task lets go of it without closing it.
    pub async fn sweep_in_background(&mut self, src: Image, job: &str, keep: &str, left: usize) -> Result<()> {
        self.finish_sweep().await;
        let stale = job_snapshots(&src, job, Some(keep)).await?;
        if stale.len() <= left {
            return Ok(());
        }
        let task = tokio::spawn(
            async move {
                for snap in stale {
                    if let Err(e) = remove_snapshot(&src, &snap).await {
                        warn!(snapshot = %snap.given_name(), error = %e, "removing an earlier round's snapshot; cleanup retries");
                    }
                }
                // Safe against the fence: the cutover waits for this task
                // before it takes the lock.
                let_go_of_source_lock(&src).await;
            }
            .in_current_span(),
        );
        self.sweeping = Some(task);
        Ok(())
    }

    /// Gives up the source's lock if this run holds it.
    pub async fn release_fence(&mut self) {
        if let Some(img) = self.fence.take() {
            if let Err(e) = img.lock_release().await {
                warn!(error = %e, "releasing the source's lock");
            }
            img.close().await;
        }
    }

    /// Closes the destination if a round left it open.
    pub async fn close_destination(&mut self) {
        if let Some(img) = self.destination.take() {
            img.close().await;
        }
    }

    /// Closes every image the rounds left open (not the fence).
    pub async fn close_handles(&mut self) {
        for img in [self.source.take(), self.destination.take()].into_iter().flatten() {
            img.close().await;
        }
    }

    /// Ends the run: normally ([`Run::end`]), or, `abandoned` (its lease
    /// lost mid-step), without waiting for anything: its images are let go
    /// of without waiting for their operations (a fenced-out client's may
    /// never complete), and a background sweep is stopped.
    pub async fn finish(mut self, abandoned: bool) {
        if !abandoned {
            return self.end().await;
        }
        if let Some(task) = self.sweeping.take() {
            task.abort();
        }
        drop((self.source.take(), self.destination.take(), self.fence.take()));
    }

    /// Ends the run: no background removal, open image or fence outlives it.
    pub async fn end(mut self) {
        self.finish_sweep().await;
        self.close_handles().await;
        self.release_fence().await;
    }
}

/// Gives the source's exclusive lock back if a snapshot operation of the
/// rounds made librbd take it (nobody owned it: an idle instance). Kept, it
/// would stay with this process until the instance asks for it, and should
/// this process die, the instance's next write would wait for its watch to
/// time out (30 s by default). A failure only leaves the lock where it was.
pub(in crate::job) async fn let_go_of_source_lock(src: &Image) {
    let released = match src.is_lock_owner().await {
        Ok(false) => return,
        Ok(true) => src.lock_release().await,
        Err(e) => Err(e),
    };
    match released {
        Ok(()) => debug!("let go of the source's lock a snapshot operation took"),
        // librbd refuses (EINVAL) a release while the lock is changing hands
        // (the background removal's own release, the instance's request).
        Err(e) if matches!(src.is_lock_owner().await, Ok(false)) => {
            debug!(error = %e, "the source's lock went meanwhile")
        }
        Err(e) => warn!(error = %e, "letting go of the source's lock"),
    }
}
