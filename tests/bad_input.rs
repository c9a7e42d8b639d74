//! Every bad input to a copy gets its own error kind and changes nothing.

mod common;

use common::*;
use livemig::ceph::{Cluster, CreateOptions, IoCtx};
use livemig::mirror::{Copier, CopyOptions};
use livemig::spec::ImageSpec;
use livemig::ErrorKind;

const SRC_POOL: &str = "bad-src";
const DST_POOL: &str = "bad-dst";

struct Fixture {
    c: Cluster,
    src_io: IoCtx,
    dst_io: IoCtx,
    name: String,
}

/// A source image with data, metadata and a user snapshot.
async fn fixture(tag: &str) -> Fixture {
    cluster().ensure_pool(SRC_POOL);
    cluster().ensure_pool(DST_POOL);
    let c = cluster().connect().await;
    let src_io = c.ioctx(SRC_POOL, "").await.unwrap();
    let dst_io = c.ioctx(DST_POOL, "").await.unwrap();
    let name = unique(tag);
    src_io
        .create_image(&name, 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    write_at(&img, 4096, random_bytes(1, 6 << 20)).await;
    img.metadata_set("k", "v").await.unwrap();
    img.snap_create("user-snap").await.unwrap();
    img.close().await;
    Fixture {
        c,
        src_io,
        dst_io,
        name,
    }
}

/// Runs the copy, asserts it fails with `kind`, and that the images of the
/// fixture (in both pools) are exactly as before.
async fn assert_refused(f: &Fixture, src: ImageSpec, dst: ImageSpec, kind: ErrorKind) -> String {
    let before = pool_state(&[&f.src_io, &f.dst_io], &f.name).await;
    let err = Copier::new(CopyOptions::default())
        .run(&f.c, &src, &f.c, &dst)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), kind, "unexpected error: {err}");
    let after = pool_state(&[&f.src_io, &f.dst_io], &f.name).await;
    assert_eq!(before, after, "a refused copy changed something");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_pool() {
    let f = fixture("nosrcpool").await;
    let msg = assert_refused(
        &f,
        ImageSpec::new("no-such-pool", &f.name),
        ImageSpec::new(DST_POOL, &f.name),
        ErrorKind::PoolNotFound,
    )
    .await;
    assert!(msg.contains("no-such-pool"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_image() {
    let f = fixture("nosrcimg").await;
    let missing = format!("{}-missing", f.name);
    let msg = assert_refused(
        &f,
        ImageSpec::new(SRC_POOL, &missing),
        ImageSpec::new(DST_POOL, &f.name),
        ErrorKind::ImageNotFound,
    )
    .await;
    assert!(msg.contains(&missing) && msg.contains("does not exist"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_pool() {
    let f = fixture("nodstpool").await;
    assert_refused(
        &f,
        ImageSpec::new(SRC_POOL, &f.name),
        ImageSpec::new("no-such-dst-pool", &f.name),
        ErrorKind::PoolNotFound,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_namespace() {
    let f = fixture("nons").await;
    let dst = ImageSpec {
        pool: DST_POOL.into(),
        namespace: "no-such-ns".into(),
        image: f.name.clone(),
    };
    assert_refused(&f, ImageSpec::new(SRC_POOL, &f.name), dst, ErrorKind::NamespaceNotFound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_source_and_destination() {
    let f = fixture("same").await;
    let spec = ImageSpec::new(SRC_POOL, &f.name);
    assert_refused(&f, spec.clone(), spec, ErrorKind::SameImage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_exists() {
    let f = fixture("exists").await;
    f.dst_io
        .create_image(&f.name, 1 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let msg = assert_refused(
        &f,
        ImageSpec::new(SRC_POOL, &f.name),
        ImageSpec::new(DST_POOL, &f.name),
        ErrorKind::DestinationExists,
    )
    .await;
    assert!(msg.contains("already exists"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_being_written_by_another_copy() {
    let f = fixture("inuse").await;
    let partial = format!("{}.livemig-partial", f.name);
    f.dst_io
        .create_image(&partial, 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let held = f.dst_io.open_image(&partial).await.unwrap();
    held.metadata_set(livemig::mirror::copy::PARTIAL_META_KEY, "other copy")
        .await
        .unwrap();
    let msg = assert_refused(
        &f,
        ImageSpec::new(SRC_POOL, &f.name),
        ImageSpec::new(DST_POOL, &f.name),
        ErrorKind::DestinationInUse,
    )
    .await;
    assert!(msg.contains("another copy"), "{msg}");
    held.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_image_under_the_partial_name() {
    let f = fixture("foreign").await;
    let partial = format!("{}.livemig-partial", f.name);
    f.dst_io
        .create_image(&partial, 1 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let msg = assert_refused(
        &f,
        ImageSpec::new(SRC_POOL, &f.name),
        ImageSpec::new(DST_POOL, &f.name),
        ErrorKind::DestinationExists,
    )
    .await;
    assert!(msg.contains("not made by livemig"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_pool_quota_too_small() {
    let f = fixture("quota").await;
    let pool = "bad-quota";
    cluster().ensure_pool(pool);
    cluster().cli("ceph", &["osd", "pool", "set-quota", pool, "max_bytes", "1048576"]);
    let quota_io = f.c.ioctx(pool, "").await.unwrap();
    let before = pool_state(&[&quota_io], &f.name).await;
    let msg = assert_refused(
        &f,
        ImageSpec::new(SRC_POOL, &f.name),
        ImageSpec::new(pool, &f.name),
        ErrorKind::NoSpace,
    )
    .await;
    assert!(msg.contains("quota"), "{msg}");
    assert_eq!(pool_state(&[&quota_io], &f.name).await, before);
}
