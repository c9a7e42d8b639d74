//! Copied -> Replaying -> ... -> CuttingOver (live, native engine): after
//! the bulk copy of snapshot 0, each round takes snapshot N and applies
//! what changed since N-1 to the destination, which then holds snapshot
//! N's content (the record's `base`). When a round is small enough (or the
//! policy gives up waiting for that) the job moves on to the cutover; when
//! the policy says to stop, it pauses.
//!
//! A round redone after a crash reuses its snapshot (named by round
//! number): it is newer than `base`, which is all the delta needs.
//!
//! A continuous sync's rounds (see `job::sync`) are paced instead, and go
//! on until an operator asks for the cutover or a stop.

use std::time::Instant;

use tracing::{debug, info, warn};

use crate::ceph::Image;
use crate::error::{Error, ErrorKind, Result};
use crate::job::live::now_ms;
use crate::job::record::{CutoverReport, LivePolicy, OnStall, Phase, RoundReport, SyncRequest, SYNC_ROUNDS_KEPT};
use crate::job::run::{let_go_of_source_lock, Run};
use crate::job::source::snapshot_exists;
use crate::job::store::Stored;
use crate::job::sync::{copy_started_ms, keep_replica_point, match_replica, SYNC_STOPPED};
use crate::job::{fault, round_snapshot, Migrator};

