//! `migrate start | status | list | resume | abort` and `verify VOLUME`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use livemig::catalog::{Catalog, RadosCatalog};
use livemig::ceph::Cluster;
use livemig::hypervisor::BuiltinHypervisors;
use livemig::job::{
    JobProgress, JobRecord, JobStore, LivePolicyPatch, MigrateOptions, Migrator, OnStall, Phase, RetirePolicy,
};
use livemig::mirror::{compare_images, CopyOptions, WHOLE_OBJECT_FROM};
use livemig::precheck::{Clusters, Destination, LOCAL_CLUSTER};
use livemig::{Error, ErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{human_bytes, parse_size, CopyModeChoice};

/// How a job runs (for start and resume).
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Most data in flight at once, e.g. 128M; bounds memory use.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    in_flight: u64,
    /// Limit the copy to this many bytes per second, e.g. 200M.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    bwlimit: Option<u64>,
    /// Who copies the data: the OSDs where they can (auto), only the OSDs
    /// (server), or livemig itself (client).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CopyModeChoice::Auto)]
    copy_mode: CopyModeChoice,
    /// Live: a delta's changes covering at least this fraction of an object
    /// (e.g. 0.5) are applied by the OSDs copying the whole object instead
    /// of through livemig (where the copy mode allows); above 1: never.
    #[arg(long, value_name = "FRACTION")]
    whole_object_from: Option<f64>,
    /// Seconds the job's lease lasts; another process can resume a job this
    /// long after its driver died.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Keep the source image after the switch instead of moving it to the trash.
    #[arg(long)]
    keep_source: bool,
    /// Seconds the retired source stays in the RBD trash before it may be purged.
    #[arg(long, value_name = "SECS", default_value_t = 24 * 3600)]
    trash_delay: u64,
    /// Do not show progress.
    #[arg(long)]
    no_progress: bool,
    /// Live (attached volume): cut over once a replay round changes at most
    /// this much, e.g. 8M [default: 8M; on resume: as recorded].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cutover_bytes: Option<u64>,
    /// Live: rounds without a smaller delta before the copy counts as not
    /// converging [default: 3].
    #[arg(long, value_name = "N")]
    stall_rounds: Option<u32>,
    /// Live: replay rounds at most before the copy counts as not converging [default: 20].
    #[arg(long, value_name = "N")]
    max_rounds: Option<u32>,
    /// Live: when the copy does not converge, `cutover` holds the instance
    /// anyway (a longer pause), `pause` stops the job (resumable) without
    /// holding it [default: cutover].
    #[arg(long, value_name = "WHAT", value_enum)]
    on_stall: Option<OnStallChoice>,
    /// Live: seconds the source's lock owner has to hand the lock over before
    /// it is broken and blocklisted [default: 20].
    #[arg(long, value_name = "SECS")]
    fence_timeout: Option<u64>,
    /// Live: OSD priority of the replay rounds' and final delta's I/O (0:
    /// Ceph's client default, 63). From 196 the OSDs serve it before the
    /// instance's I/O: rounds end sooner and the hold is shorter, the
    /// instance's write latency rises while a round runs [default: 200].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=255))]
    delta_priority: Option<u32>,
    /// QEMU engine: seconds without progress before the mirror is switched
    /// to write-blocking (guest writes then wait for their copy, so it converges).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    mirror_stall_secs: u64,
}

/// `--on-stall`: the library's [`OnStall`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStallChoice {
    /// Hold the instance anyway (a longer pause).
    Cutover,
    /// Stop the job (resumable) without holding it.
    Pause,
}

impl From<OnStallChoice> for OnStall {
    fn from(choice: OnStallChoice) -> OnStall {
        match choice {
            OnStallChoice::Cutover => OnStall::Cutover,
            OnStallChoice::Pause => OnStall::Pause,
        }
    }
}

impl RunArgs {
    /// Settings for an abort (only the lease matters).
    pub fn for_abort(lease_secs: u64) -> Self {
        RunArgs {
            in_flight: 128 << 20,
            bwlimit: None,
            copy_mode: CopyModeChoice::Auto,
            whole_object_from: None,
            lease_secs,
            keep_source: false,
            trash_delay: 0,
            no_progress: true,
            cutover_bytes: None,
            stall_rounds: None,
            max_rounds: None,
            on_stall: None,
            fence_timeout: None,
            delta_priority: None,
            mirror_stall_secs: 10,
        }
    }

    pub fn no_progress_flag(&self) -> bool {
        self.no_progress
    }

