//! The release thread: where librados/librbd handles are torn down.
//!
//! See the module docs of [`crate::ceph`] for why teardown never runs on the
//! dropping thread. Jobs run in the order they were queued, so an image is
//! closed before the io-context it was opened in is destroyed.
//!
//! A process must not exit while a teardown is running: librados' static
//! destructors would run under it (seen as a C++ exception thrown through
//! the release thread). So the queue counts pending jobs, an `atexit` hook
//! waits for them, and [`wait_for_releases`] lets a caller wait explicitly.

use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    tx: mpsc::Sender<Job>,
    pending: Mutex<usize>,
    idle: Condvar,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("livemig-release".into())
            .spawn(move || {
                for job in rx {
                    job();
                    let q = QUEUE.get().expect("queue initialised before its thread runs jobs");
                    let mut pending = q.pending.lock().unwrap_or_else(|p| p.into_inner());
                    *pending -= 1;
                    if *pending == 0 {
                        q.idle.notify_all();
                    }
                }
            })
            .expect("spawn the livemig release thread");
        // SAFETY: registering a plain extern "C" function with no captured
        // state; it only waits on the queue's condition variable.
        unsafe { libc::atexit(drain_at_exit) };
        Queue {
            tx,
            pending: Mutex::new(0),
            idle: Condvar::new(),
        }
    })
}

extern "C" fn drain_at_exit() {
    wait_for_releases(Duration::from_secs(30));
}

/// Queues `job` on the release thread.
pub(crate) fn release(job: impl FnOnce() + Send + 'static) {
    let q = queue();
    *q.pending.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    // The receiver lives for the whole process, so sending cannot fail.
    let _ = q.tx.send(Box::new(job));
}

/// Waits (up to `timeout`) until every handle dropped so far has been torn
/// down; returns whether the queue is empty. Call it before exiting a
/// process that used livemig, after dropping its clusters and images (an
/// `atexit` hook does the same as a last resort).
pub fn wait_for_releases(timeout: Duration) -> bool {
    let Some(q) = QUEUE.get() else { return true };
    let pending = q.pending.lock().unwrap_or_else(|p| p.into_inner());
    let (pending, _) = q
        .idle
        .wait_timeout_while(pending, timeout, |n| *n > 0)
        .unwrap_or_else(|p| p.into_inner());
    *pending == 0
}
