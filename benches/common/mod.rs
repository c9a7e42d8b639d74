//! What the live, sync and QEMU benches share: running the CLIs, the
//! `migrate` binary, the test instance, and their pools.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `program args`; its stdout, or an error with everything it printed.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `migrate` binary: `LIVEMIG_MIGRATE_BIN`, else the one cargo built.
pub fn migrate_bin() -> PathBuf {
    std::env::var_os("LIVEMIG_MIGRATE_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_migrate")), PathBuf::from)
}

/// `migrate SUBCOMMAND --catalog-pool CATALOG ARGS..`
pub fn migrate(catalog: &str, args: &[&str]) -> Result<String> {
    let mut full = vec![args[0], "--catalog-pool", catalog];
    full.extend_from_slice(&args[1..]);
    let bin = migrate_bin();
    sh(&bin.to_string_lossy(), &full)
}

/// Creates the RBD pools that do not exist yet.
pub fn ensure_pools(pools: &[&str]) -> Result<()> {
    let existing = sh("ceph", &["osd", "pool", "ls"])?;
    for pool in pools {
        if !existing.lines().any(|l| l == *pool) {
            sh("ceph", &["osd", "pool", "create", pool, "32", "32"])?;
            sh("rbd", &["pool", "init", pool])?;
        }
    }
    Ok(())
}

/// The test instance: `LIVEMIG_INSTANCE_BIN`, else the one cargo built.
pub fn instance_bin() -> PathBuf {
    std::env::var_os("LIVEMIG_INSTANCE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_livemig-test-instance")),
        PathBuf::from,
    )
}

/// Sends a line to a test instance's control socket; its reply after `ok`.
pub fn control(socket: &Path, line: &str) -> Result<String> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    match reply.trim().strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_owned()),
        None => bail!("instance refused {line}: {reply}"),
    }
}

/// A test instance's status.
pub fn status(socket: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&control(socket, "status")?)?)
}

/// Starts a test instance writing `image` (as `args` say) once it is ready.
pub fn spawn_instance(image: &str, socket: &Path, log: &Path, args: &[&str]) -> Result<Child> {
    let mut child = Command::new(instance_bin())
        .args(["--image", image, "--control"])
        .arg(socket)
        .arg("--log")
        .arg(log)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("test instance did not start");
    }
    Ok(child)
}

/// Stops a test instance (drained and flushed).
pub fn stop(socket: &Path, mut child: Child) -> Result<()> {
    control(socket, "stop")?;
    child.wait()?;
    Ok(())
}

/// A new 1 GiB volume `image` with 256 MiB of data (large writes, logged
/// too), then a test instance writing a steady 2,000 x 4 KiB writes/s (8 in
/// flight) to it, registered in `catalog` as volume `volume` attached to
/// instance `vm-<volume>`.
pub fn steady_writer(catalog: &str, volume: &str, image: &str, socket: &Path, log: &Path, seed: u64) -> Result<Child> {
    sh("rbd", &["create", "--size", "1G", image])?;
    let filler = spawn_instance(
        image,
        socket,
        log,
        &[
            "--rate",
            "0",
            "--depth",
            "16",
            "--min-size",
            "4194304",
            "--max-size",
            "4194304",
            "--discard-percent",
            "0",
        ],
    )?;
    while status(socket)?["acked_total"].as_u64().unwrap_or(0) < 64 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop(socket, filler)?;
    let seed = seed.to_string();
    let writer = spawn_instance(
        image,
        socket,
        log,
        &[
            "--rate",
            "2000",
            "--depth",
            "8",
            "--min-size",
            "4096",
            "--max-size",
            "4096",
            "--discard-percent",
            "0",
            "--seed",
            &seed,
        ],
    )?;
    let vm = format!("vm-{volume}");
    migrate(catalog, &["catalog", "add-volume", volume, "--image", image])?;
    migrate(catalog, &["catalog", "add-instance", &vm])?;
    migrate(
        catalog,
        &[
            "catalog",
            "attach",
            volume,
            &vm,
            "--test-instance",
            &socket.to_string_lossy(),
        ],
    )?;
    Ok(writer)
}

/// Stops the writer, checks that every write it acknowledged is on
/// `dst_pool/volume` (of the cluster `dst_conf` names, or CEPH_CONF's; the
/// verifier's report), then drops that image and purges `src_pool`'s
/// trash: memstore keeps everything in RAM.
pub fn verify_and_drop(
    socket: &Path,
    writer: Child,
    log: &Path,
    (dst_pool, dst_conf): (&str, Option<&str>),
    volume: &str,
    src_pool: &str,
) -> Result<String> {
    stop(socket, writer)?;
    let dst = format!("{dst_pool}/{volume}");
    let mut verify = vec!["--verify", "--image", &dst, "--log", log.to_str().unwrap()];
    let mut rm = vec!["rm", "--no-progress", &dst];
    if let Some(conf) = dst_conf {
        verify.extend(["--conf", conf]);
        rm.extend(["-c", conf]);
    }
    let verified = sh(instance_bin().to_str().unwrap(), &verify)?;
    sh("rbd", &rm)?;
    sh("rbd", &["trash", "purge", src_pool])?;
    Ok(verified.trim().to_owned())
}