    fn options(&self) -> MigrateOptions {
        MigrateOptions {
            copy: CopyOptions {
                in_flight_bytes: self.in_flight,
                bandwidth_limit: self.bwlimit,
                copy_mode: self.copy_mode.mode(),
                whole_object_from: self.whole_object_from.unwrap_or(WHOLE_OBJECT_FROM),
                ..Default::default()
            },
            lease: Duration::from_secs(self.lease_secs.max(1)),
            policy: if self.keep_source {
                RetirePolicy::Keep
            } else {
                RetirePolicy::Trash {
                    delay_secs: self.trash_delay,
                }
            },
            live: LivePolicyPatch {
                cutover_bytes: self.cutover_bytes,
                stall_rounds: self.stall_rounds,
                max_rounds: self.max_rounds,
                on_stall: self.on_stall.map(OnStall::from),
                fence_timeout_ms: self.fence_timeout.map(|s| s.saturating_mul(1000)),
                delta_op_priority: self.delta_priority,
            },
            qemu_stall_ms: self.mirror_stall_secs.saturating_mul(1000),
            ..Default::default()
        }
    }
}

pub async fn migrator(
    catalog: &RadosCatalog,
    clusters: Clusters,
    local_conf: Option<&std::path::Path>,
    store: JobStore,
    run: &RunArgs,
    pause: CancellationToken,
) -> Result<Migrator, Error> {
    // An instance re-pointed to another cluster opens it with the conf the
    // catalog registers for it (and the local one with ours).
    let mut cluster_confs: Vec<(String, String)> = catalog
        .clusters()
        .await?
        .into_iter()
        .map(|c| (c.name, c.conf_path))
        .collect();
    let local_conf = local_conf
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("CEPH_CONF").map(Into::into));
    if let Some(conf) = local_conf {
        cluster_confs.push((LOCAL_CLUSTER.to_owned(), conf.display().to_string()));
    }
    Ok(Migrator::new(Arc::new(catalog.clone()), clusters, store, run.options())
        .hypervisors(Arc::new(BuiltinHypervisors { cluster_confs }))
        .pause_on(pause))
}

/// The local cluster and the registered clusters job `id`'s source and
/// destination name, connected (only the local one for a job id no job has:
/// the migrator says so).
pub async fn clusters_of_job(
    catalog: &RadosCatalog,
    cluster: &Cluster,
    store: &JobStore,
    id: &str,
    timeout: u64,
) -> Result<Clusters, Error> {
    let local = Clusters::local(cluster.clone());
    let record = match store.load(id).await {
        Ok(stored) => stored.record,
        Err(e) if matches!(e.kind(), ErrorKind::JobNotFound | ErrorKind::InvalidInput) => return Ok(local),
        Err(e) => return Err(e),
    };
    let names = [record.source.cluster.as_str(), record.destination.cluster.as_str()];
    local
        .with_registered(catalog, &names, Duration::from_secs(timeout))
        .await
}

/// Renders job progress until the sender goes away.
async fn show(mut rx: watch::Receiver<JobProgress>, json: bool, quiet: bool) {
    let bar = (!json && !quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>9} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut last_line = std::time::Instant::now() - Duration::from_secs(10);
    let mut last_phase = String::new();
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        let phase = match p.round {
            Some(round) => format!("{} round {round}", p.phase),
            None => p.phase.to_string(),
        };
        if let Some(bar) = &bar {
            bar.set_message(phase);
            if let Some(c) = &p.copy {
                bar.set_length(c.total_bytes);
                bar.set_position(c.done_bytes);
            }
            continue;
        }
        if quiet {
            continue;
        }
        let phase_changed = phase != last_phase;
        if !phase_changed && last_line.elapsed() < Duration::from_secs(2) {
            continue;
        }
        last_phase = phase.clone();
        last_line = std::time::Instant::now();
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "progress", "job": p.job, "phase": phase, "round": p.round, "copy": p.copy})
            );
        } else {
            match &p.copy {
                Some(c) if c.total_bytes > 0 => eprintln!(
                    "job {}: {} {} / {} ({:.0}%), {}/s, ETA {}s",
                    p.job,
                    phase,
                    human_bytes(c.done_bytes as f64),
                    human_bytes(c.total_bytes as f64),
                    100.0 * c.done_bytes as f64 / c.total_bytes as f64,
                    human_bytes(c.rate()),
                    c.eta().map_or(0, |d| d.as_secs())
                ),
                _ => eprintln!("job {}: {}", p.job, phase),
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn summary(r: &JobRecord) -> serde_json::Value {
    serde_json::json!({"event": "done", "job": r})
}

pub async fn drive(m: &Migrator, id: &str, json: bool, quiet: bool, abort: Option<&str>) -> Result<JobRecord, Error> {
    let shower = tokio::spawn(show(m.subscribe(), json, quiet));
    let result = match abort {
        Some(reason) => m.abort(id, reason).await,
        None => m.resume(id).await,
    };
    shower.abort();
    result
}

pub async fn start(
    m: Migrator,
    volume: &str,
    destination: &Destination,
    json: bool,
    quiet: bool,
) -> Result<serde_json::Value, Error> {
    let created = m.create(volume, destination).await?;
    let r = &created.record;
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "job", "job": r.id, "volume": r.volume_id, "source": r.source, "destination": r.destination})
        );
    } else {
        println!(
            "job {}: moving volume {} from {} to {}",
            r.id, r.volume_id, r.source, r.destination
        );
        if let Some(live) = &r.live {
            if r.is_qemu() {
                println!(
                    "job {}: live: instance {}'s QEMU mirrors the volume and pivots without a pause",
                    r.id, live.attachment.instance_id
                );
            } else {
                println!(
                    "job {}: live: instance {} keeps writing; it is held only for the final delta",
                    r.id, live.attachment.instance_id
                );
            }
        }
    }
    let id = r.id.clone();
    let done = drive(&m, &id, json, quiet, None).await?;
    rolled_back_is_an_error(&done)?;
    if !json {
        println!(
            "job {id}: done; volume {} now on {}{}",
            done.volume_id,
            done.destination,
            live_summary(&done)
        );
    }
    Ok(summary(&done))
}

