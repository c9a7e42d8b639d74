//! Safe, async wrappers over librados and librbd.
//!
//! Rules this layer keeps (they are why the types look the way they do):
//! - Handles are reference-counted: an [`Image`] keeps its [`IoCtx`] alive,
//!   which keeps its [`Cluster`] alive, so teardown happens in the order
//!   librados requires whatever order the caller drops things in.
//! - Teardown (`rbd_close`, `rados_ioctx_destroy`, `rados_shutdown`) runs on
//!   one release thread, never on the dropping thread: the last reference to
//!   an image may be dropped inside a librbd completion callback, where
//!   closing it would deadlock, and dropping a future must never block.
//! - An AIO operation owns its buffer and a reference to its image until
//!   librbd's callback fires; the callback only records the result and wakes
//!   the task. Dropping the future early is safe: the buffer lives on until
//!   the callback, then is freed.
//! - Synchronous librbd calls run on tokio's blocking pool.

mod aio;
mod cluster;
mod data_objects;
mod diff;
mod features;
mod image;
mod info;
mod ioctx;
mod open;
mod object;
mod release;

pub use release::wait_for_releases;

pub use cluster::{Cluster, ClusterConfig, OpPriorityRaise, PoolUsage};
pub use ioctx::IoCtx;
pub use data_objects::DataObjects;
pub use diff::{DiffStream, Extent};
pub use features::Features;
pub use image::{CreateOptions, Image, ImageInfo, SnapInfo, Watcher};
pub use object::{GuardedObject, OmapEntries};

use std::ffi::CString;

use crate::error::{Error, ErrorKind, Result};

/// A C string for librados/librbd, refusing interior NULs.
pub(crate) fn cstring(s: &str, what: &'static str) -> Result<CString> {
    CString::new(s)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, what).message(format!("{what} `{s}` contains a NUL byte")))
}

/// Turns a librados/librbd return code into a `Result`.
pub(crate) fn check(op: &'static str, ret: libc::c_int) -> Result<i32> {
    if ret < 0 {
        Err(Error::from_errno(op, ret))
    } else {
        Ok(ret)
    }
}

/// Runs a blocking librados/librbd call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::new(ErrorKind::Cancelled, "blocking call")
            .message("runtime shutting down")
            .cause(e)),
    }
}

/// Reads a NUL-separated list of strings as librbd returns them.
pub(crate) fn split_nul_list(buf: &[u8]) -> Vec<String> {
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}
