//! Server-side copies of an image's data objects: the OSDs move the bytes.
//!
//! A same-cluster copy through the client is bound by the client's CPU
//! (messenger checksums, socket copies, the copy out of librbd's buffer).
//! RADOS' `copy_from` has the destination object's primary OSD pull the
//! object from the source's; nothing passes through the client. It is used
//! only where the result is exactly what a copy through librbd would leave:
//! - both images are format 2 in one cluster with the same layout (object
//!   size, stripe unit and count), so object n of one holds the same image
//!   bytes as object n of the other, whatever the striping or data pool;
//! - the source holds all its data itself (no parent overlap: librbd reads
//!   a clone's unwritten objects from its parent);
//! - the destination has no snapshots (writes carry no snapshot context),
//!   no journal, no parent, and no other client holds its exclusive lock.
//!
//! The copier holds the destination's exclusive lock (taken the way a
//! writer takes it, so that a later driver that finds it dead breaks it and
//! blocklists it: its copies can then no longer land). Its object map is
//! updated in RADOS (the `rbd` class's `object_map_update`, an object at a
//! time, after the object is copied); the map the lock loaded into this
//! process is stale until the lock is let go at the end
//! ([`ObjectCopy::finish`]), after which whoever takes it loads the new one.
//!
//! A delta (live rounds, the final delta) overwrites objects the
//! destination already has: [`ObjectCopy::overwrite`] copies a whole object
//! only onto an existing one (the operation asserts it), so the object map
//! (loaded by the delta's writer) needs no change; the caller applies the
//! changed extents through librbd where it refuses.
//!
//! Thin stays thin, and mostly-zero objects stay cheap: before an object
//! is copied, the source's OSD checksums (CRC-32C) 16 small samples spread
//! over it, in one read. Mostly data (half the samples or more differ from
//! zeros' checksum): the OSDs copy it. Otherwise ([`ObjectCopied::Sparse`])
//! copying it whole would move and store its zeros, so the caller reads it
//! ([`ObjectCopy::read_object`]) and writes only its non-zero blocks
//! ([`ObjectCopy::write_object`]), or nothing if it is all zeros: a zero
//! block is only ever skipped after reading it, never on a checksum alone.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use livemig_ceph_sys as sys;

use super::aio::AioOp;
use super::data_objects::{block_name_prefix, old_format, parent_overlap, read_at_snapshot_of, snapshot_count};
use super::layout::Layout;
use super::{blocking, check, cstring, Features, Image, IoCtx};
use crate::error::{Error, ErrorKind, Result};

/// What became of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectCopied {
    /// The OSDs copied it.
    Data,
    /// The source does not have it (at the copy's snapshot): left absent.
    Absent,
    /// Of `size` bytes, mostly zeros by its samples: not copied; the caller
    /// moves its non-zero blocks (see the module docs).
    Sparse {
        /// The source object's size.
        size: u64,
    },
}

/// One side's data objects: the io-context of its data pool (reading at
/// the image's snapshot, for the source) and the objects' name prefix.
pub(super) struct DataSide {
    pub(super) ioctx: IoCtx,
    prefix: String,
    pub(super) spec: String,
}

impl DataSide {
    pub(super) fn object_name(&self, object_no: u64) -> Result<CString> {
        cstring(&format!("{}.{object_no:016x}", self.prefix), "object name")
    }

    pub(super) fn target(&self, name: &CString) -> String {
        format!("{} object {}", self.spec, name.to_string_lossy())
    }
}

/// A server-side copy from one image's data objects onto another's, made
/// by [`Image::object_copy_to`]. Holds both images open.
pub struct ObjectCopy {
    pub(super) src: DataSide,
    pub(super) dst: DataSide,
    /// The destination's object map: its pool's io-context and object name.
    dst_map: Option<(IoCtx, CString)>,
    pub(super) layout: Layout,
    /// CRC-32C of so many zero bytes, as the OSDs compute it.
    pub(super) zero_sums: Mutex<HashMap<u64, u32>>,
    /// The destination holds its exclusive lock for the copy (it has the
    /// feature): let go by [`ObjectCopy::finish`].
    dst_locked: bool,
    /// Made for a delta: only existing destination objects are overwritten.
    overwrite_only: bool,
    dst_image: Image,
    _src_image: Image,
}

