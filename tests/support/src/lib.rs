//! What livemig's tests share with the test instance they drive: the data
//! the instance writes (a pattern determined by a seed) and the log it
//! keeps of its acknowledged writes, from which a test rebuilds what the
//! image must hold. Not part of the library that embedders link.

/// The bytes the test instance writes for a write with `seed`: a
/// SplitMix64 stream, so a log line (offset, length, seed) determines the
/// data exactly and a test can rebuild the image from the log.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One line of the test instance's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// An acknowledged write of `pattern(seed, len)` at `offset`.
    Write {
        /// Unix milliseconds of the acknowledgement.
        at_ms: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// An acknowledged discard.
    Discard {
        /// Unix milliseconds of the acknowledgement.
        at_ms: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A write or discard that failed (not acknowledged; its range is undefined).
    Failed {
        /// Unix milliseconds of the failure.
        at_ms: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The negative errno.
        errno: i32,
    },
    /// The instance held (or, ignoring holds, claimed to).
    Held {
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The instance resumed.
    Resumed {
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The instance now uses this image.
    Repointed {
        /// Unix milliseconds.
        at_ms: u64,
        /// `pool[/ns]/image`.
        image: String,
    },
}

impl LogEntry {
    /// Parses one log line.
    pub fn parse(line: &str) -> Option<LogEntry> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(match *f.first()? {
            "W" => LogEntry::Write {
                at_ms: n(1)?,
                offset: n(2)?,
                len: n(3)?,
                seed: n(4)?,
            },
            "D" => LogEntry::Discard {
                at_ms: n(1)?,
                offset: n(2)?,
                len: n(3)?,
            },
            "E" => LogEntry::Failed {
                at_ms: n(1)?,
                offset: n(2)?,
                len: n(3)?,
                errno: f.get(4)?.parse().ok()?,
            },
            "H" => LogEntry::Held { at_ms: n(1)? },
            "R" => LogEntry::Resumed { at_ms: n(1)? },
            "P" => LogEntry::Repointed {
                at_ms: n(1)?,
                image: f.get(2)?.to_string(),
            },
            _ => return None,
        })
    }
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogEntry::Write {
                at_ms,
                offset,
                len,
                seed,
            } => write!(f, "W {at_ms} {offset} {len} {seed}"),
            LogEntry::Discard { at_ms, offset, len } => write!(f, "D {at_ms} {offset} {len}"),
            LogEntry::Failed {
                at_ms,
                offset,
                len,
                errno,
            } => write!(f, "E {at_ms} {offset} {len} {errno}"),
            LogEntry::Held { at_ms } => write!(f, "H {at_ms}"),
            LogEntry::Resumed { at_ms } => write!(f, "R {at_ms}"),
            LogEntry::Repointed { at_ms, image } => write!(f, "P {at_ms} {image}"),
        }
    }
}

/// Applies acknowledged writes and discards of a log, in order, to a model
/// of the image's content (which must start as the image did).
pub fn apply_log(model: &mut [u8], entries: &[LogEntry]) {
    for e in entries {
        match *e {
            LogEntry::Write { offset, len, seed, .. } => {
                let (o, l) = (offset as usize, len as usize);
                model[o..o + l].copy_from_slice(&pattern(seed, l));
            }
            LogEntry::Discard { offset, len, .. } => {
                let (o, l) = (offset as usize, len as usize);
                model[o..o + l].fill(0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip_and_the_model_follows_them() {
        let entries = vec![
            LogEntry::Write {
                at_ms: 5,
                offset: 8,
                len: 20,
                seed: 77,
            },
            LogEntry::Discard {
                at_ms: 6,
                offset: 12,
                len: 4,
            },
            LogEntry::Failed {
                at_ms: 7,
                offset: 0,
                len: 8,
                errno: -30,
            },
            LogEntry::Held { at_ms: 8 },
            LogEntry::Repointed {
                at_ms: 9,
                image: "p/ns/i".into(),
            },
            LogEntry::Resumed { at_ms: 10 },
        ];
        for e in &entries {
            assert_eq!(LogEntry::parse(&e.to_string()).as_ref(), Some(e));
        }
        let mut model = vec![1u8; 40];
        apply_log(&mut model, &entries);
        let p = pattern(77, 20);
        assert_eq!(&model[..8], &[1u8; 8]);
        assert_eq!(&model[8..12], &p[..4]);
        assert_eq!(&model[12..16], &[0u8; 4]);
        assert_eq!(&model[16..28], &p[8..]);
        assert_eq!(&model[28..], &[1u8; 12]);
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(pattern(3, 13), pattern(3, 64)[..13]);
    }
}
