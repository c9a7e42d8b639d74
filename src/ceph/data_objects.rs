//! Reading and writing an image's data objects directly, several extents
//! per operation.
//!
//! A delta of small scattered writes costs librbd one OSD operation per
//! extent, and on a busy OSD the operation count, not the bytes, sets how
//! long a replay round (and the cutover, with the instance held) takes.
//! RADOS can carry many reads or writes of one object in one operation
//! (writes applied atomically), so the changes a delta makes to one object
//! cost one read of the source's snapshot and one write.
//!
//! This is only done where it is exactly what librbd would do:
//! - the layout is plain: format 2, no striping (stripe unit = object size,
//!   count 1), data in the image's own pool, no parent (no copy-up owed),
//!   no journal (which would have to record the writes);
//! - for writing, the image is open at its head and has no snapshots
//!   (writes carry no snapshot context); reading is done at the snapshot
//!   the image is open at, or at its head (a fenced source, whose round
//!   snapshots do not matter to a read);
//! - the object already exists: the operation first asserts it and fails
//!   whole with nothing written otherwise, and the caller then writes
//!   through librbd, which creates it. librbd marks an object as existing
//!   in the object map before it creates it and as gone only after it has
//!   removed it, so an object that exists is one the object map shows to
//!   readers; a write into it needs no map update (an image without
//!   snapshots has no clean/dirty state for fast-diff to track).
//!
//! A writer must hold the image's exclusive lock (have it open and have
//! written to it), as for any write.

use std::ffi::CString;
use std::ops::Range;

use livemig_ceph_sys as sys;

use super::aio::AioOp;
use super::object::{ReadOp, WriteOp};
use super::{blocking, check, cstring, Features, Image, IoCtx};
use crate::error::{Error, Result};

/// An image's data objects, when they may be used directly (see the
/// module docs). Holds the image open.
pub struct DataObjects {
    /// A private io-context: reads are made at the image's snapshot (or head).
    ioctx: IoCtx,
    /// Open at its head with no snapshots: writes may go to the objects.
    writable: bool,
    prefix: String,
    object_size: u64,
    image: Image,
}

impl std::fmt::Debug for DataObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}.*)", self.image.spec(), self.prefix)
    }
}

impl Image {
    /// This image's data objects, if they may be used directly: read at the
    /// snapshot the image is open at (or its head), and written if it is
    /// open at its head and has no snapshots ([`DataObjects::writable`]).
    /// `None` when its layout or features need librbd (see [`DataObjects`]).
    pub async fn data_objects(&self) -> Result<Option<DataObjects>> {
        let img = self.clone();
        blocking(move || DataObjects::for_image(img)).await
    }
}

impl DataObjects {
    fn for_image(image: Image) -> Result<Option<DataObjects>> {
        let info = image.info_blocking()?;
        let h = image.raw();
        let plain_layout = info.stripe_count <= 1 && info.stripe_unit == info.object_size && info.object_size > 0;
        if !plain_layout || info.features.contains(Features::JOURNALING) {
            return Ok(None);
        }
        if !matches!(old_format(&image), Ok(false)) {
            return Ok(None);
        }
        // SAFETY: h is open.
        if unsafe { sys::rbd_get_data_pool_id(h) } != unsafe { sys::rados_ioctx_get_id(image.ioctx().raw()) } {
            return Ok(None);
        }
        if !matches!(parent_overlap(&image), Ok(0)) {
            return Ok(None);
        }
        let writable = match image.snap_name() {
            Some(_) => false,
            None => match snapshot_count(&image) {
                Ok(n) => n == 0,
                Err(_) => return Ok(None),
            },
        };
        let prefix = block_name_prefix(&image)?;
        if prefix.is_empty() {
            return Ok(None);
        }
        let ioctx = image.ioctx().private_copy_blocking()?;
        read_at_snapshot_of(&image, &ioctx)?;
        Ok(Some(DataObjects {
            ioctx,
            writable,
            prefix,
            object_size: info.object_size,
            image,
        }))
    }

    /// Whether [`write_packed`](Self::write_packed) may write: the image is
    /// open at its head and had no snapshots when this was made.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Bytes per object.
    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    fn object_name(&self, object_no: u64) -> Result<CString> {
        cstring(&format!("{}.{object_no:016x}", self.prefix), "object name")
    }

    /// The object holding all of `ranges` (image offsets), if one does.
    fn object_of(&self, ranges: impl IntoIterator<Item = Range<u64>>) -> Option<u64> {
        let mut object = None;
        for r in ranges {
            let no = r.start / self.object_size;
            if r.end > (no + 1) * self.object_size || *object.get_or_insert(no) != no {
                return None;
            }
        }
        object
    }

