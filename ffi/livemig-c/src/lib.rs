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

mod callbacks;
mod handles;
mod records;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livemig::catalog::{Catalog, RadosCatalog};
use livemig::ceph::{Cluster, ClusterConfig};
use livemig::hypervisor::HypervisorRegistry;
use livemig::job::{
    Engine, JobProgress, JobRecord, JobStore, LivePolicyPatch, MigrateOptions, Migrator, OnStall, Phase, RetirePolicy,
};
use livemig::precheck::{precheck, Clusters, Destination};
use livemig::{Error, ErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use callbacks::{livemig_callback_error, livemig_catalog_callbacks, livemig_hypervisor_callbacks};
pub use records::{
    livemig_attachment, livemig_attachment_key, livemig_attachment_list, livemig_backing, livemig_change,
    livemig_instance, livemig_records, livemig_records_add_attachment, livemig_records_add_volume, livemig_volume,
};

use handles::HandleTable;

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

/// `livemig_run_options.on_stall`: the recorded or default policy.
pub const LIVEMIG_ON_STALL_DEFAULT: i32 = 0;
/// Cut over with whatever delta remains when the rounds stop shrinking.
pub const LIVEMIG_ON_STALL_CUTOVER: i32 = 1;
/// Pause the job (`LIVEMIG_ERR_NOT_CONVERGING`) when the rounds stop shrinking.
pub const LIVEMIG_ON_STALL_PAUSE: i32 = 2;

/// `livemig_run_options.delta_op_priority`: the deltas' I/O keeps Ceph's
/// client default priority (the OSDs share it evenly with the instance's).
pub const LIVEMIG_DELTA_PRIORITY_CEPH_DEFAULT: i32 = -1;

/// `livemig_run_options.engine`: the QEMU engine for a volume attached to a
/// QEMU (QMP socket), the native engine otherwise.
pub const LIVEMIG_ENGINE_AUTO: i32 = 0;
/// `livemig_run_options.engine`: the native engine (the instance is held
/// for the final delta; a QEMU with `stop`/`cont`).
pub const LIVEMIG_ENGINE_NATIVE: i32 = 1;
/// `livemig_run_options.engine`: the QEMU engine (QEMU mirrors the volume);
/// refused for a volume no QEMU has open.
pub const LIVEMIG_ENGINE_QEMU: i32 = 2;

fn code_of(kind: ErrorKind) -> i32 {
    kind.code()
}

fn kind_of(code: i32) -> Option<ErrorKind> {
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
struct FfiError {
    code: i32,
    message: String,
}

impl FfiError {
    fn new(code: i32, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
        }
    }

    fn null(what: &str) -> Self {
        FfiError::new(LIVEMIG_ERR_NULL_ARGUMENT, format!("`{what}` is NULL; it is required"))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError::new(code_of(e.kind()), e.to_string())
    }
}

type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<(i32, CString)> = RefCell::new((LIVEMIG_OK, CString::default()));
}

fn set_last_error(e: &FfiError) {
    let message = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = (e.code, message));
}

/// The panic boundary every exported function goes through.
fn boundary(f: impl FnOnce() -> FfiResult<()>) -> i32 {
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

/// A required UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn str_arg(p: *const c_char, what: &str) -> FfiResult<String> {
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
unsafe fn opt_str_arg(p: *const c_char, what: &str) -> FfiResult<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    let s = unsafe { str_arg(p, what) }?;
    Ok((!s.is_empty()).then_some(s))
}

/// Strings handed to the caller, so that `livemig_string_free` can tell
/// its own strings from anything else (a double free is an error, not a crash).
static STRINGS: std::sync::LazyLock<Mutex<std::collections::HashSet<usize>>> =
    std::sync::LazyLock::new(Default::default);

