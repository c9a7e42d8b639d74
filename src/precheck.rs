//! The preconditions of a migration, checked without side effects.
//!
//! Every rule is evaluated and reported (with the numbers behind it), so an
//! operator sees all problems at once; the first failure, in rule order, is
//! the error a migration would stop with. Each rule fails with its own
//! [`ErrorKind`].

use std::collections::HashMap;

use crate::catalog::{Backing, Catalog, VolumeStatus};
use crate::ceph::{Cluster, ClusterConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::spec::ImageSpec;

/// The name backings give the catalog's own cluster.
pub const LOCAL_CLUSTER: &str = "local";

/// The clusters a catalog's backings name, connected.
#[derive(Clone)]
pub struct Clusters {
    by_name: HashMap<String, Cluster>,
}

impl Clusters {
    /// Only the catalog's own cluster, under the name `local`.
    pub fn local(cluster: Cluster) -> Self {
        Clusters {
            by_name: HashMap::from([("local".to_string(), cluster)]),
        }
    }

    /// Whether a cluster is connected under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Adds a cluster under `name`.
    pub fn with(mut self, name: impl Into<String>, cluster: Cluster) -> Self {
        self.by_name.insert(name.into(), cluster);
        self
    }

    /// These clusters and the ones called `names` that the catalog
    /// registers, connected (waiting at most `timeout` for each); a name
    /// the catalog does not know is [`ErrorKind::NotInCatalog`].
    pub async fn with_registered(
        mut self,
        catalog: &dyn Catalog,
        names: &[&str],
        timeout: std::time::Duration,
    ) -> Result<Self> {
        let registered = catalog.clusters().await?;
        for name in names {
            if self.by_name.contains_key(*name) {
                continue;
            }
            let entry = registered
                .iter()
                .find(|c| c.name == *name)
                .ok_or_else(|| crate::catalog::unknown_cluster(name))?;
            let config = ClusterConfig {
                conf_path: Some(entry.conf_path.clone().into()),
                client_id: entry.client_id.clone(),
                keyring: entry.keyring.clone().map(Into::into),
                connect_timeout: timeout,
                ..Default::default()
            };
            let cluster = Cluster::connect(config).await.map_err(|e| {
                let msg = format!("cluster `{name}` (as the catalog registers it): {}", e.detail());
                e.message(msg)
            })?;
            self.by_name.insert((*name).to_owned(), cluster);
        }
        Ok(self)
    }

    /// The cluster called `name`.
    pub fn get(&self, name: &str) -> Result<&Cluster> {
        self.by_name.get(name).ok_or_else(|| {
            Error::new(ErrorKind::Config, "find cluster")
                .target(name.to_owned())
                .message(format!(
                    "cluster `{name}` is not connected here: register it in the catalog (`migrate catalog add-cluster {name} --conf PATH`) or add it to the migrator (`livemig_add_cluster`, Python `Migrator.add_cluster`)"
                ))
        })
    }
}

/// Where a volume should go: a pool (the image keeps its name) or a named image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destination {
    /// Cluster name (`local` for the catalog's own).
    pub cluster: String,
    /// Pool, namespace and image; `image` is `None` when only a pool was given.
    pub pool: String,
    /// Namespace ("" for the default).
    pub namespace: String,
    /// Image name, if given.
    pub image: Option<String>,
    /// A separate pool for the new image's data objects, if any.
    pub data_pool: Option<String>,
    /// The storage location the volume declares once there (the pool
    /// map's); `None` keeps the volume's.
    pub location: Option<String>,
}

