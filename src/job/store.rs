//! Where job records live: one guarded RADOS object per job
//! (`livemig.job.<id>`, omap key `record`), an index object listing job ids
//! (`livemig.jobs`), and the lease, a RADOS lock with expiry on the job's
//! object, renewed by its holder while it works.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::record::{decode, encode, JobRecord, SyncRequest};
use crate::ceph::{IoCtx, Watch};
use crate::error::{Error, ErrorKind, Result};

const INDEX_OBJECT: &str = "livemig.jobs";
const LEASE_NAME: &str = "livemig.lease";
const RECORD_KEY: &str = "record";
const REQUEST_KEY: &str = "request";

fn job_object(id: &str) -> String {
    format!("livemig.job.{id}")
}

/// How long a request waits for the sync's driver to acknowledge its notify.
const REQUEST_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// The object an operator's request to a running sync is written to: not
/// the record, whose generation its driver alone advances.
fn request_object(id: &str) -> String {
    format!("livemig.job.{id}.request")
}

/// The longest job id accepted (livemig makes 12-character ids).
const MAX_ID_LEN: usize = 64;

/// Refuses an id that no job can have (it would name another object, or
/// none), before anything reads or writes an object named after it.
pub fn check_job_id(id: &str) -> Result<()> {
    let well_formed = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed {
        return Ok(());
    }
    Err(Error::new(ErrorKind::InvalidInput, "job id")
        .target(id.escape_debug().to_string())
        .message(format!(
            "`{}` is not a job id: ids are 1 to {MAX_ID_LEN} letters, digits, `-` or `_`",
            id.escape_debug()
        )))
}

fn job_not_found(id: &str) -> Error {
    Error::new(ErrorKind::JobNotFound, "load job")
        .target(id.to_owned())
        .message(format!("there is no job `{id}`"))
}

/// Job records in a pool (normally the catalog's).
#[derive(Clone)]
pub struct JobStore {
    io: IoCtx,
}

/// A loaded record and the generation it was read at (for the next save).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub record: JobRecord,
    /// Generation of its object when read.
    pub generation: u64,
}

impl JobStore {
    /// Job records in `io`'s pool/namespace.
    pub fn new(io: IoCtx) -> Self {
        JobStore { io }
    }

