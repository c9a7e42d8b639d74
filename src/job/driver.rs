//! The migrator and its drive loop: one run of a job at a time, under the
//! job's lease, from whatever phase its record says to the end.
//!
//! The loop selects the next step from the record alone
//! ([`next_step`](super::pipeline::next_step)), runs it, and the step
//! persists what it did before the loop looks again; per-run state lives
//! in a [`Run`] that the loop owns and lends to the steps.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::options::{JobProgress, MigrateOptions};
use super::pipeline::{next_step, Pipeline, Step};
use super::record::{Engine, JobRecord, LivePolicyPatch, Phase};
use super::run::Run;
use super::store::{JobStore, Stored};
use super::{fault, snapshot_name};
use crate::catalog::Catalog;
use crate::ceph::IoCtx;
use crate::error::{Error, ErrorKind, Result};
use crate::hypervisor::{BuiltinHypervisors, HypervisorRegistry};
use crate::mirror::partial::partial_name;
use crate::precheck::Clusters;

pub(in crate::job) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs, resumes and aborts migrations.
pub struct Migrator {
    pub(in crate::job) catalog: Arc<dyn Catalog>,
    pub(in crate::job) clusters: Clusters,
    pub(in crate::job) store: JobStore,
    pub(in crate::job) options: MigrateOptions,
    pub(in crate::job) progress: watch::Sender<JobProgress>,
    pub(in crate::job) pause: CancellationToken,
    pub(in crate::job) hypervisors: Arc<dyn HypervisorRegistry>,
}

/// The error of a job stopped at a safe point because it was paused.
pub(in crate::job) fn paused(id: &str) -> Error {
    Error::new(ErrorKind::Cancelled, "migration")
        .target(id.to_owned())
        .message(format!(
            "job `{id}` paused; nothing is lost: resuming the job continues it, aborting it rolls it back"
        ))
}

/// The error of a job whose lease was lost while it ran.
pub(in crate::job) fn lease_lost(id: &str) -> Error {
    Error::new(ErrorKind::Busy, "migration")
        .target(id.to_owned())
        .message("lost the job lease; another process may be driving it")
}

impl Migrator {
    /// A migrator over a control plane's catalog, the clusters it names and
    /// the job store.
    pub fn new(catalog: Arc<dyn Catalog>, clusters: Clusters, store: JobStore, options: MigrateOptions) -> Self {
        let (progress, _) = watch::channel(JobProgress::default());
        Migrator {
            catalog,
            clusters,
            store,
            options,
            progress,
            pause: CancellationToken::new(),
            hypervisors: Arc::new(BuiltinHypervisors::default()),
        }
    }

    /// Uses the control plane's hypervisor hooks for attached volumes
    /// instead of the built-in ones.
    pub fn hypervisors(mut self, registry: Arc<dyn HypervisorRegistry>) -> Self {
        self.hypervisors = registry;
        self
    }

    /// Forces the engine for attached volumes (`None`: chosen by the instance).
    pub fn engine(mut self, engine: Option<Engine>) -> Self {
        self.options.engine = engine;
        self
    }

    /// Progress of the job being driven.
    pub fn subscribe(&self) -> watch::Receiver<JobProgress> {
        self.progress.subscribe()
    }

    /// Cancelling `token` pauses the job at the next safe point; it can be resumed.
    pub fn pause_on(mut self, token: CancellationToken) -> Self {
        self.pause = token;
        self
    }

