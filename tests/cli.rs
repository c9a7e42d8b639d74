//! The `migrate` binary: exit codes, JSON output, Ctrl-C, a crash mid-copy,
//! and peak memory, against the real cluster.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use livemig::ceph::{CreateOptions, IoCtx};

const SRC_POOL: &str = "cli-src";
const DST_POOL: &str = "cli-dst";

/// `migrate SUBCOMMAND --conf <test cluster> ARGS...`.
fn migrate(args: &[&str]) -> Command {
    let mut cmd = Command::new(migrate_bin());
    cmd.arg(args[0]).arg("--conf").arg(&cluster().conf).args(&args[1..]);
    cmd
}

fn run(args: &[&str]) -> Output {
    migrate(args).output().expect("run migrate")
}

/// The last line of stdout, as JSON.
fn last_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON: {last:?}: {e}"))
}

async fn source_image(tag: &str, size: u64, data: usize) -> (IoCtx, IoCtx, String) {
    cluster().ensure_pool(SRC_POOL);
    cluster().ensure_pool(DST_POOL);
    let c = cluster().connect().await;
    let src_io = c.ioctx(SRC_POOL, "").await.unwrap();
    let dst_io = c.ioctx(DST_POOL, "").await.unwrap();
    let name = unique(tag);
    src_io
        .create_image(&name, size, &CreateOptions::default())
        .await
        .unwrap();
    let img = src_io.open_image(&name).await.unwrap();
    let mut off = 0;
    while off < data {
        let n = (data - off).min(16 << 20);
        write_at(&img, off as u64, random_bytes(off as u64, n)).await;
        off += n;
    }
    img.close().await;
    (src_io, dst_io, name)
}

