//! Live migration against the real cluster: a test instance (a real librbd
//! writer) writes during the whole migration; afterwards every write it
//! acknowledged must be on the destination (the image equals the model
//! rebuilt from its log), the instance runs on the destination, and the
//! job's record tells the rounds and the downtime. Also: a writer that
//! ignores the hold is fenced, and SIGKILLs at every live kill point end
//! consistently after resume or abort, with the instance never left held.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use livemig::catalog::{Access, Backing, Catalog, RadosCatalog, Volume, VolumeStatus};
use livemig::ceph::{CreateOptions, Image, IoCtx};
use livemig::hypervisor::test_instance::command;
use livemig::hypervisor::{Hypervisor, TestInstanceHook};
use livemig::job::{JobRecord, JobStore, Phase};
use livemig::spec::ImageSpec;
use livemig_test_support::{apply_log, LogEntry};

const SRC: &str = "live-src";
const DST: &str = "live-dst";
const CATALOG: &str = "live-catalog";
const LEASE: &str = "3";
const SIZE: u64 = 64 << 20;
/// The test instance writes within the first 40 MiB (see `setup`).
const SPAN: u64 = 40 << 20;

/// A running test instance.
struct TestInstance {
    child: Child,
    socket: String,
    log: PathBuf,
}

impl TestInstance {
    fn spawn(image: &ImageSpec, tag: &str, extra: &[&str]) -> TestInstance {
        let dir = std::env::temp_dir().join(format!("livemig-live-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock").to_string_lossy().into_owned();
        let log = dir.join("acked.log");
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new(env!("CARGO_BIN_EXE_livemig-test-instance"))
            .args(["--image", &image.to_string(), "--control", &socket])
            .arg("--conf")
            .arg(&cluster().conf)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test instance");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the test instance did not start");
        TestInstance { child, socket, log }
    }

    async fn status(&self) -> serde_json::Value {
        let s = command(&self.socket, "status").await.expect("instance status");
        serde_json::from_str(&s).unwrap()
    }

    /// Waits until at least `n` more operations were acknowledged.
    async fn wait_acks(&self, n: u64) {
        let start = self.status().await["acked_total"].as_u64().unwrap();
        for _ in 0..600 {
            if self.status().await["acked_total"].as_u64().unwrap() >= start + n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test instance acknowledged fewer than {n} writes in 30 s");
    }

    /// Drains, flushes and stops the instance; returns its log.
    async fn stop(mut self) -> Vec<LogEntry> {
        if let Err(e) = command(&self.socket, "stop").await {
            let status = self.child.wait().unwrap();
            panic!("stop the instance: {e} (the instance exited: {status:?})");
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the test instance failed: {status:?}");
        self.entries()
    }

    fn entries(&self) -> Vec<LogEntry> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| LogEntry::parse(l).unwrap_or_else(|| panic!("bad log line {l:?}")))
            .collect()
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    src_io: IoCtx,
    dst_io: IoCtx,
    catalog: RadosCatalog,
    store: JobStore,
    volume: String,
    original: Volume,
    /// The source's content before the instance started.
    initial: Vec<u8>,
    instance: Option<TestInstance>,
}

/// A 64 MiB volume with 16 MiB of data, attached to a running test
/// instance registered in the catalog.
async fn setup(tag: &str, instance_args: &[&str]) -> Env {
    for p in [SRC, DST, CATALOG] {
        cluster().ensure_pool(p);
    }
    let c = cluster().connect().await;
    let src_io = c.ioctx(SRC, "").await.unwrap();
    let dst_io = c.ioctx(DST, "").await.unwrap();
    let catalog_io = c.ioctx(CATALOG, "").await.unwrap();
    let volume = unique(tag);
    src_io
        .create_image(&volume, SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&volume).await.unwrap();
    write_at(&img, 8 << 20, random_bytes(7, 16 << 20)).await;
    let initial = read_all(&img).await;
    img.close().await;
    let spec = ImageSpec::new(SRC, &volume);
    let mut args = vec!["--span", "41943040"];
    args.extend_from_slice(instance_args);
    let instance = TestInstance::spawn(&spec, &volume, &args);
    let catalog = RadosCatalog::new(catalog_io.clone());
    let access = Access::TestInstance {
        socket: instance.socket.clone(),
    };
    let original = register_attached_volume(&catalog, SRC, &volume, SIZE, access).await;
    instance.wait_acks(20).await;
    Env {
        src_io,
        dst_io,
        catalog,
        store: JobStore::new(catalog_io),
        volume,
        original,
        initial,
        instance: Some(instance),
    }
}

fn migrate(args: &[&str]) -> Command {
    migrate_with_catalog(CATALOG, args)
}

/// Bytes in 512-byte sectors of `data` that hold anything but zeros.
fn nonzero_bytes(data: &[u8]) -> u64 {
    data.chunks(512)
        .filter(|c| c.iter().any(|b| *b != 0))
        .map(|c| c.len() as u64)
        .sum()
}

async fn allocated(img: &Image) -> u64 {
    img.allocated_bytes(false).await.unwrap()
}

impl Env {
    fn instance(&self) -> &TestInstance {
        self.instance.as_ref().unwrap()
    }

