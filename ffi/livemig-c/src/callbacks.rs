//! The caller's catalog and hypervisor, reached through C callbacks.
//!
//! Contract for every callback:
//! - It is called on one of livemig's threads, never two callbacks of one
//!   migrator at once, and it may block (a database transaction, an RPC).
//! - It returns `LIVEMIG_OK` or a `LIVEMIG_ERR_*` code; before returning an
//!   error it may call `livemig_callback_error` with a message, which
//!   livemig puts into the error it reports.
//! - It must not call blocking livemig functions (they fail with
//!   `LIVEMIG_ERR_IN_CALLBACK`); `livemig_records_add_*` and
//!   `livemig_callback_error` are what it may call.
//! - Pointers it receives are valid only during the call.
//!
//! Each call runs on tokio's blocking pool, so a slow callback never stalls
//! livemig's I/O; a job abandoned while a callback runs lets it finish.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::sync::{Arc, Mutex};

use livemig::catalog::{Attachment, Backing, Cas, Catalog, Instance, Volume};
use livemig::hypervisor::{Hypervisor, HypervisorRegistry};
use livemig::{Error, ErrorKind, Result};

use crate::records::{
    livemig_attachment, livemig_backing, livemig_change, livemig_records, Arena, OwnedChange, RecordsGuard,
};
use crate::{kind_of, FfiError, FfiResult, LIVEMIG_OK};

/// The control plane's database.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct livemig_catalog_callbacks {
    /// Passed to every callback; must stay valid until the migrator is freed.
    pub user_data: *mut c_void,
    /// Adds the volume `volume_id` to `out` (`livemig_records_add_volume`);
    /// returns `LIVEMIG_ERR_NOT_IN_CATALOG` if there is none.
    pub get_volume: Option<
        unsafe extern "C" fn(user_data: *mut c_void, volume_id: *const c_char, out: *mut livemig_records) -> i32,
    >,
    /// Adds every volume to `out`.
    pub list_volumes: Option<unsafe extern "C" fn(user_data: *mut c_void, out: *mut livemig_records) -> i32>,
    /// Adds the attachments of `volume_id` to `out`
    /// (`livemig_records_add_attachment`); none is not an error.
    pub list_attachments: Option<
        unsafe extern "C" fn(user_data: *mut c_void, volume_id: *const c_char, out: *mut livemig_records) -> i32,
    >,
    /// Applies `change` atomically (see `livemig_change`), or changes nothing
    /// and returns `LIVEMIG_ERR_CONFLICT` (refused, e.g. a record differs or
    /// the control plane does not allow it now) or another error code.
    pub compare_and_swap: Option<unsafe extern "C" fn(user_data: *mut c_void, change: *const livemig_change) -> i32>,
}

/// The control plane's compute agent, for live migrations by the native
/// engine (volumes attached to instances that are not reached over QMP).
/// Every call must be idempotent: after a crash livemig repeats calls it may
/// already have made.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct livemig_hypervisor_callbacks {
    /// Passed to every callback; must stay valid until the migrator is freed.
    pub user_data: *mut c_void,
    /// Stops the instance's writes to the attachment's volume; returns once
    /// every write it acknowledged is on the image.
    pub hold: Option<unsafe extern "C" fn(user_data: *mut c_void, attachment: *const livemig_attachment) -> i32>,
    /// Lets the instance write again (to whatever image it now uses).
    pub resume: Option<unsafe extern "C" fn(user_data: *mut c_void, attachment: *const livemig_attachment) -> i32>,
    /// Makes the held instance use `to` instead of its current image.
    pub repoint: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            attachment: *const livemig_attachment,
            to: *const livemig_backing,
        ) -> i32,
    >,
}

