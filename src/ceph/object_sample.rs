//! What a source object holds, asked of its OSD without reading it
//! through this client: checksums (CRC-32C) of samples spread over it,
//! compared with those of zeros. And the client's side of mostly-zero
//! objects: read whole, written back as their non-zero blocks only (see
//! [`ObjectCopied::Sparse`](super::ObjectCopied::Sparse)).

use std::ffi::CString;
use std::ops::Range;

use livemig_ceph_sys as sys;

use super::aio::AioOp;
use super::object::{ReadOp, WriteOp};
use super::object_copy::ObjectCopy;
use crate::error::{Error, Result};

/// Samples checksummed per object, and the bytes of each.
const SAMPLES: usize = 16;
const SAMPLE_LEN: u64 = 4096;

impl ObjectCopy {
    /// The source object's size and whether it is mostly data: at least
    /// half its samples hold data (their checksums differ from zeros'),
    /// asked of its OSD in one read; `None` if it does not exist.
    pub(super) async fn sample(&self, name: &CString) -> Result<Option<(u64, bool)>> {
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
        Ok(Some((out.size, data * 2 >= SAMPLES)))
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
    /// one operation. It is then to be marked in the destination's object
    /// map ([`ObjectCopy::mark_copied`]).
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
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
