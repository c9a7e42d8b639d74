//! The exported functions of continuous sync: start one (driven in the
//! background like a started job), report how far behind its replica is,
//! cut over to the replica or stop; fail over to it when the volume's
//! cluster is lost, and sync back (resync) once it returns.

use livemig::job::SyncOptions;

use super::*;

/// Starts keeping a replica of attached volume `volume_id` at
/// `destination` (as `livemig_start` takes it; usually another cluster's,
/// `NAME:POOL[/IMAGE]`), a round of changes every `interval_ms`
/// milliseconds (0: 2000): records the job (before returning) and drives
/// it in the background until `livemig_sync_cutover` or `livemig_sync_stop`.
/// `*job_id` receives the job's id (caller frees it with
/// `livemig_string_free`). `options` may be NULL.
///
/// # Safety
/// As `livemig_start`.
#[no_mangle]
pub unsafe extern "C" fn livemig_sync_start(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    destination: *const c_char,
    options: *const livemig_run_options,
    interval_ms: u32,
    job_id: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: the caller's contract, passed on.
        let (volume_id, to, options) = unsafe { new_job_args(volume_id, destination, options, job_id) }?;
        let migrator = state.migrator(options.clone(), CancellationToken::new());
        let stored = state.block_on(migrator.create_sync(&volume_id, &to, sync_options(interval_ms)))??;
        // SAFETY: checked writable by new_job_args, under the caller's contract.
        unsafe { run_new_job(&state, &stored.record.id, options, job_id) }
    })
}

/// After a failover of `volume_id`: syncs it back to the copy the
/// failover replaced (restored, fenced, rolled back inside its cluster to
/// the point in time both hold), sending only what changed since, a round
/// every `interval_ms` (0: 2000); records the job (before returning) and
/// drives it in the background until `livemig_sync_cutover` (the
/// failback) or `livemig_sync_stop`. The replaced copy's cluster must be
/// added (`livemig_add_cluster`). `LIVEMIG_ERR_JOB_NOT_FOUND` if the
/// volume never failed over. `*job_id` as for `livemig_sync_start`.
///
/// # Safety
/// `volume_id` is a valid C string; `options` is NULL or valid; `job_id`
/// is writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_sync_resync(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    options: *const livemig_run_options,
    interval_ms: u32,
    job_id: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        if job_id.is_null() {
            return Err(FfiError::null("job_id"));
        }
        // SAFETY: caller's contract.
        let volume_id = unsafe { str_arg(volume_id, "volume_id") }?;
        // SAFETY: NULL or a valid options struct (caller's contract).
        let options = unsafe { livemig_run_options::read(options) }?;
        let migrator = state.migrator(options.clone(), CancellationToken::new());
        let stored = state.block_on(migrator.create_resync(&volume_id, sync_options(interval_ms)))??;
        // SAFETY: checked non-null above; writable by the caller's contract.
        unsafe { run_new_job(&state, &stored.record.id, options, job_id) }
    })
}

/// The volume's cluster is lost: makes the newest point in time the
/// replica of `volume_id` holds whole the volume (writes acknowledged
/// after it, at most the RPO, are lost), the sync's driver fenced out and
/// the catalog switched. Refused (`LIVEMIG_ERR_INVALID_STATE`) while the
/// volume's cluster answers within a few seconds, unless `force` is
/// nonzero (then recorded); `LIVEMIG_ERR_NOT_SYNCED` before the replica holds a point.
/// `*report_json` (if not NULL) receives the failover's report as JSON
/// (`at_ms`, `point_ms`, `point`, `forced`, `rolled_back`, `fenced`;
/// caller frees it with `livemig_string_free`). Once the lost cluster is
/// back, `livemig_resume` of the job retires the old copy.
///
/// # Safety
/// `volume_id` is a valid C string; `report_json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_sync_failover(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    force: i32,
    report_json: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let volume_id = unsafe { str_arg(volume_id, "volume_id") }?;
        let migrator = state.migrator(MigrateOptions::default(), CancellationToken::new());
        let record = state.block_on(migrator.failover_sync(&volume_id, force != 0))??;
        if !report_json.is_null() {
            let report = record.sync.and_then(|y| y.failover).unwrap_or_default();
            let text = serde_json::to_string(&report).unwrap_or_default();
            // SAFETY: non-null and writable by the caller's contract.
            unsafe { give_string(report_json, &text) };
        }
        Ok(())
    })
}

