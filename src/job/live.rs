//! What the live steps (rounds, cutover, re-point, cleanup) share: the
//! live record and the instance's hook, the images kept open for the run,
//! and the names of the rounds' snapshots.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::record::{JobRecord, LiveRecord};
use super::run::Run;
use super::source::retry_busy;
use super::store::Stored;
use super::{snapshot_name, Migrator};
use crate::catalog::Attachment;
use crate::ceph::Image;
use crate::error::Result;
use crate::hypervisor::Hypervisor;

/// The snapshot of replay round `round` of `job`.
pub fn round_snapshot(job: &str, round: u32) -> String {
    format!("{}.{round}", snapshot_name(job))
}

pub(in crate::job) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Migrator {
    pub(in crate::job) fn live_hook(&self, r: &JobRecord) -> Result<(Attachment, Arc<dyn Hypervisor>)> {
        let live = r.live.as_ref().expect("a live phase has a live record");
        let hook = self.hypervisors.for_attachment(&live.attachment)?;
        Ok((live.attachment.clone(), hook))
    }

    pub(in crate::job) fn live_mut<'a>(&self, s: &'a mut Stored) -> &'a mut LiveRecord {
        s.record.live.as_mut().expect("a live phase has a live record")
    }

    /// The destination, opened by the first round of this run and kept
    /// open until the cutover has applied its delta.
    pub(in crate::job) async fn replay_destination(&self, r: &JobRecord, run: &mut Run) -> Result<Image> {
        self.kept_open(r, run, false).await
    }

    /// The source, read-write, opened by the first round of this run (which
    /// fences out an earlier driver's handle: see
    /// `Migrator::fence_out_earlier_source_drivers`).
    pub(in crate::job) async fn live_source(&self, s: &mut Stored, run: &mut Run) -> Result<Image> {
        let opened = run.source.is_none();
        let img = self.kept_open(&s.record, run, true).await?;
        if opened {
            self.fence_out_earlier_source_drivers(s, &img).await?;
        }
        Ok(img)
    }

    /// The source's or the destination's handle in [`LiveHandles`], opened
    /// read-write if there is none yet.
    async fn kept_open(&self, r: &JobRecord, run: &mut Run, source: bool) -> Result<Image> {
        let slot = match source {
            true => &mut run.source,
            false => &mut run.destination,
        };
        if let Some(img) = slot.as_ref() {
            return Ok(img.clone());
        }
        let (src_io, dst_io) = self.ioctxs(r).await?;
        let (io, name, what) = match source {
            true => (src_io, &r.source.image.image, "open the source"),
            false => (dst_io, &r.destination.image.image, "open the destination"),
        };
        let img = retry_busy(what, || io.open_image(name)).await?;
        *slot = Some(img.clone());
        Ok(img)
    }
}
