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
//! exact diff then runs over those objects only. Each librbd call waits for
//! the slowest of its objects, so changed objects are asked in short runs
//! (nearby ones together: asking a few unchanged objects alongside costs
//! less than another call) on a few threads at once: scattered changes do
//! not cost a round trip each, one after another, and many changes are
//! asked more at a time than one call asks them.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use livemig_ceph_sys as sys;
use tokio::sync::mpsc;
use tracing::debug;

use super::cluster::DIFF_OBJECTS_AT_ONCE;
use super::features::Features;
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

/// Runs of changed objects are diffed on this many threads at once.
const DIFF_THREADS: usize = 8;

/// Changed objects (stripe periods on a striped image) at most this many
/// apart are asked in one call.
const JOIN_GAP_OBJECTS: u64 = 8;

/// Objects (stripe periods) one call asks about at most: longer runs are
/// cut, so that the threads share them. With [`DIFF_THREADS`] calls at
/// once, twice as many objects are asked at a time as librbd asks in one
/// call ([`DIFF_OBJECTS_AT_ONCE`]).
const RUN_OBJECTS: u64 = 2 * DIFF_OBJECTS_AT_ONCE as u64 / DIFF_THREADS as u64;

/// Runs whose extents may wait, collected, for an earlier run still being
/// asked about: bounds the memory a far-ahead thread can fill.
const RUNS_AHEAD: usize = 4 * DIFF_THREADS;

/// Collects changed objects into runs.
struct RunCollector {
    runs: Vec<(u64, u64)>,
    join_gap: u64,
}

