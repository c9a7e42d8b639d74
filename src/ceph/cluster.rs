//! Cluster connections and pool io-contexts.

use std::ffi::CString;
use std::os::raw::c_char;
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use livemig_ceph_sys as sys;

use super::release::release;
use super::{blocking, check, cstring};
use crate::error::{Error, ErrorKind, Result};

/// How to reach a cluster, the way the `rbd` CLI takes it: a cluster name
/// (`--cluster`, selecting `/etc/ceph/NAME.conf`), an explicit ceph.conf
/// (`--conf`, else `CEPH_CONF`, else the default search path), a client id
/// (`--id`, default `admin`) and a keyring.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Cluster name; `ceph` when unset.
    pub cluster_name: Option<String>,
    /// Path of the ceph.conf; when unset librados searches `CEPH_CONF`,
    /// `/etc/ceph/$cluster.conf`, `~/.ceph/$cluster.conf`, `./$cluster.conf`.
    pub conf_path: Option<PathBuf>,
    /// Client id without the `client.` prefix; `admin` when unset.
    pub client_id: Option<String>,
    /// Keyring path, overriding the conf's.
    pub keyring: Option<PathBuf>,
    /// Extra `key = value` options applied after the conf file.
    pub options: Vec<(String, String)>,
    /// How long to wait for the monitors before reporting the cluster unreachable.
    pub connect_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_name: None,
            conf_path: None,
            client_id: None,
            keyring: None,
            options: Vec::new(),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

impl ClusterConfig {
    /// A config reading the given ceph.conf.
    pub fn from_conf(path: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            conf_path: Some(path.into()),
            ..Default::default()
        }
    }

    /// What this config points at, for messages.
    pub fn describe(&self) -> String {
        match (&self.conf_path, &self.cluster_name) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(n)) => format!("cluster `{n}`"),
            (None, None) => match std::env::var("CEPH_CONF") {
                Ok(p) => p,
                Err(_) => "the default ceph.conf".into(),
            },
        }
    }
}

struct RadosHandle(sys::rados_t);
// SAFETY: a connected rados_t is documented as safe to use from many threads.
unsafe impl Send for RadosHandle {}
// SAFETY: as above; librados serialises internally.
unsafe impl Sync for RadosHandle {}

struct ClusterInner {
    handle: RadosHandle,
    fsid: String,
    describe: String,
    /// The ceph.conf read (given, or from CEPH_CONF), for clients that
    /// must open the same cluster themselves (QEMU's rbd driver).
    conf_path: Option<PathBuf>,
    /// How it was connected (its client id; to probe it anew).
    config: ClusterConfig,
    /// Holders of a raised operation priority, and the value to restore.
    priority_raises: std::sync::Mutex<(usize, Option<String>)>,
}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        let h = RadosHandle(self.handle.0);
        release(move || {
            let h = h;
            // SAFETY: the handle is connected and every io-context made from it
            // is gone (each holds a reference to this ClusterInner).
            unsafe { sys::rados_shutdown(h.0) };
        });
    }
}

/// A connection to one Ceph cluster. Cheap to clone; two clusters at once are fine.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("fsid", &self.inner.fsid)
            .field("conf", &self.inner.describe)
            .finish()
    }
}

/// Usage of a pool, from `ceph df`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    /// Bytes stored in the pool.
    pub stored: u64,
    /// Bytes that can still be written to the pool, as the monitors see it.
    pub max_avail: u64,
    /// The pool's byte quota, 0 if none.
    pub quota_bytes: u64,
}

impl PoolUsage {
    /// Bytes the quota still allows, `None` without a quota.
    pub fn quota_left(&self) -> Option<u64> {
        (self.quota_bytes > 0).then(|| self.quota_bytes.saturating_sub(self.stored))
    }

    /// Bytes the pool can still take: its free capacity, or what its quota
    /// leaves if that is less.
    pub fn room(&self) -> u64 {
        self.quota_left()
            .map_or(self.max_avail, |left| left.min(self.max_avail))
    }
}

