//! FailedOver -> Done (a sync's failover): once the lost source's cluster
//! answers again, the source's writers are fenced out (blocklisted, its
//! lock broken) and the source goes to the trash, so that the old copy is
//! never writable beside the replica that took over; it keeps the
//! failover's point in time as a snapshot, which a resync starts from.
//! Until the cluster is back, connecting to it fails and the job stays
//! where it is.

use tracing::info;

use crate::error::Result;
use crate::job::live::now_ms;
use crate::job::record::{Phase, RetirePolicy};
use crate::job::source::{retry_busy, sweep_snapshots};
use crate::job::store::Stored;
use crate::job::Migrator;
use crate::mirror::fence::fence_out_clients;

impl Migrator {
    pub(in crate::job) async fn step_retire_lost_source(&self, s: &mut Stored) -> Result<()> {
        let r = s.record.clone();
        let (src_io, _) = self.ioctxs(&r).await?;
        let name = &r.source.image.image;
        if src_io.image_exists(name).await? {
            let img = src_io.open_image(name).await?;
            let retired = async {
                let out = fence_out_clients(&img, "a writer of the source a failover replaced", |_| true).await?;
                if let Some(f) = s.record.sync.as_mut().and_then(|y| y.failover.as_mut()) {
                    f.fenced.extend(out.fenced.into_iter().map(|c| c.addr));
                }
                // The failover's point stays, for a resync.
                let point = s
                    .record
                    .sync
                    .as_ref()
                    .and_then(|y| y.failover.as_ref())
                    .map(|f| f.point.as_str());
                sweep_snapshots(&img, &r.id, point.filter(|p| !p.is_empty())).await
            }
            .await;
            img.close().await;
            retired?;
            // Whatever the retire policy: kept under its name, it could be
            // opened and written again.
            let delay_secs = match r.policy {
                RetirePolicy::Trash { delay_secs } => delay_secs,
                RetirePolicy::Keep => RetirePolicy::default_trash_delay(),
            };
            retry_busy("move the lost source to the trash", || {
                src_io.trash_move(name, delay_secs)
            })
            .await?;
            info!(image = %r.source, "the source a failover replaced is fenced and in the trash");
        }
        if let Some(f) = s.record.sync.as_mut().and_then(|y| y.failover.as_mut()) {
            f.source_retired_at_ms = Some(now_ms());
        }
        self.enter(s, Phase::Done).await
    }
}
