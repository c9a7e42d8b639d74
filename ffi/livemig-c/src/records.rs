//! Catalog records as C structs, and their conversion to and from livemig's.
//!
//! Records going to C (arguments of callbacks) borrow strings that livemig
//! owns for the duration of the call: a callback copies what it keeps.
//! Records coming from C (through `livemig_records_add_*`) are copied by
//! livemig before the function returns.

use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex};

use livemig::catalog::{Access, Attachment, Backing, Cas, CasPurpose, Instance, Volume, VolumeStatus};
use livemig::spec::ImageSpec;

use crate::handles::HandleTable;
use crate::{boundary, opt_str_arg, str_arg, FfiError, FfiResult, LIVEMIG_ERR_BAD_HANDLE};
use livemig::ErrorKind;

/// `livemig_volume.status`: not attached, usable.
pub const LIVEMIG_VOLUME_AVAILABLE: i32 = 0;
/// Attached to an instance.
pub const LIVEMIG_VOLUME_IN_USE: i32 = 1;
/// Being detached; during a live migration, the source's status.
pub const LIVEMIG_VOLUME_DETACHING: i32 = 2;
/// Being attached.
pub const LIVEMIG_VOLUME_ATTACHING: i32 = 3;
/// Under maintenance; during a migration of a detached volume, its status.
pub const LIVEMIG_VOLUME_MAINTENANCE: i32 = 4;
/// Broken; needs a person.
pub const LIVEMIG_VOLUME_ERROR: i32 = 5;

/// `livemig_attachment.access_kind`: no channel to the instance.
pub const LIVEMIG_ACCESS_NONE: i32 = 0;
/// The instance's QEMU, through the QMP socket in `access_socket`.
pub const LIVEMIG_ACCESS_QMP: i32 = 1;
/// livemig's test instance, through the control socket in `access_socket`.
pub const LIVEMIG_ACCESS_TEST_INSTANCE: i32 = 2;

/// `livemig_change.purpose`: catalog administration, anything else.
pub const LIVEMIG_CHANGE_OTHER: i32 = 0;
/// A migration takes the volume (status and `migration` set).
pub const LIVEMIG_CHANGE_MARK: i32 = 1;
/// The commit point: the volume's backing becomes the destination.
pub const LIVEMIG_CHANGE_SWITCH: i32 = 2;
/// The instance now uses the destination: its attachment follows.
pub const LIVEMIG_CHANGE_CONNECT: i32 = 3;
/// The migration is done and releases the volume.
pub const LIVEMIG_CHANGE_RELEASE: i32 = 4;
/// An abort puts the volume back as it was.
pub const LIVEMIG_CHANGE_RESTORE: i32 = 5;

const STATUSES: [(i32, VolumeStatus); 6] = [
    (LIVEMIG_VOLUME_AVAILABLE, VolumeStatus::Available),
    (LIVEMIG_VOLUME_IN_USE, VolumeStatus::InUse),
    (LIVEMIG_VOLUME_DETACHING, VolumeStatus::Detaching),
    (LIVEMIG_VOLUME_ATTACHING, VolumeStatus::Attaching),
    (LIVEMIG_VOLUME_MAINTENANCE, VolumeStatus::Maintenance),
    (LIVEMIG_VOLUME_ERROR, VolumeStatus::Error),
];

/// Where data lives: a cluster (by the catalog's name for it; `local` is
/// the one livemig connected to) and an image in it.
#[repr(C)]
pub struct livemig_backing {
    pub cluster: *const c_char,
    pub pool: *const c_char,
    /// RADOS namespace; "" (or NULL) for the default.
    pub pool_namespace: *const c_char,
    pub image: *const c_char,
}

/// A volume record. Its id stays the same across a migration; its backing changes.
#[repr(C)]
pub struct livemig_volume {
    pub id: *const c_char,
    /// Provisioned size in bytes.
    pub size: u64,
    /// `LIVEMIG_VOLUME_*`.
    pub status: i32,
    /// The job holding the volume, NULL when none.
    pub migration: *const c_char,
    pub backing: livemig_backing,
    /// Declared location shown to users (e.g. a backend name); may be NULL.
    pub location: *const c_char,
}

/// An instance's use of a volume.
#[repr(C)]
pub struct livemig_attachment {
    pub volume_id: *const c_char,
    pub instance_id: *const c_char,
    /// Device name in the instance (e.g. `vdb`); may be NULL.
    pub device: *const c_char,
    /// `LIVEMIG_ACCESS_*`: how livemig (or the hypervisor callbacks) reach the instance.
    pub access_kind: i32,
    /// Socket path for QMP and test-instance access; NULL otherwise.
    pub access_socket: *const c_char,
    /// The image the instance has open (the volume's backing, except
    /// between a live switch and the re-point).
    pub connection: livemig_backing,
}

