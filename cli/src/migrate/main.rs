//! `migrate`: the operator's command line for livemig.
//!
//! A thin layer: parse arguments, connect, run a library operation, render
//! progress (a bar on a terminal, plain lines otherwise, JSON lines with
//! `--json`) and turn the library's error kinds into exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use livemig::ceph::{Cluster, ClusterConfig};
use livemig::job::Engine;
use livemig::mirror::{compare_images, Copier, CopyMethod, CopyMode, CopyOptions, Progress, SourceHold};
use livemig::precheck::{Clusters, Destination, LOCAL_CLUSTER};
use livemig::spec::ImageSpec;
use livemig::{Error, ErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod catalog;
mod copy;
mod exit;
mod jobs;
mod sync;
use catalog::{CatalogArgs, CatalogCommand};
use copy::*;
use exit::*;
use jobs::RunArgs;

/// `--engine`: the library's [`Engine`], or livemig's choice.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineChoice {
    /// The QEMU engine for a volume a QEMU has open, the native one otherwise.
    Auto,
    /// livemig copies; the instance is held for the final delta.
    Native,
    /// The instance's QEMU mirrors the volume.
    Qemu,
}

impl EngineChoice {
    fn engine(self) -> Option<Engine> {
        match self {
            EngineChoice::Auto => None,
            EngineChoice::Native => Some(Engine::Native),
            EngineChoice::Qemu => Some(Engine::Qemu),
        }
    }
}

/// `--copy-mode`: the library's [`CopyMode`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CopyModeChoice {
    /// The OSDs copy the data where both images allow it (one cluster, one
    /// layout, a source without parent data); the client copies otherwise.
    Auto,
    /// The OSDs copy the data, or the command fails saying why they cannot.
    Server,
    /// livemig reads and writes every byte itself.
    Client,
}

impl CopyModeChoice {
    pub(crate) fn mode(self) -> CopyMode {
        match self {
            CopyModeChoice::Auto => CopyMode::Auto,
            CopyModeChoice::Server => CopyMode::Server,
            CopyModeChoice::Client => CopyMode::Client,
        }
    }
}

/// Live, crash-safe migration of Ceph RBD volumes between pools and clusters.
///
/// Images are named as the rbd CLI names them: POOL/IMAGE or
/// POOL/NAMESPACE/IMAGE (IMAGE alone means pool `rbd`).
#[derive(Parser)]
#[command(name = "migrate", version, after_help = EXIT_CODES)]
struct Cli {
    /// Print machine-readable JSON lines on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for a cluster's monitors before giving up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 15)]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy a detached image to a new image in another pool or cluster.
    ///
    /// The copy reads SRC as of one point in time: when nobody has SRC open
    /// it takes SRC's exclusive lock (others can read SRC, not write it,
    /// until the copy ends); otherwise, or with --snapshot, it reads a
    /// temporary snapshot. It copies only allocated, non-zero data (the copy
    /// stays thin), and keeps
    /// size, features, object size, striping and image-meta. DST must not
    /// exist; it appears only when complete. Ctrl-C cancels cleanly.
    ///
    /// Example: migrate copy volumes/vm1-disk fast/vm1-disk
    ///          migrate copy volumes/vm1-disk dr/vm1-disk --dest-conf /etc/ceph/dr.conf
    Copy(CopyArgs),
    /// Compare two images by content and report differing ranges.
    ///
    /// Exit code 0 when identical, 4 when they differ.
    Verify(VerifyArgs),
    /// Check, without changing anything, whether a volume can move to POOL[/IMAGE].
    ///
    /// Every rule is listed with pass/FAIL and the numbers behind it; the exit
    /// code is that of the first failed rule.
    Check(CheckArgs),
    /// Register and inspect volumes, instances and attachments in livemig's
    /// own catalog (for use without a control plane).
    Catalog(CatalogCli),
    /// Migrate a volume to another pool: precheck, mark, copy, switch, clean up.
    ///
    /// The job is recorded in RADOS before every step, so a crash loses
    /// nothing: `migrate resume JOB` (from any process) continues it,
    /// `migrate abort JOB` rolls it back (before the switch). Ctrl-C pauses
    /// it safely. This release moves detached volumes (status available).
    ///
    /// Example: migrate start vol-1 --to ssd
    Start(StartArgs),
    /// Show one job, or all jobs.
    Status(JobArgs),
    /// List all jobs.
    List(ListArgs),
    /// Continue a paused or crashed job (its previous driver must be gone;
    /// its lease expires --lease-secs after it died).
    Resume(ResumeArgs),
    /// Roll a job back to the state before it started (only before its switch).
    Abort(AbortArgs),
    /// Keep a replica of a volume converging on another pool or cluster,
    /// and cut over to it (or stop) when asked.
    Sync(sync::SyncCli),
}

