//! Side-by-side copy benchmark: `migrate copy` against Ceph's own tools, on
//! the same cluster and the same data, in one run.
//!
//! Datasets: 2 GiB of random data in a 4 GiB image (every other object);
//! a 4 GiB image fully written, mostly zeros (64 KiB of data per 4 MiB
//! object); a sparse 64 GiB image with 1 GiB written. Tools: `migrate copy`
//! (the OSDs copying, and `--copy-mode client`),
//! `rbd cp`, `rbd deep cp`, `rbd migration prepare/execute/commit`, and
//! `rbd export-diff | rbd import-diff`. Each tool runs once to warm up, then
//! `LIVEMIG_BENCH_ROUNDS` (default 3) rounds with the tools in rotating
//! order; medians are reported. Every copy is compared with its source.
//! Each tool runs as a child process (`sh -c`), so wall time and CPU time
//! (user+sys of the whole process tree) are measured the same way for all.
//!
//! Run with `scripts/bench` (starts a cluster unless CEPH_CONF is set).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig::ceph::{Cluster, ClusterConfig, CreateOptions, Image, IoCtx};
use livemig::mirror::compare_images;
use rand::{RngCore, SeedableRng};

const SRC_POOL: &str = "bench-src";
const DST_POOL: &str = "bench-dst";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const OBJ: u64 = 4 * MIB;

struct Dataset {
    name: &'static str,
    image: &'static str,
    size: u64,
    /// (offset, length, random bytes at its start; the rest of it is written as zeros)
    writes: Vec<(u64, u64, u64)>,
}

impl Dataset {
    fn data_bytes(&self) -> u64 {
        self.writes.iter().map(|w| w.1).sum()
    }
}

fn datasets() -> Vec<Dataset> {
    vec![
        Dataset {
            name: "dense: 2 GiB random in 4 GiB",
            image: "dense",
            size: 4 * GIB,
            writes: (0..4 * GIB / OBJ).step_by(2).map(|i| (i * OBJ, OBJ, OBJ)).collect(),
        },
        Dataset {
            name: "zeros: 4 GiB written, 1/64 non-zero",
            image: "zeros",
            size: 4 * GIB,
            writes: (0..4 * GIB / OBJ).map(|i| (i * OBJ, OBJ, 64 * 1024)).collect(),
        },
        Dataset {
            name: "sparse: 1 GiB in 64 GiB",
            image: "sparse",
            size: 64 * GIB,
            writes: (0..64 * GIB / OBJ).step_by(64).map(|i| (i * OBJ, OBJ, OBJ)).collect(),
        },
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    /// `migrate copy`: the OSDs copy the data objects (same cluster).
    Livemig,
    /// `migrate copy --copy-mode client`: livemig reads and writes every byte.
    LivemigClient,
    RbdCp,
    RbdDeepCp,
    RbdMigration,
    ExportImportDiff,
}

const TOOLS: [Tool; 6] = [
    Tool::Livemig,
    Tool::LivemigClient,
    Tool::RbdCp,
    Tool::RbdDeepCp,
    Tool::RbdMigration,
    Tool::ExportImportDiff,
];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Livemig => "livemig server-side (migrate copy)",
            Tool::LivemigClient => "livemig client (--copy-mode client)",
            Tool::RbdCp => "rbd cp",
            Tool::RbdDeepCp => "rbd deep cp",
            Tool::RbdMigration => "rbd migration (import-only)",
            Tool::ExportImportDiff => "rbd export-diff | import-diff",
        }
    }
}

struct Env {
    conf: PathBuf,
    migrate: PathBuf,
}

impl Env {
    /// An rbd command line; `--no-progress` goes only where rbd accepts it.
    fn rbd(&self, args: &str) -> String {
        let quiet = if ["migration prepare", "create", "snap create"]
            .iter()
            .any(|p| args.starts_with(p))
        {
            ""
        } else {
            "--no-progress "
        };
        format!("rbd -c '{}' {quiet}{args}", self.conf.display())
    }

