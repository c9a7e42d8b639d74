//! Continuous sync: a live job (native engine) whose replay rounds go on,
//! one every interval, so that a replica on another pool or cluster stays
//! a few seconds behind the volume, until an operator asks for the
//! cutover (the fenced cutover of a live migration: nothing acknowledged
//! is lost) or stops it (a rollback: snapshots and replica removed).
//!
//! The driver owns the job's record; an operator's request goes to an
//! object of its own, which the driver reads between rounds: woken by a
//! RADOS notify on the record, which it watches (polling only when it
//! cannot watch). Whoever carries a request out (the driver, or the
//! requester once the driver's lease has lapsed) is the one holding the
//! lease, as for any job.
//!
//! The replica holds, whole, the source as of the base snapshot (the last
//! round's, or the copy's); the RPO is the age of that snapshot. The
//! source keeps at most two of the job's snapshots: the base and, while a
//! round runs, the next one.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::driver::{lease_lost, paused};
use super::live::now_ms;
use super::record::{JobRecord, Phase, PhaseKind, RoundReport, SyncRecord, SyncRequest};
use super::run::{RequestWatch, Run};
use super::source::{snapshot_exists, sweep_snapshots};
use super::store::Stored;
use super::Migrator;
use crate::catalog::Backing;
use crate::ceph::Image;
use crate::error::{Error, ErrorKind, Result};
use crate::precheck::Destination;

/// How often a driver waiting for the next round looks for requests
/// when it cannot watch for them.
const REQUEST_POLL: Duration = Duration::from_millis(200);

/// How often it looks anyway while it watches (a notify may be missed
/// while the watch reconnects).
const WATCHED_REQUEST_POLL: Duration = Duration::from_secs(2);

/// The reason a stopped sync's record keeps.
pub const SYNC_STOPPED: &str = "sync stopped by the operator";

/// How a new sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOptions {
    /// From the start of one round to the start of the next.
    pub interval: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            interval: Duration::from_secs(2),
        }
    }
}

/// Where a sync stands, for `migrate sync status` and embedders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    /// The sync's job id.
    pub job: String,
    /// The volume kept in sync.
    pub volume: String,
    /// The job's phase.
    pub phase: PhaseKind,
    /// The volume's image.
    pub source: Backing,
    /// The replica.
    pub replica: Backing,
    /// Milliseconds from one round's start to the next's.
    pub interval_ms: u64,
    /// Rounds applied since the first copy.
    pub rounds: u64,
    /// Age in milliseconds of the newest point in time the replica holds
    /// whole; `None` until the first copy is complete.
    pub rpo_ms: Option<u64>,
    /// Bytes the volume changed since that point in time (`None` before it).
    pub behind_bytes: Option<u64>,
    /// The last round.
    pub last_round: Option<RoundReport>,
    /// A request not yet carried out.
    pub requested: Option<SyncRequest>,
    /// The error that stopped the last run, if any.
    pub last_error: Option<String>,
}

impl Migrator {
    /// Writes a new continuous sync of `volume_id` to `to` (phase
    /// `created`); drive it with [`Migrator::resume`], which returns only
    /// once it has been cut over or stopped (or is paused).
    pub async fn create_sync(&self, volume_id: &str, to: &Destination, options: SyncOptions) -> Result<Stored> {
        let sync = SyncRecord {
            interval_ms: options.interval.as_millis().max(1) as u64,
            ..Default::default()
        };
        self.create_job(volume_id, to, Some(sync)).await
    }

    /// The running sync of `volume_id`.
    pub async fn sync_of(&self, volume_id: &str) -> Result<Stored> {
        let no_sync = || {
            Error::new(ErrorKind::JobNotFound, "find sync")
                .target(volume_id.to_owned())
                .message(format!(
                    "volume `{volume_id}` is not being synced: start a sync with `migrate sync start`"
                ))
        };
        let volume = self.catalog.volume(volume_id).await?;
        let stored = match &volume.migration {
            Some(id) => self.store.load(id).await?,
            // A sync created but not yet marked in the catalog.
            None => {
                let mut found = None;
                for id in self.store.ids().await? {
                    let s = self.store.load(&id).await?;
                    if s.record.volume_id == volume_id && s.record.sync.is_some() && !s.record.phase.is_final() {
                        found = Some(s);
                    }
                }
                found.ok_or_else(no_sync)?
            }
        };
        if stored.record.sync.is_none() {
            return Err(Error::new(ErrorKind::AlreadyMigrating, "find sync")
                .target(volume_id.to_owned())
                .message(format!(
                    "volume `{volume_id}` is being migrated by job `{}`, not synced",
                    stored.record.id
                )));
        }
        if stored.record.phase.is_final() {
            return Err(no_sync());
        }
        Ok(stored)
    }

