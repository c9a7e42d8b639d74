//! RBD images: open/create, layout, metadata, snapshots, AIO, locks.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::ptr;
use std::sync::{Arc, Mutex};

use livemig_ceph_sys as sys;
use tokio::sync::oneshot;

use super::aio::{AioOp, RbdImage};
use super::features::Features;
pub use super::info::{CreateOptions, ImageInfo, SnapInfo, Watcher};
use super::ioctx::IoCtx;
use super::release::release;
use super::{blocking, check, cstring};
use crate::error::{Error, ErrorKind, Result};

struct ImageHandle(sys::rbd_image_t);
// SAFETY: librbd image handles may be used from several threads concurrently
// (the same guarantee QEMU's rbd driver relies on).
unsafe impl Send for ImageHandle {}
// SAFETY: as above.
unsafe impl Sync for ImageHandle {}

struct ImageInner {
    handle: ImageHandle,
    ioctx: IoCtx,
    name: String,
    snap: Option<String>,
    closed: Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for ImageInner {
    fn drop(&mut self) {
        let h = ImageHandle(self.handle.0);
        let ioctx = self.ioctx.clone();
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner()).take();
        release(move || {
            let h = h;
            // SAFETY: the last reference is gone, so no operation is in
            // flight (each holds a reference); closed once.
            unsafe { sys::rbd_close(h.0) };
            drop(ioctx);
            if let Some(tx) = closed {
                let _ = tx.send(());
            }
        });
    }
}

/// An open RBD image (optionally at a snapshot, read-only). Cheap to clone.
#[derive(Clone)]
pub struct Image {
    inner: Arc<ImageInner>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec())
    }
}

/// The name snapshot `id` had before librbd moved it to the trash
/// namespace; `None` if it is not there (on the blocking pool).
fn trashed_name(img: &Image, id: u64) -> Result<Option<String>> {
    let mut kind: sys::rbd_snap_namespace_type_t = 0;
    // SAFETY: image open; kind is a valid out-pointer.
    let ret = unsafe { sys::rbd_snap_get_namespace_type(img.raw(), id, &mut kind) };
    check("rbd_snap_get_namespace_type", ret).map_err(|e| e.target(img.spec()))?;
    if kind != sys::rbd_snap_namespace_type_t_RBD_SNAP_NAMESPACE_TYPE_TRASH {
        return Ok(None);
    }
    let mut max = 256usize;
    loop {
        let mut name = vec![0u8; max];
        // SAFETY: image open; name has room for `max` bytes, which librbd
        // fills with a NUL-terminated string or refuses with ERANGE.
        let ret = unsafe { sys::rbd_snap_get_trash_namespace(img.raw(), id, name.as_mut_ptr().cast(), max) };
        if ret == -libc::ERANGE && max < 1 << 16 {
            max *= 4;
            continue;
        }
        check("rbd_snap_get_trash_namespace", ret).map_err(|e| e.target(img.spec()))?;
        let original = CStr::from_bytes_until_nul(&name)
            .map_err(|_| Error::from_errno("rbd_snap_get_trash_namespace", -libc::EINVAL).target(img.spec()))?;
        return Ok(Some(original.to_string_lossy().into_owned()));
    }
}

impl RbdImage for Image {
    fn raw(&self) -> sys::rbd_image_t {
        Image::raw(self)
    }

    fn spec(&self) -> String {
        Image::spec(self)
    }
}

impl Image {
    /// Wraps an image handle `rbd_open*` just opened in `ioctx`.
    ///
    /// # Safety
    /// `handle` is open, and nothing else closes it: the returned image
    /// owns it.
    pub(super) unsafe fn from_open_handle(
        handle: sys::rbd_image_t,
        ioctx: IoCtx,
        name: String,
        snap: Option<String>,
    ) -> Image {
        Image {
            inner: Arc::new(ImageInner {
                handle: ImageHandle(handle),
                ioctx,
                name,
                snap,
                closed: Mutex::new(None),
            }),
        }
    }