#[test]
fn help_explains_commands_and_exit_codes() {
    let out = Command::new(migrate_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["copy", "verify", "Exit codes", "CEPH_CONF"] {
        assert!(text.contains(needle), "--help lacks {needle}: {text}");
    }
    let out = Command::new(migrate_bin()).args(["copy", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--dest-conf",
        "--in-flight",
        "--bwlimit",
        "POOL/NAMESPACE/IMAGE",
        "Example",
    ] {
        assert!(text.contains(needle), "copy --help lacks {needle}: {text}");
    }
    let out = Command::new(migrate_bin())
        .args(["copy", "only-one-arg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_copy_reports_progress_and_result() {
    let (_, dst_io, name) = source_image("json", 32 << 20, 20 << 20).await;
    let (src, dst) = (format!("{SRC_POOL}/{name}"), format!("{DST_POOL}/{name}"));
    let out = run(&["copy", &src, &dst, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["report"]["read_bytes"], 20 << 20);
    assert_eq!(done["report"]["destination"], dst);
    assert!(lines.iter().all(|l| l["event"] == "progress" || l["event"] == "done"));
    assert!(dst_io.image_exists(&name).await.unwrap());
    // verify agrees, and says so with exit code 0.
    let v = run(&["verify", &src, &dst, "--json"]);
    assert!(v.status.success());
    assert_eq!(last_json(&v)["identical"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_name_the_problem() {
    let (_, dst_io, name) = source_image("codes", 8 << 20, 1 << 20).await;
    let src = format!("{SRC_POOL}/{name}");
    let expect = |args: &[&str], code: i32, kind: &str| {
        let mut full = args.to_vec();
        full.push("--json");
        let out = run(&full);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = last_json(&out);
        assert_eq!(err["event"], "error");
        assert_eq!(err["kind"], kind, "{args:?}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    };
    expect(
        &[
            "copy",
            &format!("{SRC_POOL}/nope-{name}"),
            &format!("{DST_POOL}/{name}"),
        ],
        3,
        "image_not_found",
    );
    expect(&["copy", &src, &format!("nope-pool/{name}")], 3, "pool_not_found");
    expect(&["copy", &src, &src], 4, "same_image");
    expect(&["copy", &src, "a/b/c/d"], 4, "invalid_input");
    dst_io
        .create_image(&name, 1 << 20, &CreateOptions::default())
        .await
        .unwrap();
    expect(&["copy", &src, &format!("{DST_POOL}/{name}")], 5, "destination_exists");
    // A cluster that is down.
    let dir = std::env::temp_dir().join(unique("down"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("ceph.conf");
    std::fs::write(&conf, format!("[global]\nmon_host = v2:127.0.0.1:{port}\n")).unwrap();
    let out = Command::new(migrate_bin())
        .args(["--json", "--connect-timeout", "2", "copy", "p/a", "p/b", "--conf"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(last_json(&out)["kind"], "cluster_unreachable");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ceph -s"),
        "the message says what to check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_and_cleans_up() {
    let (src_io, dst_io, name) = source_image("sigint", 64 << 20, 64 << 20).await;
    let before = pool_state(&[&src_io], &name).await;
    let child = migrate(&[
        "copy",
        &format!("{SRC_POOL}/{name}"),
        &format!("{DST_POOL}/{name}"),
        "--bwlimit",
        "8M",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let dst_for_wait = dst_io.clone();
    let partial = format!("{name}.livemig-partial");
    // Wait until the copy is under way (its partial destination exists).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dst_for_wait.image_exists(&partial).await.unwrap() {
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY-free: plain kill(2) of our own child.
    assert_eq!(unsafe_kill(child.id(), libc::SIGINT), 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancel"));
    let left: Vec<String> = dst_io
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&name))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(pool_state(&[&src_io], &name).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_mid_way_leaves_a_named_partial_that_the_next_copy_reclaims() {
    let (src_io, dst_io, name) = source_image("sigkill", 64 << 20, 64 << 20).await;
    let mut child = migrate(&[
        "copy",
        &format!("{SRC_POOL}/{name}"),
        &format!("{DST_POOL}/{name}"),
        "--bwlimit",
        "8M",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let partial = format!("{name}.livemig-partial");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dst_io.image_exists(&partial).await.unwrap() {
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing under the destination's name; the partial is clearly named.
    assert!(!dst_io.image_exists(&name).await.unwrap());
    assert!(dst_io.image_exists(&partial).await.unwrap());
    // The dead copy held the idle source by its exclusive lock (no snapshot);
    // the lock outlives it until a later client breaks it.
    let img = src_io.open_image(&name).await.unwrap();
    assert!(img.snap_list().await.unwrap().is_empty(), "a snapshot was taken");
    assert_eq!(img.lock_owners().await.unwrap().len(), 1, "the dead copy's lock");
    img.close().await;
    // Watches of a killed client linger until they time out; retry until the
    // partial is no longer watched and the copy reclaims it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&[
            "copy",
            &format!("{SRC_POOL}/{name}"),
            &format!("{DST_POOL}/{name}"),
            "--json",
        ]);
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(Instant::now() < deadline, "the stale partial was never reclaimed");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(!dst_io.image_exists(&partial).await.unwrap());
    let a = src_io.open_image_read_only(&name, None).await.unwrap();
    let b = dst_io.open_image_read_only(&name, None).await.unwrap();
    assert!(livemig::mirror::compare_images(&a, &b).await.unwrap().identical());
    assert!(a.snap_list().await.unwrap().is_empty(), "a snapshot was left");
    a.close().await;
    b.close().await;
    let a = src_io.open_image(&name).await.unwrap();
    assert!(
        a.lock_owners().await.unwrap().is_empty(),
        "the dead copy's lock is still there"
    );
    a.close().await;
}

fn unsafe_kill(pid: u32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) }
}

/// Waits for a child and returns its exit code and peak RSS in MiB.
///
/// The peak is the kernel's high-water mark of the child's own address space
/// (`VmHWM` in /proc), polled until it exits. `wait4`'s `ru_maxrss` would
/// not do: it includes the RSS of this (large) test process that the child
/// was forked from.
fn wait_peak_rss_mib(mut child: std::process::Child) -> (i32, u64) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), peak_kib / 1024);
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kib) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_follows_the_budget_not_the_image_size() {
    let (_, _, small) = source_image("memsmall", 64 << 20, 64 << 20).await;
    let (_, _, big) = source_image("membig", 512 << 20, 512 << 20).await;
    let budget_mib = 16;
    let mut peaks = Vec::new();
    for name in [&small, &big] {
        let child = migrate(&[
            "copy",
            &format!("{SRC_POOL}/{name}"),
            &format!("{DST_POOL}/{name}"),
            "--no-progress",
            "--in-flight",
            &format!("{budget_mib}M"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
        let (code, peak_mib) = wait_peak_rss_mib(child);
        assert_eq!(code, 0);
        peaks.push(peak_mib);
    }
    let (small_mib, big_mib) = (peaks[0], peaks[1]);
    eprintln!("peak RSS with a {budget_mib} MiB budget: 64 MiB image {small_mib} MiB, 512 MiB image {big_mib} MiB");
    // The process itself (librados threads and their malloc arenas, runtime,
    // binary) measured 30-104 MiB across runs of the same copy; a copy that
    // held data in proportion to the image would add hundreds of MiB here.
    for peak in [small_mib, big_mib] {
        assert!(
            peak <= budget_mib + 128,
            "peak {peak} MiB exceeds the budget {budget_mib} MiB + 128 MiB"
        );
    }
    assert!(
        big_mib <= small_mib + 64,
        "8x the data raised peak memory from {small_mib} to {big_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_commands_and_check() {
    let (_, _, name) = source_image("catcli", 16 << 20, 6 << 20).await;
    let pool = "cli-catalog";
    cluster().ensure_pool(pool);
    let cat = |args: &[&str]| {
        let mut full = vec!["catalog", "--catalog-pool", pool];
        full.extend_from_slice(args);
        full.push("--json");
        run(&full)
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last_json(&out)
    };
    let vol = ok(cat(&[
        "add-volume",
        &name,
        "--image",
        &format!("{SRC_POOL}/{name}"),
        "--location",
        "slow-hdd",
    ]));
    assert_eq!(vol["volume"]["size"], 16 << 20);
    assert_eq!(vol["volume"]["status"], "available");
    // Registering it twice is refused.
    assert_eq!(
        cat(&["add-volume", &name, "--image", &format!("{SRC_POOL}/{name}")])
            .status
            .code(),
        Some(4)
    );
    ok(cat(&["add-instance", "vm-cli", "--name", "web"]));
    let att = ok(cat(&["attach", &name, "vm-cli", "--device", "vdc"]));
    assert_eq!(att["attachment"]["device"], "vdc");
    let show = ok(cat(&["show", &name]));
    assert_eq!(show["volume"]["status"], "in-use");
    assert_eq!(show["attachments"][0]["instance_id"], "vm-cli");
    let list = ok(cat(&["list"]));
    assert!(list["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["volume"]["id"] == name.as_str()));

    // check: passes to the other pool, listing every rule.
    let check = |to: &str| run(&["check", &name, "--to", to, "--catalog-pool", pool, "--json"]);
    let good = check(DST_POOL);
    let report = ok(good);
    assert_eq!(report["passed"], true);
    assert_eq!(report["report"]["rules"].as_array().unwrap().len(), 10);
    // ... and fails to the same pool (the same image), with the rule named.
    let same = check(SRC_POOL);
    assert_eq!(same.status.code(), Some(4));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&same.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rules = lines[0]["report"]["rules"].as_array().unwrap();
    let distinct = rules.iter().find(|r| r["rule"] == "distinct_images").unwrap();
    assert_eq!(distinct["passed"], false);
    assert_eq!(distinct["error_kind"], "same_image");
    assert_eq!(lines[1]["kind"], "same_image");

    ok(cat(&["detach", &name, "vm-cli"]));
    assert_eq!(ok(cat(&["show", &name]))["volume"]["status"], "available");
    // Unknown things are "not found" (3); a missing catalog pool says how to create it.
    assert_eq!(cat(&["show", "no-such-volume"]).status.code(), Some(3));
    let missing = run(&["catalog", "--catalog-pool", "no-such-catalog-pool", "list"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ceph osd pool create"));
}
