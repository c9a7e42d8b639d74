//! The native offline copy against a real Ceph cluster.

mod common;

use common::*;
use livemig::ceph::{Cluster, ClusterConfig, CreateOptions, IoCtx};
use livemig::mirror::{compare_images, Copier, CopyMode, CopyOptions, SourceHold};
use livemig::spec::ImageSpec;
use livemig::ErrorKind;
use tokio_util::sync::CancellationToken;

const SRC_POOL: &str = "copy-src";
const DST_POOL: &str = "copy-dst";

async fn pools(c: &Cluster) -> (IoCtx, IoCtx) {
    cluster().ensure_pool(SRC_POOL);
    cluster().ensure_pool(DST_POOL);
    (
        c.ioctx(SRC_POOL, "").await.unwrap(),
        c.ioctx(DST_POOL, "").await.unwrap(),
    )
}

async fn copy(c: &Cluster, src: &ImageSpec, dst: &ImageSpec) -> livemig::Result<livemig::mirror::CopyReport> {
    Copier::new(CopyOptions::default()).run(c, src, c, dst).await
}

/// Asserts byte-identical content and equal layout, and that the copy left
/// no snapshot on the source.
async fn assert_faithful(src_io: &IoCtx, src: &str, dst_io: &IoCtx, dst: &str) {
    let a = src_io.open_image_read_only(src, None).await.unwrap();
    let b = dst_io.open_image_read_only(dst, None).await.unwrap();
    let report = compare_images(&a, &b).await.unwrap();
    assert!(report.identical(), "content differs: {report:?}");
    let (ia, ib) = (a.info().await.unwrap(), b.info().await.unwrap());
    assert_eq!(
        (ia.size, ia.order, ia.features, ia.stripe_unit, ia.stripe_count),
        (ib.size, ib.order, ib.features, ib.stripe_unit, ib.stripe_count)
    );
    assert_eq!(a.metadata_list().await.unwrap(), b.metadata_list().await.unwrap());
    assert!(
        a.snap_list().await.unwrap().is_empty(),
        "the copy snapshot was left on the source"
    );
    // Independent check of the bytes, not through compare_images.
    assert_eq!(read_all(&a).await, read_all(&b).await);
    a.close().await;
    let a = src_io.open_image(src).await.unwrap();
    assert_eq!(
        a.lock_owners().await.unwrap(),
        Vec::<String>::new(),
        "the copy left the source locked"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_data_with_metadata_copies_byte_identical() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("rand");
    src_io
        .create_image(&name, 48 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    // Unaligned writes of random data, some crossing object boundaries.
    for (i, (off, len)) in [
        (0u64, 5000usize),
        (4_194_000, 300_000),
        (13_000_001, 2_000_000),
        (40 << 20, 4 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        write_at(&img, off, random_bytes(i as u64, len)).await;
    }
    img.metadata_set("owner", "tenant-a").await.unwrap();
    img.metadata_set("conf_rbd_qos_iops_limit", "500").await.unwrap();
    img.close().await;

    let report = copy(&c, &ImageSpec::new(SRC_POOL, &name), &ImageSpec::new(DST_POOL, &name))
        .await
        .unwrap();
    assert_eq!(report.metadata_keys, 2);
    assert_faithful(&src_io, &name, &dst_io, &name).await;
    assert!(!dst_io.image_exists(&format!("{name}.livemig-partial")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_not_a_multiple_of_the_object_size() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("odd");
    let size = 5 * (4 << 20) + 12345;
    src_io
        .create_image(&name, size, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, size - 20000, random_bytes(9, 20000)).await;
    write_at(&img, 1, random_bytes(10, 10)).await;
    img.close().await;
    copy(&c, &ImageSpec::new(SRC_POOL, &name), &ImageSpec::new(DST_POOL, &name))
        .await
        .unwrap();
    assert_faithful(&src_io, &name, &dst_io, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_default_object_size_and_striping_are_kept() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("striped");
    let opts = striped_layout();
    src_io.create_image(&name, 24 << 20, &opts).await.unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 100_000, random_bytes(11, 3 << 20)).await;
    write_at(&img, 20 << 20, random_bytes(12, 70_000)).await;
    img.close().await;
    copy(&c, &ImageSpec::new(SRC_POOL, &name), &ImageSpec::new(DST_POOL, &name))
        .await
        .unwrap();
    assert_faithful(&src_io, &name, &dst_io, &name).await;
    let info = dst_io
        .open_image_read_only(&name, None)
        .await
        .unwrap()
        .info()
        .await
        .unwrap();
    assert_eq!(
        (info.object_size, info.stripe_unit, info.stripe_count),
        (1 << 20, 64 << 10, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_image_copies_only_its_data_and_stays_thin() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("sparse");
    src_io
        .create_image(&name, 32 << 30, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    for (i, off) in [0u64, 7 << 30, (31 << 30) + 123].into_iter().enumerate() {
        write_at(&img, off, random_bytes(20 + i as u64, 1 << 20)).await;
    }
    img.close().await;
    let report = copy(&c, &ImageSpec::new(SRC_POOL, &name), &ImageSpec::new(DST_POOL, &name))
        .await
        .unwrap();
    // Only the allocated objects were read (4 objects touched, 4 MiB each).
    assert!(
        report.read_bytes <= 4 * (4 << 20),
        "read {} bytes of a 32 GiB sparse image",
        report.read_bytes
    );
    let a = src_io.open_image_read_only(&name, None).await.unwrap();
    let b = dst_io.open_image_read_only(&name, None).await.unwrap();
    assert!(compare_images(&a, &b).await.unwrap().identical());
    let (ua, ub) = (
        a.allocated_bytes(false).await.unwrap(),
        b.allocated_bytes(false).await.unwrap(),
    );
    // Zero detection works in 64 KiB blocks: each written range may round up
    // to the blocks it touches (at most 2 x 64 KiB more per range), no more.
    assert!(
        ub >= ua && ub <= ua + 3 * 2 * (64 << 10),
        "destination uses {ub} bytes, source {ua}"
    );
}

/// Zeros written to the source are not allocated on the destination: the
/// client copy skips all-zero 64 KiB blocks, and so does the server-side
/// copy for objects its samples find mostly zero (it reads those and writes
/// their non-zero blocks rather than having the OSDs copy them whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_written_to_the_source_are_not_allocated_on_the_destination() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("zeros");
    src_io
        .create_image(&name, 64 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    // 64 MiB written, all zeros but 4 KiB in each of the first 4 objects.
    write_at(&img, 0, vec![0u8; 64 << 20]).await;
    for i in 0..4u64 {
        write_at(&img, i * (4 << 20) + 8192, random_bytes(30 + i, 4096)).await;
    }
    img.close().await;
    for mode in [CopyMode::Client, CopyMode::Server] {
        let dst_name = format!("{name}-{}", mode.as_str());
        let report = Copier::new(CopyOptions {
            copy_mode: mode,
            ..Default::default()
        })
        .run(
            &c,
            &ImageSpec::new(SRC_POOL, &name),
            &c,
            &ImageSpec::new(DST_POOL, &dst_name),
        )
        .await
        .unwrap();
        assert_eq!(report.read_bytes, 64 << 20);
        assert_eq!(
            report.written_bytes,
            4 * (64 << 10),
            "{mode:?}: only the non-zero 64 KiB blocks are written"
        );
        let a = src_io.open_image_read_only(&name, None).await.unwrap();
        let b = dst_io.open_image_read_only(&dst_name, None).await.unwrap();
        assert!(compare_images(&a, &b).await.unwrap().identical());
        let (ua, ub) = (
            a.allocated_bytes(true).await.unwrap(),
            b.allocated_bytes(true).await.unwrap(),
        );
        assert_eq!(ua, 64 << 20);
        assert_eq!(ub, 4 * (4 << 20), "{mode:?}: destination objects: only the 4 with data");
        a.close().await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_data_destination_is_as_thin_as_the_source() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("thin");
    src_io
        .create_image(&name, 256 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    for i in 0..10u64 {
        write_at(&img, i * (23 << 20) + 4096 * i, random_bytes(40 + i, 1 << 20)).await;
    }
    img.close().await;
    copy(&c, &ImageSpec::new(SRC_POOL, &name), &ImageSpec::new(DST_POOL, &name))
        .await
        .unwrap();
    let a = src_io.open_image_read_only(&name, None).await.unwrap();
    let b = dst_io.open_image_read_only(&name, None).await.unwrap();
    let (ua, ub) = (
        a.allocated_bytes(false).await.unwrap(),
        b.allocated_bytes(false).await.unwrap(),
    );
    // Zero detection works in 64 KiB blocks, so the destination may round up
    // each written range to 64 KiB, never more.
    assert!(
        ub >= ua && ub <= ua + 20 * (64 << 10),
        "source {ua} bytes allocated, destination {ub}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_no_destination_and_an_untouched_source() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("cancel");
    src_io
        .create_image(&name, 64 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(50, 64 << 20)).await;
    img.close().await;
    let before = pool_state(&[&src_io], &name).await;

    let token = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::watch::channel(Default::default());
    // 8 MiB/s: the copy takes ~8 s, so the cancel lands mid-copy.
    let copier = Copier::new(CopyOptions {
        bandwidth_limit: Some(8 << 20),
        ..Default::default()
    })
    .progress(tx)
    .cancel_on(token.clone());
    let (src, dst) = (ImageSpec::new(SRC_POOL, &name), ImageSpec::new(DST_POOL, &name));
    let run = copier.run(&c, &src, &c, &dst);
    let cancel_midway = async {
        loop {
            rx.changed().await.unwrap();
            if rx.borrow().done_bytes >= 8 << 20 {
                break;
            }
        }
        token.cancel();
    };
    let (result, ()) = tokio::join!(run, cancel_midway);
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(rx.borrow().done_bytes < 64 << 20, "the copy finished before the cancel");
    let images = dst_io.list_images().await.unwrap();
    assert!(!images.iter().any(|n| n.starts_with(&name)), "left behind: {images:?}");
    assert_eq!(pool_state(&[&src_io], &name).await, before, "the source changed");
    let img = src_io.open_image(&name).await.unwrap();
    assert!(
        img.lock_owners().await.unwrap().is_empty(),
        "the cancelled copy left the source locked"
    );
    img.close().await;
}

/// Copies `name` at 8 MiB/s while `during` runs once the copy has begun;
/// returns the report.
async fn slow_copy_while<F: std::future::Future<Output = ()>>(
    c: &Cluster,
    name: &str,
    always_snapshot: bool,
    during: F,
) -> livemig::mirror::CopyReport {
    let (tx, mut rx) = tokio::sync::watch::channel(Default::default());
    let copier = Copier::new(CopyOptions {
        bandwidth_limit: Some(8 << 20),
        always_snapshot,
        ..Default::default()
    })
    .progress(tx);
    let (src, dst) = (ImageSpec::new(SRC_POOL, name), ImageSpec::new(DST_POOL, name));
    let run = copier.run(c, &src, c, &dst);
    let side = async {
        loop {
            rx.changed().await.unwrap();
            if rx.borrow().done_bytes > 0 {
                break;
            }
        }
        during.await;
    };
    let (report, ()) = tokio::join!(run, side);
    report.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_source_is_held_by_its_exclusive_lock_and_copied_as_it_was() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("locked");
    src_io
        .create_image(&name, 24 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(60, 24 << 20)).await;
    img.close().await;
    let before = pool_state(&[&src_io], &name).await;
    // While the copy runs: the copy owns the lock, there is no snapshot, and
    // another client's writes are refused (rbd bench stands for that client).
    let spec = format!("{SRC_POOL}/{name}");
    let during = async {
        let other = cluster().connect().await;
        let img = other
            .ioctx(SRC_POOL, "")
            .await
            .unwrap()
            .open_image(&name)
            .await
            .unwrap();
        assert_eq!(
            img.lock_owners().await.unwrap().len(),
            1,
            "the copy does not own the lock"
        );
        assert!(img.snap_list().await.unwrap().is_empty(), "a snapshot was taken");
        img.close().await;
        let conf = cluster().conf.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("timeout")
                .args([
                    "60",
                    "rbd",
                    "bench",
                    "--io-type",
                    "write",
                    "--io-size",
                    "4K",
                    "--io-total",
                    "8K",
                ])
                .arg("--conf")
                .arg(conf)
                .arg(&spec)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && text.contains("Read-only file system"),
            "another client could write the source during the copy: {text}"
        );
    };
    let report = slow_copy_while(&c, &name, false, during).await;
    assert_eq!(report.source_hold, SourceHold::ExclusiveLock);
    assert_eq!(pool_state(&[&src_io], &name).await, before, "the source changed");
    assert_faithful(&src_io, &name, &dst_io, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_in_use_is_read_through_a_snapshot_and_stays_writable() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    for always_snapshot in [false, true] {
        let name = unique("in-use");
        src_io
            .create_image(&name, 24 << 20, &CreateOptions::default())
            .await
            .unwrap();
        let user = src_io.open_image(&name).await.unwrap();
        write_at(&user, 0, random_bytes(61, 24 << 20)).await;
        let before = read_all(&user).await;
        // `always_snapshot` without a user: the source is idle, the option alone decides.
        let user = if always_snapshot {
            user.close().await;
            None
        } else {
            Some(user)
        };
        let writer = cluster().connect().await;
        let writer_io = writer.ioctx(SRC_POOL, "").await.unwrap();
        let during = async {
            let img = writer_io.open_image(&name).await.unwrap();
            write_at(&img, 0, vec![0xCD; 4 << 20]).await;
            img.close().await;
        };
        let report = slow_copy_while(&c, &name, always_snapshot, during).await;
        assert_eq!(report.source_hold, SourceHold::Snapshot);
        if let Some(user) = user {
            user.close().await;
        }
        // The copy is the source as of the snapshot; the source took the write.
        let dst = dst_io.open_image_read_only(&name, None).await.unwrap();
        assert!(
            read_all(&dst).await == before,
            "the copy is not the source as of its start"
        );
        dst.close().await;
        let src = src_io.open_image_read_only(&name, None).await.unwrap();
        assert_eq!(read_all(&src).await[..4 << 20], vec![0xCD; 4 << 20][..]);
        assert!(src.snap_list().await.unwrap().is_empty(), "snapshot left");
        src.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_to_another_cluster() {
    let c1 = cluster().connect().await;
    let c2 = second_cluster().connect().await;
    assert_ne!(c1.fsid(), c2.fsid(), "the two test clusters must be distinct");
    let (src_io, _) = pools(&c1).await;
    second_cluster().ensure_pool("remote");
    let dst_io = c2.ioctx("remote", "").await.unwrap();
    let name = unique("xcluster");
    src_io
        .create_image(&name, 40 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 3 << 20, random_bytes(60, 9 << 20)).await;
    img.metadata_set("site", "a").await.unwrap();
    img.close().await;
    Copier::new(CopyOptions::default())
        .run(
            &c1,
            &ImageSpec::new(SRC_POOL, &name),
            &c2,
            &ImageSpec::new("remote", &name),
        )
        .await
        .unwrap();
    assert_faithful(&src_io, &name, &dst_io, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_partial_from_a_dead_copy_is_reclaimed() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    let name = unique("stale");
    src_io
        .create_image(&name, 8 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(70, 1 << 20)).await;
    img.close().await;
    // What a copy killed mid-way leaves: a marked partial image.
    let partial = format!("{name}.livemig-partial");
    dst_io
        .create_image(&partial, 8 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let p = dst_io.open_image(&partial).await.unwrap();
    // ... including the snapshot it was reading, named in the partial's marker.
    let dead_snap = "livemig-copy-deadbeef";
    let src_img = src_io.open_image(&name).await.unwrap();
    src_img.snap_create(dead_snap).await.unwrap();
    src_img.close().await;
    let marker = format!("{} {SRC_POOL}/{name}@{dead_snap}", c.fsid());
    p.metadata_set(livemig::mirror::copy::PARTIAL_META_KEY, &marker)
        .await
        .unwrap();
    write_at(&p, 0, vec![0xee; 4096]).await;
    let id = p.info().await.unwrap().id;
    p.close().await;
    // ... and died renaming it, after librbd's first step: the id object
    // under the final name (without the mend, the new copy's rename would
    // fail on it with EEXIST).
    put_id_object(DST_POOL, &name, &id);
    copy(&c, &ImageSpec::new(SRC_POOL, &name), &ImageSpec::new(DST_POOL, &name))
        .await
        .unwrap();
    assert_faithful(&src_io, &name, &dst_io, &name).await;
    assert!(!dst_io.image_exists(&partial).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_in_flight_read_is_safe() {
    let c = cluster().connect().await;
    let (src_io, _) = pools(&c).await;
    let name = unique("drop");
    src_io
        .create_image(&name, 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(80, 16 << 20)).await;
    for _ in 0..20 {
        let read = img.read(0, 16 << 20, Vec::new());
        // Poll once so the operation is submitted, then drop it.
        let _ = futures::poll!(Box::pin(read));
    }
    // The image stays usable and closes (after the dropped reads complete).
    assert_eq!(
        img.read(0, 4096, Vec::new()).await.unwrap(),
        random_bytes(80, 16 << 20)[..4096]
    );
    img.close().await;
    src_io.remove_image(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_is_reported_as_such() {
    let dir = std::env::temp_dir().join(unique("nocluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("ceph.conf");
    // A monitor address where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &conf,
        format!("[global]\nmon_host = v2:127.0.0.1:{port}\nauth_client_required = none\n"),
    )
    .unwrap();
    let cfg = ClusterConfig {
        connect_timeout: std::time::Duration::from_secs(2),
        ..ClusterConfig::from_conf(&conf)
    };
    let err = Cluster::connect(cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClusterUnreachable, "{err}");
    let missing = Cluster::connect(ClusterConfig::from_conf(dir.join("nope.conf")))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Config, "{missing}");
}

/// A transfer interrupted mid-way and resumed from its last watermark gives
/// a complete copy, also on a striped image (whose extents librbd does not
/// report in offset order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_resumed_from_its_watermark_is_complete() {
    let c = cluster().connect().await;
    let (src_io, dst_io) = pools(&c).await;
    for striped in [false, true] {
        let name = unique(if striped { "resume-striped" } else { "resume" });
        let opts = if striped {
            striped_layout()
        } else {
            CreateOptions::default()
        };
        src_io.create_image(&name, 32 << 20, &opts).await.unwrap();
        let img = src_io.open_image(&name).await.unwrap();
        write_at(&img, 0, random_bytes(90, 32 << 20)).await;
        img.snap_create("s").await.unwrap();
        let info = img.info().await.unwrap();
        img.close().await;
        dst_io
            .create_image(&name, info.size, &CreateOptions::like(&info))
            .await
            .unwrap();
        let snap = src_io.open_image_read_only(&name, Some("s")).await.unwrap();
        let dst = dst_io.open_image(&name).await.unwrap();

        let token = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::watch::channel(livemig::mirror::Progress::default());
        let first = Copier::new(CopyOptions {
            bandwidth_limit: Some(8 << 20),
            in_flight_bytes: 4 << 20,
            ..Default::default()
        })
        .progress(tx)
        .cancel_on(token.clone());
        let run = first.transfer(&snap, &dst, 0);
        let stop = async {
            while rx.borrow().done_bytes < 12 << 20 {
                rx.changed().await.unwrap();
            }
            token.cancel();
        };
        let (r, ()) = tokio::join!(run, stop);
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Cancelled);
        let watermark = rx.borrow().watermark;
        assert!(watermark > 0 && watermark < 32 << 20, "watermark {watermark}");

        let p = Copier::new(CopyOptions::default())
            .transfer(&snap, &dst, watermark)
            .await
            .unwrap();
        assert_eq!(p.watermark, 32 << 20);
        assert!(
            p.resumed_bytes >= watermark,
            "resumed {} below watermark {watermark}",
            p.resumed_bytes
        );
        let report = compare_images(&snap, &dst).await.unwrap();
        assert!(
            report.identical(),
            "striped={striped}, resumed at {watermark}: {report:?}"
        );
        snap.close().await;
        dst.close().await;
    }
}
