//! The library's one error type.
//!
//! A caller (the CLI, a control plane through the C ABI) needs three things
//! from an error: a stable kind to branch on and map to exit codes, what was
//! being done to what (operation, pool/image, offset), and the underlying
//! cause. [`Error`] carries all three; `Display` renders a sentence a person
//! can act on, ending with a hint for the kind.

use std::fmt;

/// Stable classification of an [`Error`]. New kinds may be added; existing
/// names (and their `snake_case` strings) never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The monitors could not be reached (cluster down, wrong address).
    ClusterUnreachable,
    /// The ceph.conf or keyring could not be read or is invalid.
    Config,
    /// The named pool does not exist.
    PoolNotFound,
    /// The named namespace does not exist in the pool.
    NamespaceNotFound,
    /// The named image does not exist.
    ImageNotFound,
    /// Source and destination name the same image.
    SameImage,
    /// The destination image already exists.
    DestinationExists,
    /// The destination is in use (open by another client, or another copy to it runs).
    DestinationInUse,
    /// The destination is smaller than what must be copied into it.
    DestinationTooSmall,
    /// An image spec or option is malformed.
    InvalidInput,
    /// The pool or cluster is out of space, or a quota was hit.
    NoSpace,
    /// The client lacks the capabilities for the operation.
    PermissionDenied,
    /// The object is busy (open, locked, has snapshots, being migrated).
    Busy,
    /// Another client holds the image's exclusive lock, or this client was fenced.
    Fenced,
    /// The operation was cancelled by the caller.
    Cancelled,
    /// The copy finished but the destination differs from the source.
    Mismatch,
    /// The volume is attached to more than one instance.
    AttachedTwice,
    /// Another migration already holds the volume.
    AlreadyMigrating,
    /// A job record was written by a newer livemig that this one cannot read.
    RecordTooNew,
    /// A job record cannot be decoded.
    CorruptRecord,
    /// The job is past the point where this operation applies (e.g. abort
    /// after the switch), or already finished.
    JobFinished,
    /// A record was changed by another process between read and write.
    Conflict,
    /// A catalog entry (volume, instance, attachment) does not exist.
    NotInCatalog,
    /// The catalog's state does not allow the operation (wrong status,
    /// attached twice, already migrating, ...).
    InvalidState,
    /// The writer changes the volume faster than the copy converges, and
    /// the live policy says to stop rather than cut over with a large delta.
    NotConverging,
    /// The instance's hypervisor hook failed or cannot be reached.
    Hypervisor,
    /// Any other I/O or librados/librbd failure.
    Io,
}