type DiffCallback = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// One `rbd_diff_iterate2` call over `[offset, offset+len)` of `image`
/// (since `from`, or everything allocated), reporting to `callback`; the
/// librbd return code.
///
/// # Safety
/// `arg` must be what `callback` expects, valid for the whole call.
unsafe fn iterate(
    image: &Image,
    from: Option<&CStr>,
    (offset, len): (u64, u64),
    whole_object: bool,
    callback: DiffCallback,
    arg: *mut c_void,
) -> c_int {
    let from = from.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: the image is open (held by `image`); `from` is NULL or a valid
    // C string; the caller vouches for `arg`.
    unsafe {
        sys::rbd_diff_iterate2(
            image.raw(),
            from,
            offset,
            len,
            1,
            u8::from(whole_object),
            Some(callback),
            arg,
        )
    }
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
/// `from` (by the object map), in runs of at most [`RUN_OBJECTS`] objects,
/// or `None` if the image has no usable fast-diff (then every object has to
/// be asked).
fn changed_object_runs(image: &Image, from: &CStr, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
    let info = image.info_blocking()?;
    let mut flags = 0u64;
    // SAFETY: the image is open; flags is a valid out-pointer.
    check("rbd_get_flags", unsafe { sys::rbd_get_flags(image.raw(), &mut flags) })?;
    if !info.features.contains(Features::FAST_DIFF) || flags & u64::from(sys::RBD_FLAG_FAST_DIFF_INVALID) != 0 {
        return Ok(None);
    }
    // Whole-object extents start at a stripe period (an object on a plain
    // layout), so runs of whole periods keep each object in one run.
    let period = info.object_size.max(1) * info.stripe_count.max(1);
    let mut collector = RunCollector {
        runs: Vec::new(),
        join_gap: JOIN_GAP_OBJECTS * period,
    };
    let collector_ptr = &mut collector as *mut RunCollector as *mut c_void;
    // SAFETY: `collector` is what on_changed_object expects and outlives the call.
    let ret = unsafe { iterate(image, Some(from), (offset, len), true, on_changed_object, collector_ptr) };
    check("rbd_diff_iterate2", ret).map_err(|e| e.target(image.spec()).offset(offset))?;
    let most = RUN_OBJECTS * period;
    Ok(Some(
        collector
            .runs
            .into_iter()
            .flat_map(|(start, len)| {
                (start..start + len)
                    .step_by(most as usize)
                    .map(move |at| (at, most.min(start + len - at)))
            })
            .collect(),
    ))
}

extern "C" fn on_extent_collected(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: arg points at the Vec owned by `collect_extents`, which
    // outlives the rbd_diff_iterate2 call that invokes this callback.
    let out = unsafe { &mut *(arg as *mut Vec<Extent>) };
    out.push(Extent {
        offset,
        len: len as u64,
        exists: exists != 0,
    });
    0
}

/// The exact changes of `[offset, offset+len)` since `from`, in one call.
fn collect_extents(image: &Image, from: &CStr, offset: u64, len: u64) -> Result<Vec<Extent>> {
    let mut out: Vec<Extent> = Vec::new();
    let out_ptr = &mut out as *mut Vec<Extent> as *mut c_void;
    // SAFETY: `out` is what on_extent_collected expects and outlives the call.
    let ret = unsafe { iterate(image, Some(from), (offset, len), false, on_extent_collected, out_ptr) };
    check("rbd_diff_iterate2", ret).map_err(|e| e.target(image.spec()).offset(offset))?;
    Ok(out)
}

/// Sends the exact changes of each run since `from`, in run order, asking
/// about up to [`DIFF_THREADS`] runs at once. Stops early (with `Ok`) when
/// the receiver is gone.
fn send_runs_in_parallel(image: &Image, from: &CStr, runs: &[(u64, u64)], tx: &mpsc::Sender<Extent>) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Runs handed on so far, and the condition threads wait on to stay
    // within RUNS_AHEAD of it.
    let sent = Mutex::new(0usize);
    let moved = Condvar::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Result<Vec<Extent>>)>();
    std::thread::scope(|scope| {
        for _ in 0..DIFF_THREADS.min(runs.len()) {
            let done_tx = done_tx.clone();
            let (next, stop, sent, moved) = (&next, &stop, &sent, &moved);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= runs.len() || stop.load(Ordering::SeqCst) {
                    return;
                }
                let mut at = sent.lock().unwrap_or_else(|p| p.into_inner());
                while i >= *at + RUNS_AHEAD && !stop.load(Ordering::SeqCst) {
                    at = moved.wait(at).unwrap_or_else(|p| p.into_inner());
                }
                drop(at);
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let (offset, len) = runs[i];
                if done_tx.send((i, collect_extents(image, from, offset, len))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let finish = |result: Result<()>| {
            stop.store(true, Ordering::SeqCst);
            // Taken so that no thread misses the wake-up between its check
            // of `stop` and its wait.
            let _at = sent.lock().unwrap_or_else(|p| p.into_inner());
            moved.notify_all();
            result
        };
        let mut waiting = BTreeMap::new();
        let mut handed_on = 0;
        while handed_on < runs.len() {
            let Ok((i, extents)) = done_rx.recv() else {
                return finish(Err(Error::new(ErrorKind::Io, "rbd_diff_iterate2")
                    .target(image.spec())
                    .message("a diff thread ended early")));
            };
            waiting.insert(i, extents);
            while let Some(extents) = waiting.remove(&handed_on) {
                match extents {
                    Ok(extents) => {
                        for e in extents {
                            if tx.blocking_send(e).is_err() {
                                return finish(Ok(()));
                            }
                        }
                    }
                    Err(e) => return finish(Err(e)),
                }
                handed_on += 1;
                *sent.lock().unwrap_or_else(|p| p.into_inner()) = handed_on;
                moved.notify_all();
            }
        }
        finish(Ok(()))
    })
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
            let runs = match from.as_deref() {
                Some(f) if !whole_object => changed_object_runs(&image, f, offset, len)?,
                _ => None,
            };
            let (offset, len) = match (runs, from.as_deref()) {
                (Some(runs), Some(f)) if runs.len() > 1 => {
                    let started = std::time::Instant::now();
                    let r = send_runs_in_parallel(&image, f, &runs, &tx);
                    debug!(
                        runs = runs.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "exact diff of the changed objects"
                    );
                    return r;
                }
                (Some(runs), _) => match runs.first() {
                    Some(&run) => run,
                    None => return Ok(()),
                },
                (None, _) => (offset, len),
            };
            let tx_ptr = &tx as *const mpsc::Sender<Extent> as *mut c_void;
            // SAFETY: `tx` is what on_extent expects and outlives the call.
            let ret = unsafe { iterate(&image, from.as_deref(), (offset, len), whole_object, on_extent, tx_ptr) };
            if ret == -libc::ECANCELED && tx.is_closed() {
                return Ok(());
            }
            check("rbd_diff_iterate2", ret).map_err(|e| e.target(image.spec()).offset(offset))?;
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

impl Image {
    /// Extents of `[offset, offset+len)` changed since `from_snap` (or, with
    /// `None`, allocated at all), as seen from the snapshot this image was
    /// opened at. `whole_object` reports whole objects, using the object map
    /// when the fast-diff feature is on (fast), at the cost of precision.
    pub fn diff(&self, from_snap: Option<&str>, offset: u64, len: u64, whole_object: bool) -> DiffStream {
        DiffStream::start(self.clone(), from_snap.map(str::to_owned), offset, len, whole_object)
    }
}
