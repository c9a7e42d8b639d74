//! Server-side copy (the OSDs move the data objects) against a real Ceph
//! cluster: every layout, from a snapshot and from a held head, thin where
//! the source holds zeros, the object map right; and where the OSDs cannot
//! copy, the client does (auto) or nothing is changed (server).

mod common;

use common::*;
use livemig::ceph::{Cluster, CreateOptions, Image, IoCtx};
use livemig::mirror::{compare_images, Copier, CopyMethod, CopyMode, CopyOptions, SourceHold};
use livemig::spec::ImageSpec;
use livemig::ErrorKind;

const SRC_POOL: &str = "sscopy-src";
const DST_POOL: &str = "sscopy-dst";
const DATA_POOL: &str = "sscopy-data";
const SRC_NS: &str = "tenant-a";
const DST_NS: &str = "tenant-b";

fn setup_pools() {
    let c = cluster();
    for p in [SRC_POOL, DST_POOL, DATA_POOL] {
        c.ensure_pool(p);
    }
    for (pool, ns) in [(SRC_POOL, SRC_NS), (DST_POOL, DST_NS)] {
        let listed = c.cli("rbd", &["namespace", "ls", pool]);
        if !listed.lines().any(|l| l.trim() == ns) {
            c.cli("rbd", &["namespace", "create", &format!("{pool}/{ns}")]);
        }
    }
}

fn copier(mode: CopyMode, always_snapshot: bool) -> Copier {
    Copier::new(CopyOptions {
        copy_mode: mode,
        always_snapshot,
        ..Default::default()
    })
}

/// `rbd du`'s used bytes of an image (from its object map with fast-diff).
fn used_bytes(spec: &str) -> u64 {
    used_bytes_on(cluster(), spec)
}

