//! Guarded RADOS objects: an omap whose every change is an atomic
//! compare-and-swap on a generation number kept in an xattr.
//!
//! The catalog and the job records are small key/value maps that several
//! processes may change at once. Each change is one RADOS write op that
//! (1) asserts the generation the writer read (or that the object does not
//! exist yet), (2) bumps it, and (3) sets/removes omap keys. The OSD applies
//! all of it or none, so a writer working from stale state is refused
//! ([`ErrorKind::Conflict`]) and nothing changes.
//!
//! Leases are RADOS advisory locks with an expiry, renewed by their holder.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr;
use std::time::Duration;

use livemig_ceph_sys as sys;

use super::{blocking, check, cstring, IoCtx};
use crate::error::{Error, ErrorKind, Result};

const GENERATION_XATTR: &str = "livemig.generation";
const PAGE: u64 = 1024;

/// Omap entries as (key, value) pairs.
pub type OmapEntries = Vec<(String, Vec<u8>)>;

/// A guarded object's generation and omap, read atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardedObject {
    /// Bumped by every successful [`IoCtx::write_guarded`].
    pub generation: u64,
    /// The omap.
    pub omap: BTreeMap<String, Vec<u8>>,
}

/// A RADOS read operation, released when dropped.
pub(super) struct ReadOp(pub(super) sys::rados_read_op_t);
// SAFETY: the handle is used by one thread at a time: built, submitted,
// then only released (for an asynchronous operation, kept with it and
// released after its completion has fired).
unsafe impl Send for ReadOp {}
// SAFETY: as above; no method takes &self.
unsafe impl Sync for ReadOp {}
impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_read_op, released once.
        unsafe { sys::rados_release_read_op(self.0) };
    }
}

/// A RADOS write operation, released when dropped.
pub(super) struct WriteOp(pub(super) sys::rados_write_op_t);
// SAFETY: as for ReadOp.
unsafe impl Send for WriteOp {}
// SAFETY: as for ReadOp.
unsafe impl Sync for WriteOp {}
impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op, released once.
        unsafe { sys::rados_release_write_op(self.0) };
    }
}

/// An xattr iterator a read op allocates when it is set up; ended on drop
/// (also when the op failed, e.g. the object does not exist).
struct XattrIter(sys::rados_xattrs_iter_t);
impl Drop for XattrIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by rados_read_op_getxattrs, ended once.
            unsafe { sys::rados_getxattrs_end(self.0) };
        }
    }
}

/// An omap iterator a read op allocates when it is set up; ended on drop.
struct OmapIter(sys::rados_omap_iter_t);
impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by rados_read_op_omap_get_vals2, ended once.
            unsafe { sys::rados_omap_get_end(self.0) };
        }
    }
}