impl Cluster {
    /// Connects as configured. A cluster that does not answer within
    /// `connect_timeout` is [`ErrorKind::ClusterUnreachable`].
    pub async fn connect(config: ClusterConfig) -> Result<Cluster> {
        blocking(move || connect_blocking(&config)).await
    }

    /// Whether the cluster answers now: a new connection, made as this one
    /// was, reaches its monitors within `within` (an established
    /// connection to a cluster since lost may look alive to its holder;
    /// a failure other than not answering counts as answering).
    pub async fn answers(&self, within: Duration) -> bool {
        let config = ClusterConfig {
            connect_timeout: within,
            ..self.inner.config.clone()
        };
        match Cluster::connect(config).await {
            Err(e) => e.kind() != ErrorKind::ClusterUnreachable,
            Ok(_) => true,
        }
    }

    /// The cluster's fsid (identifies it across connections).
    pub fn fsid(&self) -> &str {
        &self.inner.fsid
    }

    /// What the cluster was reached through (conf path or name), for messages.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    pub(crate) fn raw(&self) -> sys::rados_t {
        self.inner.handle.0
    }

    /// Names of all pools.
    pub async fn pool_list(&self) -> Result<Vec<String>> {
        let cluster = self.clone();
        blocking(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                // SAFETY: buf is writable for buf.len() bytes.
                let ret = unsafe { sys::rados_pool_list(cluster.raw(), buf.as_mut_ptr().cast(), buf.len()) };
                let needed = check("rados_pool_list", ret)? as usize;
                if needed <= buf.len() {
                    return Ok(super::split_nul_list(&buf[..needed]));
                }
                buf.resize(needed, 0);
            }
        })
        .await
    }

    /// The ceph.conf this connection read, if known.
    pub fn conf_path(&self) -> Option<&std::path::Path> {
        self.inner.conf_path.as_deref()
    }

    /// The client id (without `client.`) this connection uses, if not the default.
    pub fn client_id(&self) -> Option<&str> {
        self.inner.config.client_id.as_deref()
    }

    /// Raises the OSD priority of this connection's operations to
    /// `priority` until the guard drops (nested raises restore the first
    /// value when the last one ends). Client operations default to 63; the
    /// OSD's weighted queue serves 196 and above strictly first, ahead of
    /// other clients' operations. Every operation of this connection, from
    /// any user of it, is affected while a guard lives.
    pub fn raise_op_priority(&self, priority: u32) -> Result<OpPriorityRaise> {
        let mut raises = self.inner.priority_raises.lock().unwrap_or_else(|p| p.into_inner());
        if raises.0 == 0 {
            let before = self.option(OP_PRIORITY_OPTION)?;
            self.set_option(OP_PRIORITY_OPTION, &priority.to_string())?;
            raises.1 = Some(before);
        }
        raises.0 += 1;
        Ok(OpPriorityRaise { cluster: self.clone() })
    }

    /// The value of configuration option `key` on this connection.
    pub fn option(&self, key: &str) -> Result<String> {
        let k = cstring(key, "config option")?;
        let mut buf = vec![0u8; 256];
        // SAFETY: connected handle; k a valid C string; buf writable for its length.
        let ret = unsafe { sys::rados_conf_get(self.raw(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        check("rados_conf_get", ret).map_err(|e| e.target(key.to_owned()))?;
        let value = std::ffi::CStr::from_bytes_until_nul(&buf)
            .map_err(|_| Error::from_errno("rados_conf_get", -libc::ENAMETOOLONG).target(key.to_owned()))?;
        Ok(value.to_string_lossy().into_owned())
    }

    /// Sets configuration option `key` on this (connected) connection.
    pub fn set_option(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstring(key, "config option")?, cstring(value, "config value")?);
        // SAFETY: connected handle; both valid C strings librados copies.
        let ret = unsafe { sys::rados_conf_set(self.raw(), k.as_ptr(), v.as_ptr()) };
        check("rados_conf_set", ret)
            .map(|_| ())
            .map_err(|e| e.target(format!("{key} = {value}")))
    }

    /// This connection's global client id (as image watchers report it).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: the handle is connected for the life of `self`.
        unsafe { sys::rados_get_instance_id(self.raw()) }
    }

    /// Blocklists a client address (as image watchers report it) for
    /// `expire_secs`: the OSDs refuse its operations from then on.
    pub async fn blocklist_add(&self, addr: &str, expire_secs: u32) -> Result<()> {
        let cluster = self.clone();
        let addr = addr.to_owned();
        blocking(move || {
            let a = cstring(&addr, "client address")?;
            // SAFETY: connected handle; a is a valid C string librados only reads.
            let ret = unsafe { sys::rados_blocklist_add(cluster.raw(), a.as_ptr() as *mut c_char, expire_secs) };
            check("rados_blocklist_add", ret)
                .map(|_| ())
                .map_err(|e| e.target(addr.clone()))
        })
        .await
    }

    /// Sends a monitor command (JSON) and returns its output buffer.
    pub async fn mon_command(&self, command: serde_json::Value) -> Result<Vec<u8>> {
        let cluster = self.clone();
        blocking(move || {
            let cmd = cstring(&command.to_string(), "mon command")?;
            let cmds = [cmd.as_ptr()];
            let mut outbuf: *mut c_char = ptr::null_mut();
            let mut outbuf_len = 0usize;
            let mut outs: *mut c_char = ptr::null_mut();
            let mut outs_len = 0usize;
            // SAFETY: cmds holds one valid C string; the out-pointers are
            // valid and freed below with rados_buffer_free.
            let ret = unsafe {
                sys::rados_mon_command(
                    cluster.raw(),
                    cmds.as_ptr() as *mut *const c_char,
                    1,
                    ptr::null(),
                    0,
                    &mut outbuf,
                    &mut outbuf_len,
                    &mut outs,
                    &mut outs_len,
                )
            };
            let take = |p: *mut c_char, len: usize| -> Vec<u8> {
                if p.is_null() {
                    return Vec::new();
                }
                // SAFETY: librados returned p with len readable bytes.
                let v = unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec();
                // SAFETY: p came from librados and is freed once.
                unsafe { sys::rados_buffer_free(p) };
                v
            };
            let out = take(outbuf, outbuf_len);
            let status = String::from_utf8_lossy(&take(outs, outs_len)).into_owned();
            check("rados_mon_command", ret).map_err(|e| {
                e.target(command.to_string())
                    .message(format!("monitor command failed: {status}"))
            })?;
            Ok(out)
        })
        .await
    }

    /// Stored bytes, free space and quota of `pool`, from `ceph df` and the pool quota.
    pub async fn pool_usage(&self, pool: &str) -> Result<PoolUsage> {
        let out = self
            .mon_command(serde_json::json!({"prefix": "df", "format": "json"}))
            .await?;
        let df: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| Error::new(ErrorKind::Io, "parse ceph df").cause(e))?;
        let entry = df["pools"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
            .ok_or_else(|| {
                Error::new(ErrorKind::PoolNotFound, "ceph df")
                    .target(pool)
                    .message(format!("pool `{pool}` does not exist"))
            })?;
        let quota = self
            .mon_command(serde_json::json!({"prefix": "osd pool get-quota", "pool": pool, "format": "json"}))
            .await?;
        let quota: serde_json::Value = serde_json::from_slice(&quota).unwrap_or_default();
        Ok(PoolUsage {
            stored: entry["stats"]["stored"].as_u64().unwrap_or(0),
            max_avail: entry["stats"]["max_avail"].as_u64().unwrap_or(0),
            quota_bytes: quota["quota_max_bytes"].as_u64().unwrap_or(0),
        })
    }
}

