//! QEMU engine bench: the same data moved, in one run, by
//! - the QEMU engine (`migrate start` on a volume a qemu-storage-daemon
//!   holds, while fio writes 4 KiB at 500/s through its NBD export),
//! - the native engine (`migrate start` on a detached copy),
//! - `rbd migration prepare/execute/commit` (a detached copy),
//!
//! reporting MB/s of data and the ratio to the QEMU engine, and the
//! guest-visible pause at the pivot: the largest gap between two completed
//! fio writes (fio's per-I/O completion log) while the job ran.
//!
//! Run with `scripts/bench` (LIVEMIG_BENCH_ONLY=qemu for this one alone).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod common;
#[path = "../tests/common/qsd.rs"]
mod qsd;
use common::{ensure_pools, sh};

const SRC: &str = "bench-q-src";
const DST: &str = "bench-q-dst";
const CATALOG: &str = "bench-q-catalog";

fn migrate(args: &[&str]) -> Result<String> {
    common::migrate(CATALOG, args)
}
const DATA: u64 = 1 << 30;

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// A fresh copy of the data image under `name` (untimed).
fn fresh_source(name: &str) -> Result<()> {
    sh("rbd", &["deep", "cp", &format!("{SRC}/data"), &format!("{SRC}/{name}")])?;
    Ok(())
}

