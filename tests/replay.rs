//! Replaying the changes between two snapshots onto the destination (the
//! building block of the live native engine), against the real cluster.

mod common;

use common::*;
use livemig::ceph::{CreateOptions, Features, Image};
use livemig::mirror::{compare_images, Copier, CopyOptions};

const SRC: &str = "replay-src";
const DST: &str = "replay-dst";

async fn allocated_in(img: &Image, offset: u64, len: u64) -> u64 {
    let mut diff = img.diff(None, offset, len, false);
    let mut total = 0;
    while let Some(e) = diff.next().await {
        let e = e.unwrap();
        if e.exists {
            total += e.len;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_of_deltas_bring_the_destination_to_each_snapshot() {
    // A plain layout: each object's changes are read and written in one
    // RADOS operation each (DataObjects).
    rounds_of_deltas(CreateOptions::default(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_of_deltas_on_a_striped_image_go_through_librbd() {
    rounds_of_deltas(striped_layout(), false).await;
}

async fn rounds_of_deltas(layout: CreateOptions, direct: bool) {
    cluster().ensure_pool(SRC);
    cluster().ensure_pool(DST);
    let c = cluster().connect().await;
    let src_io = c.ioctx(SRC, "").await.unwrap();
    let dst_io = c.ioctx(DST, "").await.unwrap();
    let name = unique("delta");
    src_io.create_image(&name, 32 << 20, &layout).await.unwrap();
    let src = src_io.open_image(&name).await.unwrap();
    write_at(&src, 0, random_bytes(1, 20 << 20)).await;
    src.snap_create("s0").await.unwrap();
    let info = src.info().await.unwrap();

    // Round 0: the full copy of s0.
    dst_io
        .create_image(&name, info.size, &CreateOptions::like(&info))
        .await
        .unwrap();
    let dst = dst_io.open_image(&name).await.unwrap();
    let s0 = src_io.open_image_read_only(&name, Some("s0")).await.unwrap();
    Copier::new(CopyOptions::default())
        .transfer(&s0, &dst, 0)
        .await
        .unwrap();
    assert!(compare_images(&s0, &dst).await.unwrap().identical());

    // The writer keeps going: unaligned new data, zeros written over data,
    // a discard, and data where there was none.
    write_at(&src, 4096 * 3 + 17, random_bytes(2, 300_000)).await;
    write_at(&src, 8 << 20, vec![0u8; 1 << 20]).await;
    src.discard(12 << 20, 4 << 20).await.unwrap();
    write_at(&src, 30 << 20, random_bytes(3, 70_000)).await;
    src.snap_create("s1").await.unwrap();
    let s1 = src_io.open_image_read_only(&name, Some("s1")).await.unwrap();
    // Which path the rounds take: objects directly, or librbd.
    assert_eq!(s1.data_objects().await.unwrap().is_some(), direct);
    assert_eq!(dst.data_objects().await.unwrap().is_some(), direct);
    let round1 = Copier::new(CopyOptions::default())
        .replay(&s1, &dst, "s0")
        .await
        .unwrap();
    let report = compare_images(&s1, &dst).await.unwrap();
    assert!(report.identical(), "after round 1: {report:?}");
    // Only the changes moved, not the image.
    assert!(
        round1.done_bytes < 12 << 20,
        "round 1 moved {} bytes",
        round1.done_bytes
    );
    assert!(
        round1.done_bytes >= 300_000 + (5 << 20),
        "round 1 missed changes: {} bytes",
        round1.done_bytes
    );
    // The discarded range is not allocated on the destination. (On a
    // striped image the diff reports a discard one stripe unit at a time,
    // and zeroing those pieces leaves the objects allocated: a known gap.)
    if direct {
        assert_eq!(
            allocated_in(&dst, 12 << 20, 4 << 20).await,
            0,
            "discard not replayed as a deallocation"
        );
    }

    // Round 2 on top of round 1.
    write_at(&src, 1 << 20, random_bytes(4, 5000)).await;
    src.discard(0, 64 << 10).await.unwrap();
    src.snap_create("s2").await.unwrap();
    let s2 = src_io.open_image_read_only(&name, Some("s2")).await.unwrap();
    let round2 = Copier::new(CopyOptions::default())
        .replay(&s2, &dst, "s1")
        .await
        .unwrap();
    assert!(round2.done_bytes < 4 << 20, "round 2 moved {} bytes", round2.done_bytes);
    let report = compare_images(&s2, &dst).await.unwrap();
    assert!(report.identical(), "after round 2: {report:?}");
    // A replay with nothing changed moves nothing.
    src.snap_create("s3").await.unwrap();
    let s3 = src_io.open_image_read_only(&name, Some("s3")).await.unwrap();
    let idle = Copier::new(CopyOptions::default())
        .replay(&s3, &dst, "s2")
        .await
        .unwrap();
    assert_eq!(idle.done_bytes, 0);

    // The cutover's delta: from the last snapshot to the (fenced) head. The
    // head is read directly too, though the image has snapshots; only the
    // destination, which has none, is written directly.
    write_at(&src, 5 << 20, random_bytes(5, 9000)).await;
    write_at(&src, 9 << 20, vec![0u8; 8192]).await;
    src.discard(20 << 20, 1 << 20).await.unwrap();
    if direct {
        let head = src.data_objects().await.unwrap().expect("the head is read directly");
        assert!(!head.writable(), "an image with snapshots is not written directly");
        assert!(dst.data_objects().await.unwrap().unwrap().writable());
    }
    let last = Copier::new(CopyOptions::default())
        .replay(&src, &dst, "s3")
        .await
        .unwrap();
    assert!(
        last.done_bytes < 3 << 20,
        "the last delta moved {} bytes",
        last.done_bytes
    );
    let report = compare_images(&src, &dst).await.unwrap();
    assert!(report.identical(), "after the delta from the head: {report:?}");

    for img in [s0, s1, s2, s3, dst, src] {
        img.close().await;
    }
}

async fn exact_diff(img: &Image, since: &str) -> Vec<livemig::ceph::Extent> {
    let size = img.info().await.unwrap().size;
    let mut diff = img.diff(Some(since), 0, size, false);
    let mut out = Vec::new();
    while let Some(e) = diff.next().await {
        out.push(e.unwrap());
    }
    out
}

/// The exact diff against a snapshot runs over the objects fast-diff names
/// as changed only, in runs on several threads: it must report exactly what
/// librbd reports when one call asks every object (an image without
/// fast-diff), in the same order, between two snapshots and against the
/// image itself; with changes close together (a run longer than one call
/// asks), and in more runs far apart than are asked at once or kept waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_diff_narrowed_by_fast_diff_misses_nothing() {
    cluster().ensure_pool(SRC);
    let c = cluster().connect().await;
    let io = c.ioctx(SRC, "").await.unwrap();
    let base = CreateOptions {
        order: Some(20),
        ..CreateOptions::default()
    };
    let plain_features = Features::LAYERING | Features::EXCLUSIVE_LOCK;
    let fast_features = plain_features | Features::OBJECT_MAP | Features::FAST_DIFF;
    let mut images = Vec::new();
    for features in [fast_features, plain_features] {
        let name = unique("narrow");
        let opts = CreateOptions {
            features: Some(features),
            ..base.clone()
        };
        io.create_image(&name, 4 << 30, &opts).await.unwrap();
        let img = io.open_image(&name).await.unwrap();
        assert_eq!(img.info().await.unwrap().features.intersection(fast_features), features);
        // The same history on both: data, a snapshot, then changes in a few
        // objects only (unaligned writes, zeros over data, a discard of a
        // whole object and of part of one, data in an empty object).
        write_at(&img, 0, random_bytes(5, 24 << 20)).await;
        img.snap_create("s0").await.unwrap();
        write_at(&img, (3 << 20) + 4097, random_bytes(6, 10_000)).await;
        write_at(&img, (4 << 20) - 512, random_bytes(7, 1024)).await;
        write_at(&img, 9 << 20, vec![0u8; 65536]).await;
        img.discard(12 << 20, 1 << 20).await.unwrap();
        img.discard((15 << 20) + 8192, 8192).await.unwrap();
        write_at(&img, 50 << 20, random_bytes(8, 300_000)).await;
        write_at(&img, (30 << 20) + 7, random_bytes(11, 12 << 20)).await;
        img.snap_create("s1").await.unwrap();
        write_at(&img, (20 << 20) + 100, random_bytes(9, 5000)).await;
        write_at(&img, 63 << 20, random_bytes(10, 4096)).await;
        for object in (200u64..4096).step_by(70) {
            write_at(&img, (object << 20) + 100 * object, random_bytes(object, 3000)).await;
        }
        images.push((name, img));
    }
    let (fast_name, fast) = &images[0];
    let (plain_name, plain) = &images[1];
    // Against the image itself (the cutover's diff) and between snapshots
    // (a round's).
    for since in ["s0", "s1"] {
        let narrowed = exact_diff(fast, since).await;
        assert!(!narrowed.is_empty());
        assert_eq!(narrowed, exact_diff(plain, since).await, "since {since}");
    }
    let fast_s1 = io.open_image_read_only(fast_name, Some("s1")).await.unwrap();
    let plain_s1 = io.open_image_read_only(plain_name, Some("s1")).await.unwrap();
    let narrowed = exact_diff(&fast_s1, "s0").await;
    assert_eq!(narrowed, exact_diff(&plain_s1, "s0").await);
    // Every change is there: the discards as holes, the writes as data
    // (extents end at object boundaries; they do not overlap).
    let covers = |offset: u64, len: u64, exists: bool| {
        let covered: u64 = narrowed
            .iter()
            .filter(|e| e.exists == exists)
            .map(|e| {
                (offset + len)
                    .min(e.offset + e.len)
                    .saturating_sub(offset.max(e.offset))
            })
            .sum();
        covered == len
    };
    assert!(covers((3 << 20) + 4097, 10_000, true));
    assert!(covers((4 << 20) - 512, 1024, true));
    assert!(covers(12 << 20, 1 << 20, false));
    assert!(covers(50 << 20, 300_000, true));
    assert!(covers((30 << 20) + 7, 12 << 20, true));
    for img in [fast_s1, plain_s1] {
        img.close().await;
    }
    for (_, img) in images {
        img.close().await;
    }
}

/// Replay rounds raise their connection's OSD operation priority (the live
/// policy's `delta_op_priority`) and put it back afterwards, however the
/// raises of the source's and the destination's cluster nest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_op_priority_nests_and_falls_back() {
    const KEY: &str = "osd_client_op_priority";
    let c = cluster().connect().await;
    let before = c.option(KEY).unwrap();
    assert_eq!(before, "63", "Ceph's client default");
    let first = c.raise_op_priority(200).unwrap();
    assert_eq!(c.option(KEY).unwrap(), "200");
    let second = c.clone().raise_op_priority(200).unwrap();
    drop(first);
    assert_eq!(c.option(KEY).unwrap(), "200", "still raised by the second");
    drop(second);
    assert_eq!(c.option(KEY).unwrap(), before);
}

/// A lock owner is named by its address, as the image's watchers list it: a
/// job that breaks an earlier driver's lock on its partial destination
/// skips its own connection that way (breaking it would blocklist itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_owner_is_named_by_its_connection() {
    cluster().ensure_pool(SRC);
    let c = cluster().connect().await;
    let io = c.ioctx(SRC, "").await.unwrap();
    let name = unique("owner");
    io.create_image(&name, 4 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = io.open_image(&name).await.unwrap();
    write_at(&img, 0, vec![1u8; 4096]).await;
    let mine: Vec<String> = img
        .watchers()
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.id == c.instance_id() as i64)
        .map(|w| w.addr)
        .collect();
    assert_eq!(img.lock_owners().await.unwrap(), mine);
    img.close().await;
    io.remove_image(&name).await.unwrap();
}
