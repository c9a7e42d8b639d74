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
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use livemig_ceph_sys as sys;

use super::aio::AioOp;
use super::object::{ReadOp, WriteOp};
use super::{blocking, check, cstring, Features, Image, IoCtx};
use crate::error::{Error, ErrorKind, Result};

/// How an image's bytes are spread over its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per object.
    pub object_size: u64,
    /// Bytes written to one object before moving to the next of its set.
    pub stripe_unit: u64,
    /// Objects per object set.
    pub stripe_count: u64,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "object size {}, stripe unit {}, stripe count {}",
            self.object_size, self.stripe_unit, self.stripe_count
        )
    }
}

impl Layout {
    fn normalized(object_size: u64, stripe_unit: u64, stripe_count: u64) -> Layout {
        let object_size = object_size.max(1);
        Layout {
            object_size,
            stripe_unit: if stripe_unit == 0 { object_size } else { stripe_unit },
            stripe_count: stripe_count.max(1),
        }
    }

    /// Image bytes of one object set (its objects hold exactly these).
    pub fn period(&self) -> u64 {
        self.object_size * self.stripe_count
    }

    /// Where the object set holding object `object_no` begins in the image.
    pub fn set_start(&self, object_no: u64) -> u64 {
        object_no / self.stripe_count * self.period()
    }

    /// The objects holding any byte of `range` (image offsets), in order.
    pub fn objects_in(&self, range: Range<u64>) -> Vec<u64> {
        let mut objects = Vec::new();
        if range.start >= range.end {
            return objects;
        }
        let (period, su, sc) = (self.period(), self.stripe_unit, self.stripe_count);
        let mut set = range.start / period;
        while set * period < range.end {
            let (set_start, set_end) = (set * period, (set + 1) * period);
            let (from, to) = (range.start.max(set_start), range.end.min(set_end));
            let first = set * sc;
            if to - from >= su * sc {
                // A whole stripe (or more) touches every object of the set.
                objects.extend(first..first + sc);
            } else {
                let mut hit = vec![false; sc as usize];
                for unit in (from - set_start) / su..=(to - 1 - set_start) / su {
                    hit[(unit % sc) as usize] = true;
                }
                objects.extend((0..sc).filter(|i| hit[*i as usize]).map(|i| first + i));
            }
            set += 1;
        }
        objects
    }
}

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
struct DataSide {
    ioctx: IoCtx,
    prefix: String,
    spec: String,
}

impl DataSide {
    fn object_name(&self, object_no: u64) -> Result<CString> {
        cstring(&format!("{}.{object_no:016x}", self.prefix), "object name")
    }

    fn target(&self, name: &CString) -> String {
        format!("{} object {}", self.spec, name.to_string_lossy())
    }
}

/// A server-side copy from one image's data objects onto another's, made
/// by [`Image::object_copy_to`]. Holds both images open.
pub struct ObjectCopy {
    src: DataSide,
    dst: DataSide,
    /// The destination's object map: its pool's io-context and object name.
    dst_map: Option<(IoCtx, CString)>,
    layout: Layout,
    /// CRC-32C of so many zero bytes, as the OSDs compute it.
    zero_sums: Mutex<HashMap<u64, u32>>,
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

/// Samples checksummed per object, and the bytes of each.
const SAMPLES: usize = 16;
const SAMPLE_LEN: u64 = 4096;

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
        if let Some(name) = src.snap_name() {
            let name = cstring(name, "snapshot name")?;
            let mut id = 0u64;
            // SAFETY: the image is open; name is a valid C string; id a valid out-pointer.
            let ret = unsafe { sys::rbd_snap_get_id(src.raw(), name.as_ptr(), &mut id) };
            check("rbd_snap_get_id", ret).map_err(|e| e.target(src.spec()))?;
            // SAFETY: the io-context is this copy's alone; id is the image's snapshot.
            unsafe { sys::rados_ioctx_snap_set_read(src_side.ioctx.raw(), id) };
        }
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

