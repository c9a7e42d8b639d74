//! Which step a job takes next: a pure function of its engine and phase,
//! so the three pipelines read as sequences and are tested alone.
//!
//! | pipeline | steps |
//! |---|---|
//! | detached | mark, copy, switch, cleanup |
//! | live, native engine | mark, copy, rounds, cutover (ends with the switch), re-point, cleanup |
//! | live, QEMU engine | mark, mirror (ends with the switch), pivot, cleanup |
//! | resync (a sync back after a failover) | mark, join the replaced copy, rounds, cutover, re-point, cleanup |
//!
//! An abort, from any phase before the switch, is one more step; so is the
//! retirement of a source lost to a sync's failover.

use super::record::{JobRecord, Phase};

/// How a job's bytes move, which decides its sequence of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::job) enum Pipeline {
    /// No instance writes the volume: copy, then switch.
    Detached,
    /// An instance writes it; livemig copies and replays, holding the
    /// instance for the last delta.
    LiveNative,
    /// The instance's QEMU mirrors it and pivots.
    Qemu,
    /// A sync back to the copy a failover replaced: as `LiveNative`, but
    /// instead of a copy that copy is joined at the point in time both
    /// sides hold.
    Resync,
}

impl Pipeline {
    /// The pipeline of `record`.
    pub fn of(record: &JobRecord) -> Pipeline {
        match &record.live {
            None => Pipeline::Detached,
            Some(_) if record.is_qemu() => Pipeline::Qemu,
            Some(_) if record.is_resync() => Pipeline::Resync,
            Some(_) => Pipeline::LiveNative,
        }
    }
}

/// The next step, with what it needs from the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::job) enum Step {
    /// Created -> Marked: the catalog marks the volume.
    Mark,
    /// Marked -> Copying: the copy's snapshot and partial are named.
    BeginCopy,
    /// Copying -> Copied: the bulk copy, resumable from its watermark.
    Copy,
    /// Marked -> Copied (a resync): the replaced copy back at the point in
    /// time it shares with the volume, which both name as this job's.
    JoinReplacedCopy,
    /// Copied -> Replaying: the first replay round is next.
    BeginRounds { base: String },
    /// Replaying -> Replaying | CuttingOver: one replay round.
    Round { base: String, round: u32 },
    /// CuttingOver -> Switched: hold, fence, last delta, switch.
    Cutover { base: String, round: u32 },
    /// Copied -> Switched: the commit point of a detached job.
    Switch { snapshot: String },
    /// Marked -> Mirroring: QEMU's mirror job is named.
    BeginMirror,
    /// Mirroring -> Switched: QEMU mirrors until in sync, then the switch.
    Mirror { job: String },
    /// Switched -> Repointed: the held instance moves to the destination.
    Repoint { snapshot: Option<String> },
    /// Switched -> Repointed: QEMU pivots to the destination.
    Pivot { snapshot: Option<String> },
    /// Switched (detached) | Repointed -> Done: the source is retired.
    Cleanup,
    /// FailedOver -> Done: the lost source, its cluster back, fenced and retired.
    RetireLostSource,
    /// Aborting -> Aborted: the rollback.
    Abort {
        reason: String,
        snapshot: Option<String>,
        images: Vec<String>,
    },
    /// Done or Aborted: nothing left.
    Finished,
}

