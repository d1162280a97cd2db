//! Retry delays: exponential backoff between a base and a cap — with full jitter for
//! deliveries ([`Backoff::delay`]), or deterministic for a loop that retries one thing
//! ([`Doubling`]: reconnects, a refused commit). A utility: imports nothing.

use std::time::Duration;

/// Shortest delay ever returned, so that a zero draw does not retry in a busy loop.
const FLOOR: Duration = Duration::from_millis(50);

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// Delay ceiling of the first retry.
    pub(crate) base: Duration,
    /// Largest delay ceiling.
    pub(crate) max: Duration,
}

impl Backoff {
    /// The ceiling for the `attempt`-th retry (1-based): `base * 2^(attempt-1)`, capped.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// The delay for the `attempt`-th retry; `unit` is a uniform draw from [0, 1).
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt)
            .mul_f64(unit.clamp(0.0, 1.0))
            .max(FLOOR)
    }
}

/// The delay of a loop that retries one thing: `base` at first, doubled after each
/// failure up to `max`, back to `base` after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Doubling {
    backoff: Backoff,
    attempt: u32,
}

impl Doubling {
    /// Starts at `base`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Doubling {
            backoff: Backoff { base, max },
            attempt: 1,
        }
    }

    /// The delay to wait now.
    pub(crate) fn current(&self) -> Duration {
        self.backoff.ceiling(self.attempt)
    }

    /// A failure: the next delay is twice this one (capped).
    pub(crate) fn failed(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
    }

    /// A success: back to `base`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        };
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(20), Duration::from_secs(300));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
        assert_eq!(b.delay(4, 0.5), Duration::from_secs(4));
        assert_eq!(b.delay(4, 0.0), FLOOR);
    }

    #[test]
    fn doubling_doubles_caps_and_resets() {
        let mut d = Doubling::new(Duration::from_millis(200), Duration::from_secs(1));
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(d.current().as_millis());
            d.failed();
        }
        assert_eq!(seen, [200, 400, 800, 1000, 1000]);
        d.reset();
        assert_eq!(d.current(), Duration::from_millis(200));
    }
}
