//! Integration-test harness: a real throwaway Ceph cluster.
//!
//! When `CEPH_CONF` is set (scripts/test sets it) the tests use that
//! cluster; otherwise the harness starts its own with scripts/dev-cluster
//! and a watchdog that stops it when the test process exits, however it
//! exits. A second cluster (for cross-cluster tests) comes from
//! `LIVEMIG_TEST_CEPH_CONF_2` or is started the same way. If no cluster can
//! be had, the test fails and says how to get one.
#![allow(dead_code)]

pub mod guest;
pub mod qsd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use livemig::ceph::{Cluster, ClusterConfig, CreateOptions, Image, IoCtx};
use rand::{Rng, SeedableRng};

pub struct TestCluster {
    pub conf: PathBuf,
}

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// The repository root (these helpers are shared with the C ABI crate's tests).
pub fn repo() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("scripts/dev-cluster").exists() {
        assert!(
            dir.pop(),
            "the repository root (with scripts/dev-cluster) is above CARGO_MANIFEST_DIR"
        );
    }
    dir
}

fn start_cluster(tag: &str, layout: &[&str]) -> TestCluster {
    let dir = std::env::temp_dir().join(format!("livemig-test-{tag}-{}", std::process::id()));
    let script = repo().join("scripts/dev-cluster");
    // Crash tests wait for killed clients' watches to expire: keep that short.
    let timeout = std::env::var("LIVEMIG_WATCH_TIMEOUT").unwrap_or_else(|_| "10".into());
    let out = Command::new(&script)
        .arg("up")
        .arg(&dir)
        .args(layout)
        .env("LIVEMIG_WATCH_TIMEOUT", timeout)
        .output();
    let ok = matches!(&out, Ok(o) if o.status.success());
    if !ok {
        let detail = match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        };
        panic!(
            "integration tests need a real Ceph cluster and none could be started.\n\
             Either run `scripts/test` (installs Ceph and starts a cluster), or run `scripts/setup` once, \
             or point CEPH_CONF at a throwaway cluster's ceph.conf (`scripts/dev-cluster up`).\n\
             scripts/dev-cluster said: {detail}"
        );
    }
    // The watchdog outlives this process and stops the cluster when it is gone.
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{}' down '{}' >/dev/null 2>&1",
        script.display(),
        dir.display(),
        pid = std::process::id()
    );
    // `setsid -f` forks the watchdog into its own session and returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the cluster watchdog");
    assert!(started.success(), "could not start the cluster watchdog");
    TestCluster {
        conf: dir.join("ceph.conf"),
    }
}

fn from_env_or_start(var: &str, tag: &str, layout: &[&str]) -> TestCluster {
    match std::env::var_os(var) {
        Some(conf) if !conf.is_empty() => {
            let conf = PathBuf::from(conf);
            assert!(
                conf.is_file(),
                "{var}={} does not name a ceph.conf; unset it to let the tests start a cluster",
                conf.display()
            );
            TestCluster { conf }
        }
        _ => start_cluster(tag, layout),
    }
}

/// A cluster of this test's own (one memstore OSD), whatever the
/// environment names: for tests that stop or freeze it.
pub fn own_cluster(tag: &str) -> TestCluster {
    start_cluster(tag, &[])
}

