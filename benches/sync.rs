//! Continuous sync bench: a test instance writes a steady 2,000 x 4 KiB
//! writes/s to a 1 GiB volume with 256 MiB of data while `migrate sync`
//! keeps a replica in another pool, then cuts over. Reports the RPO
//! (`sync status`, sampled every 200 ms once the first copy is complete):
//! median, p99 and max; the writer's p99 latency without a sync and during
//! one; the rounds; and the cutover's downtime. Every acknowledged write is
//! verified on the destination after the cutover.
//!
//! The replica is on the same cluster, over loopback: this machine's kernel
//! has no `netem` to shape a WAN-like link.
//!
//! Run with `scripts/bench` (LIVEMIG_BENCH_ONLY=sync for this one alone);
//! LIVEMIG_BENCH_SYNC_SECS (default 60) is how long the sync runs,
//! LIVEMIG_BENCH_SYNC_INTERVAL_MS (default 1000) its round interval.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod common;
use common::{control, ensure_pools, migrate_bin, status};

const SRC: &str = "bench-sync-src";
const DST: &str = "bench-sync-dst";
const CATALOG: &str = "bench-sync-catalog";

fn migrate(args: &[&str]) -> Result<String> {
    common::migrate(CATALOG, args)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    std::env::var("CEPH_CONF").context("CEPH_CONF must name the cluster (scripts/bench sets it)")?;
    let secs = env_or("LIVEMIG_BENCH_SYNC_SECS", 60);
    let interval_ms = env_or("LIVEMIG_BENCH_SYNC_INTERVAL_MS", 1000);
    ensure_pools(&[SRC, DST, CATALOG])?;
    let dir = std::env::temp_dir().join(format!("livemig-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let volume = format!("sync-{}", std::process::id());
    let image = format!("{SRC}/{volume}");
    let socket = dir.join("control.sock");
    let log = dir.join("acked.log");
    let writer = common::steady_writer(CATALOG, &volume, &image, &socket, &log, 1)?;
    std::thread::sleep(Duration::from_secs(2));
    control(&socket, "stats-reset")?;
    std::thread::sleep(Duration::from_secs(10));
    let idle = status(&socket)?;

    let interval = interval_ms.to_string();
    let mut driver = Command::new(migrate_bin())
        .args(["sync", "--catalog-pool", CATALOG, "start", &volume, "--to", DST])
        .args(["--interval-ms", &interval, "--no-progress", "--trash-delay", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let sync_status = || -> Result<Option<serde_json::Value>> {
        match migrate(&["sync", "status", &volume, "--json"]) {
            Ok(out) => Ok(Some(
                serde_json::from_str::<serde_json::Value>(out.lines().last().unwrap_or("{}"))?["sync"].clone(),
            )),
            Err(_) => Ok(None),
        }
    };
    // The first copy.
    let started = Instant::now();
    loop {
        if let Some(st) = sync_status()? {
            if st["rpo_ms"].is_u64() {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the sync's first copy did not complete in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let first_copy = started.elapsed();
    control(&socket, "stats-reset")?;
    let mut rpo = Vec::new();
    let mut behind = Vec::new();
    let sampling = Instant::now();
    let mut rounds_before = None;
    let mut rounds = 0;
    while sampling.elapsed() < Duration::from_secs(secs) {
        if let Some(st) = sync_status()? {
            rpo.extend(st["rpo_ms"].as_u64());
            behind.extend(st["behind_bytes"].as_u64());
            rounds = st["rounds"].as_u64().unwrap_or(0);
            rounds_before.get_or_insert(rounds);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = status(&socket)?;
    let out = migrate(&["sync", "cutover", &volume, "--json"])?;
    let status_code = driver.wait()?;
    if !status_code.success() {
        let mut e = String::new();
        std::io::Read::read_to_string(driver.stderr.as_mut().unwrap(), &mut e)?;
        bail!("the sync's driver failed: {e}");
    }
    let verified = common::verify_and_drop(&socket, writer, &log, DST, &volume, SRC)?;
    eprintln!("{verified}");
    let _ = std::fs::remove_dir_all(&dir);

    let done: serde_json::Value = serde_json::from_str(out.lines().last().context("no output from sync cutover")?)?;
    let cutover = &done["job"]["live"]["cutover"];
    let downtime_ms = cutover["resumed_at_ms"].as_u64().context("no resume")? - cutover["held_at_ms"].as_u64().unwrap();
    let p99_idle = idle["p99_us"].as_u64().unwrap().max(1);
    let p99_during = during["p99_us"].as_u64().unwrap();
    let sampled_rounds = rounds - rounds_before.unwrap_or(rounds);
    if rpo.is_empty() {
        bail!("no RPO sample");
    }
    let mut t = format!(
        "Continuous sync, 1 GiB volume with 256 MiB of data, writer at a steady 2,000 x 4 KiB writes/s (8 in flight), a round every {interval_ms} ms, {secs} s sampled every 200 ms after the first copy ({:.1} s); replica in another pool of the same cluster (loopback: no netem here); every acknowledged write verified after the cutover.\n\n",
        first_copy.as_secs_f64()
    );
    t += "| | value |\n|---|---:|\n";
    t += &format!("| RPO median (ms) | {} |\n", percentile(rpo.clone(), 0.5));
    t += &format!(
        "| RPO p99 (ms; goal: at most 5,000) | {} |\n",
        percentile(rpo.clone(), 0.99)
    );
    t += &format!("| RPO max (ms) | {} |\n", rpo.iter().max().unwrap());
    t += &format!(
        "| bytes behind, median (KiB) | {} |\n",
        percentile(behind.clone(), 0.5) >> 10
    );
    t += &format!("| rounds in {secs} s | {sampled_rounds} |\n");
    t += &format!("| writer p99 without sync (us) | {p99_idle} |\n");
    t += &format!("| writer p99 during sync (us) | {p99_during} |\n");
    t += &format!(
        "| writer p99 during / without (goal: at most 1.2x) | {:.2}x |\n",
        p99_during as f64 / p99_idle as f64
    );
    t += &format!("| cutover downtime, hold to resume (ms) | {downtime_ms} |\n");
    println!("\n{t}");
    let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join("sync.md"), &t)?;
    Ok(())
}
