//! How an image's bytes are spread over its data objects (object size,
//! stripe unit, stripe count): which objects hold a range of the image,
//! and where an object's set begins. What a copy object by object needs.

use std::fmt;
use std::ops::Range;

/// How an image's bytes are spread over its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per object.
    pub object_size: u64,
    /// Bytes written to one object before moving to the next of its set.
    pub stripe_unit: u64,
    /// Objects per object set.
    pub stripe_count: u64,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "object size {}, stripe unit {}, stripe count {}",
            self.object_size, self.stripe_unit, self.stripe_count
        )
    }
}

impl Layout {
    pub(super) fn normalized(object_size: u64, stripe_unit: u64, stripe_count: u64) -> Layout {
        let object_size = object_size.max(1);
        Layout {
            object_size,
            stripe_unit: if stripe_unit == 0 { object_size } else { stripe_unit },
            stripe_count: stripe_count.max(1),
        }
    }

    /// Image bytes of one object set (its objects hold exactly these).
    pub fn period(&self) -> u64 {
        self.object_size * self.stripe_count
    }

    /// Where the object set holding object `object_no` begins in the image.
    pub fn set_start(&self, object_no: u64) -> u64 {
        object_no / self.stripe_count * self.period()
    }

    /// The objects holding any byte of `range` (image offsets), in order.
    pub fn objects_in(&self, range: Range<u64>) -> Vec<u64> {
        let mut objects = Vec::new();
        if range.start >= range.end {
            return objects;
        }
        let (period, su, sc) = (self.period(), self.stripe_unit, self.stripe_count);
        let mut set = range.start / period;
        while set * period < range.end {
            let (set_start, set_end) = (set * period, (set + 1) * period);
            let (from, to) = (range.start.max(set_start), range.end.min(set_end));
            let first = set * sc;
            if to - from >= su * sc {
                // A whole stripe (or more) touches every object of the set.
                objects.extend(first..first + sc);
            } else {
                let mut hit = vec![false; sc as usize];
                for unit in (from - set_start) / su..=(to - 1 - set_start) / su {
                    hit[(unit % sc) as usize] = true;
                }
                objects.extend((0..sc).filter(|i| hit[*i as usize]).map(|i| first + i));
            }
            set += 1;
        }
        objects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_of_a_plain_layout_follow_the_offsets() {
        let l = Layout::normalized(4 << 20, 0, 0);
        assert_eq!(l.period(), 4 << 20);
        assert_eq!(l.objects_in(0..1), vec![0]);
        assert_eq!(l.objects_in((4 << 20) - 1..(4 << 20) + 1), vec![0, 1]);
        assert_eq!(l.objects_in(8 << 20..20 << 20), vec![2, 3, 4]);
        assert!(l.objects_in(5..5).is_empty());
        assert_eq!(l.set_start(3), 12 << 20);
    }

    #[test]
    fn objects_of_a_striped_layout_follow_the_stripes() {
        // 4 objects of 1 MiB per set, 64 KiB stripe units.
        let l = Layout::normalized(1 << 20, 64 << 10, 4);
        assert_eq!(l.period(), 4 << 20);
        // Units go round the set's objects: unit k is in object k % 4.
        assert_eq!(l.objects_in(0..(64 << 10)), vec![0]);
        assert_eq!(l.objects_in((64 << 10)..(128 << 10) + 1), vec![1, 2]);
        assert_eq!(l.objects_in((3 * (64 << 10))..(5 * (64 << 10))), vec![0, 3]);
        // A whole stripe touches every object of the set.
        assert_eq!(l.objects_in(0..(256 << 10)), vec![0, 1, 2, 3]);
        // The second set holds objects 4..8.
        assert_eq!(l.objects_in((4 << 20) + 1..(4 << 20) + 2), vec![4]);
        assert_eq!(l.set_start(6), 4 << 20);
        // Brute force against the striping formula.
        for start in (0..(9 << 20)).step_by(50_000) {
            let end = start + 300_000;
            let mut want: Vec<u64> = (start..end)
                .step_by(4096)
                .chain(std::iter::once(end - 1))
                .map(|off| {
                    let unit = off / l.stripe_unit;
                    let (stripe, pos) = (unit / l.stripe_count, unit % l.stripe_count);
                    stripe / (l.object_size / l.stripe_unit) * l.stripe_count + pos
                })
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(l.objects_in(start..end), want, "{start}..{end}");
        }
    }
}
