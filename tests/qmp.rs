//! The QMP client against a real QEMU (qemu-storage-daemon): negotiation,
//! typed replies, error classes, events while commands run, and a QEMU
//! that goes away.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use livemig::qemu::Qmp;
use livemig::ErrorKind;
use serde_json::json;

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A qemu-storage-daemon with only a QMP monitor; fails with a hint if
/// QEMU is not installed.
async fn daemon(tag: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("livemig-qmp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&socket);
    let child = Command::new("qemu-storage-daemon")
        .arg("--chardev")
        .arg(format!("socket,id=qmp0,path={},server=on,wait=off", socket.display()))
        .args(["--monitor", "chardev=qmp0"])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon is needed for the QEMU tests: run scripts/setup (installs QEMU from bookworm-backports)");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Daemon { child, socket }
}

#[tokio::test]
async fn commands_replies_errors_and_events() {
    let d = daemon("events").await;
    let qmp = Qmp::connect(&d.socket).await.unwrap();
    assert!(qmp.version().0 >= 9, "QEMU {:?}", qmp.version());

    // A typed reply.
    let version = qmp.execute("query-version", json!({})).await.unwrap();
    assert_eq!(version["qemu"]["major"].as_u64(), Some(qmp.version().0));

    // QEMU's error class and description reach the caller.
    let e = qmp.execute("no-such-command", json!({})).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Hypervisor);
    assert!(e.to_string().contains("CommandNotFound"), "{e}");
    let e = qmp
        .execute("blockdev-del", json!({"node-name": "missing"}))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("GenericError") && e.to_string().contains("missing"),
        "{e}"
    );

    // Events arrive while commands run: a mirror between two null nodes
    // reports its job's states and becomes ready.
    let mut events = qmp.events();
    for node in ["a", "b"] {
        qmp.execute(
            "blockdev-add",
            json!({"driver": "null-co", "node-name": node, "size": 1 << 20}),
        )
        .await
        .unwrap();
    }
    qmp.execute(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "a", "target": "b", "sync": "full"}),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ev = events.recv().await.unwrap();
            seen.push(ev.name.clone());
            if ev.name == "BLOCK_JOB_READY" {
                return ev;
            }
        }
    })
    .await
    .expect("BLOCK_JOB_READY within 30 s");
    assert_eq!(ready.data["device"], "m");
    assert!(seen.iter().any(|n| n == "JOB_STATUS_CHANGE"), "{seen:?}");
    let jobs = qmp.execute("query-jobs", json!({})).await.unwrap();
    assert_eq!(jobs[0]["status"], "ready", "{jobs}");
    qmp.execute("job-cancel", json!({"id": "m"})).await.unwrap();
}

#[tokio::test]
async fn a_qemu_that_goes_away_fails_commands_clearly() {
    let mut d = daemon("gone").await;
    let qmp = Qmp::connect(&d.socket).await.unwrap();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let e = qmp.execute("query-version", json!({})).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Hypervisor);
    assert!(e.to_string().contains("gone"), "{e}");
    // Connecting to a socket nobody serves is a clear error too.
    let e = Qmp::connect(&d.socket).await.err().expect("no QEMU there");
    assert_eq!(e.kind(), ErrorKind::Hypervisor);
    assert!(e.to_string().contains("cannot connect"), "{e}");
}