impl fmt::Debug for ObjectCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} ({})", self.src.spec, self.dst.spec, self.layout)
    }
}

impl Image {
    /// A server-side copy of this image's data objects (at the snapshot it
    /// is open at, or its head) onto `dst`'s, or why there can be none (see
    /// the module docs) as `Ok(Err(reason))`.
    ///
    /// On success `dst` holds its exclusive lock (if it has the feature);
    /// [`ObjectCopy::finish`] lets it go.
    pub async fn object_copy_to(&self, dst: &Image) -> Result<std::result::Result<ObjectCopy, String>> {
        let (src, dst_img) = (self.clone(), dst.clone());
        let copy = match blocking(move || ObjectCopy::plan(src, dst_img)).await? {
            Ok(copy) => copy,
            Err(why) => return Ok(Err(why)),
        };
        if copy.dst_locked && !dst.is_lock_owner().await? {
            // Taken as librbd takes it for a writer (transparently: another
            // client asking for it is answered, a dead one's is broken).
            dst.metadata_set(LOCK_PROBE_KEY, "copying").await?;
            dst.metadata_remove(LOCK_PROBE_KEY).await?;
            if !dst.is_lock_owner().await? {
                return Ok(Err("the destination's exclusive lock could not be taken".into()));
            }
        }
        Ok(Ok(copy))
    }
}

impl Image {
    /// Server-side overwrites of whole objects of `dst` (which holds this
    /// image's content as of some earlier point and is being brought up to
    /// date by a writer that holds its lock) with this image's (at the
    /// snapshot it is open at, or its head), or why there can be none.
    pub async fn object_overwrite_to(&self, dst: &Image) -> Result<std::result::Result<ObjectCopy, String>> {
        let (src, dst) = (self.clone(), dst.clone());
        Ok(blocking(move || ObjectCopy::plan(src, dst)).await?.map(|mut copy| {
            copy.dst_locked = false;
            copy.overwrite_only = true;
            copy
        }))
    }
}

/// Image-meta key set and removed on the destination to take its lock.
const LOCK_PROBE_KEY: &str = "livemig.object-copy";

/// Times a copy that the OSD refused because the source object was busy
/// or changing is tried again.
const COPY_RETRIES: u32 = 6;

impl ObjectCopy {
    fn plan(src: Image, dst: Image) -> Result<std::result::Result<ObjectCopy, String>> {
        if src.ioctx().cluster().fsid() != dst.ioctx().cluster().fsid() {
            return Ok(Err("the images are in different clusters".into()));
        }
        let (si, di) = (src.info_blocking()?, dst.info_blocking()?);
        let layout = Layout::normalized(si.object_size, si.stripe_unit, si.stripe_count);
        let dst_layout = Layout::normalized(di.object_size, di.stripe_unit, di.stripe_count);
        if layout != dst_layout {
            return Ok(Err(format!(
                "the layouts differ (source: {layout}; destination: {dst_layout})"
            )));
        }
        if di.size < si.size {
            return Ok(Err("the destination is smaller than the source".into()));
        }
        for (img, side) in [(&src, "source"), (&dst, "destination")] {
            if old_format(img)? {
                return Ok(Err(format!("the {side} is a format 1 image")));
            }
            if parent_overlap(img)? > 0 {
                return Ok(Err(format!("the {side} is a clone: its parent holds part of its data")));
            }
        }
        if di.features.contains(Features::JOURNALING) {
            return Ok(Err("the destination journals its writes".into()));
        }
        if snapshot_count(&dst)? > 0 {
            return Ok(Err("the destination has snapshots".into()));
        }
        if lock_held_elsewhere(&dst)? {
            return Ok(Err("another client holds the destination's exclusive lock".into()));
        }
        let src_side = DataSide {
            ioctx: data_ioctx(&src)?,
            prefix: block_name_prefix(&src)?,
            spec: src.spec(),
        };
        read_at_snapshot_of(&src, &src_side.ioctx)?;
        let dst_side = DataSide {
            ioctx: data_ioctx(&dst)?,
            prefix: block_name_prefix(&dst)?,
            spec: dst.spec(),
        };
        let dst_map = match di.features.contains(Features::OBJECT_MAP) {
            true => Some((
                dst.ioctx().clone(),
                cstring(&format!("rbd_object_map.{}", di.id), "object name")?,
            )),
            false => None,
        };
        Ok(Ok(ObjectCopy {
            src: src_side,
            dst: dst_side,
            dst_map,
            layout,
            zero_sums: Mutex::new(HashMap::new()),
            dst_locked: di.features.contains(Features::EXCLUSIVE_LOCK),
            overwrite_only: false,
            dst_image: dst,
            _src_image: src,
        }))
    }

