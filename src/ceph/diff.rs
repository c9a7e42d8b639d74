//! Allocated-extent enumeration (`rbd_diff_iterate2`) as an async stream.
//!
//! The iteration runs on the blocking pool and hands extents over a bounded
//! channel, so a huge image never needs its extent list in memory and a
//! consumer that stops reading stops the iteration.
//!
//! An exact diff against a snapshot asks the OSDs about every object of the
//! range (librbd's `list_snaps`), changed or not: on a large image that is
//! seconds, and during a cutover the instance waits for it. With fast-diff
//! the object map says which objects changed at almost no cost, so the
//! exact diff then runs over those objects only.

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};

use livemig_ceph_sys as sys;
use tokio::sync::mpsc;

use super::cluster::DIFF_OBJECTS_AT_ONCE;
use super::image::Image;
use super::{check, cstring};
use crate::error::{Error, ErrorKind, Result};

/// A changed (or, against no snapshot, allocated) byte range of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// `true` if the range holds data, `false` if it was discarded (reads as zeros).
    pub exists: bool,
}

/// The extents of an image, in offset order.
pub struct DiffStream {
    rx: mpsc::Receiver<Extent>,
    done: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// Changed objects this close (in bytes) are diffed by one call: each call
/// waits for its last object, so many short calls would ask the OSDs far
/// fewer objects at a time than one long one.
struct RunCollector {
    runs: Vec<(u64, u64)>,
    join_gap: u64,
}

/// Collects whole-object extents into runs, joining those `join_gap` apart.
extern "C" fn on_changed_object(offset: u64, len: usize, _exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: arg points at the collector owned by `changed_object_runs`,
    // which outlives the rbd_diff_iterate2 call that invokes this callback.
    let c = unsafe { &mut *(arg as *mut RunCollector) };
    let end = offset + len as u64;
    match c.runs.last_mut() {
        Some(last) if last.0 + last.1 + c.join_gap >= offset => last.1 = end.max(last.0 + last.1) - last.0,
        _ => c.runs.push((offset, len as u64)),
    }
    0
}

/// The byte ranges of `[offset, offset+len)` whose objects changed since
/// `from` (by the object map), or `None` if the image has no usable
/// fast-diff (then every object has to be asked).
fn changed_object_runs(image: &Image, from: &CStr, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
    let info = image.info_blocking()?;
    let mut flags = 0u64;
    // SAFETY: the image is open; flags is a valid out-pointer.
    check("rbd_get_flags", unsafe { sys::rbd_get_flags(image.raw(), &mut flags) })?;
    if info.features & u64::from(sys::RBD_FEATURE_FAST_DIFF) == 0
        || flags & u64::from(sys::RBD_FLAG_FAST_DIFF_INVALID) != 0
    {
        return Ok(None);
    }
    let mut collector = RunCollector {
        runs: Vec::new(),
        // As many objects as librbd asks at a time.
        join_gap: u64::from(DIFF_OBJECTS_AT_ONCE) * info.object_size.max(1),
    };
    // SAFETY: the image is open; `from` is a valid C string; `collector`
    // outlives the call, and the callback is only invoked during it.
    let ret = unsafe {
        sys::rbd_diff_iterate2(
            image.raw(),
            from.as_ptr(),
            offset,
            len,
            1,
            1,
            Some(on_changed_object),
            &mut collector as *mut RunCollector as *mut c_void,
        )
    };
    check("rbd_diff_iterate2", ret).map_err(|e| e.target(image.spec()).offset(offset))?;
    Ok(Some(collector.runs))
}

extern "C" fn on_extent(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: arg points at the Sender owned by the iterating closure, which
    // outlives the rbd_diff_iterate2 call that invokes this callback.
    let tx = unsafe { &*(arg as *const mpsc::Sender<Extent>) };
    match tx.blocking_send(Extent {
        offset,
        len: len as u64,
        exists: exists != 0,
    }) {
        Ok(()) => 0,
        Err(_) => -libc::ECANCELED,
    }
}

impl DiffStream {
    pub(crate) fn start(image: Image, from_snap: Option<String>, offset: u64, len: u64, whole_object: bool) -> Self {
        let (tx, rx) = mpsc::channel::<Extent>(1024);
        if len == 0 {
            // librbd 16.2 asserts (DiffIterate.cc:341) on an empty range at
            // the end of an image with fast-diff; there is nothing to report.
            return DiffStream { rx, done: None };
        }
        let done = tokio::task::spawn_blocking(move || {
            let from = from_snap.as_deref().map(|s| cstring(s, "snapshot name")).transpose()?;
            let ranges = match &from {
                Some(f) if !whole_object => changed_object_runs(&image, f, offset, len)?,
                _ => None,
            }
            .unwrap_or_else(|| vec![(offset, len)]);
            let from_ptr = from.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            let tx_ptr = &tx as *const mpsc::Sender<Extent> as *mut c_void;
            for (offset, len) in ranges.into_iter().filter(|r| r.1 > 0) {
                // SAFETY: the image is open (held by `image`); from_ptr is
                // NULL or a valid C string; tx outlives the call.
                let ret = unsafe {
                    sys::rbd_diff_iterate2(
                        image.raw(),
                        from_ptr,
                        offset,
                        len,
                        1,
                        u8::from(whole_object),
                        Some(on_extent),
                        tx_ptr,
                    )
                };
                if ret == -libc::ECANCELED && tx.is_closed() {
                    return Ok(());
                }
                check("rbd_diff_iterate2", ret).map_err(|e| e.target(image.spec()).offset(offset))?;
            }
            Ok(())
        });
        DiffStream { rx, done: Some(done) }
    }

    /// The next extent; `None` at the end; an error if the iteration failed.
    pub async fn next(&mut self) -> Option<Result<Extent>> {
        if let Some(e) = self.rx.recv().await {
            return Some(Ok(e));
        }
        let done = self.done.as_mut()?;
        let r = match done.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(e) => Some(Err(
                Error::new(ErrorKind::Io, "rbd_diff_iterate2").message(e.to_string())
            )),
        };
        self.done = None;
        r
    }
}
