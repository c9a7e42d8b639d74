//! `migrate catalog ...` and `migrate check`: the built-in catalog for
//! operators without a control plane, and the precheck.

use std::time::Duration;

use clap::{Args, Subcommand};
use livemig::catalog::{
    Access, Attachment, Backing, Cas, Catalog, ClusterEntry, Instance, PoolMapping, RadosCatalog, Volume, VolumeStatus,
};
use livemig::ceph::Cluster;
use livemig::precheck::{precheck, Clusters, Destination, LOCAL_CLUSTER};
use livemig::spec::ImageSpec;
use livemig::{Error, ErrorKind};

/// Where the catalog lives.
#[derive(Args, Clone)]
pub struct CatalogArgs {
    /// Pool holding livemig's catalog (and job records).
    #[arg(long, value_name = "POOL", env = "LIVEMIG_CATALOG_POOL", default_value = "livemig")]
    pub catalog_pool: String,
}

impl CatalogArgs {
    pub async fn open(&self, cluster: &Cluster) -> Result<RadosCatalog, Error> {
        let io = cluster.ioctx(&self.catalog_pool, "").await.map_err(|e| {
            if e.kind() == ErrorKind::PoolNotFound {
                e.message(format!(
                    "the catalog pool `{}` does not exist; create it (`ceph osd pool create {0}` then `rbd pool init {0}`) or pass --catalog-pool",
                    self.catalog_pool
                ))
            } else {
                e
            }
        })?;
        Ok(RadosCatalog::new(io))
    }
}

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Register a volume backed by an existing image (status: available).
    AddVolume {
        /// Volume id.
        id: String,
        /// Its image: POOL/IMAGE or POOL/NAMESPACE/IMAGE.
        #[arg(long, value_name = "SPEC")]
        image: String,
        /// Declared storage location shown to users (e.g. a backend name).
        #[arg(long, default_value = "")]
        location: String,
        /// The cluster the image is on (registered with `add-cluster`).
        #[arg(long, value_name = "NAME", default_value = LOCAL_CLUSTER)]
        cluster: String,
    },
    /// Register an instance.
    AddInstance {
        /// Instance id.
        id: String,
        /// Human name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Record that an instance uses a volume (status becomes in-use).
    Attach {
        /// Volume id.
        volume: String,
        /// Instance id.
        instance: String,
        /// Device name in the instance.
        #[arg(long, default_value = "vdb")]
        device: String,
        /// The instance's QEMU QMP socket.
        #[arg(long, value_name = "PATH", conflicts_with = "test_instance")]
        qmp: Option<String>,
        /// A test instance's control socket.
        #[arg(long, value_name = "PATH")]
        test_instance: Option<String>,
    },
    /// Remove an attachment (status becomes available when none is left).
    Detach {
        /// Volume id.
        volume: String,
        /// Instance id.
        instance: String,
    },
    /// List volumes with their status, backing and attachments.
    List,
    /// Show one volume and its attachments.
    Show {
        /// Volume id.
        volume: String,
    },
    /// Register another Ceph cluster volumes can move to (or update it).
    /// The catalog keeps how to reach it, never a secret.
    AddCluster {
        /// The name backings and `--to-cluster` use.
        name: String,
        /// Its ceph.conf on the hosts that run livemig.
        #[arg(long, value_name = "PATH")]
        conf: String,
        /// Client id without `client.` [default: admin].
        #[arg(long = "id", value_name = "ID")]
        client_id: Option<String>,
        /// Keyring path, overriding the conf's.
        #[arg(long, value_name = "PATH")]
        keyring: Option<String>,
    },
    /// Map a pool to a pool of another cluster: `migrate start VOL
    /// --to-cluster NAME` moves a volume of FROM to TO and gives it
    /// LOCATION, in the same switch.
    MapPool {
        /// Source: [CLUSTER/]POOL (`local` when no cluster is given).
        #[arg(long, value_name = "[CLUSTER/]POOL")]
        from: String,
        /// Destination: CLUSTER/POOL.
        #[arg(long, value_name = "CLUSTER/POOL")]
        to: String,
        /// The storage location volumes declare there [default: keep theirs].
        #[arg(long)]
        location: Option<String>,
    },
    /// List the registered clusters and the pool map.
    Maps,
}

