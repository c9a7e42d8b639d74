//! The native engine: moving an image's bytes with librbd directly.
//!
//! [`copy`] is the bulk copy of a source held at one point in time (by its
//! exclusive lock or a snapshot; sparse, bounded, parallel, zero-skipping),
//! its bytes moved by the OSDs (`server_copy`) where both images allow it,
//! else by the client (`transfer`);
//! [`compare`] checks two images by content; [`fence`] takes a source
//! image away from its writers for the cutover; [`zero`] finds the
//! non-zero runs of a buffer so the destination stays thin; [`partial`]
//! is the protocol of the partial destination a copy writes under.

pub mod compare;
pub mod copy;
pub mod fence;
mod pace;
pub mod partial;
mod server_copy;
mod transfer;
pub mod zero;

pub use compare::{compare_images, CompareReport};
pub use copy::{Copier, CopyMethod, CopyMode, CopyOptions, CopyReport, Progress, SourceHold, WHOLE_OBJECT_FROM};
