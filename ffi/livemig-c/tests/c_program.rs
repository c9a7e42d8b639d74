//! The C test program (`tests/c/migrate_volumes.c`), compiled with `cc`
//! against the committed header and run under valgrind against the real
//! cluster: its migrations must happen (byte-identical destinations, a
//! refused switch leaving nothing behind) and valgrind must find no memory
//! error and no leak from livemig.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cluster, read_all, unique};

const JOBS_POOL: &str = "livemig-c-jobs";
const SRC_POOL: &str = "livemig-c-src";
const DST_POOL: &str = "livemig-c-dst";

/// Where cargo put this crate's cdylib (next to the test executable).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps directory").to_path_buf();
    assert!(
        deps.join("liblivemig_c.so").exists(),
        "liblivemig_c.so is not in {}: build the crate first (`cargo build -p livemig-c`)",
        deps.display()
    );
    deps
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compile(out: &Path) {
    let lib = library_dir();
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("tests/c/migrate_volumes.c"))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-llivemig_c")
        .arg("-o")
        .arg(out)
        .status()
        .expect("run cc (install a C compiler: scripts/setup)");
    assert!(
        status.success(),
        "the C test program does not compile against include/livemig.h"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_program_migrates_under_valgrind() {
    let c = cluster();
    for pool in [JOBS_POOL, SRC_POOL, DST_POOL] {
        c.ensure_pool(pool);
    }
    let images = [unique("c-ok"), unique("c-refused"), unique("c-retried")];
    let rados = c.connect().await;
    let src_io = rados.ioctx(SRC_POOL, "").await.unwrap();
    let dst_io = rados.ioctx(DST_POOL, "").await.unwrap();
    let mut contents = Vec::new();
    for (i, name) in images.iter().enumerate() {
        c.cli("rbd", &["create", "--size", "8M", &format!("{SRC_POOL}/{name}")]);
        let img = src_io.open_image(name).await.unwrap();
        // Data in a few places, holes elsewhere.
        for (k, off) in [0u64, 3 << 20, 7 << 20].iter().enumerate() {
            common::write_at(&img, *off, common::random_bytes(i as u64 * 10 + k as u64, 300 << 10)).await;
        }
        contents.push(read_all(&img).await);
        img.close().await;
    }

    let dir = TempDir::new();
    let program = dir.0.join("migrate_volumes");
    compile(&program);
    let out = Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
            "--track-origins=no",
            "--num-callers=30",
        ])
        .arg(format!(
            "--suppressions={}",
            crate_dir().join("tests/c/valgrind.supp").display()
        ))
        .arg(&program)
        .arg(&c.conf)
        .args([JOBS_POOL, SRC_POOL, DST_POOL])
        .args(&images)
        // cargo's LD_LIBRARY_PATH may name an older build of the library
        // (target/debug); the program's rpath names the one just built.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run valgrind (install it: scripts/setup)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the C test program failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("RESULT failures 0"), "{stdout}");
    assert!(stdout.contains("RESULT wait-vol-ok ok"), "{stdout}");
    assert!(stdout.contains("RESULT wait-vol-refused rolled_back"), "{stdout}");
    assert!(stdout.contains("RESULT wait-vol-retried io"), "{stdout}");
    assert!(stdout.contains("RESULT wait-vol-retried-resumed ok"), "{stdout}");
    println!("{stdout}");
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lost:") || l.contains("ERROR SUMMARY"))
        .collect();
    println!("valgrind: {}", summary.join(" | "));
    assert!(
        stderr.contains("definitely lost: 0 bytes"),
        "valgrind found a leak:\n{stderr}"
    );
    assert!(
        stderr.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors:\n{stderr}"
    );

    // The moved volumes are byte-identical on the destination; the refused
    // one left no destination image and an untouched source.
    for (i, name) in images.iter().enumerate() {
        let moved = i != 1;
        assert_eq!(
            dst_io.image_exists(name).await.unwrap(),
            moved,
            "{name} on the destination"
        );
        let io = if moved { &dst_io } else { &src_io };
        let img = io.open_image_read_only(name, None).await.unwrap();
        assert!(
            read_all(&img).await == contents[i],
            "{name} differs from the source's data"
        );
        img.close().await;
    }
}

/// A directory for the compiled program, removed when the test ends
/// (passed or failed).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("livemig-c-test"));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
