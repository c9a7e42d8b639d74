//! Creating and opening a pool's images: the io-context's constructors of
//! [`Image`]s (here, so that `ioctx` needs nothing from `image`).

use std::ptr;

use livemig_ceph_sys as sys;

use super::features::Features;
use super::image::{CreateOptions, Image};
use super::ioctx::IoCtx;
use super::{blocking, check, cstring};
use crate::error::{ErrorKind, Result};

impl IoCtx {
    /// Creates an image of `size` bytes with the given layout.
    pub async fn create_image(&self, name: &str, size: u64, opts: &CreateOptions) -> Result<()> {
        let io = self.clone();
        let name = name.to_owned();
        let opts = opts.clone();
        blocking(move || {
            let n = cstring(&name, "image name")?;
            let mut o: sys::rbd_image_options_t = ptr::null_mut();
            // SAFETY: o is a valid out-pointer; destroyed below.
            unsafe { sys::rbd_image_options_create(&mut o) };
            let set = |key: u32, v: Option<u64>| -> Result<()> {
                if let Some(v) = v {
                    // SAFETY: o is a live options handle.
                    check("rbd_image_options_set_uint64", unsafe {
                        sys::rbd_image_options_set_uint64(o, key as libc::c_int, v)
                    })?;
                }
                Ok(())
            };
            let r = set(sys::RBD_IMAGE_OPTION_ORDER, opts.order.map(u64::from))
                .and_then(|_| set(sys::RBD_IMAGE_OPTION_FEATURES, opts.features.map(Features::bits)))
                .and_then(|_| set(sys::RBD_IMAGE_OPTION_STRIPE_UNIT, opts.stripe_unit))
                .and_then(|_| set(sys::RBD_IMAGE_OPTION_STRIPE_COUNT, opts.stripe_count))
                .and_then(|_| match &opts.data_pool {
                    Some(pool) => {
                        let pool = cstring(pool, "data pool name")?;
                        // SAFETY: o is a live options handle; librbd copies the string.
                        check("rbd_image_options_set_string", unsafe {
                            sys::rbd_image_options_set_string(
                                o,
                                sys::RBD_IMAGE_OPTION_DATA_POOL as libc::c_int,
                                pool.as_ptr(),
                            )
                        })
                        .map(|_| ())
                    }
                    None => Ok(()),
                })
                .and_then(|_| {
                    // SAFETY: io is valid; n a valid C string; o a live options handle.
                    let ret = unsafe { sys::rbd_create4(io.raw(), n.as_ptr(), size, o) };
                    check("rbd_create4", ret).map(|_| ())
                });
            // SAFETY: o was created above and is destroyed once.
            unsafe { sys::rbd_image_options_destroy(o) };
            r.map_err(|e| {
                let spec = io.image_spec(&name);
                match e.kind() {
                    ErrorKind::DestinationExists => {
                        e.target(spec.clone()).message(format!("image `{spec}` already exists"))
                    }
                    _ => e.target(spec),
                }
            })
        })
        .await
    }

    /// Opens an image for reading and writing.
    pub async fn open_image(&self, name: &str) -> Result<Image> {
        self.open(name, None, false).await
    }

    /// Opens an image read-only, at `snap` if given.
    pub async fn open_image_read_only(&self, name: &str, snap: Option<&str>) -> Result<Image> {
        self.open(name, snap, true).await
    }

    /// Opens an image read-only by its id (works for images in the trash).
    pub async fn open_image_by_id_read_only(&self, id: &str) -> Result<Image> {
        let io = self.clone();
        let id = id.to_owned();
        blocking(move || {
            let idc = cstring(&id, "image id")?;
            let mut h: sys::rbd_image_t = ptr::null_mut();
            // SAFETY: io is valid; idc a valid C string; h an out-pointer; no snapshot.
            let ret = unsafe { sys::rbd_open_by_id_read_only(io.raw(), idc.as_ptr(), &mut h, ptr::null()) };
            check("rbd_open_by_id_read_only", ret).map_err(|e| {
                let msg = format!("no image with id `{id}` in `{}`", io.pool_spec());
                e.target(io.pool_spec()).message(msg)
            })?;
            let name = format!("id:{id}");
            // SAFETY: h was just opened, and is handed over.
            Ok(unsafe { Image::from_open_handle(h, io, name, None) })
        })
        .await
    }

    async fn open(&self, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        let io = self.clone();
        let name = name.to_owned();
        let snap = snap.map(str::to_owned);
        blocking(move || {
            let n = cstring(&name, "image name")?;
            let s = snap.as_deref().map(|s| cstring(s, "snapshot name")).transpose()?;
            let s_ptr = s.as_ref().map_or(ptr::null(), |c| c.as_ptr());
            let mut h: sys::rbd_image_t = ptr::null_mut();
            // SAFETY: io is valid; names are valid C strings or NULL; h is an out-pointer.
            let ret = unsafe {
                if read_only {
                    sys::rbd_open_read_only(io.raw(), n.as_ptr(), &mut h, s_ptr)
                } else {
                    sys::rbd_open(io.raw(), n.as_ptr(), &mut h, s_ptr)
                }
            };
            let spec = io.image_spec(&name);
            check("rbd_open", ret).map_err(|e| {
                let msg = match (&snap, e.kind()) {
                    (Some(sn), ErrorKind::ImageNotFound) => {
                        format!("image `{spec}` or its snapshot `{sn}` does not exist")
                    }
                    (None, ErrorKind::ImageNotFound) => format!("image `{spec}` does not exist"),
                    _ => format!("cannot open image `{spec}`"),
                };
                e.target(spec.clone()).message(msg)
            })?;
            // SAFETY: h was just opened, and is handed over.
            Ok(unsafe { Image::from_open_handle(h, io, name, snap) })
        })
        .await
    }
}