    /// Lets go of the destination's exclusive lock, so that whoever takes
    /// it next (this handle included, for its next write) loads the object
    /// map the copy updated. Fails if the lock was taken from this copier
    /// during the copy: another client may then hold a map without the
    /// objects copied after it took the lock.
    pub async fn finish(self) -> Result<()> {
        if !self.dst_locked {
            return Ok(());
        }
        if !self.dst_image.is_lock_owner().await? {
            return Err(Error::new(ErrorKind::Fenced, "copy")
                .target(self.dst.spec.clone())
                .message(format!(
                    "another client took `{}`'s exclusive lock during the server-side copy",
                    self.dst.spec
                )));
        }
        self.dst_image.lock_release().await
    }

    /// The destination image, as `pool[/namespace]/image`.
    pub fn destination(&self) -> &str {
        &self.dst.spec
    }

    /// The layout both images share.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Copies object `object_no` of the source onto the destination's
    /// (replacing it whole), unless the source has none or its samples say
    /// it is mostly zeros ([`ObjectCopied::Sparse`]). A copied object is
    /// then to be marked in the destination's object map
    /// ([`ObjectCopy::mark_copied`]).
    pub async fn copy(&self, object_no: u64) -> Result<ObjectCopied> {
        let src_name = self.src.object_name(object_no)?;
        let Some((size, mostly_data)) = self.sample(&src_name).await? else {
            return Ok(ObjectCopied::Absent);
        };
        if !mostly_data {
            return Ok(ObjectCopied::Sparse { size });
        }
        if !self.copy_with_retries(object_no, &src_name).await? {
            // Gone since the probe: only possible at the head.
            return Ok(ObjectCopied::Absent);
        }
        Ok(ObjectCopied::Data)
    }

    /// Replaces the destination's object `object_no`, which must exist, with
    /// the source's whole. `false`, nothing written, when either does not
    /// exist: the caller then applies the changes through librbd.
    pub async fn overwrite(&self, object_no: u64) -> Result<bool> {
        debug_assert!(self.overwrite_only, "made by object_overwrite_to");
        let src_name = self.src.object_name(object_no)?;
        self.copy_with_retries(object_no, &src_name).await
    }

