//! Failover of a continuous sync against real clusters: a volume on a
//! cluster of this test's own, written by a test instance, is synced to
//! the main cluster; the volume's cluster is then lost (its daemons
//! frozen) and the sync fails over. Every write acknowledged before the
//! reported point in time is on the new primary (the replica equals the
//! instance's log replayed up to a point no earlier than that); the sync's
//! driver is fenced out; when the lost cluster answers again, a resume
//! fences the old copy's writer and retires it.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use livemig::catalog::{Catalog, RadosCatalog};
use livemig::job::{JobStore, Phase};
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

fn acked_at(e: &LogEntry) -> Option<u64> {
    match e {
        LogEntry::Write { at_ms, .. } | LogEntry::Discard { at_ms, .. } => Some(*at_ms),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_fails_over_when_its_cluster_is_lost_and_retires_the_old_copy_when_it_returns() {
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

    // The instance: one 4 KiB write or discard at a time (each within one
    // object, so a point in time holds it whole or not at all).
    let dir = std::env::temp_dir().join(format!("livemig-failover-{volume}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, log) = (dir.join("control.sock"), dir.join("acked.log"));
    let mut instance = std::process::Command::new(env!("CARGO_BIN_EXE_livemig-test-instance"))
        .args(["--image", &spec, "--conf", &lost_conf, "--rate", "200", "--depth", "1"])
        .args(["--min-size", "4096", "--max-size", "4096", "--span", "16777216"])
        .arg("--control")
        .arg(&socket)
        .arg("--log")
        .arg(&log)
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
    let _instance = Reaped(instance);
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
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the sync");
    let mut driver = Reaped(driver);
    let catalog = RadosCatalog::new(cluster().connect().await.ioctx(CATALOG, "").await.unwrap());
    let store = JobStore::new(catalog.ioctx().clone());
    let mut rounds = 0;
    for _ in 0..600 {
        let out = migrate(&["sync", "status", &volume, "--json"]).output().unwrap();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let st: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
            rounds = st["sync"]["rounds"].as_u64().unwrap();
            if rounds >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rounds >= 3, "the sync applied {rounds} rounds in a minute");

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
        assert!(
            img.snap_list().await.unwrap().is_empty(),
            "the replica kept its point in time"
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
    let status = tokio::task::spawn_blocking(move || {
        let status = driver.0.wait().unwrap();
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(driver.0.stderr.as_mut().unwrap(), &mut stderr);
        (status, stderr)
    });
    let (status, stderr) = tokio::time::timeout(Duration::from_secs(120), status)
        .await
        .expect("the fenced driver ended")
        .unwrap();
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
}
