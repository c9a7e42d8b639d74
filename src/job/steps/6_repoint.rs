//! Switched -> Repointed (live, native engine): the held instance is
//! re-pointed to the destination and resumed; the catalog's attachment
//! follows it. Both are idempotent, so a run that dies repeats them.

use std::time::Instant;

use tracing::info;

use crate::catalog::{Attachment, Cas, CasPurpose};
use crate::error::Result;
use crate::job::live::now_ms;
use crate::job::record::Phase;
use crate::job::store::Stored;
use crate::job::{fault, Migrator};

impl Migrator {
    /// Re-points the held instance to the destination and resumes it.
    pub(in crate::job) async fn step_repoint(&self, s: &mut Stored, snapshot: Option<String>) -> Result<()> {
        let (attachment, hook) = self.live_hook(&s.record)?;
        let destination = s.record.destination.clone();
        let step = Instant::now();
        hook.repoint(&attachment, &destination).await?;
        fault::point("live-after-repoint");
        hook.resume(&attachment).await?;
        let resumed_at_ms = now_ms();
        fault::point("live-after-resume");
        let cutover = self.live_mut(s).cutover.get_or_insert_with(Default::default);
        cutover.steps.repoint_ms = step.elapsed().as_millis() as u64;
        if cutover.resumed_at_ms.is_none() {
            cutover.resumed_at_ms = Some(resumed_at_ms);
        }
        let downtime = cutover.downtime_ms();
        info!(downtime_ms = ?downtime, "instance resumed on the destination");
        // The catalog's attachment follows the instance (a run that dies
        // before this repeats the re-point and resume, which are idempotent).
        self.connect_attachment_to_destination(s).await?;
        self.enter(s, Phase::Repointed { snapshot }).await?;
        fault::point("live-after-resumed-recorded");
        Ok(())
    }

    /// After the instance moved: its attachment's connection names the destination.
    pub(in crate::job) async fn connect_attachment_to_destination(&self, s: &Stored) -> Result<()> {
        let destination = &s.record.destination;
        let current = self.catalog.attachments(&s.record.volume_id).await?;
        if current.iter().all(|a| a.connection == *destination) {
            return Ok(());
        }
        let moved = current
            .iter()
            .map(|a| Attachment {
                connection: destination.clone(),
                ..a.clone()
            })
            .collect();
        self.catalog
            .compare_and_swap(Cas {
                purpose: CasPurpose::Connect,
                expect_attachments: vec![(s.record.volume_id.clone(), current)],
                put_attachments: moved,
                ..Default::default()
            })
            .await
    }
}
