//! Resync (the way back after a failover): a sync from the volume, now on
//! the replica that took over, to the copy the failover replaced, which
//! starts from the point in time both still hold instead of a copy.
//!
//! The failover kept its point as a snapshot on the new primary, and the
//! retirement of the lost copy kept it there too before moving the copy to
//! the trash. A resync restores that copy from the trash, fences out its
//! writers, rolls it back to the point (inside its cluster: the writes it
//! took after the point are the ones the failover gave up) and names the
//! point as its own base on both sides; its rounds then send only what the
//! volume changed since. Its cutover is the failback.

use tracing::info;

use super::record::{Phase, ResyncOrigin, SyncRecord};
use super::source::snapshot_exists;
use super::store::Stored;
use super::sync::SyncOptions;
use super::Migrator;
use crate::error::{Error, ErrorKind, Result};
use crate::precheck::Destination;

impl Migrator {
    /// Writes a resync of `volume_id` (phase `created`): a sync back to the
    /// copy its last failover replaced, from their common point in time.
    /// A failover whose lost copy has not been retired yet is retired
    /// first (its cluster must answer). Drive it with [`Migrator::resume`].
    pub async fn create_resync(&self, volume_id: &str, options: SyncOptions) -> Result<Stored> {
        let refused = |kind, why: String| {
            Err(Error::new(kind, "resync")
                .target(volume_id.to_owned())
                .message(format!("{why}; nothing was changed")))
        };
        let Some(mut failed) = self.store.last_failover(volume_id).await? else {
            return refused(
                ErrorKind::JobNotFound,
                format!("volume `{volume_id}` has not failed over: there is no replaced copy to sync back to (`migrate sync start` keeps a new replica)"),
            );
        };
        if let Phase::FailedOver { .. } = failed.record.phase {
            info!(job = %failed.record.id, "retiring the copy the failover replaced first");
            self.resume(&failed.record.id).await?;
            failed = self.store.load(&failed.record.id).await?;
        }
        let r = &failed.record;
        let point = r
            .sync
            .as_ref()
            .and_then(|y| y.failover.as_ref())
            .map(|f| (f.point.clone(), f.point_ms))
            .filter(|(p, _)| !p.is_empty());
        let (Some((point, point_ms)), Some(old_image_id)) = (point, r.source_image_id.clone()) else {
            return refused(
                ErrorKind::InvalidState,
                format!("the failover of volume `{volume_id}` (job `{}`) kept no point in time (a release before resyncs): start a new sync with `migrate sync start`", r.id),
            );
        };
        let volume = self.catalog.volume(volume_id).await?;
        if volume.backing != r.destination {
            return refused(
                ErrorKind::InvalidState,
                format!(
                    "volume `{volume_id}` has moved since its failover to `{}` (it is on `{}`), so the point in time it shared with the replaced copy is gone: start a new sync with `migrate sync start`",
                    r.destination, volume.backing
                ),
            );
        }
        let primary = self
            .clusters
            .get(&volume.backing.cluster)?
            .ioctx(&volume.backing.image.pool, &volume.backing.image.namespace)
            .await?
            .open_image_read_only(&volume.backing.image.image, None)
            .await?;
        let has_point = snapshot_exists(&primary, &point).await;
        primary.close().await;
        if !has_point? {
            return refused(
                ErrorKind::InvalidState,
                format!("volume `{volume_id}` no longer holds the failover's point in time (snapshot `{point}`): start a new sync with `migrate sync start`"),
            );
        }
        let old = &r.source;
        let old_io = self
            .clusters
            .get(&old.cluster)?
            .ioctx(&old.image.pool, &old.image.namespace)
            .await?;
        if !old_io.trash_contains(&old_image_id).await? {
            return refused(
                ErrorKind::ImageNotFound,
                format!("the copy the failover replaced (`{old}`, image id {old_image_id}) is no longer in its pool's trash: start a new sync with `migrate sync start`"),
            );
        }
        let to = Destination {
            cluster: old.cluster.clone(),
            pool: old.image.pool.clone(),
            namespace: old.image.namespace.clone(),
            image: Some(old.image.image.clone()),
            data_pool: None,
            location: Some(r.original_volume.location.clone()),
        };
        let sync = SyncRecord {
            interval_ms: options.interval.as_millis().max(1) as u64,
            resync: Some(ResyncOrigin {
                failed_over_job: r.id.clone(),
                point,
                point_ms,
                old_image_id,
            }),
            ..Default::default()
        };
        self.create_job(volume_id, &to, Some(sync)).await
    }
}