fn used_bytes_on(c: &TestCluster, spec: &str) -> u64 {
    let out = c.cli("rbd", &["du", "--format", "json", spec]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("rbd du json");
    v["images"][0]["used_size"].as_u64().expect("used_size")
}

/// Runs `rbd object-map check` and asserts it left the map valid (it
/// flags the map invalid when an object's existence disagrees with it).
fn assert_object_map_clean(spec: &str) {
    assert_object_map_clean_on(cluster(), spec)
}

fn assert_object_map_clean_on(c: &TestCluster, spec: &str) {
    c.cli("rbd", &["object-map", "check", "--no-progress", spec]);
    let info = c.cli("rbd", &["info", "--format", "json", spec]);
    let v: serde_json::Value = serde_json::from_str(&info).expect("rbd info json");
    let flags: Vec<String> = v["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(flags.is_empty(), "{spec}: the object map is not clean: {flags:?}");
}

/// The data objects of an image that exist in `pool[/ns]`.
fn data_objects(pool: &str, ns: &str, prefix: &str) -> Vec<String> {
    let mut args = vec!["-p", pool, "ls"];
    if !ns.is_empty() {
        args.extend(["-N", ns]);
    }
    let mut names: Vec<String> = cluster()
        .cli("rados", &args)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn block_name_prefix(spec: &str) -> String {
    rbd_info(cluster(), spec)["block_name_prefix"]
        .as_str()
        .expect("prefix")
        .to_owned()
}

fn rbd_info(c: &TestCluster, spec: &str) -> serde_json::Value {
    let info = c.cli("rbd", &["info", "--format", "json", spec]);
    serde_json::from_str(&info).expect("rbd info json")
}

fn spec(pool: &str, namespace: &str, image: &str) -> ImageSpec {
    ImageSpec {
        pool: pool.into(),
        namespace: namespace.into(),
        image: image.into(),
    }
}

async fn assert_identical(a: &Image, b: &Image) {
    let report = compare_images(a, b).await.unwrap();
    assert!(report.identical(), "content differs: {report:?}");
    assert_eq!(read_all(a).await, read_all(b).await);
}

/// Writes `len` bytes of data at each of `offsets` (and leaves the rest unwritten).
async fn fill(img: &Image, seed: u64, offsets: &[u64], len: usize) {
    for (i, off) in offsets.iter().enumerate() {
        write_at(img, *off, random_bytes(seed + i as u64, len)).await;
    }
}

/// Every layout the OSDs copy: default, 1 MiB objects, fancy striping, a
/// namespace on each side, the source's data in a separate data pool; each
/// held by its exclusive lock and through a snapshot. The copy is
/// byte-identical, the OSDs made it, the layout is kept, the object map
/// checks clean and `rbd du` matches the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layout_is_copied_by_the_osds_byte_identical() {
    setup_pools();
    let c = cluster().connect().await;
    let layouts: [(&str, CreateOptions, &str, &str); 5] = [
        ("default", CreateOptions::default(), "", ""),
        (
            "object-size",
            CreateOptions {
                order: Some(20),
                ..Default::default()
            },
            "",
            "",
        ),
        ("striped", striped_layout(), "", ""),
        ("namespace", CreateOptions::default(), SRC_NS, DST_NS),
        (
            "data-pool",
            CreateOptions::default().in_data_pool(Some(DATA_POOL)),
            "",
            "",
        ),
    ];
    for (label, opts, src_ns, dst_ns) in layouts {
        for snapshot in [false, true] {
            let name = unique(&format!("ss-{label}"));
            let src_io = c.ioctx(SRC_POOL, src_ns).await.unwrap();
            let dst_io = c.ioctx(DST_POOL, dst_ns).await.unwrap();
            let size: u64 = 24 << 20;
            src_io.create_image(&name, size, &opts).await.unwrap();
            let img = src_io.open_image(&name).await.unwrap();
            // Scattered data: whole objects, pieces, a hole, the tail.
            fill(&img, 7, &[0, 3 << 20, (9 << 20) + 4096, size - 100_000], 100_000).await;
            write_at(&img, 12 << 20, random_bytes(8, 5 << 20)).await;
            img.metadata_set("owner", label).await.unwrap();
            img.close().await;

            let src = spec(SRC_POOL, src_ns, &name);
            let dst = spec(DST_POOL, dst_ns, &name);
            let report = copier(CopyMode::Server, snapshot)
                .run(&c, &src, &c, &dst)
                .await
                .unwrap_or_else(|e| panic!("{label} snapshot={snapshot}: {e}"));
            assert_eq!(report.method, CopyMethod::ServerSide, "{label}");
            assert_eq!(report.client_reason, None);
            let hold = if snapshot {
                SourceHold::Snapshot
            } else {
                SourceHold::ExclusiveLock
            };
            assert_eq!(report.source_hold, hold);

            let a = src_io.open_image_read_only(&name, None).await.unwrap();
            let b = dst_io.open_image_read_only(&name, None).await.unwrap();
            assert_identical(&a, &b).await;
            let (ia, ib) = (a.info().await.unwrap(), b.info().await.unwrap());
            assert_eq!(
                (ia.size, ia.order, ia.stripe_unit, ia.stripe_count),
                (ib.size, ib.order, ib.stripe_unit, ib.stripe_count),
                "{label}"
            );
            assert_eq!(a.metadata_list().await.unwrap(), b.metadata_list().await.unwrap());
            assert!(a.snap_list().await.unwrap().is_empty(), "snapshot left on the source");
            a.close().await;
            b.close().await;
            let (src_spec, dst_spec) = (src.to_string(), dst.to_string());
            assert_object_map_clean(&dst_spec);
            assert_eq!(used_bytes(&dst_spec), used_bytes(&src_spec), "{label}: rbd du");
            // The destination is a normal image: written through librbd
            // after the copy, it reads back what was written.
            let b = dst_io.open_image(&name).await.unwrap();
            write_at(&b, 20 << 20, random_bytes(99, 8192)).await;
            let back = b.read(20 << 20, 8192, Vec::new()).await.unwrap();
            assert_eq!(back, random_bytes(99, 8192));
            b.close().await;
            assert_object_map_clean(&dst_spec);
        }
    }
}

/// Read from a snapshot, the copy equals the snapshot, not the head
/// written after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_a_snapshot_is_the_snapshot_not_the_head() {
    setup_pools();
    let c = cluster().connect().await;
    let (src_io, dst_io) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    let name = unique("ss-snap");
    src_io
        .create_image(&name, 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let head = src_io.open_image(&name).await.unwrap();
    write_at(&head, 0, random_bytes(1, 10 << 20)).await;
    head.snap_create("s").await.unwrap();
    // After the snapshot: an object changed, one created.
    write_at(&head, 1 << 20, random_bytes(2, 4096)).await;
    write_at(&head, 13 << 20, random_bytes(3, 4096)).await;
    let info = head.info().await.unwrap();
    dst_io
        .create_image(&name, info.size, &CreateOptions::like(&info))
        .await
        .unwrap();
    let snap = src_io.open_image_read_only(&name, Some("s")).await.unwrap();
    let dst = dst_io.open_image(&name).await.unwrap();
    let p = copier(CopyMode::Server, false).transfer(&snap, &dst, 0).await.unwrap();
    assert_eq!(p.method, CopyMethod::ServerSide);
    assert_identical(&snap, &dst).await;
    let differs = compare_images(&head, &dst).await.unwrap();
    assert!(!differs.identical(), "the copy followed the head, not the snapshot");
    dst.close().await;
    snap.close().await;
    head.close().await;
    assert_object_map_clean(&format!("{DST_POOL}/{name}"));
}

/// An allocated source object that holds only zeros is not copied (the
/// destination stays thin); objects with data anywhere in them are, also
/// ones whose first 64 KiB are zeros or whose only data is their last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_zero_object_stays_unallocated() {
    setup_pools();
    let c = cluster().connect().await;
    let (src_io, dst_io) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    let name = unique("ss-zeros");
    let mb: u64 = 1 << 20;
    src_io
        .create_image(
            &name,
            8 * 4 * mb,
            &CreateOptions {
                order: Some(22),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    // Object 0: zeros written over all of it (allocated, all zero).
    write_at(&img, 0, vec![0u8; 4 << 20]).await;
    // Object 1: zeros, then data after the first 64 KiB.
    write_at(&img, 4 * mb, vec![0u8; 1 << 20]).await;
    write_at(&img, 4 * mb + (64 << 10), random_bytes(5, 100)).await;
    // Object 2: zeros and one non-zero last byte.
    let mut last = vec![0u8; 4 << 20];
    *last.last_mut().unwrap() = 1;
    write_at(&img, 8 * mb, last).await;
    // Object 3: plain data. Object 4: a little zero write only.
    write_at(&img, 12 * mb, random_bytes(6, 1 << 20)).await;
    write_at(&img, 16 * mb + 512, vec![0u8; 4096]).await;
    img.close().await;
    let src = spec(SRC_POOL, "", &name);
    let dst = spec(DST_POOL, "", &name);
    let src_prefix = block_name_prefix(&src.to_string());
    assert_eq!(data_objects(SRC_POOL, "", &src_prefix).len(), 5, "the source's objects");

    let report = copier(CopyMode::Server, false).run(&c, &src, &c, &dst).await.unwrap();
    assert_eq!(report.method, CopyMethod::ServerSide);
    let prefix = block_name_prefix(&dst.to_string());
    let objects = data_objects(DST_POOL, "", &prefix);
    let want: Vec<String> = [1, 2, 3].iter().map(|n| format!("{prefix}.{n:016x}")).collect();
    assert_eq!(objects, want, "only the objects with data are allocated");
    let a = src_io.open_image_read_only(&name, None).await.unwrap();
    let b = dst_io.open_image_read_only(&name, None).await.unwrap();
    assert_identical(&a, &b).await;
    a.close().await;
    b.close().await;
    assert_object_map_clean(&dst.to_string());
    assert_eq!(used_bytes(&dst.to_string()), 3 * 4 * mb);
}

/// Where the OSDs cannot copy (another cluster, a clone whose parent holds
/// data), auto mode copies through the client and says why; server mode
/// refuses with `server_copy_unavailable` and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_osds_cannot_copy_auto_uses_the_client_and_server_refuses() {
    setup_pools();
    let c = cluster().connect().await;
    let c2 = second_cluster().connect().await;
    second_cluster().ensure_pool(DST_POOL);
    let src_io = c.ioctx(SRC_POOL, "").await.unwrap();
    let name = unique("ss-fallback");
    src_io
        .create_image(&name, 8 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(11, 6 << 20)).await;
    img.snap_create("base").await.unwrap();
    img.close().await;
    cluster().cli("rbd", &["snap", "protect", &format!("{SRC_POOL}/{name}@base")]);
    let clone = unique("ss-clone");
    cluster().cli(
        "rbd",
        &[
            "clone",
            &format!("{SRC_POOL}/{name}@base"),
            &format!("{SRC_POOL}/{clone}"),
        ],
    );
    let src = spec(SRC_POOL, "", &name);
    let clone_src = spec(SRC_POOL, "", &clone);

    let cases: [(&Cluster, &ImageSpec, &str); 2] = [(&c2, &src, "different clusters"), (&c, &clone_src, "clone")];
    for (dst_cluster, source, why) in cases {
        let dst = spec(DST_POOL, "", &unique("ss-fb-dst"));
        let dst_io = dst_cluster.ioctx(DST_POOL, "").await.unwrap();
        let before = pool_state(&[&dst_io], "ss-fb-dst").await;
        let err = copier(CopyMode::Server, false)
            .run(&c, source, dst_cluster, &dst)
            .await
            .expect_err("server mode where the OSDs cannot copy");
        assert_eq!(err.kind(), ErrorKind::ServerCopyUnavailable, "{err}");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(
            pool_state(&[&dst_io], "ss-fb-dst").await,
            before,
            "server mode changed something"
        );
        let s = src_io.open_image(&source.image).await.unwrap();
        let snaps: Vec<String> = s.snap_list().await.unwrap().into_iter().map(|x| x.name).collect();
        assert!(snaps.iter().all(|n| n == "base"), "left a snapshot: {snaps:?}");
        s.close().await;

        let report = copier(CopyMode::Auto, false)
            .run(&c, source, dst_cluster, &dst)
            .await
            .unwrap();
        assert_eq!(report.method, CopyMethod::Client);
        let reason = report.client_reason.expect("a reason");
        assert!(reason.contains(why), "{reason}");
        let a = src_io.open_image_read_only(&source.image, None).await.unwrap();
        let b = dst_io.open_image_read_only(&dst.image, None).await.unwrap();
        assert_identical(&a, &b).await;
        a.close().await;
        b.close().await;
    }
}

/// Asked for the client copy, the client copies (and says it was asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_copies_through_the_client() {
    setup_pools();
    let c = cluster().connect().await;
    let (src_io, dst_io): (IoCtx, IoCtx) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    let name = unique("ss-client");
    src_io
        .create_image(&name, 8 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(21, 5 << 20)).await;
    img.close().await;
    let (src, dst) = (spec(SRC_POOL, "", &name), spec(DST_POOL, "", &name));
    let report = copier(CopyMode::Client, false).run(&c, &src, &c, &dst).await.unwrap();
    assert_eq!((report.method, report.client_reason), (CopyMethod::Client, None));
    let a = src_io.open_image_read_only(&name, None).await.unwrap();
    let b = dst_io.open_image_read_only(&name, None).await.unwrap();
    assert_identical(&a, &b).await;
    a.close().await;
    b.close().await;
}

/// The destination's data objects go to the data pool asked for (its own
/// pool keeps only its metadata), copied by the OSDs or by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_keeps_its_data_in_the_data_pool_asked_for() {
    setup_pools();
    let c = cluster().connect().await;
    let (src_io, dst_io) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    let name = unique("ss-into-data-pool");
    src_io
        .create_image(&name, 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    fill(&img, 31, &[0, 5 << 20, (11 << 20) + 512], 700_000).await;
    img.close().await;
    let src = spec(SRC_POOL, "", &name);
    for (mode, method) in [
        (CopyMode::Server, CopyMethod::ServerSide),
        (CopyMode::Client, CopyMethod::Client),
    ] {
        let dst = spec(DST_POOL, "", &unique("ss-in-data-pool"));
        let report = Copier::new(CopyOptions {
            copy_mode: mode,
            data_pool: Some(DATA_POOL.into()),
            ..Default::default()
        })
        .run(&c, &src, &c, &dst)
        .await
        .unwrap();
        assert_eq!(report.method, method);
        let dst_spec = dst.to_string();
        assert_eq!(rbd_info(cluster(), &dst_spec)["data_pool"], DATA_POOL);
        let prefix = block_name_prefix(&dst_spec);
        assert_eq!(data_objects(DST_POOL, "", &prefix), Vec::<String>::new());
        assert_eq!(data_objects(DATA_POOL, "", &prefix).len(), 3, "{mode:?}");
        let a = src_io.open_image_read_only(&name, None).await.unwrap();
        let b = dst_io.open_image_read_only(&dst.image, None).await.unwrap();
        assert_identical(&a, &b).await;
        a.close().await;
        b.close().await;
        assert_object_map_clean(&dst_spec);
        assert_eq!(used_bytes(&dst_spec), used_bytes(&src.to_string()));
    }
}

const EC_PROFILE: &str = "livemig-k2m1";

/// An erasure-coded pool (2+1, one chunk per OSD) on the second cluster,
/// which scripts/test starts with three BlueStore OSDs: EC overwrites,
/// which RBD data needs, are a BlueStore feature.
fn ensure_ec_pool(c: &TestCluster, pool: &str, overwrites: bool) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if c.cli("ceph", &["osd", "pool", "ls"]).lines().any(|l| l == pool) {
        return;
    }
    c.cli(
        "ceph",
        &[
            "osd",
            "erasure-code-profile",
            "set",
            EC_PROFILE,
            "k=2",
            "m=1",
            "crush-failure-domain=osd",
        ],
    );
    c.cli(
        "ceph",
        &["osd", "pool", "create", pool, "8", "8", "erasure", EC_PROFILE],
    );
    if overwrites {
        let out = std::process::Command::new("ceph")
            .arg("-c")
            .arg(&c.conf)
            .args(["osd", "pool", "set", pool, "allow_ec_overwrites", "true"])
            .output()
            .expect("run ceph");
        assert!(
            out.status.success(),
            "the second test cluster must have BlueStore OSDs for EC overwrites (scripts/test starts it with \
             `scripts/dev-cluster up DIR --osds 3 --store bluestore`; so must LIVEMIG_TEST_CEPH_CONF_2's): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.cli("ceph", &["osd", "pool", "application", "enable", pool, "rbd"]);
}

/// Images whose data lives in an erasure-coded pool: the OSDs copy them
/// from one into another (EC to EC, EC to replicated, replicated to EC),
/// byte-identical, the object map clean, `rbd du` right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_in_an_erasure_coded_pool_is_copied_by_the_osds() {
    let tc = second_cluster();
    const EC_POOL: &str = "sscopy-ec";
    for p in [SRC_POOL, DST_POOL] {
        tc.ensure_pool(p);
    }
    ensure_ec_pool(tc, EC_POOL, true);
    let c = tc.connect().await;
    let (src_io, dst_io) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    for (from_ec, to_ec) in [(true, true), (true, false), (false, true)] {
        let name = unique("ss-ec");
        let size: u64 = 20 << 20;
        src_io
            .create_image(
                &name,
                size,
                &CreateOptions::default().in_data_pool(from_ec.then_some(EC_POOL)),
            )
            .await
            .unwrap();
        let img = src_io.open_image(&name).await.unwrap();
        fill(&img, 41, &[0, 4 << 20, (9 << 20) + 4096, size - 100_000], 100_000).await;
        write_at(&img, 12 << 20, random_bytes(42, 5 << 20)).await;
        img.close().await;
        let (src, dst) = (spec(SRC_POOL, "", &name), spec(DST_POOL, "", &name));
        let report = Copier::new(CopyOptions {
            copy_mode: CopyMode::Server,
            data_pool: to_ec.then(|| EC_POOL.to_owned()),
            ..Default::default()
        })
        .run(&c, &src, &c, &dst)
        .await
        .unwrap_or_else(|e| panic!("from_ec={from_ec} to_ec={to_ec}: {e}"));
        assert_eq!(report.method, CopyMethod::ServerSide);
        let (src_spec, dst_spec) = (src.to_string(), dst.to_string());
        let data_pool = rbd_info(tc, &dst_spec)["data_pool"].as_str().map(str::to_owned);
        assert_eq!(data_pool.as_deref(), to_ec.then_some(EC_POOL));
        let a = src_io.open_image_read_only(&name, None).await.unwrap();
        let b = dst_io.open_image_read_only(&name, None).await.unwrap();
        assert_identical(&a, &b).await;
        a.close().await;
        b.close().await;
        assert_object_map_clean_on(tc, &dst_spec);
        assert_eq!(used_bytes_on(tc, &dst_spec), used_bytes_on(tc, &src_spec));
    }
}

/// A data pool that does not exist, or an erasure-coded one without
/// overwrites, is refused before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_pool_is_refused_and_nothing_is_made() {
    let tc = second_cluster();
    const EC_NO_OVERWRITES: &str = "sscopy-ec-plain";
    tc.ensure_pool(SRC_POOL);
    tc.ensure_pool(DST_POOL);
    ensure_ec_pool(tc, EC_NO_OVERWRITES, false);
    let c = tc.connect().await;
    let (src_io, dst_io) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    let name = unique("ss-bad-data-pool");
    src_io
        .create_image(&name, 8 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(51, 1 << 20)).await;
    img.close().await;
    let src = spec(SRC_POOL, "", &name);
    let before = pool_state(&[&src_io, &dst_io], "ss-bad-data-pool").await;
    for (pool, kind, says) in [
        ("sscopy-no-such-pool", ErrorKind::PoolNotFound, "does not exist"),
        (EC_NO_OVERWRITES, ErrorKind::InvalidInput, "allow_ec_overwrites"),
    ] {
        for mode in [CopyMode::Auto, CopyMode::Client] {
            let err = Copier::new(CopyOptions {
                copy_mode: mode,
                data_pool: Some(pool.into()),
                ..Default::default()
            })
            .run(&c, &src, &c, &spec(DST_POOL, "", &name))
            .await
            .expect_err("an unusable data pool");
            assert_eq!(err.kind(), kind, "{err}");
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(pool_state(&[&src_io, &dst_io], "ss-bad-data-pool").await, before);
        }
    }
}