    /// The job store.
    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// Drives a job to its end (or continues an abort), under its lease.
    pub async fn resume(&self, id: &str) -> Result<JobRecord> {
        let mut run = Run::new(self.pause.child_token());
        let lease = self.store.lease(id, self.options.lease, run.lost.clone()).await?;
        if self.options.live != LivePolicyPatch::default() {
            let mut s = self.store.load(id).await?;
            if let Some(live) = s.record.live.as_mut() {
                let changed = self.options.live.apply(&live.policy);
                if changed != live.policy {
                    info!(job = %id, ?changed, "live policy changed for this run");
                    live.policy = changed;
                    self.store.save(&mut s).await?;
                }
            }
        }
        let lost = run.lost.clone();
        let drive = self.drive(&mut run, id).instrument(info_span!("job", job = %id));
        let (result, abandoned) = self.unless_lease_lost(lost, id, drive).await;
        run.finish(abandoned).await;
        if let Err(e) = &result {
            if e.kind() != ErrorKind::Cancelled {
                if let Ok(mut s) = self.store.load(id).await {
                    s.record.last_error = Some(e.to_string());
                    let _ = self.store.save(&mut s).await;
                }
            }
        }
        let _ = lease.release().await;
        result
    }

    /// Rolls a job back to the pre-migration state (before the switch only).
    pub async fn abort(&self, id: &str, reason: &str) -> Result<JobRecord> {
        let mut run = Run::new(self.pause.child_token());
        let lease = self.store.lease(id, self.options.lease, run.lost.clone()).await?;
        let lost = run.lost.clone();
        let abort = async {
            let mut s = self.store.load(id).await?;
            match &s.record.phase {
                Phase::Aborted { .. } => return Ok(s.record),
                Phase::Aborting { .. } => {}
                p if p.is_switched() => {
                    return Err(Error::new(ErrorKind::JobFinished, "abort").target(id.to_owned()).message(format!(
                        "job `{id}` is past the switch (phase {}): the volume already uses its new image; resuming the job finishes it",
                        p.kind()
                    )))
                }
                _ => {
                    // The catalog is the truth: a crash may fall between the
                    // switch and its record.
                    let current = self.catalog.volume(&s.record.volume_id).await?;
                    if current.backing == s.record.destination && current.migration.as_deref() == Some(id) {
                        return Err(Error::new(ErrorKind::JobFinished, "abort").target(id.to_owned()).message(format!(
                            "job `{id}` is past the switch: the catalog already names `{}`; resuming the job finishes it",
                            s.record.destination
                        )));
                    }
                    self.begin_rollback(&mut s, reason.to_owned()).await?;
                    fault::point("abort-after-recorded");
                }
            }
            self.drive(&mut run, id).await
        }
        .instrument(info_span!("abort", job = %id));
        let (result, abandoned) = self.unless_lease_lost(lost, id, abort).await;
        run.finish(abandoned).await;
        let _ = lease.release().await;
        result
    }

