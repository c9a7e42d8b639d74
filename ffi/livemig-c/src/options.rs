//! What a caller configures: the connection and the run options, with
//! their constants.

use super::*;

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

/// `livemig_run_options.copy_mode`: the OSDs copy the data where both
/// images allow it (one cluster, one layout), the client otherwise.
pub const LIVEMIG_COPY_MODE_AUTO: i32 = 0;
/// `livemig_run_options.copy_mode`: the OSDs copy the data, or the copy
/// fails with `LIVEMIG_ERR_SERVER_COPY_UNAVAILABLE` saying why they cannot.
pub const LIVEMIG_COPY_MODE_SERVER: i32 = 1;
/// `livemig_run_options.copy_mode`: livemig reads and writes every byte.
pub const LIVEMIG_COPY_MODE_CLIENT: i32 = 2;

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
#[derive(Clone, Copy)]
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
    /// Who moves the bulk copy's bytes: `LIVEMIG_COPY_MODE_*`.
    pub copy_mode: i32,
    /// Live: a delta's changes covering at least this many thousandths of
    /// an object are applied by the OSDs copying the whole object; 0: the
    /// default (625); above 1000: never.
    pub whole_object_from_permille: u32,
    /// `livemig_start`: the pool for the new image's data objects
    /// (replicated, or erasure-coded with overwrites); NULL or "": the
    /// image's own pool. Read during the call only.
    pub data_pool: *const c_char,
    /// `livemig_start`: the storage location the volume declares once moved
    /// (its catalog record's `location`, rewritten in the switch); NULL or
    /// "": it keeps its own. Read during the call only.
    pub location: *const c_char,
}

impl Default for livemig_run_options {
    fn default() -> Self {
        livemig_run_options {
            struct_size: 0,
            engine: 0,
            bwlimit_bytes_per_sec: 0,
            in_flight_bytes: 0,
            cutover_bytes: 0,
            stall_rounds: 0,
            max_rounds: 0,
            on_stall: 0,
            fence_timeout_ms: 0,
            keep_source: 0,
            trash_delay_secs: 0,
            mirror_stall_ms: 0,
            delta_op_priority: 0,
            copy_mode: 0,
            whole_object_from_permille: 0,
            data_pool: std::ptr::null(),
            location: std::ptr::null(),
        }
    }
}

impl livemig_run_options {
    /// The location `options` gives (NULL options, or a caller's struct
    /// without the field: none).
    ///
    /// # Safety
    /// As [`livemig_run_options::read`].
    pub(crate) unsafe fn read_location(options: *const livemig_run_options) -> FfiResult<Option<String>> {
        if options.is_null() {
            return Ok(None);
        }
        // SAFETY: non-null; every caller's struct starts with `struct_size`.
        let declared = unsafe { std::ptr::addr_of!((*options).struct_size).read_unaligned() } as usize;
        let end = std::mem::offset_of!(livemig_run_options, location) + std::mem::size_of::<*const c_char>();
        if declared < end {
            return Ok(None);
        }
        // SAFETY: the caller declared the field readable; NULL or a valid C string.
        unsafe { opt_str_arg(std::ptr::addr_of!((*options).location).read_unaligned(), "location") }
    }

    /// The options behind `options` (NULL: the defaults), reading no more
    /// than the `struct_size` bytes the caller declared.
    ///
    /// # Safety
    /// `options` is NULL or points at `struct_size` readable bytes.
    pub(crate) unsafe fn read(options: *const livemig_run_options) -> FfiResult<MigrateOptions> {
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
        if !matches!(
            out.copy_mode,
            LIVEMIG_COPY_MODE_AUTO | LIVEMIG_COPY_MODE_SERVER | LIVEMIG_COPY_MODE_CLIENT
        ) {
            return Err(Error::new(ErrorKind::InvalidInput, "run options")
                .message(format!("copy_mode {} is not one of LIVEMIG_COPY_MODE_*", out.copy_mode))
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
        // SAFETY: NULL or a valid C string (the caller's contract).
        let data_pool = unsafe { opt_str_arg(out.data_pool, "data_pool") }?;
        let mut options = out.to_options();
        options.copy.data_pool = data_pool;
        Ok(options)
    }

    pub(crate) fn to_options(self) -> MigrateOptions {
        let defaults = MigrateOptions::default();
        let nonzero = |v: u64| (v != 0).then_some(v);
        let mut copy = defaults.copy.clone();
        copy.bandwidth_limit = nonzero(self.bwlimit_bytes_per_sec);
        if self.in_flight_bytes != 0 {
            copy.in_flight_bytes = self.in_flight_bytes;
        }
        if self.whole_object_from_permille != 0 {
            copy.whole_object_from = f64::from(self.whole_object_from_permille) / 1000.0;
        }
        copy.copy_mode = match self.copy_mode {
            LIVEMIG_COPY_MODE_SERVER => CopyMode::Server,
            LIVEMIG_COPY_MODE_CLIENT => CopyMode::Client,
            _ => CopyMode::Auto,
        };
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