    fn start_args(&self, extra: &[&str]) -> Vec<String> {
        [
            "start",
            &self.volume,
            "--to",
            DST,
            "--lease-secs",
            LEASE,
            "--json",
            "--no-progress",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    }

    async fn job(&self) -> JobRecord {
        for id in self.store.ids().await.unwrap() {
            let r = self.store.load(&id).await.unwrap().record;
            if r.volume_id == self.volume {
                return r;
            }
        }
        panic!("no job for volume {}", self.volume);
    }

    /// Stops the instance and returns the model of the image it wrote:
    /// the initial content with every acknowledged operation applied.
    async fn stop_and_model(&mut self) -> (Vec<u8>, Vec<LogEntry>) {
        let entries = self.instance.take().unwrap().stop().await;
        let mut model = self.initial.clone();
        apply_log(&mut model, &entries);
        (model, entries)
    }

    async fn content(&self, io: &IoCtx) -> Vec<u8> {
        let img = io.open_image_read_only(&self.volume, None).await.unwrap();
        let data = read_all(&img).await;
        img.close().await;
        data
    }

    /// The instance runs (not held) on `pool`'s image and the catalog agrees.
    async fn assert_running_on(&self, pool: &str) {
        let st = self.instance().status().await;
        assert_eq!(st["held"], false, "the instance was left held: {st}");
        assert_eq!(st["image"], format!("{pool}/{}", self.volume), "{st}");
        let v = self.catalog.volume(&self.volume).await.unwrap();
        assert_eq!(v.backing.image.pool, pool);
        assert_eq!(v.migration, None);
        assert_eq!(v.status, VolumeStatus::InUse);
        let atts = self.catalog.attachments(&self.volume).await.unwrap();
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0].connection.image.pool, pool, "attachment connection");
    }

    /// Done: the destination equals the model of every acknowledged write,
    /// is thin, and nothing temporary is left.
    async fn assert_finished_live(&mut self) -> (JobRecord, Vec<LogEntry>) {
        let job = self.job().await;
        assert_eq!(job.phase, Phase::Done, "{job:?}");
        self.assert_running_on(DST).await;
        // Writes reach the destination after the resume.
        self.instance().wait_acks(10).await;
        let (model, entries) = self.stop_and_model().await;
        let failed: Vec<_> = entries
            .iter()
            .filter(|e| matches!(e, LogEntry::Failed { .. }))
            .collect();
        assert!(failed.is_empty(), "the instance saw failed writes: {failed:?}");
        let dst = self.content(&self.dst_io).await;
        assert!(
            dst == model,
            "destination differs from the acknowledged writes at byte {:?}",
            dst.iter().zip(&model).position(|(a, b)| a != b)
        );
        // As thin as the source (retained in the trash): the instance
        // writes only within its span, so no object above it may be allocated.
        let img = self.dst_io.open_image_read_only(&self.volume, None).await.unwrap();
        assert!(img.snap_list().await.unwrap().is_empty());
        let used_objects = img.allocated_bytes(true).await.unwrap();
        let used = allocated(&img).await;
        img.close().await;
        let src = self
            .src_io
            .open_image_by_id_read_only(job.source_image_id.as_deref().unwrap())
            .await
            .unwrap();
        let source_objects = src.allocated_bytes(true).await.unwrap();
        src.close().await;
        assert!(
            used_objects <= source_objects.max(SPAN) && used_objects <= SPAN,
            "destination not thin: {used_objects} bytes of objects allocated; the source has {source_objects}, the instance writes within {SPAN}"
        );
        assert!(
            used >= nonzero_bytes(&model),
            "fewer bytes allocated than hold data: {used}"
        );
        assert!(
            self.dst_io
                .list_images()
                .await
                .unwrap()
                .iter()
                .all(|n| !n.starts_with(&format!("{}.", self.volume))),
            "partial leftovers"
        );
        (job, entries)
    }

