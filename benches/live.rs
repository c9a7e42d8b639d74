//! Live migration bench: a test instance writes a steady 2,000 x 4 KiB
//! writes/s to its volume while `migrate start` moves it to another pool.
//! Reports, per run and as medians: the downtime (hold to resume, from the
//! job record), the replay rounds before the cutover, the writer's p99 write
//! latency without a migration and during one, and the largest gap between
//! two acknowledged writes the writer saw. Every run is verified: each
//! acknowledged write is on the destination.
//!
//! Run with `scripts/bench` (LIVEMIG_BENCH_ONLY=live for this one alone).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

mod common;
use common::{control, ensure_pools, status};

const SRC: &str = "bench-live-src";
const DST: &str = "bench-live-dst";
const CATALOG: &str = "bench-live-catalog";

fn migrate(args: &[&str]) -> Result<String> {
    common::migrate(CATALOG, args)
}

struct Run {
    downtime_ms: u64,
    /// hold, fence, final delta, switch, re-point + resume (ms).
    steps_ms: [u64; 5],
    rounds: usize,
    final_bytes: u64,
    seconds: f64,
    p99_idle_us: u64,
    p99_during_us: u64,
    max_gap_during_us: u64,
}

fn one_run(i: usize, dir: &Path) -> Result<Run> {
    let volume = format!("live{i}-{}", std::process::id());
    let image = format!("{SRC}/{volume}");
    let socket = dir.join(format!("{volume}.sock"));
    let log = dir.join(format!("{volume}.log"));
    let writer = common::steady_writer(CATALOG, &volume, &image, &socket, &log, i as u64)?;
    std::thread::sleep(Duration::from_secs(2));
    control(&socket, "stats-reset")?;
    std::thread::sleep(Duration::from_secs(5));
    let idle = status(&socket)?;
    control(&socket, "stats-reset")?;
    let t = Instant::now();
    let out = migrate(&[
        "start",
        &volume,
        "--to",
        DST,
        "--json",
        "--no-progress",
        "--trash-delay",
        "0",
    ])?;
    let seconds = t.elapsed().as_secs_f64();
    let during = status(&socket)?;
    let verified = common::verify_and_drop(&socket, writer, &log, (DST, None), &volume, SRC)?;
    eprintln!("run {i}: {verified}");
    let done: serde_json::Value = serde_json::from_str(out.lines().last().context("no output from migrate start")?)?;
    let live = &done["job"]["live"];
    let rounds = live["rounds"].as_array().context("no rounds")?;
    let cutover = &live["cutover"];
    let downtime_ms = cutover["resumed_at_ms"].as_u64().context("no resume")? - cutover["held_at_ms"].as_u64().unwrap();
    let step = |name: &str| cutover["steps"][name].as_u64().unwrap_or(0);
    Ok(Run {
        downtime_ms,
        steps_ms: [
            step("hold_ms"),
            step("fence_ms"),
            step("final_delta_ms"),
            step("switch_ms"),
            step("repoint_ms"),
        ],
        rounds: rounds.iter().filter(|r| r["cutover"] == false).count(),
        final_bytes: rounds
            .iter()
            .find(|r| r["cutover"] == true)
            .map_or(0, |r| r["changed_bytes"].as_u64().unwrap()),
        seconds,
        p99_idle_us: idle["p99_us"].as_u64().unwrap(),
        p99_during_us: during["p99_us"].as_u64().unwrap(),
        max_gap_during_us: during["max_gap_us"].as_u64().unwrap(),
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    std::env::var("CEPH_CONF").context("CEPH_CONF must name the cluster (scripts/bench sets it)")?;
    let runs: usize = std::env::var("LIVEMIG_BENCH_LIVE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    ensure_pools(&[SRC, DST, CATALOG])?;
    let dir = std::env::temp_dir().join(format!("livemig-bench-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut all = Vec::new();
    for i in 0..runs {
        let r = one_run(i, &dir)?;
        eprintln!(
            "run {i}: downtime {} ms (hold/fence/final/switch/repoint {:?}), {} rounds, final delta {} KiB, {:.1} s, writer p99 {} us idle / {} us during, largest gap {} ms",
            r.downtime_ms,
            r.steps_ms,
            r.rounds,
            r.final_bytes >> 10,
            r.seconds,
            r.p99_idle_us,
            r.p99_during_us,
            r.max_gap_during_us / 1000
        );
        all.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = String::new();
    out += &format!(
        "Live migration, 1 GiB volume with 256 MiB of data, writer at a steady 2,000 x 4 KiB writes/s (8 in flight), {runs} runs; every acknowledged write verified on the destination.\n\n"
    );
    out += "| | median | max |\n|---|---:|---:|\n";
    let row = |name: &str, v: Vec<u64>| format!("| {name} | {} | {} |\n", median(v.clone()), v.iter().max().unwrap());
    out += &row(
        "downtime, hold to resume (ms; target: median < 100)",
        all.iter().map(|r| r.downtime_ms).collect(),
    );
    for (i, name) in [
        "hold",
        "fence (the source's lock)",
        "final delta",
        "catalog switch",
        "re-point and resume",
    ]
    .iter()
    .enumerate()
    {
        out += &row(
            &format!("- of which {name} (ms)"),
            all.iter().map(|r| r.steps_ms[i]).collect(),
        );
    }
    out += &row(
        "replay rounds before the cutover",
        all.iter().map(|r| r.rounds as u64).collect(),
    );
    out += &row(
        "final delta applied while held (KiB)",
        all.iter().map(|r| r.final_bytes >> 10).collect(),
    );
    out += &row(
        "whole migration (ms)",
        all.iter().map(|r| (r.seconds * 1000.0) as u64).collect(),
    );
    out += &row(
        "writer p99 latency without migration (us)",
        all.iter().map(|r| r.p99_idle_us).collect(),
    );
    out += &row(
        "writer p99 latency during migration (us)",
        all.iter().map(|r| r.p99_during_us).collect(),
    );
    out += &row(
        "largest gap between acknowledged writes during migration (ms)",
        all.iter().map(|r| r.max_gap_during_us / 1000).collect(),
    );
    let idle = median(all.iter().map(|r| r.p99_idle_us).collect()).max(1);
    let during = median(all.iter().map(|r| r.p99_during_us).collect());
    out += &format!("\nwriter p99 during / without: {:.2}x\n", during as f64 / idle as f64);
    println!("\n{out}");
    let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join("live.md"), &out)?;
    Ok(())
}
