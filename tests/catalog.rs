//! The catalog's atomic compare-and-swap and the precheck rules, against
//! the real cluster.

mod common;

use common::*;
use livemig::catalog::{Access, Attachment, Backing, Cas, Catalog, Instance, RadosCatalog, Volume, VolumeStatus};
use livemig::ceph::{Cluster, CreateOptions, IoCtx};
use livemig::precheck::{precheck, Clusters, Destination};
use livemig::spec::ImageSpec;
use livemig::ErrorKind;

const POOL: &str = "cat-src";
const DST_POOL: &str = "cat-dst";
const CATALOG_POOL: &str = "cat-catalog";

struct Fixture {
    c: Cluster,
    io: IoCtx,
    dst_io: IoCtx,
    catalog: RadosCatalog,
    name: String,
}

/// A catalog of its own (unique object), a 16 MiB volume with 6 MiB used,
/// attached to one instance.
async fn fixture(tag: &str) -> Fixture {
    for p in [POOL, DST_POOL, CATALOG_POOL] {
        cluster().ensure_pool(p);
    }
    let c = cluster().connect().await;
    let io = c.ioctx(POOL, "").await.unwrap();
    let dst_io = c.ioctx(DST_POOL, "").await.unwrap();
    let name = unique(tag);
    let catalog = RadosCatalog::named(c.ioctx(CATALOG_POOL, "").await.unwrap(), &format!("catalog-{name}"));
    io.create_image(&name, 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let img = io.open_image(&name).await.unwrap();
    write_at(&img, 0, random_bytes(5, 6 << 20)).await;
    img.close().await;
    let backing = Backing {
        cluster: "local".into(),
        image: ImageSpec::new(POOL, &name),
    };
    let volume = Volume {
        id: name.clone(),
        size: 16 << 20,
        status: VolumeStatus::InUse,
        migration: None,
        backing: backing.clone(),
        location: "slow".into(),
    };
    let attachment = Attachment {
        volume_id: name.clone(),
        instance_id: "vm1".into(),
        device: "vdb".into(),
        access: Access::None,
        connection: backing,
    };
    catalog
        .compare_and_swap(Cas {
            expect_no_volumes: vec![name.clone()],
            put_volumes: vec![volume],
            put_instances: vec![
                Instance {
                    id: "vm1".into(),
                    name: "vm one".into(),
                },
                Instance {
                    id: "vm2".into(),
                    name: String::new(),
                },
            ],
            put_attachments: vec![attachment],
            ..Default::default()
        })
        .await
        .unwrap();
    Fixture {
        c,
        io,
        dst_io,
        catalog,
        name,
    }
}

impl Fixture {
    async fn update_volume(&self, f: impl FnOnce(&mut Volume)) {
        let v = self.catalog.volume(&self.name).await.unwrap();
        let mut n = v.clone();
        f(&mut n);
        self.catalog
            .compare_and_swap(Cas {
                expect_volumes: vec![v],
                put_volumes: vec![n],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Runs the precheck to `to`; asserts it fails on `rule` with `kind`, and
    /// that the catalog and the images are exactly as before.
    async fn assert_rule_fails(&self, to: &str, rule: &str, kind: ErrorKind) {
        self.assert_rule_fails_for(&self.name, to, rule, kind).await
    }

    async fn assert_rule_fails_for(&self, volume: &str, to: &str, rule: &str, kind: ErrorKind) {
        let before_catalog = self.catalog.raw_state().await.unwrap();
        let before_images = pool_state(&[&self.io, &self.dst_io], &self.name).await;
        let report = precheck(
            &self.catalog,
            &Clusters::local(self.c.clone()),
            volume,
            &Destination::parse("local", to).unwrap(),
        )
        .await
        .unwrap();
        let failed = report
            .rules
            .iter()
            .find(|r| r.rule == rule)
            .unwrap_or_else(|| panic!("no rule {rule}"));
        assert!(!failed.passed, "{rule} passed: {report:#?}");
        assert_eq!(failed.error_kind, Some(kind), "{report:#?}");
        let err = report.clone().into_result().unwrap_err();
        assert_eq!(err.kind(), kind, "the first failure is {err}");
        assert!(err.to_string().contains(rule));
        assert_eq!(
            self.catalog.raw_state().await.unwrap(),
            before_catalog,
            "the precheck changed the catalog"
        );
        assert_eq!(
            pool_state(&[&self.io, &self.dst_io], &self.name).await,
            before_images,
            "the precheck changed an image"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_switches_one_wins_the_other_is_refused() {
    let f = fixture("race").await;
    let v = f.catalog.volume(&f.name).await.unwrap();
    let to = |pool: &str| Volume {
        backing: Backing {
            cluster: "local".into(),
            image: ImageSpec::new(pool, &f.name),
        },
        ..v.clone()
    };
    let (a, b) = (to("pool-a"), to("pool-b"));
    let cas = |n: &Volume| Cas {
        expect_volumes: vec![v.clone()],
        put_volumes: vec![n.clone()],
        ..Default::default()
    };
    let c2 = RadosCatalog::named(
        f.c.ioctx(CATALOG_POOL, "").await.unwrap(),
        &format!("catalog-{}", f.name),
    );
    let (ra, rb) = tokio::join!(f.catalog.compare_and_swap(cas(&a)), c2.compare_and_swap(cas(&b)));
    let winner = match (&ra, &rb) {
        (Ok(()), Err(e)) => {
            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
            a
        }
        (Err(e), Ok(())) => {
            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
            b
        }
        other => panic!("exactly one switch must win: {other:?}"),
    };
    assert_eq!(f.catalog.volume(&f.name).await.unwrap(), winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_changes_do_not_refuse_a_switch_but_stale_expectations_do() {
    let f = fixture("unrelated").await;
    let v = f.catalog.volume(&f.name).await.unwrap();
    // Another record changes: the generation moves, our expectation still holds.
    f.catalog
        .compare_and_swap(Cas {
            put_instances: vec![Instance {
                id: "vm3".into(),
                name: String::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let moved = Volume {
        status: VolumeStatus::Detaching,
        ..v.clone()
    };
    f.catalog
        .compare_and_swap(Cas {
            expect_volumes: vec![v.clone()],
            put_volumes: vec![moved.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    // The old expectation is now stale.
    let before = f.catalog.raw_state().await.unwrap();
    let err = f
        .catalog
        .compare_and_swap(Cas {
            expect_volumes: vec![v.clone()],
            put_volumes: vec![v],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(f.catalog.raw_state().await.unwrap(), before);
    assert_eq!(f.catalog.volume(&f.name).await.unwrap(), moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_passes_for_a_healthy_move_and_reports_the_numbers() {
    let f = fixture("ok").await;
    let report = precheck(
        &f.catalog,
        &Clusters::local(f.c.clone()),
        &f.name,
        &Destination::parse("local", DST_POOL).unwrap(),
    )
    .await
    .unwrap();
    assert!(report.passed(), "{report:#?}");
    assert_eq!(
        report.used_bytes,
        Some(8 << 20),
        "6 MiB written touch two 4 MiB objects"
    );
    let names: Vec<&str> = report.rules.iter().map(|r| r.rule).collect();
    assert_eq!(
        names,
        [
            "volume_registered",
            "single_attachment",
            "not_migrating",
            "volume_status",
            "source_image",
            "destination_pool",
            "distinct_images",
            "destination_image",
            "capacity",
            "pool_space"
        ]
    );
    let cap = report.rules.iter().find(|r| r.rule == "capacity").unwrap();
    assert_eq!(cap.numbers["used_bytes"], 8 << 20);
    assert_eq!(cap.numbers["capacity_bytes"], 16 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_unknown_volume() {
    let f = fixture("unknownvol").await;
    f.assert_rule_fails_for("no-such-volume", DST_POOL, "volume_registered", ErrorKind::NotInCatalog)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_volume_attached_twice() {
    let f = fixture("twice").await;
    let v = f.catalog.volume(&f.name).await.unwrap();
    let current = f.catalog.attachments(&f.name).await.unwrap();
    let second = Attachment {
        instance_id: "vm2".into(),
        device: "vdc".into(),
        ..current[0].clone()
    };
    f.catalog
        .compare_and_swap(Cas {
            expect_volumes: vec![v],
            put_attachments: vec![second],
            ..Default::default()
        })
        .await
        .unwrap();
    f.assert_rule_fails(DST_POOL, "single_attachment", ErrorKind::AttachedTwice)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_volume_already_migrating() {
    let f = fixture("migrating").await;
    f.update_volume(|v| v.migration = Some("job-123".into())).await;
    f.assert_rule_fails(DST_POOL, "not_migrating", ErrorKind::AlreadyMigrating)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_volume_in_maintenance() {
    let f = fixture("maint").await;
    f.update_volume(|v| v.status = VolumeStatus::Maintenance).await;
    f.assert_rule_fails(DST_POOL, "volume_status", ErrorKind::InvalidState)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_source_image_missing() {
    let f = fixture("nosrc").await;
    f.update_volume(|v| v.backing.image.image = format!("{}-gone", v.id))
        .await;
    f.assert_rule_fails(DST_POOL, "source_image", ErrorKind::ImageNotFound)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_destination_pool_missing() {
    let f = fixture("nodstpool").await;
    f.assert_rule_fails("no-such-pool", "destination_pool", ErrorKind::PoolNotFound)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_same_image() {
    let f = fixture("same").await;
    f.assert_rule_fails(POOL, "distinct_images", ErrorKind::SameImage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_destination_image_not_owned_by_the_catalog() {
    let f = fixture("foreign").await;
    f.dst_io
        .create_image(&f.name, 32 << 20, &CreateOptions::default())
        .await
        .unwrap();
    f.assert_rule_fails(DST_POOL, "destination_image", ErrorKind::DestinationExists)
        .await;
}

/// Registers `DST_POOL/<name>-dst` of `size` bytes as a volume, and returns its spec.
async fn destination_volume(f: &Fixture, size: u64, attached: bool) -> String {
    let dst_name = format!("{}-dst", f.name);
    f.dst_io
        .create_image(&dst_name, size, &CreateOptions::default())
        .await
        .unwrap();
    let backing = Backing {
        cluster: "local".into(),
        image: ImageSpec::new(DST_POOL, &dst_name),
    };
    let status = if attached {
        VolumeStatus::InUse
    } else {
        VolumeStatus::Available
    };
    let vol = Volume {
        id: dst_name.clone(),
        size,
        status,
        migration: None,
        backing: backing.clone(),
        location: "fast".into(),
    };
    let atts = if attached {
        vec![Attachment {
            volume_id: dst_name.clone(),
            instance_id: "vm2".into(),
            device: "vdb".into(),
            access: Access::None,
            connection: backing,
        }]
    } else {
        vec![]
    };
    f.catalog
        .compare_and_swap(Cas {
            expect_no_volumes: vec![dst_name.clone()],
            put_volumes: vec![vol],
            put_attachments: atts,
            ..Default::default()
        })
        .await
        .unwrap();
    format!("{DST_POOL}/{dst_name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_destination_volume_in_use() {
    let f = fixture("dstinuse").await;
    let to = destination_volume(&f, 32 << 20, true).await;
    f.assert_rule_fails(&to, "destination_image", ErrorKind::DestinationInUse)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_destination_too_small() {
    let f = fixture("small").await;
    // 4 MiB < the 8 MiB the source uses.
    let to = destination_volume(&f, 4 << 20, false).await;
    f.assert_rule_fails(&to, "capacity", ErrorKind::DestinationTooSmall)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_destination_pool_quota() {
    let f = fixture("quota").await;
    let pool = "cat-quota";
    cluster().ensure_pool(pool);
    cluster().cli("ceph", &["osd", "pool", "set-quota", pool, "max_bytes", "1048576"]);
    f.assert_rule_fails(pool, "pool_space", ErrorKind::NoSpace).await;
}