    /// Reads `ranges` (image offsets, sorted, all in one object) at the
    /// snapshot (or head) the image is open at, packed one after another
    /// into `buf` (resized to their total length), in one operation.
    /// Returns `false` with the buffer when the ranges span objects or the
    /// object does not exist there: the caller then reads through librbd.
    pub async fn read_packed(&self, ranges: &[Range<u64>], mut buf: Vec<u8>) -> Result<(bool, Vec<u8>)> {
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let Some(object_no) = self.object_of(ranges.iter().cloned()) else {
            return Ok((false, buf));
        };
        let name = self.object_name(object_no)?;
        let target = format!("{} object {}", self.image.spec(), name.to_string_lossy());
        // SAFETY: plain constructor; the handle is owned by ReadOp.
        let op = ReadOp(unsafe { sys::rados_create_read_op() });
        if op.0.is_null() {
            return Err(Error::from_errno("rados_create_read_op", -libc::ENOMEM).target(target));
        }
        buf.clear();
        buf.resize(total as usize, 0);
        let reads = PackedReads {
            buf,
            outs: vec![ReadOut::default(); ranges.len()],
        };
        let offset = ranges.first().map_or(0, |r| r.start);
        // The raw handles stay inside this block: they are not Send.
        let aio = {
            let handle = op.0;
            let io = self.ioctx.raw();
            AioOp::submit_rados(
                &target,
                "rados_aio_read_op_operate",
                offset,
                reads,
                Box::new((op, self.ioctx.clone())),
                |reads, c| {
                    let mut pos = 0usize;
                    for (r, out) in ranges.iter().zip(reads.outs.iter_mut()) {
                        let len = (r.end - r.start) as usize;
                        // SAFETY: the buffer and the outputs live in the operation's
                        // shared block until the completion fires; pos + len is
                        // within the buffer (its length is the sum of the lengths).
                        unsafe {
                            sys::rados_read_op_read(
                                handle,
                                r.start % self.object_size,
                                len,
                                reads.buf.as_mut_ptr().add(pos).cast(),
                                &mut out.bytes_read,
                                &mut out.prval,
                            )
                        };
                        pos += len;
                    }
                    // SAFETY: handle, io and c are valid and kept alive with the
                    // operation; name is a valid C string (librados copies it).
                    unsafe { sys::rados_aio_read_op_operate(handle, io, c, name.as_ptr(), 0) }
                },
            )?
        };
        let (ret, reads) = aio.await;
        let mut reads = reads.expect("a read owns its buffers");
        if ret == -(libc::ENOENT as i64) {
            return Ok((false, reads.buf));
        }
        if ret < 0 {
            return Err(Error::from_errno("rados_aio_read_op_operate", ret as i32)
                .target(target)
                .offset(offset));
        }
        // A read past the object's end returns fewer bytes: the rest is zeros.
        let mut pos = 0usize;
        for (r, out) in ranges.iter().zip(&reads.outs) {
            let len = (r.end - r.start) as usize;
            if out.prval < 0 {
                return Err(Error::from_errno("rados_read_op_read", out.prval)
                    .target(target)
                    .offset(r.start));
            }
            reads.buf[pos + out.bytes_read.min(len)..pos + len].fill(0);
            pos += len;
        }
        Ok((true, reads.buf))
    }

