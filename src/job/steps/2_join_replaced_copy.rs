//! Marked -> Copied (a resync, in the copy's place): the copy a failover
//! replaced comes back from the trash as the replica, its writers fenced
//! out and its content rolled back, inside its cluster, to the point in
//! time the volume holds too; both sides then name that point as this
//! job's base snapshot, so that the rounds send only what the volume
//! changed since.
//!
//! Each part checks whether it already happened (restored, renamed, rolled
//! back), so a resync killed here converges when run again.

use tracing::{info, warn};

use crate::ceph::Image;
use crate::error::{Error, ErrorKind, Result};
use crate::job::record::Phase;
use crate::job::source::{retry_busy, snapshot_exists, sweep_snapshots};
use crate::job::store::Stored;
use crate::job::{fault, snapshot_name, Migrator, JOB_META_KEY};
use crate::mirror::fence::fence_out_clients;

impl Migrator {
    pub(in crate::job) async fn step_join_replaced_copy(&self, s: &mut Stored) -> Result<()> {
        let origin = s
            .record
            .sync
            .as_ref()
            .and_then(|y| y.resync.clone())
            .expect("a resync's record");
        let id = s.record.id.clone();
        let base = snapshot_name(&id);
        let (src_io, dst_io) = self.ioctxs(&s.record).await?;
        let name = s.record.destination.image.image.clone();
        let lost = |what: String| {
            Error::new(ErrorKind::InvalidState, "resync")
                .target(id.clone())
                .message(format!(
                    "{what}: the resync has no common point in time; stop it (`migrate sync stop`) and start a new sync"
                ))
        };

        if !dst_io.image_exists(&name).await? {
            if !dst_io.trash_contains(&origin.old_image_id).await? {
                return Err(lost(format!(
                    "the replaced copy `{}` is neither in its pool nor in its trash",
                    s.record.destination
                )));
            }
            dst_io.trash_restore(&origin.old_image_id, &name).await?;
            fault::point("resync-after-restore");
        }
        let dst = retry_busy("open the replaced copy", || dst_io.open_image(&name)).await?;
        let joined = async {
            let found = dst.info().await?.id;
            if found != origin.old_image_id {
                return Err(lost(format!(
                    "`{}` is another image (id {found}) than the copy the failover replaced (id {})",
                    s.record.destination, origin.old_image_id
                )));
            }
            // An abort of this job removes it, as a stopped sync's replica.
            dst.metadata_set(JOB_META_KEY, &id).await?;
            fence_out_clients(&dst, "a writer of the copy a failover replaced", |_| true).await?;
            if !name_point(&dst, &origin.point, &base).await? {
                return Err(lost(format!("the replaced copy lost the point `{}`", origin.point)));
            }
            // The volume's point takes this job's name too.
            let src = self.open_source_as_driver(s, &src_io).await?;
            let named = name_point(&src, &origin.point, &base).await;
            src.close().await;
            if !named? {
                return Err(lost(format!(
                    "volume `{}` lost the point `{}`",
                    s.record.volume_id, origin.point
                )));
            }
            fault::point("resync-after-point-named");
            let diverged = dst.changed_bytes(Some(&base), true).await?;
            if diverged > 0 {
                warn!(
                    bytes = diverged,
                    "rolling the replaced copy back to the point (the writes it took after it, the failover gave up)"
                );
                dst.snap_rollback(&base).await?;
            }
            sweep_snapshots(&dst, &origin.failed_over_job, None).await?;
            Ok(diverged)
        }
        .await;
        dst.close().await;
        let diverged = joined?;
        info!(replica = %s.record.destination, base = %base, diverged, "the replaced copy joins at the point in time");
        self.enter(s, Phase::Copied { snapshot: base }).await?;
        fault::point("after-copied-recorded");
        Ok(())
    }
}

/// Gives `img`'s snapshot `point` the name `base` (done before if `base`
/// exists); false if it has neither.
async fn name_point(img: &Image, point: &str, base: &str) -> Result<bool> {
    if snapshot_exists(img, base).await? {
        return Ok(true);
    }
    if !snapshot_exists(img, point).await? {
        return Ok(false);
    }
    img.snap_rename(point, base).await?;
    Ok(true)
}
