//! Finding the non-zero parts of a buffer.
//!
//! A fresh destination image reads as zeros everywhere, so writing zeros to
//! it only allocates space. The copier writes just the non-zero runs,
//! judged in blocks of a fixed size (coarser blocks mean fewer, larger
//! writes; finer blocks keep the destination thinner).

use std::ops::Range;

/// Whether every byte of `buf` is zero.
///
/// Data blocks almost always have a non-zero byte near their start, so the
/// scan goes in 256-byte strides (each OR-folded, which vectorises) and
/// stops at the first stride that is not all zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets
    // the aligned middle part of the slice.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|b| *b == 0)
        && body
            .chunks(16)
            .all(|stride| stride.iter().fold(0u128, |acc, w| acc | *w) == 0)
        && tail.iter().all(|b| *b == 0)
}

/// The runs of `buf` that are not all-zero, in order, judged per `block`
/// bytes (the last block may be shorter); adjacent non-zero blocks merge.
pub fn nonzero_runs(buf: &[u8], block: usize) -> Vec<Range<usize>> {
    assert!(block > 0, "zero-detection block must be positive");
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, chunk) in buf.chunks(block).enumerate() {
        if is_zero(chunk) {
            continue;
        }
        let start = i * block;
        let end = start + chunk.len();
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// One write of a chunk that overwrites older data on the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overwrite {
    /// Write the source's bytes in this range.
    Data(Range<usize>),
    /// Write zeros in this range.
    Zeros(Range<usize>),
}

/// The changed ranges split into what is data and what is zero in the
/// source, given its non-zero `runs` (from [`nonzero_runs`]); both lists
/// are sorted and disjoint, and so is the result.
fn changed_parts<'a>(runs: &'a [Range<usize>], changed: &'a [Range<usize>]) -> impl Iterator<Item = Overwrite> + 'a {
    changed.iter().filter(|c| !c.is_empty()).flat_map(move |c| {
        let mut parts = Vec::new();
        let mut pos = c.start;
        for r in runs.iter().filter(|r| r.start < c.end && r.end > c.start) {
            if r.start > pos {
                parts.push(Overwrite::Zeros(pos..r.start));
            }
            pos = r.end.min(c.end).max(pos);
            parts.push(Overwrite::Data(r.start.max(c.start)..pos));
        }
        if pos < c.end {
            parts.push(Overwrite::Zeros(pos..c.end));
        }
        parts
    })
}

/// What to write so that a destination which already equals the source
/// outside `changed` equals it everywhere, given the source's non-zero
/// `runs` (from [`nonzero_runs`]), when every write is an operation of its
/// own. Both lists are sorted and disjoint.
///
/// What is zero in a changed range is zeroed. A non-zero run is written
/// from its first changed byte to its last: the unchanged bytes between two
/// changes in one run are rewritten with what they already hold, which costs
/// less than a second operation. Unchanged zeros are never written, so a
/// chunk that spans a hole between two changes costs no extra operation.
pub fn overwrite_plan(runs: &[Range<usize>], changed: &[Range<usize>]) -> Vec<Overwrite> {
    let mut plan: Vec<Overwrite> = changed_parts(runs, changed)
        .filter(|w| matches!(w, Overwrite::Zeros(_)))
        .collect();
    for r in runs {
        let mut touching = changed
            .iter()
            .filter(|c| !c.is_empty() && c.start < r.end && c.end > r.start);
        if let Some(first) = touching.next() {
            let last = touching.next_back().unwrap_or(first);
            plan.push(Overwrite::Data(first.start.max(r.start)..last.end.min(r.end)));
        }
    }
    plan.sort_by_key(|w| match w {
        Overwrite::Data(r) | Overwrite::Zeros(r) => r.start,
    });
    plan
}

