//! Pool io-contexts: a pool (and namespace) of one cluster, and what is
//! done to a pool's images by name (create, open, rename, remove, trash,
//! list). Guarded objects and leases on an io-context are in `object`.

use std::ptr;
use std::sync::Arc;

use livemig_ceph_sys as sys;

use super::cluster::Cluster;
use super::release::release;
use super::{blocking, check, cstring};
use crate::error::{Error, ErrorKind, Result};

struct IoHandle(sys::rados_ioctx_t);
// SAFETY: io-contexts may be used from several threads as long as their
// namespace/snap settings are not changed concurrently; livemig sets them
// once, before sharing.
unsafe impl Send for IoHandle {}
// SAFETY: as above.
unsafe impl Sync for IoHandle {}

struct IoCtxInner {
    handle: IoHandle,
    cluster: Cluster,
    pool: String,
    namespace: String,
}

impl Drop for IoCtxInner {
    fn drop(&mut self) {
        let h = IoHandle(self.handle.0);
        let cluster = self.cluster.clone();
        release(move || {
            let h = h;
            // SAFETY: every image opened in this io-context holds a reference
            // to it, so none is left; destroyed once.
            unsafe { sys::rados_ioctx_destroy(h.0) };
            drop(cluster);
        });
    }
}

/// A format-2 image's id object is `rbd_id.<name>`: it holds the image's id.
const RBD_ID_PREFIX: &str = "rbd_id.";

/// An io-context: a pool (and namespace) of one cluster.
#[derive(Clone)]
pub struct IoCtx {
    inner: Arc<IoCtxInner>,
}

impl IoCtx {
    pub(super) fn open_blocking(cluster: Cluster, pool: String, namespace: String) -> Result<IoCtx> {
        let pool_c = cstring(&pool, "pool name")?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster handle is connected; io is a valid out-pointer.
        let ret = unsafe { sys::rados_ioctx_create(cluster.raw(), pool_c.as_ptr(), &mut io) };
        check("rados_ioctx_create", ret).map_err(|e| {
            e.kind_for(ErrorKind::ImageNotFound, ErrorKind::PoolNotFound)
                .target(pool.clone())
                .message(format!("pool `{pool}` does not exist in {}", cluster.describe()))
        })?;
        let ioctx = IoCtx::wrap(cluster, io, pool, namespace)?;
        if !ioctx.inner.namespace.is_empty() {
            let ns = cstring(&ioctx.inner.namespace, "namespace")?;
            let mut exists = false;
            // SAFETY: io is valid; exists is a valid out-pointer.
            let ret = unsafe { sys::rbd_namespace_exists(io, ns.as_ptr(), &mut exists) };
            check("rbd_namespace_exists", ret).map_err(|e| e.target(ioctx.pool_spec()))?;
            if !exists {
                return Err(Error::new(ErrorKind::NamespaceNotFound, "rbd_namespace_exists")
                    .target(ioctx.pool_spec())
                    .message(format!(
                        "namespace `{}` does not exist in pool `{}`",
                        ioctx.inner.namespace, ioctx.inner.pool
                    )));
            }
        }
        Ok(ioctx)
    }

    pub(crate) fn raw(&self) -> sys::rados_ioctx_t {
        self.inner.handle.0
    }

    /// A second handle on the same pool and namespace, for settings that
    /// apply to a whole io-context (the snapshot reads are made at), so
    /// that they do not leak to other users of this one.
    pub(crate) fn private_copy_blocking(&self) -> Result<IoCtx> {
        self.sibling_blocking(self.pool_id(), self.inner.pool.clone())
    }