    /// The layout both images share.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Copies object `object_no` of the source onto the destination's
    /// (replacing it whole), unless the source has none or its samples say
    /// it is mostly zeros ([`ObjectCopied::Sparse`]); a copied object is
    /// then marked in the destination's object map.
    pub async fn copy(&self, object_no: u64) -> Result<ObjectCopied> {
        let src_name = self.src.object_name(object_no)?;
        let Some((size, data_samples)) = self.sample(&src_name).await? else {
            return Ok(ObjectCopied::Absent);
        };
        if data_samples * 2 < SAMPLES {
            return Ok(ObjectCopied::Sparse { size });
        }
        if !self.copy_with_retries(object_no, &src_name).await? {
            // Gone since the probe: only possible at the head.
            return Ok(ObjectCopied::Absent);
        }
        self.mark_exists(object_no).await?;
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

    /// Marks an object that now exists in the destination's object map.
    async fn mark_exists(&self, object_no: u64) -> Result<()> {
        let Some((io, name)) = &self.dst_map else {
            return Ok(());
        };
        // cls_rbd's object_map_update: start, end, new state (1: exists),
        // and no expected current state.
        let mut input = Vec::with_capacity(18);
        input.extend_from_slice(&object_no.to_le_bytes());
        input.extend_from_slice(&(object_no + 1).to_le_bytes());
        input.extend_from_slice(&[1, 0]);
        let target = format!("{} object map", self.dst.spec);
        let aio = {
            let raw = io.raw();
            AioOp::submit_rados(
                &target,
                "object_map_update",
                object_no,
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
                .offset(object_no));
        }
        Ok(())
    }

    /// The source object's size and how many of its samples hold data
    /// (their checksums differ from zeros'), asked of its OSD in one read;
    /// `None` if it does not exist.
    async fn sample(&self, name: &CString) -> Result<Option<(u64, usize)>> {
        let target = self.src.target(name);
        // SAFETY: plain constructor; the handle is owned by ReadOp.
        let op = ReadOp(unsafe { sys::rados_create_read_op() });
        if op.0.is_null() {
            return Err(Error::from_errno("rados_create_read_op", -libc::ENOMEM).target(target));
        }
        let step = (self.layout.object_size / SAMPLES as u64).max(SAMPLE_LEN);
        let aio = {
            let (handle, io) = (op.0, self.src.ioctx.raw());
            AioOp::submit_rados(
                &target,
                "checksum",
                0,
                SampleOut::default(),
                Box::new((op, self.src.ioctx.clone())),
                |out, c| {
                    let seed = u32::MAX.to_le_bytes();
                    // SAFETY: the outputs live in the operation's shared
                    // block until the completion fires; librados copies the
                    // seed now; handle, io and c are valid and kept alive
                    // with the operation; name is a valid C string.
                    unsafe {
                        sys::rados_read_op_stat(handle, &mut out.size, &mut out.mtime, &mut out.stat_ret);
                        for (k, (sum, ret)) in out.sums.iter_mut().zip(out.rets.iter_mut()).enumerate() {
                            sys::rados_read_op_checksum(
                                handle,
                                sys::rados_checksum_type_t_LIBRADOS_CHECKSUM_TYPE_CRC32C,
                                seed.as_ptr().cast(),
                                seed.len(),
                                k as u64 * step,
                                SAMPLE_LEN as usize,
                                0,
                                sum.as_mut_ptr().cast(),
                                sum.len(),
                                ret,
                            );
                        }
                        sys::rados_aio_read_op_operate(handle, io, c, name.as_ptr(), 0)
                    }
                },
            )?
        };
        let (ret, out) = aio.await;
        let out = out.expect("a read owns its outputs");
        if ret == -(libc::ENOENT as i64) {
            return Ok(None);
        }
        let failed = std::iter::once(ret)
            .chain(std::iter::once(out.stat_ret as i64))
            .chain(out.rets.iter().map(|r| *r as i64))
            .find(|r| *r < 0);
        if let Some(r) = failed {
            return Err(Error::from_errno("checksum", r as i32).target(target));
        }
        let mut data = 0;
        for (k, sum) in out.sums.iter().enumerate() {
            let offset = k as u64 * step;
            // A sample at or past the end has no checksum (zeros).
            let len = SAMPLE_LEN.min(out.size.saturating_sub(offset));
            // The reply: a count of checksums, then each (little-endian u32s).
            let count = u32::from_le_bytes(sum[0..4].try_into().expect("4 bytes"));
            if len == 0 || count == 0 {
                continue;
            }
            let crc = u32::from_le_bytes(sum[4..8].try_into().expect("4 bytes"));
            if crc != self.zero_sum(len) {
                data += 1;
            }
        }
        Ok(Some((out.size, data)))
    }

    /// Reads the source's object `object_no` whole (`size` bytes, as
    /// [`ObjectCopied::Sparse`] said) into `buf` (grown to `size` if
    /// shorter; a buffer handed back keeps its length, so reusing it costs
    /// no clearing), returning it with the bytes read (only those are the
    /// object's), or `None` if the object no longer exists.
    pub async fn read_object(&self, object_no: u64, size: u64, mut buf: Vec<u8>) -> Result<Option<(Vec<u8>, usize)>> {
        let name = self.src.object_name(object_no)?;
        let target = self.src.target(&name);
        if buf.len() < size as usize {
            buf.resize(size as usize, 0);
        }
        let aio = {
            let io = self.src.ioctx.raw();
            AioOp::submit_rados(
                &target,
                "rados_aio_read",
                0,
                buf,
                Box::new(self.src.ioctx.clone()),
                |buf, c| {
                    // SAFETY: the buffer lives in the operation's shared block
                    // until the completion fires and is writable for `size`
                    // bytes; io and c are valid and kept alive with the
                    // operation; name is a valid C string (librados copies it).
                    unsafe { sys::rados_aio_read(io, name.as_ptr(), c, buf.as_mut_ptr().cast(), size as usize, 0) }
                },
            )?
        };
        let (ret, buf) = aio.await;
        let buf = buf.expect("a read owns its buffer");
        if ret == -(libc::ENOENT as i64) {
            return Ok(None);
        }
        if ret < 0 {
            return Err(Error::from_errno("rados_aio_read", ret as i32).target(target));
        }
        Ok(Some((buf, (ret as usize).min(size as usize))))
    }

    /// Writes `runs` of `data` (object offsets) to the destination's object
    /// `object_no`, which does not exist yet (the rest reads as zeros), in
    /// one operation, and marks it in the destination's object map.
    pub async fn write_object(&self, object_no: u64, data: &[u8], runs: &[Range<usize>]) -> Result<()> {
        let name = self.dst.object_name(object_no)?;
        let target = self.dst.target(&name);
        // SAFETY: plain constructor; the handle is owned by WriteOp.
        let op = WriteOp(unsafe { sys::rados_create_write_op() });
        if op.0.is_null() {
            return Err(Error::from_errno("rados_create_write_op", -libc::ENOMEM).target(target));
        }
        for run in runs {
            let bytes = &data[run.clone()];
            // SAFETY: bytes is valid for its length; librados copies it now.
            unsafe { sys::rados_write_op_write(op.0, bytes.as_ptr().cast(), bytes.len(), run.start as u64) };
        }
        let aio = {
            let (handle, io) = (op.0, self.dst.ioctx.raw());
            AioOp::submit_rados(
                &target,
                "rados_aio_write_op_operate",
                0,
                (),
                Box::new((op, self.dst.ioctx.clone())),
                |_, c| {
                    // SAFETY: handle, io and c are valid and kept alive with the
                    // operation; name is a valid C string (librados copies it).
                    unsafe { sys::rados_aio_write_op_operate(handle, io, c, name.as_ptr(), std::ptr::null_mut(), 0) }
                },
            )?
        };
        let (ret, _) = aio.await;
        if ret < 0 {
            return Err(Error::from_errno("rados_aio_write_op_operate", ret as i32)
                .target(target)
                .offset(self.layout.set_start(object_no)));
        }
        self.mark_exists(object_no).await
    }

    /// The CRC-32C the OSDs report for `len` zero bytes (seeded with all
    /// ones, without the final inversion of the standard CRC-32C).
    fn zero_sum(&self, len: u64) -> u32 {
        let mut sums = self.zero_sums.lock().unwrap_or_else(|p| p.into_inner());
        *sums.entry(len).or_insert_with(|| zero_crc32c(len))
    }
}

/// See [`ObjectCopy::zero_sum`].
fn zero_crc32c(len: u64) -> u32 {
    let zeros = [0u8; 64 << 10];
    let mut crc = 0u32;
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        crc = crc32c::crc32c_append(crc, &zeros[..n]);
        left -= n as u64;
    }
    !crc
}

