//! The qemu-storage-daemon that stands in for an instance's QEMU in the
//! tests and the QEMU bench: its rbd driver opens the volume as node
//! `disk0`, QMP listens on `DIR/qmp.sock`, and the volume is exported over
//! NBD on `DIR/nbd.sock` as `vol`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

/// The daemon's command line for `pool/image` on the cluster of `conf`.
pub fn qsd_command(dir: &Path, pool: &str, image: &str, conf: &str) -> Command {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--chardev")
        .arg(format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            dir.join("qmp.sock").display()
        ))
        .args(["--monitor", "chardev=qmp0", "--blockdev"])
        .arg(format!(
            "driver=rbd,node-name=disk0,pool={pool},image={image},conf={conf},cache.direct=on,discard=unmap"
        ))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", dir.join("nbd.sock").display()))
        .args(["--export", "type=nbd,id=exp0,node-name=disk0,name=vol,writable=on"])
        .stdout(Stdio::null());
    cmd
}

/// Whether the daemon's QMP and NBD sockets are there.
pub fn qsd_ready(dir: &Path) -> bool {
    dir.join("nbd.sock").exists() && dir.join("qmp.sock").exists()
}
