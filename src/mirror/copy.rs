//! The bulk copy of one image to another pool or cluster.
//!
//! Why it is shaped this way:
//! - It copies the source as of one point in time. A source that nobody has
//!   open and that has the exclusive-lock feature is held still by taking
//!   its exclusive lock for the copy (other clients can read it, not write
//!   it). Any other source is read through a temporary snapshot, so its
//!   users keep writing. The lock is the default where it applies because a
//!   snapshot costs two monitor commits (creating it allocates a snapshot id
//!   from the pool, removing it releases one): about 1-2 s per copy, which
//!   outweighs the copy itself for images of a few GiB.
//! - It enumerates allocated extents with `rbd_diff_iterate2` (object map
//!   when fast-diff is on), so an empty 1 TiB image costs nothing.
//! - The extents move in `transfer`: one loop owns all state (queue of chunks, in-flight operations, byte
//!   count, buffers): it selects the next event (a finished chunk, more
//!   extents, cancellation, the rate limit) and applies it. In-flight bytes
//!   never exceed the budget, so memory is bounded whatever the image size.
//! - The destination is created under a partial name and renamed only when
//!   complete; cancellation or failure removes it and the snapshot, so
//!   nothing half-made is left behind under the destination's name.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::ceph::{Cluster, CreateOptions, Features, Image, ImageInfo, IoCtx};
use crate::error::{Error, ErrorKind, Result};
use crate::spec::ImageSpec;

pub use super::partial::{create_partial, finish_partial, PARTIAL_META_KEY, PARTIAL_SUFFIX, SNAPSHOT_PREFIX};
use super::partial::{partial_name, reclaim_stale_partial};

/// Tuning of a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Memory for data in flight; bounds the copy's memory use. Each chunk
    /// in flight counts twice: librbd receives a read into its own buffer
    /// before copying it into ours (writes are zero-copy).
    pub in_flight_bytes: u64,
    /// Bytes per read; `None` means the source's object size (clamped to 1-16 MiB).
    pub chunk_size: Option<u64>,
    /// Granularity of zero detection; all-zero blocks are not written.
    pub zero_block: usize,
    /// Upper bound on bytes read per second; `None` for no limit.
    pub bandwidth_limit: Option<u64>,
    /// Always read through a temporary snapshot, even where the source's
    /// exclusive lock would do (so the source stays writable).
    pub always_snapshot: bool,
    /// Who moves the bulk copy's bytes: the OSDs where they can, or always
    /// the client (see [`CopyMode`]).
    pub copy_mode: CopyMode,
    /// A delta's changes covering at least this fraction of an object are
    /// applied by the OSDs copying the whole object (where the copy mode and
    /// both images allow it) instead of through this client; above 1: never.
    pub whole_object_from: f64,
    /// A new destination keeps its data objects in this pool (replicated,
    /// or erasure-coded with overwrites); `None`: in its own pool.
    pub data_pool: Option<String>,
}

/// See [`CopyOptions::whole_object_from`]: where copying the whole object
/// on the OSDs costs a delta round less time than moving the changes
/// (measured with the delta bench, `benches/delta.rs`).
pub const WHOLE_OBJECT_FROM: f64 = 0.625;

/// Who moves a bulk copy's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMode {
    /// The OSDs (server-side copy) where both images allow it (one
    /// cluster, one layout, a source without parent data), else the client.
    #[default]
    Auto,
    /// The OSDs, or fail (before anything is copied) saying why they cannot.
    Server,
    /// The client: read through librbd, written through librbd.
    Client,
}

impl CopyMode {
    /// The mode's name, as the CLI and the C ABI take it.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMode::Auto => "auto",
            CopyMode::Server => "server",
            CopyMode::Client => "client",
        }
    }
}

/// Who moved a copy's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMethod {
    /// Read and written by this client through librbd.
    #[default]
    Client,
    /// Copied by the OSDs, object by object (`copy_from`).
    ServerSide,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            in_flight_bytes: 128 << 20,
            chunk_size: None,
            zero_block: 64 << 10,
            bandwidth_limit: None,
            always_snapshot: false,
            copy_mode: CopyMode::Auto,
            whole_object_from: WHOLE_OBJECT_FROM,
            data_pool: None,
        }
    }
}

/// Where a copy stands.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Progress {
    /// Bytes in the source's allocated extents (what has to be read). For a
    /// replay (the changes since a snapshot) it grows while the changes are
    /// enumerated, alongside the copy, and is exact at the end.
    pub total_bytes: u64,
    /// Bytes of those read and handled so far.
    pub done_bytes: u64,
    /// Bytes written to the destination (the non-zero part).
    pub written_bytes: u64,
    /// Time since the copy began moving data.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// Every byte below this offset has been copied: a copy resumed after a
    /// crash may start here.
    pub watermark: u64,
    /// Of `done_bytes`, those copied by an earlier run that this one resumed.
    pub resumed_bytes: u64,
    /// Who moves the bytes.
    pub method: CopyMethod,
    /// Why the client moves them, when the copy mode let the OSDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_reason: Option<String>,
    /// Objects the OSDs copied whole: the bulk copy's, or a delta's objects
    /// changed enough to be copied whole rather than moved extent by extent.
    pub whole_objects: u64,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Progress {
    /// Average bytes per second so far (in this run).
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            (self.done_bytes - self.resumed_bytes) as f64 / s
        } else {
            0.0
        }
    }

    /// Estimated time left at the average rate so far.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(self.total_bytes.saturating_sub(self.done_bytes) as f64 / rate))
    }
}

