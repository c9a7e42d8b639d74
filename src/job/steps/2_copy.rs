//! Marked -> Copying -> Copied (detached and live, native engine): the
//! bulk copy of the source as of the job's snapshot into a partial
//! destination, renamed to the destination's name once complete.
//!
//! The watermark (everything below it is copied) is persisted as it
//! advances, so a copy that died resumes from it; a partial whose snapshot
//! is gone cannot be trusted and starts over; a rename cut short is mended;
//! an earlier driver's lock on the partial is broken rather than waited out.

use std::time::Instant;

use tracing::warn;

use crate::ceph::{CreateOptions, Image};
use crate::error::Result;
use crate::job::driver::now;
use crate::job::record::{Phase, PhaseKind};
use crate::job::run::Run;
use crate::job::source::{made_by_job, retry_busy, snapshot_exists};
use crate::job::store::Stored;
use crate::job::{fault, snapshot_name, Migrator, JOB_META_KEY};
use crate::mirror::fence::fence_out_clients;
use crate::mirror::partial::{create_partial, finish_partial, partial_name};
use crate::mirror::Progress;

impl Migrator {
    /// Marked -> Copying: the copy's snapshot and partial are named.
    pub(in crate::job) async fn step_begin_copy(&self, s: &mut Stored) -> Result<()> {
        let copying = Phase::Copying {
            snapshot: snapshot_name(&s.record.id),
            partial: partial_name(&s.record.destination.image.image),
            watermark: 0,
            done_bytes: 0,
            total_bytes: 0,
        };
        self.enter(s, copying).await?;
        fault::point("after-copying-recorded");
        Ok(())
    }

    /// Copying -> Copied.
    pub(in crate::job) async fn step_copy(&self, s: &mut Stored, run: &mut Run) -> Result<()> {
        let Phase::Copying {
            snapshot,
            partial,
            mut watermark,
            ..
        } = s.record.phase.clone()
        else {
            unreachable!("the copy step runs in the copying phase")
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
            let layout = CreateOptions::like(&info).in_data_pool(s.record.destination_data_pool.as_deref());
            let p = create_partial(
                &dst_io,
                &partial,
                info.size,
                &layout,
                &src_io,
                &s.record.source.image,
                &snapshot,
            )
            .await?;
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
        let (src_c, dst_c) = (src_snap.clone(), dst.clone());
        let mut copy = self.track(run, &id, PhaseKind::Copying, None, move |copier| async move {
            copier.transfer(&src_c, &dst_c, watermark).await
        });
        let mut last_save = Instant::now();
        let mut first = true;
        let mut saved = Ok(());
        while let Some(p) = copy.next().await {
            if last_save.elapsed() >= self.options.save_every || first {
                record_progress(s, &p);
                s.record.updated_at = now();
                saved = self.store.save(s).await;
                if saved.is_err() {
                    break;
                }
                last_save = Instant::now();
                if first && p.done_bytes > p.resumed_bytes {
                    first = false;
                    fault::point("after-first-progress");
                }
            }
        }
        let outcome = match saved {
            Ok(()) => copy.finish().await,
            Err(e) => {
                drop(copy);
                Err(e)
            }
        };
        src_snap.close().await;
        let progress = match outcome {
            Ok(p) => p,
            Err(e) => {
                dst.close().await;
                return Err(e);
            }
        };
        finish_partial(&dst, &metadata).await?;
        dst.close().await;
        record_progress(s, &progress);
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
}

/// Puts the copy's progress into the record (not saved).
fn record_progress(s: &mut Stored, p: &Progress) {
    if let Phase::Copying {
        watermark,
        done_bytes,
        total_bytes,
        ..
    } = &mut s.record.phase
    {
        *watermark = p.watermark;
        *done_bytes = p.done_bytes;
        *total_bytes = p.total_bytes;
    }
}

/// Breaks the exclusive lock of whoever still owns `partial`, blocklisting
/// it. Only a job's driver writes a partial destination, and this process
/// holds the job's lease, so an owner is a driver that died (or lost the
/// lease and may still be running): left alone, librbd would wait for its
/// watch to time out (30 s by default) before the first write; broken, none
/// of its writes can land any more.
async fn fence_out_earlier_drivers(partial: &Image) -> Result<()> {
    fence_out_clients(
        partial,
        "an earlier driver still owns the partial destination's lock",
        |c| c.owns_lock,
    )
    .await
    .map(|_| ())
}