    /// Runs a shell command, returning wall time and CPU seconds of its whole tree.
    fn timed(&self, script: &str) -> Result<(Duration, f64)> {
        let start = Instant::now();
        let child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn sh")?;
        let pid = child.id() as i32;
        let mut status = 0;
        // SAFETY: zeroed is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointers; pid is our un-waited child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let wall = start.elapsed();
        if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            let mut err = String::new();
            if let Some(mut e) = child.stderr {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("`{script}` failed: {err}");
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok((wall, secs(usage.ru_utime) + secs(usage.ru_stime)))
    }

    fn run(&self, script: &str) -> Result<()> {
        self.timed(script).map(|_| ())
    }

    /// For one tool copying `src` to `dst`: untimed preparation, the timed
    /// command, and untimed cleanup.
    fn tool_commands(&self, tool: Tool, ds: &Dataset, dst: &str) -> (Option<String>, String, Option<String>) {
        let src = format!("{SRC_POOL}/{}", ds.image);
        let dst = format!("{DST_POOL}/{dst}");
        match tool {
            Tool::Livemig | Tool::LivemigClient => {
                let mode = if tool == Tool::Livemig { "server" } else { "client" };
                let cmd = format!(
                    "'{}' copy --conf '{}' --no-progress --copy-mode {mode} {src} {dst}",
                    self.migrate.display(),
                    self.conf.display()
                );
                (None, cmd, None)
            }
            Tool::RbdCp => (None, self.rbd(&format!("cp {src} {dst}")), None),
            Tool::RbdDeepCp => (None, self.rbd(&format!("deep cp {src} {dst}")), None),
            Tool::RbdMigration => {
                // Import-only mode reads the source at a snapshot and leaves
                // it as it is (a normal migration would consume the source).
                let spec = format!(
                    r#"{{"type":"native","pool_name":"{SRC_POOL}","image_name":"{}","snap_name":"bench-base"}}"#,
                    ds.image
                );
                let cmd = format!(
                    "{} && {} && {}",
                    self.rbd(&format!("migration prepare --import-only --source-spec '{spec}' {dst}")),
                    self.rbd(&format!("migration execute {dst}")),
                    self.rbd(&format!("migration commit {dst}"))
                );
                let snap = format!("{src}@bench-base");
                (
                    Some(self.rbd(&format!("snap create {snap}"))),
                    cmd,
                    Some(self.rbd(&format!("snap rm {snap}"))),
                )
            }
            Tool::ExportImportDiff => {
                let cmd = format!(
                    "{} && {} | {}",
                    self.rbd(&format!("create --size {}M {dst}", ds.size >> 20)),
                    self.rbd(&format!("export-diff {src} -")),
                    self.rbd(&format!("import-diff - {dst}"))
                );
                (None, cmd, None)
            }
        }
    }
}

/// Peak RSS (MiB) of `migrate copy`, from its /proc VmHWM, polled until exit.
fn livemig_peak_rss_mib(env: &Env, ds: &Dataset, dst: &str) -> Result<u64> {
    let mut child = Command::new(&env.migrate)
        .args(["copy", "--conf"])
        .arg(&env.conf)
        .args([
            "--no-progress",
            "--copy-mode",
            "client",
            &format!("{SRC_POOL}/{}", ds.image),
            &format!("{DST_POOL}/{dst}"),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    while child.try_wait()?.is_none() {
        if let Ok(t) = std::fs::read_to_string(&path) {
            if let Some(v) = t
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
            {
                peak = peak.max(v.parse().unwrap_or(0));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(peak / 1024)
}

async fn fill(io: &IoCtx, ds: &Dataset) -> Result<()> {
    if io.image_exists(ds.image).await? {
        io.remove_image(ds.image).await?;
    }
    io.create_image(ds.image, ds.size, &CreateOptions::default()).await?;
    let img = io.open_image(ds.image).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for &(off, len, random) in &ds.writes {
        let mut buf = vec![0u8; len as usize];
        rng.fill_bytes(&mut buf[..random as usize]);
        let img: Image = img.clone();
        pending.push(async move { img.write(off, buf, 0..len as usize).await });
        if pending.len() >= 16 {
            pending.next().await.transpose()?;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    img.flush().await?;
    img.close().await;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    dataset: String,
    tool: String,
    secs: f64,
    mbps: f64,
    cpu_per_gib: f64,
    /// Peak RSS of livemig's copy (MiB), on its row.
    peak_rss_mib: Option<u64>,
    /// The copy's allocated bytes (MiB, whole objects, as `rbd du` counts).
    #[serde(default)]
    allocated_mib: u64,
}

async fn bench_dataset(env: &Env, cluster: &Cluster, ds: &Dataset, rounds: usize) -> Result<Vec<Row>> {
    let src_io = cluster.ioctx(SRC_POOL, "").await?;
    let dst_io = cluster.ioctx(DST_POOL, "").await?;
    eprintln!("[{}] writing {} MiB of data", ds.name, ds.data_bytes() / MIB);
    fill(&src_io, ds).await?;
    let src_img = src_io.open_image_read_only(ds.image, None).await?;
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); TOOLS.len()];
    let mut allocated = [0u64; TOOLS.len()];
    for round in 0..=rounds {
        for k in 0..TOOLS.len() {
            // Rotate the order every round so no tool always runs first.
            let t = (k + round) % TOOLS.len();
            let tool = TOOLS[t];
            let dst = format!("{}-copy", ds.image);
            // Leftovers of an interrupted earlier run would make the tools fail.
            if dst_io.image_exists(&dst).await? {
                dst_io.remove_image(&dst).await?;
            }
            let (prep, cmd, cleanup) = env.tool_commands(tool, ds, &dst);
            if let Some(p) = prep {
                env.run(&p)?;
            }
            let (wall, cpu) = env.timed(&cmd)?;
            if let Some(c) = cleanup {
                env.run(&c)?;
            }
            let copy = dst_io.open_image_read_only(&dst, None).await?;
            let cmp = compare_images(&src_img, &copy).await?;
            allocated[t] = copy.allocated_bytes(true).await? / MIB;
            copy.close().await;
            if !cmp.identical() {
                bail!("{} produced a copy that differs from the source: {cmp:?}", tool.name());
            }
            // Some tools copy the source's snapshots too (rbd migration does).
            env.run(&env.rbd(&format!("snap purge {DST_POOL}/{dst}")))?;
            dst_io.remove_image(&dst).await?;
            let label = if round == 0 {
                "warm-up".to_string()
            } else {
                format!("round {round}")
            };
            eprintln!(
                "[{}] {label}: {:<38} {:>7.2} s  cpu {:>6.2} s  (identical)",
                ds.name,
                tool.name(),
                wall.as_secs_f64(),
                cpu
            );
            if round > 0 {
                samples[t].0.push(wall.as_secs_f64());
                samples[t].1.push(cpu);
            }
        }
    }
    src_img.close().await;
    let gib = ds.data_bytes() as f64 / GIB as f64;
    let rows = TOOLS
        .iter()
        .zip(samples.iter_mut())
        .zip(allocated)
        .map(|((tool, (walls, cpus)), allocated_mib)| {
            let secs = median(walls);
            Row {
                dataset: ds.name.to_string(),
                tool: tool.name().to_string(),
                peak_rss_mib: None,
                allocated_mib,
                secs,
                mbps: ds.data_bytes() as f64 / 1e6 / secs,
                cpu_per_gib: median(cpus) / gib,
            }
        })
        .collect();
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; nothing else is accepted.
    let conf =
        PathBuf::from(std::env::var("CEPH_CONF").context("CEPH_CONF must name the cluster (scripts/bench sets it)")?);
    let migrate = PathBuf::from(
        std::env::var("LIVEMIG_MIGRATE_BIN")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/migrate").to_string()),
    );
    if !migrate.is_file() {
        bail!("{} not found: build it with `cargo build --release`", migrate.display());
    }
    let rounds: usize = std::env::var("LIVEMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let only: Option<String> = std::env::var("LIVEMIG_BENCH_ONLY").ok();
    let env = Env {
        conf: conf.clone(),
        migrate,
    };
    let cluster = Cluster::connect(ClusterConfig::from_conf(&conf)).await?;
    for pool in [SRC_POOL, DST_POOL] {
        if !cluster.pool_list().await?.iter().any(|p| p == pool) {
            env.run(&format!(
                "ceph -c '{}' osd pool create {pool} 32 32 >/dev/null 2>&1 && rbd -c '{}' pool init {pool}",
                conf.display(),
                conf.display()
            ))?;
        }
    }
    // Each dataset's rows go to target/bench/rows-<dataset>.json, so that
    // scripts/bench can run every dataset on a fresh cluster; the table is
    // made from all rows present.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    for ds in datasets() {
        if only.as_deref().is_some_and(|o| !ds.image.contains(o)) {
            continue;
        }
        let mut rows = bench_dataset(&env, &cluster, &ds, rounds).await?;
        let peak = livemig_peak_rss_mib(&env, &ds, "peak-rss")?;
        cluster.ioctx(DST_POOL, "").await?.remove_image("peak-rss").await?;
        rows[1].peak_rss_mib = Some(peak);
        cluster.ioctx(SRC_POOL, "").await?.remove_image(ds.image).await?;
        std::fs::write(
            dir.join(format!("rows-{}.json", ds.image)),
            serde_json::to_vec_pretty(&rows)?,
        )?;
    }
    let mut rows: Vec<Row> = Vec::new();
    for ds in datasets() {
        if let Ok(raw) = std::fs::read(dir.join(format!("rows-{}.json", ds.image))) {
            rows.extend(serde_json::from_slice::<Vec<Row>>(&raw)?);
        }
    }
    let out = table(&rows, rounds);
    println!("{out}");
    std::fs::write(dir.join("copy.md"), &out)?;
    drop(cluster);
    livemig::ceph::wait_for_releases(Duration::from_secs(30));
    Ok(())
}

fn table(rows: &[Row], rounds: usize) -> String {
    let livemig = Tool::Livemig.name();
    let mut out = format!(
        "Copy benchmark: median of {rounds} rounds after a warm-up, tools alternating; MB/s of source data (10^6 B/s);\n\
         speedup = tool's time / livemig's time; CPU = client user+sys seconds per GiB of data. Every copy verified identical.\n\n"
    );
    out.push_str(
        "| dataset | tool | median s | MB/s | livemig speedup | CPU s/GiB | allocated MiB |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let base = |ds: &str| rows.iter().find(|b| b.dataset == ds && b.tool == livemig);
    for r in rows {
        let speedup = base(&r.dataset)
            .map(|b| format!("{:.2}x", r.secs / b.secs))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {speedup} | {:.2} | {} |\n",
            r.dataset,
            r.tool.replace('|', "\\|"),
            r.secs,
            r.mbps,
            r.cpu_per_gib,
            r.allocated_mib
        ));
    }
    out.push('\n');
    let by = |ds: &str, tool: &str| rows.iter().find(|r| r.dataset.starts_with(ds) && r.tool == tool);
    let ours = [Tool::Livemig.name(), Tool::LivemigClient.name()];
    for ds in ["dense", "zeros", "sparse"] {
        let fastest = rows
            .iter()
            .filter(|r| r.dataset.starts_with(ds) && !ours.contains(&r.tool.as_str()))
            .min_by(|a, b| a.secs.partial_cmp(&b.secs).unwrap());
        for tool in ours {
            if let (Some(l), Some(f)) = (by(ds, tool), fastest) {
                out.push_str(&format!(
                    "- {ds}: {tool} {:.2}x the fastest Ceph tool ({}); client CPU {:.2} s/GiB against {:.2}\n",
                    f.secs / l.secs,
                    f.tool,
                    l.cpu_per_gib,
                    f.cpu_per_gib
                ));
            }
        }
    }
    if let (Some(dense), Some(sparse)) = (by("dense", livemig), by("sparse", livemig)) {
        // The dense dataset holds 2 GiB; its time per GiB is the reference.
        let per_gib = dense.secs / 2.0;
        out.push_str(&format!(
            "- sparse 64 GiB image (1 GiB data): {:.2} s = {:.2}x the time of 1 GiB of dense data ({per_gib:.2} s)\n",
            sparse.secs,
            sparse.secs / per_gib
        ));
    }
    for r in rows.iter().filter(|r| r.peak_rss_mib.is_some()) {
        out.push_str(&format!(
            "- livemig peak RSS, {}: {} MiB (in-flight budget 128 MiB)\n",
            r.dataset,
            r.peak_rss_mib.unwrap_or(0)
        ));
    }
    out
}
