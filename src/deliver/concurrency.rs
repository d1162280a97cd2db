//! Adaptive concurrency (AIMD, in the spirit of Vector's adaptive request concurrency):
//! the in-flight limit grows while round-trip times stay flat and the limit is being used —
//! doubling per round trip at first (slow start, as TCP does; the first sign of load halves
//! it back), by one per round trip after that — and is multiplied by 0.9 on back-pressure (429, 503, other 5xx,
//! timeouts) or an RTT spike. Never below 1 nor above `max_in_flight`. Plain logic: the
//! caller feeds it measurements and a clock.

use std::time::{Duration, Instant};

/// EWMA weight of a new RTT sample.
const ALPHA: f64 = 0.4;
/// An RTT this many standard deviations above the mean is a spike.
const SPIKE_SIGMAS: f64 = 2.5;
/// Multiplicative decrease.
const DECREASE: f64 = 0.9;
/// How far the baseline moves toward a higher window average per round trip.
const BASELINE_RELAX: f64 = 0.02;
/// Samples needed before spikes are judged.
const WARMUP: u32 = 5;

/// How a response looked to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Accepted (or a plain client error): only its RTT counts.
    Ok,
    /// The receiver pushes back: 429, 503, other 5xx, or a timeout.
    Backpressure,
    /// Says nothing about load (connection refused, TLS error).
    Neutral,
}

/// The controller of one webhook.
#[derive(Debug, Clone)]
pub(crate) struct Controller {
    limit: usize,
    max: usize,
    /// Long-term EWMA of the RTT and its variance.
    mean: Option<f64>,
    var: f64,
    samples: u32,
    /// The current window (one round trip): its start, the EWMA at its start, its samples.
    window_start: Instant,
    window_past_mean: Option<f64>,
    window_past_sd: f64,
    /// The RTT of an unloaded receiver: the lowest window average, relaxing slowly upward.
    baseline: Option<f64>,
    window_sum: f64,
    window_count: u32,
    decreased: bool,
    reached_limit: bool,
    /// Until the first decrease the limit doubles per round trip.
    slow_start: bool,
}

impl Controller {
    /// Starts at 1 in flight, never above `max`.
    pub(crate) fn new(max: usize, now: Instant) -> Self {
        Self {
            limit: 1,
            max: max.max(1),
            mean: None,
            var: 0.0,
            samples: 0,
            window_start: now,
            window_past_mean: None,
            window_past_sd: 0.0,
            baseline: None,
            window_sum: 0.0,
            window_count: 0,
            decreased: false,
            reached_limit: false,
            slow_start: true,
        }
    }

    /// The current in-flight limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Records that a request was sent with `in_flight` requests (itself included) out.
    pub(crate) fn on_send(&mut self, in_flight: usize) {
        if in_flight >= self.limit {
            self.reached_limit = true;
        }
    }

    /// Records a response; the limit changes at most once per round trip.
    pub(crate) fn on_response(&mut self, rtt: Duration, signal: Signal, now: Instant) {
        let x = rtt.as_secs_f64();
        match signal {
            Signal::Backpressure => {
                // Back off at once, but only once per round trip.
                if !self.decreased {
                    self.decrease();
                }
            }
            Signal::Neutral => {}
            Signal::Ok => {
                // The window judges only requests sent since it began (at its limit).
                if now
                    .checked_sub(rtt)
                    .is_none_or(|sent| sent >= self.window_start)
                {
                    self.window_sum += x;
                    self.window_count += 1;
                }
                match self.mean {
                    None => self.mean = Some(x),
                    Some(m) => {
                        let diff = x - m;
                        let incr = ALPHA * diff;
                        self.mean = Some(m + incr);
                        self.var = (1.0 - ALPHA) * (self.var + diff * incr);
                    }
                }
                self.samples = self.samples.saturating_add(1);
            }
        }
        let Some(mean) = self.mean else { return };
        // One decision per round trip (at least 10 ms, so fast receivers do not thrash).
        let window = Duration::from_secs_f64(mean.max(0.01));
        if now.saturating_duration_since(self.window_start) < window
            || (self.window_count == 0 && !self.decreased)
        {
            return;
        }
        let past = self.window_past_mean.unwrap_or(mean);
        if self.window_count > 0 {
            let avg = self.window_sum / f64::from(self.window_count);
            let base = *self.baseline.get_or_insert(avg);
            if !self.decreased {
                let sd = self.window_past_sd.max(past * 0.05);
                let spike = self.samples >= WARMUP && avg > past + SPIKE_SIGMAS * sd + 0.0005;
                // Loopback RTTs jitter by fractions of a millisecond: "flat" has a little slack.
                if spike || avg > base * 2.0 + 0.001 {
                    self.decrease();
                } else if self.reached_limit && avg <= base * 1.1 + 0.0005 {
                    let grown = if self.slow_start {
                        self.limit * 2
                    } else {
                        self.limit + 1
                    };
                    self.limit = grown.min(self.max);
                }
            }
            self.baseline = Some(avg.min(base + (avg - base) * BASELINE_RELAX));
        }
        self.window_start = now;
        self.window_past_mean = Some(mean);
        self.window_past_sd = self.var.sqrt();
        self.window_sum = 0.0;
        self.window_count = 0;
        self.decreased = false;
        self.reached_limit = false;
    }

