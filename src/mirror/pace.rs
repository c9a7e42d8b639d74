//! Pacing a copy to a bandwidth limit: the client's transfer and the
//! server-side copy issue their chunks or objects through one [`Pacer`].

use std::time::{Duration, Instant};

/// Paces reads to a bandwidth limit. Time the copy could not use (a stall
/// on a lock, a slow OSD) is not saved up: at most `PACER_SLACK` of it is
/// made up afterwards, so the limit holds over any window an operator
/// would look at, not only on average since the start.
pub(super) struct Pacer {
    bytes_per_sec: u64,
    /// When the next chunk may be issued.
    pub(super) next_at: Instant,
}

/// Lateness the pacer forgives (scheduling delays), and so the largest burst.
const PACER_SLACK: Duration = Duration::from_millis(100);

impl Pacer {
    pub(super) fn new(bytes_per_sec: u64, start: Instant) -> Self {
        Pacer {
            bytes_per_sec,
            next_at: start,
        }
    }

    /// Accounts for `len` bytes issued at `now` (not before `next_at`).
    pub(super) fn take(&mut self, len: u64, now: Instant) {
        let base = self.next_at.max(now.checked_sub(PACER_SLACK).unwrap_or(now));
        self.next_at = base + Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
    }
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
}