impl ErrorKind {
    /// The kind as its stable `snake_case` name (as in JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ClusterUnreachable => "cluster_unreachable",
            ErrorKind::Config => "config",
            ErrorKind::PoolNotFound => "pool_not_found",
            ErrorKind::NamespaceNotFound => "namespace_not_found",
            ErrorKind::ImageNotFound => "image_not_found",
            ErrorKind::SameImage => "same_image",
            ErrorKind::DestinationExists => "destination_exists",
            ErrorKind::DestinationInUse => "destination_in_use",
            ErrorKind::DestinationTooSmall => "destination_too_small",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Busy => "busy",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::AttachedTwice => "attached_twice",
            ErrorKind::AlreadyMigrating => "already_migrating",
            ErrorKind::RecordTooNew => "record_too_new",
            ErrorKind::CorruptRecord => "corrupt_record",
            ErrorKind::JobFinished => "job_finished",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotInCatalog => "not_in_catalog",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::NotConverging => "not_converging",
            ErrorKind::Hypervisor => "hypervisor",
            ErrorKind::Io => "io",
        }
    }

    /// What a person can do about an error of this kind.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::ClusterUnreachable => {
                "check that the cluster is up (`ceph -s`) and that --conf/CEPH_CONF names its ceph.conf"
            }
            ErrorKind::Config => "check the path given with --conf/--keyring (or CEPH_CONF) and its contents",
            ErrorKind::PoolNotFound => "list pools with `ceph osd pool ls`",
            ErrorKind::NamespaceNotFound => "list namespaces with `rbd namespace ls POOL`",
            ErrorKind::ImageNotFound => "list images with `rbd ls POOL`",
            ErrorKind::SameImage => "give a destination that differs from the source",
            ErrorKind::DestinationExists => {
                "choose another destination name, or remove the existing image if it is not needed"
            }
            ErrorKind::DestinationInUse => {
                "wait for the other client or copy to finish (`rbd status IMAGE` lists watchers)"
            }
            ErrorKind::DestinationTooSmall => "grow the destination or choose a larger one",
            ErrorKind::InvalidInput => "see `migrate --help` for the accepted forms",
            ErrorKind::NoSpace => "free space in the destination pool or raise its quota (`ceph df`)",
            ErrorKind::PermissionDenied => "use a client id/keyring with rbd caps on both pools",
            ErrorKind::Busy => "retry when the other operation on it has finished",
            ErrorKind::Fenced => "another client owns the image lock; stop it or wait",
            ErrorKind::Cancelled => "nothing to do: the operation was cancelled and cleaned up",
            ErrorKind::Mismatch => "the copy is not trustworthy; remove it and copy again",
            ErrorKind::AttachedTwice => "detach it from all instances but one first",
            ErrorKind::AlreadyMigrating => {
                "wait for that migration (`migrate status`) or abort it (`migrate abort JOB`)"
            }
            ErrorKind::RecordTooNew => "run this job with the newer livemig release that wrote it",
            ErrorKind::CorruptRecord => "inspect the record (`migrate status JOB --json`); nothing was changed",
            ErrorKind::JobFinished => "see `migrate status JOB`",
            ErrorKind::Conflict => "another process changed it meanwhile; look at the current state and retry",
            ErrorKind::NotInCatalog => "list what is registered with `migrate catalog list`",
            ErrorKind::InvalidState => "see `migrate catalog show` for the current statuses",
            ErrorKind::NotConverging => {
                "throttle the writer, raise --bwlimit or --cutover-bytes, or resume with --on-stall cutover"
            }
            ErrorKind::Hypervisor => "check that the instance is running and its control socket is reachable",
            ErrorKind::Io => "see the cause; the cluster logs (`ceph -s`, `ceph health detail`) may say more",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed operation: its kind, what was being done to what, and the cause.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    target: Option<String>,
    offset: Option<u64>,
    message: Option<String>,
    #[source]
    source: Option<std::io::Error>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` while doing `op`.
    pub fn new(kind: ErrorKind, op: &'static str) -> Self {
        Error {
            kind,
            op,
            target: None,
            offset: None,
            message: None,
            source: None,
        }
    }

    /// An error from a negative errno returned by librados/librbd while doing
    /// `op`; the kind follows the errno, refined by [`Error::kind_for`].
    pub fn from_errno(op: &'static str, ret: i32) -> Self {
        let errno = ret.unsigned_abs() as i32;
        let kind = match errno {
            libc::ENOENT => ErrorKind::ImageNotFound,
            libc::EEXIST => ErrorKind::DestinationExists,
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
            libc::EBUSY => ErrorKind::Busy,
            // EBLOCKLISTED is ESHUTDOWN on Linux.
            libc::EROFS | libc::ESHUTDOWN => ErrorKind::Fenced,
            libc::ECANCELED => ErrorKind::Cancelled,
            libc::ETIMEDOUT | libc::ENOTCONN | libc::ECONNREFUSED => ErrorKind::ClusterUnreachable,
            libc::EINVAL | libc::ERANGE => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        Error {
            source: Some(std::io::Error::from_raw_os_error(errno)),
            ..Error::new(kind, op)
        }
    }

    /// Sets the pool/image (or other object) the operation concerned.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the byte offset the operation concerned.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Adds a sentence saying what went wrong, in the caller's terms.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Replaces the kind (when the caller knows better than the errno, e.g.
    /// `ENOENT` from opening a pool means the pool is missing).
    pub fn kind_for(mut self, errno_kind: ErrorKind, kind: ErrorKind) -> Self {
        if self.kind == errno_kind {
            self.kind = kind;
        }
        self
    }

    /// Sets the kind unconditionally.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed, e.g. `rbd_open`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The pool/image the operation concerned, if known.
    pub fn target_name(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// The byte offset the operation concerned, if any.
    pub fn offset_value(&self) -> Option<u64> {
        self.offset
    }

    /// The errno behind the error, if it came from librados/librbd.
    pub fn errno(&self) -> Option<i32> {
        self.source.as_ref().and_then(|e| e.raw_os_error())
    }
}

impl Error {
    /// What went wrong, without the hint: for embedding one error's text
    /// in another's message (whose own hint then follows once).
    pub fn detail(&self) -> String {
        struct Detail<'a>(&'a Error);
        impl fmt::Display for Detail<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt_detail(f)
            }
        }
        Detail(self).to_string()
    }

    fn fmt_detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m}")?,
            None => write!(f, "{} failed", self.op)?,
        }
        if let Some(t) = &self.target {
            write!(f, " [{t}")?;
            if let Some(o) = self.offset {
                write!(f, " at offset {o}")?;
            }
            write!(f, "]")?;
        }
        if let Some(s) = &self.source {
            write!(f, " ({}: {s})", self.op)?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_detail(f)?;
        write!(f, "; {}", self.kind.hint())
    }
}
