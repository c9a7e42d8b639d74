//! Moving extents from one image to another: the bulk copy of a snapshot
//! (resumable from a watermark) and the replay of a delta between two
//! snapshots. One loop owns all state (queue of chunks, in-flight
//! operations, byte count, buffers): it selects the next event (a finished
//! chunk, more extents, cancellation, the rate limit) and applies it.
//! In-flight bytes never exceed the budget, so memory is bounded whatever
//! the image size.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tracing::debug;

use super::copy::{Copier, CopyMode, Progress};
use super::pace::Pacer;
use super::zero::{exact_overwrite_plan, nonzero_runs, overwrite_plan, Overwrite};
use crate::ceph::{DataObjects, Image, ObjectCopy};
use crate::error::{Error, ErrorKind, Result};

/// Memory a chunk in flight holds, in multiples of its length: our buffer
/// and librbd's receive buffer.
const BUFFERS_PER_CHUNK: u64 = 2;

impl Copier {
    /// Copies the allocated extents of `src` (normally opened at a
    /// snapshot) at and above `resume_from` into `dst`, an image of the same
    /// size that reads as zeros wherever nothing was copied yet. Progress
    /// carries a watermark below which everything is copied; a copy that
    /// died can be resumed from its last recorded watermark.
    ///
    /// The OSDs move the bytes where the copy mode and both images allow it
    /// (see [`ObjectCopy`]); the progress says which moved them and why.
    pub async fn transfer(&self, src: &Image, dst: &Image, resume_from: u64) -> Result<Progress> {
        let client_reason = match self.options.copy_mode {
            CopyMode::Client => None,
            mode => match src.object_copy_to(dst).await? {
                Ok(objects) => return self.copy_objects(src, objects, resume_from).await,
                Err(why) if mode == CopyMode::Server => {
                    return Err(Error::new(ErrorKind::ServerCopyUnavailable, "copy")
                        .target(dst.spec())
                        .message(format!(
                            "the OSDs cannot copy `{}` to `{}`: {why}",
                            src.spec(),
                            dst.spec()
                        )))
                }
                Err(why) => Some(why),
            },
        };
        debug!(reason = ?client_reason, "the client moves the bytes");
        self.move_extents(src, dst, None, resume_from, client_reason).await
    }

    /// Applies to `dst` what changed in `src` since its snapshot `since`
    /// (`src` being opened at a later snapshot): changed data is written,
    /// and ranges that became zero or were discarded are zeroed with
    /// write-zeroes, which deallocates, so the destination stays thin. `dst`
    /// must hold `src`'s content as of `since`; afterwards it holds `src`'s.
    pub async fn replay(&self, src: &Image, dst: &Image, since: &str) -> Result<Progress> {
        self.move_extents(src, dst, Some(since), 0, None).await
    }

    async fn move_extents(
        &self,
        src: &Image,
        dst: &Image,
        since: Option<&str>,
        resume_from: u64,
        client_reason: Option<String>,
    ) -> Result<Progress> {
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
                (Some(src_objects), Some(dst_objects)) if dst_objects.writable() => {
                    // Objects changed enough are copied whole by the OSDs.
                    let whole = match self.options.copy_mode {
                        CopyMode::Client => None,
                        _ if self.options.whole_object_from > 1.0 => None,
                        _ => src.object_overwrite_to(dst).await?.ok(),
                    };
                    Some(Arc::new(Direct {
                        src: src_objects,
                        dst: dst_objects,
                        whole,
                        whole_from: (self.options.whole_object_from * info.object_size as f64) as u64,
                    }))
                }
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
            client_reason,
            ..Progress::default()
        };
        self.publish_now(&progress);
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
                        progress.whole_objects += u64::from(chunk.whole);
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
        self.conclude(progress, failure, started, info.size, dst.spec())
    }

    /// Ends a copy's loop: its first failure, or cancellation, or the
    /// progress of a complete copy (every byte below `size` copied),
    /// published. `destination` names it in the cancellation error.
    pub(super) fn conclude(
        &self,
        mut progress: Progress,
        failure: Option<Error>,
        started: Instant,
        size: u64,
        destination: String,
    ) -> Result<Progress> {
        if let Some(e) = failure {
            return Err(e);
        }
        if self.cancel.is_cancelled() {
            return Err(Error::new(ErrorKind::Cancelled, "copy")
                .target(destination)
                .message("copy cancelled; the partial destination is removed and the source is untouched"));
        }
        progress.elapsed = started.elapsed();
        progress.watermark = size;
        progress.done_bytes = progress.total_bytes;
        self.publish_now(&progress);
        Ok(progress)
    }

    /// Sends `progress` to the subscriber, at most every
    /// [`PUBLISH_EVERY`]: each send wakes whoever watches, and a copy
    /// makes progress an object or a chunk at a time.
    pub(super) fn publish(&self, progress: &Progress) {
        let Some(tx) = &self.progress else { return };
        let now = Instant::now();
        let mut at = self.published_at.lock().unwrap_or_else(|p| p.into_inner());
        if at.is_some_and(|t| now.duration_since(t) < PUBLISH_EVERY) {
            return;
        }
        *at = Some(now);
        tx.send_replace(progress.clone());
    }

    /// Sends `progress` now (a copy's first and last).
    pub(super) fn publish_now(&self, progress: &Progress) {
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.publish(progress);
    }
}

/// How often a copy's progress is sent at most.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

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
    /// The OSDs copied the chunk's object whole.
    whole: bool,
}

/// The source's (at its snapshot, or its fenced head) and the destination's
/// data objects, for a delta applied an object at a time.
struct Direct {
    src: DataObjects,
    dst: DataObjects,
    /// Server-side copies of whole objects onto existing ones, where allowed.
    whole: Option<ObjectCopy>,
    /// Changed bytes in an object from which it is copied whole.
    whole_from: u64,
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
        return Ok(ChunkDone {
            op,
            buffer,
            written: 0,
            whole: false,
        });
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
    Ok(ChunkDone {
        op,
        buffer,
        written,
        whole: false,
    })
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
    let changed: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let object_size = direct.src.object_size();
    let object_no = ranges.first().map_or(0, |r| r.start / object_size);
    let one_object = ranges.iter().all(|r| r.end <= (object_no + 1) * object_size);
    let whole = direct
        .whole
        .as_ref()
        .filter(|_| one_object && changed >= direct.whole_from.max(1));
    if let Some(whole) = whole {
        // One server-side copy of the object instead of moving its changes
        // through this client; refused (nothing written) where the
        // destination has no such object yet.
        if whole.overwrite(object_no).await? {
            return Ok(ChunkDone {
                op,
                buffer,
                written: changed,
                whole: true,
            });
        }
    }
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
    Ok(ChunkDone {
        op,
        buffer,
        written,
        whole: false,
    })
}

/// Bytes a full copy moves in all, and below `split`: the allocated
/// extents, whole objects at a time (as the copy enumerates them).
pub(super) async fn extent_bytes(img: &Image, size: u64, split: u64) -> Result<(u64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
