//! The migrator behind a `livemig_migrator` handle: its jobs, each
//! driven on livemig's threads, their progress and outcomes.

use super::*;

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
    pub(crate) _private: [u8; 0],
}

/// How one run (start or resume) of a job ended.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) code: i32,
    pub(crate) message: String,
    pub(crate) phase: String,
}

/// Where a job stands for `livemig_get_progress`.
pub(crate) enum Standing {
    /// This migrator drives it.
    Running(JobProgress),
    /// No run of it is going on here.
    Ended(Outcome),
}

/// A job driven in the background by a migrator.
pub(crate) struct Run {
    pub(crate) pause: CancellationToken,
    pub(crate) progress: watch::Receiver<JobProgress>,
    pub(crate) outcome: watch::Receiver<Option<Outcome>>,
}

pub(crate) struct MigratorState {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) catalog: Arc<dyn Catalog>,
    /// The local cluster and those added with `livemig_add_cluster`.
    pub(crate) clusters: Mutex<Clusters>,
    /// (name, conf path) of the added clusters, for the built-in hooks'
    /// re-points.
    pub(crate) cluster_confs: Mutex<Vec<(String, String)>>,
    pub(crate) store: JobStore,
    pub(crate) hypervisors: Option<Arc<dyn HypervisorRegistry>>,
    pub(crate) runs: Mutex<HashMap<String, Run>>,
}

pub(crate) static MIGRATORS: HandleTable<MigratorState> = HandleTable::new();

impl MigratorState {
    /// Runs `f` to completion on this migrator's runtime, from a caller's thread.
    pub(crate) fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> FfiResult<T> {
        not_in_callback()?;
        Ok(self.runtime.block_on(f))
    }

    /// The connected clusters, now.
    pub(crate) fn clusters(&self) -> Clusters {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn migrator(&self, options: MigrateOptions, pause: CancellationToken) -> Migrator {
        let m = Migrator::new(self.catalog.clone(), self.clusters(), self.store.clone(), options).pause_on(pause);
        match &self.hypervisors {
            Some(h) => m.hypervisors(h.clone()),
            None => {
                let cluster_confs = self.cluster_confs.lock().unwrap_or_else(|p| p.into_inner()).clone();
                m.hypervisors(Arc::new(BuiltinHypervisors { cluster_confs }))
            }
        }
    }

    /// Drives `job` in the background; the run's outcome is kept for
    /// `livemig_wait` and `livemig_progress`.
    pub(crate) fn spawn_run(self: &Arc<Self>, job: &str, options: MigrateOptions) -> FfiResult<()> {
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

    pub(crate) fn run_outcome(&self, job: &str) -> Option<(watch::Receiver<Option<Outcome>>, CancellationToken)> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(job).map(|r| (r.outcome.clone(), r.pause.clone()))
    }

    /// Waits up to `timeout` (forever if `None`) for `job`'s run to end.
    pub(crate) fn wait(&self, job: &str, timeout: Option<Duration>) -> FfiResult<Option<Outcome>> {
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

    pub(crate) fn pause_all_and_wait(&self) {
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

pub(crate) fn record_outcome(record: &JobRecord) -> Outcome {
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

pub(crate) fn migrator_arg(m: *const livemig_migrator) -> FfiResult<Arc<MigratorState>> {
    MIGRATORS.get(m as usize).ok_or_else(|| {
        FfiError::new(
            LIVEMIG_ERR_BAD_HANDLE,
            "the migrator handle is NULL, already freed, or not a migrator handle",
        )
    })
}

pub(crate) fn install_logging() {
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
