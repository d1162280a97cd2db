//! Rate-limited warnings: the first occurrence is logged, repeats within the interval are
//! counted and reported as "suppressed N" with the next one that gets through.

use std::time::{Duration, Instant};

/// One rate-limited log line (per kind of problem).
#[derive(Debug)]
pub(crate) struct RateLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// At most one line per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this occurrence should be logged (`n` repeats were suppressed since
    /// the last line), `None` when it is suppressed.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLog::new(Duration::from_secs(10));
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(11)), Some(2));
    }
}