/// What a finished copy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    /// The source image.
    pub source: String,
    /// The destination image.
    pub destination: String,
    /// Provisioned size of both.
    pub size: u64,
    /// Bytes read from the source's allocated extents.
    pub read_bytes: u64,
    /// Bytes written to the destination.
    pub written_bytes: u64,
    /// Seconds spent moving data.
    pub seconds: f64,
    /// Image-meta keys copied.
    pub metadata_keys: usize,
    /// How the source was held still: `exclusive_lock` or `snapshot`.
    pub source_hold: SourceHold,
    /// Who moved the bytes.
    pub method: CopyMethod,
    /// Why the client moved them, when the copy mode let the OSDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_reason: Option<String>,
}

/// How a copy keeps its source at one point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceHold {
    /// The copy owned the source's exclusive lock: nobody else could write.
    ExclusiveLock,
    /// The copy read a temporary snapshot; the source stayed writable.
    Snapshot,
}

/// Copies images. Configure, then [`Copier::run`].
pub struct Copier {
    pub(super) options: CopyOptions,
    pub(super) progress: Option<watch::Sender<Progress>>,
    /// When progress was last sent (see [`Copier::publish`]).
    pub(super) published_at: std::sync::Mutex<Option<Instant>>,
    pub(super) cancel: CancellationToken,
}

