//! `migrate sync start | status | cutover | stop | failover | resync`: a
//! replica kept a few seconds behind an attached volume, on another pool
//! or cluster, until the operator cuts over to it or stops; failed over to
//! when the volume's cluster is lost, and synced back from the point in
//! time both sides hold once it returns.

use std::time::Duration;

use clap::{Args, Subcommand};
use livemig::catalog::{Catalog, RadosCatalog};
use livemig::job::{JobRecord, JobStore, Phase, SyncOptions, SyncStatus, SYNC_STOPPED};
use livemig::precheck::{Clusters, Destination};
use livemig::{Error, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::catalog::CatalogArgs;
use crate::jobs::{self, RunArgs};
use crate::{human_bytes, on_ctrl_c, open_jobs, DestinationArgs, SourceClusterArgs};

#[derive(Args)]
pub struct SyncCli {
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(subcommand)]
    command: SyncCommand,
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Keep a replica of an attached volume on another pool or cluster,
    /// converging by a round of changes every --interval-ms; runs until
    /// `sync cutover` or `sync stop` (Ctrl-C pauses it: `migrate resume
    /// JOB` continues it).
    ///
    /// Example: migrate sync start vol-1 --to-cluster dr
    Start(StartArgs),
    /// How far behind the replica is: its RPO (the age of the newest point
    /// in time it holds whole) and the bytes written since.
    Status(VolumeArgs),
    /// Move the volume to its replica: one more round, then the fenced
    /// cutover of a live migration (nothing acknowledged is lost). Carried
    /// out by the sync's driver, or by this command if the driver is gone.
    Cutover(VolumeArgs),
    /// Stop syncing: the replica and the sync's snapshots are removed, the
    /// volume stays where it is.
    Stop(VolumeArgs),
    /// The volume's cluster is lost: make the replica's newest whole point
    /// in time the volume (writes after it, at most the RPO, are lost). The
    /// sync's driver is fenced out; the catalog names the replica. Refused
    /// while the volume's cluster answers, unless --force. Once that
    /// cluster is back, `migrate resume JOB` fences and retires the old copy.
    Failover(FailoverArgs),
    /// After a failover: sync the volume back to the copy the failover
    /// replaced (fenced, and rolled back to the point in time both hold),
    /// sending only what changed since; `sync cutover` then fails back.
    /// Runs until `sync cutover` or `sync stop`, as `sync start` does.
    ///
    /// Example: migrate sync resync vol-1
    Resync(ResyncArgs),
}

#[derive(Args)]
struct ResyncArgs {
    /// Volume id.
    volume: String,
    /// Milliseconds from the start of one round to the start of the next.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    interval_ms: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct FailoverArgs {
    /// Volume id.
    volume: String,
    /// Fail over even though the volume's cluster answers (recorded).
    #[arg(long)]
    force: bool,
    /// Seconds the sync job's lease lasts while this command holds it.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    lease_secs: u64,
}

#[derive(Args)]
struct StartArgs {
    /// Volume id (as registered in the catalog).
    volume: String,
    #[command(flatten)]
    to: DestinationArgs,
    /// Milliseconds from the start of one round to the start of the next.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    interval_ms: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct VolumeArgs {
    /// Volume id.
    volume: String,
    /// Seconds to wait for the sync's driver to carry a cutover or stop out.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    wait: u64,
    /// Seconds the sync job's lease lasts while this command drives it.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    lease_secs: u64,
}

pub async fn run(cli: SyncCli, json: bool, timeout: u64) -> Result<serde_json::Value, Error> {
    let (source, catalog) = (&cli.source, &cli.catalog);
    match cli.command {
        SyncCommand::Start(a) => {
            let (cluster, cat, store) = open_jobs(source, catalog, timeout).await?;
            let (to, clusters) = a.to.resolve(&cat, &cluster, &a.volume, timeout).await?;
            let new = NewSync::To(&a.volume, to);
            start_and_drive(source, &cat, clusters, store, &a.run, a.interval_ms, new, json).await
        }
        SyncCommand::Resync(a) => {
            let (cluster, cat, store) = open_jobs(source, catalog, timeout).await?;
            // The clusters of the failover: the volume's now, and the
            // replaced copy's.
            let failed = store
                .last_failover(&a.volume)
                .await?
                .map(|f| f.record.id)
                .unwrap_or_default();
            let clusters = jobs::clusters_of_job(&cat, &cluster, &store, &failed, timeout).await?;
            let new = NewSync::Back(&a.volume);
            start_and_drive(source, &cat, clusters, store, &a.run, a.interval_ms, new, json).await
        }
        SyncCommand::Status(a) => {
            let m = sync_migrator(source, catalog, &a, timeout).await?;
            let st = m.sync_status(&a.volume).await?;
            if !json {
                print_status(&st);
            }
            Ok(serde_json::json!({"event": "sync_status", "sync": st}))
        }
        SyncCommand::Cutover(a) => {
            let m = sync_migrator(source, catalog, &a, timeout).await?;
            let done = m.cutover_sync(&a.volume, Duration::from_secs(a.wait)).await?;
            ended(done, json)
        }
        SyncCommand::Failover(a) => {
            let (cluster, cat, store) = open_jobs(source, catalog, timeout).await?;
            let job = cat.volume(&a.volume).await?.migration.unwrap_or_default();
            let record = store.load(&job).await?.record;
            let (from, to) = (record.source.cluster.as_str(), record.destination.cluster.as_str());
            // The replica's cluster must answer; the volume's is connected
            // only if it does (then the failover must be forced).
            let local = Clusters::local(cluster.clone());
            let probe = Duration::from_secs(timeout.clamp(1, 5));
            let clusters = match local.clone().with_registered(&cat, &[from, to], probe).await {
                Ok(both) => both,
                Err(e) if e.kind() == ErrorKind::ClusterUnreachable => {
                    local.with_registered(&cat, &[to], Duration::from_secs(timeout)).await?
                }
                Err(e) => return Err(e),
            };
            let run = RunArgs::for_abort(a.lease_secs);
            let m = jobs::migrator(
                &cat,
                clusters,
                source.conf.as_deref(),
                store,
                &run,
                CancellationToken::new(),
            )
            .await?;
            let done = m.failover_sync(&a.volume, a.force).await?;
            if !json {
                let f = done.sync.as_ref().and_then(|y| y.failover.clone()).unwrap_or_default();
                println!(
                    "job {}: failed over; volume {} now on {} as of {:.1} s before the failover{}; once cluster `{from}` is back, `migrate resume {}` fences and retires the old copy",
                    done.id,
                    done.volume_id,
                    done.destination,
                    f.at_ms.saturating_sub(f.point_ms) as f64 / 1000.0,
                    if f.forced { " (forced)" } else { "" },
                    done.id
                );
            }
            Ok(serde_json::json!({"event": "failed_over", "job": done}))
        }
        SyncCommand::Stop(a) => {
            let m = sync_migrator(source, catalog, &a, timeout).await?;
            let done = m.stop_sync(&a.volume, Duration::from_secs(a.wait)).await?;
            ended(done, json)
        }
    }
}