impl Destination {
    /// Parses `[CLUSTER:]POOL[/IMAGE]` (`POOL/NAMESPACE/IMAGE` too): on the
    /// cluster named before the colon, or on the local one.
    pub fn parse_on_any_cluster(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((cluster, rest)) if !cluster.is_empty() => Self::parse(cluster, rest),
            Some(_) => Err(Error::new(ErrorKind::InvalidInput, "parse destination")
                .target(s.to_owned())
                .message(format!(
                    "`{s}` names no cluster before the colon: give CLUSTER:POOL[/IMAGE] or POOL[/IMAGE]"
                ))),
            None => Self::parse(LOCAL_CLUSTER, s),
        }
    }

    /// This destination with the volume declaring `location` once there.
    pub fn with_location(self, location: Option<String>) -> Self {
        Destination { location, ..self }
    }

    /// Parses `POOL`, `POOL/IMAGE` or `POOL/NAMESPACE/IMAGE` on `cluster`.
    pub fn parse(cluster: &str, s: &str) -> Result<Self> {
        if !s.contains('/') {
            let spec: ImageSpec = format!("{s}/x").parse()?;
            return Ok(Destination {
                cluster: cluster.into(),
                pool: spec.pool,
                namespace: String::new(),
                image: None,
                data_pool: None,
                location: None,
            });
        }
        let spec: ImageSpec = s.parse()?;
        Ok(Destination {
            cluster: cluster.into(),
            pool: spec.pool,
            namespace: spec.namespace,
            image: Some(spec.image),
            data_pool: None,
            location: None,
        })
    }

    /// Where the pool map sends `volume_id` on cluster `to_cluster`: the
    /// mapping of its current cluster and pool to that cluster (the image
    /// keeps its name; the volume takes the mapping's location).
    pub async fn by_pool_map(catalog: &dyn Catalog, volume_id: &str, to_cluster: &str) -> Result<Self> {
        let volume = catalog.volume(volume_id).await?;
        let from = &volume.backing;
        if to_cluster != LOCAL_CLUSTER && !catalog.clusters().await?.iter().any(|c| c.name == to_cluster) {
            return Err(crate::catalog::unknown_cluster(to_cluster));
        }
        let mapping = catalog
            .pool_mappings()
            .await?
            .into_iter()
            .find(|m| m.from_cluster == from.cluster && m.from_pool == from.image.pool && m.to_cluster == to_cluster)
            .ok_or_else(|| {
                Error::new(ErrorKind::InvalidInput, "map pool")
                    .target(volume_id.to_owned())
                    .message(format!(
                        "no pool mapping from `{}/{}` (volume `{volume_id}`) to cluster `{to_cluster}`: `migrate catalog map-pool --from {}/{} --to {to_cluster}/POOL`",
                        from.cluster, from.image.pool, from.cluster, from.image.pool
                    ))
            })?;
        Ok(Destination {
            cluster: mapping.to_cluster,
            pool: mapping.to_pool,
            namespace: from.image.namespace.clone(),
            image: None,
            data_pool: None,
            location: mapping.location,
        })
    }

    /// This destination with its data objects in `data_pool`.
    pub fn with_data_pool(self, data_pool: Option<String>) -> Self {
        Destination { data_pool, ..self }
    }

    /// The destination image for a source image named `source_image`.
    pub fn backing(&self, source_image: &str) -> Backing {
        Backing {
            cluster: self.cluster.clone(),
            image: ImageSpec {
                pool: self.pool.clone(),
                namespace: self.namespace.clone(),
                image: self.image.clone().unwrap_or_else(|| source_image.to_owned()),
            },
        }
    }
}

/// The outcome of one rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleResult {
    /// Stable rule name.
    pub rule: &'static str,
    /// Whether it holds. A rule that could not be evaluated (because one it
    /// depends on failed) is not passed and says so.
    pub passed: bool,
    /// What was found, in words.
    pub message: String,
    /// The numbers behind it.
    pub numbers: serde_json::Value,
    /// The error kind a failure of this rule is reported as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

/// Every rule's outcome for one volume and destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrecheckReport {
    /// The volume.
    pub volume: String,
    /// Its current image, if known.
    pub source: Option<Backing>,
    /// The image it would move to, if known.
    pub destination: Option<Backing>,
    /// Bytes allocated in the source image (what has to be copied).
    pub used_bytes: Option<u64>,
    /// Rules in order.
    pub rules: Vec<RuleResult>,
}

impl PrecheckReport {
    /// Whether every rule holds.
    pub fn passed(&self) -> bool {
        self.rules.iter().all(|r| r.passed)
    }

    /// The first failed rule as an error, or `Ok` if all hold.
    pub fn into_result(self) -> Result<PrecheckReport> {
        match self.rules.iter().find(|r| !r.passed) {
            None => Ok(self),
            Some(r) => Err(Error::new(r.error_kind.unwrap_or(ErrorKind::InvalidState), "precheck")
                .target(self.volume.clone())
                .message(format!("precheck rule `{}` failed: {}", r.rule, r.message))),
        }
    }
}

struct Rules(Vec<RuleResult>);

impl Rules {
    fn pass(&mut self, rule: &'static str, message: String, numbers: serde_json::Value) {
        self.0.push(RuleResult {
            rule,
            passed: true,
            message,
            numbers,
            error_kind: None,
        });
    }
    fn fail(&mut self, rule: &'static str, kind: ErrorKind, message: String, numbers: serde_json::Value) {
        self.0.push(RuleResult {
            rule,
            passed: false,
            message,
            numbers,
            error_kind: Some(kind),
        });
    }
    fn fail_with(&mut self, rule: &'static str, e: &Error) {
        self.fail(rule, e.kind(), e.to_string(), serde_json::Value::Null);
    }
    fn skip(&mut self, rule: &'static str, because: &str) {
        self.0.push(RuleResult {
            rule,
            passed: false,
            message: format!("not checked: {because}"),
            numbers: serde_json::Value::Null,
            error_kind: None,
        });
    }
}

