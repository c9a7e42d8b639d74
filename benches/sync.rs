//! Continuous sync bench: a test instance writes a steady 2,000 x 4 KiB
//! writes/s to a 1 GiB volume with 256 MiB of data while `migrate sync`
//! keeps a replica (on another cluster: see below), then cuts over.
//! Reports the RPO (`sync status`, sampled every second once the first
//! copy is complete):
//! median, p99 and max; the writer's p99 latency without a sync and during
//! one; the rounds; and the cutover's downtime. Every acknowledged write is
//! verified on the destination after the cutover.
//!
//! The replica is on another cluster when LIVEMIG_BENCH_SYNC_SITE_CONF names
//! one (`scripts/bench` starts it behind a WAN-like link,
//! `scripts/dev-cluster up --wan`, and says which in
//! LIVEMIG_BENCH_SYNC_WAN), else in another pool of the same cluster.
//!
//! Run with `scripts/bench` (LIVEMIG_BENCH_ONLY=sync for this one alone);
//! LIVEMIG_BENCH_SYNC_SECS (default 60) is how long the sync runs,
//! LIVEMIG_BENCH_SYNC_INTERVAL_MS (default 1000) its round interval.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod common;
use common::{control, ensure_pools, migrate_bin, status, stop};

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
    let site = std::env::var("LIVEMIG_BENCH_SYNC_SITE_CONF")
        .ok()
        .filter(|c| !c.is_empty());
    let replica_is = match &site {
        Some(conf) => {
            ensure_pools(&[SRC, CATALOG])?;
            for args in [
                vec!["-c", conf, "osd", "pool", "create", DST, "32", "32"],
                vec!["-c", conf, "osd", "pool", "application", "enable", DST, "rbd"],
            ] {
                common::sh("ceph", &args)?;
            }
            migrate(&["catalog", "add-cluster", "site", "--conf", conf])?;
            let from = format!("local/{SRC}");
            let to = format!("site/{DST}");
            migrate(&["catalog", "map-pool", "--from", &from, "--to", &to])?;
            match std::env::var("LIVEMIG_BENCH_SYNC_WAN").ok().as_deref().and_then(|w| w.split_once(':')) {
                Some((delay, rate)) => format!(
                    "on another cluster behind a WAN-like link ({delay} ms each way, {rate} Mbit/s: scripts/dev-cluster --wan)"
                ),
                None => "on another cluster".to_owned(),
            }
        }
        None => {
            ensure_pools(&[SRC, DST, CATALOG])?;
            "in another pool of the same cluster (loopback)".to_owned()
        }
    };
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
    let to: &[&str] = match site {
        Some(_) => &["--to-cluster", "site"],
        None => &["--to", DST],
    };
    let mut driver = Command::new(migrate_bin())
        .args(["sync", "--catalog-pool", CATALOG, "start", &volume])
        .args(to)
        .args(["--interval-ms", &interval, "--no-progress", "--trash-delay", "0"])
        // A cutover converges for at most this many rounds, then cuts over.
        .args(["--max-rounds", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The first copy.
    let started = Instant::now();
    loop {
        if let Some(st) = sync_state(&volume)? {
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
        if let Some(st) = sync_state(&volume)? {
            rpo.extend(st["rpo_ms"].as_u64());
            behind.extend(st["behind_bytes"].as_u64());
            rounds = st["rounds"].as_u64().unwrap_or(0);
            rounds_before.get_or_insert(rounds);
        }
        // Each status diffs the volume since the replica's point: sampled
        // more often, it adds to the load it measures.
        std::thread::sleep(Duration::from_secs(1));
    }
    let during = status(&socket)?;
    let out = migrate(&["sync", "cutover", &volume, "--json"])?;
    let status_code = driver.wait()?;
    if !status_code.success() {
        let mut e = String::new();
        std::io::Read::read_to_string(driver.stderr.as_mut().unwrap(), &mut e)?;
        bail!("the sync's driver failed: {e}");
    }
    let verified = common::verify_and_drop(&socket, writer, &log, (DST, site.as_deref()), &volume, SRC)?;
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
        "Continuous sync, 1 GiB volume with 256 MiB of data, writer at a steady 2,000 x 4 KiB writes/s (8 in flight), a round every {interval_ms} ms (a cutover converging for at most 4 rounds), {secs} s sampled every second after the first copy ({:.1} s); replica {replica_is}; every acknowledged write verified after the cutover.\n\n",
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
    if let Some(conf) = &site {
        t += &failover_and_resync(conf)?;
    }
    println!("\n{t}");
    let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join("sync.md"), &t)?;
    Ok(())
}

/// Sends `signal` to the daemons of the cluster whose conf is `conf` (as
/// scripts/dev-cluster records their PIDs beside it).
fn signal_daemons(conf: &str, signal: i32) -> Result<()> {
    let daemons = std::path::Path::new(conf).with_file_name("daemons");
    for pid in std::fs::read_to_string(&daemons)?
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) only sends a signal to a daemon of the bench's own cluster.
        unsafe { libc::kill(pid, signal) };
    }
    Ok(())
}

