//! The QEMU engine's building blocks: speaking QMP to the instance's QEMU.
//!
//! For a volume attached to a running QEMU (the Nova/libvirt case) QEMU
//! mirrors the volume itself (`blockdev-mirror`): the guest's writes go to
//! both images once the mirror is in sync, so the pivot costs no downtime.

pub mod graph;
pub mod mirror;
pub mod qmp;

pub use qmp::{Event, Qmp};
