//! A real QEMU guest that writes to an RBD volume through a virtio disk.
//!
//! qemu-system-x86_64 (software emulation) boots Debian's cloud kernel
//! (unpacked by scripts/setup) with an initramfs whose init is
//! `tests/guest/writer.c`, built here with `cc -static`. The volume is
//! attached the way libvirt attaches it: an rbd node, a raw node over it, and
//! a virtio-blk device on the raw node. The guest prints every acknowledged
//! write on its serial console, which QEMU saves to a file; [`Vm::verify`]
//! checks an image against that log.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Block size of the guest's writes.
pub const BLOCK: u64 = 4096;
/// Blocks the guest's writes cycle over (16 MiB).
pub const BLOCKS: u64 = 4096;
const STRIDE: u64 = 7919;

/// The guest's pattern, word `i` of the block that write `seq` put at block
/// `nr` (the same function as `pattern_word` in tests/guest/writer.c).
fn pattern_word(seq: u64, nr: u64, i: u64) -> u64 {
    let mut z = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nr.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ (i + 1);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn block_of(seq: u64, nr: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|i| pattern_word(seq, nr, i).to_le_bytes())
        .collect()
}

fn kernel_dir() -> PathBuf {
    let dir = std::env::var_os("LIVEMIG_GUEST_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/livemig/guest-kernel"));
    assert!(
        dir.join("vmlinuz").is_file() && dir.join("modules/virtio_blk.ko").is_file(),
        "the QEMU guest tests need the test guest's kernel in {} and qemu-system-x86_64: run scripts/setup \
         (or scripts/test, which runs it)",
        dir.display()
    );
    dir
}

/// Appends one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The guest's initramfs (built once per test process): `/init` and the
/// virtio modules.
fn initramfs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("livemig-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = super::repo().join("tests/guest/writer.c");
        let init = dir.join("init");
        let out = Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&init)
            .arg(&source)
            .output()
            .expect("cc is needed: run scripts/setup");
        assert!(
            out.status.success(),
            "building the guest's init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut archive = Vec::new();
        cpio_entry(&mut archive, 1, "init", 0o100_755, &std::fs::read(&init).unwrap());
        cpio_entry(&mut archive, 2, "modules", 0o040_755, &[]);
        let modules = kernel_dir().join("modules");
        let mut entries: Vec<_> = std::fs::read_dir(&modules)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for (n, module) in entries.iter().enumerate() {
            let name = format!("modules/{}", module.file_name().unwrap().to_string_lossy());
            cpio_entry(
                &mut archive,
                3 + n as u32,
                &name,
                0o100_644,
                &std::fs::read(module).unwrap(),
            );
        }
        cpio_entry(&mut archive, 0, "TRAILER!!!", 0, &[]);
        let path = dir.join("initramfs.cpio");
        std::fs::File::create(&path).unwrap().write_all(&archive).unwrap();
        path
    })
}

/// How the guest's disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As libvirt does: device -> raw node -> rbd node.
    Libvirt,
    /// The device directly on the rbd node.
    DeviceOnRbd,
}

/// A running guest; killed (and its directory removed) when dropped.
pub struct Vm {
    qemu: Child,
    pub dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the guest's console says about its writes.
#[derive(Debug, Default)]
pub struct WriteLog {
    /// Acknowledged writes, in order: (seq, block).
    pub acks: Vec<(u64, u64)>,
    /// Lines of failed writes.
    pub errors: Vec<String>,
}

impl Vm {
    /// Boots a guest on `pool/image` (node names as libvirt gives them:
    /// `libvirt-1-storage` and `libvirt-1-format`), writing `rate` blocks a
    /// second once booted; returns when it writes.
    pub fn start(tag: &str, pool: &str, image: &str, conf: &Path, rate: u32, layout: Layout) -> Vm {
        let kernel = kernel_dir().join("vmlinuz");
        let dir = std::env::temp_dir().join(format!("livemig-vm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let storage = serde_json::json!({
            "driver": "rbd", "node-name": "libvirt-1-storage", "pool": pool, "image": image,
            "conf": conf.display().to_string(), "cache": {"direct": false, "no-flush": false},
            "discard": "unmap",
        });
        let format = serde_json::json!({
            "driver": "raw", "node-name": "libvirt-1-format", "file": "libvirt-1-storage", "discard": "unmap",
        });
        let device_node = match layout {
            Layout::Libvirt => "libvirt-1-format",
            Layout::DeviceOnRbd => "libvirt-1-storage",
        };
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args([
            "-machine",
            "q35,accel=tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(initramfs())
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 lmw_rate={rate} lmw_blocks={BLOCKS}"
        ))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()))
        .arg("-blockdev")
        .arg(storage.to_string());
        if layout == Layout::Libvirt {
            qemu.arg("-blockdev").arg(format.to_string());
        }
        let qemu = qemu
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive={device_node},id=virtio-disk1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("qemu.err")).unwrap()))
            .spawn()
            .expect("qemu-system-x86_64 is needed: run scripts/setup");
        let mut vm = Vm { qemu, dir };
        vm.wait_acks(20, Duration::from_secs(90));
        vm
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The writes the guest reported so far.
    pub fn log(&self) -> WriteLog {
        let mut log = WriteLog::default();
        for line in self.console().lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["A", seq, block] => {
                    if let (Ok(seq), Ok(block)) = (seq.parse(), block.parse()) {
                        log.acks.push((seq, block));
                    }
                }
                ["E", ..] => log.errors.push(line.to_owned()),
                _ => {}
            }
        }
        log
    }

    /// Waits until the guest has acknowledged `more` writes more than now.
    pub fn wait_acks(&mut self, more: usize, within: Duration) {
        let start = self.log().acks.len();
        let deadline = Instant::now() + within;
        while self.log().acks.len() < start + more {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!(
                    "QEMU exited ({status}): {}\nconsole: {}",
                    std::fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default(),
                    self.console()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the guest acknowledged {} writes in {within:?}, expected {more}; console:\n{}",
                self.log().acks.len() - start,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks `image` (the volume's bytes) against the log, taken after the
    /// guest stopped writing: each block holds its last acknowledged write,
    /// or the one write that may have been in flight; blocks never written
    /// are zero. Returns the number of blocks checked that hold data.
    pub fn verify(log: &WriteLog, image: &[u8]) -> usize {
        assert!(log.errors.is_empty(), "the guest saw failed writes: {:?}", log.errors);
        let mut last: HashMap<u64, u64> = HashMap::new();
        for (i, &(seq, block)) in log.acks.iter().enumerate() {
            assert_eq!(seq, i as u64 + 1, "the guest's log skips a write");
            assert_eq!(block, seq * STRIDE % BLOCKS, "the guest's log is garbled");
            last.insert(block, seq);
        }
        let in_flight = log.acks.len() as u64 + 1;
        let in_flight_block = in_flight * STRIDE % BLOCKS;
        for nr in 0..BLOCKS {
            let got = &image[(nr * BLOCK) as usize..((nr + 1) * BLOCK) as usize];
            let in_flight_here = nr == in_flight_block && got == block_of(in_flight, nr).as_slice();
            match last.get(&nr) {
                Some(&seq) => assert!(
                    got == block_of(seq, nr).as_slice() || in_flight_here,
                    "block {nr} does not hold acknowledged write {seq}"
                ),
                None => assert!(
                    got.iter().all(|&b| b == 0) || in_flight_here,
                    "block {nr} was never written but is not zero"
                ),
            }
        }
        last.len()
    }
}