    fn decrease(&mut self) {
        self.limit = if self.slow_start {
            // The doubling overshot: go back to the last limit that did not (TCP halves too).
            self.limit / 2
        } else {
            (self.limit as f64 * DECREASE).floor() as usize
        }
        .max(1);
        self.decreased = true;
        self.slow_start = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the controller against a simulated receiver whose latency is
    /// `base + per_request * in_flight` and which answers 503 above `capacity` in flight.
    fn simulate(
        max: usize,
        base_ms: f64,
        per_request_ms: f64,
        capacity: usize,
        seconds: u64,
    ) -> Vec<usize> {
        let t0 = Instant::now();
        let mut c = Controller::new(max, t0);
        let mut now = t0;
        let mut limits = Vec::new();
        while now < t0 + Duration::from_secs(seconds) {
            // A "round": the sender fills the limit, all requests come back after one RTT.
            let n = c.limit();
            for i in 1..=n {
                c.on_send(i);
            }
            let rtt = Duration::from_secs_f64((base_ms + per_request_ms * n as f64) / 1000.0);
            now += rtt;
            for _ in 0..n {
                let sig = if n > capacity {
                    Signal::Backpressure
                } else {
                    Signal::Ok
                };
                c.on_response(rtt, sig, now);
            }
            limits.push(c.limit());
        }
        limits
    }

    #[test]
    fn a_fast_receiver_lets_the_limit_grow_to_the_cap() {
        let limits = simulate(32, 5.0, 0.0, usize::MAX, 30);
        assert_eq!(limits.last(), Some(&32));
    }

    #[test]
    fn slow_start_doubles_until_the_first_sign_of_load() {
        // 5 ms round trips, no load effect: 1, 2, 4, … reaches 64 within a few rounds.
        let limits = simulate(64, 5.0, 0.0, usize::MAX, 1);
        let first_64 = limits.iter().position(|&l| l == 64).unwrap();
        assert!(first_64 <= 20, "{limits:?}");
        assert!(limits.windows(2).all(|w| w[1] <= w[0] * 2), "{limits:?}");
        // After a decrease, growth is one per round trip.
        let limits = simulate(64, 5.0, 0.0, 10, 5);
        let tail = &limits[limits.len() / 2..];
        assert!(tail.windows(2).all(|w| w[1] <= w[0] + 1), "{tail:?}");
    }

    #[test]
    fn queueing_beyond_capacity_stops_the_growth_there() {
        // Up to 10 in flight the receiver answers in 20 ms; beyond, requests queue.
        let t0 = Instant::now();
        let mut c = Controller::new(64, t0);
        let mut now = t0;
        for _ in 0..2000 {
            let n = c.limit();
            for i in 1..=n {
                c.on_send(i);
            }
            let rtt = Duration::from_secs_f64(0.02 * (n.max(10) as f64 / 10.0));
            now += rtt;
            for _ in 0..n {
                c.on_response(rtt, Signal::Ok, now);
            }
        }
        assert!((9..=12).contains(&c.limit()), "{}", c.limit());
    }

    #[test]
    fn an_overloaded_receiver_keeps_the_limit_near_its_capacity() {
        let limits = simulate(64, 5.0, 0.0, 10, 60);
        let tail = &limits[limits.len() - 20..];
        assert!(tail.iter().all(|&l| (5..=11).contains(&l)), "{tail:?}");
    }

    #[test]
    fn latency_that_grows_with_load_stops_the_growth() {
        // Each request in flight adds 5 ms: RTT rises as the limit rises.
        let limits = simulate(64, 5.0, 5.0, usize::MAX, 60);
        let last = *limits.last().unwrap();
        assert!(last < 64, "{limits:?}");
    }

    #[test]
    fn a_latency_spike_shrinks_the_limit() {
        let t0 = Instant::now();
        let mut c = Controller::new(16, t0);
        let mut now = t0;
        for _ in 0..200 {
            for i in 1..=c.limit() {
                c.on_send(i);
            }
            now += Duration::from_millis(10);
            c.on_response(Duration::from_millis(10), Signal::Ok, now);
        }
        let before = c.limit();
        assert_eq!(before, 16);
        now += Duration::from_millis(500);
        c.on_response(Duration::from_millis(500), Signal::Ok, now);
        assert!(c.limit() < before, "{}", c.limit());
    }
}
