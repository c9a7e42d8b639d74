//! The bulk copy with the OSDs moving the bytes: each allocated data
//! object of the source is copied onto the destination's object of the
//! same number (see [`ObjectCopy`] for when that is exact). For those the
//! client only enumerates objects and keeps count, so they cost it almost
//! no CPU and no buffers. An object whose samples say it is mostly zeros
//! is read here instead and only its non-zero blocks are written (an
//! all-zero one not at all): copied whole, its zeros would be moved and
//! stored.
//!
//! Like the client copy, one loop owns the state (objects queued, objects
//! in flight, the watermark) and selects the next event; it pages through
//! the source's allocated extents (the object map with fast-diff), honours
//! the bandwidth limit (an object's size per object) and resumes from a
//! watermark: the start of the lowest object set not yet complete.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tracing::debug;

use tokio::sync::Semaphore;

use super::copy::{Copier, CopyMethod, Progress};
use super::pace::Pacer;
use super::transfer::extent_bytes;
use super::zero::nonzero_runs;
use crate::ceph::{Image, ObjectCopied, ObjectCopy};
use crate::error::{Error, Result};

/// Object copies in flight at once: each costs the client nothing but a
/// request; more keep the OSDs busy, fewer leave them idle between objects.
const OBJECTS_IN_FLIGHT: usize = 32;

impl Copier {
    /// Copies the allocated objects of `src` holding bytes at or above
    /// `resume_from` through `objects` (made from `src` and a destination
    /// that reads as zeros wherever nothing was copied yet).
    pub(super) async fn copy_objects(&self, src: &Image, objects: ObjectCopy, resume_from: u64) -> Result<Progress> {
        let objects = Arc::new(objects);
        let outcome = self.copy_each_object(src, &objects, resume_from).await;
        // Every copy has ended (the tasks holding the other references are
        // gone): the destination's lock goes, so that the next writer loads
        // the object map as the copy left it.
        let objects = Arc::into_inner(objects).expect("every object copy has ended");
        let finished = objects.finish().await;
        let progress = outcome?;
        finished?;
        Ok(progress)
    }

