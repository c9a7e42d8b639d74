//! Strings across the boundary: arguments read as UTF-8, strings handed
//! out to the caller (who frees them, once) and the version string.

use super::*;

/// A required UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
pub(crate) unsafe fn str_arg(p: *const c_char, what: &str) -> FfiResult<String> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-null, and the caller guarantees NUL termination and validity.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| FfiError::new(LIVEMIG_ERR_INVALID_STRING, format!("`{what}` is not UTF-8")))
}

/// An optional UTF-8 string argument (NULL or "" means unset).
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg(p: *const c_char, what: &str) -> FfiResult<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    let s = unsafe { str_arg(p, what) }?;
    Ok((!s.is_empty()).then_some(s))
}

/// Strings handed to the caller, so that `livemig_string_free` can tell
/// its own strings from anything else (a double free is an error, not a crash).
pub(crate) static STRINGS: std::sync::LazyLock<Mutex<std::collections::HashSet<usize>>> =
    std::sync::LazyLock::new(Default::default);

/// Writes a new caller-owned string to `out`.
///
/// # Safety
/// `out` is non-null and writable.
pub(crate) unsafe fn give_string(out: *mut *mut c_char, s: &str) {
    let p = CString::new(s.replace('\0', " ")).unwrap_or_default().into_raw();
    STRINGS.lock().unwrap_or_else(|p| p.into_inner()).insert(p as usize);
    // SAFETY: the caller guarantees `out` is writable.
    unsafe { *out = p };
}

/// Frees a string livemig returned. NULL is ignored; a pointer livemig did
/// not hand out (or already freed) is refused with `LIVEMIG_ERR_BAD_HANDLE`.
///
/// # Safety
/// `s` is NULL or a pointer; it is only dereferenced if livemig issued it.
#[no_mangle]
pub unsafe extern "C" fn livemig_string_free(s: *mut c_char) -> i32 {
    boundary(|| {
        if s.is_null() {
            return Ok(());
        }
        if !STRINGS.lock().unwrap_or_else(|p| p.into_inner()).remove(&(s as usize)) {
            return Err(FfiError::new(
                LIVEMIG_ERR_BAD_HANDLE,
                "livemig_string_free: not a string livemig returned, or already freed",
            ));
        }
        // SAFETY: the pointer came from CString::into_raw in give_string and
        // was just removed from the set of live strings, so it is freed once.
        drop(unsafe { CString::from_raw(s) });
        Ok(())
    })
}

/// The livemig version, a static string (never freed).
#[no_mangle]
pub extern "C" fn livemig_version() -> *const c_char {
    static VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}
