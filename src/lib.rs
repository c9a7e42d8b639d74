//! livemig: live, crash-safe migration of Ceph RBD volumes between pools and
//! between Ceph clusters.
//!
//! Layers, bottom up:
//! - [`ceph`]: safe async wrappers over librados/librbd (`livemig-ceph-sys`).
//! - [`mirror`]: the native engine's bulk copier (snapshot, sparse extent
//!   enumeration, bounded parallel AIO, zero skipping) and image comparison.
//! - [`spec`]: parsing of `pool[/namespace]/image` specs as the `rbd` CLI does.
//!
//! Every fallible call returns [`Error`], which has a stable [`ErrorKind`],
//! the operation and target it concerned, and the cause.

pub mod catalog;
pub mod ceph;
pub mod error;
pub mod hypervisor;
pub mod job;
pub mod mirror;
pub mod precheck;
pub mod qemu;
pub mod spec;

pub use error::{Error, ErrorKind, Result};
