//! Migration jobs: the orchestration of DESIGN's flow for detached volumes,
//! crash-safe.
//!
//! The job record is persisted before each step acts and after it has
//! acted; every step first checks whether its action already happened (a
//! crash may fall between the two), so running a job again from its record
//! always converges. One process drives a job at a time, holding its lease.
//! Before the switch an abort restores the pre-migration state; after it,
//! only rolling forward is allowed.
//!
//! Phases: created -> marked -> copying -> copied -> switched -> done, and
//! aborting -> aborted. A volume attached to a running instance (live, see
//! [`live`]) goes copied -> replaying (rounds) -> cutting_over -> switched
//! -> repointed -> done.

pub mod fault;
mod live;
mod qemu;
mod record;
mod store;

pub use live::round_snapshot;
pub use record::{
    decode, encode, CutoverReport, CutoverSteps, Engine, JobRecord, LivePolicy, LivePolicyPatch, LiveRecord, OnStall,
    Phase, QemuMirror, RetirePolicy, RoundReport, FORMAT, READABLE_BY, READABLE_BY_LIVE,
};
pub use store::{JobStore, Lease, Stored};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::catalog::{Access, Cas, CasPurpose, Catalog, Volume, VolumeStatus};
use crate::ceph::{Image, IoCtx, SnapInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::hypervisor::{BuiltinHypervisors, HypervisorRegistry};
use crate::mirror::copy::{create_partial, finish_partial, PARTIAL_SUFFIX};
use crate::mirror::{Copier, CopyOptions, Progress};
use crate::precheck::{precheck, Clusters, Destination};

/// Image-meta key on a destination image naming the job that made it; only
/// images carrying it are removed by an abort.
pub const JOB_META_KEY: &str = "livemig.job";

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
    /// Current phase name.
    pub phase: String,
    /// Copy progress while copying or replaying.
    pub copy: Option<Progress>,
    /// The replay round, while replaying or cutting over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs, resumes and aborts migrations.
pub struct Migrator {
    catalog: Arc<dyn Catalog>,
    clusters: Clusters,
    store: JobStore,
    options: MigrateOptions,
    progress: watch::Sender<JobProgress>,
    pause: CancellationToken,
    hypervisors: Arc<dyn HypervisorRegistry>,
    /// The source image whose exclusive lock this process holds during a
    /// live cutover (released at cleanup or abort, or when the process dies).
    fence: tokio::sync::Mutex<Option<Image>>,
    /// The first replay round of this run (stalls are counted from it).
    first_round: std::sync::Mutex<Option<u32>>,
    /// Removal of earlier rounds' snapshots, running beside the next round.
    sweeping: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The images a live job keeps open from round to round within a run.
    live_handles: tokio::sync::Mutex<live::LiveHandles>,
}

/// Retries an operation that fails with `Busy` while a dead client's watch
/// or lock lingers (until the cluster times it out).
async fn retry_busy<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match f().await {
            Err(e) if e.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                info!(error = %e, "{what}: busy (a crashed client's watch may linger), retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Whether `spec`'s image exists and carries this job's marker.
async fn made_by_job(io: &IoCtx, image: &str, job: &str) -> Result<bool> {
    if !io.image_exists(image).await? {
        return Ok(false);
    }
    let img = io.open_image_read_only(image, None).await?;
    let meta = img.metadata_list().await?;
    img.close().await;
    Ok(meta.iter().any(|(k, v)| k == JOB_META_KEY && v == job))
}

async fn snapshot_exists(img: &Image, snap: &str) -> Result<bool> {
    Ok(img.snap_list().await?.iter().any(|s| s.name == snap))
}

/// The source status while a job holds the volume: in-use volumes are
/// "detaching" (DESIGN), detached ones "maintenance".
fn marked_status(original: VolumeStatus) -> VolumeStatus {
    match original {
        VolumeStatus::InUse => VolumeStatus::Detaching,
        _ => VolumeStatus::Maintenance,
    }
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
            fence: tokio::sync::Mutex::new(None),
            first_round: std::sync::Mutex::new(None),
            sweeping: tokio::sync::Mutex::new(None),
            live_handles: tokio::sync::Mutex::new(Default::default()),
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

    /// Runs the precheck and writes a new job record (phase `created`);
    /// nothing else changes. Drive it with [`Migrator::resume`].
    pub async fn create(&self, volume_id: &str, to: &Destination) -> Result<Stored> {
        let report = precheck(self.catalog.as_ref(), &self.clusters, volume_id, to)
            .await?
            .into_result()?;
        let volume = self.catalog.volume(volume_id).await?;
        let attachments = self.catalog.attachments(volume_id).await?;
        // An attached volume moves live: its instance must be reachable.
        let live = match attachments.as_slice() {
            [] if self.options.engine == Some(Engine::Qemu) => {
                return Err(Error::new(ErrorKind::InvalidInput, "start migration")
                    .target(volume_id.to_owned())
                    .message(format!(
                        "volume `{volume_id}` is not attached, and the QEMU engine moves only volumes a QEMU has open: let livemig choose the engine"
                    )))
            }
            [] => None,
            [attachment] => {
                let engine = match (&attachment.access, self.options.engine) {
                    (Access::Qmp { socket }, None | Some(Engine::Qemu)) => {
                        qemu::precheck(socket, &volume.backing.image).await?;
                        Engine::Qemu
                    }
                    (_, Some(Engine::Qemu)) => {
                        return Err(Error::new(ErrorKind::InvalidInput, "start migration")
                            .target(volume_id.to_owned())
                            .message(format!(
                                "instance `{}` is not reached through a QMP socket, so the QEMU engine cannot move its volume `{volume_id}`: let livemig choose the engine, or choose the native engine",
                                attachment.instance_id
                            )))
                    }
                    _ => {
                        self.hypervisors.for_attachment(attachment)?.check(attachment).await?;
                        Engine::Native
                    }
                };
                Some(LiveRecord {
                    attachment: attachment.clone(),
                    policy: self.options.live.apply(&LivePolicy::default()),
                    rounds: Vec::new(),
                    cutover: None,
                    engine,
                    qemu: None,
                })
            }
            [a, b, ..] => {
                return Err(Error::new(ErrorKind::AttachedTwice, "start migration")
                    .target(volume_id.to_owned())
                    .message(format!(
                        "volume `{volume_id}` is attached to `{}` and `{}`; a live migration holds one writer",
                        a.instance_id, b.instance_id
                    )))
            }
        };
        let destination = report
            .destination
            .clone()
            .expect("a passed precheck knows the destination");
        let dst_io = self
            .clusters
            .get(&destination.cluster)?
            .ioctx(&destination.image.pool, &destination.image.namespace)
            .await?;
        if dst_io.image_exists(&destination.image.image).await? {
            return Err(Error::new(ErrorKind::DestinationExists, "start migration")
                .target(destination.to_string())
                .message(format!(
                "`{destination}` exists; this release migrates into a new image only: give a pool or a new image name"
            )));
        }
        let src = &volume.backing.image;
        let src_img = self
            .clusters
            .get(&volume.backing.cluster)?
            .ioctx(&src.pool, &src.namespace)
            .await?
            .open_image_read_only(&src.image, None)
            .await?;
        let src_info = src_img.info().await?;
        src_img.close().await;
        if live.as_ref().is_some_and(|l| l.engine == Engine::Native)
            && src_info.features & livemig_ceph_sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64 == 0
        {
            return Err(Error::new(ErrorKind::InvalidState, "start migration")
                .target(volume.backing.to_string())
                .message(format!(
                    "image `{src}` lacks the exclusive-lock feature, which a live migration needs to fence the source: `rbd feature enable {src} exclusive-lock` (with the instance's agreement), or detach the volume"
                )));
        }
        let source_image_id = src_info.id;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let t = now();
        let record = JobRecord {
            id: id.clone(),
            volume_id: volume_id.to_owned(),
            source: volume.backing.clone(),
            destination,
            source_image_id: Some(source_image_id),
            original_volume: volume,
            original_attachments: attachments,
            policy: self.options.policy,
            phase: Phase::Created,
            created_at: t,
            updated_at: t,
            history: vec![("created".into(), t)],
            last_error: None,
            live,
            source_drivers: Vec::new(),
        };
        let stored = self.store.create(&record).await?;
        fault::point("after-create");
        info!(job = %id, volume = %volume_id, "job created");
        Ok(stored)
    }

    /// Drives a job to its end (or continues an abort), under its lease.
    pub async fn resume(&self, id: &str) -> Result<JobRecord> {
        // Cancelled when the lease is lost, and (as a child) when paused: a
        // running copy stops on either.
        let lost = self.pause.child_token();
        let lease = self.store.lease(id, self.options.lease, lost.clone()).await?;
        *self.first_round.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
        let result = self.drive(id, &lost).instrument(info_span!("job", job = %id)).await;
        // No background removal or open image outlives the run.
        self.finish_sweep().await;
        self.close_live_handles().await;
        // A fence this run still holds (after an error) goes with the run.
        if let Some(img) = self.fence.lock().await.take() {
            let _ = img.lock_release().await;
            img.close().await;
        }
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
        let lost = self.pause.child_token();
        let lease = self.store.lease(id, self.options.lease, lost.clone()).await?;
        let result = async {
            let mut s = self.store.load(id).await?;
            match &s.record.phase {
                Phase::Aborted { .. } => return Ok(s.record),
                Phase::Aborting { .. } => {}
                p if p.is_switched() => {
                    return Err(Error::new(ErrorKind::JobFinished, "abort").target(id.to_owned()).message(format!(
                        "job `{id}` is past the switch (phase {}): the volume already uses its new image; resuming the job finishes it",
                        p.name()
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
            self.drive(id, &lost).await
        }
        .instrument(info_span!("abort", job = %id))
        .await;
        let _ = lease.release().await;
        result
    }

    /// Records that the job rolls back (phase `aborting`, with what it may
    /// have to remove); the drive loop then carries the abort out.
    async fn begin_rollback(&self, s: &mut Stored, reason: String) -> Result<()> {
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
        let partial = format!("{}{PARTIAL_SUFFIX}", record.destination.image.image);
        match record.phase {
            Phase::Created | Phase::Marked => (None, vec![]),
            // Only the live phases' round snapshots; abort sweeps them all by prefix.
            _ => (snap, vec![partial, record.destination.image.image.clone()]),
        }
    }

    async fn enter(&self, s: &mut Stored, phase: Phase) -> Result<()> {
        let t = now();
        s.record.history.push((phase.name().to_owned(), t));
        s.record.phase = phase;
        s.record.updated_at = t;
        s.record.last_error = None;
        self.store.save(s).await?;
        self.progress.send_replace(JobProgress {
            job: s.record.id.clone(),
            phase: s.record.phase.name().into(),
            ..Default::default()
        });
        info!(phase = s.record.phase.name(), "job phase");
        Ok(())
    }

    fn paused(&self, id: &str) -> Error {
        Error::new(ErrorKind::Cancelled, "migration")
            .target(id.to_owned())
            .message(format!(
                "job `{id}` paused; nothing is lost: resuming the job continues it, aborting it rolls it back"
            ))
    }

    async fn drive(&self, id: &str, lost: &CancellationToken) -> Result<JobRecord> {
        let mut s = self.store.load(id).await?;
        loop {
            if lost.is_cancelled() && !self.pause.is_cancelled() {
                return Err(self.lease_lost(id));
            }
            if self.pause.is_cancelled()
                && !matches!(s.record.phase, Phase::Aborting { .. })
                && !s.record.phase.is_final()
            {
                return Err(self.paused(id));
            }
            self.progress.send_replace(JobProgress {
                job: id.to_owned(),
                phase: s.record.phase.name().into(),
                ..Default::default()
            });
            let phase = s.record.phase.clone();
            if phase.is_final() {
                return Ok(s.record);
            }
            let span = info_span!("phase", phase = phase.name());
            async {
                match phase {
                    Phase::Done | Phase::Aborted { .. } => Ok(()),
                    Phase::Created => self.step_mark(&mut s).await,
                    Phase::Marked if s.record.is_qemu() => {
                        self.enter(&mut s, Phase::Mirroring { job: qemu::job_id(id) }).await?;
                        Ok(())
                    }
                    Phase::Mirroring { job } => self.step_mirror(&mut s, job).await,
                    Phase::Switched { snapshot } if s.record.is_qemu() => self.step_pivot(&mut s, snapshot).await,
                    Phase::Marked => {
                        let partial = format!("{}{PARTIAL_SUFFIX}", s.record.destination.image.image);
                        let copying = Phase::Copying {
                            snapshot: snapshot_name(id),
                            partial,
                            watermark: 0,
                            done_bytes: 0,
                            total_bytes: 0,
                        };
                        self.enter(&mut s, copying).await?;
                        fault::point("after-copying-recorded");
                        Ok(())
                    }
                    Phase::Copying { .. } => self.step_copy(&mut s, lost).await,
                    Phase::Copied { snapshot } if s.record.live.is_some() => {
                        self.enter(
                            &mut s,
                            Phase::Replaying {
                                base: snapshot,
                                round: 1,
                            },
                        )
                        .await
                    }
                    Phase::Copied { snapshot } => self.step_switch(&mut s, snapshot).await,
                    Phase::Replaying { base, round } => self.step_round(&mut s, base, round, lost).await,
                    Phase::CuttingOver { base, round } => self.step_cutover(&mut s, base, round, lost).await,
                    Phase::Switched { snapshot } if s.record.live.is_some() => {
                        self.step_repoint(&mut s, snapshot).await
                    }
                    Phase::Switched { snapshot } | Phase::Repointed { snapshot } => {
                        self.step_cleanup(&mut s, snapshot).await
                    }
                    Phase::Aborting {
                        reason,
                        snapshot,
                        images,
                    } => self.step_abort(&mut s, reason, snapshot, images).await,
                }
            }
            .instrument(span)
            .await?;
        }
    }

    fn marked_volume(&self, record: &JobRecord) -> Volume {
        Volume {
            status: marked_status(record.original_volume.status),
            migration: Some(record.id.clone()),
            ..record.original_volume.clone()
        }
    }

    async fn step_mark(&self, s: &mut Stored) -> Result<()> {
        let r = &s.record;
        let marked = self.marked_volume(r);
        let current = self.catalog.volume(&r.volume_id).await?;
        if current != marked {
            let cas = Cas {
                purpose: CasPurpose::Mark,
                expect_volumes: vec![r.original_volume.clone()],
                expect_attachments: vec![(r.volume_id.clone(), r.original_attachments.clone())],
                put_volumes: vec![marked],
                ..Default::default()
            };
            if let Err(e) = self.catalog.compare_and_swap(cas).await {
                // Nothing was done yet: the job ends here, recorded as aborted.
                let (kind, why) = match &current.migration {
                    Some(other) => (
                        ErrorKind::AlreadyMigrating,
                        format!("volume `{}` is held by migration `{other}`", r.volume_id),
                    ),
                    None => (
                        e.kind(),
                        format!("volume `{}` changed since the precheck: {}", r.volume_id, e.detail()),
                    ),
                };
                self.enter(s, Phase::Aborted { reason: why.clone() }).await?;
                return Err(Error::new(kind, "mark volume")
                    .target(s.record.volume_id.clone())
                    .message(why));
            }
        }
        fault::point("after-mark");
        self.enter(s, Phase::Marked).await?;
        fault::point("after-marked-recorded");
        Ok(())
    }

    async fn ioctxs(&self, r: &JobRecord) -> Result<(IoCtx, IoCtx)> {
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

    fn lease_lost(&self, id: &str) -> Error {
        Error::new(ErrorKind::Busy, "migration")
            .target(id.to_owned())
            .message("lost the job lease; another process may be driving it")
    }

    async fn step_copy(&self, s: &mut Stored, lost: &CancellationToken) -> Result<()> {
        let Phase::Copying {
            snapshot,
            partial,
            mut watermark,
            ..
        } = s.record.phase.clone()
        else {
            unreachable!()
        };
        let id = s.record.id.clone();
        let (src_io, dst_io) = self.ioctxs(&s.record).await?;
        let final_name = s.record.destination.image.image.clone();
        let src_name = s.record.source.image.image.clone();

        dst_io.mend_cut_short_rename(&partial, &final_name).await?;
        // A crash after the rename but before recording it.
        if !dst_io.image_exists(&partial).await? && made_by_job(&dst_io, &final_name, &id).await? {
            fault::point("after-rename");
            self.enter(s, Phase::Copied { snapshot }).await?;
            fault::point("after-copied-recorded");
            return Ok(());
        }

        let src_rw = self.open_source_as_driver(s, &src_io).await?;
        if !snapshot_exists(&src_rw, &snapshot).await? {
            if dst_io.image_exists(&partial).await? {
                // The partial cannot have come from a snapshot that does not exist.
                warn!(image = %partial, "partial destination without its snapshot; starting the copy over");
                retry_busy("remove partial", || dst_io.remove_image(&partial)).await?;
            }
            watermark = 0;
            fault::arm("inside-snapshot-create");
            src_rw.snap_create(&snapshot).await?;
        }
        let metadata = src_rw.metadata_list().await?;
        src_rw.close().await;
        fault::point("after-snapshot");

        let src_snap = src_io.open_image_read_only(&src_name, Some(&snapshot)).await?;
        let info = src_snap.info().await?;
        if !dst_io.image_exists(&partial).await? {
            let p = create_partial(&dst_io, &partial, &info, &src_io, &s.record.source.image, &snapshot).await?;
            p.metadata_set(JOB_META_KEY, &id).await?;
            p.close().await;
            watermark = 0;
            fault::point("after-partial-created");
        }
        let dst = retry_busy("open partial", || dst_io.open_image(&partial)).await?;
        if let Err(e) = fence_out_earlier_drivers(&dst).await {
            dst.close().await;
            return Err(e);
        }

        // Copy, persisting the watermark as it advances.
        let (tx, mut rx) = watch::channel(Progress::default());
        let copier = Copier::new(self.options.copy.clone())
            .progress(tx)
            .cancel_on(lost.child_token());
        let (src_c, dst_c) = (src_snap.clone(), dst.clone());
        let mut transfer = Box::pin(async move { copier.transfer(&src_c, &dst_c, watermark).await });
        let mut last_save = Instant::now();
        let mut first = true;
        let outcome = loop {
            // Progress first: a value published just before the transfer
            // ends is still recorded (and reaches the test kill point).
            tokio::select! {
                biased;
                changed = rx.changed() => {
                    if changed.is_err() { continue; }
                    let p = rx.borrow_and_update().clone();
                    self.progress.send_replace(JobProgress { job: id.clone(), phase: "copying".into(), copy: Some(p.clone()), round: None });
                    if last_save.elapsed() >= self.options.save_every || first {
                        if let Phase::Copying { watermark, done_bytes, total_bytes, .. } = &mut s.record.phase {
                            *watermark = p.watermark;
                            *done_bytes = p.done_bytes;
                            *total_bytes = p.total_bytes;
                        }
                        s.record.updated_at = now();
                        self.store.save(s).await?;
                        last_save = Instant::now();
                        if first && p.done_bytes > p.resumed_bytes {
                            first = false;
                            fault::point("after-first-progress");
                        }
                    }
                }
                r = &mut transfer => break r,
            }
        };
        // The transfer holds image handles; they must go before closing.
        drop(transfer);
        src_snap.close().await;
        let progress = match outcome {
            Ok(p) => p,
            Err(e) => {
                dst.close().await;
                if e.kind() == ErrorKind::Cancelled {
                    return Err(if self.pause.is_cancelled() {
                        self.paused(&id)
                    } else {
                        self.lease_lost(&id)
                    });
                }
                return Err(e);
            }
        };
        finish_partial(&dst, &metadata).await?;
        dst.close().await;
        if let Phase::Copying {
            watermark,
            done_bytes,
            total_bytes,
            ..
        } = &mut s.record.phase
        {
            *watermark = progress.watermark;
            *done_bytes = progress.done_bytes;
            *total_bytes = progress.total_bytes;
        }
        self.store.save(s).await?;
        // A transfer can publish its last progress and finish in one poll,
        // before the loop above sees that value: the first persisted
        // progress with data moved is then this save.
        if first && progress.done_bytes > progress.resumed_bytes {
            fault::point("after-first-progress");
        }
        fault::point("after-copy-complete");
        retry_busy("rename the destination", || dst_io.rename_image(&partial, &final_name)).await?;
        fault::point("after-rename");
        self.enter(s, Phase::Copied { snapshot }).await?;
        fault::point("after-copied-recorded");
        Ok(())
    }

    async fn step_switch(&self, s: &mut Stored, snapshot: String) -> Result<()> {
        if !self.commit_switch(s).await? {
            return Ok(());
        }
        fault::point("after-switch");
        self.enter(s, Phase::Switched { snapshot }).await?;
        fault::point("after-switched-recorded");
        Ok(())
    }

    /// The commit point: one compare-and-swap makes the catalog name the
    /// destination (for a live job, the instance's attachment must also be
    /// as it was). `Ok(false)` if the job rolls back instead: when the
    /// catalog refused, or (live) on any failure, since the rollback is what
    /// resumes a held instance. Other failures of a detached job leave it
    /// resumable.
    async fn commit_switch(&self, s: &mut Stored) -> Result<bool> {
        let r = &s.record;
        let current = self.catalog.volume(&r.volume_id).await?;
        if current.backing == r.destination {
            return Ok(true);
        }
        let marked = self.marked_volume(r);
        let switched = Volume {
            backing: r.destination.clone(),
            size: r.original_volume.size,
            status: r.original_volume.status,
            ..marked.clone()
        };
        let live = r.live.is_some();
        let cas = Cas {
            purpose: CasPurpose::Switch,
            expect_volumes: vec![marked],
            expect_attachments: if live {
                vec![(r.volume_id.clone(), r.original_attachments.clone())]
            } else {
                Vec::new()
            },
            put_volumes: vec![switched],
            ..Default::default()
        };
        match self.catalog.compare_and_swap(cas).await {
            Ok(()) => {
                info!(volume = %r.volume_id, to = %r.destination, "switched");
                Ok(true)
            }
            Err(e) if live || e.kind() == ErrorKind::Conflict => {
                let reason = format!(
                    "the catalog refused the switch of volume `{}`: {}",
                    r.volume_id,
                    e.detail()
                );
                warn!(%reason, "rolling back");
                self.begin_rollback(s, reason).await?;
                Ok(false)
            }
            Err(e) => {
                let why = format!("the switch of volume `{}` failed: {}", r.volume_id, e.detail());
                Err(e.message(why))
            }
        }
    }

    /// After the instance moved: its attachment's connection names the destination.
    async fn connect_attachment_to_destination(&self, s: &Stored) -> Result<()> {
        let destination = &s.record.destination;
        let current = self.catalog.attachments(&s.record.volume_id).await?;
        if current.iter().all(|a| a.connection == *destination) {
            return Ok(());
        }
        let moved = current
            .iter()
            .map(|a| crate::catalog::Attachment {
                connection: destination.clone(),
                ..a.clone()
            })
            .collect();
        self.catalog
            .compare_and_swap(Cas {
                purpose: CasPurpose::Connect,
                expect_attachments: vec![(s.record.volume_id.clone(), current)],
                put_attachments: moved,
                ..Default::default()
            })
            .await
    }

    /// Opens the source read-write for this job's driver. An earlier driver
    /// of the job that still watches it died (or lost the lease and is
    /// hung): it is blocklisted, and its lock broken, so that neither its
    /// watch nor its lock stalls this driver's snapshot work or the retire
    /// until the OSD's watch timeout. This driver's own address is recorded
    /// first, for the next one.
    async fn open_source_as_driver(&self, s: &mut Stored, src_io: &IoCtx) -> Result<Image> {
        let name = s.record.source.image.image.clone();
        let img = retry_busy("open the source", || src_io.open_image(&name)).await?;
        if let Err(e) = self.fence_out_earlier_source_drivers(s, &img).await {
            img.close().await;
            return Err(e);
        }
        Ok(img)
    }

    pub(super) async fn fence_out_earlier_source_drivers(&self, s: &mut Stored, img: &Image) -> Result<()> {
        let me = img.ioctx().cluster().instance_id() as i64;
        let watchers = img.watchers().await?;
        let mine: Vec<String> = watchers.iter().filter(|w| w.id == me).map(|w| w.addr.clone()).collect();
        let earlier: Vec<String> = watchers
            .into_iter()
            .filter(|w| w.id != me && s.record.source_drivers.contains(&w.addr))
            .map(|w| w.addr)
            .collect();
        if !earlier.is_empty() {
            let owners = img.lock_owners().await?;
            for addr in earlier {
                warn!(image = %img.spec(), %addr, "an earlier driver of this job still has the source open; blocklisting it");
                if owners.contains(&addr) {
                    crate::mirror::fence::break_lock(img, &addr).await?;
                } else {
                    img.ioctx().cluster().blocklist_add(&addr, 3600).await?;
                }
            }
        }
        let new: Vec<String> = mine
            .into_iter()
            .filter(|a| !s.record.source_drivers.contains(a))
            .collect();
        if !new.is_empty() {
            s.record.source_drivers.extend(new);
            let excess = s.record.source_drivers.len().saturating_sub(MAX_SOURCE_DRIVERS);
            s.record.source_drivers.drain(..excess);
            self.store.save(s).await?;
        }
        Ok(())
    }

    async fn step_cleanup(&self, s: &mut Stored, _snapshot: String) -> Result<()> {
        let r = s.record.clone();
        let (src_io, dst_io) = self.ioctxs(&r).await?;
        let src_name = &r.source.image.image;
        // librbd moves an image to the trash in steps (the trash entry, then
        // the id object and the directory entry go): a crash between them
        // leaves a listed name that no longer opens. Only the move can have
        // begun then (the snapshots went before it); librbd finishes it.
        let listed = src_io.image_exists(src_name).await?;
        let cut_short_trash_move = match (listed, r.policy, &r.source_image_id) {
            (true, RetirePolicy::Trash { delay_secs }, Some(id)) if src_io.trash_contains(id).await? => {
                Some(delay_secs)
            }
            _ => None,
        };
        if let Some(delay_secs) = cut_short_trash_move {
            warn!(image = %src_name, "finishing a move of the source to the trash that was cut short");
            self.finish_sweep().await;
            self.release_fence().await;
            retry_busy("move the source to the trash", || {
                src_io.trash_move(src_name, delay_secs)
            })
            .await?;
        } else if listed {
            let img = self.open_source_as_driver(s, &src_io).await?;
            if r.live.is_some() {
                self.evict_stale_writers(s, &img).await?;
            }
            self.finish_sweep().await;
            sweep_snapshots(&img, &r.id, None).await?;
            img.close().await;
            self.release_fence().await;
            fault::point("after-snapshot-removed");
            if let RetirePolicy::Trash { delay_secs } = r.policy {
                retry_busy("move the source to the trash", || {
                    src_io.trash_move(src_name, delay_secs)
                })
                .await?;
            }
        }
        fault::point("after-source-retired");
        if made_by_job(&dst_io, &r.destination.image.image, &r.id).await? {
            let img = dst_io.open_image(&r.destination.image.image).await?;
            img.metadata_remove(JOB_META_KEY).await?;
            img.close().await;
        }
        let current = self.catalog.volume(&r.volume_id).await?;
        if current.migration.as_deref() == Some(r.id.as_str()) {
            let released = Volume {
                migration: None,
                ..current.clone()
            };
            self.catalog
                .compare_and_swap(Cas {
                    purpose: CasPurpose::Release,
                    expect_volumes: vec![current],
                    put_volumes: vec![released],
                    ..Default::default()
                })
                .await?;
        }
        fault::point("after-release");
        self.enter(s, Phase::Done).await?;
        info!(volume = %r.volume_id, "migration done");
        Ok(())
    }

    async fn step_abort(
        &self,
        s: &mut Stored,
        reason: String,
        snapshot: Option<String>,
        images: Vec<String>,
    ) -> Result<()> {
        let r = s.record.clone();
        // A held instance runs again, on the source (the catalog still
        // names it), before anything else; the fence goes first so that its
        // writes do not fail.
        if r.is_qemu() {
            self.cancel_mirror(&r).await?;
        } else if let Some(live) = &r.live {
            self.close_live_handles().await;
            self.release_fence().await;
            // Only a cutover that got as far as recording the hold may have
            // left the instance held; otherwise it is not asked (it may be
            // gone, which must not block the abort).
            if live.cutover.as_ref().is_some_and(|c| c.held_at_ms != 0) {
                let hook = self.hypervisors.for_attachment(&live.attachment)?;
                hook.resume(&live.attachment).await.map_err(|e| {
                    let why = format!(
                        "the instance may still be held and could not be resumed ({e}); the abort stops here so that it is not forgotten: make the instance reachable and run the abort again"
                    );
                    e.message(why)
                })?;
            }
            fault::point("abort-after-instance-resumed");
        }
        let (src_io, dst_io) = self.ioctxs(&r).await?;
        for image in &images {
            if made_by_job(&dst_io, image, &r.id).await? {
                retry_busy("remove a destination image", || dst_io.remove_image(image)).await?;
            }
        }
        fault::point("abort-after-images");
        if snapshot.is_some() && src_io.image_exists(&r.source.image.image).await? {
            let img = self.open_source_as_driver(s, &src_io).await?;
            self.finish_sweep().await;
            sweep_snapshots(&img, &r.id, None).await?;
            img.close().await;
        }
        fault::point("abort-after-snapshot");
        let current = self.catalog.volume(&r.volume_id).await?;
        if current.migration.as_deref() == Some(r.id.as_str()) {
            self.catalog
                .compare_and_swap(Cas {
                    purpose: CasPurpose::Restore,
                    expect_volumes: vec![current],
                    put_volumes: vec![r.original_volume.clone()],
                    ..Default::default()
                })
                .await?;
        }
        fault::point("abort-after-catalog");
        self.enter(s, Phase::Aborted { reason }).await?;
        Ok(())
    }
}

/// Earlier drivers' source addresses a record keeps (the latest).
const MAX_SOURCE_DRIVERS: usize = 16;

/// The source snapshot a job reads from (the live rounds' snapshots add `.N`).
pub fn snapshot_name(job: &str) -> String {
    format!("livemig-job-{job}")
}

/// Removes the job's snapshots (the bulk copy's and every round's) from the
/// source, except `keep`.
async fn sweep_snapshots(img: &Image, job: &str, keep: Option<&str>) -> Result<()> {
    for snap in job_snapshots(img, job, keep).await? {
        remove_snapshot(img, &snap).await?;
    }
    Ok(())
}

/// Breaks the exclusive lock of whoever still owns `partial`, blocklisting
/// it. Only a job's driver writes a partial destination, and this process
/// holds the job's lease, so an owner is a driver that died (or lost the
/// lease and may still be running): left alone, librbd would wait for its
/// watch to time out (30 s by default) before the first write; broken, none
/// of its writes can land any more.
async fn fence_out_earlier_drivers(partial: &Image) -> Result<()> {
    if partial.info().await?.features & livemig_ceph_sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64 == 0 {
        return Ok(());
    }
    let owners = partial.lock_owners().await?;
    if owners.is_empty() {
        return Ok(());
    }
    // Never this process's own connection (breaking it would blocklist
    // us): an owner is named by its address, as the watchers list it.
    let me = partial.ioctx().cluster().instance_id() as i64;
    let mine: Vec<String> = partial
        .watchers()
        .await?
        .into_iter()
        .filter(|w| w.id == me)
        .map(|w| w.addr)
        .collect();
    for owner in owners.into_iter().filter(|o| !mine.contains(o)) {
        warn!(image = %partial.spec(), %owner, "an earlier driver still owns the partial destination's lock; breaking it (blocklists that client)");
        crate::mirror::fence::break_lock(partial, &owner).await?;
    }
    Ok(())
}

/// The job's snapshots on `img`, but `keep`; with those a removal that
/// was interrupted left in librbd's trash namespace.
async fn job_snapshots(img: &Image, job: &str, keep: Option<&str>) -> Result<Vec<SnapInfo>> {
    let base = snapshot_name(job);
    let round_prefix = format!("{base}.");
    Ok(img
        .snap_list()
        .await?
        .into_iter()
        .filter(|snap| {
            let name = snap.given_name();
            (name == base || name.starts_with(&round_prefix)) && keep != Some(name)
        })
        .collect())
}

/// Removes a snapshot; one already gone is fine.
async fn remove_snapshot(img: &Image, snap: &SnapInfo) -> Result<()> {
    retry_busy("remove a job snapshot", || img.snap_remove_listed(snap)).await
}