/// The sync status of `volume` (`None` while there is none to read).
fn sync_state(volume: &str) -> Result<Option<serde_json::Value>> {
    match migrate(&["sync", "status", volume, "--json"]) {
        Ok(out) => Ok(Some(
            serde_json::from_str::<serde_json::Value>(out.lines().last().unwrap_or("{}"))?["sync"].clone(),
        )),
        Err(_) => Ok(None),
    }
}

fn wait_rounds(volume: &str, rounds: u64) -> Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        if let Some(st) = sync_state(volume)?.filter(|st| st["rounds"].as_u64().unwrap_or(0) >= rounds) {
            return Ok(st);
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the sync of {volume} did not apply {rounds} rounds in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Failover and resync: a volume of the site's cluster (a writer at 200 x
/// 4 KiB/s over the link) synced to this cluster; the site lost (its
/// daemons stopped) and the failover timed; the site back and the old
/// copy retired; a writer on the new primary for 10 s, then held; the
/// resync's first round against the bytes the volume changed since the
/// point (an exact diff from the point's snapshot). The resync is then
/// stopped and everything dropped.
fn failover_and_resync(site: &str) -> Result<String> {
    const FSRC: &str = "bench-fo-src";
    const FDST: &str = "bench-fo-dst";
    for args in [
        vec!["-c", site, "osd", "pool", "create", FSRC, "8", "8"],
        vec!["-c", site, "osd", "pool", "application", "enable", FSRC, "rbd"],
    ] {
        common::sh("ceph", &args)?;
    }
    ensure_pools(&[FDST])?;
    let (from, to) = (format!("site/{FSRC}"), format!("local/{FDST}"));
    migrate(&["catalog", "map-pool", "--from", &from, "--to", &to, "--location", "dr"])?;
    let volume = format!("fo-{}", std::process::id());
    let image = format!("{FSRC}/{volume}");
    common::sh("rbd", &["-c", site, "create", "--size", "256M", &image])?;
    let dir = std::env::temp_dir().join(format!("livemig-bench-fo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let writer_args: Vec<&str> =
        "--rate 200 --depth 1 --min-size 4096 --max-size 4096 --discard-percent 0 --span 134217728"
            .split(' ')
            .collect();
    let (socket, log) = (dir.join("old.sock"), dir.join("old.log"));
    let mut args = vec!["--conf", site];
    args.extend(&writer_args);
    let mut old_writer = common::spawn_instance(&image, &socket, &log, &args)?;
    let socket_arg = socket.display().to_string();
    let vm = format!("vm-{volume}");
    migrate(&["catalog", "add-volume", &volume, "--image", &image, "--cluster", "site"])?;
    migrate(&["catalog", "add-instance", &vm])?;
    migrate(&["catalog", "attach", &volume, &vm, "--test-instance", &socket_arg])?;
    let sync_args = ["--interval-ms", "1000", "--lease-secs", "5", "--no-progress"];
    let mut driver = Command::new(migrate_bin())
        .args([
            "sync",
            "--catalog-pool",
            CATALOG,
            "start",
            &volume,
            "--to-cluster",
            "local",
        ])
        .args(sync_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_rounds(&volume, 3)?;

    // The site is lost.
    signal_daemons(site, libc::SIGSTOP)?;
    let started = Instant::now();
    let failed_over = migrate(&["sync", "failover", &volume, "--connect-timeout", "3", "--json"]);
    let failover_ms = started.elapsed().as_millis();
    signal_daemons(site, libc::SIGCONT)?;
    let failed_over: serde_json::Value =
        serde_json::from_str(failed_over?.lines().last().context("no output from sync failover")?)?;
    let job = failed_over["job"]["id"].as_str().context("no job")?.to_owned();
    let report = &failed_over["job"]["sync"]["failover"];
    let point = report["point"].as_str().context("no point")?.to_owned();
    let point_age_ms = report["at_ms"].as_u64().unwrap_or(0) - report["point_ms"].as_u64().unwrap_or(0);
    // The fenced driver ends once the site answers again; the resume
    // retires the old copy.
    let until = Instant::now() + Duration::from_secs(120);
    while driver.try_wait()?.is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = driver.kill();
    let _ = driver.wait();
    migrate(&["resume", &job, "--wait", "60", "--lease-secs", "5", "--no-progress"])?;
    let _ = old_writer.kill();
    let _ = old_writer.wait();

    // The instance runs again on the new primary, for a while.
    let primary = format!("{FDST}/{volume}");
    let (socket2, log2) = (dir.join("new.sock"), dir.join("new.log"));
    let writer = common::spawn_instance(&primary, &socket2, &log2, &writer_args)?;
    let socket2_arg = socket2.display().to_string();
    let vm2 = format!("vm2-{volume}");
    migrate(&["catalog", "detach", &volume, &vm])?;
    migrate(&["catalog", "add-instance", &vm2])?;
    migrate(&["catalog", "attach", &volume, &vm2, "--test-instance", &socket2_arg])?;
    std::thread::sleep(Duration::from_secs(10));
    control(&socket2, "hold")?;
    let diff = common::sh("rbd", &["diff", "--from-snap", &point, &primary, "--format", "json"])?;
    let changed: u64 = serde_json::from_str::<Vec<serde_json::Value>>(&diff)?
        .iter()
        .filter_map(|e| e["length"].as_u64())
        .sum();
    let mut resync = Command::new(migrate_bin())
        .args(["sync", "--catalog-pool", CATALOG, "resync", &volume])
        .args(sync_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let st = wait_rounds(&volume, 1)?;
    let back = st["job"].as_str().context("no resync job")?.to_owned();
    let record: serde_json::Value = serde_json::from_str(
        migrate(&["status", &back, "--json"])?
            .lines()
            .last()
            .context("no status")?,
    )?;
    let sent = record["jobs"][0]["live"]["rounds"][0]["changed_bytes"]
        .as_u64()
        .context("no first round")?;
    control(&socket2, "resume")?;
    migrate(&["sync", "stop", &volume])?;
    let _ = resync.wait();
    stop(&socket2, writer)?;
    common::sh("rbd", &["rm", "--no-progress", &primary])?;
    let _ = std::fs::remove_dir_all(&dir);

    let mut t = String::from(
        "\nFailover and resync: a volume of the site's cluster (written at 200 x 4 KiB/s over the link) synced to this one, a round every 1,000 ms; the site lost (its daemons stopped); then back, the old copy retired, a writer on the new primary for 10 s, held; a resync.\n\n| | value |\n|---|---:|\n",
    );
    t += &format!("| failover, command start to end (ms; goal: under 10,000; includes the 3 s probe of the lost cluster) | {failover_ms} |\n");
    t += &format!("| point in time's age at the failover (ms) | {point_age_ms} |\n");
    t += &format!(
        "| changed on the new primary since the point (KiB) | {} |\n",
        changed >> 10
    );
    t += &format!("| the resync's first round sent (KiB) | {} |\n", sent >> 10);
    t += &format!(
        "| sent / changed (goal: at most 1.2x) | {:.2}x |\n",
        sent as f64 / changed.max(1) as f64
    );
    Ok(t)
}
