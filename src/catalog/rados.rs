//! The built-in catalog: one guarded RADOS object (see
//! [`crate::ceph::GuardedObject`]) holding every record as JSON in its omap.
//! Keys: `volume/<id>`, `instance/<id>`, `attachment/<volume>/<instance>`,
//! `cluster/<name>`, `pool-map/<cluster>/<pool>/<cluster>`.

use std::collections::BTreeMap;

use super::{unknown_cluster, Attachment, Cas, Catalog, ClusterEntry, Instance, PoolMapping, Volume};
use crate::ceph::{GuardedObject, IoCtx, OmapEntries};
use crate::error::{Error, ErrorKind, Result};

/// Name of the catalog object in its pool.
pub const CATALOG_OBJECT: &str = "livemig.catalog";
/// How often a compare-and-swap is retried when only unrelated records changed.
const RETRIES: usize = 32;

/// The RADOS-backed catalog.
#[derive(Clone)]
pub struct RadosCatalog {
    io: IoCtx,
    object: String,
}

fn volume_key(id: &str) -> String {
    format!("volume/{id}")
}
fn instance_key(id: &str) -> String {
    format!("instance/{id}")
}
fn attachment_prefix(volume_id: &str) -> String {
    format!("attachment/{volume_id}/")
}
fn attachment_key(volume_id: &str, instance_id: &str) -> String {
    format!("attachment/{volume_id}/{instance_id}")
}