/// Writes a new caller-owned string to `out`.
///
/// # Safety
/// `out` is non-null and writable.
unsafe fn give_string(out: *mut *mut c_char, s: &str) {
    let p = CString::new(s.replace('\0', " ")).unwrap_or_default().into_raw();
    STRINGS.lock().unwrap_or_else(|p| p.into_inner()).insert(p as usize);
    // SAFETY: the caller guarantees `out` is writable.
    unsafe { *out = p };
}

/// Where livemig finds its cluster and keeps job records.
#[repr(C)]
pub struct livemig_config {
    /// Path of the ceph.conf; NULL: `CEPH_CONF`, then librados' search path.
    pub conf_path: *const c_char,
    /// Client id without `client.`; NULL: `admin`.
    pub client_id: *const c_char,
    /// Keyring path overriding the conf's; NULL: the conf's.
    pub keyring: *const c_char,
    /// Pool holding job records (and the built-in catalog when no catalog
    /// callbacks are given); NULL: `livemig`.
    pub jobs_pool: *const c_char,
    /// Seconds to wait for the monitors; 0: 10.
    pub connect_timeout_secs: u32,
}

/// How a job runs; zero fields mean the default (or, for a resumed live
/// job, what its record says).
///
/// Set `struct_size` to `sizeof(livemig_run_options)`: fields that a later
/// release adds after the ones the caller was compiled with then read as
/// zero (their defaults), so the struct can grow without breaking callers.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct livemig_run_options {
    /// `sizeof(livemig_run_options)` as the caller knows it.
    pub struct_size: u32,
    /// `LIVEMIG_ENGINE_*` (only `livemig_start` uses it: a job keeps its engine).
    pub engine: i32,
    /// Upper bound on bytes read per second by the copy; 0: unlimited.
    pub bwlimit_bytes_per_sec: u64,
    /// Memory for data in flight; 0: 128 MiB.
    pub in_flight_bytes: u64,
    /// Live: cut over once a round's delta is at most this; 0: the policy's.
    pub cutover_bytes: u64,
    /// Live: rounds without a new smallest delta that count as a stall.
    pub stall_rounds: u32,
    /// Live: rounds after which the policy's stall action applies.
    pub max_rounds: u32,
    /// Live: `LIVEMIG_ON_STALL_*`.
    pub on_stall: i32,
    /// Live: milliseconds the source's lock owner gets to hand it over.
    pub fence_timeout_ms: u64,
    /// Non-zero: keep the source image after the switch instead of moving
    /// it to the RBD trash.
    pub keep_source: u8,
    /// Seconds before the trash may purge the source; 0: one day.
    pub trash_delay_secs: u64,
    /// QEMU engine: milliseconds without progress before write-blocking; 0: 10 s.
    pub mirror_stall_ms: u64,
    /// Live: OSD priority of the replay rounds' and the final delta's I/O,
    /// 1..=255 (from 196 the OSDs serve it before the instance's I/O);
    /// `LIVEMIG_DELTA_PRIORITY_CEPH_DEFAULT`: Ceph's client default (63),
    /// not raised; 0: the recorded or default policy (200).
    pub delta_op_priority: i32,
}