#[derive(Args)]
struct StartArgs {
    /// Volume id (as registered in the catalog).
    volume: String,
    #[command(flatten)]
    to: DestinationArgs,
    /// Engine for an attached volume: `auto` lets a QEMU (QMP socket)
    /// mirror it and uses the native engine otherwise; `native` copies with
    /// livemig and holds the instance (a QEMU: `stop`/`cont`) for the final
    /// delta; `qemu` insists on the QEMU mirror.
    #[arg(long, value_name = "ENGINE", value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct JobArgs {
    /// Job id; all jobs when omitted.
    job: Option<String>,
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
}

#[derive(Args)]
struct ResumeArgs {
    /// Job id.
    job: String,
    /// Keep retrying this many seconds while another process holds the job's lease.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait: u64,
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct AbortArgs {
    /// Job id.
    job: String,
    /// Why (kept in the job record).
    #[arg(long, default_value = "aborted by the operator")]
    reason: String,
    /// Keep retrying this many seconds while another process holds the job's lease.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait: u64,
    /// Seconds the job's lease lasts while aborting.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    lease_secs: u64,
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
}

/// Where a volume goes: `--to`, or `--to-cluster` by the pool map.
#[derive(Args)]
struct DestinationArgs {
    /// Destination: POOL (same image name), POOL/IMAGE or POOL/NAMESPACE/IMAGE.
    #[arg(
        long,
        value_name = "POOL[/IMAGE]",
        required_unless_present = "to_cluster",
        conflicts_with = "to_cluster"
    )]
    to: Option<String>,
    /// To this cluster (registered with `catalog add-cluster`), into the
    /// pool the catalog's pool map gives the volume's pool there (`catalog
    /// map-pool`), taking that mapping's location.
    #[arg(long, value_name = "NAME")]
    to_cluster: Option<String>,
    /// Keep the new image's data objects in this pool (replicated, or
    /// erasure-coded with overwrites); its own pool keeps its metadata.
    #[arg(long, value_name = "POOL")]
    data_pool: Option<String>,
}

impl DestinationArgs {
    /// Where these arguments send `volume`, and the clusters that takes,
    /// connected.
    async fn resolve(
        &self,
        catalog: &livemig::catalog::RadosCatalog,
        local: &Cluster,
        volume: &str,
        timeout: u64,
    ) -> Result<(Destination, Clusters), Error> {
        let to = match (&self.to, &self.to_cluster) {
            (Some(to), _) => Destination::parse(LOCAL_CLUSTER, to)?,
            (None, Some(name)) => Destination::by_pool_map(catalog, volume, name).await?,
            (None, None) => unreachable!("clap requires --to or --to-cluster"),
        };
        // The volume's own cluster too (an unknown volume is the precheck's to refuse).
        let from = match livemig::catalog::Catalog::volume(catalog, volume).await {
            Ok(v) => Some(v.backing.cluster),
            Err(e) if e.kind() == ErrorKind::NotInCatalog => None,
            Err(e) => return Err(e),
        };
        let names: Vec<&str> = [Some(to.cluster.as_str()), from.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let clusters = Clusters::local(local.clone())
            .with_registered(catalog, &names, Duration::from_secs(timeout))
            .await?;
        Ok((to.with_data_pool(self.data_pool.clone()), clusters))
    }
}

#[derive(Args)]
struct CheckArgs {
    /// Volume id (as registered in the catalog).
    volume: String,
    #[command(flatten)]
    to: DestinationArgs,
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
}

#[derive(Args)]
struct CatalogCli {
    #[command(flatten)]
    source: SourceClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Args)]
