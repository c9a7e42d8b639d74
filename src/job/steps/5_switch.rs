//! The commit point: one compare-and-swap makes the catalog name the
//! destination. A detached job takes it as its own step (Copied ->
//! Switched); the live cutover and the QEMU mirror end with it.

use tracing::{info, warn};

use crate::catalog::{Cas, CasPurpose, Volume};
use crate::error::{ErrorKind, Result};
use crate::job::record::{JobRecord, Phase};
use crate::job::store::Stored;
use crate::job::{fault, Migrator};

impl Migrator {
    pub(in crate::job) async fn step_switch(&self, s: &mut Stored, snapshot: String) -> Result<()> {
        if !self.commit_switch(s).await? {
            return Ok(());
        }
        fault::point("after-switch");
        self.enter(
            s,
            Phase::Switched {
                snapshot: Some(snapshot),
            },
        )
        .await?;
        fault::point("after-switched-recorded");
        Ok(())
    }

    /// The commit point: one compare-and-swap makes the catalog name the
    /// destination (for a live job, the instance's attachment must also be
    /// as it was). `Ok(false)` if the job rolls back instead: when the
    /// catalog refused, or (live) on any failure, since the rollback is what
    /// resumes a held instance. Other failures of a detached job leave it
    /// resumable.
    pub(in crate::job) async fn commit_switch(&self, s: &mut Stored) -> Result<bool> {
        let r = &s.record;
        let current = self.catalog.volume(&r.volume_id).await?;
        if current.backing == r.destination {
            return Ok(true);
        }
        let live = r.live.is_some();
        match self.catalog.compare_and_swap(self.switch_cas(r)).await {
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

    /// The switch's compare-and-swap: the marked volume (and, live, the
    /// attachments as they were) become the volume on the destination,
    /// backing and declared location together.
    pub(in crate::job) fn switch_cas(&self, r: &JobRecord) -> Cas {
        let marked = self.marked_volume(r);
        let switched = Volume {
            backing: r.destination.clone(),
            size: r.original_volume.size,
            status: r.original_volume.status,
            location: r
                .destination_location
                .clone()
                .unwrap_or_else(|| marked.location.clone()),
            ..marked.clone()
        };
        Cas {
            purpose: CasPurpose::Switch,
            expect_volumes: vec![marked],
            expect_attachments: match r.live.is_some() {
                true => vec![(r.volume_id.clone(), r.original_attachments.clone())],
                false => Vec::new(),
            },
            put_volumes: vec![switched],
            ..Default::default()
        }
    }
}
