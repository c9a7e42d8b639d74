//! The release thread: where librados/librbd handles are torn down.
//!
//! See the module docs of [`crate::ceph`] for why teardown never runs on the
//! dropping thread. Jobs run in the order they were queued, so an image is
//! closed before the io-context it was opened in is destroyed.

use std::sync::mpsc;
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

static RELEASE_QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

/// Queues `job` on the release thread.
pub(crate) fn release(job: impl FnOnce() + Send + 'static) {
    let tx = RELEASE_QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("livemig-release".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the livemig release thread");
        tx
    });
    // The receiver lives for the whole process, so sending cannot fail.
    let _ = tx.send(Box::new(job));
}