thread_local! {
    static CALLBACK_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Called by a callback before it returns an error: `message` says what went
/// wrong, in the control plane's terms. It is copied.
///
/// # Safety
/// `message` is NULL or a valid C string.
#[no_mangle]
pub unsafe extern "C" fn livemig_callback_error(message: *const c_char) -> i32 {
    crate::boundary(|| {
        // SAFETY: caller's contract.
        let m = unsafe { crate::str_arg(message, "message") }?;
        CALLBACK_MESSAGE.with(|c| *c.borrow_mut() = Some(m));
        Ok(())
    })
}

/// The caller's `user_data`.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: livemig only passes the pointer back to the caller's callbacks,
// which the header documents as called from livemig's threads; the caller
// vouches that its data may be used from them (one callback at a time).
unsafe impl Send for UserData {}
// SAFETY: as above; livemig never dereferences it.
unsafe impl Sync for UserData {}

/// Runs one callback on the blocking pool, one at a time per migrator, and
/// turns its code and message into a result.
async fn invoke<T: Send + 'static>(
    serial: Arc<Mutex<()>>,
    op: &'static str,
    failure_kind: ErrorKind,
    call: impl FnOnce() -> (i32, T) + Send + 'static,
) -> Result<T> {
    let joined = tokio::task::spawn_blocking(move || {
        let _one_at_a_time = serial.lock().unwrap_or_else(|p| p.into_inner());
        CALLBACK_MESSAGE.with(|c| c.borrow_mut().take());
        let (code, value) = call();
        let message = CALLBACK_MESSAGE.with(|c| c.borrow_mut().take());
        (code, value, message)
    })
    .await;
    let (code, value, message) = joined
        .map_err(|e| Error::new(ErrorKind::Io, op).message(format!("the callback did not return normally ({e})")))?;
    if code == LIVEMIG_OK {
        return Ok(value);
    }
    let (kind, known) = match kind_of(code) {
        Some(k) => (k, true),
        None => (failure_kind, false),
    };
    let message = match (message, known) {
        (Some(m), true) => m,
        (Some(m), false) => format!("{m} (unknown code {code})"),
        (None, _) => format!("the callback returned code {code} without a message"),
    };
    Err(Error::new(kind, op).message(format!("{op}: {message}")))
}

fn missing(what: &str) -> FfiError {
    FfiError::null(what)
}

/// A caller's callback table and the lock that serialises this migrator's calls.
#[derive(Clone)]
struct CallerTable<T: Copy> {
    table: T,
    user_data: UserData,
    serial: Arc<Mutex<()>>,
}

// SAFETY: the table holds function pointers (freely shareable) and the
// caller's user_data, which the caller allows on livemig's threads (see
// `UserData`).
unsafe impl<T: Copy> Send for CallerTable<T> {}
// SAFETY: as above; calls are serialised by `serial`.
unsafe impl<T: Copy> Sync for CallerTable<T> {}

/// A catalog whose every read and change is a callback.
pub struct CallbackCatalog {
    caller: CallerTable<livemig_catalog_callbacks>,
}

impl CallbackCatalog {
    pub fn new(c: &livemig_catalog_callbacks, serial: Arc<Mutex<()>>) -> FfiResult<Self> {
        c.get_volume.ok_or_else(|| missing("catalog.get_volume"))?;
        c.list_volumes.ok_or_else(|| missing("catalog.list_volumes"))?;
        c.list_attachments.ok_or_else(|| missing("catalog.list_attachments"))?;
        c.compare_and_swap.ok_or_else(|| missing("catalog.compare_and_swap"))?;
        let user_data = UserData(c.user_data);
        Ok(CallbackCatalog {
            caller: CallerTable {
                table: *c,
                user_data,
                serial,
            },
        })
    }

    /// Calls a callback that fills a records collector with `id` as its argument.
    async fn collect(
        &self,
        op: &'static str,
        f: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *mut livemig_records) -> i32>,
        id: &str,
    ) -> Result<crate::records::Records> {
        let f = f.ok_or_else(|| Error::new(ErrorKind::InvalidInput, op))?;
        let ud = self.caller.user_data;
        let id = CString::new(id).map_err(|_| Error::new(ErrorKind::InvalidInput, op))?;
        invoke(self.caller.serial.clone(), op, ErrorKind::Io, move || {
            let ud = ud;
            let guard = RecordsGuard::new();
            // SAFETY: the callback was checked non-null at construction and
            // follows the documented contract; `id` and the records token are
            // valid for the call.
            let code = unsafe { f(ud.0, id.as_ptr(), guard.token as *mut livemig_records) };
            (code, guard.take())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Catalog for CallbackCatalog {
    async fn volume(&self, id: &str) -> Result<Volume> {
        let records = self
            .collect("catalog callback get_volume", self.caller.table.get_volume, id)
            .await?;
        records.volumes.into_iter().find(|v| v.id == id).ok_or_else(|| {
            Error::new(ErrorKind::NotInCatalog, "catalog callback get_volume")
                .target(id.to_owned())
                .message(format!("get_volume returned LIVEMIG_OK but added no volume `{id}`"))
        })
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        let op = "catalog callback list_volumes";
        let f = self
            .caller
            .table
            .list_volumes
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, op))?;
        let ud = self.caller.user_data;
        let records = invoke(self.caller.serial.clone(), op, ErrorKind::Io, move || {
            let ud = ud;
            let guard = RecordsGuard::new();
            // SAFETY: checked non-null at construction; documented contract.
            let code = unsafe { f(ud.0, guard.token as *mut livemig_records) };
            (code, guard.take())
        })
        .await?;
        Ok(records.volumes)
    }

    async fn instance(&self, id: &str) -> Result<Instance> {
        Err(Error::new(ErrorKind::NotInCatalog, "catalog callback get_instance")
            .target(id.to_owned())
            .message("the C ABI's catalog callbacks have no instance lookup (livemig does not need one)"))
    }

    async fn attachments(&self, volume_id: &str) -> Result<Vec<Attachment>> {
        let records = self
            .collect(
                "catalog callback list_attachments",
                self.caller.table.list_attachments,
                volume_id,
            )
            .await?;
        Ok(records.attachments)
    }

    async fn compare_and_swap(&self, cas: Cas) -> Result<()> {
        let op = "catalog callback compare_and_swap";
        let f = self
            .caller
            .table
            .compare_and_swap
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, op))?;
        let ud = self.caller.user_data;
        invoke(self.caller.serial.clone(), op, ErrorKind::Io, move || {
            let ud = ud;
            let change = OwnedChange::new(&cas);
            // SAFETY: checked non-null at construction; `change.raw` and
            // everything it points to live until after the call.
            let code = unsafe { f(ud.0, &change.raw) };
            (code, ())
        })
        .await
    }
}