/// An instance record.
#[repr(C)]
pub struct livemig_instance {
    pub id: *const c_char,
    pub name: *const c_char,
}

/// A volume's complete list of attachments.
#[repr(C)]
pub struct livemig_attachment_list {
    pub volume_id: *const c_char,
    pub attachments: *const livemig_attachment,
    pub count: usize,
}

/// An attachment's key.
#[repr(C)]
pub struct livemig_attachment_key {
    pub volume_id: *const c_char,
    pub instance_id: *const c_char,
}

/// One atomic change of the catalog (compare-and-swap): if every
/// expectation holds, apply every put and remove, all in one transaction;
/// otherwise change nothing and return `LIVEMIG_ERR_CONFLICT`. Records are
/// compared field by field.
#[repr(C)]
pub struct livemig_change {
    /// `LIVEMIG_CHANGE_*`: why livemig makes this change.
    pub purpose: i32,
    /// Volumes that must currently equal these records exactly.
    pub expect_volumes: *const livemig_volume,
    pub expect_volumes_count: usize,
    /// Volume ids that must not exist.
    pub expect_no_volumes: *const *const c_char,
    pub expect_no_volumes_count: usize,
    /// For each listed volume, its attachments must be exactly these (any order).
    pub expect_attachments: *const livemig_attachment_list,
    pub expect_attachments_count: usize,
    /// Volumes to write (insert or replace by id).
    pub put_volumes: *const livemig_volume,
    pub put_volumes_count: usize,
    /// Volume ids to delete.
    pub remove_volumes: *const *const c_char,
    pub remove_volumes_count: usize,
    /// Attachments to write (insert or replace by volume and instance id).
    pub put_attachments: *const livemig_attachment,
    pub put_attachments_count: usize,
    /// Attachments to delete.
    pub remove_attachments: *const livemig_attachment_key,
    pub remove_attachments_count: usize,
    /// Instances to write (insert or replace by id).
    pub put_instances: *const livemig_instance,
    pub put_instances_count: usize,
}

/// Opaque collector a callback fills with `livemig_records_add_*`. Owned by
/// livemig and valid only until the callback returns (later use is
/// refused with `LIVEMIG_ERR_BAD_HANDLE`).
pub struct livemig_records {
    _private: [u8; 0],
}

/// What a callback handed over.
#[derive(Default)]
pub struct Records {
    pub volumes: Vec<Volume>,
    pub attachments: Vec<Attachment>,
}

pub static RECORDS: HandleTable<Mutex<Records>> = HandleTable::new();

/// Registers an empty collector for the duration of one callback.
pub struct RecordsGuard {
    pub token: usize,
    records: Arc<Mutex<Records>>,
}

impl RecordsGuard {
    pub fn new() -> Self {
        let records = Arc::new(Mutex::new(Records::default()));
        let token = RECORDS.insert(records.clone());
        RecordsGuard { token, records }
    }

