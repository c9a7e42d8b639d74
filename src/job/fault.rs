//! Named kill points for crash tests.
//!
//! When `LIVEMIG_TEST_KILL_AT` names a point, the process SIGKILLs itself
//! there: no destructor, no flush, exactly like a crash. The crash tests run
//! `migrate` once per point and then prove that `migrate resume` (from
//! another process) or `migrate abort` ends in a consistent state.

/// The environment variable naming the point to die at.
pub const KILL_AT_ENV: &str = "LIVEMIG_TEST_KILL_AT";

/// Every kill point, in the order a migration (then an abort) passes them.
pub const POINTS: &[&str] = &[
    "after-create",
    "after-mark",
    "after-marked-recorded",
    "after-copying-recorded",
    "after-snapshot",
    "after-partial-created",
    "after-first-progress",
    "after-copy-complete",
    "after-rename",
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
        eprintln!("livemig: test kill point `{name}` reached; killing this process");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