impl Cluster {
    /// Refuses `pool` as an image's data pool when it does not exist or is
    /// erasure-coded without overwrites (RBD writes partial objects).
    pub async fn check_data_pool(&self, pool: &str) -> Result<()> {
        let out = self
            .mon_command(serde_json::json!({"prefix": "osd pool ls", "detail": "detail", "format": "json"}))
            .await?;
        let pools: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| Error::new(ErrorKind::Io, "parse osd pool ls").cause(e))?;
        let Some(entry) = pools
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["pool_name"] == pool))
        else {
            return Err(Error::new(ErrorKind::PoolNotFound, "check data pool")
                .target(pool)
                .message(format!("data pool `{pool}` does not exist")));
        };
        // Pool type 3 is erasure-coded.
        let erasure = entry["type"].as_u64() == Some(3);
        let overwrites = entry["flags_names"]
            .as_str()
            .is_some_and(|f| f.split(',').any(|f| f == "ec_overwrites"));
        if erasure && !overwrites {
            return Err(Error::new(ErrorKind::InvalidInput, "check data pool")
                .target(pool)
                .message(format!(
                    "data pool `{pool}` is erasure-coded without overwrites, which RBD needs: `ceph osd pool set {pool} allow_ec_overwrites true` (BlueStore OSDs), or choose another data pool"
                )));
        }
        Ok(())
    }
}

