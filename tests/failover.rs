//! Failover of a continuous sync against real clusters: a volume on a
//! cluster of this test's own, written by a test instance, is synced to
//! the main cluster; the volume's cluster is then lost (its daemons
//! frozen) and the sync fails over. Every write acknowledged before the
//! reported point in time is on the new primary (the replica equals the
//! instance's log replayed up to a point no earlier than that); the sync's
//! driver is fenced out; when the lost cluster answers again, a resume
//! fences the old copy's writer and retires it. Then the way back: an
//! instance writes to the new primary, a resync brings the retired copy
//! back to the failover's point and sends only what changed since (no
//! full copy), and its cutover fails back with every write the instance
//! acknowledged on the old copy.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use livemig::catalog::{Catalog, RadosCatalog};
use livemig::hypervisor::test_instance::command;
use livemig::job::{JobStore, Phase, PhaseKind};
use livemig_test_support::{apply_log, LogEntry};

const SRC: &str = "failover-src";
const DST: &str = "failover-dst";
const CATALOG: &str = "failover-catalog";
const SIZE: u64 = 32 << 20;

fn migrate(args: &[&str]) -> std::process::Command {
    migrate_with_catalog(CATALOG, args)
}

/// Kills the child when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A spawned `migrate` driving a job, logging at info level to a file (a
/// pipe nobody reads while it runs would fill up and block it); killed
/// when the test ends, however it ends.
struct Driver {
    child: Reaped,
    log: std::path::PathBuf,
}

impl Driver {
    fn spawn(mut cmd: std::process::Command, log: std::path::PathBuf) -> Driver {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("LIVEMIG_LOG", "livemig=info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn migrate");
        Driver {
            child: Reaped(child),
            log,
        }
    }

    /// What it logged so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Lets the frozen cluster go on when the test ends, however it ends (its
/// watchdog then stops it).
struct Thawed<'a>(&'a TestCluster);

impl Drop for Thawed<'_> {
    fn drop(&mut self) {
        self.0.signal_daemons(libc::SIGCONT);
    }
}

fn entries(log: &std::path::Path) -> Vec<LogEntry> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| LogEntry::parse(l).unwrap_or_else(|| panic!("bad log line {l:?}")))
        .collect()
}

/// Starts a test instance writing 4 KiB at a time to `spec` (one write or
/// discard at a time, each within one object, so that a point in time
/// holds it whole or not at all).
fn spawn_instance(spec: &str, conf: &str, socket: &std::path::Path, log: &std::path::Path) -> Reaped {
    let _ = std::fs::remove_file(log);
    let mut instance = std::process::Command::new(env!("CARGO_BIN_EXE_livemig-test-instance"))
        .args(["--image", spec, "--conf", conf, "--rate", "200", "--depth", "1"])
        .args(["--min-size", "4096", "--max-size", "4096", "--span", "16777216"])
        .arg("--control")
        .arg(socket)
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the test instance");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(instance.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    Reaped(instance)
}

