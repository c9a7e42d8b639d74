//! QEMU's block graph as livemig needs it: which node opens an RBD image,
//! adding an rbd node like an existing one, and the format node a guest
//! device reads through.
//!
//! Nodes are found by what they open (the image in their filename), never by
//! guessing names: libvirt, Nova and hand-written command lines all name
//! nodes differently. The layout livemig re-points is libvirt's
//! `-blockdev`: device -> format node (`raw`) -> protocol node (`rbd`).
//! Swapping the format node's `file` child (`blockdev-reopen`, QEMU 6.1+)
//! moves the guest to another image without touching the device.

use serde_json::{json, Value};

use super::Qmp;
use crate::error::{Error, ErrorKind, Result};
use crate::spec::ImageSpec;

/// Where an image is, as QEMU's rbd driver needs it to open it.
#[derive(Debug, Clone)]
pub struct RbdTarget {
    /// The image.
    pub image: ImageSpec,
    /// ceph.conf path as QEMU sees it (`None`: QEMU's default search).
    pub conf: Option<String>,
    /// Ceph client id (without `client.`), if not the default.
    pub user: Option<String>,
}

/// A QEMU block node backed by an RBD image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdNode {
    /// QEMU's node name.
    pub node_name: String,
    /// The image.
    pub image: ImageSpec,
    /// The ceph.conf it was opened with, if it names one.
    pub conf: Option<String>,
    /// The Ceph client id it was opened with, if it names one.
    pub user: Option<String>,
    /// `cache.direct`.
    pub cache_direct: bool,
    /// `cache.no-flush`.
    pub cache_no_flush: bool,
}

/// The guest-facing node above an rbd node: what a device reads through,
/// with the settings a reopen must repeat (a reopen resets what it omits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatNode {
    /// QEMU's node name.
    pub node_name: String,
    /// Its driver (`raw`).
    pub driver: String,
    /// Opened read-only.
    pub read_only: bool,
    /// `detect-zeroes` setting.
    pub detect_zeroes: String,
    /// `cache.direct`.
    pub cache_direct: bool,
    /// `cache.no-flush`.
    pub cache_no_flush: bool,
}

fn graph_error(op: &'static str, why: String) -> Error {
    Error::new(ErrorKind::Hypervisor, op).message(why)
}

