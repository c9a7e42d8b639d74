//! The hook for a QEMU instance, over its QMP socket, for the native engine.
//!
//! - hold: `stop`. QEMU pauses the vCPUs, then drains and flushes every
//!   block device before it answers, so every write the guest saw
//!   acknowledged is on the image and no new one can start.
//! - prepare_repoint (while held, beside the fence and the final delta):
//!   `blockdev-add` an rbd node for the new image (with the old node's
//!   cache settings), so that opening the image is not part of the downtime.
//! - repoint: the same `blockdev-add` unless prepared, then swap the new
//!   node in as the `file` child of the raw node the guest device reads
//!   through (`blockdev-reopen`).
//! - resume: `cont`, then `blockdev-del` the nodes no device reads any
//!   more: the old node after a re-point (closing the source image in QEMU
//!   is not part of the downtime), or a readied node after a cutover that
//!   failed or was aborted before the re-point (so that QEMU does not keep
//!   the destination open).
//!
//! Each step looks at QEMU's state first, so repeating it after a crash of
//! `migrate` is harmless. A paused instance is taken to be paused by
//! livemig: [`Hypervisor::check`] refuses to start a migration of an
//! instance that is not running, so the final `cont` never starts a guest
//! its operator had paused.

use std::path::PathBuf;

use serde_json::{json, Value};
use tracing::info;

use super::Hypervisor;
use crate::catalog::{Attachment, Backing};
use crate::error::{Error, ErrorKind, Result};
use crate::qemu::graph::{
    add_rbd_node, find_rbd_node, format_node_over, rbd_node_among, rbd_nodes, swap_file_child, RbdNode, RbdTarget,
};
use crate::qemu::Qmp;

/// `blockdev-reopen` without the `x-` prefix, with a new `file` child.
const MIN_QEMU: (u64, u64, u64) = (6, 1, 0);

/// [`Hypervisor`] over a QEMU's QMP socket.
#[derive(Debug, Clone)]
pub struct QmpHook {
    socket: PathBuf,
    cluster_confs: Vec<(String, String)>,
}

fn hook_error(op: &'static str, instance: &str, why: String) -> Error {
    Error::new(ErrorKind::Hypervisor, op)
        .target(instance.to_owned())
        .message(why)
}

/// Prefix of the rbd nodes the re-point adds itself.
const REPOINTED_PREFIX: &str = "livemig-rbd-";
/// Prefix of the rbd nodes readied ahead of the re-point: one that no
/// device reads by the resume is left over from a cutover that did not
/// switch, and is deleted.
const READIED_PREFIX: &str = "livemig-next-";

/// The node name livemig gives the rbd node of `image` (QEMU allows 31
/// characters, so a digest rather than the image's name).
fn node_name_for(prefix: &str, image: &str) -> String {
    let digest = image.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{prefix}{:012x}", digest & 0xffff_ffff_ffff)
}

impl QmpHook {
    /// A hook for the QEMU listening on `socket`; `cluster_confs` maps
    /// catalog cluster names to ceph.conf paths (as QEMU sees them) for
    /// re-points to another cluster.
    pub fn new(socket: &str, cluster_confs: Vec<(String, String)>) -> Self {
        QmpHook {
            socket: PathBuf::from(socket),
            cluster_confs,
        }
    }

    async fn connect(&self) -> Result<Qmp> {
        Qmp::connect(&self.socket).await
    }

    /// How QEMU is to open `to`: like `old`, with the ceph.conf of `to`'s
    /// cluster when that is another one.
    fn target_for(
        &self,
        op: &'static str,
        instance: &str,
        old: &RbdNode,
        from_cluster: &str,
        to: &Backing,
    ) -> Result<RbdTarget> {
        let conf = if to.cluster == from_cluster {
            old.conf.clone()
        } else {
            let conf = self.cluster_confs.iter().find(|(name, _)| *name == to.cluster);
            Some(conf.map(|(_, conf)| conf.clone()).ok_or_else(|| {
                Error::new(ErrorKind::Config, op)
                    .target(instance.to_owned())
                    .message(format!("no ceph.conf is known for cluster `{}`", to.cluster))
            })?)
        };
        Ok(RbdTarget {
            image: to.image.clone(),
            conf,
            user: old.user.clone(),
        })
    }

    /// Deletes the nodes of the attachment's image and the readied nodes
    /// that no device reads any more.
    async fn close_unused(qmp: &Qmp, attachment: &Attachment) -> Result<()> {
        for node in rbd_nodes(qmp).await? {
            let ours = node.node_name.starts_with(READIED_PREFIX) || node.image == attachment.connection.image;
            if ours && format_node_over(qmp, &node).await?.is_none() {
                qmp.execute("blockdev-del", json!({"node-name": node.node_name}))
                    .await?;
                info!(instance = %attachment.instance_id, node = %node.node_name, image = %node.image, "closed an image no device reads any more");
            }
        }
        Ok(())
    }

