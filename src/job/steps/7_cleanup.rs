//! Switched (detached) | Repointed -> Done: stale writers of the source are
//! evicted, the job's snapshots removed, the source retired per the policy
//! (a move to the trash cut short is finished), the destination's job
//! marker removed and the volume released in the catalog.

use tracing::{info, warn};

use crate::catalog::{Cas, CasPurpose, Volume};
use crate::ceph::Image;
use crate::error::Result;
use crate::job::record::{JobRecord, Phase, RetirePolicy};
use crate::job::run::Run;
use crate::job::source::{made_by_job, retry_busy, sweep_snapshots};
use crate::job::store::Stored;
use crate::job::{fault, Migrator, JOB_META_KEY};
use crate::mirror::fence::fence_out_clients;

impl Migrator {
    pub(in crate::job) async fn step_cleanup(&self, s: &mut Stored, run: &mut Run) -> Result<()> {
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
            run.finish_sweep().await;
            run.release_fence().await;
            retry_busy("move the source to the trash", || {
                src_io.trash_move(src_name, delay_secs)
            })
            .await?;
        } else if listed {
            let img = self.open_source_as_driver(s, &src_io).await?;
            if r.live.is_some() {
                self.evict_stale_writers(s, run, &img).await?;
            }
            run.finish_sweep().await;
            // The fence has done its work (the instance runs on the
            // destination, stale writers are out): this handle removes the
            // snapshots as the lock's owner, instead of asking another
            // handle of this process to, which a resume after a broken
            // lock was seen to wait on forever.
            run.release_fence().await;
            sweep_snapshots(&img, &r.id, None).await?;
            img.close().await;
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
            // A sync's replica kept its last point in time as a snapshot.
            sweep_snapshots(&img, &r.id, None).await?;
            img.metadata_remove(JOB_META_KEY).await?;
            img.close().await;
        }
        self.release_volume(&r).await?;
        fault::point("after-release");
        self.enter(s, Phase::Done).await?;
        info!(volume = %r.volume_id, "migration done");
        Ok(())
    }

    /// The catalog lets go of the volume (if this job still holds it).
    pub(in crate::job) async fn release_volume(&self, r: &JobRecord) -> Result<()> {
        let current = self.catalog.volume(&r.volume_id).await?;
        if current.migration.as_deref() != Some(r.id.as_str()) {
            return Ok(());
        }
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
            .await
    }

    /// Before the source is retired: clients other than livemig that still
    /// have it open after the instance moved would write to an image the
    /// catalog no longer names (a writer that ignored the hold): they are
    /// blocklisted, so none of their writes can land.
    pub(in crate::job) async fn evict_stale_writers(&self, s: &mut Stored, run: &Run, src: &Image) -> Result<()> {
        let fenced_by_me = run.fence.as_ref().map(|f| f.ioctx().cluster().instance_id() as i64);
        // A client that has the destination open too is the moved instance
        // (which may not have let go of the source yet): never evict it.
        let (_, dst_io) = self.ioctxs(&s.record).await?;
        let dst_img = dst_io
            .open_image_read_only(&s.record.destination.image.image, None)
            .await?;
        let on_destination: Vec<String> = dst_img.watchers().await?.into_iter().map(|w| w.addr).collect();
        dst_img.close().await;
        let evicted: Vec<String> = fence_out_clients(src, "a client still has the retired source open", |c| {
            c.watcher_id.is_some_and(|id| Some(id) != fenced_by_me) && !on_destination.contains(&c.addr)
        })
        .await?
        .fenced
        .into_iter()
        .map(|c| format!("client.{} {}", c.watcher_id.unwrap_or_default(), c.addr))
        .collect();
        if !evicted.is_empty() {
            if let Some(c) = self.live_mut(s).cutover.as_mut() {
                c.fence.blocklisted.extend(evicted);
            }
            self.store.save(s).await?;
        }
        Ok(())
    }
}
