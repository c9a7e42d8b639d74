//! What the live and QEMU benches share: running the CLIs, the `migrate`
//! binary, and their pools.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

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