/// A new sync: of a volume to a destination, or back to the copy its
/// failover replaced (a resync).
enum NewSync<'a> {
    To(&'a str, Destination),
    Back(&'a str),
}

/// Records a new sync, announces it and drives it to its end.
#[allow(clippy::too_many_arguments)]
async fn start_and_drive(
    source: &SourceClusterArgs,
    cat: &RadosCatalog,
    clusters: Clusters,
    store: JobStore,
    run: &RunArgs,
    interval_ms: u64,
    new: NewSync<'_>,
    json: bool,
) -> Result<serde_json::Value, Error> {
    let m = jobs::migrator(
        cat,
        clusters,
        source.conf.as_deref(),
        store,
        run,
        on_ctrl_c("pausing the sync at a safe point"),
    )
    .await?;
    let options = SyncOptions {
        interval: Duration::from_millis(interval_ms.max(1)),
    };
    let (r, event, how) = match new {
        NewSync::To(volume, to) => (m.create_sync(volume, &to, options).await?.record, "sync", ""),
        NewSync::Back(volume) => (
            m.create_resync(volume, options).await?.record,
            "resync",
            " (back, from the failover's point in time)",
        ),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"event": event, "job": r.id, "volume": r.volume_id, "source": r.source, "replica": r.destination})
        );
    } else {
        println!(
            "job {}: syncing volume {} from {} to {}{how} every {interval_ms} ms, until `migrate sync cutover {}` or `migrate sync stop {}`",
            r.id, r.volume_id, r.source, r.destination, r.volume_id, r.volume_id
        );
    }
    let done = jobs::drive(&m, &r.id, json, run.no_progress_flag(), None).await?;
    ended(done, json)
}

/// A migrator for the sync of `a.volume`, connected to the clusters its job names.
async fn sync_migrator(
    source: &SourceClusterArgs,
    catalog: &CatalogArgs,
    a: &VolumeArgs,
    timeout: u64,
) -> Result<livemig::job::Migrator, Error> {
    let (cluster, cat, store) = open_jobs(source, catalog, timeout).await?;
    let job = cat.volume(&a.volume).await?.migration.unwrap_or_default();
    let clusters = jobs::clusters_of_job(&cat, &cluster, &store, &job, timeout).await?;
    jobs::migrator(
        &cat,
        clusters,
        source.conf.as_deref(),
        store,
        &RunArgs::for_abort(a.lease_secs),
        CancellationToken::new(),
    )
    .await
}

/// A sync's end: cut over (done), stopped (rolled back as asked), or an error.
fn ended(done: JobRecord, json: bool) -> Result<serde_json::Value, Error> {
    let stopped = matches!(&done.phase, Phase::Aborted { reason } if reason == SYNC_STOPPED);
    if !stopped {
        jobs::rolled_back_is_an_error(&done)?;
    }
    if !json {
        match &done.phase {
            Phase::Done => println!(
                "job {}: cut over; volume {} now on {}",
                done.id, done.volume_id, done.destination
            ),
            Phase::Aborted { .. } => println!(
                "job {}: sync stopped; volume {} stays on {}, its replica removed",
                done.id, done.volume_id, done.source
            ),
            p => println!("job {}: {}", done.id, p.name()),
        }
    }
    Ok(serde_json::json!({"event": "done", "job": done}))
}

fn print_status(st: &SyncStatus) {
    println!(
        "sync of volume {} (job {}): {}, from {} to {}",
        st.volume, st.job, st.phase, st.source, st.replica
    );
    match (st.rpo_ms, st.behind_bytes) {
        (Some(rpo), behind) => println!(
            "  the replica holds the volume as of {:.1} s ago (RPO){}",
            rpo as f64 / 1000.0,
            behind.map_or(String::new(), |b| format!("; {} written since", human_bytes(b as f64)))
        ),
        (None, _) => println!("  the replica holds no whole point in time yet (first copy running)"),
    }
    let last = st.last_round.as_ref().map_or(String::new(), |r| {
        format!(
            "; the last applied {} in {} ms",
            human_bytes(r.changed_bytes as f64),
            r.millis
        )
    });
    println!("  {} rounds, one every {} ms{last}", st.rounds, st.interval_ms);
    if let Some(req) = st.requested {
        println!("  requested: {req:?}");
    }
    if let Some(e) = &st.last_error {
        println!("  last error: {e}");
    }
}
