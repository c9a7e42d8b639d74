//! The panic boundary every exported function goes through, and the
//! refusal of blocking calls from inside callbacks.

use super::*;

/// The panic boundary every exported function goes through.
pub(crate) fn boundary(f: impl FnOnce() -> FfiResult<()>) -> i32 {
    let result = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(FfiError::new(
                LIVEMIG_ERR_PANIC,
                format!("livemig panicked ({what}); this is a bug: report it, and free the migrator"),
            ))
        }
    };
    match result {
        Ok(()) => LIVEMIG_OK,
        Err(e) => {
            set_last_error(&e);
            e.code
        }
    }
}

pub(crate) fn not_in_callback() -> FfiResult<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(FfiError::new(
            LIVEMIG_ERR_IN_CALLBACK,
            "this livemig function blocks and cannot be called from inside a livemig callback; only livemig_records_* and livemig_callback_error can",
        ));
    }
    Ok(())
}