/// A job that rolled itself back (the catalog refused the switch, QEMU's
/// mirror failed) did not do what was asked: that is a failure.
pub fn rolled_back_is_an_error(r: &JobRecord) -> Result<(), Error> {
    match &r.phase {
        Phase::Aborted { reason } => {
            let kind = if r.is_qemu() {
                ErrorKind::Hypervisor
            } else {
                ErrorKind::Conflict
            };
            Err(Error::new(kind, "migration").target(r.id.clone()).message(format!(
                "job `{}` rolled back; volume `{}` stays on {}: {reason}",
                r.id, r.volume_id, r.source
            )))
        }
        _ => Ok(()),
    }
}

/// Drives (or aborts) a job, retrying for up to `wait_secs` while another
/// process still holds its lease.
async fn drive_when_free(
    m: &Migrator,
    id: &str,
    json: bool,
    quiet: bool,
    abort: Option<&str>,
    wait_secs: u64,
) -> Result<JobRecord, Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    loop {
        match drive(m, id, json, quiet, abort).await {
            Err(e) if e.kind() == ErrorKind::Busy && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

pub async fn resume(
    m: Migrator,
    id: &str,
    json: bool,
    quiet: bool,
    wait_secs: u64,
) -> Result<serde_json::Value, Error> {
    let before = m.store().load(id).await.map(|s| s.record.phase)?;
    let done = drive_when_free(&m, id, json, quiet, None, wait_secs).await?;
    // Resuming an abort ends aborted, as asked; a job that rolls itself
    // back while being resumed did not do what was asked.
    if !matches!(before, Phase::Aborting { .. } | Phase::Aborted { .. }) {
        rolled_back_is_an_error(&done)?;
    }
    if !json {
        println!("job {id}: {}", done.phase.name());
    }
    Ok(summary(&done))
}

pub async fn abort(
    m: Migrator,
    id: &str,
    reason: &str,
    json: bool,
    wait_secs: u64,
) -> Result<serde_json::Value, Error> {
    let done = drive_when_free(&m, id, json, true, Some(reason), wait_secs).await?;
    if !json {
        println!(
            "job {id}: {}; volume {} is back on {}",
            done.phase.name(),
            done.volume_id,
            done.source
        );
    }
    Ok(summary(&done))
}

/// Rounds and downtime of a live job, for one line.
fn live_summary(r: &JobRecord) -> String {
    let Some(live) = &r.live else {
        return String::new();
    };
    if let Some(m) = &live.qemu {
        return format!(
            "; moved by QEMU's mirror job {}{}, no pause",
            m.job,
            if m.write_blocking_forced {
                " (made write-blocking to converge)"
            } else {
                ""
            }
        );
    }
    let replayed: u64 = live.rounds.iter().filter(|r| !r.cutover).map(|r| r.changed_bytes).sum();
    let last = live.rounds.iter().find(|r| r.cutover);
    let mut out = format!(
        "; {} replay round(s), {} replayed",
        live.rounds.iter().filter(|r| !r.cutover).count(),
        human_bytes(replayed as f64)
    );
    if let Some(f) = last {
        out += &format!(", final delta {}", human_bytes(f.changed_bytes as f64));
    }
    if let Some(ms) = live.cutover.as_ref().and_then(|c| c.downtime_ms()) {
        out += &format!(", instance held {ms} ms");
    }
    out
}

fn describe(r: &JobRecord) -> String {
    let detail = match &r.phase {
        Phase::Copying {
            done_bytes,
            total_bytes,
            ..
        } => {
            format!(
                " {} / {}",
                human_bytes(*done_bytes as f64),
                human_bytes(*total_bytes as f64)
            )
        }
        Phase::Aborted { reason } | Phase::Aborting { reason, .. } => format!(" ({reason})"),
        Phase::Replaying { round, .. } | Phase::CuttingOver { round, .. } => format!(" round {round}"),
        _ => String::new(),
    } + &live_summary(r);
    let err = r
        .last_error
        .as_ref()
        .map(|e| format!("  last error: {e}"))
        .unwrap_or_default();
    format!(
        "{:<13} {:<10}{detail:<24} {:<16} {} -> {}{err}",
        r.id,
        r.phase.name(),
        r.volume_id,
        r.source,
        r.destination
    )
}

pub async fn status(store: &JobStore, id: Option<&str>, json: bool) -> Result<serde_json::Value, Error> {
    let ids = match id {
        Some(id) => vec![id.to_owned()],
        None => store.ids().await?,
    };
    let one = id.is_some();
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    for id in ids {
        match store.load(&id).await {
            Ok(s) => {
                if !json {
                    println!("{}", describe(&s.record));
                }
                records.push(s.record);
            }
            // Listing all jobs: one record this release cannot read must not hide the others.
            Err(e) if !one && matches!(e.kind(), ErrorKind::RecordTooNew | ErrorKind::CorruptRecord) => {
                if !json {
                    println!("{id:<13} unreadable: {e}");
                }
                unreadable.push(serde_json::json!({"id": id, "kind": e.kind(), "error": e.to_string()}));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(serde_json::json!({"jobs": records, "unreadable": unreadable}))
}

/// Compares a migrated volume's current image with its retained source.
pub async fn verify_volume(
    catalog: &RadosCatalog,
    store: &JobStore,
    cluster: &Cluster,
    volume: &str,
    json: bool,
) -> Result<serde_json::Value, Error> {
    let v = catalog.volume(volume).await?;
    let mut last: Option<JobRecord> = None;
    for id in store.ids().await? {
        let r = match store.load(&id).await {
            Ok(s) => s.record,
            // Records of other releases or damaged ones cannot be this volume's to check.
            Err(e) if matches!(e.kind(), ErrorKind::RecordTooNew | ErrorKind::CorruptRecord) => continue,
            Err(e) => return Err(e),
        };
        if r.volume_id == volume && r.phase == Phase::Done && last.as_ref().is_none_or(|l| l.updated_at <= r.updated_at)
        {
            last = Some(r);
        }
    }
    let job = last.ok_or_else(|| {
        Error::new(ErrorKind::NotInCatalog, "verify")
            .message(format!("volume `{volume}` has no finished migration to verify"))
    })?;
    if job.live.is_some() {
        return Err(Error::new(ErrorKind::InvalidState, "verify").target(volume.to_owned()).message(format!(
            "volume `{volume}` was migrated live (job {}): its instance kept writing after the switch, so its image no longer equals the retained source; the live tests verify every acknowledged write instead",
            job.id
        )));
    }
    let src = &job.source.image;
    let src_io = cluster.ioctx(&src.pool, &src.namespace).await?;
    let source = match (
        src_io.open_image_read_only(&src.image, None).await,
        &job.source_image_id,
    ) {
        (Ok(img), _) => img,
        (Err(_), Some(id)) => src_io.open_image_by_id_read_only(id).await.map_err(|e| {
            e.message(format!(
                "the retained source of volume `{volume}` (image id {id}) is gone (purged from the trash?)"
            ))
        })?,
        (Err(e), None) => return Err(e),
    };
    let dst = &v.backing.image;
    let current = cluster
        .ioctx(&dst.pool, &dst.namespace)
        .await?
        .open_image_read_only(&dst.image, None)
        .await?;
    let report = compare_images(&source, &current).await?;
    let title = format!(
        "volume {volume}: {} (now) vs retained source {} (job {})",
        v.backing, job.source, job.id
    );
    crate::comparison_outcome(&title, serde_json::json!({"job": job.id}), report, json)
}