    /// Writes a new record and adds it to the index.
    pub async fn create(&self, record: &JobRecord) -> Result<Stored> {
        let generation = self
            .io
            .write_guarded(
                &job_object(&record.id),
                None,
                vec![(RECORD_KEY.into(), encode(record))],
                vec![],
            )
            .await?;
        loop {
            let index = self.io.read_guarded(INDEX_OBJECT).await?;
            let expected = index.as_ref().map(|i| i.generation);
            let entry = vec![(record.id.clone(), record.volume_id.clone().into_bytes())];
            match self.io.write_guarded(INDEX_OBJECT, expected, entry, vec![]).await {
                Ok(_) => {
                    return Ok(Stored {
                        record: record.clone(),
                        generation,
                    })
                }
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a record.
    pub async fn load(&self, id: &str) -> Result<Stored> {
        check_job_id(id)?;
        let obj = self
            .io
            .read_guarded(&job_object(id))
            .await?
            .ok_or_else(|| job_not_found(id))?;
        let raw = obj.omap.get(RECORD_KEY).ok_or_else(|| {
            Error::new(ErrorKind::CorruptRecord, "load job")
                .target(id.to_owned())
                .message(format!("job object of `{id}` holds no record"))
        })?;
        Ok(Stored {
            record: decode(id, raw)?,
            generation: obj.generation,
        })
    }

    /// Writes `stored.record` if nobody wrote since it was read; updates the generation.
    pub async fn save(&self, stored: &mut Stored) -> Result<()> {
        stored.generation = self
            .io
            .write_guarded(
                &job_object(&stored.record.id),
                Some(stored.generation),
                vec![(RECORD_KEY.into(), encode(&stored.record))],
                vec![],
            )
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Conflict => e.message(format!(
                    "job `{}` was changed by another process; stopping",
                    stored.record.id
                )),
                _ => e,
            })?;
        Ok(())
    }

    /// Ids of all jobs, oldest first by id order.
    pub async fn ids(&self) -> Result<Vec<String>> {
        Ok(self
            .io
            .read_guarded(INDEX_OBJECT)
            .await?
            .map(|i| i.omap.into_keys().collect())
            .unwrap_or_default())
    }

    /// The sync of `volume_id` that failed over last, if any (records this
    /// release cannot read are not it).
    pub async fn last_failover(&self, volume_id: &str) -> Result<Option<Stored>> {
        let mut last: Option<(u64, Stored)> = None;
        for id in self.ids().await? {
            let s = match self.load(&id).await {
                Ok(s) => s,
                Err(e) if matches!(e.kind(), ErrorKind::RecordTooNew | ErrorKind::CorruptRecord) => continue,
                Err(e) => return Err(e),
            };
            let at = match (&s.record.sync, s.record.volume_id == volume_id) {
                (Some(y), true) => y.failover.as_ref().map(|f| f.at_ms),
                _ => None,
            };
            if let Some(at) = at.filter(|at| last.as_ref().is_none_or(|(t, _)| at > t)) {
                last = Some((at, s));
            }
        }
        Ok(last.map(|(_, s)| s))
    }

    /// Asks the driver of sync `id` for `request` (the latest request wins).
    pub async fn request(&self, id: &str, request: SyncRequest) -> Result<()> {
        check_job_id(id)?;
        let oid = request_object(id);
        let value = serde_json::to_vec(&request).expect("requests serialize");
        loop {
            let expected = self.io.read_guarded(&oid).await?.map(|o| o.generation);
            match self
                .io
                .write_guarded(&oid, expected, vec![(REQUEST_KEY.into(), value.clone())], vec![])
                .await
            {
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        // The driver watches the job's record (see `watch_requests`); one
        // that does not answer in time reads the request when it next polls.
        if let Err(e) = self.io.notify(&job_object(id), REQUEST_NOTIFY_TIMEOUT).await {
            debug!(job = %id, error = %e, "notifying the sync's driver of a request");
        }
        Ok(())
    }

    /// A watch a sync's driver keeps on job `id`'s record, woken when a
    /// request is made (see [`JobStore::request`]).
    pub async fn watch_requests(&self, id: &str) -> Result<Watch> {
        check_job_id(id)?;
        self.io.watch(&job_object(id)).await
    }

    /// What an operator asked of sync `id`, if anything (a request this
    /// release does not know reads as none).
    pub async fn requested(&self, id: &str) -> Result<Option<SyncRequest>> {
        check_job_id(id)?;
        Ok(self
            .io
            .read_guarded(&request_object(id))
            .await?
            .and_then(|o| o.omap.get(REQUEST_KEY).and_then(|v| serde_json::from_slice(v).ok())))
    }

    /// Forgets the requests to job `id` (once it has ended).
    pub async fn clear_requests(&self, id: &str) -> Result<()> {
        check_job_id(id)?;
        self.io.remove_object(&request_object(id)).await
    }

    /// Stores a raw record (tests: fixtures of older or newer formats).
    pub async fn put_raw(&self, id: &str, volume_id: &str, raw: Vec<u8>) -> Result<()> {
        check_job_id(id)?;
        let expected = self.io.read_guarded(&job_object(id)).await?.map(|o| o.generation);
        self.io
            .write_guarded(&job_object(id), expected, vec![(RECORD_KEY.into(), raw)], vec![])
            .await?;
        let index = self.io.read_guarded(INDEX_OBJECT).await?;
        self.io
            .write_guarded(
                INDEX_OBJECT,
                index.map(|i| i.generation),
                vec![(id.to_owned(), volume_id.as_bytes().to_vec())],
                vec![],
            )
            .await?;
        Ok(())
    }

    /// Takes the job's lease for `duration` and keeps renewing it until the
    /// returned guard is dropped. If a renewal fails, `lost` is cancelled.
    /// An unknown job has no lease to take (and gets no object: a RADOS
    /// lock would create one).
    pub async fn lease(&self, id: &str, duration: Duration, lost: CancellationToken) -> Result<Lease> {
        check_job_id(id)?;
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        let oid = job_object(id);
        if self.io.read_guarded(&oid).await?.is_none() {
            return Err(job_not_found(id));
        }
        self.io.lease_acquire(&oid, LEASE_NAME, &cookie, duration, false).await.map_err(|e| match e.kind() {
            ErrorKind::Busy => e.message(format!(
                "job `{id}` is being driven by another process (its lease lasts up to {}s after that process stops); retry later",
                duration.as_secs()
            )),
            _ => e,
        })?;
        let stop = CancellationToken::new();
        let (io, oid2, cookie2, stop2) = (self.io.clone(), oid.clone(), cookie.clone(), stop.clone());
        let renewer = tokio::spawn(async move {
            let every = (duration / 3).max(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = io.lease_acquire(&oid2, LEASE_NAME, &cookie2, duration, true).await {
                    warn!(error = %e, "lost the job lease");
                    lost.cancel();
                    return;
                }
            }
        });
        Ok(Lease {
            io: self.io.clone(),
            oid,
            cookie,
            stop,
            renewer: Some(renewer),
        })
    }
}

impl JobStore {
    /// Takes job `id`'s lease even from a holder that is alive (a driver
    /// stuck on a lost cluster keeps renewing it): the holder is
    /// blocklisted on this cluster and its lock broken first. Returns the
    /// lease and the addresses fenced out.
    pub async fn take_over(
        &self,
        id: &str,
        duration: Duration,
        lost: CancellationToken,
    ) -> Result<(Lease, Vec<String>)> {
        check_job_id(id)?;
        let fenced = self.io.lease_break(&job_object(id), LEASE_NAME).await?;
        if !fenced.is_empty() {
            warn!(job = %id, holders = ?fenced, "took the job's lease from its holder (blocklisted)");
        }
        Ok((self.lease(id, duration, lost).await?, fenced))
    }
}

/// A held job lease; renewed in the background until released.
pub struct Lease {
    io: IoCtx,
    oid: String,
    cookie: String,
    stop: CancellationToken,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Stops renewing and releases the lease.
    pub async fn release(mut self) -> Result<()> {
        self.stop.cancel();
        if let Some(r) = self.renewer.take() {
            let _ = r.await;
        }
        self.io.lease_release(&self.oid, LEASE_NAME, &self.cookie).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not released explicitly: stop renewing; the lease expires on its own.
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_that_would_name_other_objects_are_refused() {
        for good in ["0123456789ab", "v1job-1a2b", "a_b"] {
            assert!(check_job_id(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        for bad in ["", "../../etc", "a/b", "a.b", "a b", "job\0", long.as_str()] {
            let e = check_job_id(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