    async fn copy_each_object(&self, src: &Image, objects: &Arc<ObjectCopy>, resume_from: u64) -> Result<Progress> {
        let layout = objects.layout();
        let size = src.info().await?.size;
        let (total_bytes, already) = extent_bytes(src, size, resume_from).await?;
        let mut progress = Progress {
            total_bytes,
            done_bytes: already,
            resumed_bytes: already,
            watermark: resume_from,
            method: CopyMethod::ServerSide,
            ..Progress::default()
        };
        self.publish_now(&progress);
        debug!(?objects, total_bytes, resume_from, "server-side copy starts");

        let started = Instant::now();
        let period = layout.period();
        let diff_start = resume_from.min(size) - resume_from.min(size) % period;
        let mut extents = src.diff(None, diff_start, size - diff_start, true);
        let mut extents_done = false;
        // Extents not yet pulled from the diff all lie at or above this.
        let mut frontier = resume_from;
        let mut queue: VecDeque<u64> = VecDeque::new();
        // Objects queued since the frontier's object set (an object's
        // extents can come in several pieces).
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        let mut in_flight: BTreeSet<u64> = BTreeSet::new();
        // Copied, not yet marked in the destination's object map: marked
        // in batches, one batch at a time, and not done until then.
        let mut unmarked: BTreeSet<u64> = BTreeSet::new();
        let mut marking: Option<(u64, BoxFuture<'static, Result<()>>)> = None;
        let mut mark_failed = false;
        // Progress to publish.
        let mut changed = false;
        let mut tasks = FuturesUnordered::new();
        let mut pacer = self
            .options
            .bandwidth_limit
            .filter(|l| *l > 0)
            .map(|l| Pacer::new(l, started));
        let mut failure: Option<Error> = None;
        let (mut copied, mut sparse, mut zeros) = (0u64, 0u64, 0u64);
        // Mostly-zero objects pass through this client: their reads hold
        // an object's bytes each, within the in-flight budget.
        let zero_block = self.options.zero_block.max(512);
        let buffers = Arc::new(Buffers::new(
            (self.options.in_flight_bytes / layout.object_size).clamp(1, OBJECTS_IN_FLIGHT as u64) as usize,
        ));
        loop {
            let stopping = failure.is_some() || self.cancel.is_cancelled();
            let mut rate_wait = None;
            while let Some(&object_no) = queue.front().filter(|_| !stopping && tasks.len() < OBJECTS_IN_FLIGHT) {
                if let Some(pacer) = &mut pacer {
                    let now = Instant::now();
                    if now < pacer.next_at {
                        rate_wait = Some(pacer.next_at);
                        break;
                    }
                    pacer.take(layout.object_size, now);
                }
                queue.pop_front();
                in_flight.insert(object_no);
                let (objects, buffers) = (objects.clone(), buffers.clone());
                tasks.push(async move { (object_no, move_object(&objects, object_no, &buffers, zero_block).await) });
            }
            // What is copied gets marked, also when stopping.
            if marking.is_none() && !unmarked.is_empty() && !mark_failed {
                let batch: Vec<u64> = std::mem::take(&mut unmarked).into_iter().collect();
                let objects = objects.clone();
                marking = Some((batch[0], Box::pin(async move { objects.mark_copied(&batch).await })));
            }
            if tasks.is_empty()
                && marking.is_none()
                && (unmarked.is_empty() || mark_failed)
                && (stopping || (extents_done && queue.is_empty()))
            {
                break;
            }
            let want_extents = !stopping && !extents_done && queue.len() < 1024;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if !stopping => {}
                Some((object_no, done)) = tasks.next(), if !tasks.is_empty() => match done {
                    Ok(outcome) => {
                        in_flight.remove(&object_no);
                        match outcome {
                            Moved::Whole => {
                                copied += 1;
                                progress.whole_objects += 1;
                                progress.written_bytes += layout.object_size;
                                unmarked.insert(object_no);
                            }
                            Moved::Blocks(n) => {
                                sparse += 1;
                                progress.written_bytes += n;
                                unmarked.insert(object_no);
                            }
                            Moved::Zeros => zeros += 1,
                            Moved::Absent => {}
                        }
                        progress.done_bytes = (progress.done_bytes + layout.object_size).min(progress.total_bytes);
                        progress.elapsed = started.elapsed();
                        changed = true;
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                },
                Some(marked) = async { marking.as_mut()?.1.as_mut().await.into() }, if marking.is_some() => {
                    marking = None;
                    if let Err(e) = marked {
                        mark_failed = true;
                        failure.get_or_insert(e);
                    }
                }
                next = extents.next(), if want_extents => match next {
                    None => {
                        extents_done = true;
                        frontier = size;
                    }
                    Some(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Some(Ok(e)) => {
                        let start = e.offset.max(resume_from);
                        let end = e.offset + e.len;
                        if e.exists && end > start {
                            for object_no in layout.objects_in(start..end) {
                                if seen.insert(object_no) {
                                    queue.push_back(object_no);
                                }
                            }
                        }
                        let set_start = e.offset - e.offset % period;
                        frontier = frontier.max(set_start).max(resume_from);
                        // Objects of earlier sets are all queued by now.
                        let first_of_set = set_start / period * layout.stripe_count;
                        seen = seen.split_off(&first_of_set);
                    }
                },
                _ = tokio::time::sleep_until(rate_wait.unwrap_or_else(Instant::now).into()), if rate_wait.is_some() => {}
            }
            // Below the lowest object set with an object queued, copying or
            // not yet marked, everything is copied and marked.
            let pending = [
                in_flight.first(),
                queue.front(),
                unmarked.first(),
                marking.as_ref().map(|m| &m.0),
            ];
            let watermark = pending
                .into_iter()
                .flatten()
                .map(|n| layout.set_start(*n))
                .fold(frontier, u64::min)
                .max(progress.watermark);
            if std::mem::take(&mut changed) || watermark != progress.watermark {
                progress.watermark = watermark;
                self.publish(&progress);
            }
        }
        let progress = self.conclude(progress, failure, started, size, objects.destination().to_owned())?;
        debug!(
            copied,
            sparse,
            zeros,
            ms = started.elapsed().as_millis() as u64,
            "server-side copy complete"
        );
        Ok(progress)
    }
}

/// What became of one object of the source.
enum Moved {
    /// The OSDs copied it whole.
    Whole,
    /// Mostly zeros: its non-zero blocks (so many bytes) were written.
    Blocks(u64),
    /// All zeros (read and checked): left absent.
    Zeros,
    /// The source has no such object.
    Absent,
}

/// Moves one object: the OSDs copy it, or, when its samples say it is
/// mostly zeros, it is read here (holding one of `buffers`) and only its
/// non-zero `zero_block`s are written.
async fn move_object(objects: &ObjectCopy, object_no: u64, buffers: &Buffers, zero_block: usize) -> Result<Moved> {
    let size = match objects.copy(object_no).await? {
        ObjectCopied::Data => return Ok(Moved::Whole),
        ObjectCopied::Absent => return Ok(Moved::Absent),
        ObjectCopied::Sparse { size } => size,
    };
    let _permit = buffers.permits.acquire().await.expect("the semaphore is never closed");
    let buffer = buffers.take();
    let Some((buffer, len)) = objects.read_object(object_no, size, buffer).await? else {
        return Ok(Moved::Absent);
    };
    let data = &buffer[..len];
    let runs = nonzero_runs(data, zero_block);
    let moved = match runs.is_empty() {
        true => Moved::Zeros,
        false => {
            objects.write_object(object_no, data, &runs).await?;
            Moved::Blocks(runs.iter().map(|r| r.len() as u64).sum())
        }
    };
    buffers.put(buffer);
    Ok(moved)
}

/// The buffers mostly-zero objects are read into: at most `permits` in
/// use, reused rather than allocated (and cleared) for every object.
struct Buffers {
    permits: Semaphore,
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    fn new(count: usize) -> Self {
        Buffers {
            permits: Semaphore::new(count),
            free: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn put(&self, buffer: Vec<u8>) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
    }
}
