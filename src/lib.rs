//! livemig: live, crash-safe migration of Ceph RBD volumes between pools and
//! between Ceph clusters.
//!
//! Layers, bottom up (ARCHITECTURE.md has the whole map):
//! - [`ceph`]: safe async wrappers over librados/librbd (`livemig-ceph-sys`).
//! - [`mirror`]: the native engine's bulk copier (snapshot, sparse extent
//!   enumeration, bounded parallel AIO, zero skipping), fencing and image
//!   comparison.
//! - [`qemu`]: the QMP client and the QEMU engine's mirror.
//! - [`catalog`] and [`hypervisor`]: what a control plane plugs in.
//! - [`precheck`]: the rules a migration must pass first.
//! - [`job`]: the crash-safe job: its record, its driver and its steps.
//! - [`spec`]: parsing of `pool[/namespace]/image` specs as the `rbd` CLI does.
//!
//! Every fallible call returns [`Error`], which has a stable [`ErrorKind`]
//! (its code, name and hint from one table), the operation and target it
//! concerned, and the cause as its `source()`.

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