/// Objects an exact diff asks the OSDs about at a time (librbd's
/// `rbd_concurrent_management_ops`, 10 by default, set on our handles).
pub(crate) const DIFF_OBJECTS_AT_ONCE: u32 = 64;

fn connect_blocking(config: &ClusterConfig) -> Result<Cluster> {
    let describe = config.describe();
    let unreachable_msg = || format!("cannot connect to the Ceph cluster of {describe}");
    if let Some(p) = &config.conf_path {
        if !p.is_file() {
            return Err(Error::new(ErrorKind::Config, "read ceph.conf")
                .message(format!("ceph.conf `{}` does not exist or is not a file", p.display())));
        }
    }
    if let Some(k) = &config.keyring {
        if !k.is_file() {
            return Err(Error::new(ErrorKind::Config, "read keyring")
                .message(format!("keyring `{}` does not exist or is not a file", k.display())));
        }
    }
    let cluster_name = cstring(config.cluster_name.as_deref().unwrap_or("ceph"), "cluster name")?;
    let user = cstring(
        &format!("client.{}", config.client_id.as_deref().unwrap_or("admin")),
        "client id",
    )?;
    let mut h: sys::rados_t = ptr::null_mut();
    // SAFETY: h is a valid out-pointer; the names are valid C strings.
    check("rados_create2", unsafe {
        sys::rados_create2(&mut h, cluster_name.as_ptr(), user.as_ptr(), 0)
    })?;
    // From here on the handle must be shut down on every error path.
    let handle = RadosHandle(h);
    let result = (|| -> Result<String> {
        let conf_c: Option<CString> = match &config.conf_path {
            Some(p) => Some(cstring(&p.to_string_lossy(), "ceph.conf path")?),
            None => None,
        };
        let conf_ptr = conf_c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: handle is valid; conf_ptr is NULL or a valid C string.
        let ret = unsafe { sys::rados_conf_read_file(handle.0, conf_ptr) };
        if ret < 0 {
            return Err(Error::from_errno("rados_conf_read_file", ret)
                .kind_for(ErrorKind::ImageNotFound, ErrorKind::Config)
                .kind_for(ErrorKind::InvalidInput, ErrorKind::Config)
                .kind_for(ErrorKind::Io, ErrorKind::Config)
                .message(format!(
                    "cannot read the ceph.conf of {describe} (none found, or invalid); name its ceph.conf in the cluster configuration or set CEPH_CONF"
                )));
        }
        // SAFETY: handle is valid; NULL means "use CEPH_ARGS".
        check("rados_conf_parse_env", unsafe {
            sys::rados_conf_parse_env(handle.0, ptr::null())
        })?;
        let mut opts: Vec<(String, String)> = vec![
            (
                "client_mount_timeout".into(),
                config.connect_timeout.as_secs().max(1).to_string(),
            ),
            ("err_to_stderr".into(), "false".into()),
            ("log_to_stderr".into(), "false".into()),
            // livemig's own handles do bulk, well-ordered I/O: the cache costs
            // CPU and copies; without it librbd can write from our buffers directly.
            ("rbd_cache".into(), "false".into()),
            ("rbd_disable_zero_copy_writes".into(), "false".into()),
            // An exact diff (a replay round's changes) asks the OSDs about
            // every object of the image, this many at a time (librbd's
            // default is 10): it bounds how long a round, and the cutover
            // with the instance held, spends enumerating.
            ("rbd_concurrent_management_ops".into(), DIFF_OBJECTS_AT_ONCE.to_string()),
        ];
        if let Some(k) = &config.keyring {
            opts.push(("keyring".into(), k.to_string_lossy().into_owned()));
        }
        opts.extend(config.options.iter().cloned());
        for (k, v) in &opts {
            let kc = cstring(k, "config option")?;
            let vc = cstring(v, "config value")?;
            // SAFETY: handle is valid; both are valid C strings.
            let ret = unsafe { sys::rados_conf_set(handle.0, kc.as_ptr(), vc.as_ptr()) };
            check("rados_conf_set", ret).map_err(|e| {
                e.kind_for(ErrorKind::ImageNotFound, ErrorKind::InvalidInput)
                    .message(format!("cannot set option {k} = {v}"))
            })?;
        }
        // SAFETY: handle is configured and not yet connected.
        let ret = unsafe { sys::rados_connect(handle.0) };
        if ret < 0 {
            let e = Error::from_errno("rados_connect", ret);
            let kind = match e.kind() {
                ErrorKind::PermissionDenied | ErrorKind::Config => e.kind(),
                _ => ErrorKind::ClusterUnreachable,
            };
            return Err(Error::from_errno("rados_connect", ret)
                .kind_for(e.kind(), kind)
                .target(describe.clone())
                .message(unreachable_msg()));
        }
        let mut buf = [0u8; 64];
        // SAFETY: buf is writable for its length.
        let n = check("rados_cluster_fsid", unsafe {
            sys::rados_cluster_fsid(handle.0, buf.as_mut_ptr().cast(), buf.len())
        })? as usize;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end_matches('\0').to_owned())
    })();
    match result {
        Ok(fsid) => Ok(Cluster {
            inner: Arc::new(ClusterInner {
                handle,
                fsid,
                describe,
                conf_path: config
                    .conf_path
                    .clone()
                    .or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from)),
                config: config.clone(),
                priority_raises: std::sync::Mutex::new((0, None)),
            }),
        }),
        Err(e) => {
            // SAFETY: the handle was created above and is not used again.
            unsafe { sys::rados_shutdown(handle.0) };
            Err(e)
        }
    }
}

