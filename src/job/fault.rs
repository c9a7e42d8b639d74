//! Named kill points for crash tests.
//!
//! When `LIVEMIG_TEST_KILL_AT` names a point, the process SIGKILLs itself
//! there: no destructor, no flush, exactly like a crash. The crash tests run
//! `migrate` once per point and then prove that `migrate resume` (from
//! another process) or `migrate abort` ends in a consistent state.
//!
//! A point is between two steps. To crash *inside* a step (a librbd call
//! that makes several changes, like a snapshot creation), [`arm`] kills the
//! process `LIVEMIG_TEST_KILL_DELAY_US` microseconds after it is reached,
//! from another thread, while the step runs.

/// The environment variable naming the point to die at.
pub const KILL_AT_ENV: &str = "LIVEMIG_TEST_KILL_AT";

/// The delay after an armed point (see [`arm`]), in microseconds.
pub const KILL_DELAY_ENV: &str = "LIVEMIG_TEST_KILL_DELAY_US";

/// Every kill point, in the order a migration (then an abort) passes them.
pub const POINTS: &[&str] = &[
    "after-create",
    "after-mark",
    "after-marked-recorded",
    "after-copying-recorded",
    "inside-snapshot-create",
    "after-snapshot",
    "after-partial-created",
    "after-first-progress",
    "after-copy-complete",
    "after-rename",
    "resync-after-restore",
    "resync-after-point-named",
    "after-copied-recorded",
    "live-after-round-snapshot",
    "live-after-round-applied",
    "live-after-round-recorded",
    "live-after-cutover-recorded",
    "live-after-hold",
    "live-after-fence",
    "live-after-final-applied",
    "live-after-switch",
    "live-after-switched-recorded",
    "live-after-repoint",
    "live-after-resume",
    "live-after-resumed-recorded",
    "qemu-after-mirror-started",
    "qemu-after-ready",
    "qemu-after-synced",
    "qemu-after-switch",
    "qemu-after-complete",
    "after-switch",
    "after-switched-recorded",
    "after-snapshot-removed",
    "after-source-retired",
    "after-release",
    "abort-after-recorded",
    "abort-after-instance-resumed",
    "abort-after-images",
    "abort-after-snapshot",
    "abort-after-catalog",
];

/// Dies here if the test asked for it.
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unknown kill point {name}");
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == name) {
        die(&format!("`{name}`"));
    }
}

/// SIGKILLs this process, saying where.
fn die(at: &str) {
    eprintln!("livemig: test kill point {at} reached; killing this process");
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// If the test asked to die at `name`: dies `LIVEMIG_TEST_KILL_DELAY_US`
/// (default 0) microseconds from now, whatever this process is doing then.
pub fn arm(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unknown kill point {name}");
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == name) {
        let delay = std::env::var(KILL_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_micros(delay));
            die(&format!("`{name}` + {delay} us"));
        });
    }
}
