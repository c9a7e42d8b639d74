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
//! - One loop owns all state (queue of chunks, in-flight operations, byte
//!   count, buffers): it selects the next event (a finished chunk, more
//!   extents, cancellation, the rate limit) and applies it. In-flight bytes
//!   never exceed the budget, so memory is bounded whatever the image size.
//! - The destination is created under a partial name and renamed only when
//!   complete; cancellation or failure removes it and the snapshot, so
//!   nothing half-made is left behind under the destination's name.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::zero::{exact_overwrite_plan, nonzero_runs, overwrite_plan, Overwrite};
use crate::ceph::{Cluster, CreateOptions, DataObjects, Features, Image, ImageInfo, IoCtx};
use crate::error::{Error, ErrorKind, Result};
use crate::spec::ImageSpec;

/// Suffix of the name a copy writes to until it is complete.
pub const PARTIAL_SUFFIX: &str = ".livemig-partial";
/// Prefix of the temporary source snapshots copies read from.
pub const SNAPSHOT_PREFIX: &str = "livemig-copy-";
/// Image-meta key marking a partial destination; its value is
/// `<source cluster fsid> <source spec>@<snapshot>`, so that whoever finds a
/// partial left by a copy that died can also remove that copy's snapshot.
pub const PARTIAL_META_KEY: &str = "livemig.partial-of";

/// Memory a chunk in flight holds, in multiples of its length: our buffer
/// and librbd's receive buffer.
const BUFFERS_PER_CHUNK: u64 = 2;

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
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            in_flight_bytes: 128 << 20,
            chunk_size: None,
            zero_block: 64 << 10,
            bandwidth_limit: None,
            always_snapshot: false,
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
    options: CopyOptions,
    progress: Option<watch::Sender<Progress>>,
    cancel: CancellationToken,
}