/// Where a sampling read reports: the object's size, and each sample's
/// checksum reply (a count, then the checksum).
#[derive(Default)]
struct SampleOut {
    size: u64,
    mtime: libc::time_t,
    stat_ret: libc::c_int,
    sums: [[u8; 8]; SAMPLES],
    rets: [libc::c_int; SAMPLES],
}

fn old_format(img: &Image) -> Result<bool> {
    let mut old = 0u8;
    // SAFETY: the image is open; old is a valid out-pointer.
    let ret = unsafe { sys::rbd_get_old_format(img.raw(), &mut old) };
    check("rbd_get_old_format", ret).map_err(|e| e.target(img.spec()))?;
    Ok(old != 0)
}

fn parent_overlap(img: &Image) -> Result<u64> {
    let mut overlap = 0u64;
    // SAFETY: the image is open; overlap is a valid out-pointer.
    let ret = unsafe { sys::rbd_get_overlap(img.raw(), &mut overlap) };
    if ret == -libc::ENOENT {
        return Ok(0);
    }
    check("rbd_get_overlap", ret).map_err(|e| e.target(img.spec()))?;
    Ok(overlap)
}

fn snapshot_count(img: &Image) -> Result<usize> {
    let mut max_snaps = 0;
    // SAFETY: the image is open; with room for no entry librbd only reports
    // how many it needs (the snapshots and a terminator) in max_snaps.
    let ret = unsafe { sys::rbd_snap_list(img.raw(), std::ptr::null_mut(), &mut max_snaps) };
    match ret {
        0 => Ok(0),
        r if r == -libc::ERANGE => Ok((max_snaps as usize).saturating_sub(1)),
        r => Err(Error::from_errno("rbd_snap_list", r).target(img.spec())),
    }
}

