//! The QEMU engine inside a job: QEMU mirrors, livemig decides when the
//! catalog switches.
//!
//! The order at the end is what keeps a crash harmless: when the mirror is
//! ready it is switched to write-blocking and livemig waits until QEMU
//! reports it actively synced (from then on every guest write is
//! acknowledged only once it is on both images); only then does the catalog
//! switch (the commit point), and only after that does QEMU pivot
//! (`job-complete`). A crash before the switch leaves the catalog on the
//! source and QEMU still mirroring (resume reattaches to the job by its id,
//! abort cancels it); a crash after it leaves a destination that holds every
//! acknowledged write, whether QEMU pivoted, is still mirroring, or died.

//!
//! This module holds what the QEMU engine's steps (`steps/2_qemu_mirror.rs`,
//! `steps/6_qemu_pivot.rs`) and the abort share.

use tracing::warn;

use super::record::JobRecord;
use super::{fault, Migrator};
use crate::error::{Error, ErrorKind, Result};
use crate::qemu::mirror::{cancel, find_rbd_node};
use crate::qemu::qmp::qemu_went_away;
use crate::qemu::Qmp;
use crate::spec::ImageSpec;

/// QEMU's job id (and the destination node's name) for livemig job `id`.
pub fn job_id(id: &str) -> String {
    format!("livemig-{id}")
}

pub(in crate::job) fn qmp_socket(r: &JobRecord) -> Result<String> {
    match &r.live.as_ref().map(|l| &l.attachment.access) {
        Some(crate::catalog::Access::Qmp { socket }) => Ok(socket.clone()),
        _ => Err(Error::new(ErrorKind::InvalidState, "qemu engine").message("the attachment names no QMP socket")),
    }
}

/// Before a job is created: QEMU answers and has the source open.
pub(in crate::job) async fn precheck(socket: &str, source: &ImageSpec) -> Result<()> {
    let qmp = Qmp::connect(socket).await?;
    find_rbd_node(&qmp, source).await.map(|_| ())
}

impl Migrator {
    /// Abort: the mirror is cancelled and its node removed (the guest stays
    /// on the source); a QEMU that is gone has nothing to cancel.
    pub(in crate::job) async fn cancel_mirror(&self, r: &JobRecord) -> Result<()> {
        let socket = qmp_socket(r)?;
        let job = job_id(&r.id);
        match Qmp::connect(&socket).await {
            Ok(qmp) => match cancel(&qmp, &job, &job).await {
                Err(e) if !qemu_went_away(&e) => return Err(e),
                _ => {}
            },
            Err(e) if qemu_went_away(&e) => warn!(error = %e, "QEMU is gone; no mirror to cancel"),
            Err(e) => return Err(e),
        }
        fault::point("abort-after-instance-resumed");
        Ok(())
    }
}