struct Qsd {
    child: Child,
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qsd(image: &str, dir: &Path, conf: &str) -> Result<Qsd> {
    let child = qsd::qsd_command(dir, SRC, image, conf)
        .spawn()
        .context("qemu-storage-daemon")?;
    for _ in 0..200 {
        if qsd::qsd_ready(dir) {
            return Ok(Qsd { child });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("qemu-storage-daemon did not start")
}

/// Largest gap (ms) between consecutive write completions in fio's
/// per-I/O latency log, between `from_ms` and `to_ms` of the run.
fn largest_gap(log: &Path, from_ms: u64, to_ms: u64) -> Result<u64> {
    let text = std::fs::read_to_string(log)?;
    let mut times: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .filter(|t| *t >= from_ms && *t <= to_ms)
        .collect();
    times.sort_unstable();
    Ok(times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0))
}

struct Round {
    qemu_s: f64,
    native_s: f64,
    rbd_migration_s: f64,
    pause_ms: u64,
}

fn one_round(i: usize, dir: &Path, conf: &str) -> Result<Round> {
    // QEMU engine, with fio writing through QEMU.
    let name = format!("q{i}-{}", std::process::id());
    fresh_source(&name)?;
    let qdir = dir.join(&name);
    std::fs::create_dir_all(&qdir)?;
    let guest = qsd(&name, &qdir, conf)?;
    migrate(&["catalog", "add-volume", &name, "--image", &format!("{SRC}/{name}")])?;
    migrate(&["catalog", "add-instance", &format!("vm-{name}")])?;
    migrate(&[
        "catalog",
        "attach",
        &name,
        &format!("vm-{name}"),
        "--qmp",
        qdir.join("qmp.sock").to_str().unwrap(),
    ])?;
    let mut fio = Command::new("fio")
        .args([
            "--name=guest",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=4",
            "--size=256M",
        ])
        .arg(format!(
            "--uri=nbd+unix:///vol?socket={}",
            qdir.join("nbd.sock").display()
        ))
        .args([
            "--rate_iops=500",
            "--time_based",
            "--runtime=600",
            "--write_lat_log=guest",
            "--log_avg_msec=0",
            "--output=fio.out",
        ])
        .current_dir(&qdir)
        .stdout(Stdio::null())
        .spawn()?;
    let fio_started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let from_ms = fio_started.elapsed().as_millis() as u64;
    let qemu_s = timed(|| migrate(&["start", &name, "--to", DST, "--no-progress", "--trash-delay", "0"]).map(|_| ()))?;
    let to_ms = fio_started.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_secs(1));
    // SIGINT lets fio write its logs.
    sh("kill", &["-INT", &fio.id().to_string()])?;
    // fio stopped by SIGINT exits non-zero; its summary says whether any I/O failed.
    fio.wait()?;
    drop(guest);
    let summary = std::fs::read_to_string(qdir.join("fio.out")).unwrap_or_default();
    if !summary.contains("err= 0") {
        bail!("fio through QEMU saw errors: {summary}");
    }
    let pause_ms = largest_gap(&qdir.join("guest_clat.1.log"), from_ms, to_ms)?;

    // Native engine, detached copy.
    let name = format!("n{i}-{}", std::process::id());
    fresh_source(&name)?;
    migrate(&["catalog", "add-volume", &name, "--image", &format!("{SRC}/{name}")])?;
    let native_s =
        timed(|| migrate(&["start", &name, "--to", DST, "--no-progress", "--trash-delay", "0"]).map(|_| ()))?;

    // rbd migration, detached copy.
    let name = format!("r{i}-{}", std::process::id());
    fresh_source(&name)?;
    let rbd_migration_s = timed(|| {
        sh(
            "rbd",
            &[
                "migration",
                "prepare",
                &format!("{SRC}/{name}"),
                &format!("{DST}/{name}"),
            ],
        )?;
        sh("rbd", &["migration", "execute", &format!("{DST}/{name}")])?;
        sh("rbd", &["migration", "commit", &format!("{DST}/{name}")])?;
        Ok(())
    })?;
    // Memstore keeps everything in RAM: drop this round's images.
    for prefix in ["q", "n", "r"] {
        let name = format!("{prefix}{i}-{}", std::process::id());
        let _ = sh("rbd", &["rm", "--no-progress", &format!("{DST}/{name}")]);
        let _ = sh("rbd", &["rm", "--no-progress", &format!("{SRC}/{name}")]);
    }
    sh("rbd", &["trash", "purge", SRC])?;
    Ok(Round {
        qemu_s,
        native_s,
        rbd_migration_s,
        pause_ms,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let conf = std::env::var("CEPH_CONF").context("CEPH_CONF must name the cluster (scripts/bench sets it)")?;
    let rounds: usize = std::env::var("LIVEMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    ensure_pools(&[SRC, DST, CATALOG])?;
    // 1 GiB of data in a 2 GiB image, written once; each tool moves a fresh deep copy of it.
    sh("rbd", &["create", "--size", "2G", &format!("{SRC}/data")])?;
    sh(
        "rbd",
        &[
            "bench",
            "--io-type",
            "write",
            "--io-pattern",
            "seq",
            "--io-size",
            "4M",
            "--io-total",
            "1G",
            &format!("{SRC}/data"),
        ],
    )?;
    let dir = std::env::temp_dir().join(format!("livemig-bench-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Warm-up round, not counted.
    one_round(0, &dir, &conf)?;
    let mut all = Vec::new();
    for i in 1..=rounds {
        let r = one_round(i, &dir, &conf)?;
        eprintln!(
            "round {i}: qemu engine {:.2} s, native engine {:.2} s, rbd migration {:.2} s, largest fio gap {} ms",
            r.qemu_s, r.native_s, r.rbd_migration_s, r.pause_ms
        );
        all.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mb = DATA as f64 / 1e6;
    let q = median(all.iter().map(|r| r.qemu_s).collect());
    let n = median(all.iter().map(|r| r.native_s).collect());
    let m = median(all.iter().map(|r| r.rbd_migration_s).collect());
    let mut out = format!(
        "QEMU engine vs native engine vs rbd migration: 1 GiB of data in a 2 GiB image, pool to pool, median of {rounds} after a warm-up.\n\
         The QEMU engine's guest (qemu-storage-daemon, fio 4 KiB at 500 writes/s over NBD) writes throughout.\n\n\
         | tool | seconds | MB/s of data | time vs QEMU engine |\n|---|---:|---:|---:|\n"
    );
    for (tool, s) in [
        ("livemig QEMU engine (blockdev-mirror, live)", q),
        ("livemig native engine (migrate start, detached)", n),
        ("rbd migration prepare/execute/commit (detached)", m),
    ] {
        out += &format!("| {tool} | {s:.2} | {:.0} | {:.2}x |\n", mb / s, s / q);
    }
    let pauses: Vec<f64> = all.iter().map(|r| r.pause_ms as f64).collect();
    out += &format!(
        "\nguest-visible pause across the pivot (largest gap between completed fio writes while the job ran): median {:.0} ms, max {:.0} ms\n",
        median(pauses.clone()),
        pauses.iter().cloned().fold(0.0, f64::max)
    );
    println!("\n{out}");
    let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join("qemu.md"), &out)?;
    Ok(())
}