impl livemig_run_options {
    /// The options behind `options` (NULL: the defaults), reading no more
    /// than the `struct_size` bytes the caller declared.
    ///
    /// # Safety
    /// `options` is NULL or points at `struct_size` readable bytes.
    unsafe fn read(options: *const livemig_run_options) -> FfiResult<MigrateOptions> {
        let mut out = livemig_run_options::default();
        if options.is_null() {
            return Ok(out.to_options());
        }
        // SAFETY: non-null; every caller's struct starts with `struct_size`.
        let declared = unsafe { std::ptr::addr_of!((*options).struct_size).read_unaligned() } as usize;
        let known = std::mem::size_of::<livemig_run_options>();
        let minimum = std::mem::offset_of!(livemig_run_options, engine) + std::mem::size_of::<i32>();
        if declared < minimum {
            return Err(Error::new(ErrorKind::InvalidInput, "run options")
                .message(format!(
                    "livemig_run_options.struct_size is {declared}: set it to sizeof(livemig_run_options) ({known} in this release)"
                ))
                .into());
        }
        // SAFETY: the caller declared `declared` readable bytes; at most
        // `known` of them are copied into a plain-old-data struct.
        unsafe {
            std::ptr::copy_nonoverlapping(
                options.cast::<u8>(),
                std::ptr::addr_of_mut!(out).cast::<u8>(),
                declared.min(known),
            )
        };
        if !matches!(
            out.engine,
            LIVEMIG_ENGINE_AUTO | LIVEMIG_ENGINE_NATIVE | LIVEMIG_ENGINE_QEMU
        ) {
            return Err(Error::new(ErrorKind::InvalidInput, "run options")
                .message(format!("engine {} is not one of LIVEMIG_ENGINE_*", out.engine))
                .into());
        }
        if !(out.delta_op_priority == LIVEMIG_DELTA_PRIORITY_CEPH_DEFAULT || (0..=255).contains(&out.delta_op_priority))
        {
            return Err(Error::new(ErrorKind::InvalidInput, "run options")
                .message(format!(
                    "delta_op_priority {} is not 1..=255, 0 (the default) or LIVEMIG_DELTA_PRIORITY_CEPH_DEFAULT",
                    out.delta_op_priority
                ))
                .into());
        }
        Ok(out.to_options())
    }

    fn to_options(self) -> MigrateOptions {
        let defaults = MigrateOptions::default();
        let nonzero = |v: u64| (v != 0).then_some(v);
        let mut copy = defaults.copy.clone();
        copy.bandwidth_limit = nonzero(self.bwlimit_bytes_per_sec);
        if self.in_flight_bytes != 0 {
            copy.in_flight_bytes = self.in_flight_bytes;
        }
        MigrateOptions {
            copy,
            policy: if self.keep_source != 0 {
                RetirePolicy::Keep
            } else {
                RetirePolicy::Trash {
                    delay_secs: nonzero(self.trash_delay_secs).unwrap_or(24 * 3600),
                }
            },
            live: LivePolicyPatch {
                cutover_bytes: nonzero(self.cutover_bytes),
                stall_rounds: (self.stall_rounds != 0).then_some(self.stall_rounds),
                max_rounds: (self.max_rounds != 0).then_some(self.max_rounds),
                on_stall: match self.on_stall {
                    LIVEMIG_ON_STALL_CUTOVER => Some(OnStall::Cutover),
                    LIVEMIG_ON_STALL_PAUSE => Some(OnStall::Pause),
                    _ => None,
                },
                fence_timeout_ms: nonzero(self.fence_timeout_ms),
                delta_op_priority: match self.delta_op_priority {
                    0 => None,
                    LIVEMIG_DELTA_PRIORITY_CEPH_DEFAULT => Some(0),
                    p => Some(p as u32),
                },
            },
            qemu_stall_ms: nonzero(self.mirror_stall_ms).unwrap_or(defaults.qemu_stall_ms),
            engine: match self.engine {
                LIVEMIG_ENGINE_NATIVE => Some(Engine::Native),
                LIVEMIG_ENGINE_QEMU => Some(Engine::Qemu),
                _ => None,
            },
            ..defaults
        }
    }
}

/// Where a job stands, as `livemig_progress` reports it.
#[repr(C)]
pub struct livemig_progress {
    /// Phase name (`copying`, `replaying`, `done`, `aborted`, ...), NUL-terminated.
    pub phase: [c_char; 32],
    /// Non-zero while this migrator drives the job.
    pub running: u8,
    /// When not running: `LIVEMIG_OK` (done), the code the last run ended
    /// with, `LIVEMIG_ERR_ROLLED_BACK`, or `LIVEMIG_ERR_NOT_RUNNING` (an
    /// unfinished job nobody here drives). `LIVEMIG_ERR_RUNNING` while running.
    pub result: i32,
    /// Live: the replay round (0 before the first).
    pub round: u32,
    /// Bytes the current copy or round has to move.
    pub bytes_total: u64,
    /// Of those, bytes moved.
    pub bytes_done: u64,
    /// Current copy rate, bytes per second.
    pub bytes_per_sec: u64,
}

