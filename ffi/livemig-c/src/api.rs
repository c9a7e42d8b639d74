//! The exported functions that connect, start, resume, wait for, pause,
//! abort and report migrations.

use super::*;

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
        // The built-in hooks re-point an instance back to this cluster with its conf.
        let conf_for_local = conf.clone().map(|c| (LOCAL_CLUSTER.to_owned(), c));
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
            clusters: Mutex::new(Clusters::local(cluster)),
            cluster_confs: Mutex::new(conf_for_local.into_iter().collect()),
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

/// Connects another cluster under `name`, so that destinations can name
/// it (`NAME:POOL[/IMAGE]`) and jobs that moved volumes to or from it can
/// be resumed; an instance the built-in hooks re-point there opens it with
/// `conf_path`. `client_id` and `keyring` may be NULL (`admin`, the
/// conf's). Adding a name again replaces it; `local` is the migrator's own.
///
/// # Safety
/// String arguments are NULL (where allowed) or valid C strings.
#[no_mangle]
pub unsafe extern "C" fn livemig_add_cluster(
    migrator: *const livemig_migrator,
    name: *const c_char,
    conf_path: *const c_char,
    client_id: *const c_char,
    keyring: *const c_char,
) -> i32 {
    boundary(|| {
        let state = migrator_arg(migrator)?;
        // SAFETY: caller's contract on string arguments.
        let (name, conf_path, client_id, keyring) = unsafe {
            (
                str_arg(name, "name")?,
                str_arg(conf_path, "conf_path")?,
                opt_str_arg(client_id, "client_id")?,
                opt_str_arg(keyring, "keyring")?,
            )
        };
        if name == LOCAL_CLUSTER || name.is_empty() || name.contains(':') {
            return Err(Error::new(ErrorKind::InvalidInput, "add cluster")
                .target(name.clone())
                .message(format!(
                    "`{name}` cannot name another cluster (`local` is the migrator's own; no colon, not empty)"
                ))
                .into());
        }
        let config = ClusterConfig {
            conf_path: Some(conf_path.clone().into()),
            client_id,
            keyring: keyring.map(Into::into),
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let cluster = state.block_on(Cluster::connect(config))??;
        let mut clusters = state.clusters.lock().unwrap_or_else(|p| p.into_inner());
        *clusters = clusters.clone().with(name.clone(), cluster);
        let mut confs = state.cluster_confs.lock().unwrap_or_else(|p| p.into_inner());
        confs.retain(|(n, _)| *n != name);
        confs.push((name, conf_path));
        Ok(())
    })
}

/// Checks whether `volume_id` can move to `destination` (`POOL`,
/// `POOL/IMAGE` or `POOL/NAMESPACE/IMAGE`, on another cluster added with
/// `livemig_add_cluster` as `NAME:POOL[/IMAGE]`) without changing anything.
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
        let to = Destination::parse_on_any_cluster(&destination)?;
        let report = state.block_on(precheck(state.catalog.as_ref(), &state.clusters(), &volume_id, &to))??;
        if !report_json.is_null() {
            let json = serde_json::to_string(&report).unwrap_or_default();
            // SAFETY: non-null and writable by the caller's contract.
            unsafe { give_string(report_json, &json) };
        }
        report.into_result()?;
        Ok(())
    })
}

/// Starts migrating `volume_id` to `destination` (as `livemig_precheck`
/// takes it; another cluster's as `NAME:POOL[/IMAGE]`): runs the precheck and
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
        // SAFETY: the caller's contract, passed on.
        let (volume_id, to, options) = unsafe { new_job_args(volume_id, destination, options, job_id) }?;
        let migrator = state.migrator(options.clone(), CancellationToken::new());
        let stored = state.block_on(migrator.create(&volume_id, &to))??;
        // SAFETY: checked writable by new_job_args, under the caller's contract.
        unsafe { run_new_job(&state, &stored.record.id, options, job_id) }
    })
}

/// The arguments of a new job (`livemig_start`, `livemig_sync_start`): the
/// volume, where it goes, how it runs.
///
/// # Safety
/// As `livemig_start`.
pub(crate) unsafe fn new_job_args(
    volume_id: *const c_char,
    destination: *const c_char,
    options: *const livemig_run_options,
    job_id: *mut *mut c_char,
) -> FfiResult<(String, Destination, MigrateOptions)> {
    if job_id.is_null() {
        return Err(FfiError::null("job_id"));
    }
    // SAFETY: caller's contract on string arguments.
    let (volume_id, destination) = unsafe { (str_arg(volume_id, "volume_id")?, str_arg(destination, "destination")?) };
    // SAFETY: NULL or a valid options struct (caller's contract).
    let (options, location) = unsafe {
        (
            livemig_run_options::read(options)?,
            livemig_run_options::read_location(options)?,
        )
    };
    let to = Destination::parse_on_any_cluster(&destination)?
        .with_data_pool(options.copy.data_pool.clone())
        .with_location(location);
    Ok((volume_id, to, options))
}

/// Drives new job `id` in the background and gives its id to the caller.
///
/// # Safety
/// `job_id` is non-null and writable.
pub(crate) unsafe fn run_new_job(
    state: &Arc<MigratorState>,
    id: &str,
    options: MigrateOptions,
    job_id: *mut *mut c_char,
) -> FfiResult<()> {
    state.spawn_run(id, options)?;
    // SAFETY: non-null and writable by the caller's contract.
    unsafe { give_string(job_id, id) };
    Ok(())
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
/// `"phase_name"` (as in `livemig_progress`), `"running"` (this migrator
/// drives it now) and, while it copies, `"copy"`: the copy's progress,
/// with `"method"` (`server_side` or `client`) and `"client_reason"`.
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
        // While this migrator drives it: the copy or round in progress
        // (bytes, rate, and who moves them: `method`).
        let copy = running
            .then(|| {
                let runs = state.runs.lock().unwrap_or_else(|p| p.into_inner());
                runs.get(&job).and_then(|r| r.progress.borrow().copy.clone())
            })
            .flatten();
        let encode_error =
            |e: serde_json::Error| FfiError::new(ErrorKind::Io.code(), format!("cannot encode the job record: {e}"));
        let mut value = serde_json::to_value(&stored.record).map_err(encode_error)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("running".into(), running.into());
            obj.insert("phase_name".into(), stored.record.phase.name().into());
            if let Some(copy) = copy {
                obj.insert("copy".into(), serde_json::to_value(copy).map_err(encode_error)?);
            }
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
