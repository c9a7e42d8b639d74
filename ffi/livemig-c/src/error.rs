//! Error codes: the library's kinds (their codes come from its error
//! table), the ABI's own codes (100 and up), and the calling thread's last
//! error.

use super::*;

/// Success.
pub const LIVEMIG_OK: i32 = 0;
// The codes of the library's error kinds (`LIVEMIG_ERR_CLUSTER_UNREACHABLE`
// = 1 ... ) come from its error table: `kind_defines` writes them into the
// header, and every code here is `ErrorKind::code`.
/// A required pointer argument is NULL.
pub const LIVEMIG_ERR_NULL_ARGUMENT: i32 = 100;
/// The handle is NULL, freed, of another kind, or was never issued.
pub const LIVEMIG_ERR_BAD_HANDLE: i32 = 101;
/// A string argument is not UTF-8.
pub const LIVEMIG_ERR_INVALID_STRING: i32 = 102;
/// livemig panicked (a bug); the message says where. Free the handle.
pub const LIVEMIG_ERR_PANIC: i32 = 103;
/// A callback returned a code livemig does not know.
pub const LIVEMIG_ERR_CALLBACK: i32 = 104;
/// The job is being driven by this migrator already (or, from
/// `livemig_wait`: it still runs after the timeout).
pub const LIVEMIG_ERR_RUNNING: i32 = 105;
/// The job rolled itself back (e.g. the catalog refused the switch); the
/// message says why. Volume and images are as before the migration.
pub const LIVEMIG_ERR_ROLLED_BACK: i32 = 106;
/// The job is not being driven by this migrator and has not finished:
/// resume it.
pub const LIVEMIG_ERR_NOT_RUNNING: i32 = 107;
/// A blocking livemig function was called from inside a livemig callback.
pub const LIVEMIG_ERR_IN_CALLBACK: i32 = 108;

pub(crate) fn code_of(kind: ErrorKind) -> i32 {
    kind.code()
}

pub(crate) fn kind_of(code: i32) -> Option<ErrorKind> {
    ErrorKind::from_code(code)
}

/// The header's defines of the library's error kinds, one per row of its
/// error table (`LIVEMIG_ERR_` and the kind's name in capitals, its code,
/// its doc line); cbindgen puts them after the includes.
pub fn kind_defines() -> String {
    let mut out = String::from("\n// Error codes of the library's error kinds (its error table).\n");
    for kind in ErrorKind::ALL {
        out.push_str(&format!(
            "\n// {}\n#define LIVEMIG_ERR_{} {}\n",
            kind.doc().trim(),
            kind.as_str().to_ascii_uppercase(),
            kind.code()
        ));
    }
    out
}

/// A failure as the ABI reports it: a code and a message.
#[derive(Debug, Clone)]
pub(crate) struct FfiError {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        FfiError::new(LIVEMIG_ERR_NULL_ARGUMENT, format!("`{what}` is NULL; it is required"))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError::new(code_of(e.kind()), e.to_string())
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    pub(crate) static LAST_ERROR: RefCell<(i32, CString)> = RefCell::new((LIVEMIG_OK, CString::default()));
}

pub(crate) fn set_last_error(e: &FfiError) {
    let message = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = (e.code, message));
}

/// The message of the last failed livemig call on this thread ("" if none).
/// Owned by livemig; valid until the thread's next livemig call.
#[no_mangle]
pub extern "C" fn livemig_last_error_message() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().1.as_ptr())
}

/// The code of the last failed livemig call on this thread (`LIVEMIG_OK` if none).
#[no_mangle]
pub extern "C" fn livemig_last_error_code() -> i32 {
    LAST_ERROR.with(|l| l.borrow().0)
}

/// A code's stable name (`"conflict"`, `"bad_handle"`, ...), a static
/// string; `"unknown"` for codes livemig does not define.
#[no_mangle]
pub extern "C" fn livemig_code_name(code: i32) -> *const c_char {
    let name: &'static CStr = match code {
        LIVEMIG_OK => c"ok",
        LIVEMIG_ERR_NULL_ARGUMENT => c"null_argument",
        LIVEMIG_ERR_BAD_HANDLE => c"bad_handle",
        LIVEMIG_ERR_INVALID_STRING => c"invalid_string",
        LIVEMIG_ERR_PANIC => c"panic",
        LIVEMIG_ERR_CALLBACK => c"callback",
        LIVEMIG_ERR_RUNNING => c"running",
        LIVEMIG_ERR_ROLLED_BACK => c"rolled_back",
        LIVEMIG_ERR_NOT_RUNNING => c"not_running",
        LIVEMIG_ERR_IN_CALLBACK => c"in_callback",
        _ => match kind_of(code) {
            Some(kind) => kind_name(kind),
            None => c"unknown",
        },
    };
    name.as_ptr()
}

pub(crate) fn kind_name(kind: ErrorKind) -> &'static CStr {
    static NAMES: std::sync::LazyLock<Vec<CString>> = std::sync::LazyLock::new(|| {
        ErrorKind::ALL
            .iter()
            .map(|k| CString::new(k.as_str()).unwrap_or_default())
            .collect()
    });
    let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    NAMES[i].as_c_str()
}