    async fn status(qmp: &Qmp) -> Result<String> {
        let status = qmp.execute("query-status", json!({})).await?;
        Ok(status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }
}

#[async_trait::async_trait]
impl Hypervisor for QmpHook {
    async fn check(&self, attachment: &Attachment) -> Result<()> {
        let instance = &attachment.instance_id;
        let qmp = self.connect().await?;
        if qmp.version() < MIN_QEMU {
            let (a, b, c) = qmp.version();
            return Err(hook_error(
                "check instance",
                instance,
                format!(
                    "QEMU {a}.{b}.{c} cannot swap a node's file child (blockdev-reopen needs 6.1); use the QEMU engine"
                ),
            ));
        }
        let status = Self::status(&qmp).await?;
        if status != "running" {
            return Err(Error::new(ErrorKind::InvalidState, "check instance")
                .target(instance.clone())
                .message(format!(
                    "instance `{instance}` is `{status}`, not running; livemig resumes the instances it holds, so it migrates only running ones: start it (`cont`) or detach the volume"
                )));
        }
        let image = &attachment.connection.image;
        let rbd = find_rbd_node(&qmp, image).await?;
        match format_node_over(&qmp, &rbd).await? {
            Some(_) => Ok(()),
            None => Err(Error::new(ErrorKind::InvalidState, "check instance")
                .target(instance.clone())
                .message(format!(
                    "no device of instance `{instance}` reads `{image}` (rbd node `{}`): the catalog's attachment does not match the instance",
                    rbd.node_name
                ))),
        }
    }

    async fn hold(&self, attachment: &Attachment) -> Result<()> {
        let qmp = self.connect().await?;
        match Self::status(&qmp).await?.as_str() {
            "running" => qmp.execute("stop", json!({})).await.map(|_| ()),
            "paused" => Ok(()),
            other => Err(hook_error(
                "hold instance",
                &attachment.instance_id,
                format!("the instance is `{other}`; only a running or paused QEMU can be held"),
            )),
        }
    }

    async fn resume(&self, attachment: &Attachment) -> Result<()> {
        let qmp = self.connect().await?;
        match Self::status(&qmp).await?.as_str() {
            "paused" => qmp.execute("cont", json!({})).await.map(|_| ())?,
            "running" => {}
            other => {
                return Err(hook_error(
                    "resume instance",
                    &attachment.instance_id,
                    format!("the instance is `{other}`; only a paused QEMU can be resumed"),
                ))
            }
        }
        Self::close_unused(&qmp, attachment).await
    }

    async fn prepare_repoint(&self, attachment: &Attachment, to: &Backing) -> Result<()> {
        let op = "ready the re-point";
        let instance = &attachment.instance_id;
        let qmp = self.connect().await?;
        let nodes = rbd_nodes(&qmp).await?;
        let (Some(old), None) = (
            rbd_node_among(&nodes, &attachment.connection.image)?,
            rbd_node_among(&nodes, &to.image)?,
        ) else {
            // Re-pointed already, or readied already: nothing to do.
            return Ok(());
        };
        let target = self.target_for(op, instance, &old, &attachment.connection.cluster, to)?;
        let name = node_name_for(READIED_PREFIX, &to.image.to_string());
        add_rbd_node(&qmp, &old, &target, &name).await?;
        info!(instance = %instance, node = %name, image = %to.image, "destination readied for the re-point");
        Ok(())
    }

    async fn repoint(&self, attachment: &Attachment, to: &Backing) -> Result<()> {
        let op = "re-point instance";
        let instance = &attachment.instance_id;
        let qmp = self.connect().await?;
        let nodes = rbd_nodes(&qmp).await?;
        let old = rbd_node_among(&nodes, &attachment.connection.image)?;
        let new = rbd_node_among(&nodes, &to.image)?;
        let Some(old) = old else {
            // Done before (the resume deleted the old node), or a mismatch.
            return match new {
                Some(_) => Ok(()),
                None => Err(hook_error(
                    op,
                    instance,
                    format!(
                        "QEMU has neither `{}` nor `{}` open",
                        attachment.connection.image, to.image
                    ),
                )),
            };
        };
        let new_node = match new {
            Some(node) => node.node_name,
            None => {
                let target = self.target_for(op, instance, &old, &attachment.connection.cluster, to)?;
                let name = node_name_for(REPOINTED_PREFIX, &to.image.to_string());
                add_rbd_node(&qmp, &old, &target, &name).await?;
                name
            }
        };
        // Not swapped yet if a device still reads the old node.
        if let Some(format) = format_node_over(&qmp, &old).await? {
            swap_file_child(&qmp, &format, &new_node).await?;
            info!(instance = %instance, format = %format.node_name, from = %old.node_name, to = %new_node, "guest device re-pointed");
        }
        // The old node goes after the resume (see `close_unused`).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_fit_qemu_and_differ_per_image() {
        for prefix in [REPOINTED_PREFIX, READIED_PREFIX] {
            let a = node_name_for(prefix, "pool/vol-1");
            assert!(a.len() <= 31 && a.starts_with(prefix), "{a}");
            assert_eq!(a, node_name_for(prefix, "pool/vol-1"));
            assert_ne!(a, node_name_for(prefix, "pool/vol-2"));
        }
    }
}
