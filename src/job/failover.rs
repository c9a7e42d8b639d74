//! A sync's failover: the source's cluster is lost, and the replica's
//! newest whole point in time becomes the volume.
//!
//! The sync's driver may still run (stuck on the lost cluster, renewing
//! its lease): it is fenced out first, blocklisted on the job store's
//! cluster and on the replica's, so that none of its writes can land
//! beside the new primary. The replica is rolled back to its point if a
//! round was being applied, and the catalog switches to it (backing and
//! location in one compare-and-swap) and lets the volume go. The job
//! stays in `failed_over` until the lost source's cluster is back: a
//! resume then fences out the source's writers and retires it, so that
//! the old copy is never writable beside the new primary.
//!
//! Writes acknowledged after the point in time are lost: the RPO the
//! sync reported. The point stays a snapshot on both sides, so that a
//! resync (`job::resync`) sends back only what changed since.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::live::now_ms;
use super::record::{FailoverReport, JobRecord, Phase};
use super::source::{snapshot_exists, sweep_snapshots};
use super::store::Stored;
use super::{Migrator, JOB_META_KEY};
use crate::error::{Error, ErrorKind, Result};
use crate::mirror::fence::fence_out_clients;

/// How long a failover waits for the volume's cluster to answer before it
/// counts as lost.
pub const REACHABLE_PROBE: Duration = Duration::from_secs(5);

impl Migrator {
    /// Fails the sync of `volume_id` over to its replica. While the
    /// source's cluster answers (this migrator is connected to it, and a
    /// new connection reaches its monitors within [`REACHABLE_PROBE`]) the
    /// failover is refused unless `force` (recorded), since a cutover
    /// loses nothing.
    pub async fn failover_sync(&self, volume_id: &str, force: bool) -> Result<JobRecord> {
        let s = self.sync_of(volume_id).await?;
        let id = s.record.id.clone();
        let reachable = match self.clusters.get(&s.record.source.cluster) {
            Ok(cluster) => cluster.answers(REACHABLE_PROBE).await,
            Err(_) => false,
        };
        if reachable && !force {
            return Err(Error::new(ErrorKind::InvalidState, "sync failover").target(id.clone()).message(format!(
                "the cluster `{}` of volume `{volume_id}` is reachable: `sync cutover` moves it with nothing lost; a failover there must be forced (and is recorded as such); nothing was changed",
                s.record.source.cluster
            )));
        }
        check_failover_phase(&s)?;
        let lost = CancellationToken::new();
        let (lease, fenced) = self.store.take_over(&id, self.options.lease, lost).await?;
        let result = self
            .promote_replica(&id, force, fenced)
            .instrument(info_span!("failover", job = %id))
            .await;
        let _ = lease.release().await;
        result
    }

    async fn promote_replica(&self, id: &str, forced: bool, mut fenced: Vec<String>) -> Result<JobRecord> {
        let mut s = self.store.load(id).await?;
        if let Phase::FailedOver { .. } = s.record.phase {
            return Ok(s.record);
        }
        check_failover_phase(&s)?;
        let (Phase::Replaying { base, .. } | Phase::CuttingOver { base, .. }) = s.record.phase.clone() else {
            unreachable!("checked above")
        };
        let r = s.record.clone();
        let dst_io = self
            .clusters
            .get(&r.destination.cluster)?
            .ioctx(&r.destination.image.pool, &r.destination.image.namespace)
            .await?;
        let replica = dst_io.open_image(&r.destination.image.image).await?;
        let promoted = async {
            // The earlier driver's handle on the replica (another cluster
            // than the job store's, maybe): fenced out too.
            let out = fence_out_clients(&replica, "the sync's earlier driver has the replica open", |_| true).await?;
            fenced.extend(out.fenced.into_iter().map(|c| c.addr));
            // The point is taken as a round starts: without it no round has
            // begun writing since the replica came to hold `base` whole.
            // (A round names the point on the replica as it starts: before
            // that the replica holds it as its head, and the snapshot is
            // taken here, for a resync.)
            let rolled_back = if snapshot_exists(&replica, &base).await? {
                replica.changed_bytes(Some(&base), true).await? > 0
            } else {
                replica.snap_create(&base).await?;
                false
            };
            if rolled_back {
                warn!(point = %base, "a round was being applied: rolling the replica back to its point in time");
                replica.snap_rollback(&base).await?;
            }
            // The point stays: the copy the failover replaces keeps it too,
            // and a resync starts from it.
            sweep_snapshots(&replica, id, Some(&base)).await?;
            replica.metadata_remove(JOB_META_KEY).await?;
            Ok::<_, Error>(rolled_back)
        }
        .await;
        replica.close().await;
        let rolled_back = promoted?;
        let sync = s.record.sync.as_mut().expect("a sync's record");
        sync.failover = Some(FailoverReport {
            at_ms: now_ms(),
            point_ms: sync.synced_at_ms.unwrap_or_default(),
            forced,
            rolled_back,
            point: base.clone(),
            fenced,
            source_retired_at_ms: None,
        });
        self.store.save(&mut s).await?;
        let current = self.catalog.volume(&r.volume_id).await?;
        if current.backing != r.destination {
            self.catalog.compare_and_swap(self.switch_cas(&r)).await.map_err(|e| {
                let why = format!(
                    "the catalog refused the failover of volume `{}` to `{}`: {}; the replica is ready: run the failover again",
                    r.volume_id,
                    r.destination,
                    e.detail()
                );
                e.message(why)
            })?;
        }
        self.release_volume(&r).await?;
        info!(volume = %r.volume_id, to = %r.destination, "failed over to the replica");
        self.enter(&mut s, Phase::FailedOver { point: base }).await?;
        Ok(s.record)
    }
}

/// A failover needs a replica with a whole point in time, before the switch.
fn check_failover_phase(s: &Stored) -> Result<()> {
    let r = &s.record;
    match (&r.phase, r.sync.as_ref().and_then(|y| y.synced_at_ms)) {
        (Phase::Replaying { .. } | Phase::CuttingOver { .. }, Some(_)) => Ok(()),
        (Phase::FailedOver { .. }, _) => Ok(()),
        (p, _) if p.is_switched() => Err(Error::new(ErrorKind::JobFinished, "sync failover")
            .target(r.id.clone())
            .message(format!("job `{}` has already switched the volume (phase {})", r.id, p.kind()))),
        _ => Err(Error::new(ErrorKind::NotSynced, "sync failover").target(r.id.clone()).message(format!(
            "the replica of volume `{}` (job `{}`) holds no whole point in time yet: there is nothing to fail over to; nothing was changed",
            r.volume_id, r.id
        ))),
    }
}