/// The rbd options in a node's `image.filename`: either `json:{...}` (with
/// the rbd driver's options at the top or under `file`), or
/// `rbd:pool[/ns]/image[:opt=value...]`.
fn rbd_options_of(node: &Value) -> Option<(ImageSpec, Option<String>, Option<String>)> {
    let filename = node.pointer("/image/filename")?.as_str()?;
    if let Some(json_text) = filename.strip_prefix("json:") {
        let v: Value = serde_json::from_str(json_text).ok()?;
        let v = v
            .get("file")
            .filter(|f| f.get("driver") == Some(&json!("rbd")))
            .unwrap_or(&v);
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let image = ImageSpec {
            pool: text("pool")?,
            namespace: text("namespace").unwrap_or_default(),
            image: text("image")?,
        };
        return Some((image, text("conf"), text("user")));
    }
    let mut parts = filename.strip_prefix("rbd:")?.split(':');
    let image = parts.next()?.parse().ok()?;
    let (mut conf, mut user) = (None, None);
    for option in parts {
        match option.split_once('=') {
            Some(("conf", v)) => conf = Some(v.to_owned()),
            Some(("id", v)) => user = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((image, conf, user))
}

async fn named_nodes(qmp: &Qmp) -> Result<Vec<Value>> {
    let nodes = qmp.execute("query-named-block-nodes", json!({"flat": true})).await?;
    Ok(nodes.as_array().cloned().unwrap_or_default())
}

fn text_of(node: &Value, key: &str) -> Option<String> {
    node.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn flag_of(node: &Value, pointer: &str) -> bool {
    node.pointer(pointer).and_then(Value::as_bool).unwrap_or(false)
}

/// Every rbd node in QEMU's block graph (one query; pick from it with
/// [`rbd_node_among`]).
pub async fn rbd_nodes(qmp: &Qmp) -> Result<Vec<RbdNode>> {
    Ok(named_nodes(qmp)
        .await?
        .iter()
        .filter(|n| n.get("drv").and_then(Value::as_str) == Some("rbd"))
        .filter_map(|n| {
            let (image, conf, user) = rbd_options_of(n)?;
            Some(RbdNode {
                node_name: text_of(n, "node-name")?,
                image,
                conf,
                user,
                cache_direct: flag_of(n, "/cache/direct"),
                cache_no_flush: flag_of(n, "/cache/no-flush"),
            })
        })
        .collect())
}

/// The node of `nodes` that opens `image`, `None` if none does; more than
/// one is an error.
pub fn rbd_node_among(nodes: &[RbdNode], image: &ImageSpec) -> Result<Option<RbdNode>> {
    let found: Vec<&RbdNode> = nodes.iter().filter(|n| n.image == *image).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(graph_error(
            "find rbd node",
            format!(
                "QEMU has {} rbd nodes for `{image}` ({}); refusing to guess",
                many.len(),
                many.iter().map(|n| n.node_name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The rbd node of `image`, `None` if QEMU has none; more than one is an error.
pub async fn rbd_node_if_any(qmp: &Qmp, image: &ImageSpec) -> Result<Option<RbdNode>> {
    rbd_node_among(&rbd_nodes(qmp).await?, image)
}

/// Finds the rbd node of `image` in QEMU's block graph.
pub async fn find_rbd_node(qmp: &Qmp, image: &ImageSpec) -> Result<RbdNode> {
    rbd_node_if_any(qmp, image).await?.ok_or_else(|| {
        Error::new(ErrorKind::ImageNotFound, "find rbd node").target(image.to_string()).message(format!(
            "QEMU has no rbd block node for `{image}`: the catalog's attachment does not match what the instance has open"
        ))
    })
}

/// Adds `target` as rbd node `node_name`, with the cache settings of `like`
/// and discards passed down to the image.
pub async fn add_rbd_node(qmp: &Qmp, like: &RbdNode, target: &RbdTarget, node_name: &str) -> Result<()> {
    let mut add = json!({
        "driver": "rbd",
        "node-name": node_name,
        "pool": target.image.pool,
        "image": target.image.image,
        "cache": {"direct": like.cache_direct, "no-flush": like.cache_no_flush},
        "discard": "unmap",
    });
    if !target.image.namespace.is_empty() {
        add["namespace"] = json!(target.image.namespace);
    }
    if let Some(conf) = &target.conf {
        add["conf"] = json!(conf);
    }
    if let Some(user) = &target.user {
        add["user"] = json!(user);
    }
    qmp.execute("blockdev-add", add).await.map(|_| ())
}

/// The format node a guest device reads `rbd` through (`None`: no device
/// reads it). Refuses a device attached to the rbd node itself (nothing to
/// re-point without replacing the device's drive) or through another driver.
pub async fn format_node_over(qmp: &Qmp, rbd: &RbdNode) -> Result<Option<FormatNode>> {
    let op = "find the guest's format node";
    let devices = qmp.execute("query-block", json!({})).await?;
    let mut found = Vec::new();
    for device in devices.as_array().into_iter().flatten() {
        let Some(root) = device.get("inserted") else { continue };
        let name = text_of(device, "qdev")
            .filter(|q| !q.is_empty())
            .or_else(|| text_of(device, "device"))
            .unwrap_or_default();
        if text_of(root, "node-name").as_deref() == Some(rbd.node_name.as_str()) {
            return Err(Error::new(ErrorKind::InvalidState, op).target(rbd.image.to_string()).message(format!(
                "device `{name}` uses rbd node `{}` directly, with no format node above it, so the native engine cannot re-point it; \
                 attach the volume as libvirt does (a `raw` node over the rbd node) or let the QEMU engine move it",
                rbd.node_name
            )));
        }
        let opens_it = rbd_options_of(root).is_some_and(|(image, ..)| image == rbd.image);
        if opens_it && text_of(root, "drv").as_deref() == Some("raw") {
            found.push(FormatNode {
                node_name: text_of(root, "node-name").unwrap_or_default(),
                driver: "raw".into(),
                read_only: root.get("ro").and_then(Value::as_bool).unwrap_or(false),
                detect_zeroes: text_of(root, "detect_zeroes").unwrap_or_else(|| "off".into()),
                cache_direct: root.pointer("/cache/direct").and_then(Value::as_bool).unwrap_or(false),
                cache_no_flush: root
                    .pointer("/cache/no-flush")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        } else if opens_it {
            return Err(Error::new(ErrorKind::InvalidState, op).target(rbd.image.to_string()).message(format!(
                "device `{name}` reads `{}` through a `{}` node; the native engine re-points only a `raw` node over the rbd node: let the QEMU engine move it",
                rbd.image,
                text_of(root, "drv").unwrap_or_default()
            )));
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        n => Err(graph_error(
            op,
            format!("{n} devices read `{}`; refusing to guess", rbd.image),
        )),
    }
}

/// Makes `format` read through `new_file` instead of its current child;
/// its other settings stay as they were.
pub async fn swap_file_child(qmp: &Qmp, format: &FormatNode, new_file: &str) -> Result<()> {
    let options = json!({
        "driver": format.driver,
        "node-name": format.node_name,
        "file": new_file,
        "read-only": format.read_only,
        "detect-zeroes": format.detect_zeroes,
        "discard": "unmap",
        "cache": {"direct": format.cache_direct, "no-flush": format.cache_no_flush},
    });
    qmp.execute("blockdev-reopen", json!({ "options": [options] }))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbd_options_are_read_from_either_filename_form() {
        let j = json!({"image": {"filename": "json:{\"driver\": \"rbd\", \"pool\": \"p\", \"image\": \"i\", \"conf\": \"/c\"}"}});
        assert_eq!(
            rbd_options_of(&j),
            Some((ImageSpec::new("p", "i"), Some("/c".into()), None))
        );
        let j = json!({"image": {"filename": "json:{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"n\", \"image\": \"i\", \"user\": \"u\"}"}});
        let (image, conf, user) = rbd_options_of(&j).unwrap();
        assert_eq!(
            (image.to_string(), conf, user),
            ("p/n/i".into(), None, Some("u".into()))
        );
        let j = json!({"image": {"filename": "json:{\"driver\": \"raw\", \"file\": {\"driver\": \"rbd\", \"pool\": \"p\", \"image\": \"i\"}}"}});
        assert_eq!(rbd_options_of(&j).unwrap().0, ImageSpec::new("p", "i"));
        let j = json!({"image": {"filename": "rbd:p/i:conf=/etc/ceph/ceph.conf:id=cinder"}});
        assert_eq!(
            rbd_options_of(&j),
            Some((
                ImageSpec::new("p", "i"),
                Some("/etc/ceph/ceph.conf".into()),
                Some("cinder".into())
            ))
        );
        assert_eq!(
            rbd_options_of(&json!({"image": {"filename": "/var/lib/x.qcow2"}})),
            None
        );
    }
}
