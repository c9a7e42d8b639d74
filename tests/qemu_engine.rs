//! The QEMU engine against real QEMU (qemu-storage-daemon holding the
//! volume through its rbd driver and exporting it over userspace NBD) and
//! the real cluster: fio writes through QEMU during the whole mirror and
//! pivot; afterwards fio's verify on the destination image is clean.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use livemig::ceph::CreateOptions;
use livemig::qemu::mirror::{
    cancel, complete, find_rbd_node, start_mirror, wait_ready, MirrorOptions, RbdNode, RbdTarget, Readiness,
};
use livemig::qemu::Qmp;
use livemig::spec::ImageSpec;
use livemig::ErrorKind;

const SRC: &str = "qemu-src";
const DST: &str = "qemu-dst";

struct Guest {
    qsd: Child,
    dir: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qsd.kill();
        let _ = self.qsd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Guest {
    fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    fn nbd_uri(&self) -> String {
        format!("nbd+unix:///vol?socket={}", self.dir.join("nbd.sock").display())
    }

    /// fio writing `workload(size, rate_iops)` through QEMU's NBD export,
    /// saving its verify state for [`Guest::verify_on`].
    fn fio(&self, size: &str, rate_iops: &str, extra: &[&str]) -> Child {
        Command::new("fio")
            .arg("--ioengine=nbd")
            .arg(format!("--uri={}", self.nbd_uri()))
            .args(workload(size, rate_iops))
            .arg("--verify_state_save=1")
            .args(extra)
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fio is needed: run scripts/setup")
    }

    /// fio's verify pass of `workload(size, ..)`, reading `image` directly.
    fn verify_on(&self, image: &ImageSpec, size: &str) {
        self.verify_on_cluster(image, size, &cluster().conf)
    }

    /// [`Guest::verify_on`] on the cluster of `conf`.
    fn verify_on_cluster(&self, image: &ImageSpec, size: &str, conf: &std::path::Path) {
        let out = Command::new("fio")
            .args([
                "--ioengine=rbd",
                "--clientname=admin",
                &format!("--pool={}", image.pool),
            ])
            .arg(format!("--rbdname={}", image.image))
            .args(workload(size, "0"))
            .args(["--verify_only", "--verify_state_load=1"])
            .current_dir(&self.dir)
            .env("CEPH_CONF", conf)
            .output()
            .unwrap();
        assert_fio_clean(out, &format!("fio verify on {image}"));
    }
}

/// Waits for fio and fails the test unless it ended without an error.
async fn wait_fio(fio: Child, what: &str) {
    let out = tokio::task::spawn_blocking(move || fio.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_fio_clean(out, what);
}

fn assert_fio_clean(out: std::process::Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("err= 0"),
        "{what} saw an error (or, through QEMU, a disconnect): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A qemu-storage-daemon that opens `image` with its rbd driver (node
/// `disk0`) and exports it over NBD.
async fn guest(image: &ImageSpec, tag: &str) -> Guest {
    let dir = std::env::temp_dir().join(format!("livemig-qemu-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = cluster().conf.display().to_string();
    let qsd = qsd::qsd_command(&dir, &image.pool, &image.image, &conf)
        .spawn()
        .expect("qemu-storage-daemon is needed: run scripts/setup (QEMU with the rbd driver from bookworm-backports)");
    for _ in 0..200 {
        if qsd::qsd_ready(&dir) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Guest { qsd, dir }
}

/// fio arguments for the guest's workload (the same job definition is
/// verified later, so it must not change).
fn workload(size: &str, rate_iops: &str) -> Vec<String> {
    [
        "--name=guest",
        "--rw=randwrite",
        "--bs=16k",
        "--iodepth=4",
        "--verify=crc32c",
        "--randseed=7",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--size={size}"), format!("--rate_iops={rate_iops}")])
    .collect()
}

/// A source image with data, and the name it would have in the
/// destination pool (not created: a job creates it itself).
async fn setup(tag: &str, size: u64) -> (ImageSpec, ImageSpec) {
    cluster().ensure_pool(SRC);
    cluster().ensure_pool(DST);
    let c = cluster().connect().await;
    let name = unique(tag);
    let io = c.ioctx(SRC, "").await.unwrap();
    io.create_image(&name, size, &CreateOptions::default()).await.unwrap();
    let img = io.open_image(&name).await.unwrap();
    write_at(&img, size / 2, random_bytes(11, (size / 4) as usize)).await;
    img.close().await;
    (ImageSpec::new(SRC, &name), ImageSpec::new(DST, &name))
}

/// As [`setup`], with the destination image created (a bare QEMU mirror
/// writes into an existing image).
async fn setup_with_destination(tag: &str, size: u64) -> (ImageSpec, ImageSpec) {
    let (src, dst) = setup(tag, size).await;
    let c = cluster().connect().await;
    c.ioctx(DST, "")
        .await
        .unwrap()
        .create_image(&dst.image, size, &CreateOptions::default())
        .await
        .unwrap();
    (src, dst)
}

/// Mirrors the guest's `node` into `dst` as job `livemig-job` with target
/// node `livemig-dst`, at most `speed` bytes/s.
async fn start_test_mirror(qmp: &Qmp, node: &RbdNode, dst: &ImageSpec, speed: Option<u64>) {
    let target = RbdTarget {
        image: dst.clone(),
        conf: Some(cluster().conf.display().to_string()),
        user: None,
    };
    start_mirror(
        qmp,
        node,
        &target,
        "livemig-dst",
        "livemig-job",
        &MirrorOptions { speed },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_through_qemu_never_notices_the_mirror_and_pivot() {
    let (src, dst) = setup_with_destination("pivot", 128 << 20).await;
    let g = guest(&src, &src.image).await;
    let qmp = Qmp::connect(g.qmp_socket()).await.unwrap();
    // fio writes through QEMU for the whole migration (~10 s at 400 x 16 KiB/s)
    // and then verifies through QEMU, reading the destination by then.
    let fio = g.fio("64M", "400", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let node = find_rbd_node(&qmp, &src).await.unwrap();
    assert_eq!(node.node_name, "disk0", "found by image, which is disk0");
    start_test_mirror(&qmp, &node, &dst, None).await;
    let ready = wait_ready(&qmp, "livemig-job", None, |_| {}).await.unwrap();
    assert!(matches!(ready, Readiness::Ready { .. }));
    complete(&qmp, "livemig-job", &node.node_name).await.unwrap();

    // The source node is gone from QEMU; the destination node serves the guest.
    let e = find_rbd_node(&qmp, &src).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ImageNotFound);
    assert_eq!(find_rbd_node(&qmp, &dst).await.unwrap().node_name, "livemig-dst");

    wait_fio(fio, "fio through QEMU").await;
    drop(qmp);

    // The data fio did not touch (above 64 MiB) was mirrored too.
    let c = cluster().connect().await;
    let s_img = c
        .ioctx(SRC, "")
        .await
        .unwrap()
        .open_image_read_only(&src.image, None)
        .await
        .unwrap();
    let d_img = c
        .ioctx(DST, "")
        .await
        .unwrap()
        .open_image_read_only(&dst.image, None)
        .await
        .unwrap();
    let upper_src = s_img.read(64 << 20, 64 << 20, Vec::new()).await.unwrap();
    let upper_dst = d_img.read(64 << 20, 64 << 20, Vec::new()).await.unwrap();
    assert!(
        upper_src.iter().any(|b| *b != 0) && upper_src == upper_dst,
        "pre-existing data not mirrored"
    );
    s_img.close().await;
    d_img.close().await;

    // A final verify pass reads the destination image directly.
    g.verify_on(&dst, "64M");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_mid_mirror_fails_the_job_and_leaves_the_source_intact() {
    let (src, dst) = setup_with_destination("killed", 64 << 20).await;
    let c = cluster().connect().await;
    let img = c
        .ioctx(SRC, "")
        .await
        .unwrap()
        .open_image_read_only(&src.image, None)
        .await
        .unwrap();
    let before = digest(&img, 64 << 20).await;
    img.close().await;
    let mut g = guest(&src, &src.image).await;
    let qmp = Qmp::connect(g.qmp_socket()).await.unwrap();
    let node = find_rbd_node(&qmp, &src).await.unwrap();
    // Slow enough to be mid-copy when QEMU dies.
    start_test_mirror(&qmp, &node, &dst, Some(1 << 20)).await;
    let waiting = {
        let qmp = qmp.clone();
        tokio::spawn(async move { wait_ready(&qmp, "livemig-job", None, |_| {}).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    g.qsd.kill().unwrap();
    g.qsd.wait().unwrap();
    let e = waiting.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Hypervisor, "{e}");
    assert!(e.to_string().contains("gone"), "{e}");
    let img = c
        .ioctx(SRC, "")
        .await
        .unwrap()
        .open_image_read_only(&src.image, None)
        .await
        .unwrap();
    assert_eq!(digest(&img, 64 << 20).await, before, "source changed");
    img.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_mirror_leaves_the_guest_on_the_source() {
    let (src, dst) = setup_with_destination("cancel", 64 << 20).await;
    let g = guest(&src, &src.image).await;
    let qmp = Qmp::connect(g.qmp_socket()).await.unwrap();
    let node = find_rbd_node(&qmp, &src).await.unwrap();
    start_test_mirror(&qmp, &node, &dst, Some(1 << 20)).await;
    cancel(&qmp, "livemig-job", "livemig-dst").await.unwrap();
    assert_eq!(find_rbd_node(&qmp, &src).await.unwrap().node_name, "disk0");
    assert_eq!(
        find_rbd_node(&qmp, &dst).await.unwrap_err().kind(),
        ErrorKind::ImageNotFound,
        "destination node removed"
    );
}

const CATALOG: &str = "qemu-catalog";

/// A volume registered in the catalog, attached to `g` through its QMP socket.
async fn register(src: &ImageSpec, g: &Guest, size: u64) -> livemig::catalog::RadosCatalog {
    use livemig::catalog::{Access, Attachment, Backing, Cas, Catalog, Instance, RadosCatalog, Volume, VolumeStatus};
    cluster().ensure_pool(CATALOG);
    let c = cluster().connect().await;
    let catalog = RadosCatalog::new(c.ioctx(CATALOG, "").await.unwrap());
    let backing = Backing {
        cluster: "local".into(),
        image: src.clone(),
    };
    catalog
        .compare_and_swap(Cas {
            put_volumes: vec![Volume {
                id: src.image.clone(),
                size,
                status: VolumeStatus::InUse,
                migration: None,
                backing: backing.clone(),
                location: String::new(),
            }],
            put_instances: vec![Instance {
                id: format!("vm-{}", src.image),
                name: String::new(),
            }],
            put_attachments: vec![Attachment {
                volume_id: src.image.clone(),
                instance_id: format!("vm-{}", src.image),
                device: "vdb".into(),
                access: Access::Qmp {
                    socket: g.qmp_socket().display().to_string(),
                },
                connection: backing,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    catalog
}

fn migrate(args: &[&str]) -> Command {
    migrate_with_catalog(CATALOG, args)
}

/// A volume moved by a job whose `migrate start` may be killed at
/// `kill_at` (then resumed by another process), while fio writes through
/// QEMU: fio never errs, fio's verify on the destination image is clean,
/// the catalog names the destination, QEMU no longer has the source open.
async fn job_moves_a_volume_qemu_writes_to(kill_at: Option<&str>) {
    use livemig::catalog::Catalog;
    let size = 128 << 20;
    let (src, dst) = setup(kill_at.map_or("qjob", |_| "qkill"), size).await;
    let c = cluster().connect().await;
    let g = guest(&src, &src.image).await;
    let catalog = register(&src, &g, size).await;
    let fio = g.fio("64M", "400", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut start = migrate(&["start", &src.image, "--to", DST, "--lease-secs", "3", "--no-progress"]);
    if let Some(point) = kill_at {
        run_killed_at(start, point);
        let store = livemig::job::JobStore::new(c.ioctx(CATALOG, "").await.unwrap());
        let mut job = None;
        for id in store.ids().await.unwrap() {
            if store.load(&id).await.unwrap().record.volume_id == src.image {
                job = Some(id);
            }
        }
        let out = migrate(&[
            "resume",
            &job.unwrap(),
            "--wait",
            "60",
            "--lease-secs",
            "3",
            "--no-progress",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "resume after {point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let out = start.output().unwrap();
        assert!(
            out.status.success(),
            "migrate start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("QEMU mirrors"), "{text}");
    }
    let v = catalog.volume(&src.image).await.unwrap();
    assert_eq!(v.backing.image, dst);
    assert_eq!(v.migration, None);
    assert_eq!(catalog.attachments(&src.image).await.unwrap()[0].connection.image, dst);
    let qmp = Qmp::connect(g.qmp_socket()).await.unwrap();
    assert_eq!(
        find_rbd_node(&qmp, &src).await.unwrap_err().kind(),
        ErrorKind::ImageNotFound,
        "source node still in QEMU"
    );
    find_rbd_node(&qmp, &dst).await.unwrap();
    drop(qmp);
    wait_fio(fio, "fio through QEMU").await;
    g.verify_on(&dst, "64M");
    // The source was retired to the trash (QEMU let go of it).
    assert!(!c.ioctx(SRC, "").await.unwrap().image_exists(&src.image).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_moves_a_volume_attached_to_qemu() {
    job_moves_a_volume_qemu_writes_to(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_job_killed_before_ready_then_resumed() {
    job_moves_a_volume_qemu_writes_to(Some("qemu-after-mirror-started")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_job_killed_after_ready_then_resumed() {
    job_moves_a_volume_qemu_writes_to(Some("qemu-after-ready")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_job_killed_between_switch_and_pivot_then_resumed() {
    job_moves_a_volume_qemu_writes_to(Some("qemu-after-switch")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_job_killed_after_pivot_then_resumed() {
    job_moves_a_volume_qemu_writes_to(Some("qemu-after-complete")).await;
}

async fn jobs(store: &livemig::job::JobStore) -> Vec<livemig::job::JobRecord> {
    let mut out = Vec::new();
    for id in store.ids().await.unwrap() {
        out.push(store.load(&id).await.unwrap().record);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_during_a_job_rolls_it_back() {
    use livemig::catalog::Catalog;
    let size = 64 << 20;
    let (src, dst) = setup("qjobkill", size).await;
    let c = cluster().connect().await;
    let dst_io = c.ioctx(DST, "").await.unwrap();
    let src_img = c
        .ioctx(SRC, "")
        .await
        .unwrap()
        .open_image_read_only(&src.image, None)
        .await
        .unwrap();
    let before = digest(&src_img, size).await;
    src_img.close().await;
    let mut g = guest(&src, &src.image).await;
    let catalog = register(&src, &g, size).await;
    let original = catalog.volume(&src.image).await.unwrap();
    // Slow (1 MiB/s) so that QEMU dies mid-mirror.
    let job = migrate(&["start", &src.image, "--to", DST, "--bwlimit", "1M", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    g.qsd.kill().unwrap();
    g.qsd.wait().unwrap();
    let out = tokio::task::spawn_blocking(move || job.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rolled back") && stderr.contains("QEMU"), "{stderr}");
    assert_eq!(catalog.volume(&src.image).await.unwrap(), original, "catalog changed");
    assert!(
        !dst_io.image_exists(&dst.image).await.unwrap(),
        "destination left behind"
    );
    let src_img = c
        .ioctx(SRC, "")
        .await
        .unwrap()
        .open_image_read_only(&src.image, None)
        .await
        .unwrap();
    assert_eq!(digest(&src_img, size).await, before, "source changed");
    src_img.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_does_not_converge_is_made_write_blocking() {
    use livemig::catalog::Catalog;
    let size = 64 << 20;
    let (src, dst) = setup("qstall", size).await;
    let c = cluster().connect().await;
    let g = guest(&src, &src.image).await;
    let catalog = register(&src, &g, size).await;
    // The guest dirties ~12 MB/s over 16 MiB; the mirror may copy 4 MB/s
    // (a third of it, so that a slow machine's guest still outpaces it).
    let fio = g.fio("16M", "800", &["--time_based", "--runtime=25"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = migrate(&[
        "start",
        &src.image,
        "--to",
        DST,
        "--bwlimit",
        "4M",
        "--mirror-stall-secs",
        "2",
        "--no-progress",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = livemig::job::JobStore::new(c.ioctx(CATALOG, "").await.unwrap());
    let job = jobs(&store)
        .await
        .into_iter()
        .find(|r| r.volume_id == src.image)
        .unwrap();
    let mirror = job.live.unwrap().qemu.unwrap();
    assert!(
        mirror.write_blocking_forced,
        "the mirror converged without write-blocking: {mirror:?}"
    );
    assert_eq!(catalog.volume(&src.image).await.unwrap().backing.image, dst);
    wait_fio(fio, "fio through QEMU").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_pool_that_fills_up_stops_the_mirror_and_rolls_back() {
    use livemig::catalog::Catalog;
    let size = 64 << 20;
    let (src, _) = setup("qfull", size).await;
    let c = cluster().connect().await;
    // A pool of its own: its quota must not stop other tests.
    let pool = unique("qemu-full");
    cluster().ensure_pool(&pool);
    let g = guest(&src, &src.image).await;
    let catalog = register(&src, &g, size).await;
    let original = catalog.volume(&src.image).await.unwrap();
    let fio = g.fio("16M", "100", &["--time_based", "--runtime=15"]);
    // A quota leaves the pool room for the source's allocated objects (32
    // MiB: its data and the guest's writes, so the precheck lets the job
    // start) but not for all the mirror has to copy (64 MiB). The quota is set while the
    // pool is empty: pool statistics lag by seconds, and a quota computed
    // from them mid-mirror could leave no room at all, so that the pool
    // blocks writes before anything can notice.
    cluster().cli(
        "ceph",
        &[
            "osd",
            "pool",
            "set-quota",
            &pool,
            "max_bytes",
            &(40u64 << 20).to_string(),
        ],
    );
    // Slow (2 MB/s for 64 MiB), so that the mirror is still running when
    // the engine looks at the pool.
    let job = migrate(&["start", &src.image, "--to", &pool, "--bwlimit", "2M", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || job.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rolled back") && stderr.contains("nearly full"),
        "{stderr}"
    );
    // Nothing changed: the catalog, the guest (still on the source, no
    // destination node), no destination image; fio never saw an error.
    assert_eq!(catalog.volume(&src.image).await.unwrap(), original, "catalog changed");
    let qmp = Qmp::connect(g.qmp_socket()).await.unwrap();
    assert_eq!(find_rbd_node(&qmp, &src).await.unwrap().node_name, "disk0");
    let dst_in_pool = ImageSpec::new(&pool, &src.image);
    assert_eq!(
        find_rbd_node(&qmp, &dst_in_pool).await.unwrap_err().kind(),
        ErrorKind::ImageNotFound,
        "destination node removed"
    );
    assert!(
        !c.ioctx(&pool, "")
            .await
            .unwrap()
            .image_exists(&src.image)
            .await
            .unwrap(),
        "destination image left behind"
    );
    wait_fio(fio, "fio through QEMU while the pool filled up").await;
}

/// The QEMU engine across clusters by the catalog's pool map: QEMU opens
/// the destination on the other cluster (with the conf the catalog
/// registers for it), mirrors into it and pivots while fio writes; fio never
/// errs, its verify on the other cluster's image is clean, and the catalog
/// names that image with the mapping's location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_qemu_writes_to_moves_to_another_cluster() {
    use livemig::catalog::Catalog;
    let size = 128 << 20;
    let (src, dst) = setup("qxc", size).await;
    let g = guest(&src, &src.image).await;
    let catalog = register(&src, &g, size).await;
    let other = second_cluster();
    other.ensure_pool(DST);
    let conf = other.conf.display().to_string();
    for args in [
        vec!["catalog", "add-cluster", "b", "--conf", &conf],
        vec![
            "catalog",
            "map-pool",
            "--from",
            SRC,
            "--to",
            "b/qemu-dst",
            "--location",
            "site-b",
        ],
    ] {
        let out = migrate(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fio = g.fio("64M", "400", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = migrate(&[
        "start",
        &src.image,
        "--to-cluster",
        "b",
        "--lease-secs",
        "3",
        "--no-progress",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "migrate start --to-cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("QEMU mirrors"));
    let v = catalog.volume(&src.image).await.unwrap();
    assert_eq!(
        (v.backing.cluster.as_str(), &v.backing.image, v.location.as_str()),
        ("b", &dst, "site-b")
    );
    let attachment = &catalog.attachments(&src.image).await.unwrap()[0];
    assert_eq!(
        (attachment.connection.cluster.as_str(), &attachment.connection.image),
        ("b", &dst)
    );
    let qmp = Qmp::connect(g.qmp_socket()).await.unwrap();
    find_rbd_node(&qmp, &dst).await.unwrap();
    drop(qmp);
    wait_fio(fio, "fio through QEMU").await;
    g.verify_on_cluster(&dst, "64M", &other.conf);
    let c = cluster().connect().await;
    assert!(!c.ioctx(SRC, "").await.unwrap().image_exists(&src.image).await.unwrap());
}
