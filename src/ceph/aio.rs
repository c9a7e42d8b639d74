//! librbd and librados AIO as futures.
//!
//! [`AioOp`] owns the operation's buffer and what must outlive it (the
//! image, or the io-context and the RADOS operation) in a shared block. One
//! reference is handed to the library as the completion's argument; the
//! callback takes it back, records the return value, releases the
//! completion and wakes the task. If the future is dropped first, the
//! shared block (and with it the buffer and the handles) lives on until the
//! callback has run, so the library never touches freed memory and the
//! drop never waits.

use std::any::Any;
use std::future::Future;
use std::os::raw::c_void;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use livemig_ceph_sys as sys;

use crate::error::{Error, Result};

/// An open librbd image as an AIO operation needs it: its handle, a name
/// for errors, and a clone the operation keeps alive until it completes.
/// (Implemented by `Image`; this module imports nothing from `image`.)
pub(crate) trait RbdImage: Clone + Send + Sync + 'static {
    /// The librbd handle.
    fn raw(&self) -> sys::rbd_image_t;
    /// `pool[/namespace]/image`, for errors.
    fn spec(&self) -> String;
}

struct Completion<B> {
    outcome: Mutex<Outcome>,
    /// The buffer the library reads from or writes into; taken back by the
    /// future only after the callback has fired.
    buffer: Mutex<Option<B>>,
    /// Keeps what the operation uses (its image, or its io-context and
    /// RADOS operation) alive until it has completed.
    _keep: Box<dyn Any + Send + Sync>,
}

#[derive(Default)]
struct Outcome {
    ret: Option<i64>,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records `ret` for the completion whose leaked reference is `arg`, and wakes its task.
///
/// # Safety
/// `arg` must be the reference leaked by `AioOp::submit*` for this
/// completion, and this must be called once for it.
unsafe fn finish<B>(arg: *mut c_void, ret: i64) {
    // SAFETY: the caller passes the leaked reference, once.
    let completion = unsafe { Arc::from_raw(arg as *const Completion<B>) };
    let waker = {
        let mut o = lock(&completion.outcome);
        o.ret = Some(ret);
        o.waker.take()
    };
    // The library's reference goes before the task wakes: once the future
    // has its result and is dropped, nothing of the operation (such as its
    // reference to the image) is left.
    drop(completion);
    if let Some(w) = waker {
        w.wake();
    }
}

extern "C" fn on_rbd_complete<B>(c: sys::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: c is the live completion passed to this callback.
    let ret = unsafe { sys::rbd_aio_get_return_value(c) } as i64;
    // SAFETY: released once, here; librbd allows release inside the callback.
    unsafe { sys::rbd_aio_release(c) };
    // SAFETY: `arg` is the reference leaked by `AioOp::submit` for exactly
    // this completion; librbd calls back once.
    unsafe { finish::<B>(arg, ret) };
}

unsafe extern "C" fn on_rados_complete<B>(c: sys::rados_completion_t, arg: *mut c_void) {
    // SAFETY: c is the live completion passed to this callback.
    let ret = unsafe { sys::rados_aio_get_return_value(c) } as i64;
    // SAFETY: released once, here; librados holds its own reference while
    // the callback runs.
    unsafe { sys::rados_aio_release(c) };
    // SAFETY: `arg` is the reference leaked by `AioOp::submit_rados` for
    // exactly this completion; librados calls back once.
    unsafe { finish::<B>(arg, ret) };
}

/// An in-flight librbd or librados AIO operation. Resolves to the return
/// value and the buffer it owned (for reuse).
pub(crate) struct AioOp<B = Vec<u8>> {
    completion: Arc<Completion<B>>,
    op: &'static str,
    offset: u64,
}

impl<B: Send + 'static> AioOp<B> {
    fn shared(buffer: Option<B>, keep: Box<dyn Any + Send + Sync>) -> (Arc<Completion<B>>, *mut c_void) {
        let completion = Arc::new(Completion {
            outcome: Mutex::new(Outcome::default()),
            buffer: Mutex::new(buffer),
            _keep: keep,
        });
        let arg = Arc::into_raw(completion.clone()) as *mut c_void;
        (completion, arg)
    }

    /// Takes back the reference leaked for a completion that will never call back.
    ///
    /// # Safety
    /// `arg` must come from `shared` and no callback may ever receive it.
    unsafe fn reclaim(arg: *mut c_void) {
        // SAFETY: per the contract, the reference is ours again.
        drop(unsafe { Arc::from_raw(arg as *const Completion<B>) });
    }
}

