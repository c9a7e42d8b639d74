//! The C ABI of livemig, for control planes written in C, Python (see
//! `python/livemig`) or anything else that can call C.
//!
//! The header `include/livemig.h` is generated from this crate by cbindgen
//! and committed; a test fails when it is out of date
//! (`ffi/livemig-c/regenerate-header.sh` rewrites it).
//!
//! Rules that hold for every exported function:
//! - It returns an `int32_t` code: `LIVEMIG_OK` (0) or a `LIVEMIG_ERR_*`.
//!   On an error, `livemig_last_error_message()` says what went wrong and
//!   what to do, on the calling thread, until its next livemig call.
//! - It never unwinds into the caller: a panic inside becomes
//!   `LIVEMIG_ERR_PANIC`.
//! - Handles (`livemig_migrator *`, `livemig_records *`) are tokens, not
//!   addresses: livemig never dereferences them, it looks them up. A NULL,
//!   freed, forged or wrong-kind handle is reported as
//!   `LIVEMIG_ERR_BAD_HANDLE` instead of crashing, and tokens are never
//!   reused, so a handle used after its free is always detected.
//! - Strings livemig returns (`char **out`) belong to the caller, who frees
//!   them with `livemig_string_free` (a second free is detected).
//!
//! A control plane supplies its database through `livemig_catalog_callbacks`
//! and its compute agent through `livemig_hypervisor_callbacks`; see
//! [`callbacks`] for when they are called and what they must do.
#![allow(non_camel_case_types)]

mod api;
mod boundary;
mod callbacks;
mod error;
mod handles;
mod migrator;
mod options;
mod records;
mod strings;
mod sync;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livemig::catalog::{Catalog, RadosCatalog};
use livemig::ceph::{Cluster, ClusterConfig};
use livemig::hypervisor::{BuiltinHypervisors, HypervisorRegistry};
use livemig::job::{
    Engine, JobProgress, JobRecord, JobStore, LivePolicyPatch, MigrateOptions, Migrator, OnStall, Phase, RetirePolicy,
};
use livemig::mirror::CopyMode;
use livemig::precheck::{precheck, Clusters, Destination, LOCAL_CLUSTER};
use livemig::{Error, ErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use callbacks::{livemig_callback_error, livemig_catalog_callbacks, livemig_hypervisor_callbacks};
pub use records::{
    livemig_attachment, livemig_attachment_key, livemig_attachment_list, livemig_backing, livemig_change,
    livemig_instance, livemig_records, livemig_records_add_attachment, livemig_records_add_volume, livemig_volume,
};

use handles::HandleTable;

pub use api::*;
pub(crate) use boundary::*;
pub use error::*;
pub(crate) use migrator::*;
pub use options::*;
pub use strings::*;
pub use sync::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn read(options: &livemig_run_options) -> FfiResult<MigrateOptions> {
        // SAFETY: a live struct of the declared size (or less).
        unsafe { livemig_run_options::read(options) }
    }

    fn options(delta_op_priority: i32) -> livemig_run_options {
        livemig_run_options {
            struct_size: std::mem::size_of::<livemig_run_options>() as u32,
            delta_op_priority,
            ..Default::default()
        }
    }

    #[test]
    fn the_deltas_priority_maps_to_the_live_policy() {
        let priority = |p| read(&options(p)).ok().map(|o| o.live.delta_op_priority);
        assert_eq!(priority(0), Some(None), "0: the recorded or default policy");
        assert_eq!(priority(LIVEMIG_DELTA_PRIORITY_CEPH_DEFAULT), Some(Some(0)));
        assert_eq!(priority(150), Some(Some(150)));
        assert_eq!(priority(255), Some(Some(255)));
        for bad in [256, -2, i32::MIN] {
            let err = read(&options(bad)).expect_err("refused");
            assert_eq!(err.code, ErrorKind::InvalidInput.code(), "{bad}");
            assert!(err.message.contains("delta_op_priority"), "{}", err.message);
        }
    }

    #[test]
    fn a_caller_compiled_before_the_deltas_priority_gets_the_default() {
        let mut o = options(150);
        o.struct_size = std::mem::offset_of!(livemig_run_options, delta_op_priority) as u32;
        assert_eq!(read(&o).ok().map(|o| o.live.delta_op_priority), Some(None));
    }

    #[test]
    fn the_data_pool_and_whole_object_threshold_reach_the_copy_options() {
        let pool = c"fast-data";
        let mut o = livemig_run_options {
            struct_size: std::mem::size_of::<livemig_run_options>() as u32,
            whole_object_from_permille: 800,
            data_pool: pool.as_ptr(),
            ..Default::default()
        };
        let copy = read(&o).ok().map(|o| o.copy);
        assert_eq!(copy.as_ref().and_then(|c| c.data_pool.as_deref()), Some("fast-data"));
        assert_eq!(copy.map(|c| c.whole_object_from), Some(0.8));
        // A caller compiled before these fields: the defaults, whatever
        // lies beyond its struct.
        o.struct_size = std::mem::offset_of!(livemig_run_options, whole_object_from_permille) as u32;
        let copy = read(&o).ok().map(|o| o.copy);
        assert_eq!(copy.as_ref().map(|c| c.data_pool.clone()), Some(None));
        assert_eq!(
            copy.map(|c| c.whole_object_from),
            Some(livemig::mirror::WHOLE_OBJECT_FROM)
        );
    }
}