/// Opaque handle to a connected migrator. Created by `livemig_connect`,
/// owned by the caller, freed with `livemig_migrator_free`; usable from any
/// thread.
pub struct livemig_migrator {
    _private: [u8; 0],
}

/// How one run (start or resume) of a job ended.
#[derive(Debug, Clone)]
struct Outcome {
    code: i32,
    message: String,
    phase: String,
}

/// Where a job stands for `livemig_get_progress`.
enum Standing {
    /// This migrator drives it.
    Running(JobProgress),
    /// No run of it is going on here.
    Ended(Outcome),
}

/// A job driven in the background by a migrator.
struct Run {
    pause: CancellationToken,
    progress: watch::Receiver<JobProgress>,
    outcome: watch::Receiver<Option<Outcome>>,
}

struct MigratorState {
    runtime: tokio::runtime::Runtime,
    catalog: Arc<dyn Catalog>,
    clusters: Clusters,
    store: JobStore,
    hypervisors: Option<Arc<dyn HypervisorRegistry>>,
    runs: Mutex<HashMap<String, Run>>,
}

static MIGRATORS: HandleTable<MigratorState> = HandleTable::new();

impl MigratorState {
    /// Runs `f` to completion on this migrator's runtime, from a caller's thread.
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> FfiResult<T> {
        not_in_callback()?;
        Ok(self.runtime.block_on(f))
    }

    fn migrator(&self, options: MigrateOptions, pause: CancellationToken) -> Migrator {
        let m = Migrator::new(self.catalog.clone(), self.clusters.clone(), self.store.clone(), options).pause_on(pause);
        match &self.hypervisors {
            Some(h) => m.hypervisors(h.clone()),
            None => m,
        }
    }

    /// Drives `job` in the background; the run's outcome is kept for
    /// `livemig_wait` and `livemig_progress`.
    fn spawn_run(self: &Arc<Self>, job: &str, options: MigrateOptions) -> FfiResult<()> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.get(job).is_some_and(|r| r.outcome.borrow().is_none()) {
            return Err(FfiError::new(
                LIVEMIG_ERR_RUNNING,
                format!("job `{job}` is already being driven by this migrator; wait for it or pause it"),
            ));
        }
        let pause = CancellationToken::new();
        let migrator = self.migrator(options, pause.clone());
        let progress = migrator.subscribe();
        let (tx, outcome) = watch::channel(None);
        let id = job.to_owned();
        self.runtime.spawn(async move {
            let result = tokio::spawn(async move { migrator.resume(&id).await }).await;
            let outcome = match result {
                Ok(Ok(record)) => record_outcome(&record),
                Ok(Err(e)) => Outcome {
                    code: code_of(e.kind()),
                    message: e.to_string(),
                    phase: String::new(),
                },
                Err(join) => Outcome {
                    code: LIVEMIG_ERR_PANIC,
                    message: format!("the job's task failed ({join}); this is a bug: report it"),
                    phase: String::new(),
                },
            };
            let _ = tx.send(Some(outcome));
        });
        runs.insert(
            job.to_owned(),
            Run {
                pause,
                progress,
                outcome,
            },
        );
        Ok(())
    }

    fn run_outcome(&self, job: &str) -> Option<(watch::Receiver<Option<Outcome>>, CancellationToken)> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(job).map(|r| (r.outcome.clone(), r.pause.clone()))
    }

    /// Waits up to `timeout` (forever if `None`) for `job`'s run to end.
    fn wait(&self, job: &str, timeout: Option<Duration>) -> FfiResult<Option<Outcome>> {
        let Some((mut rx, _)) = self.run_outcome(job) else {
            return Ok(None);
        };
        self.block_on(async move {
            let done = async {
                let _ = rx.wait_for(|o| o.is_some()).await;
                rx.borrow().clone()
            };
            match timeout {
                Some(t) => tokio::time::timeout(t, done).await.ok().flatten(),
                None => done.await,
            }
        })
    }

    fn pause_all_and_wait(&self) {
        let jobs: Vec<String> = {
            let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.iter()
                .map(|(id, r)| {
                    r.pause.cancel();
                    id.clone()
                })
                .collect()
        };
        for job in jobs {
            let _ = self.wait(&job, None);
        }
    }
}