fn cluster_key(name: &str) -> String {
    format!("cluster/{name}")
}
fn pool_map_key(m: &PoolMapping) -> String {
    format!("pool-map/{}/{}/{}", m.from_cluster, m.from_pool, m.to_cluster)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| {
        Error::new(ErrorKind::Io, "decode catalog record")
            .target(key.to_owned())
            .message(format!("catalog record `{key}` is corrupt: {e}"))
            .cause(e)
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("catalog records serialize")
}

fn not_found(what: &str, id: &str) -> Error {
    Error::new(ErrorKind::NotInCatalog, "catalog lookup")
        .target(id.to_owned())
        .message(format!("{what} `{id}` is not in the catalog"))
}

impl RadosCatalog {
    /// The catalog stored in `io`'s pool/namespace.
    pub fn new(io: IoCtx) -> Self {
        Self::named(io, CATALOG_OBJECT)
    }

    /// A catalog in the object `object` (several catalogs can share a pool).
    pub fn named(io: IoCtx, object: &str) -> Self {
        RadosCatalog {
            io,
            object: object.to_owned(),
        }
    }

    /// The io-context (pool/namespace) holding the catalog.
    pub fn ioctx(&self) -> &IoCtx {
        &self.io
    }

    /// The raw stored state (generation and records), e.g. to prove that an
    /// operation changed nothing.
    pub async fn raw_state(&self) -> Result<Option<GuardedObject>> {
        self.io.read_guarded(&self.object).await
    }

    /// Registers (or updates) another cluster.
    pub async fn put_cluster(&self, entry: &ClusterEntry) -> Result<()> {
        if entry.name == crate::precheck::LOCAL_CLUSTER {
            return Err(Error::new(ErrorKind::InvalidInput, "add cluster")
                .target(entry.name.clone())
                .message("`local` is the catalog's own cluster; give the other cluster another name"));
        }
        self.put_record(cluster_key(&entry.name), encode(entry)).await
    }

    /// Maps volumes of `from_cluster/from_pool` to `to_cluster/to_pool`
    /// (replacing an earlier mapping between the same two clusters). The
    /// destination cluster must be registered (or `local`), and differ from
    /// the source's pool.
    pub async fn put_pool_mapping(&self, mapping: &PoolMapping) -> Result<()> {
        let m = mapping;
        if m.from_cluster == m.to_cluster && m.from_pool == m.to_pool {
            return Err(Error::new(ErrorKind::InvalidInput, "map pool")
                .target(format!("{}/{}", m.from_cluster, m.from_pool))
                .message(format!(
                    "pool `{}` of cluster `{}` cannot map to itself; name another pool or cluster",
                    m.from_pool, m.from_cluster
                )));
        }
        let known = self.clusters().await?;
        for name in [&m.from_cluster, &m.to_cluster] {
            if name != crate::precheck::LOCAL_CLUSTER && !known.iter().any(|c| &c.name == name) {
                return Err(unknown_cluster(name));
            }
        }
        self.put_record(pool_map_key(m), encode(m)).await
    }

    async fn put_record(&self, key: String, value: Vec<u8>) -> Result<()> {
        for _ in 0..RETRIES {
            let generation = self.raw_state().await?.map(|s| s.generation);
            let set: OmapEntries = vec![(key.clone(), value.clone())];
            match self.io.write_guarded(&self.object, generation, set, Vec::new()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(ErrorKind::Conflict, "catalog write")
            .message(format!("the catalog kept changing; gave up after {RETRIES} attempts")))
    }

    async fn state(&self) -> Result<GuardedObject> {
        Ok(self.raw_state().await?.unwrap_or_default())
    }

    fn attachments_in(state: &GuardedObject, volume_id: &str) -> Result<Vec<Attachment>> {
        let prefix = attachment_prefix(volume_id);
        state
            .omap
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every attachment in the catalog.
    pub async fn all_attachments(&self) -> Result<Vec<Attachment>> {
        self.records("attachment/").await
    }

    /// Every record whose key starts with `prefix`, decoded.
    async fn records<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let state = self.state().await?;
        state
            .omap
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every instance in the catalog.
    pub async fn instances(&self) -> Result<Vec<Instance>> {
        let state = self.state().await?;
        state
            .omap
            .iter()
            .filter(|(k, _)| k.starts_with("instance/"))
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Checks `cas` against `state`; returns the omap changes if it holds.
    fn plan(state: &GuardedObject, cas: &Cas) -> Result<(OmapEntries, Vec<String>)> {
        let conflict = |what: String| Error::new(ErrorKind::Conflict, "catalog compare-and-swap").message(what);
        for v in &cas.expect_volumes {
            match state.omap.get(&volume_key(&v.id)) {
                Some(raw) if decode::<Volume>(&volume_key(&v.id), raw)? == *v => {}
                Some(_) => {
                    return Err(conflict(format!(
                        "volume `{}` is no longer in the expected state",
                        v.id
                    )))
                }
                None => return Err(conflict(format!("volume `{}` no longer exists", v.id))),
            }
        }
        for id in &cas.expect_no_volumes {
            if state.omap.contains_key(&volume_key(id)) {
                return Err(conflict(format!("volume `{id}` already exists")));
            }
        }
        for (vid, expected) in &cas.expect_attachments {
            let mut current = Self::attachments_in(state, vid)?;
            let mut expected = expected.clone();
            current.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            expected.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            if current != expected {
                return Err(conflict(format!("the attachments of volume `{vid}` changed")));
            }
        }
        let mut set: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut remove = Vec::new();
        for v in &cas.put_volumes {
            set.insert(volume_key(&v.id), encode(v));
        }
        for i in &cas.put_instances {
            set.insert(instance_key(&i.id), encode(i));
        }
        for a in &cas.put_attachments {
            set.insert(attachment_key(&a.volume_id, &a.instance_id), encode(a));
        }
        for id in &cas.remove_volumes {
            remove.push(volume_key(id));
        }
        for (vid, iid) in &cas.remove_attachments {
            remove.push(attachment_key(vid, iid));
        }
        Ok((set.into_iter().collect(), remove))
    }
}

#[async_trait::async_trait]
impl Catalog for RadosCatalog {
    async fn volume(&self, id: &str) -> Result<Volume> {
        let state = self.state().await?;
        let key = volume_key(id);
        state
            .omap
            .get(&key)
            .map(|raw| decode(&key, raw))
            .unwrap_or_else(|| Err(not_found("volume", id)))
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        let state = self.state().await?;
        state
            .omap
            .iter()
            .filter(|(k, _)| k.starts_with("volume/"))
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    async fn instance(&self, id: &str) -> Result<Instance> {
        let state = self.state().await?;
        let key = instance_key(id);
        state
            .omap
            .get(&key)
            .map(|raw| decode(&key, raw))
            .unwrap_or_else(|| Err(not_found("instance", id)))
    }

    async fn attachments(&self, volume_id: &str) -> Result<Vec<Attachment>> {
        Self::attachments_in(&self.state().await?, volume_id)
    }

    async fn clusters(&self) -> Result<Vec<ClusterEntry>> {
        self.records("cluster/").await
    }

    async fn pool_mappings(&self) -> Result<Vec<PoolMapping>> {
        self.records("pool-map/").await
    }

    async fn compare_and_swap(&self, cas: Cas) -> Result<()> {
        for _ in 0..RETRIES {
            let state = self.raw_state().await?;
            let generation = state.as_ref().map(|s| s.generation);
            let (set, remove) = Self::plan(&state.unwrap_or_default(), &cas)?;
            match self.io.write_guarded(&self.object, generation, set, remove).await {
                Ok(_) => return Ok(()),
                // Some other record changed: re-read and re-check our expectations.
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(ErrorKind::Conflict, "catalog compare-and-swap")
            .message(format!("the catalog kept changing; gave up after {RETRIES} attempts")))
    }
}