impl TestCluster {
    /// The PIDs of its daemons (as scripts/dev-cluster records them).
    pub fn daemon_pids(&self) -> Vec<i32> {
        let dir = self.conf.parent().expect("a cluster's conf is in its directory");
        std::fs::read_to_string(dir.join("daemons"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every daemon (SIGSTOP: the cluster stops
    /// answering, as a lost site; SIGCONT: it is back, data intact).
    pub fn signal_daemons(&self, signal: i32) {
        for pid in self.daemon_pids() {
            // SAFETY: kill(2) only sends a signal to a daemon this test's cluster runs.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// The primary test cluster.
pub fn cluster() -> &'static TestCluster {
    static C: OnceLock<TestCluster> = OnceLock::new();
    C.get_or_init(|| from_env_or_start("CEPH_CONF", "a", &[]))
}

/// A second, independent cluster, with three BlueStore OSDs, behind a
/// WAN-like link (as scripts/test starts it): erasure-coded pools with
/// overwrites need both; moves across clusters cross a 20 ms RTT, 200
/// Mbit/s link, as between sites.
pub fn second_cluster() -> &'static TestCluster {
    static C: OnceLock<TestCluster> = OnceLock::new();
    C.get_or_init(|| {
        from_env_or_start(
            "LIVEMIG_TEST_CEPH_CONF_2",
            "b",
            &["--osds", "3", "--store", "bluestore", "--wan", "10:200"],
        )
    })
}

impl TestCluster {
    pub async fn connect(&self) -> Cluster {
        Cluster::connect(ClusterConfig::from_conf(&self.conf))
            .await
            .expect("connect to the test cluster")
    }

    /// Runs a ceph/rbd CLI command against this cluster, panicking on failure.
    pub fn cli(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run ceph CLI");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates an RBD pool if it does not exist.
    pub fn ensure_pool(&self, pool: &str) {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let pools = self.cli("ceph", &["osd", "pool", "ls"]);
        if pools.lines().any(|l| l == pool) {
            return;
        }
        self.cli("ceph", &["osd", "pool", "create", pool, "8", "8"]);
        self.cli("rbd", &["pool", "init", pool]);
    }
}

/// A layout librbd must stripe: 1 MiB objects, 64 KiB stripe units over 4
/// objects, with the usual features.
pub fn striped_layout() -> CreateOptions {
    use livemig::ceph::Features;
    let features = Features::LAYERING
        | Features::STRIPING_V2
        | Features::EXCLUSIVE_LOCK
        | Features::OBJECT_MAP
        | Features::FAST_DIFF;
    CreateOptions {
        order: Some(20),
        features: Some(features),
        stripe_unit: Some(64 << 10),
        stripe_count: Some(4),
        data_pool: None,
    }
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Writes `data` at `offset`.
pub async fn write_at(img: &Image, offset: u64, data: Vec<u8>) {
    let len = data.len();
    img.write(offset, data, 0..len).await.expect("write test data");
}

/// Reads the whole image.
pub async fn read_all(img: &Image) -> Vec<u8> {
    let size = img.info().await.unwrap().size as usize;
    img.read(0, size, Vec::new()).await.expect("read image")
}

/// What is observable about a set of images.
pub type ImagesState = Vec<(String, u64, Vec<String>, Vec<(String, String)>, u64)>;

/// Everything observable about the images whose names start with `prefix`
/// in some pools: names, and per image its size, snapshots, metadata and a
/// content digest. Used to prove that a refused operation changed nothing.
pub async fn pool_state(ioctxs: &[&IoCtx], prefix: &str) -> ImagesState {
    let mut out = Vec::new();
    for io in ioctxs {
        let mut names = io.list_images().await.unwrap();
        names.retain(|n| n.starts_with(prefix));
        names.sort();
        for name in names {
            let img = io.open_image_read_only(&name, None).await.unwrap();
            let info = img.info().await.unwrap();
            let snaps = img.snap_list().await.unwrap().into_iter().map(|s| s.name).collect();
            let meta = img.metadata_list().await.unwrap();
            let digest = digest(&img, info.size).await;
            out.push((io.image_spec(&name), info.size, snaps, meta, digest));
            img.close().await;
        }
    }
    out
}

/// A content digest (FNV-1a over allocated data; zeros elsewhere are implied).
pub async fn digest(img: &Image, size: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut diff = img.diff(None, 0, size, true);
    while let Some(e) = diff.next().await {
        let e = e.unwrap();
        if !e.exists {
            continue;
        }
        let data = img.read(e.offset, e.len as usize, Vec::new()).await.unwrap();
        if data.iter().all(|b| *b == 0) {
            continue;
        }
        h ^= e.offset;
        for b in data {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

pub fn migrate_bin() -> &'static Path {
    // Set by cargo for the tests of the package with the binary (livemig-cli).
    match option_env!("CARGO_BIN_EXE_migrate") {
        Some(path) => Path::new(path),
        None => panic!("the migrate binary is known to the livemig package's tests only"),
    }
}

/// `migrate SUBCOMMAND --conf <the test cluster> --catalog-pool POOL ARGS..`,
/// without a kill point inherited from the test's environment.
pub fn migrate_with_catalog(catalog_pool: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(migrate_bin());
    cmd.arg(args[0])
        .arg("--conf")
        .arg(&cluster().conf)
        .args(["--catalog-pool", catalog_pool])
        .args(&args[1..]);
    cmd.env_remove(livemig::job::fault::KILL_AT_ENV);
    cmd
}

/// Runs `cmd` with the kill point `point` armed; fails the test unless the
/// process killed itself there.
pub fn run_killed_at(mut cmd: Command, point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd
        .env(livemig::job::fault::KILL_AT_ENV, point)
        .output()
        .expect("run the command");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "not killed at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails the test, with what the command printed, unless it succeeded.
pub fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One test per kill point: `name: "point" => scenario;` runs
/// `scenario("point")` as a multi-threaded tokio test.
#[macro_export]
macro_rules! kill_cases {
    ($($name:ident: $point:literal => $then:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $then($point).await;
            }
        )*
    };
}

/// Registers `pool/volume` (an image of `size` bytes, in use) in `catalog`,
/// attached to instance `vm-<volume>` reached through `access`; returns the
/// volume as registered.
pub async fn register_attached_volume(
    catalog: &livemig::catalog::RadosCatalog,
    pool: &str,
    volume: &str,
    size: u64,
    access: livemig::catalog::Access,
) -> livemig::catalog::Volume {
    use livemig::catalog::{Attachment, Backing, Cas, Catalog, Instance, Volume, VolumeStatus};
    let backing = Backing {
        cluster: "local".into(),
        image: livemig::spec::ImageSpec::new(pool, volume),
    };
    let registered = Volume {
        id: volume.to_owned(),
        size,
        status: VolumeStatus::InUse,
        migration: None,
        backing: backing.clone(),
        location: "slow".into(),
    };
    catalog
        .compare_and_swap(Cas {
            expect_no_volumes: vec![volume.to_owned()],
            put_volumes: vec![registered.clone()],
            put_instances: vec![Instance {
                id: format!("vm-{volume}"),
                name: "instance under test".into(),
            }],
            put_attachments: vec![Attachment {
                volume_id: volume.to_owned(),
                instance_id: format!("vm-{volume}"),
                device: "vdb".into(),
                access,
                connection: backing,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    registered
}

/// A string as Ceph encodes it (cls_rbd's inputs and outputs).
pub fn ceph_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// Writes image `name`'s id object (`rbd_id.<name>`) holding `id` in `pool`,
/// as the first step of librbd's rename does.
pub fn put_id_object(pool: &str, name: &str, id: &str) {
    let file = std::env::temp_dir().join(format!("livemig-test-id-{name}-{}", std::process::id()));
    std::fs::write(&file, ceph_string(id)).unwrap();
    let object = format!("rbd_id.{name}");
    cluster().cli("rados", &["-p", pool, "put", &object, file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
}
