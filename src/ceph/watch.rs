//! RADOS watch/notify: a process that watches an object is told when
//! another one notifies it, instead of reading it again and again.
//!
//! librados calls the watch's callbacks on its own threads, with a pointer
//! to the watch's state: they only record what happened (the notify to
//! acknowledge, or the watch's error) and wake the waiting task, which
//! sends the acknowledgements itself. The state is freed on the release
//! thread only after `rados_unwatch2` and `rados_watch_flush` have
//! returned, after which no callback runs.

use std::ffi::c_void;
use std::sync::Mutex;
use std::time::Duration;

use livemig_ceph_sys as sys;
use tokio::sync::Notify;

use super::release::release;
use super::{blocking, check, cstring, IoCtx};
use crate::error::{Error, Result};

/// What the callbacks recorded, not yet seen by the waiting task.
#[derive(Default)]
struct Seen {
    /// Notifies to acknowledge.
    notifies: Vec<u64>,
    /// The watch's error (the watch is gone: watch again, or poll).
    error: Option<i32>,
}

/// State shared with librados' callbacks.
#[derive(Default)]
struct WatchState {
    seen: Mutex<Seen>,
    wake: Notify,
}

/// The state's address, handed to librados and freed by [`Watch`]'s drop.
struct StatePtr(*mut WatchState);
// SAFETY: WatchState is Send + Sync (a Mutex and a Notify); the pointer is
// only dereferenced as a shared reference until the release thread frees
// it, once no callback can run any more.
unsafe impl Send for StatePtr {}
// SAFETY: as above.
unsafe impl Sync for StatePtr {}

/// A watch on one object; unwatched when dropped.
pub struct Watch {
    io: IoCtx,
    oid: String,
    cookie: u64,
    state: StatePtr,
}

unsafe extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    _cookie: u64,
    _notifier_id: u64,
    _data: *mut c_void,
    _data_len: usize,
) {
    // SAFETY: `arg` is the watch's state, alive until after unwatch and
    // flush (see Watch's drop).
    let state = unsafe { &*(arg as *const WatchState) };
    state
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .notifies
        .push(notify_id);
    state.wake.notify_one();
}

unsafe extern "C" fn on_error(arg: *mut c_void, _cookie: u64, err: libc::c_int) {
    // SAFETY: as in on_notify.
    let state = unsafe { &*(arg as *const WatchState) };
    state.seen.lock().unwrap_or_else(|p| p.into_inner()).error = Some(err);
    state.wake.notify_one();
}

impl IoCtx {
    /// Watches object `oid` (which must exist).
    pub async fn watch(&self, oid: &str) -> Result<Watch> {
        let io = self.clone();
        let oid = oid.to_owned();
        blocking(move || {
            let o = cstring(&oid, "object name")?;
            let state = StatePtr(Box::into_raw(Box::<WatchState>::default()));
            let mut cookie = 0u64;
            // SAFETY: io is valid; o a valid C string; the callbacks match
            // librados' types; the state outlives the watch (freed after
            // unwatch and flush, or right here if the watch failed).
            let ret = unsafe {
                sys::rados_watch2(
                    io.raw(),
                    o.as_ptr(),
                    &mut cookie,
                    Some(on_notify),
                    Some(on_error),
                    state.0.cast(),
                )
            };
            if let Err(e) = check("rados_watch2", ret) {
                // SAFETY: from Box::into_raw above; librados kept no reference.
                drop(unsafe { Box::from_raw(state.0) });
                return Err(e.target(format!("{}/{oid}", io.pool_spec())));
            }
            Ok(Watch { io, oid, cookie, state })
        })
        .await
    }

    /// Notifies the watchers of `oid`, waiting at most `timeout` for their
    /// acknowledgements (an error, ETIMEDOUT, if one did not acknowledge
    /// in time).
    pub async fn notify(&self, oid: &str, timeout: Duration) -> Result<()> {
        let io = self.clone();
        let oid = oid.to_owned();
        blocking(move || {
            let o = cstring(&oid, "object name")?;
            let mut reply: *mut libc::c_char = std::ptr::null_mut();
            let mut reply_len = 0usize;
            // SAFETY: io is valid; o a valid C string; no payload; reply and
            // reply_len are writable.
            let ret = unsafe {
                sys::rados_notify2(
                    io.raw(),
                    o.as_ptr(),
                    std::ptr::null(),
                    0,
                    timeout.as_millis() as u64,
                    &mut reply,
                    &mut reply_len,
                )
            };
            if !reply.is_null() {
                // SAFETY: allocated by librados for this call; freed once.
                unsafe { sys::rados_buffer_free(reply) };
            }
            check("rados_notify2", ret)
                .map(|_| ())
                .map_err(|e| e.target(format!("{}/{oid}", io.pool_spec())))
        })
        .await
    }
}

impl Watch {
    fn state(&self) -> &WatchState {
        // SAFETY: alive until this watch's drop hands it to the release thread.
        unsafe { &*self.state.0 }
    }

    /// Waits for the next notify (acknowledging it), or for the watch to
    /// fail: then an error, and the caller watches again or polls.
    pub async fn notified(&self) -> Result<()> {
        loop {
            let (notifies, error) = {
                let mut seen = self.state().seen.lock().unwrap_or_else(|p| p.into_inner());
                (std::mem::take(&mut seen.notifies), seen.error)
            };
            if let Some(err) = error {
                return Err(Error::from_errno("watch", err).target(format!("{}/{}", self.io.pool_spec(), self.oid)));
            }
            if !notifies.is_empty() {
                self.acknowledge(notifies).await?;
                return Ok(());
            }
            self.state().wake.notified().await;
        }
    }

    async fn acknowledge(&self, notifies: Vec<u64>) -> Result<()> {
        let (io, oid, cookie) = (self.io.clone(), self.oid.clone(), self.cookie);
        blocking(move || {
            let o = cstring(&oid, "object name")?;
            for id in notifies {
                // SAFETY: io is valid; o a valid C string; no payload.
                let ret = unsafe { sys::rados_notify_ack(io.raw(), o.as_ptr(), id, cookie, std::ptr::null(), 0) };
                check("rados_notify_ack", ret)?;
            }
            Ok(())
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let (io, cookie) = (self.io.clone(), self.cookie);
        let state = StatePtr(self.state.0);
        release(move || {
            let state = state;
            // SAFETY: the watch this cookie names, on a valid io-context;
            // once unwatched and flushed, librados calls none of its
            // callbacks any more, so the state can go.
            unsafe {
                sys::rados_unwatch2(io.raw(), cookie);
                sys::rados_watch_flush(io.cluster().raw());
                drop(Box::from_raw(state.0));
            }
        });
    }
}
