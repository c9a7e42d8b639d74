//! Moves between clusters, against two real Ceph clusters: the catalog
//! registers the other cluster and maps pools to its pools; `migrate start
//! --to-cluster` follows the map, and the switch rewrites the volume's
//! backing and declared location together.

mod common;

use std::process::Output;

use common::*;
use livemig::catalog::{Catalog, RadosCatalog};
use livemig::ceph::CreateOptions;
use livemig::job::{JobStore, Phase};

/// Each test has its own catalog: the first compares the catalog's stored
/// state before and after refusals.
const CATALOG: &str = "xc-catalog";
const CATALOG_KILL: &str = "xc-catalog-kill";
const SRC: &str = "xc-src";
/// The kill test's own source pool: the first test changes `SRC`'s mapping.
const SRC_KILL: &str = "xc-src-kill";
const DST: &str = "xc-dst";
/// Short, so that a resume after a kill takes the dead driver's lease soon.
const LEASE: &str = "3";

fn migrate_in(catalog: &str, args: &[&str]) -> Output {
    migrate_with_catalog(catalog, args).output().expect("run migrate")
}

fn migrate(args: &[&str]) -> Output {
    migrate_in(CATALOG, args)
}

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A registered, detached volume on the first cluster with data and
/// image-meta; returns its id and content digest.
async fn volume_on_first_cluster(catalog: &str, tag: &str, pool: &str) -> (String, u64) {
    for p in [pool, catalog] {
        cluster().ensure_pool(p);
    }
    let c = cluster().connect().await;
    let io = c.ioctx(pool, "").await.unwrap();
    let name = unique(tag);
    let size: u64 = 24 << 20;
    io.create_image(&name, size, &CreateOptions::default()).await.unwrap();
    let img = io.open_image(&name).await.unwrap();
    write_at(&img, 1 << 20, random_bytes(17, 9 << 20)).await;
    write_at(&img, 20 << 20, random_bytes(18, 100_000)).await;
    img.metadata_set("tenant", "t7").await.unwrap();
    let digest = digest(&img, size).await;
    img.close().await;
    let added = migrate_in(
        catalog,
        &[
            "catalog",
            "add-volume",
            &name,
            "--image",
            &format!("{pool}/{name}"),
            "--location",
            "site-a",
        ],
    );
    assert_ok(&added, "catalog add-volume");
    (name, digest)
}

async fn catalog(pool: &str) -> RadosCatalog {
    let c = cluster().connect().await;
    RadosCatalog::new(c.ioctx(pool, "").await.unwrap())
}

/// The other cluster registered as `b`, and `pool` mapped to `b/DST` with
/// the location `site-b`.
fn register_and_map(catalog: &str, pool: &str) {
    second_cluster().ensure_pool(DST);
    let conf = second_cluster().conf.display().to_string();
    assert_ok(
        &migrate_in(catalog, &["catalog", "add-cluster", "b", "--conf", &conf]),
        "catalog add-cluster",
    );
    assert_ok(
        &migrate_in(
            catalog,
            &[
                "catalog",
                "map-pool",
                "--from",
                pool,
                "--to",
                &format!("b/{DST}"),
                "--location",
                "site-b",
            ],
        ),
        "catalog map-pool",
    );
}

/// The volume is on `b` as its catalog record says, with the source's
/// content and image-meta.
async fn assert_moved_to_b(catalog_pool: &str, volume: &str, pool: &str, digest_before: u64) {
    let v = catalog(catalog_pool).await.volume(volume).await.unwrap();
    assert_eq!(
        (
            v.backing.cluster.as_str(),
            v.backing.image.pool.as_str(),
            v.location.as_str()
        ),
        ("b", DST, "site-b"),
        "backing and location switch together"
    );
    assert_eq!(v.migration, None);
    let b = second_cluster().connect().await;
    let img = b
        .ioctx(DST, "")
        .await
        .unwrap()
        .open_image_read_only(volume, None)
        .await
        .unwrap();
    assert_eq!(
        digest(&img, v.size).await,
        digest_before,
        "content on the other cluster"
    );
    assert!(img
        .metadata_list()
        .await
        .unwrap()
        .contains(&("tenant".into(), "t7".into())));
    img.close().await;
    let a = cluster().connect().await;
    let names = a.ioctx(pool, "").await.unwrap().list_images().await.unwrap();
    assert!(!names.iter().any(|n| n == volume), "the source is retired");
}

