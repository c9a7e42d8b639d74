//! The attachment catalog: volumes, instances, and which instance uses
//! which volume through which image.
//!
//! A control plane (Cinder/Nova-like) owns this data; livemig reads it and
//! changes it only through [`Catalog::compare_and_swap`]: the expected state
//! of every record involved goes in, the new state comes out, or nothing
//! changes. The migration's commit point (the switch) is one such call, so
//! a crash leaves either the old attachment or the new one, never both and
//! never neither. [`RadosCatalog`] is the built-in implementation (one
//! guarded RADOS object), used by the `migrate` binary and the tests.

mod rados;

pub use rados::RadosCatalog;

use crate::error::{Error, ErrorKind, Result};
use crate::spec::ImageSpec;

/// Volume status, in Cinder's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeStatus {
    /// Not attached, usable.
    Available,
    /// Attached to an instance.
    InUse,
    /// Being detached; during a migration: the source.
    Detaching,
    /// Being attached; during a migration: the reserved destination.
    Attaching,
    /// Under maintenance; not to be touched.
    Maintenance,
    /// Broken; needs a person.
    Error,
}

impl std::fmt::Display for VolumeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Where a volume's data lives: a cluster (by the name the catalog knows it
/// under) and an image in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Backing {
    /// Cluster name as registered in the catalog; `local` is the catalog's own.
    pub cluster: String,
    /// The image.
    #[serde(flatten)]
    pub image: ImageSpec,
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.cluster, self.image)
    }
}

/// A volume record. Its id stays the same across a migration; its backing changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// Stable id.
    pub id: String,
    /// Provisioned size in bytes.
    pub size: u64,
    /// Status.
    pub status: VolumeStatus,
    /// Set while a migration holds the volume (the job id), `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// The image holding the data.
    pub backing: Backing,
    /// The declared storage location (what the control plane shows, e.g. a backend name).
    #[serde(default)]
    pub location: String,
}

/// How livemig reaches the instance that uses a volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Access {
    /// No channel (a detached or unmanaged user).
    None,
    /// The instance's QEMU, through its QMP socket.
    Qmp {
        /// Path of the QMP unix socket.
        socket: String,
    },
    /// A test instance's control socket.
    TestInstance {
        /// Path of the control unix socket.
        socket: String,
    },
}

/// An instance (a VM or other volume user).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// Stable id.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
}

/// An instance's use of a volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The volume.
    pub volume_id: String,
    /// The instance.
    pub instance_id: String,
    /// The device name in the instance (e.g. `vdb`).
    pub device: String,
    /// How livemig reaches the instance.
    pub access: Access,
    /// The image the instance has open (the volume's backing, unless a
    /// migration is between switch and re-point).
    pub connection: Backing,
}

/// Why livemig changes the catalog: lets a control plane audit each change
/// or apply its own rules to one kind (e.g. refuse switches during a freeze).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CasPurpose {
    /// A migration takes the volume (status and job id set).
    Mark,
    /// The commit point: the volume's backing becomes the destination.
    Switch,
    /// The instance now uses the destination: its attachment follows.
    Connect,
    /// The migration is done and lets go of the volume.
    Release,
    /// An abort puts the volume back as it was before the migration.
    Restore,
    /// Anything else (catalog administration).
    #[default]
    Other,
}

/// One atomic change: every expectation must hold, then every put/remove is
/// applied, all or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cas {
    /// Why the change is made.
    pub purpose: CasPurpose,
    /// Volumes that must currently equal these records exactly.
    pub expect_volumes: Vec<Volume>,
    /// Volume ids that must not exist.
    pub expect_no_volumes: Vec<String>,
    /// For each volume id, its attachments must currently be exactly these.
    pub expect_attachments: Vec<(String, Vec<Attachment>)>,
    /// Volumes to write.
    pub put_volumes: Vec<Volume>,
    /// Volume ids to delete.
    pub remove_volumes: Vec<String>,
    /// Attachments to write.
    pub put_attachments: Vec<Attachment>,
    /// Attachments to delete, as (volume id, instance id).
    pub remove_attachments: Vec<(String, String)>,
    /// Instances to write.
    pub put_instances: Vec<Instance>,
}

/// Another Ceph cluster the catalog's volumes can live on, and how to reach
/// it (no secrets: the keyring stays a path on the host).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterEntry {
    /// The name backings use (`local` is the catalog's own cluster).
    pub name: String,
    /// Path of its ceph.conf on the hosts that run livemig.
    pub conf_path: String,
    /// Client id without `client.`; `admin` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Keyring path, overriding the conf's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<String>,
}

/// Where volumes of one pool go when they move to another cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolMapping {
    /// The source cluster (`local` for the catalog's own).
    pub from_cluster: String,
    /// The source pool.
    pub from_pool: String,
    /// The destination cluster.
    pub to_cluster: String,
    /// The destination pool.
    pub to_pool: String,
    /// The storage location a volume declares once there (its
    /// [`Volume::location`]); `None` keeps the volume's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What livemig needs from a control plane's database.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// A volume; [`crate::ErrorKind::NotInCatalog`] if unknown.
    async fn volume(&self, id: &str) -> Result<Volume>;
    /// All volumes.
    async fn volumes(&self) -> Result<Vec<Volume>>;
    /// An instance; [`crate::ErrorKind::NotInCatalog`] if unknown.
    async fn instance(&self, id: &str) -> Result<Instance>;
    /// The attachments of a volume (normally zero or one).
    async fn attachments(&self, volume_id: &str) -> Result<Vec<Attachment>>;
    /// Applies `cas` atomically, or fails with [`crate::ErrorKind::Conflict`]
    /// and changes nothing.
    async fn compare_and_swap(&self, cas: Cas) -> Result<()>;
    /// The other clusters volumes can move to; none by default.
    async fn clusters(&self) -> Result<Vec<ClusterEntry>> {
        Ok(Vec::new())
    }
    /// The pool map for moves between clusters; empty by default.
    async fn pool_mappings(&self) -> Result<Vec<PoolMapping>> {
        Ok(Vec::new())
    }
}

/// A cluster name the catalog does not know.
pub(crate) fn unknown_cluster(name: &str) -> Error {
    Error::new(ErrorKind::NotInCatalog, "find cluster")
        .target(name.to_owned())
        .message(format!(
            "cluster `{name}` is not registered in the catalog: `migrate catalog add-cluster {name} --conf PATH`"
        ))
}