    /// Rolled back: the instance runs on the source, which equals the model
    /// of every acknowledged write; no snapshots, no destination, catalog as before.
    async fn assert_rolled_back_live(&mut self) {
        let job = self.job().await;
        assert!(matches!(job.phase, Phase::Aborted { .. }), "{job:?}");
        assert_eq!(self.catalog.volume(&self.volume).await.unwrap(), self.original);
        self.assert_running_on(SRC).await;
        self.instance().wait_acks(10).await;
        let (model, entries) = self.stop_and_model().await;
        assert!(!entries.iter().any(|e| matches!(e, LogEntry::Failed { .. })));
        assert!(
            self.content(&self.src_io).await == model,
            "source differs from the acknowledged writes"
        );
        let img = self.src_io.open_image_read_only(&self.volume, None).await.unwrap();
        assert!(img.snap_list().await.unwrap().is_empty(), "snapshots left");
        img.close().await;
        assert!(!self
            .dst_io
            .list_images()
            .await
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&self.volume)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_volume_moves_with_every_acknowledged_write() {
    // Random 4 KiB - 1 MiB writes and 10% discards, four in flight.
    let mut env = setup("flow", &["--rate", "100", "--max-size", "1048576"]).await;
    let args = env.start_args(&["--cutover-bytes", "4M"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate(&args).output().unwrap();
    assert_ok(&out, "live migration");
    let (job, entries) = env.assert_finished_live().await;

    let phases: Vec<&str> = job.history.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(&phases[..4], ["created", "marked", "copying", "copied"]);
    assert!(phases.contains(&"replaying") && phases.contains(&"cutting_over"));
    assert_eq!(&phases[phases.len() - 3..], ["switched", "repointed", "done"]);
    let live = job.live.expect("a live record");
    let rounds = live.rounds.iter().filter(|r| !r.cutover).count();
    assert!(rounds >= 1, "{live:?}");
    assert_eq!(live.rounds.iter().filter(|r| r.cutover).count(), 1);
    let cutover = live.cutover.expect("cutover recorded");
    let downtime = cutover.downtime_ms().expect("downtime recorded");
    assert!(
        cutover.fence.blocklisted.is_empty(),
        "a cooperating instance is not blocklisted"
    );

    // The instance's own log agrees: writes before the hold, one hold, the
    // re-point to the destination, writes after the resume.
    let held = entries.iter().position(|e| matches!(e, LogEntry::Held { .. })).unwrap();
    let repointed = entries
        .iter()
        .position(|e| matches!(e, LogEntry::Repointed { image, .. } if image.starts_with(DST)))
        .unwrap();
    let resumed = entries
        .iter()
        .position(|e| matches!(e, LogEntry::Resumed { .. }))
        .unwrap();
    assert!(held < repointed && repointed < resumed);
    assert!(
        entries[..held]
            .iter()
            .filter(|e| matches!(e, LogEntry::Write { .. }))
            .count()
            >= 20
    );
    assert!(entries[resumed..].iter().any(|e| matches!(e, LogEntry::Write { .. })));
    let (LogEntry::Held { at_ms: h }, LogEntry::Resumed { at_ms: r }) = (&entries[held], &entries[resumed]) else {
        unreachable!()
    };
    assert!(
        r - h <= downtime,
        "the instance was held {} ms, the job recorded {downtime} ms",
        r - h
    );
    // Where the downtime went: the steps are those of this cutover and fit in it.
    let final_round = live.rounds.iter().find(|r| r.cutover).unwrap();
    let steps = cutover.steps;
    assert_eq!(steps.final_delta_ms, final_round.millis, "{steps:?}");
    assert!(
        steps.hold_ms + steps.fence_ms + steps.final_delta_ms + steps.switch_ms + steps.repoint_ms <= downtime,
        "{steps:?} do not fit in {downtime} ms"
    );
    // The retired source went to the trash without the job's snapshots.
    assert!(!env.src_io.image_exists(&env.volume).await.unwrap());
    let trashed = env
        .src_io
        .open_image_by_id_read_only(job.source_image_id.as_deref().unwrap())
        .await
        .unwrap();
    assert!(trashed.snap_list().await.unwrap().is_empty());
    trashed.close().await;
    // `migrate status` shows the rounds and the downtime.
    let status = migrate(&["status", &job.id]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("replay round") && text.contains("instance held"),
        "{text}"
    );
}

/// Live rounds and the final delta with the OSDs copying changed objects
/// whole (from any change, so that every changed object the destination
/// already has goes that way), under a writer of writes up to 2 MiB: every
/// acknowledged write is on the destination, checked write by write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_with_whole_objects_copied_by_the_osds_keep_every_write() {
    let mut env = setup(
        "whole",
        &["--rate", "60", "--min-size", "65536", "--max-size", "2097152"],
    )
    .await;
    let args = env.start_args(&["--cutover-bytes", "8M", "--whole-object-from", "0"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate(&args).output().unwrap();
    assert_ok(&out, "live migration");
    let (job, _) = env.assert_finished_live().await;
    let live = job.live.expect("a live record");
    let whole: u64 = live.rounds.iter().map(|r| r.whole_objects).sum();
    assert!(whole > 0, "no object of any delta was copied whole: {:?}", live.rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_ignores_the_hold_is_fenced() {
    let mut env = setup("rogue", &["--ignore-hold", "--rate", "200", "--max-size", "65536"]).await;
    let args = env.start_args(&["--keep-source"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate(&args).output().unwrap();
    assert_ok(&out, "live migration with a rogue writer");
    let job = env.job().await;
    assert_eq!(job.phase, Phase::Done);
    // The rogue keeps issuing writes, but none gets through any more: they
    // fail or never complete (its lock requests are refused, then it is
    // blocklisted).
    let before = env.instance().status().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env.instance().status().await; // also flushes its log
    assert_eq!(
        before["acked_total"], after["acked_total"],
        "the fenced rogue still had writes acknowledged: {before} -> {after}"
    );
    let mut rogue = env.instance.take().unwrap();
    let _ = rogue.child.kill();
    let _ = rogue.child.wait();
    let entries = rogue.entries();
    let cutover = job.live.as_ref().unwrap().cutover.clone().unwrap();
    let resumed_at = cutover.resumed_at_ms.unwrap();
    let late: Vec<_> = entries
        .iter()
        .filter(|e| matches!(e, LogEntry::Write { at_ms, .. } | LogEntry::Discard { at_ms, .. } if *at_ms > resumed_at))
        .collect();
    assert!(
        late.is_empty(),
        "writes acknowledged to the rogue after the cutover: {late:?}"
    );
    assert!(
        entries.iter().any(|e| matches!(e, LogEntry::Held { .. })),
        "the rogue was asked to hold"
    );
    // Every write acknowledged before the fence is on the destination, and
    // nothing landed on the source after it: both equal the model.
    let mut model = env.initial.clone();
    apply_log(&mut model, &entries);
    assert!(
        env.content(&env.dst_io).await == model,
        "destination lost an acknowledged write"
    );
    assert!(
        env.content(&env.src_io).await == model,
        "something landed on the fenced source"
    );
    // It cannot write after the job either: it was blocklisted.
    assert_eq!(cutover.fence.blocklisted.len(), 1, "{cutover:?}");
}

/// `migrate start` killed at `point`; the instance keeps running (held, if
/// the kill fell in the cutover).
async fn start_killed_at(env: &Env, point: &str) -> String {
    let args = env.start_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_killed_at(migrate(&args), point);
    env.job().await.id
}

const WRITER: &[&str] = &["--rate", "50", "--max-size", "262144"];

/// Kill points at which the instance is held (the cutover died under it).
const HELD_AT: &[&str] = &[
    "live-after-hold",
    "live-after-fence",
    "live-after-final-applied",
    "live-after-switch",
    "live-after-switched-recorded",
    "live-after-repoint",
];

/// Where the killed driver held the source's lock (the fence), with the
/// instance held: the resume must not wait for that lock (the fence timeout,
/// all of it downtime), but fence the dead driver out as the job's own.
const FENCED_AT: &[&str] = &["live-after-fence", "live-after-final-applied"];

async fn live_killed_then_resumed(point: &str) {
    let mut env = setup("lkill", WRITER).await;
    let job = start_killed_at(&env, point).await;
    let held = env.instance().status().await["held"].as_bool().unwrap();
    assert_eq!(held, HELD_AT.contains(&point), "instance held after a kill at {point}");
    let out = migrate(&["resume", &job, "--wait", "60", "--lease-secs", LEASE, "--no-progress"])
        .output()
        .unwrap();
    assert_ok(&out, &format!("resume after a kill at {point}"));
    if FENCED_AT.contains(&point) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("an earlier driver of this job still has the source open"),
            "the dead driver's fence was not broken at once: {stderr}"
        );
    }
    env.assert_finished_live().await;
}

async fn live_killed_then_aborted(point: &str) {
    let mut env = setup("lkillab", WRITER).await;
    let job = start_killed_at(&env, point).await;
    let out = migrate(&["abort", &job, "--wait", "60", "--lease-secs", LEASE])
        .output()
        .unwrap();
    assert_ok(&out, &format!("abort after a kill at {point}"));
    env.assert_rolled_back_live().await;
}

/// Killed inside the cutover, then killed again inside the abort, then aborted.
async fn live_killed_in_abort(point: &str) {
    let mut env = setup("lkillab2", WRITER).await;
    let job = start_killed_at(&env, "live-after-hold").await;
    assert_eq!(env.instance().status().await["held"], true, "held across the crash");
    run_killed_at(migrate(&["abort", &job, "--wait", "60", "--lease-secs", LEASE]), point);
    let out = migrate(&["abort", &job, "--wait", "60", "--lease-secs", LEASE])
        .output()
        .unwrap();
    assert_ok(&out, "abort again");
    env.assert_rolled_back_live().await;
}

kill_cases! {
    live_kill_after_round_snapshot_then_resume: "live-after-round-snapshot" => live_killed_then_resumed;
    live_kill_after_round_applied_then_resume: "live-after-round-applied" => live_killed_then_resumed;
    live_kill_after_round_recorded_then_resume: "live-after-round-recorded" => live_killed_then_resumed;
    live_kill_after_cutover_recorded_then_resume: "live-after-cutover-recorded" => live_killed_then_resumed;
    live_kill_after_hold_then_resume: "live-after-hold" => live_killed_then_resumed;
    live_kill_after_fence_then_resume: "live-after-fence" => live_killed_then_resumed;
    live_kill_after_final_applied_then_resume: "live-after-final-applied" => live_killed_then_resumed;
    live_kill_after_switch_then_resume: "live-after-switch" => live_killed_then_resumed;
    live_kill_after_switched_recorded_then_resume: "live-after-switched-recorded" => live_killed_then_resumed;
    live_kill_after_repoint_then_resume: "live-after-repoint" => live_killed_then_resumed;
    live_kill_after_resume_then_resume: "live-after-resume" => live_killed_then_resumed;
    live_kill_after_resumed_recorded_then_resume: "live-after-resumed-recorded" => live_killed_then_resumed;
    live_kill_after_round_recorded_then_abort: "live-after-round-recorded" => live_killed_then_aborted;
    live_kill_after_hold_then_abort: "live-after-hold" => live_killed_then_aborted;
    live_kill_after_fence_then_abort: "live-after-fence" => live_killed_then_aborted;
    live_kill_after_final_applied_then_abort: "live-after-final-applied" => live_killed_then_aborted;
    live_kill_in_abort_after_instance_resumed: "abort-after-instance-resumed" => live_killed_in_abort;
}

/// An idle instance does not own the source's lock, so librbd takes it for
/// the driver to create a round's snapshot. The driver lets go of it at
/// once: killed in the rounds, it leaves no lock behind for the instance's
/// next write to wait on (until the dead driver's watch times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_in_the_rounds_of_an_idle_instance_leaves_the_source_unlocked() {
    let mut env = setup("idle", WRITER).await;
    command(&env.instance().socket, "hold").await.unwrap();
    // The instance wrote, so it owns the lock: take it away, then let go.
    let img = env.src_io.open_image(&env.volume).await.unwrap();
    img.lock_acquire_exclusive().await.unwrap();
    img.lock_release().await.unwrap();
    assert_eq!(img.lock_owners().await.unwrap(), Vec::<String>::new());
    let job = start_killed_at(&env, "live-after-round-snapshot").await;
    let owners = img.lock_owners().await.unwrap();
    assert_eq!(owners, Vec::<String>::new(), "the dead driver kept the source's lock");
    img.close().await;
    command(&env.instance().socket, "resume").await.unwrap();
    env.instance().wait_acks(5).await;
    let out = migrate(&["resume", &job, "--wait", "60", "--lease-secs", LEASE, "--no-progress"])
        .output()
        .unwrap();
    assert_ok(&out, "resume");
    env.assert_finished_live().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_outpaces_the_copy_pauses_the_job_when_the_policy_says_so() {
    // A cutover threshold no round can meet, and the policy to stop rather
    // than hold the instance with a large delta.
    let mut env = setup("stall", &["--rate", "200", "--max-size", "262144"]).await;
    let args = env.start_args(&[
        "--cutover-bytes",
        "4K",
        "--stall-rounds",
        "1",
        "--max-rounds",
        "3",
        "--on-stall",
        "pause",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not converging") && stderr.contains("--on-stall cutover"),
        "{stderr}"
    );
    let job = env.job().await;
    assert!(matches!(job.phase, Phase::Replaying { .. }), "{:?}", job.phase);
    let live = job.live.as_ref().unwrap();
    assert!(live.rounds.len() >= 2 && live.cutover.is_none(), "{live:?}");
    assert!(job.last_error.as_deref().unwrap_or("").contains("not converging"));
    // A paused job keeps only its base snapshot on the source: the earlier
    // ones (the copy's, each round's) were removed before the run ended.
    let Phase::Replaying { base, .. } = &job.phase else {
        unreachable!()
    };
    let src = env.src_io.open_image_read_only(&env.volume, None).await.unwrap();
    let snaps: Vec<String> = src.snap_list().await.unwrap().into_iter().map(|s| s.name).collect();
    src.close().await;
    assert_eq!(snaps, vec![base.clone()], "snapshots on the paused job's source");
    // The instance was never held and still writes to the source.
    let st = env.instance().status().await;
    assert_eq!(st["held"], false);
    assert_eq!(st["image"], format!("{SRC}/{}", env.volume));
    env.instance().wait_acks(10).await;
    // Resuming with the other policy (only that changed) cuts over.
    let out = migrate(&[
        "resume",
        &job.id,
        "--on-stall",
        "cutover",
        "--no-progress",
        "--lease-secs",
        LEASE,
    ])
    .output()
    .unwrap();
    assert_ok(&out, "resume with --on-stall cutover");
    let (job, _) = env.assert_finished_live().await;
    let live = job.live.unwrap();
    assert_eq!(live.policy.cutover_bytes, 4096, "the recorded threshold was kept");
    assert!(live.cutover.unwrap().reason.contains("not converging"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_volumes_that_cannot_be_held_or_fenced_are_refused() {
    for p in [SRC, DST, CATALOG] {
        cluster().ensure_pool(p);
    }
    let c = cluster().connect().await;
    let src_io = c.ioctx(SRC, "").await.unwrap();
    let dst_io = c.ioctx(DST, "").await.unwrap();
    let catalog = RadosCatalog::new(c.ioctx(CATALOG, "").await.unwrap());
    // (access, image without exclusive-lock, expected exit code and message)
    let cases = [
        (Access::None, false, 4, "cannot be held"),
        (
            Access::Qmp {
                socket: "/nonexistent/qmp.sock".into(),
            },
            false,
            1,
            "cannot connect to QMP socket",
        ),
        (
            Access::TestInstance {
                socket: "/nonexistent/ctl.sock".into(),
            },
            true,
            4,
            "exclusive-lock",
        ),
    ];
    for (access, no_lock, code, expected) in cases {
        let volume = unique("refuse");
        let opts = if no_lock {
            CreateOptions {
                features: Some(livemig::ceph::Features::LAYERING),
                ..Default::default()
            }
        } else {
            CreateOptions::default()
        };
        src_io.create_image(&volume, 8 << 20, &opts).await.unwrap();
        register_attached_volume(&catalog, SRC, &volume, 8 << 20, access).await;
        // The catalog object is shared with parallel tests: compare this volume's records.
        let before = (
            catalog.volume(&volume).await.unwrap(),
            catalog.attachments(&volume).await.unwrap(),
        );
        let images_before = pool_state(&[&src_io, &dst_io], &volume).await;
        let out = migrate(&["start", &volume, "--to", DST]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        let after = (
            catalog.volume(&volume).await.unwrap(),
            catalog.attachments(&volume).await.unwrap(),
        );
        assert_eq!(after, before, "catalog changed");
        let store = JobStore::new(c.ioctx(CATALOG, "").await.unwrap());
        for id in store.ids().await.unwrap() {
            assert_ne!(
                store.load(&id).await.unwrap().record.volume_id,
                volume,
                "a job was created"
            );
        }
        assert_eq!(
            pool_state(&[&src_io, &dst_io], &volume).await,
            images_before,
            "images changed"
        );
    }
}

/// The test instance's hook readies the destination while held; a resume
/// without a re-point lets go of it (an abort then removes it), and a
/// re-point uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readied_destination_is_let_go_on_resume_and_used_by_the_repoint() {
    let mut env = setup("prepare", &["--rate", "200"]).await;
    let dst_name = format!("{}-next", env.volume);
    env.dst_io
        .create_image(&dst_name, SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let socket = env.instance().socket.clone();
    let hook = TestInstanceHook::new(&socket, vec![]);
    let attachment = env.catalog.attachments(&env.volume).await.unwrap().remove(0);
    let to = Backing {
        cluster: attachment.connection.cluster.clone(),
        image: ImageSpec::new(DST, &dst_name),
    };
    let watchers = |io: IoCtx, name: String| async move {
        let img = io.open_image_read_only(&name, None).await.unwrap();
        let n = img.watchers().await.unwrap().len();
        img.close().await;
        n
    };
    // Readying needs the instance held.
    assert!(hook.prepare_repoint(&attachment, &to).await.is_err());
    hook.hold(&attachment).await.unwrap();
    hook.prepare_repoint(&attachment, &to).await.unwrap();
    hook.prepare_repoint(&attachment, &to).await.unwrap();
    assert_eq!(
        watchers(env.dst_io.clone(), dst_name.clone()).await,
        1,
        "the instance has it open once"
    );
    hook.resume(&attachment).await.unwrap();
    assert_eq!(
        watchers(env.dst_io.clone(), dst_name.clone()).await,
        0,
        "resume let go of it"
    );
    env.instance().wait_acks(10).await;
    // Readied, then re-pointed: the instance writes to it.
    hook.hold(&attachment).await.unwrap();
    hook.prepare_repoint(&attachment, &to).await.unwrap();
    hook.repoint(&attachment, &to).await.unwrap();
    hook.resume(&attachment).await.unwrap();
    env.instance().wait_acks(10).await;
    assert_eq!(env.instance().status().await["image"], to.image.to_string());
    assert_eq!(watchers(env.dst_io.clone(), dst_name.clone()).await, 1);
    env.instance.take().unwrap().stop().await;
    env.dst_io.remove_image(&dst_name).await.unwrap();
}

/// An attached volume moves live to another cluster by the catalog's pool
/// map, under a writer: the instance is re-pointed to the other cluster's
/// image (opened with the conf the catalog registers for it), every
/// acknowledged write is there, and the switch rewrote the backing and the
/// declared location together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_volume_moves_live_to_another_cluster() {
    let mut env = setup("xlive", &["--rate", "100", "--max-size", "1048576"]).await;
    env.dst_io = map_to_second_cluster().await;
    let out = migrate(&[
        "start",
        &env.volume,
        "--to-cluster",
        "b",
        "--cutover-bytes",
        "4M",
        "--lease-secs",
        LEASE,
        "--json",
        "--no-progress",
    ])
    .output()
    .unwrap();
    assert_ok(&out, "live migration to another cluster");
    let v = env.catalog.volume(&env.volume).await.unwrap();
    assert_eq!((v.backing.cluster.as_str(), v.location.as_str()), ("b", "site-b"));
    let atts = env.catalog.attachments(&env.volume).await.unwrap();
    assert_eq!(atts[0].connection.cluster, "b", "attachment connection");
    let (job, entries) = env.assert_finished_live().await;
    assert!(job.live.expect("live").cutover.is_some());
    assert!(entries
        .iter()
        .any(|e| matches!(e, LogEntry::Repointed { image, .. } if image.starts_with(DST))));
}

/// Registers the second cluster as `b` and maps the source pool to its
/// destination pool, with location `site-b`; returns the other cluster's
/// destination pool.
async fn map_to_second_cluster() -> IoCtx {
    let other = second_cluster();
    other.ensure_pool(DST);
    let conf = other.conf.display().to_string();
    assert_ok(
        &migrate(&["catalog", "add-cluster", "b", "--conf", &conf])
            .output()
            .unwrap(),
        "add-cluster",
    );
    let to = format!("b/{DST}");
    let map = [
        "catalog",
        "map-pool",
        "--from",
        SRC,
        "--to",
        &to,
        "--location",
        "site-b",
    ];
    assert_ok(&migrate(&map).output().unwrap(), "map-pool");
    other.connect().await.ioctx(DST, "").await.unwrap()
}

/// Continuous sync: `migrate sync start`, run as a driver of its own.
struct SyncDriver {
    child: Option<Child>,
}

impl SyncDriver {
    fn spawn(env: &Env, to: &[&str]) -> SyncDriver {
        let args = env.sync_start_args(to);
        let child = migrate(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the sync");
        SyncDriver { child: Some(child) }
    }

    /// Waits for the driver to end; fails unless it succeeded.
    fn wait_ok(mut self, what: &str) {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        assert_ok(&out, what);
    }
}

impl Drop for SyncDriver {
    /// A test that fails before the cutover does not leave its sync running.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `migrate sync status VOLUME --json`'s status.
fn sync_status(volume: &str) -> serde_json::Value {
    let out = migrate(&["sync", "status", volume, "--json"]).output().unwrap();
    assert_ok(&out, "sync status");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(line).unwrap()["sync"].clone()
}

impl Env {
    /// `migrate sync start` of the volume to `to`, a round every 300 ms.
    fn sync_start_args<'a>(&'a self, to: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["sync", "start", self.volume.as_str()];
        args.extend_from_slice(to);
        args.extend_from_slice(&["--interval-ms", "300", "--lease-secs", LEASE, "--no-progress"]);
        args
    }

    /// The job's snapshots on the source.
    async fn job_snapshots(&self) -> usize {
        let img = self.src_io.open_image_read_only(&self.volume, None).await.unwrap();
        let snaps = img.snap_list().await.unwrap();
        img.close().await;
        snaps.iter().filter(|s| s.name.starts_with("livemig-job-")).count()
    }

    /// Waits until the sync has applied `rounds` rounds, checking on the
    /// way that the source never keeps more than two of its snapshots.
    async fn wait_sync_rounds(&self, rounds: u64) -> serde_json::Value {
        for _ in 0..1200 {
            let snapshots = self.job_snapshots().await;
            assert!(snapshots <= 2, "the sync keeps {snapshots} snapshots on the source");
            let out = migrate(&["sync", "status", &self.volume, "--json"]).output().unwrap();
            if out.status.success() {
                let st = sync_status(&self.volume);
                if st["rounds"].as_u64().unwrap() >= rounds {
                    return st;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the sync applied fewer than {rounds} rounds in two minutes");
    }
}

/// A replica on the other cluster follows a writing instance's volume
/// round after round (the source never keeps more than two of the sync's
/// snapshots; the status reports the RPO and the bytes behind); the volume
/// cannot be migrated or synced a second time meanwhile; `sync cutover`
/// moves it with every acknowledged write, backing and location switched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_volume_cuts_over_to_its_replica_on_another_cluster() {
    let mut env = setup("sync", &["--rate", "100", "--max-size", "1048576"]).await;
    env.dst_io = map_to_second_cluster().await;
    let driver = SyncDriver::spawn(&env, &["--to-cluster", "b"]);
    let st = env.wait_sync_rounds(3).await;
    assert_eq!(st["phase"], "replaying", "{st}");
    assert_eq!(st["replica"]["cluster"], "b", "{st}");
    assert!(st["rpo_ms"].is_u64() && st["behind_bytes"].is_u64(), "{st}");

    // A resize and new image-meta of the volume reach the replica with the next rounds.
    let spec = format!("{SRC}/{}", env.volume);
    let grown = SIZE + (16 << 20);
    cluster().cli("rbd", &["resize", "--size", &format!("{}M", grown >> 20), &spec]);
    cluster().cli("rbd", &["image-meta", "set", &spec, "user.tier", "gold"]);
    env.initial.resize(grown as usize, 0);
    let rounds = st["rounds"].as_u64().unwrap();
    env.wait_sync_rounds(rounds + 2).await;
    let replica = env.dst_io.open_image_read_only(&env.volume, None).await.unwrap();
    assert_eq!(replica.info().await.unwrap().size, grown, "the replica was not resized");
    let meta = replica.metadata_list().await.unwrap();
    replica.close().await;
    assert!(meta.contains(&("user.tier".into(), "gold".into())), "{meta:?}");

    // While it syncs, the volume is taken: another migration or sync is refused.
    let before = env.catalog.volume(&env.volume).await.unwrap();
    for args in [
        vec!["start", &env.volume, "--to", "live-other", "--no-progress"],
        vec!["sync", "start", &env.volume, "--to-cluster", "b", "--no-progress"],
    ] {
        let out = migrate(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(5), "{args:?} was not refused: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("already_migrating"),
            "{out:?}"
        );
    }
    assert_eq!(env.catalog.volume(&env.volume).await.unwrap(), before);

    let out = migrate(&["sync", "cutover", &env.volume, "--json"]).output().unwrap();
    assert_ok(&out, "sync cutover");
    driver.wait_ok("the sync's driver");
    let v = env.catalog.volume(&env.volume).await.unwrap();
    assert_eq!((v.backing.cluster.as_str(), v.location.as_str()), ("b", "site-b"));
    let (job, _) = env.assert_finished_live().await;
    let sync = job.sync.expect("a sync record");
    assert!(sync.rounds >= 3, "{sync:?}");
    let cutover = job.live.unwrap().cutover.expect("cutover recorded");
    assert!(cutover.reason.contains("asked"), "{cutover:?}");
}

/// A sync whose driver was killed after a round is cut over by `sync
/// cutover` itself once the dead driver's lease has lapsed: every
/// acknowledged write is on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_driver_died_is_cut_over_by_the_requester() {
    let mut env = setup("synckill", WRITER).await;
    let args = env.sync_start_args(&["--to", DST]);
    run_killed_at(migrate(&args), "live-after-round-applied");
    let out = migrate(&["sync", "cutover", &env.volume]).output().unwrap();
    assert_ok(&out, "sync cutover after the driver died");
    let (job, _) = env.assert_finished_live().await;
    assert!(job.sync.expect("a sync record").rounds >= 1);
}

/// `sync stop` while the driver runs: it rolls the sync back (the replica
/// and the snapshots removed, the instance on the source with every write);
/// a resync of it is refused (it never failed over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sync_leaves_the_volume_where_it_was() {
    let mut env = setup("syncstop", WRITER).await;
    let driver = SyncDriver::spawn(&env, &["--to", DST]);
    env.wait_sync_rounds(2).await;
    let out = migrate(&["sync", "stop", &env.volume]).output().unwrap();
    assert_ok(&out, "sync stop");
    driver.wait_ok("the stopped sync's driver");
    env.assert_rolled_back_live().await;
    let out = migrate(&["sync", "status", &env.volume]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "no sync to report: {out:?}");
    // A volume that never failed over has no copy to sync back to.
    let before = env.catalog.volume(&env.volume).await.unwrap();
    let out = migrate(&["sync", "resync", &env.volume, "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has not failed over"),
        "{out:?}"
    );
    assert_eq!(env.catalog.volume(&env.volume).await.unwrap(), before);
}

/// A sync whose replica holds no whole point in time cannot be cut over
/// (not_synced, nothing changed); a detached volume is not synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_cannot_cut_over_before_its_first_copy() {
    let mut env = setup("syncearly", WRITER).await;
    let args = env.sync_start_args(&["--to", DST]);
    run_killed_at(migrate(&args), "after-copying-recorded");
    let before = env.catalog.volume(&env.volume).await.unwrap();
    let out = migrate(&["sync", "cutover", &env.volume]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_synced"), "{out:?}");
    assert_eq!(env.catalog.volume(&env.volume).await.unwrap(), before);
    let out = migrate(&["sync", "stop", &env.volume, "--lease-secs", LEASE])
        .output()
        .unwrap();
    assert_ok(&out, "sync stop");
    env.assert_rolled_back_live().await;

    // Detached: refused before anything is written.
    let detached = unique("syncdet");
    env.src_io
        .create_image(&detached, SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let spec = format!("{SRC}/{detached}");
    assert_ok(
        &migrate(&["catalog", "add-volume", &detached, "--image", &spec])
            .output()
            .unwrap(),
        "add-volume",
    );
    let out = migrate(&["sync", "start", &detached, "--to", DST, "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not attached"), "{out:?}");
    assert!(env.catalog.volume(&detached).await.unwrap().migration.is_none());
}