/// Whether a client other than this handle owns the image's exclusive lock.
fn lock_held_elsewhere(img: &Image) -> Result<bool> {
    let mut owner = 0;
    // SAFETY: the image is open; owner is a valid out-pointer.
    let ret = unsafe { sys::rbd_is_exclusive_lock_owner(img.raw(), &mut owner) };
    check("rbd_is_exclusive_lock_owner", ret).map_err(|e| e.target(img.spec()))?;
    if owner != 0 {
        return Ok(false);
    }
    let mut mode: sys::rbd_lock_mode_t = 0;
    let mut owners: [*mut libc::c_char; 4] = [std::ptr::null_mut(); 4];
    let mut max = owners.len();
    // SAFETY: the image is open; owners has room for max entries.
    let ret = unsafe { sys::rbd_lock_get_owners(img.raw(), &mut mode, owners.as_mut_ptr(), &mut max) };
    if ret == -libc::ENOENT || (ret == 0 && max == 0) {
        return Ok(false);
    }
    if ret == 0 {
        // SAFETY: librbd filled max entries, released here once.
        unsafe { sys::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), max) };
        return Ok(true);
    }
    if ret == -libc::ERANGE {
        return Ok(true);
    }
    Err(Error::from_errno("rbd_lock_get_owners", ret).target(img.spec()))
}