/// A detached volume moves to the other cluster by the pool map; each bad
/// input before that (a cluster the catalog does not know, no mapping, a
/// pool mapped onto itself, a mapping to a pool that does not exist) is
/// refused with its own error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_volume_moves_to_another_cluster_by_the_pool_map() {
    let (volume, digest_before) = volume_on_first_cluster(CATALOG, "xc-flow", SRC).await;
    let cat = catalog(CATALOG).await;
    let start = |to_cluster: &str| migrate(&["start", &volume, "--to-cluster", to_cluster, "--json"]);

    let unknown = start("nowhere");
    assert_eq!(exit_code(&unknown), Some(3), "{}", said(&unknown));
    assert!(
        said(&unknown).contains("catalog add-cluster nowhere"),
        "{}",
        said(&unknown)
    );
    register_and_map(CATALOG, SRC);
    let unmapped_source = {
        // A pool nothing maps from.
        let other = "xc-unmapped";
        cluster().ensure_pool(other);
        let c = cluster().connect().await;
        let io = c.ioctx(other, "").await.unwrap();
        let name = unique("xc-unmapped");
        io.create_image(&name, 1 << 20, &CreateOptions::default())
            .await
            .unwrap();
        assert_ok(
            &migrate(&["catalog", "add-volume", &name, "--image", &format!("{other}/{name}")]),
            "add-volume",
        );
        name
    };
    let before = cat.raw_state().await.unwrap();
    let no_map = migrate(&["start", &unmapped_source, "--to-cluster", "b", "--json"]);
    assert_eq!(exit_code(&no_map), Some(4), "{}", said(&no_map));
    assert!(said(&no_map).contains("no pool mapping"), "{}", said(&no_map));
    let onto_itself = migrate(&["catalog", "map-pool", "--from", SRC, "--to", &format!("local/{SRC}")]);
    assert_eq!(exit_code(&onto_itself), Some(4), "{}", said(&onto_itself));
    let to_unknown = migrate(&["catalog", "map-pool", "--from", SRC, "--to", "nowhere/x"]);
    assert_eq!(exit_code(&to_unknown), Some(3), "{}", said(&to_unknown));
    assert_eq!(cat.raw_state().await.unwrap(), before, "refusals changed the catalog");

    // A mapping to a pool the other cluster does not have: refused by the
    // precheck, nothing made there.
    assert_ok(
        &migrate(&["catalog", "map-pool", "--from", SRC, "--to", "b/xc-missing"]),
        "map-pool",
    );
    let before = cat.raw_state().await.unwrap();
    let missing_pool = start("b");
    assert_eq!(exit_code(&missing_pool), Some(3), "{}", said(&missing_pool));
    assert!(said(&missing_pool).contains("xc-missing"), "{}", said(&missing_pool));
    assert_eq!(
        cat.raw_state().await.unwrap(),
        before,
        "a refused start changed the catalog"
    );
    register_and_map(CATALOG, SRC);

    // The other cluster down (a conf naming a monitor nobody runs):
    // unreachable, nothing changed.
    let dead_conf = std::env::temp_dir().join(format!("livemig-xc-dead-{}.conf", std::process::id()));
    std::fs::write(
        &dead_conf,
        "[global]\nmon_host = v2:127.0.0.1:9\nauth_client_required = none\n",
    )
    .unwrap();
    assert_ok(
        &migrate(&[
            "catalog",
            "add-cluster",
            "dead",
            "--conf",
            &dead_conf.display().to_string(),
        ]),
        "add-cluster dead",
    );
    assert_ok(
        &migrate(&["catalog", "map-pool", "--from", SRC, "--to", "dead/xc-dst"]),
        "map-pool to dead",
    );
    let before = cat.raw_state().await.unwrap();
    let down = migrate(&[
        "start",
        &volume,
        "--to-cluster",
        "dead",
        "--connect-timeout",
        "2",
        "--json",
    ]);
    assert_eq!(exit_code(&down), Some(6), "{}", said(&down));
    assert!(said(&down).contains("cluster_unreachable"), "{}", said(&down));
    assert!(said(&down).contains("`dead`"), "{}", said(&down));
    assert_eq!(
        cat.raw_state().await.unwrap(),
        before,
        "a refused start changed the catalog"
    );
    let _ = std::fs::remove_file(&dead_conf);

    let moved = start("b");
    assert_ok(&moved, "start --to-cluster b");
    assert_moved_to_b(CATALOG, &volume, SRC, digest_before).await;

    // And back: the other cluster's pool maps to a local one.
    const BACK: &str = "xc-back";
    cluster().ensure_pool(BACK);
    assert_ok(
        &migrate(&[
            "catalog",
            "map-pool",
            "--from",
            &format!("b/{DST}"),
            "--to",
            &format!("local/{BACK}"),
            "--location",
            "site-a",
        ]),
        "map-pool back",
    );
    assert_ok(&start("local"), "start --to-cluster local");
    let v = cat.volume(&volume).await.unwrap();
    assert_eq!(
        (
            v.backing.cluster.as_str(),
            v.backing.image.pool.as_str(),
            v.location.as_str()
        ),
        ("local", BACK, "site-a")
    );
    let img = cluster()
        .connect()
        .await
        .ioctx(BACK, "")
        .await
        .unwrap()
        .open_image_read_only(&volume, None)
        .await
        .unwrap();
    assert_eq!(digest(&img, v.size).await, digest_before, "content after the way back");
    img.close().await;
    let b = second_cluster().connect().await;
    let on_b = b.ioctx(DST, "").await.unwrap().list_images().await.unwrap();
    assert!(!on_b.contains(&volume), "the other cluster's copy is retired");

    // A volume registered on the other cluster from the start.
    let name = unique("xc-born-on-b");
    let io_b = b.ioctx(DST, "").await.unwrap();
    io_b.create_image(&name, 4 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let added = migrate(&[
        "catalog",
        "add-volume",
        &name,
        "--image",
        &format!("{DST}/{name}"),
        "--cluster",
        "b",
        "--json",
    ]);
    assert_ok(&added, "add-volume --cluster b");
    assert_eq!(cat.volume(&name).await.unwrap().backing.cluster, "b");
    let unknown = migrate(&[
        "catalog",
        "add-volume",
        &unique("xc-x"),
        "--image",
        &format!("{DST}/{name}"),
        "--cluster",
        "nowhere",
    ]);
    assert_eq!(exit_code(&unknown), Some(3), "{}", said(&unknown));
}

