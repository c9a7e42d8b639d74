//! The live part of a job: replay rounds, the fenced cutover and the
//! re-point, for a volume that a running instance writes to.
//!
//! After the bulk copy of snapshot 0, each round takes snapshot N and
//! applies what changed since N-1 to the destination; the destination then
//! holds snapshot N's content, which the record says (`base`). When a round
//! is small enough (or the policy gives up waiting for that), the cutover
//! holds the instance, fences the source (its exclusive lock, taken by
//! livemig), applies what changed since `base` straight from the fenced
//! source (no snapshot: nothing can change it), and commits the switch. The
//! instance is then re-pointed to the destination and resumed.
//!
//! Crash safety: every step may run again. Round snapshots are named by
//! round number, so a round redone reuses its snapshot; the cutover is
//! redone from the hold (idempotent) when it died before the switch; the
//! re-point and resume are idempotent. The time of the hold is recorded
//! before the hold, so an abort knows the instance may be held and resumes it.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::*;
use crate::catalog::Attachment;
use crate::hypervisor::Hypervisor;
use crate::mirror::fence::fence;

/// Earlier snapshots of the job a continuing round leaves on the source
/// (those of the copy and of the rounds before it, not the new base).
///
/// Removing a snapshot costs a monitor round trip (~1 s), and the OSDs then
/// trim its clones. In line, the removal would add its second to every
/// round's delta; in the background, beside the next round, the removal and
/// the trimming after it still shared the cluster with the cutover that
/// followed a round or two later (live bench, 12 runs each: downtime median
/// 113 ms against 86, the fence 28 against 18 ms). So a migration that
/// converges in a few rounds leaves its snapshots to cleanup, after the
/// instance runs on the destination; a longer one removes them in the
/// background once more than this many have gathered, and a paused one
/// removes them all.
const EARLIER_SNAPSHOTS_LEFT: usize = 3;

/// The snapshot of replay round `round` of `job`.
pub fn round_snapshot(job: &str, round: u32) -> String {
    format!("{}.{round}", snapshot_name(job))
}

/// Gives the source's exclusive lock back if a snapshot operation of the
/// rounds made librbd take it (nobody owned it: an idle instance). Kept, it
/// would stay with this process until the instance asks for it, and should
/// this process die, the instance's next write would wait for its watch to
/// time out (30 s by default). A failure only leaves the lock where it was.
async fn let_go_of_source_lock(src: &Image) {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The images a live job keeps open from one round to the next within a
/// run. Opening one costs 10-20 ms (header reads, a watch; the destination
/// also its lock again at the first write), which each round would add to
/// the next round's delta, and the cutover to the downtime.
#[derive(Default)]
pub(super) struct LiveHandles {
    /// The source, read-write: round snapshots are taken through it, and
    /// the cutover fences it (it then moves to `Migrator::fence`).
    source: Option<Image>,
    /// The destination the deltas are written to.
    destination: Option<Image>,
}

/// What to do after a round.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Another round.
    Continue,
    /// Cut over, for this reason.
    Cutover(String),
    /// Stop: the copy does not converge.
    Stall(String),
}