/// Objects copied out of order are marked in the object map in runs, one
/// class call each: marking 0, 2-3 and 5 together leaves each marked (two
/// calls in one operation would each rewrite the map as it was before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_marked_together_in_separate_runs_are_all_in_the_map() {
    setup_pools();
    let c = cluster().connect().await;
    let (src_io, dst_io) = (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    );
    let name = unique("ss-runs");
    let size: u64 = 32 << 20;
    src_io
        .create_image(&name, size, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    let objects = [0u64, 2, 3, 5];
    fill(&img, 61, &objects.map(|n| n << 22), 4 << 20).await;
    let info = img.info().await.unwrap();
    dst_io
        .create_image(&name, size, &CreateOptions::like(&info))
        .await
        .unwrap();
    let dst = dst_io.open_image(&name).await.unwrap();
    let copy = img.object_copy_to(&dst).await.unwrap().expect("the OSDs can copy");
    for n in objects {
        assert_eq!(copy.copy(n).await.unwrap(), livemig::ceph::ObjectCopied::Data);
    }
    copy.mark_copied(&objects).await.unwrap();
    copy.finish().await.unwrap();
    img.close().await;
    dst.close().await;
    let dst_spec = spec(DST_POOL, "", &name).to_string();
    assert_object_map_clean(&dst_spec);
    assert_eq!(used_bytes(&dst_spec), 16 << 20);
    let a = src_io.open_image_read_only(&name, None).await.unwrap();
    let b = dst_io.open_image_read_only(&name, None).await.unwrap();
    assert_identical(&a, &b).await;
    a.close().await;
    b.close().await;
}
