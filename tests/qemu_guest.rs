//! The native engine moving the volume of a real QEMU guest, held through
//! QMP (`stop`/`cont`) and re-pointed by swapping the file child of the
//! guest's raw node, against the real cluster.
//!
//! The guest (tests/common/guest.rs) boots a Linux kernel under
//! qemu-system-x86_64 and writes to its virtio disk during the whole
//! migration; afterwards every write it saw acknowledged must be on the
//! destination, it must still be writing (to the destination), and QEMU must
//! have no node left on the source. Kills of `migrate` while the guest is
//! held, and after the re-point, end consistently after resume or abort.

mod common;

use std::time::Duration;

use common::guest::{Layout, Vm, BLOCK, BLOCKS};
use common::*;
use livemig::catalog::{Access, Backing, Cas, Catalog, RadosCatalog, Volume, VolumeStatus};
use livemig::ceph::{CreateOptions, IoCtx};
use livemig::job::{Engine, JobRecord, JobStore, Phase};
use livemig::qemu::graph::rbd_node_if_any;
use livemig::qemu::Qmp;
use livemig::spec::ImageSpec;
use serde_json::json;

const SRC: &str = "guest-src";
const DST: &str = "guest-dst";
const CATALOG: &str = "guest-catalog";
const LEASE: &str = "3";
const SIZE: u64 = 64 << 20;
/// Guest writes a second.
const RATE: u32 = 100;

struct Env {
    vm: Vm,
    src_io: IoCtx,
    dst_io: IoCtx,
    catalog: RadosCatalog,
    store: JobStore,
    volume: String,
    original: Volume,
}

/// A 64 MiB volume attached to a booted guest that writes to it, in the
/// catalog with the guest's QMP socket.
async fn setup(tag: &str) -> Env {
    setup_with(tag, Layout::Libvirt).await
}

async fn setup_with(tag: &str, layout: Layout) -> Env {
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
    let vm = Vm::start(&volume, SRC, &volume, &cluster().conf, RATE, layout);
    let catalog = RadosCatalog::new(catalog_io.clone());
    let access = Access::Qmp {
        socket: vm.qmp_socket().display().to_string(),
    };
    let original = register_attached_volume(&catalog, SRC, &volume, SIZE, access).await;
    Env {
        vm,
        src_io,
        dst_io,
        catalog,
        store: JobStore::new(catalog_io),
        volume,
        original,
    }
}

fn migrate(args: &[&str]) -> std::process::Command {
    migrate_with_catalog(CATALOG, args)
}

impl Env {
    fn start_args(&self) -> Vec<&str> {
        vec![
            "start",
            &self.volume,
            "--to",
            DST,
            "--engine",
            "native",
            "--lease-secs",
            LEASE,
            "--json",
            "--no-progress",
        ]
    }

    async fn qmp(&self) -> Qmp {
        Qmp::connect(self.vm.qmp_socket()).await.unwrap()
    }