    /// The snapshot the image is open at, if any.
    pub fn snap_name(&self) -> Option<&str> {
        self.inner.snap.as_deref()
    }

    pub(crate) fn raw(&self) -> sys::rbd_image_t {
        self.inner.handle.0
    }

    /// The io-context the image was opened in.
    pub fn ioctx(&self) -> &IoCtx {
        &self.inner.ioctx
    }

    /// The image name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `pool[/namespace]/image[@snap]`.
    pub fn spec(&self) -> String {
        let base = self.inner.ioctx.image_spec(&self.inner.name);
        match &self.inner.snap {
            Some(s) => format!("{base}@{s}"),
            None => base,
        }
    }

    async fn call<T: Send + 'static>(&self, f: impl FnOnce(&Image) -> Result<T> + Send + 'static) -> Result<T> {
        let img = self.clone();
        blocking(move || f(&img)).await
    }

    /// Size, object size, features and striping.
    pub async fn info(&self) -> Result<ImageInfo> {
        self.call(Image::info_blocking).await
    }

    /// [`Image::info`], for code already on the blocking pool.
    pub(crate) fn info_blocking(&self) -> Result<ImageInfo> {
        let h = self.raw();
        let err = |op, ret| Error::from_errno(op, ret).target(self.spec());
        // SAFETY: zeroed is a valid value for this plain C struct.
        let mut st: sys::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: h is open; st is a valid out-pointer of the right size.
        let ret = unsafe { sys::rbd_stat(h, &mut st, std::mem::size_of::<sys::rbd_image_info_t>()) };
        if ret < 0 {
            return Err(err("rbd_stat", ret));
        }
        let mut features = 0u64;
        // SAFETY: h is open; features is a valid out-pointer.
        let ret = unsafe { sys::rbd_get_features(h, &mut features) };
        if ret < 0 {
            return Err(err("rbd_get_features", ret));
        }
        let (mut su, mut sc) = (0u64, 0u64);
        // SAFETY: h is open; out-pointers valid.
        let ret = unsafe { sys::rbd_get_stripe_unit(h, &mut su) };
        if ret < 0 {
            return Err(err("rbd_get_stripe_unit", ret));
        }
        // SAFETY: h is open; out-pointers valid.
        let ret = unsafe { sys::rbd_get_stripe_count(h, &mut sc) };
        if ret < 0 {
            return Err(err("rbd_get_stripe_count", ret));
        }
        let mut id = vec![0u8; 64];
        // SAFETY: id is writable for its length.
        let ret = unsafe { sys::rbd_get_id(h, id.as_mut_ptr().cast(), id.len()) };
        if ret < 0 {
            return Err(err("rbd_get_id", ret));
        }
        let id = CStr::from_bytes_until_nul(&id)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ImageInfo {
            size: st.size,
            object_size: st.obj_size,
            order: st.order as u8,
            features: Features::from_bits(features),
            stripe_unit: su,
            stripe_count: sc,
            id,
        })
    }

    /// All image-meta key/value pairs.
    pub async fn metadata_list(&self) -> Result<Vec<(String, String)>> {
        self.call(|img| {
            let mut out = Vec::new();
            let mut start = String::new();
            loop {
                let start_c = cstring(&start, "metadata key")?;
                let (mut klen, mut vlen) = (64 * 1024usize, 256 * 1024usize);
                let mut keys = vec![0u8; klen];
                let mut vals = vec![0u8; vlen];
                let ret = loop {
                    keys.resize(klen, 0);
                    vals.resize(vlen, 0);
                    // SAFETY: buffers are writable for the lengths passed.
                    let ret = unsafe {
                        sys::rbd_metadata_list(
                            img.raw(),
                            start_c.as_ptr(),
                            512,
                            keys.as_mut_ptr() as *mut c_char,
                            &mut klen,
                            vals.as_mut_ptr() as *mut c_char,
                            &mut vlen,
                        )
                    };
                    if ret != -libc::ERANGE {
                        break ret;
                    }
                };
                check("rbd_metadata_list", ret).map_err(|e| e.target(img.spec()))?;
                let ks = super::split_nul_list(&keys[..klen]);
                let vs: Vec<String> = vals[..vlen]
                    .split(|b| *b == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .take(ks.len())
                    .collect();
                let n = ks.len();
                for (k, v) in ks.into_iter().zip(vs) {
                    start = k.clone();
                    out.push((k, v));
                }
                if n < 512 {
                    return Ok(out);
                }
            }
        })
        .await
    }

    /// Sets an image-meta key.
    pub async fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (key.to_owned(), value.to_owned());
        self.call(move |img| {
            let kc = cstring(&k, "metadata key")?;
            let vc = cstring(&v, "metadata value")?;
            // SAFETY: image open; valid C strings.
            let ret = unsafe { sys::rbd_metadata_set(img.raw(), kc.as_ptr(), vc.as_ptr()) };
            check("rbd_metadata_set", ret)
                .map(|_| ())
                .map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// Removes an image-meta key (absent keys are not an error).
    pub async fn metadata_remove(&self, key: &str) -> Result<()> {
        let k = key.to_owned();
        self.call(move |img| {
            let kc = cstring(&k, "metadata key")?;
            // SAFETY: image open; valid C string.
            let ret = unsafe { sys::rbd_metadata_remove(img.raw(), kc.as_ptr()) };
            if ret == -libc::ENOENT {
                return Ok(());
            }
            check("rbd_metadata_remove", ret)
                .map(|_| ())
                .map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// Grows or shrinks the image to `size` bytes.
    pub async fn resize(&self, size: u64) -> Result<()> {
        self.call(move |img| {
            // SAFETY: image open.
            let ret = unsafe { sys::rbd_resize(img.raw(), size) };
            check("rbd_resize", ret).map(|_| ()).map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// Rolls the image's content back to snapshot `name`.
    pub async fn snap_rollback(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(move |img| {
            let nc = cstring(&n, "snapshot name")?;
            // SAFETY: image open; valid C string.
            let ret = unsafe { sys::rbd_snap_rollback(img.raw(), nc.as_ptr()) };
            check("rbd_snap_rollback", ret)
                .map(|_| ())
                .map_err(|e| e.target(format!("{}@{n}", img.spec())))
        })
        .await
    }

    /// Renames snapshot `from` to `to`.
    pub async fn snap_rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (from.to_owned(), to.to_owned());
        self.call(move |img| {
            let fc = cstring(&f, "snapshot name")?;
            let tc = cstring(&t, "snapshot name")?;
            // SAFETY: image open; both are valid C strings.
            let ret = unsafe { sys::rbd_snap_rename(img.raw(), fc.as_ptr(), tc.as_ptr()) };
            check("rbd_snap_rename", ret)
                .map(|_| ())
                .map_err(|e| e.target(format!("{}@{f}", img.spec())))
        })
        .await
    }

    /// Creates a snapshot.
    pub async fn snap_create(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(move |img| {
            let nc = cstring(&n, "snapshot name")?;
            // SAFETY: image open; valid C string.
            let ret = unsafe { sys::rbd_snap_create(img.raw(), nc.as_ptr()) };
            check("rbd_snap_create", ret)
                .map(|_| ())
                .map_err(|e| e.target(format!("{}@{n}", img.spec())))
        })
        .await
    }

    /// Removes a snapshot.
    pub async fn snap_remove(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(move |img| {
            let nc = cstring(&n, "snapshot name")?;
            // SAFETY: image open; valid C string.
            let ret = unsafe { sys::rbd_snap_remove(img.raw(), nc.as_ptr()) };
            check("rbd_snap_remove", ret)
                .map(|_| ())
                .map_err(|e| e.target(format!("{}@{n}", img.spec())))
        })
        .await
    }

    /// Removes the snapshot with id `id` (whatever its namespace).
    pub async fn snap_remove_by_id(&self, id: u64) -> Result<()> {
        self.call(move |img| {
            // SAFETY: image open.
            let ret = unsafe { sys::rbd_snap_remove_by_id(img.raw(), id) };
            check("rbd_snap_remove_by_id", ret)
                .map(|_| ())
                .map_err(|e| e.target(format!("{}@{{id {id}}}", img.spec())))
        })
        .await
    }

    /// Removes `snap` (as [`Image::snap_list`] gave it): by name, or by id
    /// if it is in the trash namespace. One already gone is fine.
    pub async fn snap_remove_listed(&self, snap: &SnapInfo) -> Result<()> {
        let removed = match snap.trashed_name {
            Some(_) => self.snap_remove_by_id(snap.id).await,
            None => self.snap_remove(&snap.name).await,
        };
        match removed {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Removes every snapshot given the name `name` (see
    /// [`SnapInfo::given_name`]); returns how many there were.
    pub async fn snap_remove_given(&self, name: &str) -> Result<usize> {
        let named: Vec<SnapInfo> = self
            .snap_list()
            .await?
            .into_iter()
            .filter(|s| s.given_name() == name)
            .collect();
        for snap in &named {
            self.snap_remove_listed(snap).await?;
        }
        Ok(named.len())
    }

    /// Lists snapshots, in every namespace (user and trash).
    pub async fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        self.call(|img| {
            let mut max: libc::c_int = 16;
            loop {
                // SAFETY: zeroed is valid for this plain C struct.
                let mut snaps: Vec<sys::rbd_snap_info_t> = vec![unsafe { std::mem::zeroed() }; max as usize];
                // SAFETY: snaps has room for `max` entries.
                let ret = unsafe { sys::rbd_snap_list(img.raw(), snaps.as_mut_ptr(), &mut max) };
                if ret == -libc::ERANGE {
                    continue;
                }
                let n = check("rbd_snap_list", ret).map_err(|e| e.target(img.spec()))? as usize;
                let listed: Vec<SnapInfo> = snaps[..n]
                    .iter()
                    .map(|s| SnapInfo {
                        id: s.id,
                        size: s.size,
                        // SAFETY: librbd filled a valid C string.
                        name: unsafe { CStr::from_ptr(s.name) }.to_string_lossy().into_owned(),
                        trashed_name: None,
                    })
                    .collect();
                // SAFETY: entries filled by rbd_snap_list, cleaned once.
                unsafe { sys::rbd_snap_list_end(snaps.as_mut_ptr()) };
                let mut out = listed;
                for snap in &mut out {
                    snap.trashed_name = trashed_name(img, snap.id)?;
                }
                return Ok(out);
            }
        })
        .await
    }

    /// Clients that have the image open.
    pub async fn watchers(&self) -> Result<Vec<Watcher>> {
        self.call(|img| {
            let mut max: usize = 16;
            loop {
                // SAFETY: zeroed is valid for this plain C struct.
                let mut ws: Vec<sys::rbd_image_watcher_t> = vec![unsafe { std::mem::zeroed() }; max];
                // SAFETY: ws has room for `max` entries.
                let ret = unsafe { sys::rbd_watchers_list(img.raw(), ws.as_mut_ptr(), &mut max) };
                if ret == -libc::ERANGE {
                    continue;
                }
                check("rbd_watchers_list", ret).map_err(|e| e.target(img.spec()))?;
                let out = ws[..max]
                    .iter()
                    .map(|w| Watcher {
                        // SAFETY: librbd filled a valid C string.
                        addr: unsafe { CStr::from_ptr(w.addr) }.to_string_lossy().into_owned(),
                        id: w.id,
                    })
                    .collect();
                // SAFETY: entries filled by rbd_watchers_list, cleaned once.
                unsafe { sys::rbd_watchers_list_cleanup(ws.as_mut_ptr(), max) };
                return Ok(out);
            }
        })
        .await
    }

    /// Takes the image's exclusive lock (needs the exclusive-lock feature).
    pub async fn lock_acquire_exclusive(&self) -> Result<()> {
        self.call(|img| {
            // SAFETY: image open.
            let ret = unsafe { sys::rbd_lock_acquire(img.raw(), sys::rbd_lock_mode_t_RBD_LOCK_MODE_EXCLUSIVE) };
            check("rbd_lock_acquire", ret)
                .map(|_| ())
                .map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// The clients owning the image's exclusive lock (empty if none).
    pub async fn lock_owners(&self) -> Result<Vec<String>> {
        self.call(Image::lock_owners_blocking).await
    }

    /// [`Image::lock_owners`], for code already on the blocking pool.
    pub(crate) fn lock_owners_blocking(&self) -> Result<Vec<String>> {
        let mut max: usize = 4;
        loop {
            let mut mode: sys::rbd_lock_mode_t = 0;
            let mut owners: Vec<*mut c_char> = vec![ptr::null_mut(); max];
            let mut count = max;
            // SAFETY: image open; owners has room for `count` pointers,
            // filled by librbd and freed by the cleanup call below.
            let ret = unsafe { sys::rbd_lock_get_owners(self.raw(), &mut mode, owners.as_mut_ptr(), &mut count) };
            if ret == -libc::ERANGE && count > max {
                max = count;
                continue;
            }
            if ret == -libc::ENOENT {
                return Ok(Vec::new());
            }
            check("rbd_lock_get_owners", ret).map_err(|e| e.target(self.spec()))?;
            let out = owners[..count]
                .iter()
                // SAFETY: each of the first `count` entries is a NUL-terminated string from librbd.
                .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
                .collect();
            // SAFETY: entries filled by rbd_lock_get_owners, cleaned once.
            unsafe { sys::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), count) };
            return Ok(out);
        }
    }

    /// Breaks `owner`'s exclusive lock; with Ceph's default
    /// `rbd_blocklist_on_break_lock`, the owner is blocklisted, so none of
    /// its writes can land afterwards.
    pub async fn lock_break(&self, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.call(move |img| {
            let o = cstring(&owner, "lock owner")?;
            // SAFETY: image open; o a valid C string.
            let ret =
                unsafe { sys::rbd_lock_break(img.raw(), sys::rbd_lock_mode_t_RBD_LOCK_MODE_EXCLUSIVE, o.as_ptr()) };
            check("rbd_lock_break", ret)
                .map(|_| ())
                .map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// Whether this handle owns the image's exclusive lock (taken
    /// explicitly, or by librbd for an operation that needed it).
    pub async fn is_lock_owner(&self) -> Result<bool> {
        self.call(|img| {
            let mut owner: c_int = 0;
            // SAFETY: image open; owner is a valid out-pointer.
            let ret = unsafe { sys::rbd_is_exclusive_lock_owner(img.raw(), &mut owner) };
            check("rbd_is_exclusive_lock_owner", ret)
                .map(|_| owner != 0)
                .map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// Releases the image's exclusive lock held by this handle (taken with
    /// [`Image::lock_acquire_exclusive`], or by librbd for an operation).
    pub async fn lock_release(&self) -> Result<()> {
        self.call(|img| {
            // SAFETY: image open.
            let ret = unsafe { sys::rbd_lock_release(img.raw()) };
            check("rbd_lock_release", ret)
                .map(|_| ())
                .map_err(|e| e.target(img.spec()))
        })
        .await
    }

    /// Reads `len` bytes at `offset` into `buf` (resized to `len`), returning it.
    pub async fn read(&self, offset: u64, len: usize, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        buf.resize(len, 0);
        let op = AioOp::submit(self, "rbd_aio_read", offset, Some(buf), |h, p, c| {
            // SAFETY: p points at `len` writable bytes owned by the operation
            // until the completion fires.
            unsafe { sys::rbd_aio_read(h, offset, len, p.cast(), c) }
        })?;
        let (name, off) = (op.op(), op.offset());
        let (ret, buf) = op.await;
        let buf = buf.expect("read owns a buffer");
        if ret < 0 {
            return Err(Error::from_errno(name, ret as i32).target(self.spec()).offset(off));
        }
        if (ret as usize) != len {
            return Err(Error::new(ErrorKind::Io, name)
                .target(self.spec())
                .offset(off)
                .message(format!("short read: {ret} of {len} bytes")));
        }
        Ok(buf)
    }

    /// Writes `buf[range]` at `offset`; returns the buffer for reuse.
    pub async fn write(&self, offset: u64, buf: Vec<u8>, range: std::ops::Range<usize>) -> Result<Vec<u8>> {
        assert!(range.end <= buf.len(), "write range outside the buffer");
        let len = range.len();
        let start = range.start;
        let op = AioOp::submit(self, "rbd_aio_write", offset, Some(buf), |h, p, c| {
            // SAFETY: p + start .. p + start + len lies within the buffer the
            // operation owns until the completion fires.
            unsafe { sys::rbd_aio_write(h, offset, len, p.add(start).cast(), c) }
        })?;
        let (name, off) = (op.op(), op.offset());
        let (ret, buf) = op.await;
        if ret < 0 {
            return Err(Error::from_errno(name, ret as i32).target(self.spec()).offset(off));
        }
        Ok(buf.expect("write owns a buffer"))
    }

    /// Discards `len` bytes at `offset` (they read back as zeros).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.no_buffer_op("rbd_aio_discard", offset, |h, c| {
            // SAFETY: image open; c a fresh completion.
            unsafe { sys::rbd_aio_discard(h, offset, len, c) }
        })
        .await
    }

    /// Writes zeros over `len` bytes at `offset`, deallocating where possible.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.no_buffer_op("rbd_aio_write_zeroes", offset, |h, c| {
            // SAFETY: image open; c a fresh completion.
            unsafe { sys::rbd_aio_write_zeroes(h, offset, len as usize, c, 0, 0) }
        })
        .await
    }

    /// Flushes all writes acknowledged so far to the cluster.
    pub async fn flush(&self) -> Result<()> {
        self.no_buffer_op("rbd_aio_flush", 0, |h, c| {
            // SAFETY: image open; c a fresh completion.
            unsafe { sys::rbd_aio_flush(h, c) }
        })
        .await
    }

    async fn no_buffer_op(
        &self,
        name: &'static str,
        offset: u64,
        start: impl FnOnce(sys::rbd_image_t, sys::rbd_completion_t) -> libc::c_int,
    ) -> Result<()> {
        let op = AioOp::submit(self, name, offset, None, |h, _, c| start(h, c))?;
        let (ret, _) = op.await;
        if ret < 0 {
            return Err(Error::from_errno(name, ret as i32).target(self.spec()).offset(offset));
        }
        Ok(())
    }

    /// Bytes in allocated extents (what `rbd du` reports as used, with
    /// object granularity when `whole_object`).
    pub async fn allocated_bytes(&self, whole_object: bool) -> Result<u64> {
        self.changed_bytes(None, whole_object).await
    }

    /// Bytes written since snapshot `from_snap` (discards and zeroed
    /// ranges included), or allocated at all with `None`.
    pub async fn changed_bytes(&self, from_snap: Option<&str>, whole_object: bool) -> Result<u64> {
        let size = self.info().await?.size;
        let mut diff = self.diff(from_snap, 0, size, whole_object);
        let mut total = 0;
        while let Some(e) = diff.next().await {
            let e = e?;
            if e.exists || from_snap.is_some() {
                total += e.len;
            }
        }
        Ok(total)
    }

    /// Closes the image and waits until librbd has closed it (other clones
    /// of this handle, including in-flight operations, are waited for).
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        *self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        drop(self);
        let _ = rx.await;
    }
}
