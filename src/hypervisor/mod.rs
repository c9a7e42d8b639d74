//! Hooks into whatever uses a volume: hold its writes, resume them, and
//! re-point it to another image.
//!
//! The native engine needs the instance quiet for the final delta: it holds
//! the instance (every acknowledged write is then on the source), fences the
//! source at the Ceph level, applies the last changes, switches the catalog,
//! re-points the instance to the destination and resumes it. Every call is
//! idempotent (holding a held instance, re-pointing to the image already in
//! use, resuming a running instance all succeed), because a crashed
//! migration repeats the calls it may already have made.
//!
//! A control plane supplies its own implementation (e.g. over its compute
//! agent); livemig ships [`TestInstanceHook`] for the test instance's control
//! socket and [`QmpHook`] for a QEMU's QMP socket (used when the native
//! engine moves a QEMU's volume; by default the QEMU engine mirrors it
//! instead and holds nothing).

pub mod qmp;
pub mod test_instance;

use std::sync::Arc;

use crate::catalog::{Access, Attachment, Backing};
use crate::error::{Error, ErrorKind, Result};

pub use qmp::QmpHook;
pub use test_instance::TestInstanceHook;

/// What livemig needs from the hypervisor of an attached volume.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// Before a job is created: whether this instance can be held and
    /// re-pointed, so that a migration is refused up front rather than
    /// stuck with the instance held. The default accepts.
    async fn check(&self, _attachment: &Attachment) -> Result<()> {
        Ok(())
    }
    /// Stops the instance's writes to the volume and returns once every
    /// write it acknowledged is on the image (nothing in flight).
    async fn hold(&self, attachment: &Attachment) -> Result<()>;
    /// Lets the instance write again, to whatever image it now uses.
    async fn resume(&self, attachment: &Attachment) -> Result<()>;
    /// Makes a held instance use `to` instead of its current image.
    async fn repoint(&self, attachment: &Attachment, to: &Backing) -> Result<()>;
    /// While the instance is held and before the switch: readies `to` (opens
    /// it) so that the re-point that follows, inside the downtime, is only a
    /// swap. It runs beside the fence and the final delta. Best effort: an
    /// error only means `repoint` does all the work; a `resume` without a
    /// `repoint` must let go of what was readied. The default does nothing.
    async fn prepare_repoint(&self, _attachment: &Attachment, _to: &Backing) -> Result<()> {
        Ok(())
    }
}

/// Chooses the hook for an attachment from how the catalog says to reach it.
pub trait HypervisorRegistry: Send + Sync {
    /// The hook for `attachment`, or an error saying why it cannot be held.
    fn for_attachment(&self, attachment: &Attachment) -> Result<Arc<dyn Hypervisor>>;
}

/// The built-in registry: test-instance sockets and QMP sockets.
/// Attachments without an access channel cannot be held.
#[derive(Debug, Default, Clone)]
pub struct BuiltinHypervisors {
    /// Where each catalog cluster name's ceph.conf is, for re-pointing:
    /// (cluster name, conf path).
    pub cluster_confs: Vec<(String, String)>,
}

impl HypervisorRegistry for BuiltinHypervisors {
    fn for_attachment(&self, attachment: &Attachment) -> Result<Arc<dyn Hypervisor>> {
        match &attachment.access {
            Access::TestInstance { socket } => Ok(Arc::new(TestInstanceHook::new(socket, self.cluster_confs.clone()))),
            Access::None => Err(Error::new(ErrorKind::InvalidState, "hold instance")
                .target(attachment.instance_id.clone())
                .message(format!(
                    "instance `{}` uses volume `{}` but the catalog names no way to reach it (access: none), so its writes cannot be held for the cutover: record its control socket (QMP or test-instance) in the catalog's attachment, or detach the volume",
                    attachment.instance_id, attachment.volume_id
                ))),
            Access::Qmp { socket } => Ok(Arc::new(QmpHook::new(socket, self.cluster_confs.clone()))),
        }
    }
}
