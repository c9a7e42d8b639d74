//! Marked -> Mirroring -> Switched (QEMU engine): livemig creates the
//! destination (layout and image-meta of the source) and QEMU mirrors the
//! source into it (`blockdev-mirror`), switching to write-blocking when
//! the copy does not converge; once source and destination are in sync,
//! the switch commits. A failure of the mirror, or of QEMU, before that
//! rolls the job back.

use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use crate::ceph::CreateOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::job::options::JobProgress;
use crate::job::qemu::{job_id, qmp_socket};
use crate::job::record::{JobRecord, Phase, PhaseKind, QemuMirror};
use crate::job::source::made_by_job;
use crate::job::store::Stored;
use crate::job::{fault, Migrator, JOB_META_KEY};
use crate::mirror::Progress;
use crate::qemu::mirror::{
    find_rbd_node, job_state, make_write_blocking, start_mirror, wait_ready_guarded, MirrorOptions, RbdTarget,
    Readiness,
};
use crate::qemu::Qmp;

/// How close to full the destination pool may get while a QEMU mirror
/// copies into it (see `destination_not_filling_up`).
const FULL_MARGIN: u64 = 64 << 20;

impl Migrator {
    /// Marked -> Mirroring: QEMU's mirror job is named after the job.
    pub(in crate::job) async fn step_begin_mirror(&self, s: &mut Stored) -> Result<()> {
        let job = job_id(&s.record.id);
        self.enter(s, Phase::Mirroring { job }).await
    }

