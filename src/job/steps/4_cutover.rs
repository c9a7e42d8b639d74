//! CuttingOver -> Switched (live, native engine): the instance is held,
//! the source fenced (its exclusive lock, taken by livemig), what changed
//! since `base` applied straight from the fenced source (no snapshot:
//! nothing can change it), and the switch committed. The time of the hold
//! is recorded before the hold, so an abort knows the instance may be held
//! and resumes it; a cutover that died before the switch is redone from
//! the hold (idempotent).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::ceph::Image;
use crate::error::{Error, Result};
use crate::job::live::now_ms;
use crate::job::record::{CutoverSteps, Phase};
use crate::job::run::Run;
use crate::job::store::Stored;
use crate::job::{fault, Migrator};
use crate::mirror::fence::fence;

impl Migrator {
    /// The source to fence: the rounds' handle, taken from them (else a new
    /// one), or `None` if this process already holds its lock. Taken before
    /// the hold, so that the downtime does not include opening it.
    pub(in crate::job) async fn source_to_fence(&self, s: &mut Stored, run: &mut Run) -> Result<Option<Image>> {
        if run.fence.is_some() {
            return Ok(None);
        }
        let img = self.live_source(s, run).await?;
        run.source = None;
        Ok(Some(img))
    }

    /// Takes `src`'s exclusive lock (kept until cleanup or abort).
    pub(in crate::job) async fn fence_source(&self, s: &mut Stored, run: &mut Run, src: Image) -> Result<()> {
        let timeout = Duration::from_millis(self.live_mut(s).policy.fence_timeout_ms);
        let report = match fence(&src, timeout).await {
            Ok(report) => report,
            Err(e) => {
                src.close().await;
                return Err(e);
            }
        };
        if let Some(c) = self.live_mut(s).cutover.as_mut() {
            c.fence.blocklisted.extend(report.blocklisted);
        }
        run.fence = Some(src);
        Ok(())
    }

    /// Hold, fence, apply the last changes, switch.
    pub(in crate::job) async fn step_cutover(
        &self,
        s: &mut Stored,
        run: &mut Run,
        base: String,
        round: u32,
    ) -> Result<()> {
        let (attachment, hook) = self.live_hook(&s.record)?;
        let cutover = self.live_mut(s).cutover.get_or_insert_with(Default::default);
        let first_hold = cutover.held_at_ms == 0;
        if first_hold {
            // Recorded before the hold: whoever finds this record knows the
            // instance may be held.
            cutover.held_at_ms = now_ms();
            self.store.save(s).await?;
        }
        fault::point("live-after-cutover-recorded");
        // The removal of earlier rounds' snapshots lets go of the source's
        // lock when it is done: it must not be done after the fence.
        run.finish_sweep().await;
        // Opened before the hold, so that the downtime does not include them.
        self.replay_destination(&s.record, run).await?;
        let fence_source = self.source_to_fence(s, run).await?;
        if first_hold {
            // The downtime counts from the hold itself (the record keeps the
            // earlier time until its next save).
            if let Some(c) = self.live_mut(s).cutover.as_mut() {
                c.held_at_ms = now_ms();
            }
        }
        let mut steps = CutoverSteps::default();
        let step = Instant::now();
        if let Err(e) = hook.hold(&attachment).await {
            if let Some(img) = fence_source {
                img.close().await;
            }
            return Err(e);
        }
        steps.hold_ms = step.elapsed().as_millis() as u64;
        fault::point("live-after-hold");
        // The instance readies the destination while the delta is applied.
        let destination = s.record.destination.clone();
        let prepare = async {
            if let Err(e) = hook.prepare_repoint(&attachment, &destination).await {
                warn!(error = %e, "readying the instance's re-point; the re-point does it all");
            }
        };
        let applied = async {
            let step = Instant::now();
            if let Some(src) = fence_source {
                self.fence_source(s, run, src).await?;
            }
            steps.fence_ms = step.elapsed().as_millis() as u64;
            fault::point("live-after-fence");
            let fenced = run.fence.clone().expect("fenced above");
            let mut report = self.apply_delta(s, run, &fenced, &base, round).await?;
            report.cutover = true;
            Ok::<_, Error>(report)
        };
        let ((), applied) = tokio::join!(prepare, applied);
        let report = match applied {
            Ok(r) => r,
            Err(e) => {
                // Not switched: the instance goes on with the source, the
                // job back to replaying (resume retries, abort rolls back).
                run.close_destination().await;
                run.release_fence().await;
                if let Err(re) = hook.resume(&attachment).await {
                    warn!(error = %re, "resuming the instance after a failed cutover");
                    return Err(e);
                }
                self.live_mut(s).cutover = None;
                self.enter(s, Phase::Replaying { base, round }).await?;
                return Err(e);
            }
        };
        fault::point("live-after-final-applied");
        info!(
            changed = report.changed_bytes,
            ms = report.millis,
            hold_ms = steps.hold_ms,
            fence_ms = steps.fence_ms,
            "final delta applied with the instance held"
        );
        steps.final_delta_ms = report.millis;
        self.live_mut(s).rounds.push(report);

        // The commit point. The instance opens the destination next: this
        // process lets go of it (and of its lock) meanwhile.
        let step = Instant::now();
        let (switched, ()) = tokio::join!(self.commit_switch(s), run.close_destination());
        if !switched? {
            return Ok(());
        }
        steps.switch_ms = step.elapsed().as_millis() as u64;
        if let Some(c) = self.live_mut(s).cutover.as_mut() {
            c.steps = steps;
        }
        fault::point("live-after-switch");
        self.enter(s, Phase::Switched { snapshot: Some(base) }).await?;
        fault::point("live-after-switched-recorded");
        Ok(())
    }
}
