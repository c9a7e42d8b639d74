//! Switched -> Repointed (QEMU engine): QEMU pivots to the destination
//! (`job-complete`) and drops the source node; the attachment then names
//! the destination. A QEMU gone after the switch has nothing to pivot: the
//! destination holds every acknowledged write.

use tracing::warn;

use crate::error::Result;
use crate::job::qemu::qmp_socket;
use crate::job::record::Phase;
use crate::job::store::Stored;
use crate::job::{fault, Migrator};
use crate::qemu::mirror::complete;
use crate::qemu::qmp::qemu_went_away;
use crate::qemu::Qmp;

impl Migrator {
    /// After the switch: QEMU pivots to the destination and drops the
    /// source node; the attachment then names the destination.
    pub(in crate::job) async fn step_pivot(&self, s: &mut Stored, snapshot: Option<String>) -> Result<()> {
        let socket = qmp_socket(&s.record)?;
        let mirror = self.live_mut(s).qemu.clone();
        match (Qmp::connect(&socket).await, mirror) {
            (Ok(qmp), Some(m)) => {
                complete(&qmp, &m.job, &m.source_node).await?;
                fault::point("qemu-after-complete");
            }
            (Err(e), _) if qemu_went_away(&e) => {
                // The destination holds every acknowledged write (the
                // mirror was write-blocking and in sync before the switch):
                // whoever restarts the instance uses what the catalog names.
                warn!(error = %e, "QEMU is gone after the switch; nothing to pivot");
            }
            (Err(e), _) => return Err(e),
            (Ok(_), None) => {}
        }
        self.connect_attachment_to_destination(s).await?;
        self.enter(s, Phase::Repointed { snapshot }).await?;
        Ok(())
    }
}
