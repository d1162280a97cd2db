//! The request-rate limit of one webhook: a token bucket (`rate_limit` tokens per second,
//! at most `burst` saved up). Clock-injected; the bucket is never exceeded, also not while
//! a backlog drains.

use std::time::{Duration, Instant};

/// Longest wait `next_token` answers; the bucket is asked again after it.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// A token bucket.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, at most `burst` (≥ 1) saved; starts full.
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whether a token is available now (does not take it).
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token if one is available.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be available.
    pub(crate) fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            now
        } else {
            // A tiny rate must not overflow the wait (it is looked at again within a day).
            let wait = ((1.0 - self.tokens) / self.rate).min(MAX_WAIT.as_secs_f64());
            now + Duration::from_secs_f64(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_rate_waits_at_most_a_day_instead_of_panicking() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1e-300, 1, t0);
        assert!(b.take(t0));
        assert_eq!(b.next_token(t0), t0 + MAX_WAIT);
    }

    #[test]
    fn never_more_than_burst_plus_rate_times_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        let mut taken = 0;
        // Try every millisecond for 10 s.
        for ms in 0..10_000 {
            let now = t0 + Duration::from_millis(ms);
            while b.take(now) {
                taken += 1;
            }
        }
        assert!(taken <= 5 + 100, "{taken}");
        assert!(taken >= 100, "{taken}");
    }

    #[test]
    fn tells_when_the_next_token_comes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 1, t0);
        assert!(b.take(t0));
        assert!(!b.ready(t0));
        assert_eq!(b.next_token(t0), t0 + Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)));
    }
}