impl AioOp<Vec<u8>> {
    /// Submits a librbd operation. `start` gets the image handle, a pointer
    /// to the owned buffer's start (null if none) and the completion, and
    /// calls the `rbd_aio_*` function.
    pub(crate) fn submit<I: RbdImage>(
        image: &I,
        op: &'static str,
        offset: u64,
        mut buffer: Option<Vec<u8>>,
        start: impl FnOnce(sys::rbd_image_t, *mut u8, sys::rbd_completion_t) -> libc::c_int,
    ) -> Result<AioOp> {
        let buf_ptr = buffer.as_mut().map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
        // The Vec's heap block does not move when the Vec is moved into the
        // shared block, so buf_ptr stays valid while the completion holds it.
        let (completion, arg) = Self::shared(buffer, Box::new(image.clone()));
        let mut c: sys::rbd_completion_t = std::ptr::null_mut();
        // SAFETY: arg stays valid until on_rbd_complete reclaims it; c is an out-pointer.
        let ret = unsafe { sys::rbd_aio_create_completion(arg, Some(on_rbd_complete::<Vec<u8>>), &mut c) };
        if ret < 0 {
            // SAFETY: no completion exists, so nothing will call back.
            unsafe { Self::reclaim(arg) };
            return Err(Error::from_errno("rbd_aio_create_completion", ret).target(image.spec()));
        }
        let ret = start(image.raw(), buf_ptr, c);
        if ret < 0 {
            // SAFETY: librbd refused the request and will not call back; the
            // completion is released here, once.
            unsafe { sys::rbd_aio_release(c) };
            // SAFETY: as above, nothing will call back.
            unsafe { Self::reclaim(arg) };
            return Err(Error::from_errno(op, ret).target(image.spec()).offset(offset));
        }
        Ok(AioOp { completion, op, offset })
    }
}

impl<B: Send + 'static> AioOp<B> {
    /// Submits a librados operation. `buffer` is what the library writes
    /// into and `keep` what must outlive the operation (the io-context, the
    /// RADOS operation). `start` gets the buffer, already in its final place
    /// (pointers into it stay valid until the completion fires), and the
    /// completion, and calls the `rados_aio_*` function; `target` names the
    /// object for errors.
    pub(crate) fn submit_rados(
        target: &str,
        op: &'static str,
        offset: u64,
        buffer: B,
        keep: Box<dyn Any + Send + Sync>,
        start: impl FnOnce(&mut B, sys::rados_completion_t) -> libc::c_int,
    ) -> Result<AioOp<B>> {
        let (completion, arg) = Self::shared(Some(buffer), keep);
        let mut c: sys::rados_completion_t = std::ptr::null_mut();
        // SAFETY: arg stays valid until on_rados_complete reclaims it; c is an out-pointer.
        let ret = unsafe { sys::rados_aio_create_completion2(arg, Some(on_rados_complete::<B>), &mut c) };
        if ret < 0 {
            // SAFETY: no completion exists, so nothing will call back.
            unsafe { Self::reclaim(arg) };
            return Err(Error::from_errno("rados_aio_create_completion2", ret).target(target.to_owned()));
        }
        let ret = {
            // The callback only touches the outcome, so holding the buffer's
            // lock while the operation starts cannot deadlock.
            let mut slot = lock(&completion.buffer);
            start(slot.as_mut().expect("stored above"), c)
        };
        if ret < 0 {
            // SAFETY: librados refused the request and will not call back;
            // the completion is released here, once.
            unsafe { sys::rados_aio_release(c) };
            // SAFETY: as above, nothing will call back.
            unsafe { Self::reclaim(arg) };
            return Err(Error::from_errno(op, ret).target(target.to_owned()).offset(offset));
        }
        Ok(AioOp { completion, op, offset })
    }

    /// The operation's name, for errors.
    pub(crate) fn op(&self) -> &'static str {
        self.op
    }

    /// The offset it concerns, for errors.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }
}

impl<B> Future for AioOp<B> {
    type Output = (i64, Option<B>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut o = lock(&self.completion.outcome);
        match o.ret {
            Some(ret) => {
                drop(o);
                let buffer = lock(&self.completion.buffer).take();
                Poll::Ready((ret, buffer))
            }
            None => {
                o.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
