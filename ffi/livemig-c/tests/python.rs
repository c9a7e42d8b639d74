//! The Python binding's tests (`python/tests`) and, through them, the
//! reference control plane (`examples/control_plane`), against the real
//! cluster with the library this build made.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cluster, second_cluster};

const JOBS_POOL: &str = "livemig-py-jobs";
const SRC_POOL: &str = "livemig-py-src";
const DST_POOL: &str = "livemig-py-dst";
/// How many tests python/tests holds: a test that stopped being collected
/// (an import error, a typo in a name) must not pass silently.
const PYTHON_TESTS: usize = 14;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn python_binding_and_reference_control_plane() {
    let c = cluster();
    // The move to another cluster lands in the same pool name there.
    let other = second_cluster();
    other.ensure_pool(DST_POOL);
    for pool in [JOBS_POOL, SRC_POOL, DST_POOL] {
        c.ensure_pool(pool);
    }
    let deps = std::env::current_exe()
        .expect("test path")
        .parent()
        .expect("deps dir")
        .to_path_buf();
    let library = deps.join("liblivemig_c.so");
    assert!(
        library.exists(),
        "{} is missing: `cargo build -p livemig-c`",
        library.display()
    );
    let test_instance = deps.join("../livemig-test-instance");
    assert!(
        test_instance.exists(),
        "{} is missing: build it with `cargo build --bin livemig-test-instance` (scripts/test does)",
        test_instance.display()
    );
    let repo = repo();
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(repo.join("python/tests"))
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                repo.join("python").display(),
                repo.join("examples/control_plane").display()
            ),
        )
        .env("CEPH_CONF", &c.conf)
        .env("LIVEMIG_PY_CONF_2", &other.conf)
        .env("LIVEMIG_LIBRARY", &library)
        .env("LIVEMIG_TEST_INSTANCE", &test_instance)
        .env("LIVEMIG_PY_JOBS_POOL", JOBS_POOL)
        .env("LIVEMIG_PY_SRC_POOL", SRC_POOL)
        .env("LIVEMIG_PY_DST_POOL", DST_POOL)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run python3 (scripts/setup installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(out.status.success(), "the Python tests failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("Ran {PYTHON_TESTS} tests")),
        "expected {PYTHON_TESTS} Python tests to run:\n{stderr}"
    );
    assert!(!stderr.contains("skipped"), "no Python test may be skipped:\n{stderr}");
}