fn not_in_callback() -> FfiResult<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(FfiError::new(
            LIVEMIG_ERR_IN_CALLBACK,
            "this livemig function blocks and cannot be called from inside a livemig callback; only livemig_records_* and livemig_callback_error can",
        ));
    }
    Ok(())
}

fn record_outcome(record: &JobRecord) -> Outcome {
    let phase = record.phase.name().to_owned();
    match &record.phase {
        Phase::Done => Outcome {
            code: LIVEMIG_OK,
            message: String::new(),
            phase,
        },
        Phase::Aborted { reason } => Outcome {
            code: LIVEMIG_ERR_ROLLED_BACK,
            message: format!("job `{}` was rolled back: {reason}", record.id),
            phase,
        },
        _ => Outcome {
            code: LIVEMIG_ERR_NOT_RUNNING,
            message: match &record.last_error {
                Some(e) => format!(
                    "job `{}` is in phase `{phase}`, not running here; its last error: {e}; resume it",
                    record.id
                ),
                None => format!(
                    "job `{}` is in phase `{phase}` and not running here: resume it",
                    record.id
                ),
            },
            phase,
        },
    }
}

fn migrator_arg(m: *const livemig_migrator) -> FfiResult<Arc<MigratorState>> {
    MIGRATORS.get(m as usize).ok_or_else(|| {
        FfiError::new(
            LIVEMIG_ERR_BAD_HANDLE,
            "the migrator handle is NULL, already freed, or not a migrator handle",
        )
    })
}