    pub fn take(&self) -> Records {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for RecordsGuard {
    fn drop(&mut self) {
        RECORDS.remove(self.token);
    }
}

/// Strings livemig lends to C for one call.
#[derive(Default)]
pub struct Arena {
    strings: Vec<CString>,
}

impl Arena {
    pub fn str(&mut self, s: &str) -> *const c_char {
        let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
        // The CString's heap buffer does not move when the Vec grows.
        let p = c.as_ptr();
        self.strings.push(c);
        p
    }

    fn opt(&mut self, s: Option<&str>) -> *const c_char {
        s.map_or(std::ptr::null(), |s| self.str(s))
    }

    pub fn backing(&mut self, b: &Backing) -> livemig_backing {
        livemig_backing {
            cluster: self.str(&b.cluster),
            pool: self.str(&b.image.pool),
            pool_namespace: self.str(&b.image.namespace),
            image: self.str(&b.image.image),
        }
    }

    pub fn volume(&mut self, v: &Volume) -> livemig_volume {
        let status = STATUSES
            .iter()
            .find(|(_, s)| *s == v.status)
            .map_or(LIVEMIG_VOLUME_ERROR, |(c, _)| *c);
        livemig_volume {
            id: self.str(&v.id),
            size: v.size,
            status,
            migration: self.opt(v.migration.as_deref()),
            backing: self.backing(&v.backing),
            location: self.str(&v.location),
        }
    }

    pub fn attachment(&mut self, a: &Attachment) -> livemig_attachment {
        let (access_kind, socket) = match &a.access {
            Access::None => (LIVEMIG_ACCESS_NONE, None),
            Access::Qmp { socket } => (LIVEMIG_ACCESS_QMP, Some(socket.as_str())),
            Access::TestInstance { socket } => (LIVEMIG_ACCESS_TEST_INSTANCE, Some(socket.as_str())),
        };
        livemig_attachment {
            volume_id: self.str(&a.volume_id),
            instance_id: self.str(&a.instance_id),
            device: self.str(&a.device),
            access_kind,
            access_socket: self.opt(socket),
            connection: self.backing(&a.connection),
        }
    }

    fn instance(&mut self, i: &Instance) -> livemig_instance {
        livemig_instance {
            id: self.str(&i.id),
            name: self.str(&i.name),
        }
    }
}

/// A [`Cas`] laid out for C; `raw` points into the other fields.
pub struct OwnedChange {
    _arena: Arena,
    _volumes: [Vec<livemig_volume>; 2],
    _ids: [Vec<*const c_char>; 2],
    _lists: Vec<livemig_attachment_list>,
    _list_items: Vec<Vec<livemig_attachment>>,
    _put_attachments: Vec<livemig_attachment>,
    _keys: Vec<livemig_attachment_key>,
    _instances: Vec<livemig_instance>,
    pub raw: livemig_change,
}

impl OwnedChange {
    pub fn new(cas: &Cas) -> Self {
        let mut a = Arena::default();
        let expect_volumes: Vec<_> = cas.expect_volumes.iter().map(|v| a.volume(v)).collect();
        let put_volumes: Vec<_> = cas.put_volumes.iter().map(|v| a.volume(v)).collect();
        let expect_no: Vec<_> = cas.expect_no_volumes.iter().map(|id| a.str(id)).collect();
        let remove: Vec<_> = cas.remove_volumes.iter().map(|id| a.str(id)).collect();
        let list_items: Vec<Vec<_>> = cas
            .expect_attachments
            .iter()
            .map(|(_, list)| list.iter().map(|x| a.attachment(x)).collect())
            .collect();
        let lists: Vec<_> = cas
            .expect_attachments
            .iter()
            .zip(&list_items)
            .map(|((volume_id, _), items)| livemig_attachment_list {
                volume_id: a.str(volume_id),
                attachments: items.as_ptr(),
                count: items.len(),
            })
            .collect();
        let put_attachments: Vec<_> = cas.put_attachments.iter().map(|x| a.attachment(x)).collect();
        let keys: Vec<_> = cas
            .remove_attachments
            .iter()
            .map(|(v, i)| livemig_attachment_key {
                volume_id: a.str(v),
                instance_id: a.str(i),
            })
            .collect();
        let instances: Vec<_> = cas.put_instances.iter().map(|i| a.instance(i)).collect();
        let raw = livemig_change {
            purpose: match cas.purpose {
                CasPurpose::Mark => LIVEMIG_CHANGE_MARK,
                CasPurpose::Switch => LIVEMIG_CHANGE_SWITCH,
                CasPurpose::Connect => LIVEMIG_CHANGE_CONNECT,
                CasPurpose::Release => LIVEMIG_CHANGE_RELEASE,
                CasPurpose::Restore => LIVEMIG_CHANGE_RESTORE,
                CasPurpose::Other => LIVEMIG_CHANGE_OTHER,
            },
            expect_volumes: expect_volumes.as_ptr(),
            expect_volumes_count: expect_volumes.len(),
            expect_no_volumes: expect_no.as_ptr(),
            expect_no_volumes_count: expect_no.len(),
            expect_attachments: lists.as_ptr(),
            expect_attachments_count: lists.len(),
            put_volumes: put_volumes.as_ptr(),
            put_volumes_count: put_volumes.len(),
            remove_volumes: remove.as_ptr(),
            remove_volumes_count: remove.len(),
            put_attachments: put_attachments.as_ptr(),
            put_attachments_count: put_attachments.len(),
            remove_attachments: keys.as_ptr(),
            remove_attachments_count: keys.len(),
            put_instances: instances.as_ptr(),
            put_instances_count: instances.len(),
        };
        OwnedChange {
            _arena: a,
            _volumes: [expect_volumes, put_volumes],
            _ids: [expect_no, remove],
            _lists: lists,
            _list_items: list_items,
            _put_attachments: put_attachments,
            _keys: keys,
            _instances: instances,
            raw,
        }
    }
}

/// # Safety
/// The strings in `b` are NULL or valid C strings.
unsafe fn backing_from_c(b: &livemig_backing, what: &str) -> FfiResult<Backing> {
    // SAFETY: forwarded contract.
    unsafe {
        Ok(Backing {
            cluster: opt_str_arg(b.cluster, what)?.unwrap_or_else(|| "local".into()),
            image: ImageSpec {
                pool: str_arg(b.pool, "backing.pool")?,
                namespace: opt_str_arg(b.pool_namespace, "backing.pool_namespace")?.unwrap_or_default(),
                image: str_arg(b.image, "backing.image")?,
            },
        })
    }
}

/// # Safety
/// The strings in `v` are NULL or valid C strings.
pub unsafe fn volume_from_c(v: &livemig_volume) -> FfiResult<Volume> {
    let status = STATUSES
        .iter()
        .find(|(c, _)| *c == v.status)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            FfiError::new(
                ErrorKind::InvalidInput.code(),
                format!("volume status {} is not one of LIVEMIG_VOLUME_*", v.status),
            )
        })?;
    // SAFETY: forwarded contract.
    unsafe {
        Ok(Volume {
            id: str_arg(v.id, "volume.id")?,
            size: v.size,
            status,
            migration: opt_str_arg(v.migration, "volume.migration")?,
            backing: backing_from_c(&v.backing, "volume.backing.cluster")?,
            location: opt_str_arg(v.location, "volume.location")?.unwrap_or_default(),
        })
    }
}