    /// Where the sync of `volume_id` stands.
    pub async fn sync_status(&self, volume_id: &str) -> Result<SyncStatus> {
        let mut s = self.sync_of(volume_id).await?;
        // The driver removes a base once the next round is recorded: read
        // the record again then.
        let mut tries = 0;
        let behind_bytes = loop {
            let r = &s.record;
            let base = match (&r.phase, r.sync.as_ref().and_then(|y| y.synced_at_ms)) {
                (Phase::Replaying { base, .. } | Phase::CuttingOver { base, .. }, Some(_)) => base.clone(),
                _ => break None,
            };
            match self.changed_since(r, &base).await {
                Ok(bytes) => break Some(bytes),
                Err(e) if e.kind() == ErrorKind::ImageNotFound && tries < 3 => {
                    tries += 1;
                    s = self.sync_of(volume_id).await?;
                }
                Err(e) => return Err(e),
            }
        };
        let r = &s.record;
        let sync = r.sync.clone().unwrap_or_default();
        Ok(SyncStatus {
            job: r.id.clone(),
            volume: r.volume_id.clone(),
            phase: r.phase.kind(),
            source: r.source.clone(),
            replica: r.destination.clone(),
            interval_ms: sync.interval_ms,
            rounds: sync.rounds,
            rpo_ms: sync.synced_at_ms.map(|t| now_ms().saturating_sub(t)),
            behind_bytes,
            last_round: r.live.as_ref().and_then(|l| l.rounds.last().cloned()),
            requested: self.store.requested(&r.id).await?,
            last_error: r.last_error.clone(),
        })
    }

    /// Bytes of the source's head changed since its snapshot `base`.
    async fn changed_since(&self, r: &JobRecord, base: &str) -> Result<u64> {
        let (src_io, _) = self.ioctxs(r).await?;
        let img = src_io.open_image_read_only(&r.source.image.image, None).await?;
        let changed = img.changed_bytes(Some(base), false).await;
        img.close().await;
        changed
    }

    /// Asks the sync of `volume_id` to cut over to its replica, and sees
    /// it done: by its driver, or by this migrator once the driver's lease
    /// has lapsed. Refused while the replica holds no whole point in time.
    pub async fn cutover_sync(&self, volume_id: &str, wait: Duration) -> Result<JobRecord> {
        let s = self.sync_of(volume_id).await?;
        let id = s.record.id.clone();
        if s.record.phase.is_switched() {
            return Err(Error::new(ErrorKind::JobFinished, "sync cutover")
                .target(id.clone())
                .message(format!(
                    "the sync of volume `{volume_id}` (job `{id}`) has already switched it (phase {})",
                    s.record.phase.kind()
                )));
        }
        if s.record.sync.as_ref().and_then(|y| y.synced_at_ms).is_none() {
            return Err(Error::new(ErrorKind::NotSynced, "sync cutover").target(id.clone()).message(format!(
                "the replica of volume `{volume_id}` (job `{id}`) holds no whole point in time yet: its first copy has not completed; nothing was changed"
            )));
        }
        self.store.request(&id, SyncRequest::Cutover).await?;
        self.carry_out(&id, SyncRequest::Cutover, wait).await
    }

    /// Asks the sync of `volume_id` to stop (it rolls back: the volume
    /// stays where it is, the replica and the job's snapshots go), and sees
    /// it done.
    pub async fn stop_sync(&self, volume_id: &str, wait: Duration) -> Result<JobRecord> {
        let id = self.sync_of(volume_id).await?.record.id;
        self.store.request(&id, SyncRequest::Stop).await?;
        self.carry_out(&id, SyncRequest::Stop, wait).await
    }