/// Waits until the sync of `volume` (driven by `driver`) has applied `rounds` rounds.
async fn wait_rounds(volume: &str, rounds: u64, driver: &mut Driver) {
    let mut done = 0;
    for _ in 0..600 {
        if let Some(status) = driver.child.0.try_wait().unwrap() {
            panic!(
                "the sync's driver ended ({status}) after {done} rounds: {}",
                driver.said()
            );
        }
        let out = migrate(&["sync", "status", volume, "--json"]).output().unwrap();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let st: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
            done = st["sync"]["rounds"].as_u64().unwrap();
            if done >= rounds {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sync of {volume} applied {done} rounds in a minute");
}

/// Waits (up to two minutes) for a spawned `migrate` (`what`) to end; its
/// status and what it logged. One still running then fails the test with
/// what it logged (and is killed).
async fn ended(what: &str, mut driver: Driver) -> (std::process::ExitStatus, String) {
    let mut status = None;
    for _ in 0..1200 {
        status = driver.child.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stderr = driver.said();
    match status {
        Some(status) => (status, stderr),
        None => panic!("{what} did not end in two minutes; it said: {stderr}"),
    }
}

fn acked_at(e: &LogEntry) -> Option<u64> {
    match e {
        LogEntry::Write { at_ms, .. } | LogEntry::Discard { at_ms, .. } => Some(*at_ms),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_fails_over_when_its_cluster_is_lost_retires_the_old_copy_when_it_returns_then_resyncs_and_fails_back() {
    let lost = own_cluster("lost");
    lost.ensure_pool(SRC);
    for p in [DST, CATALOG] {
        cluster().ensure_pool(p);
    }
    let volume = unique("fo");
    let spec = format!("{SRC}/{volume}");
    lost.cli("rbd", &["create", "--size", &format!("{}M", SIZE >> 20), &spec]);
    let lost_conf = lost.conf.display().to_string();
    for args in [
        vec!["catalog", "add-cluster", "lost", "--conf", &lost_conf],
        vec!["catalog", "add-volume", &volume, "--image", &spec, "--cluster", "lost"],
        vec![
            "catalog",
            "map-pool",
            "--from",
            &format!("lost/{SRC}"),
            "--to",
            &format!("local/{DST}"),
            "--location",
            "dr",
        ],
    ] {
        assert_ok(&migrate(&args).output().unwrap(), &format!("{args:?}"));
    }

    let dir = std::env::temp_dir().join(format!("livemig-failover-{volume}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, log) = (dir.join("control.sock"), dir.join("acked.log"));
    let _instance = spawn_instance(&spec, &lost_conf, &socket, &log);
    let vm = format!("vm-{volume}");
    let socket_arg = socket.display().to_string();
    for args in [
        vec!["catalog", "add-instance", &vm],
        vec!["catalog", "attach", &volume, &vm, "--test-instance", &socket_arg],
    ] {
        assert_ok(&migrate(&args).output().unwrap(), &format!("{args:?}"));
    }

    let driver = migrate(&[
        "sync",
        "start",
        &volume,
        "--to-cluster",
        "local",
        "--interval-ms",
        "300",
        "--lease-secs",
        "3",
        "--no-progress",
    ]);
    let mut driver = Driver::spawn(driver, dir.join("sync.log"));
    let catalog = RadosCatalog::new(cluster().connect().await.ioctx(CATALOG, "").await.unwrap());
    let store = JobStore::new(catalog.ioctx().clone());
    wait_rounds(&volume, 3, &mut driver).await;

    // While the volume's cluster answers, a failover is refused, nothing changed.
    let before = catalog.volume(&volume).await.unwrap();
    let out = migrate(&["sync", "failover", &volume]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cutover"), "{out:?}");
    assert_eq!(catalog.volume(&volume).await.unwrap(), before);

    // The site is lost.
    lost.signal_daemons(libc::SIGSTOP);
    let thaw = Thawed(&lost);
    let out = migrate(&["sync", "failover", &volume, "--connect-timeout", "3", "--json"])
        .output()
        .unwrap();
    assert_ok(&out, "failover");
    let v = catalog.volume(&volume).await.unwrap();
    assert_eq!(
        (
            v.backing.cluster.as_str(),
            v.backing.image.pool.as_str(),
            v.location.as_str(),
            v.migration.as_deref()
        ),
        ("local", DST, "dr", None)
    );
    let id = before.migration.clone().expect("the sync holds the volume");
    let job = store.load(&id).await.unwrap().record;
    assert!(matches!(job.phase, Phase::FailedOver { .. }), "{:?}", job.phase);
    let failover = job
        .sync
        .as_ref()
        .and_then(|y| y.failover.clone())
        .expect("a failover report");
    assert!(!failover.forced);
    assert!(
        !failover.fenced.is_empty(),
        "the sync's driver was not fenced out: {failover:?}"
    );

    // The new primary holds the instance's writes up to a point no earlier
    // than the reported one: its log replayed up to some entry at or after
    // the last acknowledged by then.
    let acked: Vec<LogEntry> = entries(&log).into_iter().filter(|e| acked_at(e).is_some()).collect();
    let must_hold = acked
        .iter()
        .take_while(|e| acked_at(e).unwrap() <= failover.point_ms)
        .count();
    assert!(must_hold > 0, "no write was acknowledged before the point in time");
    let replica = {
        let io = cluster().connect().await.ioctx(DST, "").await.unwrap();
        let img = io.open_image_read_only(&volume, None).await.unwrap();
        let snaps: Vec<String> = img.snap_list().await.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(
            snaps,
            std::slice::from_ref(&failover.point),
            "the new primary keeps the point, and only it"
        );
        let data = read_all(&img).await;
        img.close().await;
        data
    };
    let mut model = vec![0u8; SIZE as usize];
    apply_log(&mut model, &acked[..must_hold]);
    let mut held = (model == replica).then_some(must_hold);
    for (k, e) in acked.iter().enumerate().skip(must_hold) {
        if held.is_some() {
            break;
        }
        apply_log(&mut model, std::slice::from_ref(e));
        if model == replica {
            held = Some(k + 1);
        }
    }
    let held = held.unwrap_or_else(|| {
        panic!(
            "the replica is not the instance's writes up to any point at or after the reported one ({} of {} acknowledged)",
            must_hold,
            acked.len()
        )
    });
    eprintln!(
        "failover: point {} ms before it, {} of {} acknowledged writes kept ({} required)",
        failover.at_ms - failover.point_ms,
        held,
        acked.len(),
        must_hold
    );

    // The lost cluster answers again: the driver, fenced out, ends in an
    // error; a resume fences the old copy's writer and retires it.
    drop(thaw);
    let (status, stderr) = ended("the fenced sync driver", driver).await;
    assert!(!status.success(), "the fenced driver succeeded: {stderr}");
    let out = migrate(&["resume", &id, "--wait", "30", "--lease-secs", "3", "--no-progress"])
        .output()
        .unwrap();
    assert_ok(&out, "resume after the lost cluster is back");
    let job = store.load(&id).await.unwrap().record;
    assert_eq!(job.phase, Phase::Done);
    let failover = job.sync.and_then(|y| y.failover).unwrap();
    let retired_at = failover.source_retired_at_ms.expect("the lost source retired");
    let lost_io = lost.connect().await.ioctx(SRC, "").await.unwrap();
    assert!(
        !lost_io.image_exists(&volume).await.unwrap(),
        "the old copy is still listed"
    );
    // The old copy's writer can write no more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late: Vec<LogEntry> = entries(&log)
        .into_iter()
        .filter(|e| matches!(e, LogEntry::Write { at_ms, .. } if *at_ms > retired_at))
        .collect();
    assert!(
        late.is_empty(),
        "the old copy took writes after it was retired: {late:?}"
    );

    // The way back. The cloud starts the instance again on the new primary.
    let main_conf = cluster().conf.display().to_string();
    let (socket2, log2) = (dir.join("control2.sock"), dir.join("acked2.log"));
    let instance2 = spawn_instance(&format!("{DST}/{volume}"), &main_conf, &socket2, &log2);
    let vm2 = format!("vm2-{volume}");
    let socket2_arg = socket2.display().to_string();
    for args in [
        vec!["catalog", "detach", &volume, &vm],
        vec!["catalog", "add-instance", &vm2],
        vec!["catalog", "attach", &volume, &vm2, "--test-instance", &socket2_arg],
    ] {
        assert_ok(&migrate(&args).output().unwrap(), &format!("{args:?}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The resync killed as the old copy is back from the trash, then as its
    // point is named on both sides: each time a resume goes on from there.
    let resync_args = [
        "sync",
        "resync",
        &volume,
        "--interval-ms",
        "300",
        "--lease-secs",
        "3",
        "--no-progress",
    ];
    run_killed_at(migrate(&resync_args), "resync-after-restore");
    let back = catalog
        .volume(&volume)
        .await
        .unwrap()
        .migration
        .expect("the resync holds the volume");
    let resume_args = ["resume", &back, "--wait", "30", "--lease-secs", "3", "--no-progress"];
    run_killed_at(migrate(&resume_args), "resync-after-point-named");
    let mut resync = Driver::spawn(migrate(&resume_args), dir.join("resync.log"));
    wait_rounds(&volume, 2, &mut resync).await;
    let job = store.load(&back).await.unwrap().record;
    assert!(
        !job.history.iter().any(|(p, _)| *p == PhaseKind::Copying),
        "the resync copied the volume whole: {:?}",
        job.history
    );
    // Only what the volume changed since the point goes back: at most what
    // the instance wrote to the new primary (the old copy's own writes
    // after the point are undone inside its cluster).
    let first = job.live.as_ref().unwrap().rounds[0].clone();
    let written: u64 = entries(&log2)
        .iter()
        .map(|e| match e {
            LogEntry::Write { len, .. } | LogEntry::Discard { len, .. } => *len,
            _ => 0,
        })
        .sum();
    assert!(
        first.changed_bytes > 0 && first.changed_bytes <= written,
        "the resync's first round sent {} bytes; the instance had written {written} to the new primary",
        first.changed_bytes
    );
    eprintln!(
        "resync: first round {} bytes, the instance wrote {written} (volume {SIZE})",
        first.changed_bytes
    );

    // Failback: the resync's cutover.
    let out = migrate(&["sync", "cutover", &volume, "--json"]).output().unwrap();
    assert_ok(&out, "the resync's cutover");
    let (status, stderr) = ended("the resync's driver after its cutover", resync).await;
    assert!(status.success(), "the resync's driver: {stderr}");
    let v = catalog.volume(&volume).await.unwrap();
    assert_eq!(
        (&v.backing, v.location.as_str(), v.migration.as_deref()),
        (&before.backing, before.location.as_str(), None)
    );
    assert_eq!(store.load(&back).await.unwrap().record.phase, Phase::Done);
    command(&socket2_arg, "stop").await.expect("stop the instance");
    let mut instance2 = instance2;
    assert!(instance2.0.wait().unwrap().success(), "the instance failed");
    let acked2: Vec<LogEntry> = entries(&log2).into_iter().filter(|e| acked_at(e).is_some()).collect();
    let mut model = replica.clone();
    apply_log(&mut model, &acked2);
    let img = lost_io.open_image_read_only(&volume, None).await.unwrap();
    let failed_back = read_all(&img).await;
    img.close().await;
    assert!(
        failed_back == model,
        "the old copy, failed back to, is not the point plus the {} writes acknowledged since",
        acked2.len()
    );
    let dst_io = cluster().connect().await.ioctx(DST, "").await.unwrap();
    assert!(
        !dst_io.image_exists(&volume).await.unwrap(),
        "the primary failed back from is still listed"
    );
}