/// How far behind the replica of `volume_id` is, as JSON in `*json`
/// (caller frees it with `livemig_string_free`): `job`, `phase`, `rpo_ms`
/// (age of the newest point in time the replica holds whole; null until
/// the first copy is complete), `behind_bytes`, `rounds`, `last_round`,
/// `requested`, `last_error`. `LIVEMIG_ERR_JOB_NOT_FOUND` if it is not
/// being synced.
///
/// # Safety
/// `volume_id` is a valid C string; `json` is writable.
#[no_mangle]
pub unsafe extern "C" fn livemig_sync_status(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    json: *mut *mut c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let volume_id = unsafe { str_arg(volume_id, "volume_id") }?;
        if json.is_null() {
            return Err(FfiError::null("json"));
        }
        let migrator = state.migrator(MigrateOptions::default(), CancellationToken::new());
        let status = state.block_on(migrator.sync_status(&volume_id))??;
        let text = serde_json::to_string(&status).unwrap_or_default();
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { give_string(json, &text) };
        Ok(())
    })
}

/// Moves `volume_id` to its replica (one more round, then the fenced
/// cutover: nothing acknowledged is lost) and blocks until it is done, at
/// most `timeout_ms` for the sync's driver (in this migrator or another
/// process) to carry it out; with the driver gone, this call drives it.
/// `LIVEMIG_ERR_NOT_SYNCED` while the replica holds no whole point in time.
///
/// # Safety
/// `volume_id` is a valid C string.
#[no_mangle]
pub unsafe extern "C" fn livemig_sync_cutover(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    timeout_ms: u32,
) -> i32 {
    // SAFETY: the caller's contract, passed on.
    unsafe { carry_out(migrator, volume_id, timeout_ms, true) }
}

/// Stops syncing `volume_id` (the job rolls back: replica and snapshots
/// removed, the volume stays) and blocks until it has, as
/// `livemig_sync_cutover` does.
///
/// # Safety
/// `volume_id` is a valid C string.
#[no_mangle]
pub unsafe extern "C" fn livemig_sync_stop(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    timeout_ms: u32,
) -> i32 {
    // SAFETY: the caller's contract, passed on.
    unsafe { carry_out(migrator, volume_id, timeout_ms, false) }
}

/// A cutover (or a stop), then the end of this migrator's run of the job.
///
/// # Safety
/// `volume_id` is a valid C string.
unsafe fn carry_out(
    migrator: *const livemig_migrator,
    volume_id: *const c_char,
    timeout_ms: u32,
    cutover: bool,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract.
        let volume_id = unsafe { str_arg(volume_id, "volume_id") }?;
        let migrator = state.migrator(MigrateOptions::default(), CancellationToken::new());
        let wait = Duration::from_millis(timeout_ms.into());
        let record = state.block_on(async {
            match cutover {
                true => migrator.cutover_sync(&volume_id, wait).await,
                false => migrator.stop_sync(&volume_id, wait).await,
            }
        })??;
        // This migrator's own run of it (if any) ends with the job.
        state.wait(&record.id, Some(wait))?;
        match (&record.phase, cutover) {
            (Phase::Done, true) | (Phase::Aborted { .. }, false) => Ok(()),
            _ => {
                let outcome = record_outcome(&record);
                Err(FfiError::new(outcome.code, outcome.message))
            }
        }
    })
}

/// A round every `interval_ms` (0: the default).
fn sync_options(interval_ms: u32) -> SyncOptions {
    match interval_ms {
        0 => SyncOptions::default(),
        ms => SyncOptions {
            interval: Duration::from_millis(ms.into()),
        },
    }
}