impl Copier {
    /// A copier with the given options.
    pub fn new(options: CopyOptions) -> Self {
        Copier {
            options,
            progress: None,
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
        let partial = format!("{}{PARTIAL_SUFFIX}", dst.image);
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
        self.check_space(dst_cluster, dst, needed).await?;
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

    /// Refuses a copy whose data cannot fit in the destination pool (free
    /// space as the monitors see it, and the pool quota).
    async fn check_space(&self, dst_cluster: &Cluster, dst: &ImageSpec, needed: u64) -> Result<()> {
        let usage = dst_cluster.pool_usage(&dst.pool).await?;
        let short = |what: &str, have: u64| {
            Error::new(ErrorKind::NoSpace, "copy")
                .target(dst.pool_spec())
                .message(format!(
                    "pool `{}` {what} {have} bytes but the source holds {needed} bytes of data",
                    dst.pool
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
        let dst_img = match create_partial(dst_io, partial, info, src_io, src, snap.unwrap_or("")).await {
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

    /// Copies the allocated extents of `src` (normally opened at a
    /// snapshot) at and above `resume_from` into `dst`, an image of the same
    /// size that reads as zeros wherever nothing was copied yet. Progress
    /// carries a watermark below which everything is copied; a copy that
    /// died can be resumed from its last recorded watermark.
    pub async fn transfer(&self, src: &Image, dst: &Image, resume_from: u64) -> Result<Progress> {
        self.move_extents(src, dst, None, resume_from).await
    }

    /// Applies to `dst` what changed in `src` since its snapshot `since`
    /// (`src` being opened at a later snapshot): changed data is written,
    /// and ranges that became zero or were discarded are zeroed with
    /// write-zeroes, which deallocates, so the destination stays thin. `dst`
    /// must hold `src`'s content as of `since`; afterwards it holds `src`'s.
    pub async fn replay(&self, src: &Image, dst: &Image, since: &str) -> Result<Progress> {
        self.move_extents(src, dst, Some(since), 0).await
    }

    async fn move_extents(&self, src: &Image, dst: &Image, since: Option<&str>, resume_from: u64) -> Result<Progress> {
        debug_assert!(since.is_none() || resume_from == 0, "a delta is applied whole");
        // A full copy lands on a fresh image (zeros need not be written) and
        // may use whole-object extents; a delta overwrites, so it needs the
        // exact changed ranges and must zero what became zero.
        let overwrite = since.is_some();
        let whole_object = !overwrite;
        let info = src.info().await?;
        // Where both layouts allow (see `DataObjects`), a delta's changes to
        // one object are read in one operation and written in one.
        let direct = match overwrite {
            true => match (src.data_objects().await?, dst.data_objects().await?) {
                (Some(src), Some(dst)) if dst.writable() => Some(Arc::new(Direct { src, dst })),
                _ => None,
            },
            false => None,
        };
        let object_size = info.object_size.max(1);
        let chunk = match self.options.chunk_size {
            Some(c) => c.clamp(4096, 64 << 20),
            None => info.object_size.clamp(1 << 20, 16 << 20),
        };
        let budget = self.options.in_flight_bytes.max(BUFFERS_PER_CHUNK * chunk);
        let zero_block = self.options.zero_block.max(512);
        // A full copy counts its extents first (with fast-diff that is the
        // object map alone) so that progress has a total from the start. A
        // delta is counted as it streams: enumerating it asks the OSDs about
        // every object, and a second pass would add that to the time the
        // writer keeps writing (a replay round) or is held (the cutover).
        let (total_bytes, already) = if overwrite {
            (0, 0)
        } else {
            extent_bytes(src, info.size, resume_from).await?
        };
        let mut progress = Progress {
            total_bytes,
            done_bytes: already,
            resumed_bytes: already,
            watermark: resume_from,
            ..Progress::default()
        };
        self.publish(&progress);
        debug!(chunk, budget, total_bytes, resume_from, ?since, "transfer starts");

        let started = Instant::now();
        // librbd enumerates whole-object extents one stripe period (object
        // size x stripe count) at a time (16.2 with fast-diff merges a period
        // into one in-order extent). Not to depend on the order within a
        // period, the diff starts at the period holding the resume point
        // (extents are clipped below) and the frontier only advances to the
        // start of the period being read: a resume re-copies at most one period.
        let period = info.object_size.max(1) * info.stripe_count.max(1);
        let diff_start = resume_from.min(info.size) - resume_from.min(info.size) % period;
        let mut extents = src.diff(since, diff_start, info.size - diff_start, whole_object);
        let mut extents_done = false;
        // Extents not yet pulled from the diff all lie at or above this.
        let mut frontier = resume_from;
        let mut queue: VecDeque<Piece> = VecDeque::new();
        let mut tasks = FuturesUnordered::new();
        let mut in_flight_offsets = BTreeSet::new();
        let mut free_buffers: Vec<Vec<u8>> = Vec::new();
        let mut in_flight = 0u64;
        let mut pacer = self
            .options
            .bandwidth_limit
            .filter(|l| *l > 0)
            .map(|l| Pacer::new(l, started));
        let mut failure: Option<Error> = None;
        loop {
            let stopping = failure.is_some() || self.cancel.is_cancelled();
            let mut rate_wait = None;
            // Issue chunks while the byte budget and the rate limit allow.
            // A delta's last piece may still grow while the diff streams.
            let still_growing = usize::from(overwrite && !extents_done);
            while let Some(piece) = queue.front().filter(|_| !stopping && queue.len() > still_growing) {
                let (offset, len, fill) = (piece.offset, piece.len, piece.fill);
                // Zeroing holds no buffer; it is bounded by the operation
                // count. A piece read directly holds only its changes.
                let held = match &direct {
                    Some(_) => piece.changed.iter().map(|c| c.len() as u64).sum(),
                    None => len,
                };
                let cost = if fill == Fill::Data {
                    BUFFERS_PER_CHUNK * held
                } else {
                    0
                };
                if (in_flight > 0 && in_flight + cost > budget) || tasks.len() >= MAX_OPS {
                    break;
                }
                if let Some(pacer) = &mut pacer {
                    let now = Instant::now();
                    if now < pacer.next_at {
                        rate_wait = Some(pacer.next_at);
                        break;
                    }
                    pacer.take(len, now);
                }
                let piece = queue.pop_front().expect("looked at above");
                in_flight_offsets.insert(offset);
                in_flight += cost;
                let buffer = if fill == Fill::Data {
                    free_buffers.pop().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let op = ChunkOp {
                    piece,
                    overwrite,
                    zero_block,
                    cost,
                };
                tasks.push(copy_chunk(src.clone(), dst.clone(), direct.clone(), op, buffer));
            }
            if tasks.is_empty() && (stopping || (extents_done && queue.is_empty())) {
                break;
            }
            let want_extents = !stopping && !extents_done && queue.len() < 256;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if !stopping => {}
                Some(done) = tasks.next(), if !tasks.is_empty() => match done {
                    Ok(mut chunk) => {
                        in_flight_offsets.remove(&chunk.op.piece.offset);
                        let len = chunk.op.piece.len;
                        in_flight -= chunk.op.cost;
                        if chunk.op.piece.fill == Fill::Data {
                            free_buffers.push(std::mem::take(&mut chunk.buffer));
                        }
                        // Merged gaps are moved but were not counted as changed.
                        progress.done_bytes = (progress.done_bytes + len).min(progress.total_bytes);
                        progress.written_bytes += chunk.written;
                        progress.elapsed = started.elapsed();
                        progress.watermark = [in_flight_offsets.first().copied(), queue.iter().map(|q| q.offset).min()]
                            .into_iter()
                            .flatten()
                            .fold(frontier, u64::min);
                        self.publish(&progress);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                },
                next = extents.next(), if want_extents => match next {
                    None => {
                        extents_done = true;
                        frontier = info.size;
                        debug!(total_bytes = progress.total_bytes, ms = started.elapsed().as_millis() as u64, "extents enumerated");
                    }
                    Some(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Some(Ok(e)) => {
                        // Whole-object extents may begin before the resume point.
                        let start = e.offset.max(resume_from);
                        let end = e.offset + e.len;
                        if overwrite {
                            progress.total_bytes += e.len;
                        }
                        let fill = match (e.exists, overwrite) {
                            (true, _) => Some(Fill::Data),
                            (false, true) => Some(Fill::Zero),
                            (false, false) => None,
                        };
                        // A delta of many small writes is bound by the
                        // operation count: nearby changed extents are read
                        // as one (see `overwrite_plan` for what is written).
                        let back = queue.back_mut().filter(|p| {
                            let near = match direct {
                                // One operation per object, whatever the gaps.
                                Some(_) => p.offset / object_size == (end - 1) / object_size,
                                None => start - (p.offset + p.len) <= MERGE_GAP && end - p.offset <= chunk,
                            };
                            overwrite && p.fill == Fill::Data && start >= p.offset + p.len && near
                        });
                        match (fill.filter(|_| end > start), back) {
                            (Some(Fill::Data), Some(back)) => {
                                back.changed.push((start - back.offset) as usize..(end - back.offset) as usize);
                                back.len = end - back.offset;
                            }
                            (Some(fill), _) => split_into_chunks(start, end - start, chunk, fill, overwrite, &mut queue),
                            (None, _) => {}
                        }
                        frontier = frontier.max(e.offset - e.offset % period).max(resume_from);
                    }
                },
                _ = tokio::time::sleep_until(rate_wait.unwrap_or_else(Instant::now).into()), if rate_wait.is_some() => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if self.cancel.is_cancelled() {
            return Err(Error::new(ErrorKind::Cancelled, "copy")
                .target(dst.spec())
                .message("copy cancelled; the partial destination is removed and the source is untouched"));
        }
        progress.elapsed = started.elapsed();
        progress.watermark = info.size;
        progress.done_bytes = progress.total_bytes;
        self.publish(&progress);
        Ok(progress)
    }

    fn publish(&self, progress: &Progress) {
        if let Some(tx) = &self.progress {
            tx.send_replace(progress.clone());
        }
    }
}

/// Paces reads to a bandwidth limit. Time the copy could not use (a stall
/// on a lock, a slow OSD) is not saved up: at most `PACER_SLACK` of it is
/// made up afterwards, so the limit holds over any window an operator
/// would look at, not only on average since the start.
struct Pacer {
    bytes_per_sec: u64,
    /// When the next chunk may be issued.
    next_at: Instant,
}

/// Lateness the pacer forgives (scheduling delays), and so the largest burst.
const PACER_SLACK: Duration = Duration::from_millis(100);

impl Pacer {
    fn new(bytes_per_sec: u64, start: Instant) -> Self {
        Pacer {
            bytes_per_sec,
            next_at: start,
        }
    }

    /// Accounts for `len` bytes issued at `now` (not before `next_at`).
    fn take(&mut self, len: u64, now: Instant) {
        let base = self.next_at.max(now.checked_sub(PACER_SLACK).unwrap_or(now));
        self.next_at = base + Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
    }
}

/// Changed extents of a delta this close are read as one operation: an
/// operation costs about as much as moving this many bytes.
const MERGE_GAP: u64 = 128 << 10;

/// Most operations in flight at once (zeroing holds no buffer).
const MAX_OPS: usize = 256;

/// What a chunk puts on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// The source's data there.
    Data,
    /// Zeros (the range was discarded on the source).
    Zero,
}

/// A range of the source waiting to be moved.
#[derive(Debug)]
struct Piece {
    offset: u64,
    len: u64,
    fill: Fill,
    /// For a delta, the changed ranges in it (relative to `offset`, in
    /// order): nearby changes share a piece. Empty for a full copy.
    changed: Vec<Range<usize>>,
}

/// One chunk to move: a piece, and how to write it.
#[derive(Debug)]
struct ChunkOp {
    piece: Piece,
    /// The destination may hold old data: zero what is zero in the source.
    overwrite: bool,
    zero_block: usize,
    /// What it counts against the in-flight budget.
    cost: u64,
}

/// A chunk that has been moved.
struct ChunkDone {
    op: ChunkOp,
    buffer: Vec<u8>,
    written: u64,
}

/// The source's (at its snapshot, or its fenced head) and the destination's
/// data objects, for a delta applied an object at a time.
struct Direct {
    src: DataObjects,
    dst: DataObjects,
}

/// Moves one chunk: reads it from the source and writes its non-zero runs
/// to the destination; when overwriting, what changed is made equal (see
/// [`overwrite_plan`]; with `direct`, an object's changes in one read and
/// one write). A `Fill::Zero` chunk is only zeroed.
async fn copy_chunk(
    src: Image,
    dst: Image,
    direct: Option<Arc<Direct>>,
    op: ChunkOp,
    buffer: Vec<u8>,
) -> Result<ChunkDone> {
    let (offset, len) = (op.piece.offset, op.piece.len as usize);
    if op.piece.fill == Fill::Zero {
        dst.write_zeroes(offset, len as u64).await?;
        return Ok(ChunkDone { op, buffer, written: 0 });
    }
    if let Some(direct) = direct {
        return apply_changes_by_object(&src, &dst, &direct, op, buffer).await;
    }
    let mut buffer = src.read(offset, len, buffer).await?;
    let runs = nonzero_runs(&buffer[..len], op.zero_block);
    let plan = if op.overwrite {
        overwrite_plan(&runs, &op.piece.changed)
    } else {
        runs.into_iter().map(Overwrite::Data).collect()
    };
    let mut written = 0u64;
    for w in plan {
        match w {
            Overwrite::Data(run) => {
                written += run.len() as u64;
                buffer = dst.write(offset + run.start as u64, buffer, run).await?;
            }
            Overwrite::Zeros(r) => dst.write_zeroes(offset + r.start as u64, r.len() as u64).await?,
        }
    }
    Ok(ChunkDone { op, buffer, written })
}

/// Applies a delta piece (all in one object) an object at a time: its
/// changed ranges are read from the source (at its snapshot or head) in one
/// operation, packed into `buffer`, and written to the destination in one.
/// Where the object is missing on one side (not on the source there, or not
/// yet on the destination), librbd reads or writes the same ranges instead,
/// so the chunk holds only its changes either way, as the budget counted.
async fn apply_changes_by_object(
    src: &Image,
    dst: &Image,
    direct: &Direct,
    op: ChunkOp,
    buffer: Vec<u8>,
) -> Result<ChunkDone> {
    let offset = op.piece.offset;
    let ranges: Vec<Range<u64>> = op
        .piece
        .changed
        .iter()
        .map(|c| offset + c.start as u64..offset + c.end as u64)
        .collect();
    let (found, mut buffer) = direct.src.read_packed(&ranges, buffer).await?;
    if !found {
        buffer.resize(ranges.iter().map(|r| (r.end - r.start) as usize).sum(), 0);
        let mut pos = 0;
        for r in &ranges {
            let len = (r.end - r.start) as usize;
            let part = src.read(r.start, len, Vec::new()).await?;
            buffer[pos..pos + len].copy_from_slice(&part);
            pos += len;
        }
    }
    // What to write: (image offset, range of `buffer`) and image ranges to zero.
    let (mut writes, mut zeros) = (Vec::new(), Vec::new());
    let mut pos = 0;
    for r in &ranges {
        let len = (r.end - r.start) as usize;
        let whole = 0..len;
        let runs = nonzero_runs(&buffer[pos..pos + len], op.zero_block);
        for w in exact_overwrite_plan(&runs, std::slice::from_ref(&whole)) {
            match w {
                Overwrite::Data(d) => writes.push((r.start + d.start as u64, pos + d.start..pos + d.end)),
                Overwrite::Zeros(z) => zeros.push(r.start + z.start as u64..r.start + z.end as u64),
            }
        }
        pos += len;
    }
    let written = writes.iter().map(|w| w.1.len() as u64).sum();
    let slices: Vec<(u64, &[u8])> = writes.iter().map(|(o, b)| (*o, &buffer[b.clone()])).collect();
    if !direct.dst.write_packed(&slices, &zeros).await? {
        // The destination object does not exist yet: librbd creates it.
        drop(slices);
        for (o, b) in writes {
            buffer = dst.write(o, buffer, b).await?;
        }
        for z in zeros {
            dst.write_zeroes(z.start, z.end - z.start).await?;
        }
    }
    Ok(ChunkDone { op, buffer, written })
}

/// Bytes a full copy moves in all, and below `split`: the allocated
/// extents, whole objects at a time (as the copy enumerates them).
async fn extent_bytes(img: &Image, size: u64, split: u64) -> Result<(u64, u64)> {
    let mut diff = img.diff(None, 0, size, true);
    let (mut total, mut below) = (0, 0);
    while let Some(e) = diff.next().await {
        let e = e?;
        if e.exists {
            total += e.len;
            below += split.min(e.offset + e.len).saturating_sub(e.offset);
        }
    }
    Ok((total, below))
}

/// Splits `[offset, offset+len)` at multiples of `chunk` and queues the pieces.
fn split_into_chunks(offset: u64, len: u64, chunk: u64, fill: Fill, overwrite: bool, queue: &mut VecDeque<Piece>) {
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let next = ((pos / chunk) + 1) * chunk;
        let piece_end = next.min(end);
        let len = piece_end - pos;
        queue.push_back(Piece {
            offset: pos,
            len,
            fill,
            changed: if overwrite {
                std::iter::once(0..len as usize).collect()
            } else {
                Vec::new()
            },
        });
        pos = piece_end;
    }
}

/// Creates the partial destination `partial` with `info`'s layout, marks it
/// as the copy of `src`@`snap` ([`PARTIAL_META_KEY`]: whoever finds it after
/// a crash can reclaim it and that snapshot), and returns it open.
pub async fn create_partial(
    dst_io: &IoCtx,
    partial: &str,
    info: &ImageInfo,
    src_io: &IoCtx,
    src: &ImageSpec,
    snap: &str,
) -> Result<Image> {
    dst_io
        .create_image(partial, info.size, &CreateOptions::like(info))
        .await?;
    let img = dst_io.open_image(partial).await?;
    let marker = format!("{} {src}@{snap}", src_io.cluster().fsid());
    if let Err(e) = img.metadata_set(PARTIAL_META_KEY, &marker).await {
        // Closed before returning, so that the caller can remove it.
        img.close().await;
        return Err(e);
    }
    Ok(img)
}

/// Completes a fully copied partial destination: the source's image-meta,
/// the partial marker removed, everything flushed.
pub async fn finish_partial(dst: &Image, metadata: &[(String, String)]) -> Result<()> {
    for (k, v) in metadata {
        dst.metadata_set(k, v).await?;
    }
    dst.metadata_remove(PARTIAL_META_KEY).await?;
    dst.flush().await
}

/// Removes a partial destination left by a copy that died (and, when it
/// was a copy of the same source, that copy's snapshot), or refuses if
/// another copy is writing it right now.
async fn reclaim_stale_partial(io: &IoCtx, partial: &str, src_io: &IoCtx, src: &ImageSpec) -> Result<()> {
    let img = io.open_image_read_only(partial, None).await?;
    let watchers = img.watchers().await?;
    let marker = img
        .metadata_list()
        .await?
        .into_iter()
        .find(|(k, _)| k == PARTIAL_META_KEY)
        .map(|(_, v)| v);
    img.close().await;
    // A read-only open registers no watch, so any watcher is another client.
    if !watchers.is_empty() {
        return Err(Error::new(ErrorKind::DestinationInUse, "copy")
            .target(io.image_spec(partial))
            .message(format!(
                "another copy is writing `{}` right now",
                io.image_spec(partial)
            )));
    }
    let Some(marker) = marker else {
        return Err(Error::new(ErrorKind::DestinationExists, "copy")
            .target(io.image_spec(partial))
            .message(format!(
                "`{}` exists but was not made by livemig; remove or rename it",
                io.image_spec(partial)
            )));
    };
    warn!(image = %io.image_spec(partial), "removing the partial destination of an earlier copy that did not finish");
    io.remove_image(partial).await?;
    let ours = format!("{} {src}@", src_io.cluster().fsid());
    if let Some(snap) = marker.strip_prefix(&ours).filter(|s| s.starts_with(SNAPSHOT_PREFIX)) {
        let img = src_io.open_image(&src.image).await?;
        // Also one a removal that was cut short left in the trash namespace.
        let removed = img.snap_remove_given(snap).await;
        img.close().await;
        if removed? > 0 {
            warn!(snapshot = %snap, "removed the snapshot of the copy that did not finish");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issues 1 MiB chunks as soon as the pacer allows, from `from` for
    /// `span`; returns the issue times.
    fn issue_times(pacer: &mut Pacer, from: Instant, span: Duration) -> Vec<Instant> {
        let mut times = Vec::new();
        loop {
            let now = from.max(pacer.next_at);
            if now >= from + span {
                break;
            }
            pacer.take(1 << 20, now);
            times.push(now);
        }
        times
    }

    #[test]
    fn the_pacer_holds_the_rate_and_does_not_make_up_a_stall() {
        let start = Instant::now();
        let mut pacer = Pacer::new(4 << 20, start);
        // Steady: 4 chunks a second, evenly spaced.
        let steady = issue_times(&mut pacer, start, Duration::from_secs(2));
        assert_eq!(steady.len(), 8);
        assert!(steady.windows(2).all(|w| w[1] - w[0] == Duration::from_millis(250)));
        // A 7 s stall, then: no burst beyond the slack's worth.
        let resumed = start + Duration::from_secs(9);
        let after = issue_times(&mut pacer, resumed, Duration::from_secs(1));
        let in_first_second = after.iter().filter(|t| **t < resumed + Duration::from_secs(1)).count();
        assert!(
            in_first_second <= 5,
            "{in_first_second} MiB in the second after a stall at 4 MiB/s"
        );
        assert!(in_first_second >= 4);
        // Lateness within the slack is forgiven: the average rate holds.
        let mut pacer = Pacer::new(4 << 20, start);
        let mut now = start;
        for _ in 0..40 {
            now = now.max(pacer.next_at) + Duration::from_millis(20);
            pacer.take(1 << 20, now);
        }
        assert!(now - start < Duration::from_millis(10_000 + 300), "{:?}", now - start);
    }

    #[test]
    fn chunks_follow_the_grid_and_cover_the_extent() {
        let mut q = VecDeque::new();
        split_into_chunks(3, 10, 4, Fill::Data, false, &mut q);
        assert_eq!(
            q.iter().map(|p| (p.offset, p.len)).collect::<Vec<_>>(),
            vec![(3, 1), (4, 4), (8, 4), (12, 1)]
        );
        assert!(q.iter().all(|p| p.changed.is_empty()));
        q.clear();
        split_into_chunks(8, 8, 4, Fill::Data, true, &mut q);
        assert_eq!(
            q.iter().map(|p| (p.offset, p.len)).collect::<Vec<_>>(),
            vec![(8, 4), (12, 4)]
        );
        // A delta's piece is changed throughout.
        assert!(q.iter().all(|p| p.changed.len() == 1 && p.changed[0] == (0..4)));
        q.clear();
        split_into_chunks(5, 0, 4, Fill::Data, true, &mut q);
        assert!(q.is_empty());
    }

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