fn install_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("LIVEMIG_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
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

fn kind_name(kind: ErrorKind) -> &'static CStr {
    static NAMES: std::sync::LazyLock<Vec<CString>> = std::sync::LazyLock::new(|| {
        ErrorKind::ALL
            .iter()
            .map(|k| CString::new(k.as_str()).unwrap_or_default())
            .collect()
    });
    let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    NAMES[i].as_c_str()
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

/// Connects to the cluster and returns a migrator in `*out`.
///
/// `catalog`: the control plane's database; NULL uses livemig's built-in
/// catalog in the jobs pool. `hypervisor`: hooks that hold, re-point and
/// resume instances for live native migrations; NULL uses the built-in
/// ones (the test instance). Both structs are copied; their `user_data`
/// must stay valid until `livemig_migrator_free` returns.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; callbacks follow
/// the contract in `livemig_catalog_callbacks` / `livemig_hypervisor_callbacks`.
#[no_mangle]
pub unsafe extern "C" fn livemig_connect(
    config: *const livemig_config,
    catalog: *const livemig_catalog_callbacks,
    hypervisor: *const livemig_hypervisor_callbacks,
    out: *mut *mut livemig_migrator,
) -> i32 {
    boundary(|| {
        install_logging();
        not_in_callback()?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        if config.is_null() {
            return Err(FfiError::null("config"));
        }
        // SAFETY: non-null, and the caller guarantees it points to a config.
        let config = unsafe { &*config };
        // SAFETY: the config's strings are NULL or valid C strings (caller's contract).
        let (conf, client_id, keyring, jobs_pool) = unsafe {
            (
                opt_str_arg(config.conf_path, "config.conf_path")?,
                opt_str_arg(config.client_id, "config.client_id")?,
                opt_str_arg(config.keyring, "config.keyring")?,
                opt_str_arg(config.jobs_pool, "config.jobs_pool")?.unwrap_or_else(|| "livemig".into()),
            )
        };
        // One lock for all of this migrator's callbacks: never two at once.
        let serial = Arc::new(Mutex::new(()));
        let catalog_callbacks = if catalog.is_null() {
            None
        } else {
            // SAFETY: non-null; the caller guarantees it points to callbacks.
            Some(callbacks::CallbackCatalog::new(unsafe { &*catalog }, serial.clone())?)
        };
        let hypervisor_callbacks = if hypervisor.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(callbacks::CallbackHypervisors::new(unsafe { &*hypervisor }, serial)?)
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("livemig")
            .enable_all()
            .build()
            .map_err(|e| FfiError::new(ErrorKind::Io.code(), format!("cannot start livemig's threads: {e}")))?;
        let timeout = Duration::from_secs(if config.connect_timeout_secs == 0 {
            10
        } else {
            config.connect_timeout_secs.into()
        });
        let (cluster, io) = runtime.block_on(async {
            let cluster = Cluster::connect(ClusterConfig {
                conf_path: conf.map(Into::into),
                client_id,
                keyring: keyring.map(Into::into),
                connect_timeout: timeout,
                ..Default::default()
            })
            .await?;
            let io = cluster.ioctx(&jobs_pool, "").await.map_err(|e| {
                let why = format!(
                    "the jobs pool `{jobs_pool}` cannot be opened ({e}); create it (`ceph osd pool create {jobs_pool}`) or name another in livemig_config.jobs_pool"
                );
                e.message(why)
            })?;
            Ok::<_, Error>((cluster, io))
        })?;
        let catalog: Arc<dyn Catalog> = match catalog_callbacks {
            Some(c) => Arc::new(c),
            None => Arc::new(RadosCatalog::new(io.clone())),
        };
        let state = MigratorState {
            runtime,
            catalog,
            clusters: Clusters::local(cluster),
            store: JobStore::new(io),
            hypervisors: hypervisor_callbacks.map(|h| Arc::new(h) as Arc<dyn HypervisorRegistry>),
            runs: Mutex::new(HashMap::new()),
        };
        let token = MIGRATORS.insert(Arc::new(state));
        // SAFETY: `out` is non-null and the caller guarantees it is writable.
        unsafe { *out = token as *mut livemig_migrator };
        Ok(())
    })
}

/// Frees a migrator: jobs it drives are paused at their next safe point
/// (resumable later, by any process), then it disconnects. A freed or
/// unknown handle is refused with `LIVEMIG_ERR_BAD_HANDLE`.
#[no_mangle]
pub extern "C" fn livemig_migrator_free(migrator: *mut livemig_migrator) -> i32 {
    boundary(|| {
        not_in_callback()?;
        let state = MIGRATORS.remove(migrator as usize).ok_or_else(|| {
            FfiError::new(
                LIVEMIG_ERR_BAD_HANDLE,
                "livemig_migrator_free: the handle is NULL, already freed, or not a migrator handle",
            )
        })?;
        state.pause_all_and_wait();
        // The runtime (and the cluster connection) go when the last
        // reference does; a concurrent call on another thread keeps it.
        drop(state);
        Ok(())
    })
}

/// Checks whether `volume_id` can move to `destination` (`POOL`,
/// `POOL/IMAGE` or `POOL/NAMESPACE/IMAGE`) without changing anything.
/// `*report_json` (if `report_json` is not NULL) receives the rules and
/// their results as JSON, also when a rule fails; the return code is the
/// first failed rule's.
///
/// # Safety
/// String arguments are valid C strings; `report_json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_precheck(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    destination: *const c_char,
    report_json: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract on string arguments.
        let (volume_id, destination) =
            unsafe { (str_arg(volume_id, "volume_id")?, str_arg(destination, "destination")?) };
        let to = Destination::parse("local", &destination)?;
        let report = state.block_on(precheck(state.catalog.as_ref(), &state.clusters, &volume_id, &to))??;
        if !report_json.is_null() {
            let json = serde_json::to_string(&report).unwrap_or_default();
            // SAFETY: non-null and writable by the caller's contract.
            unsafe { give_string(report_json, &json) };
        }
        report.into_result()?;
        Ok(())
    })
}