/// One page of omap entries plus the generation, in one read op.
fn read_page(io: &IoCtx, oid: &CString, start_after: &CString) -> Result<Option<(u64, OmapEntries, bool)>> {
    // SAFETY: plain constructor.
    let op = ReadOp(unsafe { sys::rados_create_read_op() });
    let mut xattrs = XattrIter(ptr::null_mut());
    let mut xattrs_rval: c_int = 0;
    let mut omap = OmapIter(ptr::null_mut());
    let mut more: u8 = 0;
    let mut omap_rval: c_int = 0;
    // SAFETY: op is live; the out-pointers (the iterator guards and the
    // return values) outlive operate, and the guards end the iterators.
    let ret = unsafe {
        sys::rados_read_op_getxattrs(op.0, &mut xattrs.0, &mut xattrs_rval);
        sys::rados_read_op_omap_get_vals2(
            op.0,
            start_after.as_ptr(),
            ptr::null(),
            PAGE,
            &mut omap.0,
            &mut more,
            &mut omap_rval,
        );
        sys::rados_read_op_operate(op.0, io.raw(), oid.as_ptr(), 0)
    };
    if ret == -libc::ENOENT {
        return Ok(None);
    }
    let name = oid.to_string_lossy().into_owned();
    check("rados_read_op_operate", ret).map_err(|e| e.target(io.image_spec(&name)))?;
    check("rados_read_op_getxattrs", xattrs_rval)?;
    check("rados_read_op_omap_get_vals2", omap_rval)?;
    let mut generation = 0u64;
    loop {
        let (mut k, mut v, mut len): (*const c_char, *const c_char, usize) = (ptr::null(), ptr::null(), 0);
        // SAFETY: xattrs is a live iterator from the read op.
        check("rados_getxattrs_next", unsafe {
            sys::rados_getxattrs_next(xattrs.0, &mut k, &mut v, &mut len)
        })?;
        if k.is_null() {
            break;
        }
        // SAFETY: librados returns a NUL-terminated name and len value bytes.
        let (key, val) = unsafe { (CStr::from_ptr(k), std::slice::from_raw_parts(v as *const u8, len)) };
        if key.to_bytes() == GENERATION_XATTR.as_bytes() {
            generation = std::str::from_utf8(val).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
    let mut entries = Vec::new();
    loop {
        let (mut k, mut v, mut klen, mut vlen): (*mut c_char, *mut c_char, usize, usize) =
            (ptr::null_mut(), ptr::null_mut(), 0, 0);
        // SAFETY: omap is a live iterator from the read op.
        check("rados_omap_get_next2", unsafe {
            sys::rados_omap_get_next2(omap.0, &mut k, &mut v, &mut klen, &mut vlen)
        })?;
        if k.is_null() {
            break;
        }
        // SAFETY: librados returns klen key bytes and vlen value bytes.
        let (key, val) = unsafe {
            (
                std::slice::from_raw_parts(k as *const u8, klen),
                std::slice::from_raw_parts(v as *const u8, vlen),
            )
        };
        entries.push((String::from_utf8_lossy(key).into_owned(), val.to_vec()));
    }
    Ok(Some((generation, entries, more != 0)))
}

impl IoCtx {
    /// Reads a guarded object; `None` if it does not exist.
    pub async fn read_guarded(&self, oid: &str) -> Result<Option<GuardedObject>> {
        let io = self.clone();
        let oid = cstring(oid, "object name")?;
        blocking(move || 'restart: loop {
            let mut state = GuardedObject::default();
            let mut start_after = CString::default();
            let mut first = true;
            loop {
                let Some((generation, entries, more)) = read_page(&io, &oid, &start_after)? else {
                    return Ok(None);
                };
                if first {
                    state.generation = generation;
                    first = false;
                } else if generation != state.generation {
                    // Changed between pages: read again for a consistent view.
                    continue 'restart;
                }
                if let Some((k, _)) = entries.last() {
                    start_after = cstring(k, "omap key")?;
                }
                state.omap.extend(entries);
                if !more {
                    return Ok(Some(state));
                }
            }
        })
        .await
    }

    /// Applies `set` and `remove` to a guarded object's omap if its
    /// generation is still `expected` (`None`: the object must not exist
    /// yet), and bumps the generation. Returns the new generation. A stale
    /// `expected` is [`ErrorKind::Conflict`] and changes nothing.
    pub async fn write_guarded(
        &self,
        oid: &str,
        expected: Option<u64>,
        set: OmapEntries,
        remove: Vec<String>,
    ) -> Result<u64> {
        let io = self.clone();
        let name = oid.to_owned();
        let oid = cstring(oid, "object name")?;
        blocking(move || {
            let next = expected.map_or(1, |g| g + 1);
            let expected_s = expected.map(|g| g.to_string());
            let next_s = next.to_string();
            let gen_name = cstring(GENERATION_XATTR, "xattr")?;
            let set_keys: Vec<CString> = set.iter().map(|(k, _)| cstring(k, "omap key")).collect::<Result<_>>()?;
            let set_key_ptrs: Vec<*const c_char> = set_keys.iter().map(|k| k.as_ptr()).collect();
            let set_key_lens: Vec<usize> = set.iter().map(|(k, _)| k.len()).collect();
            let set_val_ptrs: Vec<*const c_char> = set.iter().map(|(_, v)| v.as_ptr() as *const c_char).collect();
            let set_val_lens: Vec<usize> = set.iter().map(|(_, v)| v.len()).collect();
            let rm_keys: Vec<CString> = remove.iter().map(|k| cstring(k, "omap key")).collect::<Result<_>>()?;
            let rm_ptrs: Vec<*const c_char> = rm_keys.iter().map(|k| k.as_ptr()).collect();
            let rm_lens: Vec<usize> = remove.iter().map(|k| k.len()).collect();
            // SAFETY: plain constructor.
            let op = WriteOp(unsafe { sys::rados_create_write_op() });
            // SAFETY: op is live; every pointer refers to data owned by this
            // closure that outlives rados_write_op_operate below.
            let ret = unsafe {
                match &expected_s {
                    None => sys::rados_write_op_create(op.0, sys::LIBRADOS_CREATE_EXCLUSIVE as c_int, ptr::null()),
                    Some(g) => sys::rados_write_op_cmpxattr(
                        op.0,
                        gen_name.as_ptr(),
                        sys::LIBRADOS_CMPXATTR_OP_EQ as u8,
                        g.as_ptr() as *const c_char,
                        g.len(),
                    ),
                }
                sys::rados_write_op_setxattr(op.0, gen_name.as_ptr(), next_s.as_ptr() as *const c_char, next_s.len());
                if !set.is_empty() {
                    sys::rados_write_op_omap_set2(
                        op.0,
                        set_key_ptrs.as_ptr(),
                        set_val_ptrs.as_ptr(),
                        set_key_lens.as_ptr(),
                        set_val_lens.as_ptr(),
                        set.len(),
                    );
                }
                if !remove.is_empty() {
                    sys::rados_write_op_omap_rm_keys2(op.0, rm_ptrs.as_ptr(), rm_lens.as_ptr(), remove.len());
                }
                sys::rados_write_op_operate(op.0, io.raw(), oid.as_ptr(), ptr::null_mut(), 0)
            };
            match ret {
                r if r >= 0 => Ok(next),
                r if r == -libc::ECANCELED || r == -libc::EEXIST || (r == -libc::ENOENT && expected.is_some()) => {
                    Err(Error::from_errno("rados_write_op_operate", r)
                        .with_kind(ErrorKind::Conflict)
                        .target(io.image_spec(&name))
                        .message(format!(
                            "`{name}` was changed by another process (expected generation {expected:?})"
                        )))
                }
                r => Err(Error::from_errno("rados_write_op_operate", r).target(io.image_spec(&name))),
            }
        })
        .await
    }

    /// Removes an object (absent objects are not an error).
    pub async fn remove_object(&self, oid: &str) -> Result<()> {
        let io = self.clone();
        let oid = cstring(oid, "object name")?;
        blocking(move || {
            // SAFETY: io is valid; oid a valid C string.
            let ret = unsafe { sys::rados_remove(io.raw(), oid.as_ptr()) };
            if ret == -libc::ENOENT {
                return Ok(());
            }
            check("rados_remove", ret).map(|_| ())
        })
        .await
    }

    /// Takes (or, with `renew`, extends) the exclusive lease `name` on `oid`
    /// for `duration`, identified by `cookie`. Held by another holder:
    /// [`ErrorKind::Busy`].
    pub async fn lease_acquire(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        duration: Duration,
        renew: bool,
    ) -> Result<()> {
        let io = self.clone();
        let (o, n, c) = (
            cstring(oid, "object name")?,
            cstring(name, "lock name")?,
            cstring(cookie, "lock cookie")?,
        );
        let desc = cstring("livemig job lease", "lock description")?;
        let target = self.image_spec(oid);
        blocking(move || {
            let mut tv = libc::timeval {
                tv_sec: duration.as_secs() as _,
                tv_usec: duration.subsec_micros() as _,
            };
            let flags = if renew { sys::LIBRADOS_LOCK_FLAG_RENEW as u8 } else { 0 };
            // SAFETY: all strings valid; tv lives across the call. The bindgen
            // timeval and libc's have the same layout.
            let ret = unsafe {
                sys::rados_lock_exclusive(
                    io.raw(),
                    o.as_ptr(),
                    n.as_ptr(),
                    c.as_ptr(),
                    desc.as_ptr(),
                    (&mut tv as *mut libc::timeval).cast(),
                    flags,
                )
            };
            if ret == -libc::EBUSY || ret == -libc::EEXIST {
                return Err(Error::from_errno("rados_lock_exclusive", ret)
                    .with_kind(ErrorKind::Busy)
                    .target(target)
                    .message("the lease is held by another process"));
            }
            check("rados_lock_exclusive", ret)
                .map(|_| ())
                .map_err(|e| e.target(target))
        })
        .await
    }

    /// Takes lease `name` on `oid` away from whoever holds it: each holder
    /// is blocklisted on this cluster (none of its operations can land any
    /// more, whatever it still believes) before its lock is broken. Returns
    /// the holders' addresses (none: the lease was free).
    pub async fn lease_break(&self, oid: &str, name: &str) -> Result<Vec<String>> {
        let io = self.clone();
        let (o, n) = (cstring(oid, "object name")?, cstring(name, "lock name")?);
        let holders = blocking(move || {
            const LEN: usize = 4096;
            let (mut tag, mut clients, mut cookies, mut addrs) = ([0u8; LEN], [0u8; LEN], [0u8; LEN], [0u8; LEN]);
            let (mut tag_len, mut clients_len, mut cookies_len, mut addrs_len) = (LEN, LEN, LEN, LEN);
            let mut exclusive = 0;
            // SAFETY: strings valid; each buffer is writable for the length
            // passed beside it, which librados updates.
            let ret = unsafe {
                sys::rados_list_lockers(
                    io.raw(),
                    o.as_ptr(),
                    n.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    &mut tag_len,
                    clients.as_mut_ptr().cast(),
                    &mut clients_len,
                    cookies.as_mut_ptr().cast(),
                    &mut cookies_len,
                    addrs.as_mut_ptr().cast(),
                    &mut addrs_len,
                )
            };
            if ret == -(libc::ENOENT as isize) {
                return Ok(Vec::new());
            }
            check("rados_list_lockers", ret as i32)?;
            let list = |buf: &[u8], len: usize| -> Vec<String> {
                buf[..len.min(buf.len())]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let clients = list(&clients, clients_len);
            let cookies = list(&cookies, cookies_len);
            let addrs = list(&addrs, addrs_len);
            Ok(clients
                .into_iter()
                .zip(cookies)
                .zip(addrs)
                .map(|((c, k), a)| (c, k, a))
                .collect::<Vec<_>>())
        })
        .await?;
        let mut broken = Vec::new();
        for (client, cookie, addr) in holders {
            self.cluster().blocklist_add(&addr, 3600).await?;
            let io = self.clone();
            let (o, n) = (cstring(oid, "object name")?, cstring(name, "lock name")?);
            let (c, k) = (cstring(&client, "lock client")?, cstring(&cookie, "lock cookie")?);
            blocking(move || {
                // SAFETY: all strings valid.
                let ret = unsafe { sys::rados_break_lock(io.raw(), o.as_ptr(), n.as_ptr(), c.as_ptr(), k.as_ptr()) };
                if ret == -libc::ENOENT {
                    return Ok(());
                }
                check("rados_break_lock", ret).map(|_| ())
            })
            .await?;
            broken.push(addr);
        }
        Ok(broken)
    }

    /// Releases a lease taken with [`IoCtx::lease_acquire`] (not held: no error).
    pub async fn lease_release(&self, oid: &str, name: &str, cookie: &str) -> Result<()> {
        let io = self.clone();
        let (o, n, c) = (
            cstring(oid, "object name")?,
            cstring(name, "lock name")?,
            cstring(cookie, "lock cookie")?,
        );
        blocking(move || {
            // SAFETY: all strings valid.
            let ret = unsafe { sys::rados_unlock(io.raw(), o.as_ptr(), n.as_ptr(), c.as_ptr()) };
            if ret == -libc::ENOENT {
                return Ok(());
            }
            check("rados_unlock", ret).map(|_| ())
        })
        .await
    }
}