/// The client option that sets the OSD priority of a connection's operations.
const OP_PRIORITY_OPTION: &str = "osd_client_op_priority";

/// A raised operation priority (see [`Cluster::raise_op_priority`]); the
/// last one of a connection to drop restores the value from before.
#[must_use = "the priority falls back when the guard drops"]
pub struct OpPriorityRaise {
    cluster: Cluster,
}

impl Drop for OpPriorityRaise {
    fn drop(&mut self) {
        let mut raises = self
            .cluster
            .inner
            .priority_raises
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        raises.0 -= 1;
        if raises.0 == 0 {
            if let Some(before) = raises.1.take() {
                if let Err(e) = self.cluster.set_option(OP_PRIORITY_OPTION, &before) {
                    tracing::warn!(error = %e, "restoring the OSD operation priority");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PoolUsage;

    #[test]
    fn room_is_the_smaller_of_capacity_and_what_the_quota_leaves() {
        let usage = |stored, max_avail, quota_bytes| PoolUsage {
            stored,
            max_avail,
            quota_bytes,
        };
        assert_eq!(usage(10, 100, 0).quota_left(), None);
        assert_eq!(usage(10, 100, 0).room(), 100);
        assert_eq!(usage(10, 100, 50).room(), 40);
        assert_eq!(usage(10, 30, 500).room(), 30);
        assert_eq!(usage(60, 100, 50).quota_left(), Some(0));
        assert_eq!(usage(60, 100, 50).room(), 0);
    }
}