/// The step `pipeline` takes from `phase`.
pub(in crate::job) fn next_step(pipeline: Pipeline, phase: &Phase) -> Step {
    use Pipeline::*;
    match (pipeline, phase.clone()) {
        (_, Phase::Done | Phase::Aborted { .. }) => Step::Finished,
        (
            _,
            Phase::Aborting {
                reason,
                snapshot,
                images,
            },
        ) => Step::Abort {
            reason,
            snapshot,
            images,
        },
        (_, Phase::FailedOver { .. }) => Step::RetireLostSource,
        (_, Phase::Created) => Step::Mark,
        (Qemu, Phase::Marked) => Step::BeginMirror,
        (Resync, Phase::Marked) => Step::JoinReplacedCopy,
        (_, Phase::Marked) => Step::BeginCopy,
        (_, Phase::Copying { .. }) => Step::Copy,
        (LiveNative | Resync | Qemu, Phase::Copied { snapshot }) => Step::BeginRounds { base: snapshot },
        (Detached, Phase::Copied { snapshot }) => Step::Switch { snapshot },
        (_, Phase::Replaying { base, round }) => Step::Round { base, round },
        (_, Phase::CuttingOver { base, round }) => Step::Cutover { base, round },
        (_, Phase::Mirroring { job }) => Step::Mirror { job },
        (Qemu, Phase::Switched { snapshot }) => Step::Pivot { snapshot },
        (LiveNative | Resync, Phase::Switched { snapshot }) => Step::Repoint { snapshot },
        (Detached, Phase::Switched { .. }) | (_, Phase::Repointed { .. }) => Step::Cleanup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phase each step leads to on success (the first choice where a
    /// step may go two ways).
    fn after(step: &Step) -> Phase {
        let snapshot = "s".to_owned();
        let some = Some(snapshot.clone());
        match step {
            Step::Mark => Phase::Marked,
            Step::BeginCopy => Phase::Copying {
                snapshot,
                partial: "p".into(),
                watermark: 0,
                done_bytes: 0,
                total_bytes: 0,
            },
            Step::Copy | Step::JoinReplacedCopy => Phase::Copied { snapshot },
            Step::BeginRounds { base } => Phase::Replaying {
                base: base.clone(),
                round: 1,
            },
            Step::Round { base, round } => Phase::CuttingOver {
                base: base.clone(),
                round: round + 1,
            },
            Step::Cutover { .. } | Step::Switch { .. } | Step::Mirror { .. } => Phase::Switched { snapshot: some },
            Step::BeginMirror => Phase::Mirroring { job: "j".into() },
            Step::Repoint { .. } | Step::Pivot { .. } => Phase::Repointed { snapshot: some },
            Step::Cleanup | Step::RetireLostSource => Phase::Done,
            Step::Abort { reason, .. } => Phase::Aborted { reason: reason.clone() },
            Step::Finished => unreachable!("a finished job takes no step"),
        }
    }

    fn walk(pipeline: Pipeline) -> Vec<&'static str> {
        let mut phase = Phase::Created;
        let mut steps = Vec::new();
        loop {
            let step = next_step(pipeline, &phase);
            if step == Step::Finished {
                return steps;
            }
            steps.push(match step {
                Step::Mark => "mark",
                Step::BeginCopy => "begin-copy",
                Step::Copy => "copy",
                Step::JoinReplacedCopy => "join-replaced-copy",
                Step::BeginRounds { .. } => "begin-rounds",
                Step::Round { .. } => "round",
                Step::Cutover { .. } => "cutover",
                Step::Switch { .. } => "switch",
                Step::BeginMirror => "begin-mirror",
                Step::Mirror { .. } => "mirror",
                Step::Repoint { .. } => "repoint",
                Step::Pivot { .. } => "pivot",
                Step::Cleanup => "cleanup",
                Step::RetireLostSource => "retire-lost-source",
                Step::Abort { .. } => "abort",
                Step::Finished => unreachable!(),
            });
            phase = after(&step);
        }
    }

    #[test]
    fn each_pipeline_is_its_sequence_of_steps() {
        assert_eq!(
            walk(Pipeline::Detached),
            ["mark", "begin-copy", "copy", "switch", "cleanup"]
        );
        assert_eq!(
            walk(Pipeline::LiveNative),
            [
                "mark",
                "begin-copy",
                "copy",
                "begin-rounds",
                "round",
                "cutover",
                "repoint",
                "cleanup"
            ]
        );
        assert_eq!(
            walk(Pipeline::Qemu),
            ["mark", "begin-mirror", "mirror", "pivot", "cleanup"]
        );
        assert_eq!(
            walk(Pipeline::Resync),
            [
                "mark",
                "join-replaced-copy",
                "begin-rounds",
                "round",
                "cutover",
                "repoint",
                "cleanup"
            ]
        );
    }

    #[test]
    fn an_abort_and_the_end_are_the_same_in_every_pipeline() {
        for pipeline in [
            Pipeline::Detached,
            Pipeline::LiveNative,
            Pipeline::Qemu,
            Pipeline::Resync,
        ] {
            let aborting = Phase::Aborting {
                reason: "r".into(),
                snapshot: None,
                images: vec![],
            };
            assert!(matches!(next_step(pipeline, &aborting), Step::Abort { .. }));
            assert_eq!(next_step(pipeline, &Phase::Done), Step::Finished);
            let failed_over = Phase::FailedOver { point: "s".into() };
            assert_eq!(next_step(pipeline, &failed_over), Step::RetireLostSource);
            assert_eq!(
                next_step(pipeline, &Phase::Aborted { reason: "r".into() }),
                Step::Finished
            );
        }
    }
}