    /// Drives job `id` to the end `request` asks for, or, while another
    /// process drives it, waits (up to `wait`) for that one to get there.
    async fn carry_out(&self, id: &str, request: SyncRequest, wait: Duration) -> Result<JobRecord> {
        let deadline = Instant::now() + wait;
        loop {
            let attempt = match request {
                SyncRequest::Cutover => self.resume(id).await,
                SyncRequest::Stop => self.abort(id, SYNC_STOPPED).await,
            };
            match attempt {
                // The drive loop that ends the job forgets its requests.
                Err(e) if e.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                    let r = self.store.load(id).await?.record;
                    if r.phase.is_final() {
                        return Ok(r);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Before a sync's round: waits until the round is due (an interval
    /// after the last one of this run started) or an operator asks for
    /// something, whichever comes first.
    pub(in crate::job) async fn sync_pace(&self, s: &Stored, run: &mut Run) -> Result<Option<SyncRequest>> {
        let interval = Duration::from_millis(s.record.sync.as_ref().map_or(0, |y| y.interval_ms));
        let due = run.round_started.map(|t| t + interval);
        let id = &s.record.id;
        if let RequestWatch::NotYet = run.requests {
            run.requests = match self.store.watch_requests(id).await {
                Ok(watch) => RequestWatch::Watching(watch),
                Err(e) => {
                    warn!(error = %e, "cannot watch for requests; polling for them");
                    RequestWatch::Polling
                }
            };
        }
        loop {
            if let Some(request) = self.store.requested(id).await? {
                return Ok(Some(request));
            }
            let now = Instant::now();
            let Some(left) = due.and_then(|d| d.checked_duration_since(now)).filter(|l| !l.is_zero()) else {
                return Ok(None);
            };
            let poll = match run.requests {
                RequestWatch::Watching(_) => WATCHED_REQUEST_POLL,
                _ => REQUEST_POLL,
            };
            // None: the lease is lost (or the run paused); Some(false): the
            // watch failed.
            let woke = {
                let notified = async {
                    match &run.requests {
                        RequestWatch::Watching(watch) => watch.notified().await.is_ok(),
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = run.lost.cancelled() => None,
                    ok = notified => Some(ok),
                    _ = tokio::time::sleep(left.min(poll)) => Some(true),
                }
            };
            match woke {
                None => {
                    return Err(if self.pause.is_cancelled() {
                        paused(id)
                    } else {
                        lease_lost(id)
                    })
                }
                Some(false) => {
                    warn!("the watch for requests failed; polling for them");
                    run.requests = RequestWatch::Polling;
                }
                Some(true) => {}
            }
        }
    }
}

/// Before a sync's round: the replica keeps the point in time it holds
/// whole as a snapshot named as the source's (`base`), and no earlier one.
/// Should the source be lost while the round is applied, the replica is
/// rolled back to it (see [`Migrator::failover_sync`]).
pub(in crate::job) async fn keep_replica_point(replica: &Image, job: &str, base: &str) -> Result<()> {
    if !snapshot_exists(replica, base).await? {
        replica.snap_create(base).await?;
    }
    sweep_snapshots(replica, job, Some(base)).await
}

/// Image-meta keys that are livemig's own on either side, never synced.
const OWN_META_PREFIX: &str = "livemig.";

/// Before a sync's delta: gives the replica the size `src` has (a
/// snapshot, or the fenced source) and the image-meta of the source (a
/// volume may be resized or relabelled while it syncs; image-meta is not
/// kept per snapshot), so that each round carries them over with the data.
pub(in crate::job) async fn match_replica(src: &Image, replica: &Image) -> Result<()> {
    let size = src.info().await?.size;
    if replica.info().await?.size != size {
        info!(size, "resizing the replica as the source was");
        replica.resize(size).await?;
    }
    let theirs = src.metadata_list().await?;
    let ours = replica.metadata_list().await?;
    let synced = |k: &str| !k.starts_with(OWN_META_PREFIX);
    for (k, v) in theirs.iter().filter(|(k, _)| synced(k)) {
        if !ours.iter().any(|(ok, ov)| ok == k && ov == v) {
            replica.metadata_set(k, v).await?;
        }
    }
    for (k, _) in ours.iter().filter(|(k, _)| synced(k)) {
        if !theirs.iter().any(|(tk, _)| tk == k) {
            replica.metadata_remove(k).await?;
        }
    }
    Ok(())
}

/// When the copy a sync started from began: no later than its snapshot,
/// so an RPO counted from it is never understated.
pub(in crate::job) fn copy_started_ms(r: &JobRecord) -> Option<u64> {
    r.history
        .iter()
        .rev()
        .find(|(p, _)| *p == PhaseKind::Copying)
        .map(|(_, t)| t * 1000)
}