/// Starts migrating `volume_id` to `destination`: runs the precheck and
/// records the job (both before returning), then drives it in the
/// background. `*job_id` receives the job's id (caller frees it with
/// `livemig_string_free`). `options` may be NULL; otherwise its
/// `struct_size` must be set.
///
/// # Safety
/// As `livemig_precheck`; `job_id` is writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_start(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    destination: *const c_char,
    options: *const livemig_run_options,
    job_id: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        if job_id.is_null() {
            return Err(FfiError::null("job_id"));
        }
        // SAFETY: caller's contract on string arguments.
        let (volume_id, destination) =
            unsafe { (str_arg(volume_id, "volume_id")?, str_arg(destination, "destination")?) };
        // SAFETY: NULL or a valid options struct (caller's contract).
        let options = unsafe { livemig_run_options::read(options) }?;
        let to = Destination::parse("local", &destination)?;
        let migrator = state.migrator(options.clone(), CancellationToken::new());
        let stored = state.block_on(migrator.create(&volume_id, &to))??;
        let id = stored.record.id.clone();
        state.spawn_run(&id, options)?;
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { give_string(job_id, &id) };
        Ok(())
    })
}

/// Drives an unfinished job (paused, failed, or left by a crashed process)
/// in the background, or continues its abort. `options` may be NULL.
///
/// # Safety
/// `job_id` is a valid C string; `options` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn livemig_resume(
    migrator: *const livemig_migrator,
    job_id: *const c_char,
    options: *const livemig_run_options,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let job = unsafe { str_arg(job_id, "job_id") }?;
        // SAFETY: NULL or a valid options struct (caller's contract).
        let options = unsafe { livemig_run_options::read(options) }?;
        // Refuse what cannot be resumed now, with the record's reason.
        state.block_on(state.store.load(&job))??;
        state.spawn_run(&job, options)
    })
}

/// Waits for the job's run in this migrator to end, at most `timeout_ms`
/// milliseconds (negative: no limit). Returns `LIVEMIG_OK` when the job is
/// done, `LIVEMIG_ERR_ROLLED_BACK` when it rolled itself back, the run's
/// error code when it stopped on an error (resumable), or
/// `LIVEMIG_ERR_RUNNING` when it still runs after the timeout.
///
/// # Safety
/// `job_id` is a valid C string.
#[no_mangle]
pub unsafe extern "C" fn livemig_wait(
    migrator: *const livemig_migrator,
    job_id: *const c_char,
    timeout_ms: i64,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let job = unsafe { str_arg(job_id, "job_id") }?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let outcome = match state.wait(&job, timeout)? {
            Some(o) => o,
            None if state.run_outcome(&job).is_some() => {
                return Err(FfiError::new(
                    LIVEMIG_ERR_RUNNING,
                    format!("job `{job}` still runs after {timeout_ms} ms"),
                ))
            }
            None => {
                let stored = state.block_on(state.store.load(&job))??;
                record_outcome(&stored.record)
            }
        };
        match outcome.code {
            LIVEMIG_OK => Ok(()),
            code => Err(FfiError::new(code, outcome.message)),
        }
    })
}

