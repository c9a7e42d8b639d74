//! Content comparison of two images, in parallel, reading only where at
//! least one of them has data (both read as zeros elsewhere).

use futures::StreamExt;

use crate::ceph::Image;
use crate::error::Result;

/// The outcome of comparing two images.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompareReport {
    /// Size of the first image.
    pub size_a: u64,
    /// Size of the second image.
    pub size_b: u64,
    /// Bytes read from each image and compared.
    pub compared_bytes: u64,
    /// Byte ranges `(offset, len)` that differ, each narrowed within its chunk
    /// to the first and last differing byte.
    pub mismatches: Vec<(u64, u64)>,
}

impl CompareReport {
    /// Whether the images have the same size and content.
    pub fn identical(&self) -> bool {
        self.size_a == self.size_b && self.mismatches.is_empty()
    }
}

const CHUNK: u64 = 4 << 20;
const PARALLEL: usize = 16;

/// Compares `a` and `b` by content over the smaller of their sizes (a size
/// difference is reported in the sizes).
pub async fn compare_images(a: &Image, b: &Image) -> Result<CompareReport> {
    let (size_a, size_b) = (a.info().await?.size, b.info().await?.size);
    let size = size_a.min(size_b);
    let chunks = size.div_ceil(CHUNK) as usize;
    let mut allocated = vec![false; chunks];
    for img in [a, b] {
        let mut diff = img.diff(None, 0, size, true);
        while let Some(e) = diff.next().await {
            let e = e?;
            if e.exists && e.len > 0 {
                let first = (e.offset / CHUNK) as usize;
                let last = ((e.offset + e.len - 1) / CHUNK) as usize;
                allocated[first..=last.min(chunks - 1)]
                    .iter_mut()
                    .for_each(|c| *c = true);
            }
        }
    }
    let mut results = futures::stream::iter(allocated.iter().enumerate().filter(|(_, a)| **a).map(|(i, _)| {
        let offset = i as u64 * CHUNK;
        let len = CHUNK.min(size - offset) as usize;
        async move {
            let (ra, rb) = tokio::join!(a.read(offset, len, Vec::new()), b.read(offset, len, Vec::new()));
            let (ba, bb) = (ra?, rb?);
            let first = ba.iter().zip(&bb).position(|(x, y)| x != y);
            let mismatch = first.map(|f| {
                let last = ba.iter().zip(&bb).rposition(|(x, y)| x != y).unwrap_or(f);
                (offset + f as u64, (last - f + 1) as u64)
            });
            Result::Ok((len as u64, mismatch))
        }
    }))
    .buffer_unordered(PARALLEL);
    let mut report = CompareReport {
        size_a,
        size_b,
        compared_bytes: 0,
        mismatches: Vec::new(),
    };
    while let Some(r) = results.next().await {
        let (len, mismatch) = r?;
        report.compared_bytes += len;
        report.mismatches.extend(mismatch);
    }
    report.mismatches.sort_unstable();
    Ok(report)
}