    async fn vm_status(&self) -> String {
        let status = self.qmp().await.execute("query-status", json!({})).await.unwrap();
        status["status"].as_str().unwrap().to_owned()
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

    /// Pauses the guest (QEMU drains its disk first), then checks `io`'s
    /// image against every write the guest saw acknowledged.
    async fn stop_and_verify(&self, io: &IoCtx) -> usize {
        self.qmp().await.execute("stop", json!({})).await.unwrap();
        let log = self.vm.log();
        let img = io.open_image_read_only(&self.volume, None).await.unwrap();
        let data = read_all(&img).await;
        img.close().await;
        assert_eq!(data.len() as u64, SIZE);
        let written = Vm::verify(&log, &data[..(BLOCKS * BLOCK) as usize]);
        assert!(
            data[(BLOCKS * BLOCK) as usize..].iter().all(|&b| b == 0),
            "bytes beyond the guest's blocks"
        );
        written
    }

    /// Done: the guest runs, on the destination only, still writing, and
    /// the destination holds every write it saw acknowledged. Returns the
    /// job and the name of QEMU's node of the destination.
    async fn assert_moved(&mut self) -> (JobRecord, String) {
        let job = self.job().await;
        assert_eq!(job.phase, Phase::Done, "{job:?}");
        let live = job.live.as_ref().unwrap();
        assert_eq!(live.engine, Engine::Native);
        assert!(live.cutover.as_ref().unwrap().downtime_ms().is_some(), "{live:?}");
        assert_eq!(self.vm_status().await, "running", "the guest was left paused");
        // QEMU serves one QMP client at a time: this connection is dropped below.
        let qmp = self.qmp().await;
        let src = ImageSpec::new(SRC, &self.volume);
        let dst = ImageSpec::new(DST, &self.volume);
        assert_eq!(
            rbd_node_if_any(&qmp, &src).await.unwrap(),
            None,
            "QEMU still has the source open"
        );
        let node = rbd_node_if_any(&qmp, &dst)
            .await
            .unwrap()
            .expect("QEMU opens the destination");
        // The guest's device still reads through its own raw node, now over the destination.
        let devices = qmp.execute("query-block", json!({})).await.unwrap();
        let root = &devices[0]["inserted"];
        assert_eq!(root["node-name"], "libvirt-1-format");
        assert!(root["image"]["filename"].as_str().unwrap().contains(DST), "{root}");
        // Readied while the guest was held (a run killed before that
        // re-points without it).
        assert!(
            node.node_name.starts_with("livemig-next-") || node.node_name.starts_with("livemig-rbd-"),
            "{node:?}"
        );
        drop(qmp);
        let v = self.catalog.volume(&self.volume).await.unwrap();
        assert_eq!(
            (v.backing.image, v.migration, v.status),
            (dst.clone(), None, VolumeStatus::InUse)
        );
        let atts = self.catalog.attachments(&self.volume).await.unwrap();
        assert_eq!(atts[0].connection.image, dst);
        // It keeps writing, to the destination.
        self.vm.wait_acks(20, Duration::from_secs(30));
        let written = self.stop_and_verify(&self.dst_io).await;
        assert!(written > 100, "only {written} blocks written");
        (job, node.node_name)
    }

    /// Rolled back: the guest runs on the source, which holds every
    /// acknowledged write; the catalog is as before; no destination.
    async fn assert_rolled_back(&mut self) {
        let job = self.job().await;
        assert!(matches!(job.phase, Phase::Aborted { .. }), "{job:?}");
        assert_eq!(self.catalog.volume(&self.volume).await.unwrap(), self.original);
        assert_eq!(self.vm_status().await, "running", "the guest was left paused");
        let qmp = self.qmp().await;
        assert!(rbd_node_if_any(&qmp, &ImageSpec::new(SRC, &self.volume))
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            rbd_node_if_any(&qmp, &ImageSpec::new(DST, &self.volume)).await.unwrap(),
            None,
            "QEMU still has the destination open"
        );
        drop(qmp);
        assert!(!self.dst_io.image_exists(&self.volume).await.unwrap());
        self.vm.wait_acks(20, Duration::from_secs(30));
        self.stop_and_verify(&self.src_io).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_guest_moves_by_the_native_engine_with_every_acknowledged_write() {
    let mut env = setup("guest-native").await;
    let out = migrate(&env.start_args()).output().unwrap();
    assert_ok(&out, "migrate start --engine native");
    let (job, node) = env.assert_moved().await;
    assert!(
        node.starts_with("livemig-next-"),
        "the re-point did not use the destination readied while the guest was held: {node}"
    );
    let cutover = job.live.unwrap().cutover.unwrap();
    eprintln!(
        "guest held for {} ms ({}); {:?}",
        cutover.downtime_ms().unwrap(),
        cutover.reason,
        cutover.steps
    );
}

async fn killed_then_resumed(tag: &str, point: &str, held_after_kill: bool) {
    let mut env = setup(tag).await;
    run_killed_at(migrate(&env.start_args()), point);
    let expected = if held_after_kill { "paused" } else { "running" };
    assert_eq!(env.vm_status().await, expected, "guest state after the kill at {point}");
    let job = env.job().await;
    let out = migrate(&[
        "resume",
        &job.id,
        "--wait",
        "60",
        "--no-progress",
        "--lease-secs",
        LEASE,
    ])
    .output()
    .unwrap();
    assert_ok(&out, "migrate resume");
    env.assert_moved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_guest_is_held_then_resumed() {
    killed_then_resumed("guest-kill-hold", "live-after-hold", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_repoint_then_resumed() {
    killed_then_resumed("guest-kill-repoint", "live-after-repoint", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_guest_is_held_then_aborted() {
    let mut env = setup("guest-kill-abort").await;
    // Held, fenced, the final delta applied and the destination readied in
    // QEMU: the abort must resume the guest and close the readied image.
    run_killed_at(migrate(&env.start_args()), "live-after-final-applied");
    assert_eq!(env.vm_status().await, "paused");
    let job = env.job().await;
    let out = migrate(&["abort", &job.id, "--wait", "60", "--lease-secs", LEASE])
        .output()
        .unwrap();
    assert_ok(&out, "migrate abort");
    env.assert_rolled_back().await;
}

/// Refusals change nothing: no job, no destination, the catalog and the
/// guest as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_that_cannot_be_held_or_repointed_are_refused() {
    let env = setup("guest-refuse").await;
    let refused = |args: &[&str], expected: &str| {
        let out = migrate(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?} was accepted: {text}");
        assert!(text.contains(expected), "{args:?}: expected {expected:?} in {text}");
    };
    // A paused guest: livemig would resume it at the end.
    env.qmp().await.execute("stop", json!({})).await.unwrap();
    refused(&env.start_args(), "not running");
    env.qmp().await.execute("cont", json!({})).await.unwrap();
    // The QEMU engine for a detached volume.
    let mut args = env.start_args();
    args[5] = "qemu";
    let detached = unique("guest-detached");
    env.src_io
        .create_image(&detached, 8 << 20, &CreateOptions::default())
        .await
        .unwrap();
    env.catalog
        .compare_and_swap(Cas {
            expect_no_volumes: vec![detached.clone()],
            put_volumes: vec![Volume {
                id: detached.clone(),
                size: 8 << 20,
                status: VolumeStatus::Available,
                migration: None,
                backing: Backing {
                    cluster: "local".into(),
                    image: ImageSpec::new(SRC, &detached),
                },
                location: String::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    args[1] = &detached;
    refused(&args, "not attached");
    // A device directly on the rbd node: no raw node whose child could be swapped.
    let direct = setup_with("guest-direct", Layout::DeviceOnRbd).await;
    refused(&direct.start_args(), "directly");
    assert_eq!(direct.vm_status().await, "running");
    // Nothing changed.
    for volume in [&env.volume, &detached, &direct.volume] {
        assert!(!env.dst_io.image_exists(volume).await.unwrap());
        for id in env.store.ids().await.unwrap() {
            assert_ne!(&env.store.load(&id).await.unwrap().record.volume_id, volume);
        }
    }
    assert_eq!(env.catalog.volume(&env.volume).await.unwrap(), env.original);
    assert_eq!(direct.catalog.volume(&direct.volume).await.unwrap(), direct.original);
    assert_eq!(env.vm_status().await, "running");
}