struct SourceClusterArgs {
    /// Cluster name; reads /etc/ceph/NAME.conf (as `rbd --cluster`).
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// ceph.conf of the (source) cluster [default: $CEPH_CONF, then /etc/ceph/ceph.conf].
    #[arg(short = 'c', long, value_name = "PATH")]
    conf: Option<PathBuf>,
    /// Client id, without `client.` [default: admin].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Keyring of the client.
    #[arg(long, value_name = "PATH")]
    keyring: Option<PathBuf>,
}

#[derive(Args)]
struct DestClusterArgs {
    /// Destination cluster name, when it is another cluster.
    #[arg(long, value_name = "NAME")]
    dest_cluster: Option<String>,
    /// ceph.conf of the destination cluster, when it is another cluster.
    #[arg(long, value_name = "PATH")]
    dest_conf: Option<PathBuf>,
    /// Client id on the destination cluster [default: same as --id].
    #[arg(long, value_name = "ID")]
    dest_id: Option<String>,
    /// Keyring for the destination cluster.
    #[arg(long, value_name = "PATH")]
    dest_keyring: Option<PathBuf>,
}

/// Parses `4096`, `64K`, `256M`, `2G`, `1T` (binary multiples).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown unit `{c}` (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64K, 256M, 2G)"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// The source cluster, and the destination (the same connection unless
/// another cluster is named).
async fn connect(
    src: &SourceClusterArgs,
    dst: &DestClusterArgs,
    timeout_secs: u64,
) -> Result<(Cluster, Cluster), Error> {
    let connect_timeout = Duration::from_secs(timeout_secs.max(1));
    let source = Cluster::connect(ClusterConfig {
        cluster_name: src.cluster.clone(),
        conf_path: src.conf.clone(),
        client_id: src.id.clone(),
        keyring: src.keyring.clone(),
        options: Vec::new(),
        connect_timeout,
    })
    .await?;
    if dst.dest_conf.is_none() && dst.dest_cluster.is_none() {
        return Ok((source.clone(), source));
    }
    let dest = Cluster::connect(ClusterConfig {
        cluster_name: dst.dest_cluster.clone(),
        conf_path: dst.dest_conf.clone(),
        client_id: dst.dest_id.clone().or_else(|| src.id.clone()),
        keyring: dst.dest_keyring.clone(),
        options: Vec::new(),
        connect_timeout,
    })
    .await?;
    Ok((source, dest))
}

/// A token cancelled (after saying `what` on stderr) when Ctrl-C arrives.
fn on_ctrl_c(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("migrate: {what}...");
            t.cancel();
        }
    });
    token
}

/// The catalog's cluster, the catalog and the job store, as the job commands need them.
async fn open_jobs(
    source: &SourceClusterArgs,
    catalog: &CatalogArgs,
    timeout: u64,
) -> Result<(Cluster, livemig::catalog::RadosCatalog, livemig::job::JobStore), Error> {
    let (cluster, _) = connect(source, &no_dest(), timeout).await?;
    let cat = catalog.open(&cluster).await?;
    let store = livemig::job::JobStore::new(cat.ioctx().clone());
    Ok((cluster, cat, store))
}

/// No separate destination cluster.
fn no_dest() -> DestClusterArgs {
    DestClusterArgs {
        dest_cluster: None,
        dest_conf: None,
        dest_id: None,
        dest_keyring: None,
    }
}

pub(crate) fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Returns the heap memory freed since the last call to the kernel, every
/// 100 ms, so that the process's peak memory follows the copy's in-flight
/// budget. Each in-flight read also has a librados receive buffer the size
/// of a chunk, allocated on librados' threads and freed on others: glibc
/// keeps such freed blocks in its per-thread arenas, and a 4 GiB copy with a
/// 128 MiB budget peaked at 170-240 MiB; with this, at 128-150 MiB, for
/// ~0.1-0.5 s more system time per GiB.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        // SAFETY: malloc_trim only hands free heap pages back to the
        // kernel; it takes the allocator's locks and may run on any thread.
        unsafe { libc::malloc_trim(0) };
    });
}

