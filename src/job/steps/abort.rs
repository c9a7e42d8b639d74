//! Aborting -> Aborted: before the switch, the pre-migration state comes
//! back. A held instance runs again first (on the source, which the
//! catalog still names); then the job's destination images and snapshots
//! go and the catalog's volume is restored.

use crate::catalog::{Cas, CasPurpose};
use crate::error::Result;
use crate::job::record::Phase;
use crate::job::run::Run;
use crate::job::source::{made_by_job, retry_busy, sweep_snapshots};
use crate::job::store::Stored;
use crate::job::{fault, Migrator};

impl Migrator {
    pub(in crate::job) async fn step_abort(
        &self,
        s: &mut Stored,
        run: &mut Run,
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
            run.close_handles().await;
            run.release_fence().await;
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
                if r.sync.is_some() {
                    // A sync's replica keeps its point in time as a snapshot.
                    let img = retry_busy("open the replica", || dst_io.open_image(image)).await?;
                    let swept = sweep_snapshots(&img, &r.id, None).await;
                    img.close().await;
                    swept?;
                }
                retry_busy("remove a destination image", || dst_io.remove_image(image)).await?;
            }
        }
        fault::point("abort-after-images");
        if snapshot.is_some() && src_io.image_exists(&r.source.image.image).await? {
            let img = self.open_source_as_driver(s, &src_io).await?;
            run.finish_sweep().await;
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