/// `[CLUSTER/]POOL` as (cluster, pool).
fn cluster_pool(s: &str, default_cluster: Option<&str>) -> Result<(String, String), Error> {
    let bad = || {
        Error::new(ErrorKind::InvalidInput, "parse cluster/pool").message(format!(
            "`{s}` is not {}",
            if default_cluster.is_some() {
                "[CLUSTER/]POOL"
            } else {
                "CLUSTER/POOL"
            }
        ))
    };
    match s.split_once('/') {
        Some((c, p)) if !c.is_empty() && !p.is_empty() && !p.contains('/') => Ok((c.into(), p.into())),
        None if !s.is_empty() => default_cluster.map(|c| (c.to_owned(), s.to_owned())).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn describe_attachments(atts: &[Attachment]) -> String {
    if atts.is_empty() {
        return "-".into();
    }
    atts.iter()
        .map(|a| format!("{}:{}", a.instance_id, a.device))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn run_catalog(
    cmd: CatalogCommand,
    catalog: &RadosCatalog,
    cluster: &Cluster,
    json: bool,
    timeout: u64,
) -> Result<serde_json::Value, Error> {
    match cmd {
        CatalogCommand::AddVolume {
            id,
            image,
            location,
            cluster: cluster_name,
        } => {
            let spec: ImageSpec = image.parse()?;
            let clusters = Clusters::local(cluster.clone())
                .with_registered(catalog, &[&cluster_name], Duration::from_secs(timeout))
                .await?;
            let img = clusters
                .get(&cluster_name)?
                .ioctx(&spec.pool, &spec.namespace)
                .await?
                .open_image_read_only(&spec.image, None)
                .await?;
            let size = img.info().await?.size;
            img.close().await;
            let backing = Backing {
                cluster: cluster_name,
                image: spec,
            };
            if let Some(owner) = catalog.volumes().await?.into_iter().find(|v| v.backing == backing) {
                return Err(Error::new(ErrorKind::InvalidState, "catalog add-volume")
                    .message(format!("image `{backing}` already backs volume `{}`", owner.id)));
            }
            let volume = Volume {
                id: id.clone(),
                size,
                status: VolumeStatus::Available,
                migration: None,
                backing,
                location,
            };
            catalog
                .compare_and_swap(Cas {
                    expect_no_volumes: vec![id.clone()],
                    put_volumes: vec![volume.clone()],
                    ..Default::default()
                })
                .await
                .map_err(|e| e.message(format!("volume `{id}` is already registered")))?;
            if !json {
                println!("registered volume {id} ({} bytes) on {}", volume.size, volume.backing);
            }
            Ok(serde_json::json!({"volume": volume}))
        }
        CatalogCommand::AddInstance { id, name } => {
            let instance = Instance { id: id.clone(), name };
            catalog
                .compare_and_swap(Cas {
                    put_instances: vec![instance.clone()],
                    ..Default::default()
                })
                .await?;
            if !json {
                println!("registered instance {id}");
            }
            Ok(serde_json::json!({"instance": instance}))
        }
        CatalogCommand::Attach {
            volume,
            instance,
            device,
            qmp,
            test_instance,
        } => {
            let v = catalog.volume(&volume).await?;
            catalog.instance(&instance).await?;
            let current = catalog.attachments(&volume).await?;
            if v.migration.is_some() || !matches!(v.status, VolumeStatus::Available | VolumeStatus::InUse) {
                return Err(Error::new(ErrorKind::InvalidState, "catalog attach")
                    .message(format!("volume `{volume}` is {} and cannot be attached now", v.status)));
            }
            let access = match (qmp, test_instance) {
                (Some(socket), _) => Access::Qmp { socket },
                (None, Some(socket)) => Access::TestInstance { socket },
                (None, None) => Access::None,
            };
            let attachment = Attachment {
                volume_id: volume.clone(),
                instance_id: instance,
                device,
                access,
                connection: v.backing.clone(),
            };
            let updated = Volume {
                status: VolumeStatus::InUse,
                ..v.clone()
            };
            catalog
                .compare_and_swap(Cas {
                    expect_volumes: vec![v],
                    expect_attachments: vec![(volume.clone(), current)],
                    put_volumes: vec![updated],
                    put_attachments: vec![attachment.clone()],
                    ..Default::default()
                })
                .await?;
            if !json {
                println!("attached volume {volume} to instance {}", attachment.instance_id);
            }
            Ok(serde_json::json!({"attachment": attachment}))
        }
        CatalogCommand::Detach { volume, instance } => {
            let v = catalog.volume(&volume).await?;
            let current = catalog.attachments(&volume).await?;
            if !current.iter().any(|a| a.instance_id == instance) {
                return Err(Error::new(ErrorKind::NotInCatalog, "catalog detach")
                    .message(format!("volume `{volume}` is not attached to instance `{instance}`")));
            }
            if v.migration.is_some() {
                return Err(
                    Error::new(ErrorKind::AlreadyMigrating, "catalog detach").message(format!(
                        "volume `{volume}` is being migrated; detach after the migration"
                    )),
                );
            }
            let left = current.len() - 1;
            let updated = Volume {
                status: if left == 0 { VolumeStatus::Available } else { v.status },
                ..v.clone()
            };
            catalog
                .compare_and_swap(Cas {
                    expect_volumes: vec![v],
                    expect_attachments: vec![(volume.clone(), current)],
                    put_volumes: vec![updated],
                    remove_attachments: vec![(volume.clone(), instance.clone())],
                    ..Default::default()
                })
                .await?;
            if !json {
                println!("detached volume {volume} from instance {instance}");
            }
            Ok(serde_json::json!({"detached": {"volume": volume, "instance": instance}}))
        }
        CatalogCommand::List => {
            let mut rows = Vec::new();
            for v in catalog.volumes().await? {
                let atts = catalog.attachments(&v.id).await?;
                rows.push(serde_json::json!({"volume": v, "attachments": atts}));
                if !json {
                    println!(
                        "{:<20} {:<12} {:<10} {:<40} {}",
                        v.id,
                        v.status.to_string(),
                        v.migration.as_deref().unwrap_or("-"),
                        v.backing.to_string(),
                        describe_attachments(&atts)
                    );
                }
            }
            Ok(serde_json::json!({"volumes": rows}))
        }
        CatalogCommand::AddCluster {
            name,
            conf,
            client_id,
            keyring,
        } => {
            let entry = ClusterEntry {
                name: name.clone(),
                conf_path: conf,
                client_id,
                keyring,
            };
            catalog.put_cluster(&entry).await?;
            if !json {
                println!("registered cluster {name} ({})", entry.conf_path);
            }
            Ok(serde_json::json!({"cluster": entry}))
        }
        CatalogCommand::MapPool { from, to, location } => {
            let (from_cluster, from_pool) = cluster_pool(&from, Some(LOCAL_CLUSTER))?;
            let (to_cluster, to_pool) = cluster_pool(&to, None)?;
            let mapping = PoolMapping {
                from_cluster,
                from_pool,
                to_cluster,
                to_pool,
                location,
            };
            catalog.put_pool_mapping(&mapping).await?;
            if !json {
                println!(
                    "mapped {}/{} to {}/{}",
                    mapping.from_cluster, mapping.from_pool, mapping.to_cluster, mapping.to_pool
                );
            }
            Ok(serde_json::json!({"mapping": mapping}))
        }
        CatalogCommand::Maps => {
            let (clusters, mappings) = (catalog.clusters().await?, catalog.pool_mappings().await?);
            if !json {
                for c in &clusters {
                    println!("cluster {:<16} {}", c.name, c.conf_path);
                }
                for m in &mappings {
                    println!(
                        "map {}/{} -> {}/{}{}",
                        m.from_cluster,
                        m.from_pool,
                        m.to_cluster,
                        m.to_pool,
                        m.location
                            .as_ref()
                            .map(|l| format!(" (location {l})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(serde_json::json!({"clusters": clusters, "pool_map": mappings}))
        }
        CatalogCommand::Show { volume } => {
            let v = catalog.volume(&volume).await?;
            let atts = catalog.attachments(&volume).await?;
            let out = serde_json::json!({"volume": v, "attachments": atts});
            if !json {
                println!("{}", serde_json::to_string_pretty(&out).expect("serializable"));
            }
            Ok(out)
        }
    }
}

pub async fn run_check(
    volume: &str,
    destination: &Destination,
    catalog: &RadosCatalog,
    clusters: &Clusters,
    json: bool,
) -> Result<serde_json::Value, Error> {
    let report = precheck(catalog, clusters, volume, destination).await?;
    if !json {
        for r in &report.rules {
            println!(
                "{} {:<18} {}",
                if r.passed { "pass" } else { "FAIL" },
                r.rule,
                r.message
            );
        }
    }
    let out = serde_json::json!({"event": "precheck", "passed": report.passed(), "report": report});
    if !report.passed() && json {
        println!("{out}");
    }
    report.into_result()?;
    Ok(out)
}