fn data_ioctx(img: &Image) -> Result<IoCtx> {
    // SAFETY: the image is open.
    let pool_id = unsafe { sys::rbd_get_data_pool_id(img.raw()) };
    if pool_id < 0 {
        return Err(Error::from_errno("rbd_get_data_pool_id", pool_id as i32).target(img.spec()));
    }
    img.ioctx().data_pool_blocking(pool_id)
}

fn block_name_prefix(img: &Image) -> Result<String> {
    let mut prefix = vec![0u8; 128];
    // SAFETY: prefix is writable for its length.
    let ret = unsafe { sys::rbd_get_block_name_prefix(img.raw(), prefix.as_mut_ptr().cast(), prefix.len()) };
    check("rbd_get_block_name_prefix", ret).map_err(|e| e.target(img.spec()))?;
    Ok(std::ffi::CStr::from_bytes_until_nul(&prefix)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_of_a_plain_layout_follow_the_offsets() {
        let l = Layout::normalized(4 << 20, 0, 0);
        assert_eq!(l.period(), 4 << 20);
        assert_eq!(l.objects_in(0..1), vec![0]);
        assert_eq!(l.objects_in((4 << 20) - 1..(4 << 20) + 1), vec![0, 1]);
        assert_eq!(l.objects_in(8 << 20..20 << 20), vec![2, 3, 4]);
        assert!(l.objects_in(5..5).is_empty());
        assert_eq!(l.set_start(3), 12 << 20);
    }

    #[test]
    fn objects_of_a_striped_layout_follow_the_stripes() {
        // 4 objects of 1 MiB per set, 64 KiB stripe units.
        let l = Layout::normalized(1 << 20, 64 << 10, 4);
        assert_eq!(l.period(), 4 << 20);
        // Units go round the set's objects: unit k is in object k % 4.
        assert_eq!(l.objects_in(0..(64 << 10)), vec![0]);
        assert_eq!(l.objects_in((64 << 10)..(128 << 10) + 1), vec![1, 2]);
        assert_eq!(l.objects_in((3 * (64 << 10))..(5 * (64 << 10))), vec![0, 3]);
        // A whole stripe touches every object of the set.
        assert_eq!(l.objects_in(0..(256 << 10)), vec![0, 1, 2, 3]);
        // The second set holds objects 4..8.
        assert_eq!(l.objects_in((4 << 20) + 1..(4 << 20) + 2), vec![4]);
        assert_eq!(l.set_start(6), 4 << 20);
        // Brute force against the striping formula.
        for start in (0..(9 << 20)).step_by(50_000) {
            let end = start + 300_000;
            let mut want: Vec<u64> = (start..end)
                .step_by(4096)
                .chain(std::iter::once(end - 1))
                .map(|off| {
                    let unit = off / l.stripe_unit;
                    let (stripe, pos) = (unit / l.stripe_count, unit % l.stripe_count);
                    stripe / (l.object_size / l.stripe_unit) * l.stripe_count + pos
                })
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(l.objects_in(start..end), want, "{start}..{end}");
        }
    }

    #[test]
    fn the_zero_checksum_is_the_unfinished_crc32c_of_zeros() {
        // Seeded with all ones and not inverted at the end: the standard
        // CRC-32C of one zero byte is 0x527d5351.
        assert_eq!(zero_crc32c(1), !0x527d_5351);
        assert_eq!(zero_crc32c(0), u32::MAX);
        let long: u32 = !crc32c::crc32c(&vec![0u8; 200_000]);
        assert_eq!(zero_crc32c(200_000), long);
    }
}