    /// A private io-context on pool `pool_id` of the same cluster, in this
    /// one's namespace: an image's data pool, where its data objects live.
    pub(crate) fn data_pool_blocking(&self, pool_id: i64) -> Result<IoCtx> {
        if pool_id == self.pool_id() {
            return self.private_copy_blocking();
        }
        let mut name = vec![0u8; 256];
        // SAFETY: the cluster is connected; name is writable for its length.
        let ret = unsafe {
            sys::rados_pool_reverse_lookup(self.inner.cluster.raw(), pool_id, name.as_mut_ptr().cast(), name.len())
        };
        check("rados_pool_reverse_lookup", ret).map_err(|e| {
            e.kind_for(ErrorKind::ImageNotFound, ErrorKind::PoolNotFound)
                .target(format!("pool id {pool_id}"))
                .message(format!(
                    "the data pool (id {pool_id}) of an image in `{}` does not exist",
                    self.pool_spec()
                ))
        })?;
        let name = std::ffi::CStr::from_bytes_until_nul(&name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.sibling_blocking(pool_id, name)
    }

    fn sibling_blocking(&self, pool_id: i64, pool: String) -> Result<IoCtx> {
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster is connected; io is a valid out-pointer.
        let ret = unsafe { sys::rados_ioctx_create2(self.inner.cluster.raw(), pool_id, &mut io) };
        check("rados_ioctx_create2", ret).map_err(|e| e.target(pool.clone()))?;
        IoCtx::wrap(self.inner.cluster.clone(), io, pool, self.inner.namespace.clone())
    }

    /// Takes ownership of a freshly created io-context handle and puts it
    /// in `namespace` (released with the `IoCtx`, also on error).
    fn wrap(cluster: Cluster, io: sys::rados_ioctx_t, pool: String, namespace: String) -> Result<IoCtx> {
        let ioctx = IoCtx {
            inner: Arc::new(IoCtxInner {
                handle: IoHandle(io),
                cluster,
                pool,
                namespace,
            }),
        };
        if !ioctx.inner.namespace.is_empty() {
            let ns = cstring(&ioctx.inner.namespace, "namespace")?;
            // SAFETY: io is valid and not yet shared; ns is a valid C string.
            unsafe { sys::rados_ioctx_set_namespace(io, ns.as_ptr()) };
        }
        Ok(ioctx)
    }

    /// The cluster this io-context belongs to.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The pool name.
    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    /// The namespace ("" for the default).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// `pool` or `pool/namespace`.
    pub fn pool_spec(&self) -> String {
        if self.inner.namespace.is_empty() {
            self.inner.pool.clone()
        } else {
            format!("{}/{}", self.inner.pool, self.inner.namespace)
        }
    }

    /// `pool[/namespace]/image`, for messages.
    pub fn image_spec(&self, image: &str) -> String {
        format!("{}/{image}", self.pool_spec())
    }

    /// The pool's id.
    pub fn pool_id(&self) -> i64 {
        // SAFETY: the io-context is valid.
        unsafe { sys::rados_ioctx_get_id(self.raw()) }
    }

    /// Names of the images in this pool/namespace.
    pub async fn list_images(&self) -> Result<Vec<String>> {
        let io = self.clone();
        blocking(move || {
            let mut n: usize = 64;
            loop {
                let mut specs: Vec<sys::rbd_image_spec_t> = Vec::with_capacity(n);
                let mut count = n;
                // SAFETY: specs has capacity for `count` entries.
                let ret = unsafe { sys::rbd_list2(io.raw(), specs.as_mut_ptr(), &mut count) };
                if ret == -libc::ERANGE {
                    n = count.max(n * 2);
                    continue;
                }
                check("rbd_list2", ret).map_err(|e| e.target(io.pool_spec()))?;
                // SAFETY: librbd initialised `count` entries.
                unsafe { specs.set_len(count) };
                let names = specs
                    .iter()
                    .map(|s| {
                        // SAFETY: each name is a valid C string owned by the spec.
                        let name = unsafe { std::ffi::CStr::from_ptr(s.name) };
                        name.to_string_lossy().into_owned()
                    })
                    .collect();
                // SAFETY: entries were filled by rbd_list2 and are cleaned once.
                unsafe { sys::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), count) };
                return Ok(names);
            }
        })
        .await
    }

    /// Whether an image of that name exists here.
    pub async fn image_exists(&self, name: &str) -> Result<bool> {
        Ok(self.list_images().await?.iter().any(|n| n == name))
    }

    /// Mends what a rename of `old` to `new` cut short left. librbd renames
    /// an image in three steps: it writes the id object under the new name
    /// (`rbd_id.<new>`), renames the directory entry, then removes the id
    /// object under the old name. A crash after the first step leaves an id
    /// object that makes every later rename to `new` fail (`EEXIST`); one
    /// after the second, an orphan id object under `old`. Either is removed
    /// when it holds the same id as the listed name's (anything else is not
    /// the rename's and is left alone). Returns whether it removed one.
    pub async fn mend_cut_short_rename(&self, old: &str, new: &str) -> Result<bool> {
        let listed = self.list_images().await?;
        let (stale, kept) = match (listed.iter().any(|n| n == old), listed.iter().any(|n| n == new)) {
            (true, false) => (new, old),
            (false, true) => (old, new),
            _ => return Ok(false),
        };
        let Some(stale_id) = self.image_id_object(stale).await? else {
            return Ok(false);
        };
        if self.image_id_object(kept).await? != Some(stale_id) {
            return Ok(false);
        }
        tracing::warn!(name = %stale, image = %self.image_spec(kept), "removing the id object a rename cut short left under the other name");
        self.remove_object(&format!("{RBD_ID_PREFIX}{stale}")).await?;
        Ok(true)
    }

    /// What `name`'s id object holds (the image id, encoded as cls_rbd
    /// returns it), if that object exists.
    async fn image_id_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self
            .exec(&format!("{RBD_ID_PREFIX}{name}"), "rbd", "get_id", Vec::new(), 256)
            .await
        {
            Ok(id) => Ok(Some(id)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Calls method `method` of object class `class` on `object` with
    /// `input`; returns up to `max_output` bytes of its output. (Tests use
    /// it to stage what an interrupted librbd operation leaves behind.)
    pub async fn exec(
        &self,
        object: &str,
        class: &str,
        method: &str,
        input: Vec<u8>,
        max_output: usize,
    ) -> Result<Vec<u8>> {
        let io = self.clone();
        let (object, class, method) = (object.to_owned(), class.to_owned(), method.to_owned());
        blocking(move || {
            let (o, c, m) = (
                cstring(&object, "object name")?,
                cstring(&class, "object class")?,
                cstring(&method, "object class method")?,
            );
            let mut out = vec![0u8; max_output];
            // SAFETY: io is valid; o, c, m are valid C strings; input and
            // out are valid for their lengths for the whole (synchronous) call.
            let ret = unsafe {
                sys::rados_exec(
                    io.raw(),
                    o.as_ptr(),
                    c.as_ptr(),
                    m.as_ptr(),
                    input.as_ptr().cast(),
                    input.len(),
                    out.as_mut_ptr().cast(),
                    out.len(),
                )
            };
            let n = check("rados_exec", ret)
                .map_err(|e| e.target(format!("{} {object} {class}.{method}", io.pool_spec())))?;
            out.truncate(n as usize);
            Ok(out)
        })
        .await
    }

    /// Removes an image (it must have no snapshots and no watchers).
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let io = self.clone();
        let name = name.to_owned();
        blocking(move || {
            let n = cstring(&name, "image name")?;
            // SAFETY: io is valid; n is a valid C string; NoOp progress.
            let ret = unsafe { sys::rbd_remove(io.raw(), n.as_ptr()) };
            check("rbd_remove", ret)
                .map(|_| ())
                .map_err(|e| e.target(io.image_spec(&name)))
        })
        .await
    }

    /// Renames an image within this pool/namespace.
    pub async fn rename_image(&self, from: &str, to: &str) -> Result<()> {
        let io = self.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        blocking(move || {
            let f = cstring(&from, "image name")?;
            let t = cstring(&to, "image name")?;
            // SAFETY: io is valid; both names are valid C strings.
            let ret = unsafe { sys::rbd_rename(io.raw(), f.as_ptr(), t.as_ptr()) };
            check("rbd_rename", ret)
                .map(|_| ())
                .map_err(|e| e.target(io.image_spec(&from)))
        })
        .await
    }

    /// Whether the image with id `id` is in the RBD trash.
    pub async fn trash_contains(&self, id: &str) -> Result<bool> {
        let io = self.clone();
        let id = id.to_owned();
        blocking(move || {
            let i = cstring(&id, "image id")?;
            // SAFETY: zeroed is valid for this plain C struct (null pointers).
            let mut info: sys::rbd_trash_image_info_t = unsafe { std::mem::zeroed() };
            // SAFETY: io is valid; i a valid C string; info is writable.
            let ret = unsafe { sys::rbd_trash_get(io.raw(), i.as_ptr(), &mut info) };
            if ret == -libc::ENOENT {
                return Ok(false);
            }
            check("rbd_trash_get", ret).map_err(|e| e.target(format!("{} trash id {id}", io.pool_spec())))?;
            // SAFETY: filled by a successful rbd_trash_get; freed once.
            unsafe { sys::rbd_trash_get_cleanup(&mut info) };
            Ok(true)
        })
        .await
    }

    /// Restores the image with id `id` from the RBD trash as `name`.
    pub async fn trash_restore(&self, id: &str, name: &str) -> Result<()> {
        let io = self.clone();
        let (id, name) = (id.to_owned(), name.to_owned());
        blocking(move || {
            let i = cstring(&id, "image id")?;
            let n = cstring(&name, "image name")?;
            // SAFETY: io is valid; both are valid C strings.
            let ret = unsafe { sys::rbd_trash_restore(io.raw(), i.as_ptr(), n.as_ptr()) };
            check("rbd_trash_restore", ret)
                .map(|_| ())
                .map_err(|e| e.target(io.image_spec(&name)))
        })
        .await
    }

    /// Moves an image to the RBD trash, removable after `delay_secs`.
    pub async fn trash_move(&self, name: &str, delay_secs: u64) -> Result<()> {
        let io = self.clone();
        let name = name.to_owned();
        blocking(move || {
            let n = cstring(&name, "image name")?;
            // SAFETY: io is valid; n is a valid C string.
            let ret = unsafe { sys::rbd_trash_move(io.raw(), n.as_ptr(), delay_secs) };
            check("rbd_trash_move", ret)
                .map(|_| ())
                .map_err(|e| e.target(io.image_spec(&name)))
        })
        .await
    }
}

impl Cluster {
    /// Opens an io-context on `pool`, in `namespace` ("" for the default).
    pub async fn ioctx(&self, pool: &str, namespace: &str) -> Result<IoCtx> {
        let cluster = self.clone();
        let pool = pool.to_owned();
        let namespace = namespace.to_owned();
        blocking(move || IoCtx::open_blocking(cluster, pool, namespace)).await
    }
}