impl Copier {
    /// A copier with the given options.
    pub fn new(options: CopyOptions) -> Self {
        Copier {
            options,
            progress: None,
            published_at: std::sync::Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// Publishes progress to `tx` as the copy goes.
    pub fn progress(mut self, tx: watch::Sender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    /// Cancels the copy when `token` is cancelled: in-flight operations are
    /// drained, the partial destination and the snapshot removed, and
    /// [`ErrorKind::Cancelled`] returned.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Copies `src` (in `src_cluster`) to a new image `dst` (in `dst_cluster`).
    pub async fn run(
        &self,
        src_cluster: &Cluster,
        src: &ImageSpec,
        dst_cluster: &Cluster,
        dst: &ImageSpec,
    ) -> Result<CopyReport> {
        let span = info_span!("copy", source = %src, destination = %dst);
        self.run_inner(src_cluster, src, dst_cluster, dst)
            .instrument(span)
            .await
    }

    async fn run_inner(
        &self,
        src_cluster: &Cluster,
        src: &ImageSpec,
        dst_cluster: &Cluster,
        dst: &ImageSpec,
    ) -> Result<CopyReport> {
        if src_cluster.fsid() == dst_cluster.fsid() && src == dst {
            return Err(Error::new(ErrorKind::SameImage, "copy")
                .target(src.to_string())
                .message(format!("source and destination are the same image `{src}`")));
        }
        // Everything that can be refused is checked before anything is made.
        let src_io = src_cluster.ioctx(&src.pool, &src.namespace).await?;
        let src_head = src_io.open_image_read_only(&src.image, None).await?;
        debug!("source opened");
        // A read-only open registers no watch: any watcher is another client.
        let idle = src_head.watchers().await?.is_empty();
        let info = src_head.info().await?;
        let metadata = src_head.metadata_list().await?;
        let needed = src_head.allocated_bytes(true).await?;
        src_head.close().await;
        debug!("source inspected");
        let dst_io = dst_cluster.ioctx(&dst.pool, &dst.namespace).await?;
        let partial = partial_name(&dst.image);
        // An earlier copy that died renaming its partial.
        dst_io.mend_cut_short_rename(&partial, &dst.image).await?;
        if dst_io.image_exists(&dst.image).await? {
            return Err(Error::new(ErrorKind::DestinationExists, "copy")
                .target(dst.to_string())
                .message(format!("destination image `{dst}` already exists")));
        }
        if dst_io.image_exists(&partial).await? {
            reclaim_stale_partial(&dst_io, &partial, &src_io, src).await?;
        }
        // The data goes to the data pool, if there is one.
        let data_pool = match &self.options.data_pool {
            Some(pool) => {
                dst_cluster.check_data_pool(pool).await?;
                pool
            }
            None => &dst.pool,
        };
        self.check_space(dst_cluster, data_pool, needed).await?;
        debug!("destination checked");

        let src_rw = src_io.open_image(&src.image).await?;
        let hold = if self.options.always_snapshot || !info.features.contains(Features::EXCLUSIVE_LOCK) || !idle {
            SourceHold::Snapshot
        } else {
            match src_rw.lock_acquire_exclusive().await {
                Ok(()) => SourceHold::ExclusiveLock,
                Err(e) => {
                    debug!(error = %e, "the source's lock is not to be had; reading a snapshot instead");
                    SourceHold::Snapshot
                }
            }
        };
        let snap = match hold {
            SourceHold::ExclusiveLock => None,
            SourceHold::Snapshot => {
                let snap = format!("{SNAPSHOT_PREFIX}{}", uuid::Uuid::new_v4().simple());
                if let Err(e) = src_rw.snap_create(&snap).await {
                    src_rw.close().await;
                    return Err(e);
                }
                Some(snap)
            }
        };
        debug!(?hold, snapshot = ?snap, "source held still");
        let outcome = self
            .copy_at(
                &src_io,
                src,
                &src_rw,
                snap.as_deref(),
                &info,
                &metadata,
                &dst_io,
                &partial,
            )
            .await;
        let released = match &snap {
            Some(snap) => src_rw.snap_remove(snap).await,
            None => src_rw.lock_release().await,
        };
        src_rw.close().await;
        debug!("source let go");
        let mut report = match outcome {
            Ok(r) => r,
            Err(e) => {
                if let Err(rm) = dst_io.remove_image(&partial).await {
                    warn!(error = %rm, image = %partial, "could not remove the partial destination");
                }
                if let Err(se) = released {
                    warn!(error = %se, snapshot = ?snap, "could not let go of the source (snapshot or lock)");
                }
                return Err(e);
            }
        };
        // A lock that could not be released goes with the close; a snapshot stays.
        if snap.is_some() {
            released?;
        }
        dst_io.rename_image(&partial, &dst.image).await.map_err(|e| {
            e.message(format!(
                "the copy is complete as `{}` but could not be renamed to `{dst}`",
                dst_io.image_spec(&partial)
            ))
        })?;
        report.source = src.to_string();
        report.destination = dst.to_string();
        info!(
            bytes = report.read_bytes,
            written = report.written_bytes,
            seconds = report.seconds,
            "copy complete"
        );
        Ok(report)
    }

    /// Refuses a copy whose data cannot fit in `pool`, the destination's
    /// (data) pool (free space as the monitors see it, and the pool quota).
    async fn check_space(&self, dst_cluster: &Cluster, pool: &str, needed: u64) -> Result<()> {
        let usage = dst_cluster.pool_usage(pool).await?;
        let short = |what: &str, have: u64| {
            Error::new(ErrorKind::NoSpace, "copy").target(pool).message(format!(
                "pool `{pool}` {what} {have} bytes but the source holds {needed} bytes of data"
            ))
        };
        if usage.max_avail < needed {
            return Err(short("has room for", usage.max_avail));
        }
        if usage.quota_bytes > 0 && usage.stored.saturating_add(needed) > usage.quota_bytes {
            return Err(short(
                "has a quota leaving",
                usage.quota_bytes.saturating_sub(usage.stored),
            ));
        }
        Ok(())
    }

    /// Copies `src` as of `snap` (a snapshot of it), or as it is when
    /// `snap` is `None` (the caller holds its exclusive lock, through `head`).
    #[allow(clippy::too_many_arguments)]
    async fn copy_at(
        &self,
        src_io: &IoCtx,
        src: &ImageSpec,
        head: &Image,
        snap: Option<&str>,
        info: &ImageInfo,
        metadata: &[(String, String)],
        dst_io: &IoCtx,
        partial: &str,
    ) -> Result<CopyReport> {
        let src_snap = match snap {
            Some(snap) => Some(src_io.open_image_read_only(&src.image, Some(snap)).await?),
            None => None,
        };
        let reader = src_snap.as_ref().unwrap_or(head);
        let layout = CreateOptions::like(info).in_data_pool(self.options.data_pool.as_deref());
        let dst_img = match create_partial(dst_io, partial, info.size, &layout, src_io, src, snap.unwrap_or("")).await {
            Ok(img) => img,
            Err(e) => {
                if let Some(img) = src_snap {
                    img.close().await;
                }
                return Err(e);
            }
        };
        debug!("destination created");
        let result = async {
            let progress = self
                .transfer(reader, &dst_img, 0)
                .instrument(info_span!("transfer"))
                .await?;
            finish_partial(&dst_img, metadata).await?;
            Ok(CopyReport {
                source: String::new(),
                destination: String::new(),
                size: info.size,
                read_bytes: progress.done_bytes,
                written_bytes: progress.written_bytes,
                seconds: progress.elapsed.as_secs_f64(),
                metadata_keys: metadata.len(),
                source_hold: match snap {
                    Some(_) => SourceHold::Snapshot,
                    None => SourceHold::ExclusiveLock,
                },
                method: progress.method,
                client_reason: progress.client_reason,
            })
        }
        .await;
        dst_img.close().await;
        if let Some(img) = src_snap {
            img.close().await;
        }
        debug!("images closed");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_the_average_rate() {
        let p = Progress {
            total_bytes: 300,
            done_bytes: 100,
            written_bytes: 50,
            elapsed: Duration::from_secs(1),
            ..Progress::default()
        };
        assert_eq!(p.rate(), 100.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(2)));
        assert_eq!(Progress::default().eta(), None);
    }
}