/// # Safety
/// The strings in `a` are NULL or valid C strings.
pub unsafe fn attachment_from_c(a: &livemig_attachment) -> FfiResult<Attachment> {
    // SAFETY: forwarded contract.
    unsafe {
        let socket = || -> FfiResult<String> { str_arg(a.access_socket, "attachment.access_socket") };
        let access = match a.access_kind {
            LIVEMIG_ACCESS_NONE => Access::None,
            LIVEMIG_ACCESS_QMP => Access::Qmp { socket: socket()? },
            LIVEMIG_ACCESS_TEST_INSTANCE => Access::TestInstance { socket: socket()? },
            other => {
                return Err(FfiError::new(
                    ErrorKind::InvalidInput.code(),
                    format!("attachment access kind {other} is not one of LIVEMIG_ACCESS_*"),
                ))
            }
        };
        Ok(Attachment {
            volume_id: str_arg(a.volume_id, "attachment.volume_id")?,
            instance_id: str_arg(a.instance_id, "attachment.instance_id")?,
            device: opt_str_arg(a.device, "attachment.device")?.unwrap_or_default(),
            access,
            connection: backing_from_c(&a.connection, "attachment.connection.cluster")?,
        })
    }
}

fn records_arg(records: *mut livemig_records) -> FfiResult<Arc<Mutex<Records>>> {
    RECORDS.get(records as usize).ok_or_else(|| {
        FfiError::new(
            LIVEMIG_ERR_BAD_HANDLE,
            "the records handle is NULL, not a records handle, or used after its callback returned",
        )
    })
}

/// Adds a volume to what a `get_volume` or `list_volumes` callback returns.
/// The record is copied; its strings need only live for this call.
///
/// # Safety
/// `volume` is NULL or points to a record whose strings are NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn livemig_records_add_volume(
    records: *mut livemig_records,
    volume: *const livemig_volume,
) -> i32 {
    boundary(|| {
        let target = records_arg(records)?;
        // SAFETY: NULL or a valid record (caller's contract).
        let v = unsafe { volume.as_ref() }.ok_or_else(|| FfiError::null("volume"))?;
        // SAFETY: as above.
        let v = unsafe { volume_from_c(v) }?;
        target.lock().unwrap_or_else(|p| p.into_inner()).volumes.push(v);
        Ok(())
    })
}

/// Adds an attachment to what a `list_attachments` callback returns.
/// The record is copied; its strings need only live for this call.
///
/// # Safety
/// `attachment` is NULL or points to a record whose strings are NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn livemig_records_add_attachment(
    records: *mut livemig_records,
    attachment: *const livemig_attachment,
) -> i32 {
    boundary(|| {
        let target = records_arg(records)?;
        // SAFETY: NULL or a valid record (caller's contract).
        let a = unsafe { attachment.as_ref() }.ok_or_else(|| FfiError::null("attachment"))?;
        // SAFETY: as above.
        let a = unsafe { attachment_from_c(a) }?;
        target.lock().unwrap_or_else(|p| p.into_inner()).attachments.push(a);
        Ok(())
    })
}
