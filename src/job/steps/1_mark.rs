//! Created -> Marked: one compare-and-swap marks the volume as held by the
//! job (its status `detaching` if in use, `maintenance` if not). If the
//! catalog changed since the precheck, nothing was done: the job ends as
//! aborted.

use crate::catalog::{Cas, CasPurpose, Volume, VolumeStatus};
use crate::error::{Error, ErrorKind, Result};
use crate::job::record::{JobRecord, Phase};
use crate::job::store::Stored;
use crate::job::{fault, Migrator};

/// The source status while a job holds the volume: in-use volumes are
/// "detaching" (DESIGN), detached ones "maintenance".
fn marked_status(original: VolumeStatus) -> VolumeStatus {
    match original {
        VolumeStatus::InUse => VolumeStatus::Detaching,
        _ => VolumeStatus::Maintenance,
    }
}

impl Migrator {
    pub(in crate::job) fn marked_volume(&self, record: &JobRecord) -> Volume {
        Volume {
            status: marked_status(record.original_volume.status),
            migration: Some(record.id.clone()),
            ..record.original_volume.clone()
        }
    }

    pub(in crate::job) async fn step_mark(&self, s: &mut Stored) -> Result<()> {
        let r = &s.record;
        let marked = self.marked_volume(r);
        let current = self.catalog.volume(&r.volume_id).await?;
        if current != marked {
            let cas = Cas {
                purpose: CasPurpose::Mark,
                expect_volumes: vec![r.original_volume.clone()],
                expect_attachments: vec![(r.volume_id.clone(), r.original_attachments.clone())],
                put_volumes: vec![marked],
                ..Default::default()
            };
            if let Err(e) = self.catalog.compare_and_swap(cas).await {
                // Nothing was done yet: the job ends here, recorded as aborted.
                let (kind, why) = match &current.migration {
                    Some(other) => (
                        ErrorKind::AlreadyMigrating,
                        format!("volume `{}` is held by migration `{other}`", r.volume_id),
                    ),
                    None => (
                        e.kind(),
                        format!("volume `{}` changed since the precheck: {}", r.volume_id, e.detail()),
                    ),
                };
                self.enter(s, Phase::Aborted { reason: why.clone() }).await?;
                return Err(Error::new(kind, "mark volume")
                    .target(s.record.volume_id.clone())
                    .message(why));
            }
        }
        fault::point("after-mark");
        self.enter(s, Phase::Marked).await?;
        fault::point("after-marked-recorded");
        Ok(())
    }
}
