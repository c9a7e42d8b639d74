//! The library's one error type.
//!
//! A caller (the CLI, a control plane through the C ABI) needs three things
//! from an error: a stable kind to branch on and map to exit codes, what was
//! being done to what (operation, pool/image, offset), and the underlying
//! cause. [`Error`] carries all three; `Display` renders a sentence a person
//! can act on, ending with a hint for the kind.

use std::fmt;

/// The table every error kind is defined by: its variant, stable numeric
/// code (the C ABI's `LIVEMIG_ERR_*`), stable `snake_case` name (JSON, the
/// C ABI's `livemig_code_name`, Python's exceptions), the exit status a
/// command-line tool reports, and a hint in the library's terms. Everything
/// else (the C header's defines, the CLI's exit codes, the serde names) is
/// derived from it; a code or a name is never written anywhere else.
macro_rules! error_kinds {
    ($(
        $(#[doc = $doc:literal])+
        $kind:ident = $code:literal, $name:literal, exit $exit:literal, $hint:literal;
    )+) => {
        /// Stable classification of an [`Error`]. New kinds may be added;
        /// existing names and codes never change meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $(
                $(#[doc = $doc])+
                #[serde(rename = $name)]
                $kind,
            )+
        }

        impl ErrorKind {
            /// Every kind, in code order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),+];

            /// The kind as its stable `snake_case` name (as in JSON output).
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorKind::$kind => $name,)+ }
            }

            /// The stable numeric code (the C ABI's `LIVEMIG_ERR_*`).
            pub fn code(self) -> i32 {
                match self { $(ErrorKind::$kind => $code,)+ }
            }

            /// The exit status a command-line tool reports for this kind.
            pub fn exit_status(self) -> u8 {
                match self { $(ErrorKind::$kind => $exit,)+ }
            }

            /// What a person can do about an error of this kind.
            pub fn hint(self) -> &'static str {
                match self { $(ErrorKind::$kind => $hint,)+ }
            }

            /// The kind's documentation (one sentence).
            pub fn doc(self) -> &'static str {
                match self { $(ErrorKind::$kind => concat!($($doc),+),)+ }
            }

            /// The kind with this code.
            pub fn from_code(code: i32) -> Option<ErrorKind> {
                match code { $($code => Some(ErrorKind::$kind),)+ _ => None }
            }

            /// The kind with this name.
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                match name { $($name => Some(ErrorKind::$kind),)+ _ => None }
            }
        }
    };
}