/// Fills `*out` with where the job stands.
///
/// # Safety
/// `job_id` is a valid C string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_get_progress(
    migrator: *const livemig_migrator,
    job_id: *const c_char,
    out: *mut livemig_progress,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let job = unsafe { str_arg(job_id, "job_id") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let run = {
            let runs = state.runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.get(&job)
                .map(|r| (r.progress.borrow().clone(), r.outcome.borrow().clone()))
        };
        let standing = match run {
            Some((progress, None)) => Standing::Running(progress),
            Some((_, Some(outcome))) if !outcome.phase.is_empty() => Standing::Ended(outcome),
            other => {
                // Not run here, or the run stopped on an error: the record
                // says where the job stands; a failed run's code is its result.
                let stored = state.block_on(state.store.load(&job))??;
                let mut outcome = record_outcome(&stored.record);
                if let Some((_, Some(failed))) = other {
                    outcome.code = failed.code;
                }
                Standing::Ended(outcome)
            }
        };
        let mut p = livemig_progress {
            phase: [0; 32],
            running: 0,
            result: LIVEMIG_ERR_RUNNING,
            round: 0,
            bytes_total: 0,
            bytes_done: 0,
            bytes_per_sec: 0,
        };
        let phase = match &standing {
            Standing::Running(progress) => {
                p.running = 1;
                p.round = progress.round.unwrap_or(0);
                if let Some(c) = &progress.copy {
                    p.bytes_total = c.total_bytes;
                    p.bytes_done = c.done_bytes;
                    p.bytes_per_sec = c.rate() as u64;
                }
                progress.phase.as_str()
            }
            Standing::Ended(outcome) => {
                p.result = outcome.code;
                outcome.phase.as_str()
            }
        };
        for (dst, src) in p.phase.iter_mut().zip(phase.bytes().take(31)) {
            *dst = src as c_char;
        }
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { out.write(p) };
        Ok(())
    })
}

/// The job's record as JSON in `*json` (caller frees it with
/// `livemig_string_free`): phase, rounds, downtime, errors, history; plus
/// `"phase_name"` (as in `livemig_progress`) and `"running"` (this
/// migrator drives it now).
///
/// # Safety
/// `job_id` is a valid C string; `json` is writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_status(
    migrator: *const livemig_migrator,
    job_id: *const c_char,
    json: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let job = unsafe { str_arg(job_id, "job_id") }?;
        if json.is_null() {
            return Err(FfiError::null("json"));
        }
        let stored = state.block_on(state.store.load(&job))??;
        let running = state.run_outcome(&job).is_some_and(|(rx, _)| rx.borrow().is_none());
        let mut value = serde_json::to_value(&stored.record)
            .map_err(|e| FfiError::new(ErrorKind::Io.code(), format!("cannot encode the job record: {e}")))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("running".into(), running.into());
            obj.insert("phase_name".into(), stored.record.phase.name().into());
        }
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { give_string(json, &value.to_string()) };
        Ok(())
    })
}

/// Pauses the job's run in this migrator at its next safe point and waits
/// for it to stop. The job can be resumed later. `LIVEMIG_OK` also when it
/// was not running.
///
/// # Safety
/// `job_id` is a valid C string.
#[no_mangle]
pub unsafe extern "C" fn livemig_pause(migrator: *const livemig_migrator, job_id: *const c_char) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let job = unsafe { str_arg(job_id, "job_id") }?;
        if let Some((_, pause)) = state.run_outcome(&job) {
            pause.cancel();
            state.wait(&job, None)?;
        }
        Ok(())
    })
}

/// Rolls the job back to the state before the migration (only before its
/// switch; afterwards it can only finish: `LIVEMIG_ERR_JOB_FINISHED`). A
/// run of it in this migrator is paused first. Blocks until the abort is
/// complete.
///
/// # Safety
/// `job_id` and `reason` are valid C strings (`reason` may be NULL).
#[no_mangle]
pub unsafe extern "C" fn livemig_abort(
    migrator: *const livemig_migrator,
    job_id: *const c_char,
    reason: *const c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let (job, reason) = unsafe { (str_arg(job_id, "job_id")?, opt_str_arg(reason, "reason")?) };
        if let Some((_, pause)) = state.run_outcome(&job) {
            pause.cancel();
            state.wait(&job, None)?;
        }
        let migrator = state.migrator(MigrateOptions::default(), CancellationToken::new());
        let reason = reason.unwrap_or_else(|| "aborted by the control plane".into());
        state.block_on(migrator.abort(&job, &reason))??;
        // The paused run's outcome is history now: wait and progress read the record.
        state.runs.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
        Ok(())
    })
}

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
}