/// Hypervisor hooks that are callbacks; used for every attachment.
#[derive(Clone)]
pub struct CallbackHypervisors {
    caller: CallerTable<livemig_hypervisor_callbacks>,
}

impl CallbackHypervisors {
    pub fn new(c: &livemig_hypervisor_callbacks, serial: Arc<Mutex<()>>) -> FfiResult<Self> {
        c.hold.ok_or_else(|| missing("hypervisor.hold"))?;
        c.resume.ok_or_else(|| missing("hypervisor.resume"))?;
        c.repoint.ok_or_else(|| missing("hypervisor.repoint"))?;
        let user_data = UserData(c.user_data);
        Ok(CallbackHypervisors {
            caller: CallerTable {
                table: *c,
                user_data,
                serial,
            },
        })
    }

    async fn attachment_call(
        &self,
        op: &'static str,
        f: Option<unsafe extern "C" fn(*mut c_void, *const livemig_attachment) -> i32>,
        attachment: &Attachment,
    ) -> Result<()> {
        let f = f.ok_or_else(|| Error::new(ErrorKind::InvalidInput, op))?;
        let ud = self.caller.user_data;
        let target = attachment_target(attachment);
        let attachment = attachment.clone();
        invoke(self.caller.serial.clone(), op, ErrorKind::Hypervisor, move || {
            let ud = ud;
            let mut arena = Arena::default();
            let a = arena.attachment(&attachment);
            // SAFETY: checked non-null at construction; `a` and its strings
            // live until after the call.
            (unsafe { f(ud.0, &a) }, ())
        })
        .await
        .map_err(|e| e.target(target))
    }
}

fn attachment_target(a: &Attachment) -> String {
    format!("instance {} volume {}", a.instance_id, a.volume_id)
}

impl HypervisorRegistry for CallbackHypervisors {
    fn for_attachment(&self, _attachment: &Attachment) -> Result<Arc<dyn Hypervisor>> {
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl Hypervisor for CallbackHypervisors {
    async fn hold(&self, attachment: &Attachment) -> Result<()> {
        self.attachment_call("hypervisor callback hold", self.caller.table.hold, attachment)
            .await
    }

    async fn resume(&self, attachment: &Attachment) -> Result<()> {
        self.attachment_call("hypervisor callback resume", self.caller.table.resume, attachment)
            .await
    }

    async fn repoint(&self, attachment: &Attachment, to: &Backing) -> Result<()> {
        let op = "hypervisor callback repoint";
        let f = self
            .caller
            .table
            .repoint
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, op))?;
        let ud = self.caller.user_data;
        let (attachment, to) = (attachment.clone(), to.clone());
        let target = attachment_target(&attachment);
        invoke(self.caller.serial.clone(), op, ErrorKind::Hypervisor, move || {
            let ud = ud;
            let mut arena = Arena::default();
            let a = arena.attachment(&attachment);
            let b = arena.backing(&to);
            // SAFETY: checked non-null at construction; `a`, `b` and their
            // strings live until after the call.
            (unsafe { f(ud.0, &a, &b) }, ())
        })
        .await
        .map_err(|e| e.target(target))
    }
}