/// Killed after making the partial destination on the other cluster, the
/// job is resumed by id (the resume connects the clusters its record
/// names) and finishes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_cluster_move_killed_mid_way_resumes_to_the_end() {
    let (volume, digest_before) = volume_on_first_cluster(CATALOG_KILL, "xc-kill", SRC_KILL).await;
    register_and_map(CATALOG_KILL, SRC_KILL);
    run_killed_at(
        migrate_with_catalog(
            CATALOG_KILL,
            &["start", &volume, "--to-cluster", "b", "--lease-secs", LEASE, "--json"],
        ),
        "after-partial-created",
    );
    let store = JobStore::new(cluster().connect().await.ioctx(CATALOG_KILL, "").await.unwrap());
    let mut job = None;
    for id in store.ids().await.unwrap() {
        if let Ok(s) = store.load(&id).await {
            if s.record.volume_id == volume {
                job = Some(id);
            }
        }
    }
    let job = job.expect("the killed start recorded its job");
    assert_ok(
        &migrate_in(
            CATALOG_KILL,
            &["resume", &job, "--wait", "60", "--lease-secs", LEASE, "--json"],
        ),
        "resume",
    );
    assert_eq!(store.load(&job).await.unwrap().record.phase, Phase::Done);
    assert_moved_to_b(CATALOG_KILL, &volume, SRC_KILL, digest_before).await;
}
