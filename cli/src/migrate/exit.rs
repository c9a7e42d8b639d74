//! How `migrate` ends: the exit codes its help explains (each error kind's
//! from the library's table) and the advice it adds, in its own commands
//! and flags, to the library's hint.

use super::*;

pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    failed (I/O or cluster error; the message says which)
  2    bad usage (unknown option, malformed argument)
  3    not found (pool, namespace, image, job, or volume/instance in the catalog)
  4    refused (same source and destination, content mismatch, wrong status,
       volume attached twice)
  5    destination exists or is in use, volume already migrating, concurrent change
  6    cluster unreachable or its configuration unreadable
  7    not enough space in the destination pool
  130  cancelled (Ctrl-C); nothing was left half-made

Environment: CEPH_CONF names the ceph.conf when --conf is not given;
LIVEMIG_LOG sets the log filter (e.g. LIVEMIG_LOG=livemig=debug).";

/// The library's hint says what to do in its own terms; this adds how to
/// do it with `migrate`.
pub(crate) fn cli_advice(e: &Error) -> Option<String> {
    let job = e.target_name().unwrap_or("JOB");
    let about_a_job = matches!(e.op(), "migration" | "abort" | "load job" | "resume" | "status");
    Some(match e.kind() {
        ErrorKind::ClusterUnreachable | ErrorKind::Config => {
            "with migrate: name the ceph.conf with --conf (or CEPH_CONF) and the keyring with --keyring".into()
        }
        ErrorKind::Cancelled if about_a_job => {
            format!("with migrate: `migrate resume {job}` continues it, `migrate abort {job}` rolls it back")
        }
        ErrorKind::NotConverging => format!(
            "with migrate: `migrate resume {job} --on-stall cutover` cuts over anyway, `migrate abort {job}` rolls back"
        ),
        ErrorKind::JobFinished if about_a_job => {
            format!("with migrate: `migrate status {job}` shows it, `migrate resume {job}` finishes it")
        }
        ErrorKind::CorruptRecord => format!("with migrate: `migrate status {job} --json` shows the record"),
        ErrorKind::JobNotFound => "with migrate: `migrate list` lists the jobs".into(),
        ErrorKind::NotInCatalog => "with migrate: `migrate catalog list` lists what is registered".into(),
        ErrorKind::InvalidState => "with migrate: `migrate catalog show VOLUME` shows the statuses".into(),
        ErrorKind::NotSynced => "with migrate: `migrate sync status VOLUME` shows when the replica has one".into(),
        ErrorKind::AlreadyMigrating => {
            "with migrate: `migrate list` shows that migration, `migrate abort JOB` rolls it back".into()
        }
        _ => return None,
    })
}
