//! librbd AIO as futures.
//!
//! [`AioOp`] owns the operation's buffer and a reference to its image in a
//! shared block. One reference is handed to librbd as the completion's
//! argument; librbd's callback takes it back, records the return value,
//! releases the completion and wakes the task. If the future is dropped
//! first, the shared block (and with it the buffer and the image) lives on
//! until the callback has run, so librbd never touches freed memory and the
//! drop never waits.

use std::future::Future;
use std::os::raw::c_void;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use livemig_ceph_sys as sys;

use super::image::Image;
use crate::error::{Error, Result};

struct Completion {
    outcome: Mutex<Outcome>,
    /// The buffer librbd reads from or writes into; taken back by the future
    /// only after the callback has fired.
    buffer: Mutex<Option<Vec<u8>>>,
    /// Keeps the image open until the operation has completed.
    _image: Image,
}

#[derive(Default)]
struct Outcome {
    ret: Option<i64>,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

extern "C" fn on_complete(c: sys::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `arg` is the reference leaked by `AioOp::submit` for exactly
    // this completion; librbd calls back once, so it is reclaimed once.
    let completion = unsafe { Arc::from_raw(arg as *const Completion) };
    // SAFETY: c is the live completion passed to this callback.
    let ret = unsafe { sys::rbd_aio_get_return_value(c) } as i64;
    // SAFETY: released once, here; librbd allows release inside the callback.
    unsafe { sys::rbd_aio_release(c) };
    let waker = {
        let mut o = lock(&completion.outcome);
        o.ret = Some(ret);
        o.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

/// An in-flight librbd AIO operation. Resolves to the return value and the
/// buffer it owned (for reuse).
pub(crate) struct AioOp {
    completion: Arc<Completion>,
    op: &'static str,
    offset: u64,
}

impl AioOp {
    /// Submits an operation. `start` gets the image handle, a pointer to the
    /// owned buffer's start (null if none) and the completion, and calls the
    /// `rbd_aio_*` function.
    pub(crate) fn submit(
        image: &Image,
        op: &'static str,
        offset: u64,
        mut buffer: Option<Vec<u8>>,
        start: impl FnOnce(sys::rbd_image_t, *mut u8, sys::rbd_completion_t) -> libc::c_int,
    ) -> Result<AioOp> {
        let buf_ptr = buffer.as_mut().map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
        let completion = Arc::new(Completion {
            outcome: Mutex::new(Outcome::default()),
            buffer: Mutex::new(buffer),
            _image: image.clone(),
        });
        let arg = Arc::into_raw(completion.clone()) as *mut c_void;
        let mut c: sys::rbd_completion_t = std::ptr::null_mut();
        // SAFETY: arg stays valid until on_complete reclaims it; c is an out-pointer.
        let ret = unsafe { sys::rbd_aio_create_completion(arg, Some(on_complete), &mut c) };
        if ret < 0 {
            // SAFETY: no completion exists, so the leaked reference is ours again.
            drop(unsafe { Arc::from_raw(arg as *const Completion) });
            return Err(Error::from_errno("rbd_aio_create_completion", ret).target(image.spec()));
        }
        // The Vec's heap block does not move when the Vec is moved into the
        // Mutex, so buf_ptr stays valid while the completion holds it.
        let ret = start(image.raw(), buf_ptr, c);
        if ret < 0 {
            // SAFETY: librbd refused the request and will not call back; the
            // completion and the leaked reference are released here, once.
            unsafe { sys::rbd_aio_release(c) };
            // SAFETY: as above.
            drop(unsafe { Arc::from_raw(arg as *const Completion) });
            return Err(Error::from_errno(op, ret).target(image.spec()).offset(offset));
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

impl Future for AioOp {
    type Output = (i64, Option<Vec<u8>>);

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