    /// Copies the object (onto an existing one in overwrite mode), trying
    /// again while the OSD refuses it as busy; `false` on `ENOENT`.
    async fn copy_with_retries(&self, object_no: u64, src_name: &CString) -> Result<bool> {
        let dst_name = self.dst.object_name(object_no)?;
        let mut attempt = 0;
        loop {
            let ret = self.copy_from(src_name, &dst_name).await?;
            match -ret as i32 {
                0 => return Ok(true),
                libc::ENOENT => return Ok(false),
                libc::EAGAIN | libc::EBUSY | libc::ERANGE | libc::ECANCELED if attempt < COPY_RETRIES => {
                    attempt += 1;
                    tracing::debug!(object = %self.src.target(src_name), ret, attempt, "copy refused; retrying");
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                _ => {
                    return Err(Error::from_errno("copy_from", ret as i32)
                        .target(self.dst.target(&dst_name))
                        .offset(self.layout.set_start(object_no))
                        .message(format!(
                            "the OSDs could not copy {} to {}",
                            self.src.target(src_name),
                            self.dst.target(&dst_name)
                        )))
                }
            }
        }
    }

    async fn copy_from(&self, src_name: &CString, dst_name: &CString) -> Result<i64> {
        let target = self.dst.target(dst_name);
        let flags = sys::LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | sys::LIBRADOS_OP_FLAG_FADVISE_NOCACHE;
        let assert_exists = libc::c_int::from(self.overwrite_only);
        let aio = {
            let (dst_io, src_io) = (self.dst.ioctx.raw(), self.src.ioctx.raw());
            AioOp::submit_rados(
                &target,
                "copy_from",
                0,
                (),
                Box::new((self.dst.ioctx.clone(), self.src.ioctx.clone())),
                |_, c| {
                    // SAFETY: both io-contexts and c are valid and kept alive
                    // with the operation; the names are valid C strings that
                    // the shim encodes into the operation before returning.
                    unsafe {
                        sys::livemig_rados_aio_copy_from(
                            dst_io,
                            dst_name.as_ptr(),
                            src_io,
                            src_name.as_ptr(),
                            flags,
                            assert_exists,
                            c,
                        )
                    }
                },
            )?
        };
        Ok(aio.await.0)
    }

    /// Marks objects that now exist (copied by [`ObjectCopy::copy`] or
    /// written by [`ObjectCopy::write_object`]) in the destination's object
    /// map, a class call per run of consecutive objects. Until their mark
    /// has landed, objects must count as not copied (a reader trusts the
    /// map and would skip them).
    pub async fn mark_copied(&self, objects: &[u64]) -> Result<()> {
        // One call per operation: each call reads, changes and writes back
        // the part of the map it covers, and a later call in the same
        // operation would read the map as it was before the operation.
        futures::future::try_join_all(runs_of(objects).into_iter().map(|run| self.mark_run(run))).await?;
        Ok(())
    }

    async fn mark_run(&self, run: std::ops::Range<u64>) -> Result<()> {
        let Some((io, name)) = &self.dst_map else {
            return Ok(());
        };
        // cls_rbd's object_map_update: start, end, new state (1: exists),
        // and no expected current state.
        let mut input = Vec::with_capacity(18);
        input.extend_from_slice(&run.start.to_le_bytes());
        input.extend_from_slice(&run.end.to_le_bytes());
        input.extend_from_slice(&[1, 0]);
        let target = format!("{} object map", self.dst.spec);
        let aio = {
            let raw = io.raw();
            AioOp::submit_rados(
                &target,
                "object_map_update",
                run.start,
                input,
                Box::new(io.clone()),
                |input, c| {
                    // SAFETY: the io-context and c are valid and kept alive
                    // with the operation; input lives in its shared block
                    // until the completion fires; no output is asked for.
                    unsafe {
                        sys::rados_aio_exec(
                            raw,
                            name.as_ptr(),
                            c,
                            c"rbd".as_ptr(),
                            c"object_map_update".as_ptr(),
                            input.as_ptr().cast(),
                            input.len(),
                            std::ptr::null_mut(),
                            0,
                        )
                    }
                },
            )?
        };
        let (ret, _) = aio.await;
        if ret < 0 {
            return Err(Error::from_errno("object_map_update", ret as i32)
                .target(target)
                .offset(run.start));
        }
        Ok(())
    }
}

/// `objects` (ascending) as runs of consecutive numbers.
fn runs_of(objects: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    for &n in objects {
        match runs.last_mut() {
            Some(r) if r.end == n => r.end = n + 1,
            _ => runs.push(n..n + 1),
        }
    }
    runs
}

/// Whether a client other than this handle owns the image's exclusive lock.
fn lock_held_elsewhere(img: &Image) -> Result<bool> {
    let mut owner = 0;
    // SAFETY: the image is open; owner is a valid out-pointer.
    let ret = unsafe { sys::rbd_is_exclusive_lock_owner(img.raw(), &mut owner) };
    check("rbd_is_exclusive_lock_owner", ret).map_err(|e| e.target(img.spec()))?;
    Ok(owner == 0 && !img.lock_owners_blocking()?.is_empty())
}

fn data_ioctx(img: &Image) -> Result<IoCtx> {
    // SAFETY: the image is open.
    let pool_id = unsafe { sys::rbd_get_data_pool_id(img.raw()) };
    if pool_id < 0 {
        return Err(Error::from_errno("rbd_get_data_pool_id", pool_id as i32).target(img.spec()));
    }
    img.ioctx().data_pool_blocking(pool_id)
}

#[cfg(test)]
mod tests {
    use super::runs_of;

    #[test]
    fn consecutive_objects_make_one_run() {
        assert_eq!(runs_of(&[]), vec![]);
        assert_eq!(runs_of(&[4]), vec![4..5]);
        assert_eq!(runs_of(&[0, 1, 2, 5, 6, 9]), vec![0..3, 5..7, 9..10]);
    }
}