/// Decides from the rounds so far (those of this run from `first_round` on
/// count toward the stall limits).
fn decide(policy: &LivePolicy, rounds: &[RoundReport], first_round: u32) -> Verdict {
    let Some(last) = rounds.last() else {
        return Verdict::Continue;
    };
    if last.changed_bytes <= policy.cutover_bytes {
        return Verdict::Cutover(format!(
            "converged: round {} changed {} bytes (at most {} to cut over)",
            last.round, last.changed_bytes, policy.cutover_bytes
        ));
    }
    let this_run: Vec<&RoundReport> = rounds.iter().filter(|r| r.round >= first_round && !r.cutover).collect();
    // Rounds since the smallest delta of this run: deltas fluctuate, so
    // "not shrinking" means no new low.
    let best = this_run
        .iter()
        .enumerate()
        .min_by_key(|(i, r)| (r.changed_bytes, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i);
    let stalls = (this_run.len() - 1 - best) as u32;
    let why = if stalls >= policy.stall_rounds.max(1) {
        format!(
            "not converging: {stalls} rounds without a smaller delta than round {}'s {} bytes (last: {} bytes)",
            this_run[best].round, this_run[best].changed_bytes, last.changed_bytes
        )
    } else if this_run.len() as u32 >= policy.max_rounds.max(1) {
        format!(
            "not converging: {} rounds and the last still changed {} bytes (more than {})",
            this_run.len(),
            last.changed_bytes,
            policy.cutover_bytes
        )
    } else {
        return Verdict::Continue;
    };
    match policy.on_stall {
        OnStall::Cutover => Verdict::Cutover(format!("{why}; cutting over as the policy says")),
        OnStall::Pause => Verdict::Stall(why),
    }
}

impl Migrator {
    fn live_hook(&self, r: &JobRecord) -> Result<(Attachment, Arc<dyn Hypervisor>)> {
        let live = r.live.as_ref().expect("a live phase has a live record");
        let hook = self.hypervisors.for_attachment(&live.attachment)?;
        Ok((live.attachment.clone(), hook))
    }

    pub(super) fn live_mut<'a>(&self, s: &'a mut Stored) -> &'a mut LiveRecord {
        s.record.live.as_mut().expect("a live phase has a live record")
    }

    /// The destination, opened by the first round of this run and kept
    /// open until the cutover has applied its delta.
    async fn replay_destination(&self, r: &JobRecord) -> Result<Image> {
        self.kept_open(r, false).await
    }

    /// The source, read-write, opened by the first round of this run (which
    /// fences out an earlier driver's handle: see
    /// `Migrator::fence_out_earlier_source_drivers`).
    async fn live_source(&self, s: &mut Stored) -> Result<Image> {
        let opened = self.live_handles.lock().await.source.is_none();
        let img = self.kept_open(&s.record, true).await?;
        if opened {
            self.fence_out_earlier_source_drivers(s, &img).await?;
        }
        Ok(img)
    }

    /// The source's or the destination's handle in [`LiveHandles`], opened
    /// read-write if there is none yet.
    async fn kept_open(&self, r: &JobRecord, source: bool) -> Result<Image> {
        let mut handles = self.live_handles.lock().await;
        let slot = match source {
            true => &mut handles.source,
            false => &mut handles.destination,
        };
        if let Some(img) = slot.as_ref() {
            return Ok(img.clone());
        }
        let (src_io, dst_io) = self.ioctxs(r).await?;
        let (io, name, what) = match source {
            true => (src_io, &r.source.image.image, "open the source"),
            false => (dst_io, &r.destination.image.image, "open the destination"),
        };
        let img = retry_busy(what, || io.open_image(name)).await?;
        *slot = Some(img.clone());
        Ok(img)
    }

    /// Closes the destination if a round left it open.
    pub(super) async fn close_replay_destination(&self) {
        let destination = self.live_handles.lock().await.destination.take();
        if let Some(img) = destination {
            img.close().await;
        }
    }

    /// Closes every image the rounds left open (not the fence).
    pub(super) async fn close_live_handles(&self) {
        let handles = std::mem::take(&mut *self.live_handles.lock().await);
        for img in [handles.source, handles.destination].into_iter().flatten() {
            img.close().await;
        }
    }

    /// Applies the changes since `base` in `src` (a snapshot, or the
    /// fenced source itself) to the destination, publishing progress.
    async fn apply_delta(
        &self,
        s: &Stored,
        src: &Image,
        base: &str,
        round: u32,
        lost: &CancellationToken,
    ) -> Result<RoundReport> {
        let dst = self.replay_destination(&s.record).await?;
        // The delta's operations go ahead of the instance's: a round that
        // shares the OSDs evenly with the writer takes as long as the
        // writer needs to dirty as much again, and the final delta is what
        // the writer dirtied during the last round.
        let priority = s.record.live.as_ref().map_or(0, |l| l.policy.delta_op_priority);
        let _raised = match priority {
            0 => Vec::new(),
            p => [src.ioctx().cluster(), dst.ioctx().cluster()]
                .into_iter()
                .map(|c| c.raise_op_priority(p))
                .collect::<Result<Vec<_>>>()?,
        };
        let (tx, mut rx) = watch::channel(Progress::default());
        let copier = Copier::new(self.options.copy.clone())
            .progress(tx)
            .cancel_on(lost.child_token());
        let started = Instant::now();
        let (src_c, dst_c, base_c) = (src.clone(), dst.clone(), base.to_owned());
        let mut replay = Box::pin(async move { copier.replay(&src_c, &dst_c, &base_c).await });
        let outcome = loop {
            tokio::select! {
                biased;
                changed = rx.changed() => {
                    if changed.is_ok() {
                        let p = rx.borrow_and_update().clone();
                        self.progress.send_replace(JobProgress {
                            job: s.record.id.clone(),
                            phase: s.record.phase.name().into(),
                            copy: Some(p),
                            round: Some(round),
                        });
                    }
                }
                r = &mut replay => break r,
            }
        };
        drop(replay);
        let p = match outcome {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                return Err(if self.pause.is_cancelled() {
                    self.paused(&s.record.id)
                } else {
                    self.lease_lost(&s.record.id)
                })
            }
            Err(e) => return Err(e),
        };
        Ok(RoundReport {
            round,
            changed_bytes: p.total_bytes,
            written_bytes: p.written_bytes,
            millis: started.elapsed().as_millis() as u64,
            cutover: false,
        })
    }

    /// One replay round: snapshot, apply the changes since `base`, decide.
    pub(super) async fn step_round(
        &self,
        s: &mut Stored,
        base: String,
        round: u32,
        lost: &CancellationToken,
    ) -> Result<()> {
        let first_round = *self
            .first_round
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(round);
        let id = s.record.id.clone();
        let snap = round_snapshot(&id, round);
        let src = self.live_source(s).await?;
        // A round redone after a crash reuses its snapshot: it is newer than
        // `base`, which is all the delta needs.
        if !snapshot_exists(&src, &snap).await? {
            let creating = Instant::now();
            src.snap_create(&snap).await?;
            debug!(
                round,
                ms = creating.elapsed().as_millis() as u64,
                "round snapshot taken"
            );
        }
        let_go_of_source_lock(&src).await;
        fault::point("live-after-round-snapshot");
        let (src_io, _) = self.ioctxs(&s.record).await?;
        let at_snap = src_io
            .open_image_read_only(&s.record.source.image.image, Some(&snap))
            .await?;
        let report = self.apply_delta(s, &at_snap, &base, round, lost).await;
        at_snap.close().await;
        let report = report?;
        fault::point("live-after-round-applied");
        info!(
            round,
            changed = report.changed_bytes,
            written = report.written_bytes,
            ms = report.millis,
            "replay round"
        );
        let live = self.live_mut(s);
        live.rounds.push(report);
        let verdict = decide(&live.policy, &live.rounds, first_round);
        let next_base = snap.clone();
        // How many earlier snapshots may stay on the source (with more, all
        // go); `None`: none go now (the cutover leaves them to cleanup).
        let snapshots_left = match verdict {
            Verdict::Continue => Some(EARLIER_SNAPSHOTS_LEFT),
            Verdict::Stall(_) => Some(0),
            Verdict::Cutover(_) => None,
        };
        let stalled = match verdict {
            Verdict::Continue => {
                self.enter(
                    s,
                    Phase::Replaying {
                        base: next_base,
                        round: round + 1,
                    },
                )
                .await?;
                None
            }
            Verdict::Cutover(reason) => {
                info!(%reason, "cutting over");
                self.live_mut(s).cutover = Some(CutoverReport {
                    reason,
                    ..Default::default()
                });
                self.enter(
                    s,
                    Phase::CuttingOver {
                        base: next_base,
                        round: round + 1,
                    },
                )
                .await?;
                None
            }
            Verdict::Stall(reason) => {
                self.enter(
                    s,
                    Phase::Replaying {
                        base: next_base,
                        round: round + 1,
                    },
                )
                .await?;
                Some(reason)
            }
        };
        fault::point("live-after-round-recorded");
        if let Some(left) = snapshots_left {
            self.sweep_in_background(src, &id, &snap, left).await?;
        }
        if let Some(reason) = stalled {
            warn!(%reason, "pausing: the writer outpaces the copy");
            return Err(Error::new(ErrorKind::NotConverging, "replay").target(id.clone()).message(format!(
                "job `{id}` paused: {reason}; the instance was not held. Resuming with the cut-over-on-stall policy cuts over anyway, aborting rolls back"
            )));
        }
        Ok(())
    }

    /// Removes the job's snapshots on `src` other than `keep` in a task of
    /// its own (after the previous such task ended), unless there are at
    /// most `left` of them ([`EARLIER_SNAPSHOTS_LEFT`]). The list is taken now,
    /// so snapshots that later rounds create are not touched; a removal
    /// that fails is left to cleanup, which sweeps again. `src` is shared
    /// with the rounds: the task lets go of it without closing it.
    async fn sweep_in_background(&self, src: Image, job: &str, keep: &str, left: usize) -> Result<()> {
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
        *self.sweeping.lock().await = Some(task);
        Ok(())
    }

    /// Waits for the background removal of earlier rounds' snapshots (and
    /// its letting go of the source's lock).
    pub(super) async fn finish_sweep(&self) {
        if let Some(task) = self.sweeping.lock().await.take() {
            let _ = task.await;
        }
    }

    /// The source to fence: the rounds' handle, taken from them (else a new
    /// one), or `None` if this process already holds its lock. Taken before
    /// the hold, so that the downtime does not include opening it.
    async fn source_to_fence(&self, s: &mut Stored) -> Result<Option<Image>> {
        if self.fence.lock().await.is_some() {
            return Ok(None);
        }
        let img = self.live_source(s).await?;
        self.live_handles.lock().await.source = None;
        Ok(Some(img))
    }

    /// Takes `src`'s exclusive lock (kept until cleanup or abort).
    async fn fence_source(&self, s: &mut Stored, src: Image) -> Result<()> {
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
        *self.fence.lock().await = Some(src);
        Ok(())
    }

    /// Gives up the source's lock if this process holds it.
    pub(super) async fn release_fence(&self) {
        if let Some(img) = self.fence.lock().await.take() {
            if let Err(e) = img.lock_release().await {
                warn!(error = %e, "releasing the source's lock");
            }
            img.close().await;
        }
    }

    /// Hold, fence, apply the last changes, switch.
    pub(super) async fn step_cutover(
        &self,
        s: &mut Stored,
        base: String,
        round: u32,
        lost: &CancellationToken,
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
        self.finish_sweep().await;
        // Opened before the hold, so that the downtime does not include them.
        self.replay_destination(&s.record).await?;
        let fence_source = self.source_to_fence(s).await?;
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
                self.fence_source(s, src).await?;
            }
            steps.fence_ms = step.elapsed().as_millis() as u64;
            fault::point("live-after-fence");
            let fenced = self.fence.lock().await.clone().expect("fenced above");
            let mut report = self.apply_delta(s, &fenced, &base, round, lost).await?;
            report.cutover = true;
            Ok::<_, Error>(report)
        };
        let ((), applied) = tokio::join!(prepare, applied);
        let report = match applied {
            Ok(r) => r,
            Err(e) => {
                // Not switched: the instance goes on with the source, the
                // job back to replaying (resume retries, abort rolls back).
                self.close_replay_destination().await;
                self.release_fence().await;
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
        let (switched, ()) = tokio::join!(self.commit_switch(s), self.close_replay_destination());
        if !switched? {
            return Ok(());
        }
        steps.switch_ms = step.elapsed().as_millis() as u64;
        if let Some(c) = self.live_mut(s).cutover.as_mut() {
            c.steps = steps;
        }
        fault::point("live-after-switch");
        self.enter(s, Phase::Switched { snapshot: base }).await?;
        fault::point("live-after-switched-recorded");
        Ok(())
    }

    /// Re-points the held instance to the destination and resumes it.
    pub(super) async fn step_repoint(&self, s: &mut Stored, snapshot: String) -> Result<()> {
        let (attachment, hook) = self.live_hook(&s.record)?;
        let destination = s.record.destination.clone();
        let step = Instant::now();
        hook.repoint(&attachment, &destination).await?;
        fault::point("live-after-repoint");
        hook.resume(&attachment).await?;
        let resumed_at_ms = now_ms();
        fault::point("live-after-resume");
        let cutover = self.live_mut(s).cutover.get_or_insert_with(Default::default);
        cutover.steps.repoint_ms = step.elapsed().as_millis() as u64;
        if cutover.resumed_at_ms.is_none() {
            cutover.resumed_at_ms = Some(resumed_at_ms);
        }
        let downtime = cutover.downtime_ms();
        info!(downtime_ms = ?downtime, "instance resumed on the destination");
        // The catalog's attachment follows the instance (a run that dies
        // before this repeats the re-point and resume, which are idempotent).
        self.connect_attachment_to_destination(s).await?;
        self.enter(s, Phase::Repointed { snapshot }).await?;
        fault::point("live-after-resumed-recorded");
        Ok(())
    }

    /// Before the source is retired: clients other than livemig that still
    /// have it open after the instance moved would write to an image the
    /// catalog no longer names (a writer that ignored the hold): they are
    /// blocklisted, so none of their writes can land.
    pub(super) async fn evict_stale_writers(&self, s: &mut Stored, src: &Image) -> Result<()> {
        let me = src.ioctx().cluster().instance_id() as i64;
        let fenced_by_me = self
            .fence
            .lock()
            .await
            .as_ref()
            .map(|f| f.ioctx().cluster().instance_id() as i64);
        // A client that has the destination open too is the moved instance
        // (which may not have let go of the source yet): never evict it.
        let (_, dst_io) = self.ioctxs(&s.record).await?;
        let dst_img = dst_io
            .open_image_read_only(&s.record.destination.image.image, None)
            .await?;
        let on_destination: Vec<String> = dst_img.watchers().await?.into_iter().map(|w| w.addr).collect();
        dst_img.close().await;
        let mut evicted = Vec::new();
        for w in src.watchers().await? {
            if w.id == me || Some(w.id) == fenced_by_me || on_destination.contains(&w.addr) {
                continue;
            }
            warn!(client = w.id, addr = %w.addr, "a client still has the retired source open; blocklisting it");
            src.ioctx().cluster().blocklist_add(&w.addr, 3600).await?;
            evicted.push(format!("client.{} {}", w.id, w.addr));
        }
        if !evicted.is_empty() {
            if let Some(c) = self.live_mut(s).cutover.as_mut() {
                c.fence.blocklisted.extend(evicted);
            }
            self.store.save(s).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: u32, changed_bytes: u64) -> RoundReport {
        RoundReport {
            round,
            changed_bytes,
            written_bytes: changed_bytes,
            millis: 1,
            cutover: false,
        }
    }

    #[test]
    fn rounds_stop_when_small_or_not_shrinking() {
        let policy = LivePolicy {
            cutover_bytes: 100,
            stall_rounds: 2,
            max_rounds: 5,
            ..Default::default()
        };
        assert_eq!(decide(&policy, &[], 1), Verdict::Continue);
        assert!(matches!(decide(&policy, &[round(1, 100)], 1), Verdict::Cutover(_)));
        assert_eq!(decide(&policy, &[round(1, 1000), round(2, 500)], 1), Verdict::Continue);
        // One round without a new low is tolerated, two are not, even if
        // the second shrank.
        assert_eq!(decide(&policy, &[round(1, 500), round(2, 600)], 1), Verdict::Continue);
        let stalled = [round(1, 500), round(2, 700), round(3, 600)];
        assert!(matches!(decide(&policy, &stalled, 1), Verdict::Cutover(r) if r.contains("not converging")));
        assert_eq!(
            decide(&policy, &[round(1, 500), round(2, 700), round(3, 400)], 1),
            Verdict::Continue
        );
        // Only this run's rounds count.
        assert_eq!(decide(&policy, &stalled, 3), Verdict::Continue);
        let pause = LivePolicy {
            on_stall: OnStall::Pause,
            ..policy.clone()
        };
        assert!(matches!(decide(&pause, &stalled, 1), Verdict::Stall(_)));
        // Shrinking, but too many rounds.
        let many: Vec<_> = (1..=5).map(|i| round(i, 10_000 - u64::from(i))).collect();
        assert!(matches!(decide(&pause, &many, 1), Verdict::Stall(r) if r.contains("5 rounds")));
    }
}
