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
}
