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
mod layout;
mod object;
mod object_copy;
mod object_sample;
mod open;
mod release;
mod watch;

pub use release::wait_for_releases;

pub use cluster::{Cluster, ClusterConfig, OpPriorityRaise, PoolUsage};
pub use data_objects::DataObjects;
pub use diff::{DiffStream, Extent};
pub use features::Features;
pub use image::{CreateOptions, Image, ImageInfo, SnapInfo, Watcher};
pub use ioctx::IoCtx;
pub use layout::Layout;
pub use object::{GuardedObject, OmapEntries};
pub use object_copy::{ObjectCopied, ObjectCopy};
pub use watch::Watch;

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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The files of `ceph/`, by module name.
    const FILES: &[(&str, &str)] = &[
        ("aio", include_str!("aio.rs")),
        ("cluster", include_str!("cluster.rs")),
        ("data_objects", include_str!("data_objects.rs")),
        ("diff", include_str!("diff.rs")),
        ("features", include_str!("features.rs")),
        ("image", include_str!("image.rs")),
        ("info", include_str!("info.rs")),
        ("ioctx", include_str!("ioctx.rs")),
        ("object", include_str!("object.rs")),
        ("open", include_str!("open.rs")),
        ("release", include_str!("release.rs")),
    ];

    /// Which modules `source` imports from: `use super::m::..` names `m`; a
    /// name in `use super::{..}` is a module, or a type this file
    /// re-exports from one (`reexports`); helpers of this file are neither.
    fn imports(source: &str, reexports: &BTreeMap<String, String>) -> BTreeSet<String> {
        let modules: BTreeSet<&str> = FILES.iter().map(|(m, _)| *m).collect();
        let mut out = BTreeSet::new();
        for line in source.lines().map(str::trim) {
            let Some(rest) = line
                .strip_prefix("use super::")
                .or_else(|| line.strip_prefix("pub use super::"))
            else {
                continue;
            };
            let names = rest.trim_start_matches('{').trim_end_matches(';').trim_end_matches('}');
            for name in names.split(',').map(|n| n.trim().split("::").next().unwrap_or("")) {
                if modules.contains(name) {
                    out.insert(name.to_owned());
                } else if let Some(m) = reexports.get(name) {
                    out.insert(m.clone());
                }
            }
        }
        out
    }

    #[test]
    fn no_circle_of_imports_inside_ceph() {
        let mut reexports = BTreeMap::new();
        for line in include_str!("mod.rs").lines() {
            let Some(rest) = line.strip_prefix("pub use ") else {
                continue;
            };
            let Some((module, names)) = rest.split_once("::") else {
                continue;
            };
            for name in names.trim_matches(|c| "{};".contains(c)).split(',') {
                reexports.insert(name.trim().to_owned(), module.to_owned());
            }
        }
        let graph: BTreeMap<&str, BTreeSet<String>> = FILES
            .iter()
            .map(|(m, src)| {
                // A file's own tests import it back through the re-exports.
                let mut from = imports(src, &reexports);
                from.remove(*m);
                (*m, from)
            })
            .collect();
        assert!(graph["diff"].contains("image"), "the parser sees imports: {graph:?}");
        // Depth-first search; a module met again on the current path closes a circle.
        fn visit<'a>(
            m: &'a str,
            graph: &'a BTreeMap<&str, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if done.contains(m) {
                return;
            }
            assert!(!path.contains(&m), "a circle of imports in ceph/: {path:?} -> {m}");
            path.push(m);
            for next in &graph[m] {
                visit(next.as_str(), graph, path, done);
            }
            path.pop();
            done.insert(m);
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            visit(m, &graph, &mut Vec::new(), &mut done);
        }
    }
}