    /// Starts (or reattaches to) QEMU's mirror, waits until it is in sync
    /// and write-blocking, then switches the catalog. An error of the mirror
    /// or of QEMU before that rolls the job back.
    pub(in crate::job) async fn step_mirror(&self, s: &mut Stored, job: String) -> Result<()> {
        match self.mirror_until_synced(s, &job).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Cancelled || e.kind() == ErrorKind::Busy => return Err(e),
            Err(e) => {
                let reason = format!("the QEMU mirror failed: {e}; the guest stays on the source");
                warn!(%reason, "rolling back");
                self.begin_rollback(s, reason).await?;
                return Ok(());
            }
        }
        fault::point("qemu-after-synced");
        if !self.commit_switch(s).await? {
            return Ok(());
        }
        fault::point("qemu-after-switch");
        self.enter(s, Phase::Switched { snapshot: None }).await?;
        Ok(())
    }

    async fn mirror_until_synced(&self, s: &mut Stored, job: &str) -> Result<()> {
        let socket = qmp_socket(&s.record)?;
        let qmp = Qmp::connect(&socket).await?;
        if job_state(&qmp, job).await?.is_none() {
            self.start_qemu_mirror(s, &qmp, job).await?;
            fault::point("qemu-after-mirror-started");
        } else {
            info!(job, "reattached to QEMU's running mirror");
        }
        let id = s.record.id.clone();
        let show = |st: &crate::qemu::mirror::JobState| {
            self.progress.send_replace(JobProgress {
                job: id.clone(),
                phase: PhaseKind::Mirroring,
                copy: Some(Progress {
                    total_bytes: st.total,
                    done_bytes: st.current,
                    written_bytes: st.current,
                    ..Default::default()
                }),
                round: None,
            });
        };
        let forced = self.live_mut(s).qemu.as_ref().is_some_and(|m| m.write_blocking_forced);
        let stall = (!forced).then(|| Duration::from_millis(self.options.qemu_stall_ms));
        let record = s.record.clone();
        let mut not_filling_up = |remaining: u64| {
            let record = &record;
            async move { self.destination_not_filling_up(record, remaining).await }
        };
        if let Readiness::Stalled { remaining } =
            wait_ready_guarded(&qmp, job, stall, show, &mut not_filling_up).await?
        {
            // Write-blocking makes guest writes wait for the destination:
            // only with room there (a full pool blocks writes, which would
            // then freeze the guest).
            self.ensure_destination_headroom(&s.record, remaining).await?;
            make_write_blocking(&qmp, job).await?;
            if let Some(m) = self.live_mut(s).qemu.as_mut() {
                m.write_blocking_forced = true;
            }
            self.store.save(s).await?;
            wait_ready_guarded(&qmp, job, None, show, &mut not_filling_up).await?;
        }
        fault::point("qemu-after-ready");
        // Every guest write from now on lands on both images before it is
        // acknowledged; wait until what was dirty before is copied too.
        self.ensure_destination_headroom(&s.record, 0).await?;
        make_write_blocking(&qmp, job).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let jobs = qmp.execute("query-block-jobs", json!({})).await?;
            let this = jobs
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j.get("device").and_then(|d| d.as_str()) == Some(job));
            match this {
                Some(j) if j.get("actively-synced").and_then(|v| v.as_bool()) == Some(true) => break,
                Some(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Some(_) => {
                    return Err(Error::new(ErrorKind::Hypervisor, "qemu mirror").message(format!(
                        "mirror job `{job}` did not become actively synced within 120 s"
                    )))
                }
                None => {
                    return Err(Error::new(ErrorKind::Hypervisor, "qemu mirror")
                        .message(format!("mirror job `{job}` disappeared before the switch")))
                }
            }
        }
        Ok(())
    }

    async fn start_qemu_mirror(&self, s: &mut Stored, qmp: &Qmp, job: &str) -> Result<()> {
        let r = s.record.clone();
        let (src_io, dst_io) = self.ioctxs(&r).await?;
        let dst_name = &r.destination.image.image;
        if !dst_io.image_exists(dst_name).await? {
            let src = src_io.open_image_read_only(&r.source.image.image, None).await?;
            let info = src.info().await?;
            let metadata = src.metadata_list().await?;
            src.close().await;
            dst_io
                .create_image(
                    dst_name,
                    info.size,
                    &CreateOptions::like(&info).in_data_pool(r.destination_data_pool.as_deref()),
                )
                .await?;
            let dst = dst_io.open_image(dst_name).await?;
            dst.metadata_set(JOB_META_KEY, &r.id).await?;
            for (k, v) in &metadata {
                dst.metadata_set(k, v).await?;
            }
            dst.close().await;
        } else if !made_by_job(&dst_io, dst_name, &r.id).await? {
            return Err(Error::new(ErrorKind::DestinationExists, "qemu mirror")
                .target(r.destination.to_string())
                .message(format!("`{}` exists and was not made by job `{}`", r.destination, r.id)));
        }
        let source = find_rbd_node(qmp, &r.source.image).await?;
        let cluster = self.clusters.get(&r.destination.cluster)?;
        let conf = cluster.conf_path().map(|p| p.display().to_string()).ok_or_else(|| {
            Error::new(ErrorKind::Config, "qemu mirror")
                .message("the destination cluster's ceph.conf path is unknown; QEMU needs it to open the destination")
        })?;
        let target = RbdTarget {
            image: r.destination.image.clone(),
            conf: Some(conf),
            user: cluster.client_id().map(str::to_owned),
        };
        // A destination node left by an earlier attempt goes first.
        let _ = qmp.execute("blockdev-del", json!({"node-name": job})).await;
        let options = MirrorOptions {
            speed: self.options.copy.bandwidth_limit,
        };
        self.live_mut(s).qemu = Some(QemuMirror {
            job: job.to_owned(),
            source_node: source.node_name.clone(),
            target_node: job.to_owned(),
            write_blocking_forced: false,
        });
        self.store.save(s).await?;
        start_mirror(qmp, &source, &target, job, job, &options).await
    }

    /// Bytes the destination pool can still take (capacity or quota).
    async fn destination_room(&self, r: &JobRecord) -> Result<u64> {
        let cluster = self.clusters.get(&r.destination.cluster)?;
        Ok(cluster.pool_usage(&r.destination.image.pool).await?.room())
    }

    /// While the mirror copies: fails with [`ErrorKind::NoSpace`] once the
    /// destination pool is nearly full (less than [`FULL_MARGIN`] left,
    /// and less than the mirror still has to copy). A full pool makes
    /// librados hold the mirror's writes indefinitely, and then the mirror
    /// can no longer be cancelled: stopping early keeps the abort clean.
    /// Failing to read the pool's usage is not a reason to stop.
    async fn destination_not_filling_up(&self, r: &JobRecord, remaining: u64) -> Result<()> {
        let pool = &r.destination.image.pool;
        match self.destination_room(r).await {
            Ok(room) if room < remaining.min(FULL_MARGIN) => {
                Err(Error::new(ErrorKind::NoSpace, "qemu mirror").target(pool.clone()).message(format!(
                    "destination pool `{pool}` is nearly full ({room} bytes left, quota or capacity) and the mirror still has up to {remaining} bytes to copy: stopping the mirror before the pool blocks its writes"
                )))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(error = %e, "cannot read the destination pool's usage; the mirror goes on");
                Ok(())
            }
        }
    }

    /// Fails with [`ErrorKind::NoSpace`] unless the destination pool can
    /// take `needed` more bytes (and is not at its quota).
    async fn ensure_destination_headroom(&self, r: &JobRecord, needed: u64) -> Result<()> {
        let pool = &r.destination.image.pool;
        let room = self.destination_room(r).await?;
        if room <= needed.max(1 << 20) {
            return Err(Error::new(ErrorKind::NoSpace, "qemu mirror").target(pool.clone()).message(format!(
                "destination pool `{pool}` has {room} bytes of room left (quota or capacity) and the mirror needs {needed} more: refusing to make the guest's writes wait for it"
            )));
        }
        Ok(())
    }
}