// Exit statuses: 1 other, 3 not found, 4 refused input or state, 5 busy or
// in use, 6 cluster or credentials, 7 space, 130 cancelled (as by Ctrl-C).
error_kinds! {
    /// The monitors could not be reached (cluster down, wrong address).
    ClusterUnreachable = 1, "cluster_unreachable", exit 6,
        "check that the cluster is up (`ceph -s`) and that the configuration names its ceph.conf";
    /// The ceph.conf or keyring could not be read or is invalid.
    Config = 2, "config", exit 6,
        "check the ceph.conf and keyring paths given and their contents";
    /// The named pool does not exist.
    PoolNotFound = 3, "pool_not_found", exit 3, "list pools with `ceph osd pool ls`";
    /// The named namespace does not exist in the pool.
    NamespaceNotFound = 4, "namespace_not_found", exit 3, "list namespaces with `rbd namespace ls POOL`";
    /// The named image does not exist.
    ImageNotFound = 5, "image_not_found", exit 3, "list images with `rbd ls POOL`";
    /// Source and destination name the same image.
    SameImage = 6, "same_image", exit 4, "give a destination that differs from the source";
    /// The destination image already exists.
    DestinationExists = 7, "destination_exists", exit 5,
        "choose another destination name, or remove the existing image if it is not needed";
    /// The destination is in use (open by another client, or another copy to it runs).
    DestinationInUse = 8, "destination_in_use", exit 5,
        "wait for the other client or copy to finish (`rbd status IMAGE` lists watchers)";
    /// The destination is smaller than what must be copied into it.
    DestinationTooSmall = 9, "destination_too_small", exit 7, "grow the destination or choose a larger one";
    /// An argument, image spec or option is malformed.
    InvalidInput = 10, "invalid_input", exit 4, "correct the argument the message names";
    /// The pool or cluster is out of space, or a quota was hit.
    NoSpace = 11, "no_space", exit 7, "free space in the destination pool or raise its quota (`ceph df`)";
    /// The client lacks the capabilities for the operation.
    PermissionDenied = 12, "permission_denied", exit 6, "use a client id and keyring with rbd caps on both pools";
    /// The object is busy (open, locked, has snapshots, being migrated).
    Busy = 13, "busy", exit 5, "retry when the other operation on it has finished";
    /// Another client holds the image's exclusive lock, or this client was fenced.
    Fenced = 14, "fenced", exit 5, "another client owns the image lock; stop it or wait";
    /// The operation was cancelled by the caller (a paused job can be resumed).
    Cancelled = 15, "cancelled", exit 130, "nothing is lost: the operation was cancelled and can be resumed or rolled back";
    /// The copy finished but the destination differs from the source.
    Mismatch = 16, "mismatch", exit 4, "the copy is not trustworthy; remove it and copy again";
    /// The volume is attached to more than one instance.
    AttachedTwice = 17, "attached_twice", exit 4, "detach it from all instances but one first";
    /// Another migration already holds the volume.
    AlreadyMigrating = 18, "already_migrating", exit 5,
        "wait for that migration to finish, or abort it";
    /// A job record was written by a newer livemig that this one cannot read.
    RecordTooNew = 19, "record_too_new", exit 4, "run this job with the newer livemig release that wrote it";
    /// A job record cannot be decoded.
    CorruptRecord = 20, "corrupt_record", exit 4, "inspect the job's record; nothing was changed";
    /// The job is past the point where this operation applies (e.g. abort
    /// after the switch), or already finished.
    JobFinished = 21, "job_finished", exit 4, "look at the job's status";
    /// A record was changed by another process between read and write.
    Conflict = 22, "conflict", exit 5, "another process changed it meanwhile; look at the current state and retry";
    /// A catalog entry (volume, instance, attachment) does not exist.
    NotInCatalog = 23, "not_in_catalog", exit 3, "list what the catalog holds";
    /// The catalog's state does not allow the operation (wrong status,
    /// attached twice, already migrating, ...).
    InvalidState = 24, "invalid_state", exit 4, "look at the volume's current status in the catalog";
    /// The writer changes the volume faster than the copy converges, and
    /// the live policy says to stop rather than cut over with a large delta.
    NotConverging = 25, "not_converging", exit 1,
        "throttle the writer, raise the bandwidth limit or the cutover size, or resume with the cut-over-on-stall policy";
    /// The instance's hypervisor hook failed or cannot be reached.
    Hypervisor = 26, "hypervisor", exit 1, "check that the instance is running and its control socket is reachable";
    /// Any other I/O or librados/librbd failure.
    Io = 27, "io", exit 1, "see the cause; the cluster logs (`ceph -s`, `ceph health detail`) may say more";
    /// No job has this id.
    JobNotFound = 28, "job_not_found", exit 3, "list the jobs to find its id";
    /// The OSDs cannot copy this volume's data (server-side copy was asked
    /// for; the message says why).
    ServerCopyUnavailable = 29, "server_copy_unavailable", exit 4,
        "use the automatic or the client copy mode";
    /// A sync's replica holds no whole point in time yet (its first copy
    /// has not completed), so it cannot take over.
    NotSynced = 30, "not_synced", exit 4,
        "wait until the sync's status reports the replica's first point in time, then retry";
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
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
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
        Error::new(kind, op).cause(std::io::Error::from_raw_os_error(errno))
    }

    /// Keeps `cause` as this error's [`source`](std::error::Error::source).
    pub fn cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(cause));
        self
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
        self.source
            .as_ref()
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .and_then(|e| e.raw_os_error())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let codes: HashSet<i32> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        let names: HashSet<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            // Codes are dense from 1: the C ABI reserves 100 and up for its own.
            assert_eq!(kind.code(), i as i32 + 1);
            assert_eq!(ErrorKind::from_code(kind.code()), Some(*kind));
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(*kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(
                serde_json::from_value::<ErrorKind>(kind.as_str().into()).unwrap(),
                *kind
            );
            assert!(!kind.doc().is_empty() && !kind.hint().is_empty());
        }
        assert_eq!(ErrorKind::from_code(0), None);
    }

    #[test]
    fn hints_speak_the_library_s_terms() {
        for kind in ErrorKind::ALL {
            let hint = kind.hint();
            assert!(!hint.contains("--") && !hint.contains("migrate "), "{kind}: {hint}");
        }
    }

    #[test]
    fn the_cause_is_kept_as_source() {
        let e = Error::from_errno("rbd_open", -libc::ENOENT);
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let parse = serde_json::from_str::<u32>("x").unwrap_err();
        let e = Error::new(ErrorKind::CorruptRecord, "decode").cause(parse);
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        assert_eq!(e.errno(), None);
    }
}