/// Earlier snapshots of the job a continuing round leaves on the source
/// (those of the copy and of the rounds before it, not the new base).
///
/// Removing a snapshot costs a monitor round trip, and the OSDs then trim
/// its clones. In line, the removal would add to every round's delta; in
/// the background, beside the next round, the removal and the trimming
/// after it still shared the cluster with the cutover that followed a round
/// or two later, and lengthened the hold (the README's live bench has the
/// numbers). So a migration that
/// converges in a few rounds leaves its snapshots to cleanup, after the
/// instance runs on the destination; a longer one removes them in the
/// background once more than this many have gathered, and a paused one
/// removes them all.
const EARLIER_SNAPSHOTS_LEFT: usize = 3;

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
    /// Copied -> Replaying: the first round is next.
    pub(in crate::job) async fn step_begin_rounds(&self, s: &mut Stored, base: String) -> Result<()> {
        let copy_started = copy_started_ms(&s.record);
        if let Some(sync) = s.record.sync.as_mut() {
            // The replica now holds the copy's point in time (a resync's:
            // the failover's).
            sync.synced_at_ms = match &sync.resync {
                Some(origin) => Some(origin.point_ms),
                None => copy_started,
            };
        }
        self.enter(s, Phase::Replaying { base, round: 1 }).await
    }

    /// Applies the changes since `base` in `src` (a snapshot, or the
    /// fenced source itself) to the destination, publishing progress.
    pub(in crate::job) async fn apply_delta(
        &self,
        s: &Stored,
        run: &mut Run,
        src: &Image,
        base: &str,
        round: u32,
    ) -> Result<RoundReport> {
        let dst = self.replay_destination(&s.record, run).await?;
        if s.record.sync.is_some() {
            match_replica(src, &dst).await?;
        }
        // The delta's operations go ahead of the instance's: a round that
        // shares the OSDs evenly with the writer takes as long as the
        // writer needs to dirty as much again, and the final delta is what
        // the writer dirtied during the last round.
        // Not a sync's rounds, though: they go on for as long as it runs,
        // beside the instance (until it is asked to cut over).
        let sync_round = s.record.sync.is_some()
            && matches!(s.record.phase, Phase::Replaying { .. })
            && run.cutover_asked_at_round.is_none();
        let priority = match s.record.live.as_ref() {
            Some(l) if !sync_round => l.policy.delta_op_priority,
            _ => 0,
        };
        let _raised = match priority {
            0 => Vec::new(),
            p => [src.ioctx().cluster(), dst.ioctx().cluster()]
                .into_iter()
                .map(|c| c.raise_op_priority(p))
                .collect::<Result<Vec<_>>>()?,
        };
        let started = Instant::now();
        let (src_c, dst_c, base_c) = (src.clone(), dst.clone(), base.to_owned());
        let p = self
            .track(
                run,
                &s.record.id,
                s.record.phase.kind(),
                Some(round),
                move |copier| async move { copier.replay(&src_c, &dst_c, &base_c).await },
            )
            .finish()
            .await?;
        Ok(RoundReport {
            round,
            changed_bytes: p.total_bytes,
            written_bytes: p.written_bytes,
            millis: started.elapsed().as_millis() as u64,
            cutover: false,
            whole_objects: p.whole_objects,
        })
    }

    /// One replay round: snapshot, apply the changes since `base`, decide.
    pub(in crate::job) async fn step_round(
        &self,
        s: &mut Stored,
        run: &mut Run,
        base: String,
        round: u32,
    ) -> Result<()> {
        let first_round = *run.first_round.get_or_insert(round);
        let id = s.record.id.clone();
        let request = match s.record.sync {
            Some(_) => self.sync_pace(s, run).await?,
            None => None,
        };
        if request == Some(SyncRequest::Cutover) {
            run.cutover_asked_at_round.get_or_insert(round);
        }
        if request == Some(SyncRequest::Stop) {
            info!("stopping the sync as asked: rolling back");
            return self.begin_rollback(s, SYNC_STOPPED.to_owned()).await;
        }
        run.round_started = Some(Instant::now());
        let snap = round_snapshot(&id, round);
        let src = self.live_source(s, run).await?;
        // A sync keeps at most two of its snapshots on the source: the
        // earlier ones are gone before the next is taken.
        if s.record.sync.is_some() {
            run.finish_sweep().await;
        }
        // A round redone after a crash reuses its snapshot: it is newer than
        // `base`, which is all the delta needs.
        let mut taken_at = None;
        if !snapshot_exists(&src, &snap).await? {
            taken_at = Some(now_ms());
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
        if s.record.sync.is_some() {
            let replica = self.replay_destination(&s.record, run).await?;
            keep_replica_point(&replica, &id, &base).await?;
        }
        let (src_io, _) = self.ioctxs(&s.record).await?;
        let at_snap = src_io
            .open_image_read_only(&s.record.source.image.image, Some(&snap))
            .await?;
        let report = self.apply_delta(s, run, &at_snap, &base, round).await;
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
        let syncing = s.record.sync.is_some();
        if let Some(sync) = s.record.sync.as_mut() {
            sync.rounds += 1;
            // A redone round's snapshot is older than its redo: the replica
            // is then said to hold no newer point than before.
            if taken_at.is_some() {
                sync.synced_at_ms = taken_at;
            }
        }
        let live = self.live_mut(s);
        live.rounds.push(report);
        if syncing && live.rounds.len() > SYNC_ROUNDS_KEPT {
            live.rounds.drain(..live.rounds.len() - SYNC_ROUNDS_KEPT);
        }
        // A sync asked to cut over converges first, as a live migration
        // does (its rounds counted from the request's first).
        let verdict = match (syncing, request) {
            (true, Some(SyncRequest::Cutover)) => {
                // Set when the request was read, before this round.
                let asked = run.cutover_asked_at_round.unwrap_or(round);
                match decide(&live.policy, &live.rounds, asked) {
                    Verdict::Cutover(why) | Verdict::Stall(why) => {
                        Verdict::Cutover(format!("the operator asked for the sync's cutover; {why}"))
                    }
                    Verdict::Continue => Verdict::Continue,
                }
            }
            (true, _) => Verdict::Continue,
            (false, _) => decide(&live.policy, &live.rounds, first_round),
        };
        let next_base = snap.clone();
        // How many earlier snapshots may stay on the source (with more, all
        // go); `None`: none go now (the cutover leaves them to cleanup).
        let snapshots_left = match verdict {
            Verdict::Continue if syncing => Some(0),
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
            run.sweep_in_background(src, &id, &snap, left).await?;
        }
        if let Some(reason) = stalled {
            warn!(%reason, "pausing: the writer outpaces the copy");
            return Err(Error::new(ErrorKind::NotConverging, "replay").target(id.clone()).message(format!(
                "job `{id}` paused: {reason}; the instance was not held. Resuming with the cut-over-on-stall policy cuts over anyway, aborting rolls back"
            )));
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
            whole_objects: 0,
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
