//! The source as a job's driver sees it: opened read-write by one driver
//! at a time (earlier drivers fenced out), the job's snapshots on it, and
//! retries while a dead client's watch lingers.

use std::time::{Duration, Instant};

use tracing::info;

use super::store::Stored;
use super::{snapshot_name, Migrator, JOB_META_KEY};
use crate::ceph::{Image, IoCtx, SnapInfo};
use crate::error::{ErrorKind, Result};
use crate::mirror::fence::fence_out_clients;

/// Retries an operation that fails with `Busy` while a dead client's watch
/// or lock lingers (until the cluster times it out).
pub(in crate::job) async fn retry_busy<T, F, Fut>(what: &str, mut f: F) -> Result<T>
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
pub(in crate::job) async fn made_by_job(io: &IoCtx, image: &str, job: &str) -> Result<bool> {
    if !io.image_exists(image).await? {
        return Ok(false);
    }
    let img = io.open_image_read_only(image, None).await?;
    let meta = img.metadata_list().await?;
    img.close().await;
    Ok(meta.iter().any(|(k, v)| k == JOB_META_KEY && v == job))
}

pub(in crate::job) async fn snapshot_exists(img: &Image, snap: &str) -> Result<bool> {
    Ok(img.snap_list().await?.iter().any(|s| s.name == snap))
}

/// The job's snapshots on `img`, but `keep`; with those a removal that
/// was interrupted left in librbd's trash namespace.
pub(in crate::job) async fn job_snapshots(img: &Image, job: &str, keep: Option<&str>) -> Result<Vec<SnapInfo>> {
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

/// Removes the job's snapshots (the bulk copy's and every round's) from the
/// source, except `keep`.
pub(in crate::job) async fn sweep_snapshots(img: &Image, job: &str, keep: Option<&str>) -> Result<()> {
    for snap in job_snapshots(img, job, keep).await? {
        remove_snapshot(img, &snap).await?;
    }
    Ok(())
}

/// Removes a snapshot; one already gone is fine.
pub(in crate::job) async fn remove_snapshot(img: &Image, snap: &SnapInfo) -> Result<()> {
    retry_busy("remove a job snapshot", || img.snap_remove_listed(snap)).await
}

/// Earlier drivers' source addresses a record keeps (the latest).
pub(in crate::job) const MAX_SOURCE_DRIVERS: usize = 16;

impl Migrator {
    /// Opens the source read-write for this job's driver. An earlier driver
    /// of the job that still watches it died (or lost the lease and is
    /// hung): it is blocklisted, and its lock broken, so that neither its
    /// watch nor its lock stalls this driver's snapshot work or the retire
    /// until the OSD's watch timeout. This driver's own address is recorded
    /// first, for the next one.
    pub(in crate::job) async fn open_source_as_driver(&self, s: &mut Stored, src_io: &IoCtx) -> Result<Image> {
        let name = s.record.source.image.image.clone();
        let img = retry_busy("open the source", || src_io.open_image(&name)).await?;
        if let Err(e) = self.fence_out_earlier_source_drivers(s, &img).await {
            img.close().await;
            return Err(e);
        }
        Ok(img)
    }

    /// Fences out of `img` (the source, open read-write) the job's earlier
    /// drivers that still watch it, and records this driver's own address
    /// for the next one.
    pub(in crate::job) async fn fence_out_earlier_source_drivers(&self, s: &mut Stored, img: &Image) -> Result<()> {
        let drivers = s.record.source_drivers.clone();
        let out = fence_out_clients(img, "an earlier driver of this job still has the source open", |c| {
            c.watcher_id.is_some() && drivers.contains(&c.addr)
        })
        .await?;
        let new: Vec<String> = out
            .own
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
}