    /// Runs `work` (a run of job `id` under its lease) to its end, or until
    /// the lease is lost (`lost` cancelled, not by a pause): then `work` is
    /// dropped where it stands, as a crash would leave it (another process
    /// may drive the job now; this one may have been fenced out, and an
    /// operation of a fenced-out client can wait forever), and the second
    /// value is true.
    async fn unless_lease_lost<T>(
        &self,
        lost: CancellationToken,
        id: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> (Result<T>, bool) {
        let pause = self.pause.clone();
        let lease_lost_now = async {
            lost.cancelled().await;
            if pause.is_cancelled() {
                // A pause: the run stops at its next safe point instead.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = work => (result, false),
            () = lease_lost_now => {
                warn!(job = %id, "lost the job's lease: stopping where the run stands");
                (Err(lease_lost(id)), true)
            }
        }
    }

    /// Records that the job rolls back (phase `aborting`, with what it may
    /// have to remove); the drive loop then carries the abort out.
    pub(in crate::job) async fn begin_rollback(&self, s: &mut Stored, reason: String) -> Result<()> {
        let (snapshot, images) = self.leftovers(&s.record);
        self.enter(
            s,
            Phase::Aborting {
                reason,
                snapshot,
                images,
            },
        )
        .await
    }

    /// What an abort of `record` may have to remove.
    fn leftovers(&self, record: &JobRecord) -> (Option<String>, Vec<String>) {
        let snap = Some(snapshot_name(&record.id));
        let partial = partial_name(&record.destination.image.image);
        match record.phase {
            Phase::Created => (None, vec![]),
            // A resync's step from `marked` restores the replaced copy and
            // names the volume's point as this job's.
            Phase::Marked if record.is_resync() => (snap, vec![record.destination.image.image.clone()]),
            Phase::Marked => (None, vec![]),
            // Only the live phases' round snapshots; abort sweeps them all by prefix.
            _ => (snap, vec![partial, record.destination.image.image.clone()]),
        }
    }

    pub(in crate::job) async fn enter(&self, s: &mut Stored, phase: Phase) -> Result<()> {
        let t = now();
        s.record.history.push((phase.kind(), t));
        s.record.phase = phase;
        s.record.updated_at = t;
        s.record.last_error = None;
        self.store.save(s).await?;
        self.progress.send_replace(JobProgress {
            job: s.record.id.clone(),
            phase: s.record.phase.kind(),
            ..Default::default()
        });
        info!(phase = s.record.phase.name(), "job phase");
        Ok(())
    }

    pub(in crate::job) async fn ioctxs(&self, r: &JobRecord) -> Result<(IoCtx, IoCtx)> {
        let src = &r.source;
        let dst = &r.destination;
        let src_io = self
            .clusters
            .get(&src.cluster)?
            .ioctx(&src.image.pool, &src.image.namespace)
            .await?;
        let dst_io = self
            .clusters
            .get(&dst.cluster)?
            .ioctx(&dst.image.pool, &dst.image.namespace)
            .await?;
        Ok((src_io, dst_io))
    }

    async fn drive(&self, run: &mut Run, id: &str) -> Result<JobRecord> {
        let mut s = self.store.load(id).await?;
        loop {
            if run.lost.is_cancelled() && !self.pause.is_cancelled() {
                return Err(lease_lost(id));
            }
            if self.pause.is_cancelled()
                && !matches!(s.record.phase, Phase::Aborting { .. })
                && !s.record.phase.is_final()
            {
                return Err(paused(id));
            }
            self.progress.send_replace(JobProgress {
                job: id.to_owned(),
                phase: s.record.phase.kind(),
                ..Default::default()
            });
            let step = next_step(Pipeline::of(&s.record), &s.record.phase);
            if step == Step::Finished {
                if s.record.sync.is_some() {
                    // An operator's request has been carried out (or outlived its job).
                    let _ = self.store.clear_requests(id).await;
                }
                return Ok(s.record);
            }
            let span = info_span!("phase", phase = s.record.phase.name());
            self.take(&mut s, run, step).instrument(span).await?;
        }
    }

    /// Runs one step (in flow order; see `steps/`).
    async fn take(&self, s: &mut Stored, run: &mut Run, step: Step) -> Result<()> {
        match step {
            Step::Mark => self.step_mark(s).await,
            Step::BeginCopy => self.step_begin_copy(s).await,
            Step::BeginMirror => self.step_begin_mirror(s).await,
            Step::Copy => self.step_copy(s, run).await,
            Step::JoinReplacedCopy => self.step_join_replaced_copy(s).await,
            Step::Mirror { job } => self.step_mirror(s, job).await,
            Step::BeginRounds { base } => self.step_begin_rounds(s, base).await,
            Step::Round { base, round } => self.step_round(s, run, base, round).await,
            Step::Cutover { base, round } => self.step_cutover(s, run, base, round).await,
            Step::Switch { snapshot } => self.step_switch(s, snapshot).await,
            Step::Repoint { snapshot } => self.step_repoint(s, snapshot).await,
            Step::Pivot { snapshot } => self.step_pivot(s, snapshot).await,
            Step::Cleanup => self.step_cleanup(s, run).await,
            Step::RetireLostSource => self.step_retire_lost_source(s).await,
            Step::Abort {
                reason,
                snapshot,
                images,
            } => self.step_abort(s, run, reason, snapshot, images).await,
            Step::Finished => Ok(()),
        }
    }
}