    /// Writes each `(image offset, bytes)` of `writes` and zeros each of
    /// `zeros` (image ranges), all in one object, in one operation. Returns
    /// `false`, having written nothing, when they span objects, the object
    /// does not exist yet or the image is not [`writable`](Self::writable):
    /// the caller then writes through librbd.
    pub async fn write_packed(&self, writes: &[(u64, &[u8])], zeros: &[Range<u64>]) -> Result<bool> {
        let ranges = writes
            .iter()
            .map(|(o, b)| *o..*o + b.len() as u64)
            .chain(zeros.iter().cloned());
        let object_no = match self.object_of(ranges) {
            Some(no) if self.writable => no,
            _ => return Ok(false),
        };
        let name = self.object_name(object_no)?;
        let target = format!("{} object {}", self.image.spec(), name.to_string_lossy());
        // SAFETY: plain constructor; the handle is owned by WriteOp.
        let op = WriteOp(unsafe { sys::rados_create_write_op() });
        if op.0.is_null() {
            return Err(Error::from_errno("rados_create_write_op", -libc::ENOMEM).target(target));
        }
        // SAFETY: op is a fresh write op.
        unsafe { sys::rados_write_op_assert_exists(op.0) };
        for (offset, bytes) in writes {
            // SAFETY: bytes is valid for its length; librados copies it now.
            unsafe { sys::rados_write_op_write(op.0, bytes.as_ptr().cast(), bytes.len(), offset % self.object_size) };
        }
        for r in zeros {
            // SAFETY: op is valid.
            unsafe { sys::rados_write_op_zero(op.0, r.start % self.object_size, r.end - r.start) };
        }
        let offset = writes
            .first()
            .map(|w| w.0)
            .or(zeros.first().map(|z| z.start))
            .unwrap_or(0);
        // The raw handles stay inside this block: they are not Send.
        let aio = {
            let io = self.ioctx.raw();
            let handle = op.0;
            AioOp::submit_rados(
                &target,
                "rados_aio_write_op_operate",
                offset,
                (),
                Box::new((op, self.ioctx.clone())),
                |_, c| {
                    // SAFETY: handle, io and c are valid and kept alive with the
                    // operation; name is a valid C string (librados copies it).
                    unsafe { sys::rados_aio_write_op_operate(handle, io, c, name.as_ptr(), std::ptr::null_mut(), 0) }
                },
            )?
        };
        let (ret, _) = aio.await;
        match ret {
            r if r == -(libc::ENOENT as i64) => Ok(false),
            r if r < 0 => Err(Error::from_errno("rados_aio_write_op_operate", r as i32)
                .target(target)
                .offset(offset)),
            _ => Ok(true),
        }
    }
}

// What reading and writing an image's objects directly (here and in
// `object_copy`) asks of the image.

/// Whether the image is format 1.
pub(super) fn old_format(img: &Image) -> Result<bool> {
    let mut old = 0u8;
    // SAFETY: the image is open; old is a valid out-pointer.
    let ret = unsafe { sys::rbd_get_old_format(img.raw(), &mut old) };
    check("rbd_get_old_format", ret).map_err(|e| e.target(img.spec()))?;
    Ok(old != 0)
}

/// The bytes a clone still reads from its parent (0 for no parent).
pub(super) fn parent_overlap(img: &Image) -> Result<u64> {
    let mut overlap = 0u64;
    // SAFETY: the image is open; overlap is a valid out-pointer.
    let ret = unsafe { sys::rbd_get_overlap(img.raw(), &mut overlap) };
    if ret == -libc::ENOENT {
        return Ok(0);
    }
    check("rbd_get_overlap", ret).map_err(|e| e.target(img.spec()))?;
    Ok(overlap)
}

/// How many snapshots the image has.
pub(super) fn snapshot_count(img: &Image) -> Result<usize> {
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

/// The image's data objects' name prefix.
pub(super) fn block_name_prefix(img: &Image) -> Result<String> {
    let mut prefix = vec![0u8; 128];
    // SAFETY: prefix is writable for its length.
    let ret = unsafe { sys::rbd_get_block_name_prefix(img.raw(), prefix.as_mut_ptr().cast(), prefix.len()) };
    check("rbd_get_block_name_prefix", ret).map_err(|e| e.target(img.spec()))?;
    Ok(std::ffi::CStr::from_bytes_until_nul(&prefix)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// Makes `ioctx` (private to its user) read at the snapshot `img` is open
/// at; an image open at its head leaves it reading heads.
pub(super) fn read_at_snapshot_of(img: &Image, ioctx: &IoCtx) -> Result<()> {
    let Some(name) = img.snap_name() else {
        return Ok(());
    };
    let name = cstring(name, "snapshot name")?;
    let mut id = 0u64;
    // SAFETY: the image is open; name is a valid C string; id a valid out-pointer.
    let ret = unsafe { sys::rbd_snap_get_id(img.raw(), name.as_ptr(), &mut id) };
    check("rbd_snap_get_id", ret).map_err(|e| e.target(img.spec()))?;
    // SAFETY: the io-context is the caller's alone; id is the image's snapshot.
    unsafe { sys::rados_ioctx_snap_set_read(ioctx.raw(), id) };
    Ok(())
}

/// Where one read of a [`DataObjects::read_packed`] operation reports.
#[derive(Debug, Clone, Copy, Default)]
struct ReadOut {
    bytes_read: usize,
    prval: libc::c_int,
}

/// The buffers a read operation fills: the data, packed, and each read's
/// outcome. Their heap blocks stay put while librados writes into them.
struct PackedReads {
    buf: Vec<u8>,
    outs: Vec<ReadOut>,
}