/// Checks whether `volume_id` can move to `to`. Reads only.
pub async fn precheck(
    catalog: &dyn Catalog,
    clusters: &Clusters,
    volume_id: &str,
    to: &Destination,
) -> Result<PrecheckReport> {
    let mut rules = Rules(Vec::new());
    let mut report = PrecheckReport {
        volume: volume_id.to_owned(),
        source: None,
        destination: None,
        used_bytes: None,
        rules: Vec::new(),
    };
    let volume = match catalog.volume(volume_id).await {
        Ok(v) => {
            rules.pass(
                "volume_registered",
                format!("volume `{volume_id}` is in the catalog"),
                serde_json::json!({"size": v.size}),
            );
            Some(v)
        }
        Err(e) if e.kind() == ErrorKind::NotInCatalog => {
            rules.fail_with("volume_registered", &e);
            None
        }
        Err(e) => return Err(e),
    };
    let Some(volume) = volume else {
        for r in [
            "single_attachment",
            "not_migrating",
            "volume_status",
            "source_image",
            "destination_pool",
            "distinct_images",
            "destination_image",
            "capacity",
            "pool_space",
        ] {
            rules.skip(r, "the volume is not in the catalog");
        }
        report.rules = rules.0;
        return Ok(report);
    };
    report.source = Some(volume.backing.clone());

    // Attachments and statuses.
    let attachments = catalog.attachments(volume_id).await?;
    let instances: Vec<&str> = attachments.iter().map(|a| a.instance_id.as_str()).collect();
    if attachments.len() <= 1 {
        rules.pass(
            "single_attachment",
            format!("attached to {} instance(s)", attachments.len()),
            serde_json::json!({"instances": instances}),
        );
    } else {
        rules.fail(
            "single_attachment",
            ErrorKind::AttachedTwice,
            format!(
                "volume `{volume_id}` is attached to {} instances ({}); a volume can move only with one user",
                attachments.len(),
                instances.join(", ")
            ),
            serde_json::json!({"instances": instances}),
        );
    }
    match &volume.migration {
        None => rules.pass(
            "not_migrating",
            "no migration holds the volume".into(),
            serde_json::Value::Null,
        ),
        Some(job) => rules.fail(
            "not_migrating",
            ErrorKind::AlreadyMigrating,
            format!("migration `{job}` already holds volume `{volume_id}`"),
            serde_json::json!({"job": job}),
        ),
    }
    let status_ok = matches!(
        (volume.status, attachments.len()),
        (VolumeStatus::Available, 0) | (VolumeStatus::InUse, 1)
    );
    if status_ok {
        rules.pass(
            "volume_status",
            format!(
                "status {} agrees with {} attachment(s)",
                volume.status,
                attachments.len()
            ),
            serde_json::json!({"status": volume.status}),
        );
    } else {
        rules.fail(
            "volume_status",
            ErrorKind::InvalidState,
            format!("status is {} with {} attachment(s); a volume moves only when available (detached) or in-use (attached once)", volume.status, attachments.len()),
            serde_json::json!({"status": volume.status}),
        );
    }

    // The source image.
    let source_cluster = clusters.get(&volume.backing.cluster)?;
    let src = &volume.backing.image;
    let source = async {
        let io = source_cluster.ioctx(&src.pool, &src.namespace).await?;
        let img = io.open_image_read_only(&src.image, None).await?;
        let info = img.info().await?;
        let used = img.allocated_bytes(true).await?;
        img.close().await;
        Result::Ok((info, used))
    }
    .await;
    let (src_info, used) = match source {
        Ok((info, used)) => {
            rules.pass(
                "source_image",
                format!("`{}` exists, {used} bytes allocated of {}", volume.backing, info.size),
                serde_json::json!({"size": info.size, "used_bytes": used}),
            );
            report.used_bytes = Some(used);
            (Some(info), Some(used))
        }
        Err(e) => {
            rules.fail_with("source_image", &e);
            (None, None)
        }
    };

    // The destination.
    let dest = to.backing(&src.image);
    report.destination = Some(dest.clone());
    let dest_cluster = clusters.get(&dest.cluster)?;
    let dest_io = match dest_cluster.ioctx(&dest.image.pool, &dest.image.namespace).await {
        Ok(io) => {
            rules.pass(
                "destination_pool",
                format!("pool `{}` exists", dest.image.pool_spec()),
                serde_json::Value::Null,
            );
            Some(io)
        }
        Err(e) => {
            rules.fail_with("destination_pool", &e);
            None
        }
    };
    let same = dest_cluster.fsid() == source_cluster.fsid() && dest.image == *src;
    if same {
        rules.fail(
            "distinct_images",
            ErrorKind::SameImage,
            format!("the destination is the source image `{dest}` itself"),
            serde_json::Value::Null,
        );
    } else {
        rules.pass(
            "distinct_images",
            format!("`{dest}` differs from `{}`", volume.backing),
            serde_json::Value::Null,
        );
    }

    let mut capacity = src_info.as_ref().map(|i| i.size);
    match &dest_io {
        None => rules.skip("destination_image", "the destination pool is missing"),
        Some(_) if same => rules.skip("destination_image", "the destination is the source"),
        Some(io) => match io.image_exists(&dest.image.image).await? {
            false => rules.pass(
                "destination_image",
                format!("`{dest}` does not exist yet and will be created"),
                serde_json::json!({"exists": false}),
            ),
            true => {
                let registered = catalog.volumes().await?.into_iter().find(|v| v.backing == dest);
                let img = io.open_image_read_only(&dest.image.image, None).await?;
                let (size, watchers) = (img.info().await?.size, img.watchers().await?.len());
                img.close().await;
                capacity = Some(size);
                let numbers = serde_json::json!({"exists": true, "size": size, "watchers": watchers});
                match registered {
                    None => rules.fail(
                        "destination_image",
                        ErrorKind::DestinationExists,
                        format!("`{dest}` exists but no volume in the catalog owns it; remove it or register it"),
                        numbers,
                    ),
                    Some(d) => {
                        let attached = catalog.attachments(&d.id).await?.len();
                        if d.status != VolumeStatus::Available || attached > 0 || d.migration.is_some() || watchers > 0
                        {
                            rules.fail(
                                "destination_image",
                                ErrorKind::DestinationInUse,
                                format!(
                                    "destination volume `{}` is not free: status {}, {attached} attachment(s), {watchers} client(s) with it open{}",
                                    d.id,
                                    d.status,
                                    d.migration.as_ref().map(|j| format!(", held by migration {j}")).unwrap_or_default()
                                ),
                                numbers,
                            );
                        } else {
                            rules.pass(
                                "destination_image",
                                format!("destination volume `{}` is available and unused", d.id),
                                numbers,
                            );
                        }
                    }
                }
            }
        },
    }

    match (used, capacity) {
        (Some(used), Some(cap)) if cap >= used => rules.pass(
            "capacity",
            format!("destination capacity {cap} bytes >= {used} bytes used"),
            serde_json::json!({"capacity_bytes": cap, "used_bytes": used}),
        ),
        (Some(used), Some(cap)) => rules.fail(
            "capacity",
            ErrorKind::DestinationTooSmall,
            format!("destination holds {cap} bytes but the source uses {used}"),
            serde_json::json!({"capacity_bytes": cap, "used_bytes": used}),
        ),
        _ => rules.skip("capacity", "the source or destination could not be read"),
    }

    // The data goes to the destination's data pool, if it has one.
    let mut space_io = dest_io.as_ref();
    if let Some(pool) = &to.data_pool {
        match dest_cluster.check_data_pool(pool).await {
            Ok(()) => rules.pass(
                "data_pool",
                format!("data pool `{pool}` takes RBD data"),
                serde_json::Value::Null,
            ),
            Err(e) => {
                space_io = None;
                rules.fail_with("data_pool", &e);
            }
        }
    }
    let space_pool = to.data_pool.as_deref().unwrap_or(&dest.image.pool);
    match (used, space_io) {
        (Some(used), Some(_)) => {
            let usage = dest_cluster.pool_usage(space_pool).await?;
            let quota_left = usage.quota_left();
            let numbers = serde_json::json!({"max_avail": usage.max_avail, "quota_bytes": usage.quota_bytes, "stored": usage.stored, "used_bytes": used});
            if usage.max_avail < used {
                rules.fail(
                    "pool_space",
                    ErrorKind::NoSpace,
                    format!(
                        "pool `{space_pool}` has room for {} bytes, the source uses {used}",
                        usage.max_avail
                    ),
                    numbers,
                );
            } else if quota_left.is_some_and(|left| left < used) {
                rules.fail(
                    "pool_space",
                    ErrorKind::NoSpace,
                    format!(
                        "pool `{space_pool}` quota leaves {} bytes, the source uses {used}",
                        quota_left.unwrap_or(0)
                    ),
                    numbers,
                );
            } else {
                rules.pass(
                    "pool_space",
                    format!("pool `{space_pool}` has room ({} bytes free)", usage.max_avail),
                    numbers,
                );
            }
        }
        _ => rules.skip("pool_space", "the source or destination pool could not be read"),
    }

    report.rules = rules.0;
    Ok(report)
}
