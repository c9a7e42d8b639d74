//! Migration jobs end to end against the real cluster: the whole flow,
//! SIGKILL at every kill point then resume (from another process) or abort,
//! random kills mid-copy, leases, and record versions.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use livemig::catalog::{Backing, Cas, Catalog, RadosCatalog, Volume, VolumeStatus};
use livemig::ceph::{CreateOptions, IoCtx};
use livemig::job::{JobStore, Phase};
use livemig::spec::ImageSpec;

const SRC: &str = "jobs-src";
const DST: &str = "jobs-dst";
const CATALOG: &str = "jobs-catalog";
const LEASE: &str = "3";

struct Env {
    src_io: IoCtx,
    dst_io: IoCtx,
    catalog: RadosCatalog,
    store: JobStore,
    volume: String,
    original: Volume,
    digest: u64,
    metadata: Vec<(String, String)>,
}

/// A registered, detached 24 MiB volume with 12 MiB of data and image-meta.
async fn setup(tag: &str) -> Env {
    setup_sized(tag, 24 << 20).await
}

/// A registered, detached volume of `size` bytes with `size / 2` bytes of
/// data from 1 MiB on, and image-meta.
async fn setup_sized(tag: &str, size: u64) -> Env {
    for p in [SRC, DST, CATALOG] {
        cluster().ensure_pool(p);
    }
    let c = cluster().connect().await;
    let src_io = c.ioctx(SRC, "").await.unwrap();
    let dst_io = c.ioctx(DST, "").await.unwrap();
    let catalog_io = c.ioctx(CATALOG, "").await.unwrap();
    let volume = unique(tag);
    src_io
        .create_image(&volume, size, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&volume).await.unwrap();
    write_at(&img, 1 << 20, random_bytes(3, (size / 2) as usize)).await;
    img.metadata_set("tenant", "t1").await.unwrap();
    let metadata = img.metadata_list().await.unwrap();
    let digest = digest(&img, size).await;
    img.close().await;
    let catalog = RadosCatalog::new(catalog_io.clone());
    let original = Volume {
        id: volume.clone(),
        size,
        status: VolumeStatus::Available,
        migration: None,
        backing: Backing {
            cluster: "local".into(),
            image: ImageSpec::new(SRC, &volume),
        },
        location: "slow".into(),
    };
    catalog
        .compare_and_swap(Cas {
            expect_no_volumes: vec![volume.clone()],
            put_volumes: vec![original.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    Env {
        src_io,
        dst_io,
        catalog,
        store: JobStore::new(catalog_io),
        volume,
        original,
        digest,
        metadata,
    }
}

fn migrate(args: &[&str]) -> Command {
    migrate_with_catalog(CATALOG, args)
}

fn run(args: &[&str]) -> Output {
    migrate(args).output().expect("run migrate")
}

impl Env {
    fn start_args(&self) -> Vec<String> {
        ["start", &self.volume, "--to", DST, "--lease-secs", LEASE, "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Runs `migrate start` that kills itself at `point`; returns the job id.
    async fn start_killed_at(&self, point: &str) -> String {
        self.start_with_killed_at(&[], point).await
    }

    /// [`Self::start_killed_at`] with `extra` arguments to `migrate start`.
    async fn start_with_killed_at(&self, extra: &[&str], point: &str) -> String {
        let mut args = self.start_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_killed_at(migrate(&args), point);
        self.job_id().await
    }

    /// The (only) job of this volume.
    async fn job_id(&self) -> String {
        match self.try_job_id().await {
            Some(id) => id,
            None => panic!("no job for volume {}", self.volume),
        }
    }

    /// The job of this volume, if one is recorded yet. Other tests' records
    /// (some deliberately unreadable) are skipped.
    async fn try_job_id(&self) -> Option<String> {
        for id in self.store.ids().await.unwrap() {
            if let Ok(stored) = self.store.load(&id).await {
                if stored.record.volume_id == self.volume {
                    return Some(id);
                }
            }
        }
        None
    }

    async fn phase(&self, job: &str) -> Phase {
        self.store.load(job).await.unwrap().record.phase
    }

    async fn images_named_like_the_volume(&self, io: &IoCtx) -> Vec<String> {
        io.list_images()
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&self.volume))
            .collect()
    }

    /// The migration finished: the catalog names the complete destination,
    /// statuses agree, the source is retired and nothing temporary is left.
    async fn assert_finished(&self, job: &str) {
        assert_eq!(self.phase(job).await, Phase::Done);
        let v = self.catalog.volume(&self.volume).await.unwrap();
        let expected = Volume {
            backing: Backing {
                cluster: "local".into(),
                image: ImageSpec::new(DST, &self.volume),
            },
            ..self.original.clone()
        };
        assert_eq!(v, expected, "catalog after the migration");
        assert_eq!(
            self.images_named_like_the_volume(&self.dst_io).await,
            vec![self.volume.clone()],
            "destination pool"
        );
        let dst = self.dst_io.open_image_read_only(&self.volume, None).await.unwrap();
        assert_eq!(
            digest(&dst, self.original.size).await,
            self.digest,
            "destination content"
        );
        assert_eq!(
            dst.metadata_list().await.unwrap(),
            self.metadata,
            "destination image-meta (no livemig keys left)"
        );
        assert!(dst.snap_list().await.unwrap().is_empty());
        dst.close().await;
        assert!(
            self.images_named_like_the_volume(&self.src_io).await.is_empty(),
            "the source went to the trash"
        );
        // ... without the job's snapshot, and intact.
        let source_id = self
            .store
            .load(job)
            .await
            .unwrap()
            .record
            .source_image_id
            .expect("recorded");
        let trashed = self.src_io.open_image_by_id_read_only(&source_id).await.unwrap();
        let left: Vec<String> = trashed.snap_list().await.unwrap().into_iter().map(|s| s.name).collect();
        assert!(left.is_empty(), "snapshots left on the retired source: {left:?}");
        assert_eq!(
            digest(&trashed, self.original.size).await,
            self.digest,
            "the retired source is intact"
        );
        trashed.close().await;
    }

    /// Rolled back: the catalog exactly as before, the source untouched and
    /// without snapshots, nothing in the destination pool.
    async fn assert_rolled_back(&self, job: &str) {
        assert!(
            matches!(self.phase(job).await, Phase::Aborted { .. }),
            "{:?}",
            self.phase(job).await
        );
        assert_eq!(
            self.catalog.volume(&self.volume).await.unwrap(),
            self.original,
            "catalog after abort"
        );
        assert!(
            self.images_named_like_the_volume(&self.dst_io).await.is_empty(),
            "destination leftovers"
        );
        let src = self.src_io.open_image_read_only(&self.volume, None).await.unwrap();
        assert!(src.snap_list().await.unwrap().is_empty(), "snapshot leftovers");
        assert_eq!(digest(&src, self.original.size).await, self.digest);
        assert_eq!(src.metadata_list().await.unwrap(), self.metadata);
        src.close().await;
    }

    fn resume(&self, job: &str) -> Output {
        run(&[
            "resume",
            job,
            "--wait",
            "60",
            "--lease-secs",
            LEASE,
            "--json",
            "--no-progress",
        ])
    }

    fn abort(&self, job: &str) -> Output {
        run(&["abort", job, "--wait", "60", "--lease-secs", LEASE, "--json"])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_moves_a_detached_volume() {
    let env = setup("flow").await;
    let args = env.start_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert_ok(&out, "start");
    let job = env.job_id().await;
    env.assert_finished(&job).await;
    // The record tells the story.
    let record = env.store.load(&job).await.unwrap().record;
    let phases: Vec<&str> = record.history.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(phases, ["created", "marked", "copying", "copied", "switched", "done"]);
    // verify VOLUME compares with the source retained in the trash.
    let v = run(&["verify", &env.volume, "--json"]);
    assert_ok(&v, "verify");
    // A second migration back works too (the volume is free again), its
    // data in a separate data pool; a data pool that does not exist is
    // refused first, with nothing changed.
    const DATA_POOL: &str = "jobs-data";
    cluster().ensure_pool(DATA_POOL);
    let start_back = |data_pool: &str| {
        run(&[
            "start",
            &env.volume,
            "--to",
            SRC,
            "--data-pool",
            data_pool,
            "--keep-source",
            "--lease-secs",
            LEASE,
            "--json",
        ])
    };
    let volume_before = env.catalog.volume(&env.volume).await.unwrap();
    let refused = start_back("jobs-no-such-pool");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stdout).contains("pool_not_found"));
    assert_eq!(env.catalog.volume(&env.volume).await.unwrap(), volume_before);
    assert_ok(&start_back(DATA_POOL), "migrate back");
    let moved = env.catalog.volume(&env.volume).await.unwrap();
    assert_eq!(moved.backing.image.pool, SRC);
    let info = cluster().cli("rbd", &["info", "--format", "json", &moved.backing.image.to_string()]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["data_pool"], DATA_POOL);
    assert!(
        env.dst_io.image_exists(&env.volume).await.unwrap(),
        "--keep-source keeps the old image"
    );
}

/// Kill at `point`, then finish from another process with `resume`.
async fn killed_then_resumed(point: &str) {
    let env = setup("crash").await;
    let job = env.start_killed_at(point).await;
    let out = env.resume(&job);
    assert_ok(&out, &format!("resume after a kill at {point}"));
    env.assert_finished(&job).await;
}

/// Kill at `point`, then roll back with `abort`.
async fn killed_then_aborted(point: &str) {
    let env = setup("crashab").await;
    let job = env.start_killed_at(point).await;
    let out = env.abort(&job);
    assert_ok(&out, &format!("abort after a kill at {point}"));
    env.assert_rolled_back(&job).await;
}

kill_cases! {
    kill_after_create_then_resume: "after-create" => killed_then_resumed;
    kill_after_mark_then_resume: "after-mark" => killed_then_resumed;
    kill_after_marked_recorded_then_resume: "after-marked-recorded" => killed_then_resumed;
    kill_after_copying_recorded_then_resume: "after-copying-recorded" => killed_then_resumed;
    kill_after_snapshot_then_resume: "after-snapshot" => killed_then_resumed;
    kill_after_partial_created_then_resume: "after-partial-created" => killed_then_resumed;
    kill_after_first_progress_then_resume: "after-first-progress" => killed_then_resumed;
    kill_after_copy_complete_then_resume: "after-copy-complete" => killed_then_resumed;
    kill_after_rename_then_resume: "after-rename" => killed_then_resumed;
    kill_after_copied_recorded_then_resume: "after-copied-recorded" => killed_then_resumed;
    kill_after_switch_then_resume: "after-switch" => killed_then_resumed;
    kill_after_switched_recorded_then_resume: "after-switched-recorded" => killed_then_resumed;
    kill_after_snapshot_removed_then_resume: "after-snapshot-removed" => killed_then_resumed;
    kill_after_source_retired_then_resume: "after-source-retired" => killed_then_resumed;
    kill_after_release_then_resume: "after-release" => killed_then_resumed;
    kill_after_create_then_abort: "after-create" => killed_then_aborted;
    kill_after_mark_then_abort: "after-mark" => killed_then_aborted;
    kill_after_snapshot_then_abort: "after-snapshot" => killed_then_aborted;
    kill_after_partial_created_then_abort: "after-partial-created" => killed_then_aborted;
    kill_after_first_progress_then_abort: "after-first-progress" => killed_then_aborted;
    kill_after_rename_then_abort: "after-rename" => killed_then_aborted;
    kill_after_copied_recorded_then_abort: "after-copied-recorded" => killed_then_aborted;
}

/// An abort killed at `point`, then finished by a second abort (or a resume).
async fn abort_killed_at(point: &str, finish_with_resume: bool) {
    let env = setup("abortcrash").await;
    let job = env.start_killed_at("after-partial-created").await;
    run_killed_at(migrate(&["abort", &job, "--wait", "60", "--lease-secs", LEASE]), point);
    let out = if finish_with_resume {
        env.resume(&job)
    } else {
        env.abort(&job)
    };
    assert_ok(&out, &format!("finishing an abort killed at {point}"));
    env.assert_rolled_back(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_abort_after_recorded_then_abort_again() {
    abort_killed_at("abort-after-recorded", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_abort_after_images_then_resume_finishes_the_abort() {
    abort_killed_at("abort-after-images", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_abort_after_snapshot_then_abort_again() {
    abort_killed_at("abort-after-snapshot", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_abort_after_catalog_then_abort_again() {
    abort_killed_at("abort-after-catalog", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_the_switch_is_refused_and_resume_rolls_forward() {
    let env = setup("noabort").await;
    let job = env.start_killed_at("after-switch").await;
    let out = env.abort(&job);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("past the switch"));
    assert_ok(&env.resume(&job), "resume");
    env.assert_finished(&job).await;
}

/// A driver killed mid-copy leaves its lock on the partial destination:
/// the one that resumes breaks it (blocklisting the dead client) instead of
/// waiting for its watch to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resume_fences_the_dead_driver_out_of_the_partial() {
    let env = setup("takeover").await;
    // Throttled, so the kill comes while the copy still writes (an
    // unthrottled copy can finish, and release the lock, before the first
    // progress is recorded).
    let job = env
        .start_with_killed_at(&["--bwlimit", "4M"], "after-first-progress")
        .await;
    let Phase::Copying { partial, .. } = env.phase(&job).await else {
        panic!("not copying: {:?}", env.phase(&job).await)
    };
    // (Owners are listed through a read-write handle; opening takes no lock.)
    let img = env.dst_io.open_image(&partial).await.unwrap();
    let owners = img.lock_owners().await.unwrap();
    img.close().await;
    assert_eq!(owners.len(), 1, "the dead driver's lock on the partial: {owners:?}");

    let out = env.resume(&job);
    assert_ok(&out, "resume");
    env.assert_finished(&job).await;
    // The job broke it (librbd would too, but only once the dead client's
    // watch timed out).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("still owns the partial destination's lock") && stderr.contains(&owners[0]),
        "{stderr}"
    );
    let blocklist = cluster().cli("ceph", &["osd", "blocklist", "ls"]);
    assert!(
        blocklist.lines().any(|l| l.starts_with(&owners[0])),
        "{} not blocklisted: {blocklist}",
        owners[0]
    );
}

/// A crash inside the job's snapshot creation (librbd takes the source's
/// lock, allocates the id, adds the snapshot to the header, then writes its
/// object map): whatever part of it happened, the resume finishes the
/// migration. The kill comes a range of delays after the creation starts,
/// so the runs land before, inside and after it. The dead driver's watch
/// (and lock) on the source would stall the resume until the OSD's watch
/// timeout: the resume blocklists it instead, as one of the job's drivers.
/// (A kill that lands after the driver closed the source, which a quick
/// creation allows at the longer delays, leaves nothing to fence out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_inside_the_snapshot_creation_then_resume() {
    let mut fenced_out = 0;
    for delay_us in [0, 2_000, 8_000, 16_000, 32_000, 64_000, 128_000] {
        let env = setup(&format!("snapkill{delay_us}")).await;
        let args = env.start_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut start = migrate(&args);
        start.env(livemig::job::fault::KILL_DELAY_ENV, delay_us.to_string());
        run_killed_at(start, "inside-snapshot-create");
        let job = env.job_id().await;
        let drivers = env.store.load(&job).await.unwrap().record.source_drivers;
        assert_eq!(drivers.len(), 1, "the dead driver recorded its source connection");
        let src = env.src_io.open_image_read_only(&env.volume, None).await.unwrap();
        let still_watching = src.watchers().await.unwrap().iter().any(|w| w.addr == drivers[0]);
        src.close().await;

        let out = env.resume(&job);
        let what = format!("resume after a kill {delay_us} us into the snapshot creation");
        assert_ok(&out, &what);
        env.assert_finished(&job).await;
        if !still_watching {
            continue;
        }
        fenced_out += 1;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("an earlier driver of this job still has the source open") && stderr.contains(&drivers[0]),
            "{what}: the dead driver was not fenced out: {stderr}"
        );
        let blocklist = cluster().cli("ceph", &["osd", "blocklist", "ls"]);
        assert!(
            blocklist.lines().any(|l| l.starts_with(&drivers[0])),
            "{what}: {} not blocklisted: {blocklist}",
            drivers[0]
        );
    }
    assert!(
        fenced_out > 0,
        "no kill landed while the dead driver had the source open"
    );
}

/// librbd's rename of the complete partial cut short after its first step
/// (the id object under the final name written) or its second (the
/// directory renamed too, the old id object left): staged with cls_rbd's own
/// methods, then resumed. Without the mend the first makes every later
/// rename fail (`EEXIST`), and the second leaves an orphan id object.
async fn rename_cut_short(tag: &str, directory_renamed: bool) {
    let env = setup(tag).await;
    let job = env.start_killed_at("after-copy-complete").await;
    let Phase::Copying { partial, .. } = env.phase(&job).await else {
        panic!("not copying: {:?}", env.phase(&job).await)
    };
    let final_name = env.volume.clone();
    let img = env.dst_io.open_image_read_only(&partial, None).await.unwrap();
    let id = img.info().await.unwrap().id;
    img.close().await;
    put_id_object(DST, &final_name, &id);
    if directory_renamed {
        let input = [ceph_string(&partial), ceph_string(&final_name), ceph_string(&id)].concat();
        env.dst_io
            .exec("rbd_directory", "rbd", "dir_rename_image", input, 0)
            .await
            .unwrap();
    }

    assert_ok(&env.resume(&job), "resume");
    env.assert_finished(&job).await;
    for name in [&partial, &final_name] {
        let left = env
            .dst_io
            .exec(&format!("rbd_id.{name}"), "rbd", "get_id", Vec::new(), 256)
            .await;
        match name == &final_name {
            true => assert_eq!(left.unwrap(), ceph_string(&id), "the final name's id object"),
            false => assert_eq!(
                left.map_err(|e| e.errno()),
                Err(Some(libc::ENOENT)),
                "the partial's id object is gone"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_cut_short_after_the_new_id_object_is_mended() {
    rename_cut_short("renid", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_cut_short_after_the_directory_is_mended() {
    rename_cut_short("rendir", true).await;
}

/// librbd moves an image to the trash in steps: the trash entry, then the
/// id object goes, then the directory entry. A crash before the last leaves
/// a listed name that no longer opens; staged here (a whole move, then the
/// directory entry put back with cls_rbd), the resume must finish the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trash_move_cut_short_is_finished_by_the_resume() {
    let env = setup("trashcut").await;
    let job = env.start_killed_at("after-snapshot-removed").await;
    let img = env.src_io.open_image_read_only(&env.volume, None).await.unwrap();
    let id = img.info().await.unwrap().id;
    img.close().await;
    cluster().cli("rbd", &["trash", "mv", &format!("{SRC}/{}", env.volume)]);
    let input = [ceph_string(&env.volume), ceph_string(&id)].concat();
    env.src_io
        .exec("rbd_directory", "rbd", "dir_add_image", input, 0)
        .await
        .unwrap();
    assert!(env.src_io.image_exists(&env.volume).await.unwrap(), "listed again");
    assert!(
        env.src_io.open_image_read_only(&env.volume, None).await.is_err(),
        "but it does not open"
    );

    assert_ok(&env.resume(&job), "resume");
    env.assert_finished(&job).await;
    assert!(
        env.src_io.trash_contains(&id).await.unwrap(),
        "the source is in the trash"
    );
}

/// librbd removes a snapshot by first moving it to its trash namespace
/// under a generated name: a process killed right after that leaves it
/// there. The resume must still leave the retired source without it (a
/// trashed image with a snapshot can never be purged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_removal_cut_short_is_finished_by_the_resume() {
    let env = setup("snaptrash").await;
    let job = env.start_killed_at("after-switched-recorded").await;
    let Phase::Switched {
        snapshot: Some(snapshot),
    } = env.phase(&job).await
    else {
        panic!("not switched: {:?}", env.phase(&job).await)
    };
    let img = env.src_io.open_image(&env.volume).await.unwrap();
    let snap = img
        .snap_list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == snapshot)
        .expect("the job's snapshot");
    let header = format!("rbd_header.{}", img.info().await.unwrap().id);
    img.close().await;
    // cls_rbd's snapshot_trash_add: what rbd_snap_remove does first.
    env.src_io
        .exec(&header, "rbd", "snapshot_trash_add", snap.id.to_le_bytes().to_vec(), 0)
        .await
        .unwrap();
    let img = env.src_io.open_image_read_only(&env.volume, None).await.unwrap();
    let listed = img.snap_list().await.unwrap();
    img.close().await;
    let trashed = listed.iter().find(|s| s.id == snap.id).expect("still listed");
    assert_ne!(trashed.name, snapshot, "not moved to the trash namespace");
    assert_eq!(trashed.given_name(), snapshot);

    assert_ok(&env.resume(&job), "resume");
    env.assert_finished(&job).await;
}

/// SIGKILL at random moments of a throttled copy, each time resumed by a new
/// process. Each kill waits until the record shows more progress than at the
/// kill before (so a slow start cannot turn every kill into a kill during
/// the lease wait), and every watermark the record ever shows must be at
/// least the one before: a resume continues from it, never from the start.
/// Random SIGKILLs while the OSDs copy (the default within one cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_during_the_server_side_copy_then_resume() {
    random_kills_during_the_copy_then_resume("server").await
}

/// Random SIGKILLs while livemig copies through the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_during_the_client_copy_then_resume() {
    random_kills_during_the_copy_then_resume("client").await
}

async fn random_kills_during_the_copy_then_resume(copy_mode: &str) {
    use rand::{Rng, SeedableRng};
    // 32 MiB of data: 8 objects at 4 MiB/s, one recorded step a second.
    let env = setup_sized("randkill", 64 << 20).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let resume_args = |job: &str| -> Vec<String> {
        let args = [
            "resume",
            job,
            "--wait",
            "60",
            "--lease-secs",
            LEASE,
            "--no-progress",
            "--bwlimit",
            "4M",
            "--copy-mode",
            copy_mode,
        ];
        args.iter().map(|s| s.to_string()).collect()
    };
    let mut args = env.start_args();
    args.extend(["--bwlimit", "4M", "--copy-mode", copy_mode].map(String::from));
    let spawn = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        migrate(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(&args);
    let mut killed_at = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    let mut job = None;
    while killed_at.len() < 3 {
        // Wait for recorded progress past the last kill's.
        let deadline = Instant::now() + Duration::from_secs(90);
        let before = killed_at.last().copied().unwrap_or(0);
        let mut exited = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "no recorded progress past {before} in 90 s: {seen:?}"
            );
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            if job.is_none() {
                job = env.try_job_id().await;
            }
            if let Some(id) = &job {
                if let Phase::Copying { watermark, .. } = env.phase(id).await {
                    if seen.last() != Some(&watermark) {
                        seen.push(watermark);
                    }
                    if watermark > before {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..700))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let id = job.clone().expect("a job recorded progress");
        child = spawn(&resume_args(&id));
        match env.phase(&id).await {
            Phase::Copying { watermark, .. } => killed_at.push(watermark),
            // Killed just after the copy: the resume finishes the rest.
            _ => break,
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?} {killed_at:?} {seen:?}");
    assert!(
        killed_at.len() >= 2,
        "the copy finished before the kills: {killed_at:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "a recorded watermark went back (the copy restarted): {seen:?}"
    );
    env.assert_finished(&env.job_id().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_keeps_out_a_second_driver_until_the_holder_dies() {
    let env = setup("lease").await;
    let mut args = env.start_args();
    args.extend(["--bwlimit".to_string(), "1M".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut holder = migrate(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the job holds the volume.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.catalog.volume(&env.volume).await.unwrap().migration.is_none() {
        assert!(Instant::now() < deadline, "the job never marked the volume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = env.job_id().await;
    // A second start of the same volume is refused.
    let again = run(&["start", &env.volume, "--to", DST, "--json"]);
    assert_eq!(
        again.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let err: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&again.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(err["kind"], "already_migrating");
    // A resume while the holder lives is refused: the lease is held.
    let busy = run(&["resume", &job, "--lease-secs", LEASE, "--json"]);
    assert_eq!(busy.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("being driven by another process"));
    // The holder dies (once it has recorded copy progress: a kill inside
    // its snapshot creation is another test's matter); after its lease
    // expires, resume takes over and finishes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(env.phase(&job).await, Phase::Copying { watermark, .. } if watermark > 0) {
        assert!(
            Instant::now() < deadline,
            "no copy progress recorded: {:?}",
            env.phase(&job).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_ok(&env.resume(&job), "resume after the holder died");
    env.assert_finished(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_format_record_is_read_and_a_newer_one_refused() {
    let raw = std::fs::read(fixture("job-record-v1.json")).unwrap();
    let record = livemig::job::decode("a1b2c3d4e5f6", &raw).unwrap();
    assert_eq!(
        record.policy,
        livemig::job::RetirePolicy::Trash { delay_secs: 24 * 3600 },
        "format 1 meant: trash, 24 h"
    );
    assert!(
        matches!(record.phase, Phase::Copying { watermark: 0, .. }),
        "format 1 had no watermark: {:?}",
        record.phase
    );
    assert_eq!(record.source_image_id, None);
    assert_eq!(record.original_volume.location, "slow-hdd");

    let env = setup("format").await;
    let old_id = unique("v1job");
    env.store.put_raw(&old_id, &env.volume, raw).await.unwrap();
    let status = run(&["status", &old_id, "--json"]);
    assert_ok(&status, "status of a format-1 record");

    // A record from a future release that this one cannot read.
    let new_id = unique("v9job");
    let future = br#"{"format": 9, "readable_by": 7, "record": {"id": "x", "something": "new"}}"#.to_vec();
    env.store.put_raw(&new_id, &env.volume, future.clone()).await.unwrap();
    // Other tests share the catalog object: compare this volume's record and
    // this job's stored record.
    let job_object = format!("livemig.job.{new_id}");
    let volume_before = env.catalog.volume(&env.volume).await.unwrap();
    let record_before = env.catalog.ioctx().read_guarded(&job_object).await.unwrap();
    for args in [
        vec!["status", new_id.as_str(), "--json"],
        vec!["resume", new_id.as_str(), "--json"],
        vec!["abort", new_id.as_str(), "--json"],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(err["kind"], "record_too_new", "{args:?}");
    }
    assert_eq!(
        env.catalog.volume(&env.volume).await.unwrap(),
        volume_before,
        "refusing changed the volume"
    );
    assert_eq!(
        env.catalog.ioctx().read_guarded(&job_object).await.unwrap(),
        record_before,
        "refusing changed the record"
    );
    let raw_after = env.store.load(&new_id).await.unwrap_err();
    assert_eq!(raw_after.kind(), livemig::ErrorKind::RecordTooNew);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_pauses_the_job_and_resume_finishes_it() {
    let env = setup("pause").await;
    let mut args = env.start_args();
    args.extend(["--bwlimit".to_string(), "2M".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = migrate(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let copying = match env.store.ids().await {
            Ok(ids) if !ids.is_empty() => {
                let mut found = false;
                for id in ids {
                    if let Ok(s) = env.store.load(&id).await {
                        if s.record.volume_id == env.volume {
                            found = matches!(s.record.phase, Phase::Copying { done_bytes, .. } if done_bytes > 0);
                        }
                    }
                }
                found
            }
            _ => false,
        };
        if copying {
            break;
        }
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("paused") && stderr.contains("migrate resume"),
        "{stderr}"
    );
    let job = env.job_id().await;
    assert!(
        matches!(env.phase(&job).await, Phase::Copying { .. }),
        "not paused while copying"
    );
    // Paused means: still held, nothing lost, resumable at once (the lease was released).
    assert_eq!(
        env.catalog.volume(&env.volume).await.unwrap().migration.as_deref(),
        Some(job.as_str())
    );
    let out = run(&["resume", &job, "--lease-secs", LEASE, "--json", "--no-progress"]);
    assert_ok(&out, "resume after pause");
    env.assert_finished(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_volume_reports_a_difference_from_the_retained_source() {
    let env = setup("verify").await;
    let args = env.start_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--keep-source");
    assert_ok(&run(&args), "start");
    assert_ok(&run(&["verify", &env.volume]), "verify of an intact copy");
    // Damage the destination: one 4 KiB block.
    let dst = env.dst_io.open_image(&env.volume).await.unwrap();
    write_at(&dst, 5 << 20, vec![0x5a; 4096]).await;
    dst.close().await;
    let out = run(&["verify", &env.volume, "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(report["identical"], false);
    let mismatches = report["report"]["mismatches"].as_array().unwrap();
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    let (off, len) = (mismatches[0][0].as_u64().unwrap(), mismatches[0][1].as_u64().unwrap());
    assert!(off >= 5 << 20 && off + len <= (5 << 20) + 4096, "reported {off}+{len}");
}

/// An id that names no job creates nothing anywhere: a well-formed unknown
/// id is `job_not_found` (pointing at the job list), a malformed one
/// `invalid_input`; status, resume and abort all say so, and the pool that
/// holds the jobs has exactly the objects it had. (An abort of an unknown
/// id once left an empty `livemig.job.<id>` object, and a later resume of
/// it reported a corrupt record.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_names_no_job_creates_nothing() {
    const POOL: &str = "jobs-unknown-ids";
    cluster().ensure_pool(POOL);
    // One real job record in the pool, so that the index exists.
    let env = setup("unknownids").await;
    let store = JobStore::new(cluster().connect().await.ioctx(POOL, "").await.unwrap());
    let raw = std::fs::read(fixture("job-record-v1.json")).unwrap();
    store.put_raw(&unique("known"), &env.volume, raw).await.unwrap();
    let objects = || {
        let mut list: Vec<String> = cluster()
            .cli("rados", &["-p", POOL, "ls"])
            .lines()
            .map(str::to_owned)
            .collect();
        list.sort();
        list
    };
    let before = objects();
    for (id, kind, exit) in [
        ("zzzz", "job_not_found", 3),
        ("deadbeef0000", "job_not_found", 3),
        ("../../etc", "invalid_input", 4),
        ("a.b", "invalid_input", 4),
    ] {
        for verb in ["abort", "resume", "status", "abort"] {
            let out = migrate_with_catalog(POOL, &[verb, id, "--json"]).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(exit), "{verb} {id}: {stderr}");
            let err: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
            assert_eq!(err["kind"], kind, "{verb} {id}: {stderr}");
            if kind == "job_not_found" {
                assert!(stderr.contains("migrate list"), "{verb} {id}: {stderr}");
                assert!(!stderr.contains("migrate catalog"), "{verb} {id}: {stderr}");
            }
            assert_eq!(objects(), before, "{verb} {id} changed the pool's objects");
        }
        let e = store.load(id).await.unwrap_err();
        assert_eq!(e.kind().as_str(), kind, "load {id}");
    }
}

/// A record written by the release before the job driver was restructured
/// (a `migrate start` killed right after creating its job, committed as it
/// was stored) decodes, and this release resumes it to the end: the world
/// it was written in (its pools, its source image, its volume in the
/// catalog) is made again first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_before_the_restructuring_decodes_and_resumes() {
    let raw = std::fs::read(fixture("job-record-before-house.json")).unwrap();
    let id = "1f83a5b2b48f";
    let record = livemig::job::decode(id, &raw).unwrap();
    assert_eq!(record.id, id);
    assert_eq!(record.phase, Phase::Created);
    assert_eq!(record.history.len(), 1);
    assert_eq!(record.history[0].0.as_str(), "created");
    let (src, dst) = (&record.source.image, &record.destination.image);
    const CATALOG_POOL: &str = "house-fixture-catalog";
    for p in [src.pool.as_str(), dst.pool.as_str(), CATALOG_POOL] {
        cluster().ensure_pool(p);
    }
    let c = cluster().connect().await;
    let src_io = c.ioctx(&src.pool, "").await.unwrap();
    let dst_io = c.ioctx(&dst.pool, "").await.unwrap();
    let catalog_io = c.ioctx(CATALOG_POOL, "").await.unwrap();
    // What an earlier run of this test on the same cluster left.
    for (io, name) in [(&dst_io, &dst.image), (&src_io, &src.image)] {
        if io.image_exists(name).await.unwrap() {
            io.remove_image(name).await.unwrap();
        }
    }
    let size = record.original_volume.size;
    src_io
        .create_image(&src.image, size, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&src.image).await.unwrap();
    write_at(&img, 1 << 20, random_bytes(11, 4 << 20)).await;
    img.metadata_set("tenant", "t1").await.unwrap();
    let want = digest(&img, size).await;
    img.close().await;
    let catalog = RadosCatalog::new(catalog_io.clone());
    let current = catalog.volume(&record.volume_id).await.ok();
    catalog
        .compare_and_swap(Cas {
            expect_no_volumes: if current.is_none() {
                vec![record.volume_id.clone()]
            } else {
                vec![]
            },
            expect_volumes: current.into_iter().collect(),
            put_volumes: vec![record.original_volume.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let store = JobStore::new(catalog_io);
    store.put_raw(id, &record.volume_id, raw).await.unwrap();

    let out = migrate_with_catalog(CATALOG_POOL, &["resume", id, "--lease-secs", LEASE, "--json"])
        .output()
        .unwrap();
    assert_ok(&out, "resume of the record written before the restructuring");
    let done = store.load(id).await.unwrap().record;
    assert_eq!(done.phase, Phase::Done);
    let phases: Vec<&str> = done.history.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(phases, ["created", "marked", "copying", "copied", "switched", "done"]);
    let volume = catalog.volume(&record.volume_id).await.unwrap();
    assert_eq!(volume.backing, record.destination);
    assert_eq!(volume.migration, None);
    let moved = dst_io.open_image_read_only(&dst.image, None).await.unwrap();
    assert_eq!(
        digest(&moved, size).await,
        want,
        "the destination holds the source's data"
    );
    let meta = moved.metadata_list().await.unwrap();
    moved.close().await;
    assert!(meta.contains(&("tenant".into(), "t1".into())), "{meta:?}");
    // The retired source goes (memstore keeps what the trash holds).
    for line in cluster().cli("rbd", &["trash", "ls", &src.pool]).lines() {
        if let Some(trash_id) = line.split_whitespace().next() {
            cluster().cli("rbd", &["trash", "rm", "--force", &format!("{}/{trash_id}", src.pool)]);
        }
    }
}

/// RADOS watch/notify, as a sync's driver waits for requests: a watcher is
/// woken by a notify from another connection and acknowledges it (the
/// notify returns only once every watcher has: unacknowledged, it would
/// end in ETIMEDOUT), and an object that does not exist cannot be watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_is_woken_by_a_notify_and_acknowledges_it() {
    cluster().ensure_pool(CATALOG);
    let io = cluster().connect().await.ioctx(CATALOG, "").await.unwrap();
    let oid = unique("watched");
    io.write_guarded(&oid, None, vec![("k".into(), b"v".to_vec())], vec![])
        .await
        .unwrap();
    let watch = io.watch(&oid).await.unwrap();
    let other = cluster().connect().await.ioctx(CATALOG, "").await.unwrap();
    let notifier = {
        let oid = oid.clone();
        tokio::spawn(async move { other.notify(&oid, Duration::from_secs(10)).await })
    };
    tokio::time::timeout(Duration::from_secs(60), watch.notified())
        .await
        .expect("the watcher was not woken")
        .unwrap();
    notifier.await.unwrap().expect("the notify was not acknowledged");
    drop(watch);
    assert!(io.watch(&unique("unwatched")).await.is_err());
    io.remove_object(&oid).await.unwrap();
}