fn main() -> ExitCode {
    give_back_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIVEMIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("migrate: {e:#}");
            return ExitCode::from(1);
        }
    };
    let (json, timeout) = (cli.json, cli.connect_timeout);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Copy(a) => run_copy(a, json, timeout).await,
            Command::Verify(a) => run_verify(a, json, timeout).await,
            Command::Check(a) => {
                let (cluster, _) = connect(&a.source, &no_dest(), timeout).await?;
                let cat = a.catalog.open(&cluster).await?;
                let (to, clusters) = a.to.resolve(&cat, &cluster, &a.volume, timeout).await?;
                catalog::run_check(&a.volume, &to, &cat, &clusters, json).await
            }
            Command::Start(a) => {
                let (cluster, cat, store) = open_jobs(&a.source, &a.catalog, timeout).await?;
                let (to, clusters) = a.to.resolve(&cat, &cluster, &a.volume, timeout).await?;
                let m = jobs::migrator(
                    &cat,
                    clusters,
                    a.source.conf.as_deref(),
                    store,
                    &a.run,
                    on_ctrl_c("pausing the job at a safe point"),
                )
                .await?
                .engine(a.engine.engine());
                jobs::start(m, &a.volume, &to, json, a.run.no_progress_flag()).await
            }
            Command::Resume(a) => {
                let (cluster, cat, store) = open_jobs(&a.source, &a.catalog, timeout).await?;
                let clusters = jobs::clusters_of_job(&cat, &cluster, &store, &a.job, timeout).await?;
                let m = jobs::migrator(
                    &cat,
                    clusters,
                    a.source.conf.as_deref(),
                    store,
                    &a.run,
                    on_ctrl_c("pausing the job at a safe point"),
                )
                .await?;
                jobs::resume(m, &a.job, json, a.run.no_progress_flag(), a.wait).await
            }
            Command::Abort(a) => {
                let (cluster, cat, store) = open_jobs(&a.source, &a.catalog, timeout).await?;
                let run = RunArgs::for_abort(a.lease_secs);
                let clusters = jobs::clusters_of_job(&cat, &cluster, &store, &a.job, timeout).await?;
                let m = jobs::migrator(
                    &cat,
                    clusters,
                    a.source.conf.as_deref(),
                    store,
                    &run,
                    CancellationToken::new(),
                )
                .await?;
                jobs::abort(m, &a.job, &a.reason, json, a.wait).await
            }
            Command::Status(a) => {
                let (_, _, store) = open_jobs(&a.source, &a.catalog, timeout).await?;
                jobs::status(&store, a.job.as_deref(), json).await
            }
            Command::List(a) => {
                let (_, _, store) = open_jobs(&a.source, &a.catalog, timeout).await?;
                jobs::status(&store, None, json).await
            }
            Command::Sync(a) => sync::run(a, json, timeout).await,
            Command::Catalog(a) => {
                let (cluster, _) = connect(&a.source, &no_dest(), timeout).await?;
                let cat = a.catalog.open(&cluster).await?;
                catalog::run_catalog(a.command, &cat, &cluster, json, timeout).await
            }
        }
    });
    // A librados call still blocked (on a cluster lost, or by a client
    // fenced out) is not waited for beyond this.
    runtime.shutdown_timeout(Duration::from_secs(10));
    // Let librados finish closing images and connections before exiting.
    livemig::ceph::wait_for_releases(Duration::from_secs(30));
    match result {
        Ok(out) => {
            if json {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.kind().exit_status();
            let message = match cli_advice(&e) {
                Some(advice) => format!("{e}; {advice}"),
                None => e.to_string(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "error", "kind": e.kind(), "message": message, "exit_code": code})
                );
            }
            eprintln!("migrate: error ({}): {message}", e.kind());
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_size, ErrorKind, EXIT_CODES};

    #[test]
    fn the_help_explains_every_exit_status_the_error_table_gives() {
        for kind in ErrorKind::ALL {
            let status = kind.exit_status().to_string();
            assert!(
                EXIT_CODES
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{status} "))),
                "{kind} exits {status}, which the help does not explain"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