/// [`overwrite_plan`] for when all writes of a chunk go in one operation
/// (several writes in one RADOS operation cost about one): exactly the
/// changed bytes are written, data as data and zeros as zeros.
pub fn exact_overwrite_plan(runs: &[Range<usize>], changed: &[Range<usize>]) -> Vec<Overwrite> {
    changed_parts(runs, changed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A straightforward model: a block is non-zero if any byte is.
    fn model(buf: &[u8], block: usize) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        let mut i = 0;
        while i < buf.len() {
            let end = (i + block).min(buf.len());
            if buf[i..end].iter().any(|b| *b != 0) {
                if let Some(last) = out.last_mut().filter(|l| l.end == i) {
                    last.end = end;
                } else {
                    out.push(i..end);
                }
            }
            i = end;
        }
        out
    }

    #[test]
    fn matches_the_model_on_random_sparse_buffers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let len = rng.gen_range(0..20_000);
            let mut buf = vec![0u8; len];
            for _ in 0..rng.gen_range(0..6) {
                if len > 0 {
                    let at = rng.gen_range(0..len);
                    buf[at] = rng.gen_range(1..=255);
                }
            }
            let block = [1, 7, 512, 4096][rng.gen_range(0..4)];
            assert_eq!(nonzero_runs(&buf, block), model(&buf, block), "len {len} block {block}");
            assert_eq!(is_zero(&buf), buf.iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn a_single_byte_anywhere_is_found() {
        for at in 0..300 {
            let mut buf = vec![0u8; 300];
            buf[at] = 1;
            assert!(!is_zero(&buf));
            assert!(!is_zero(&buf[1..]) || at == 0);
            assert_eq!(
                nonzero_runs(&buf, 64),
                vec![(at / 64) * 64..((at / 64) * 64 + 64).min(300)]
            );
        }
    }

    #[test]
    fn dense_buffer_is_one_run() {
        let buf = vec![0xabu8; 10_000];
        assert_eq!(nonzero_runs(&buf, 4096), vec![0..10_000]);
        assert!(nonzero_runs(&[0u8; 10_000], 4096).is_empty());
    }

    #[test]
    fn an_overwrite_plan_makes_the_destination_equal_and_writes_only_what_it_must() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..2000 {
            let len = rng.gen_range(1..4096);
            let block = [1, 8, 64][rng.gen_range(0..3)];
            // Source: data and holes at random.
            let mut src = vec![0u8; len];
            let mut i = 0;
            while i < len {
                let n = rng.gen_range(1..200).min(len - i);
                if rng.gen_bool(0.5) {
                    src[i..i + n].iter_mut().for_each(|b| *b = rng.gen_range(1..=255));
                }
                i += n;
            }
            // Changed ranges, sorted and disjoint.
            let mut changed = Vec::new();
            let mut pos = 0;
            while pos < len {
                let start = pos + rng.gen_range(0..300);
                let end = (start + rng.gen_range(0..150)).min(len);
                if start < end {
                    changed.push(start..end);
                }
                pos = end + 1;
            }
            let in_changed = |i: usize| changed.iter().any(|c| c.contains(&i));
            // The destination: equal outside the changes, stale inside.
            let mut dst: Vec<u8> = (0..len).map(|i| if in_changed(i) { 0x5a } else { src[i] }).collect();
            let runs = nonzero_runs(&src, block);
            let plan = overwrite_plan(&runs, &changed);
            for w in &plan {
                match w {
                    Overwrite::Data(r) => {
                        assert!(r.clone().any(in_changed), "a data write with no change in it: {r:?}");
                        assert!(runs.iter().any(|run| run.start <= r.start && r.end <= run.end));
                        dst[r.clone()].copy_from_slice(&src[r.clone()]);
                    }
                    Overwrite::Zeros(r) => {
                        assert!(r.clone().all(in_changed), "zeros written outside the changes: {r:?}");
                        dst[r.clone()].iter_mut().for_each(|b| *b = 0);
                    }
                }
            }
            assert_eq!(dst, src, "changed {changed:?} runs {runs:?} plan {plan:?}");
            // One write per run that holds a change, at most one zeroing per
            // gap between runs in a change.
            let data = plan.iter().filter(|w| matches!(w, Overwrite::Data(_))).count();
            assert_eq!(data, runs.iter().filter(|r| (*r).clone().any(in_changed)).count());

            // The exact plan: sorted, disjoint, covering exactly the changes,
            // data where the source has data and zeros where it has none.
            let exact = exact_overwrite_plan(&runs, &changed);
            let mut covered = Vec::new();
            let mut dst: Vec<u8> = (0..len).map(|i| if in_changed(i) { 0x5a } else { src[i] }).collect();
            for w in &exact {
                match w {
                    Overwrite::Data(r) => {
                        assert!(
                            runs.iter().any(|run| run.start <= r.start && r.end <= run.end),
                            "{r:?} not in a run"
                        );
                        dst[r.clone()].copy_from_slice(&src[r.clone()]);
                        covered.extend(r.clone());
                    }
                    Overwrite::Zeros(r) => {
                        assert!(src[r.clone()].iter().all(|b| *b == 0), "zeros written over data: {r:?}");
                        dst[r.clone()].iter_mut().for_each(|b| *b = 0);
                        covered.extend(r.clone());
                    }
                }
            }
            assert_eq!(dst, src, "exact plan {exact:?}");
            let expected: Vec<usize> = (0..len).filter(|i| in_changed(*i)).collect();
            assert_eq!(covered, expected, "the exact plan writes the changes, in order, once");
        }
    }
}
