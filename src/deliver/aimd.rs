//! The adaptive request rate of one webhook: AIMD on 429. A webhook sends as fast as its
//! other limits let it until a receiver answers 429 (Too Many Requests); from then on its
//! requests are paced (a token bucket of one) at a rate it learns:
//!
//! - a 429 cuts the rate to [`DECREASE`] × what the receiver took from this webhook over the
//!   last [`MEASURE`] (2xx answers per second; never above the rate before), at least
//!   [`MIN_RATE`]; at most once per round: a 429 to a request sent before the last cut says
//!   nothing new. A first 429 after nothing was taken (a receiver already full when this
//!   webhook came back) starts at [`MIN_RATE`] and doubles every [`DOUBLING`] until the next 429
//!   (slow start), so a late gateway finds its share in a few seconds;
//! - while the rate is what holds requests back, it grows additively: by [`GROWTH`] (or
//!   [`RELATIVE_GROWTH`] of the rate, if more) per second, an increment that itself grows with the time since
//!   the last cut (doubled after [`ACCELERATE`]): near the rate that was refused it probes
//!   gently, and it finds capacity that others left (a gateway whose backlog is drained)
//!   within seconds;
//! - after an outage (the circuit breaker closes again) the drain starts at
//!   [`RESTART_RATE`] and doubles every [`DOUBLING`] until the first 429, or until
//!   [`SLOW_START_END`] drops the limit: a fleet whose gateways notice the recovery within
//!   seconds of each other (the circuit's probes are jittered) ramps up together instead of
//!   each sending its whole backlog at once;
//! - after [`FORGET`] without a 429 the limit is dropped.
//!
//! A fleet of gateways behind one receiver that takes so many requests per second so
//! shares it without flooding it: each gateway's rate settles near its part of the
//! capacity, and a 429 is the exception instead of what every second ends with. The
//! `Retry-After` of the 429 is honoured on top (the scheduler's pause, jittered by the
//! worker: see `policy::spread`). Plain, clock-injected logic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a cut keeps of the rate the receiver took.
pub(crate) const DECREASE: f64 = 0.9;
/// The lowest rate (requests per second) a cut leaves.
pub(crate) const MIN_RATE: f64 = 0.5;
/// Additive growth per second, at least (requests per second per second).
pub(crate) const GROWTH: f64 = 0.1;
/// Additive growth per second as a share of the rate, when that is more than [`GROWTH`]
/// (a webhook alone at a receiver's limit probes it as gently as one of a fleet).
pub(crate) const RELATIVE_GROWTH: f64 = 0.002;
/// The growth increment doubles after this long without a cut (and so on, linearly).
pub(crate) const ACCELERATE: Duration = Duration::from_secs(5);
/// How far back the 2xx answers a cut starts from are counted.
pub(crate) const MEASURE: Duration = Duration::from_secs(2);
/// Where the drain after an outage starts (requests per second). With [`DOUBLING`] this
/// is a compromise measured both ways: a lone gateway drains a conflated backlog of 140
/// messages within 5 s of its receiver's return (tests/durability.rs; 42 of them from
/// 1/s), and five webhooks behind a receiver taking 40/s or a fleet of 50 behind one
/// taking 300/s do not flood it (tests/pacing.rs, `roomhook-bench --scenarios fleet`:
/// from 1/s doubling every 250 ms the fleet's busiest second was 1.86 × the capacity).
pub(crate) const RESTART_RATE: f64 = 8.0;
/// How often a slow start doubles the rate (from [`RESTART_RATE`], 1,000/s after 7 s).
pub(crate) const DOUBLING: Duration = Duration::from_millis(1000);
/// A slow start that reaches this rate without a 429 drops the limit.
pub(crate) const SLOW_START_END: f64 = 1000.0;
/// After this long without a 429 the rate limit is dropped.
pub(crate) const FORGET: Duration = Duration::from_secs(300);

/// The adaptive rate of one webhook.
#[derive(Debug, Clone)]
pub(crate) struct AdaptiveRate {
    /// Requests per second; `None`: not limited (no 429 yet, or forgotten).
    rate: Option<f64>,
    /// Doubling every [`DOUBLING`] until the next cut.
    slow_start: bool,
    /// The token bucket of one request.
    tokens: f64,
    refilled: Instant,
    /// The last cut.
    cut_at: Option<Instant>,
    /// Growth is accounted up to here.
    grown_at: Instant,
    /// The rate held a request back since `grown_at`.
    binding: bool,
    /// The 2xx answers of the last [`MEASURE`], counted per [`STEP`] (when each step
    /// began, how many): bounded memory at any request rate.
    accepted: VecDeque<(Instant, u32)>,
}

/// The resolution of the count of 2xx answers.
const STEP: Duration = Duration::from_millis(100);

impl AdaptiveRate {
    /// Not limited.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            rate: None,
            slow_start: false,
            tokens: 1.0,
            refilled: now,
            cut_at: None,
            grown_at: now,
            binding: false,
            accepted: VecDeque::new(),
        }
    }

    /// The current limit in requests per second (`None`: not limited).
    pub(crate) fn rate(&self) -> Option<f64> {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        if let Some(r) = self.rate {
            let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + dt * r).min(1.0);
        }
        self.refilled = now;
    }

    /// `None` if a request may go now, else when one may.
    pub(crate) fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        let r = self.rate?;
        self.refill(now);
        // (Within a microsecond's worth of a token: rounding must not make a wait of 0.)
        if self.tokens >= 1.0 - 1e-6 * r {
            return None;
        }
        self.binding = true;
        Some(now + Duration::from_secs_f64(((1.0 - self.tokens) / r).max(1e-6)))
    }

    /// The receiver is back after an outage: a slow start from [`RESTART_RATE`].
    pub(crate) fn restart(&mut self, now: Instant) {
        self.cut(now, RESTART_RATE, true);
    }

    /// A new rate from now: growth and the once-per-round rule count from here.
    fn cut(&mut self, now: Instant, rate: f64, slow_start: bool) {
        self.refill(now);
        self.rate = Some(rate);
        self.slow_start = slow_start;
        self.cut_at = Some(now);
        self.grown_at = now;
        self.binding = false;
    }

    /// The 2xx answers of the last `within` (at most [`MEASURE`]), to a [`STEP`].
    fn taken(&mut self, now: Instant, within: Duration) -> u32 {
        self.forget_older_than_measure(now);
        self.accepted
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= within)
            .map(|(_, n)| n)
            .sum()
    }

    /// Drops the steps older than [`MEASURE`] (a cut never looks further back).
    fn forget_older_than_measure(&mut self, now: Instant) {
        while self
            .accepted
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > MEASURE)
        {
            self.accepted.pop_front();
        }
    }

    /// A request went out.
    pub(crate) fn on_send(&mut self, now: Instant) {
        self.refill(now);
        if self.rate.is_some() {
            self.tokens = (self.tokens - 1.0).max(0.0);
        }
    }

    /// A 2xx came back: counted, and the rate grows for the time it held requests back.
    pub(crate) fn on_accepted(&mut self, now: Instant) {
        match self.accepted.back_mut() {
            Some((t, n)) if now.saturating_duration_since(*t) < STEP => *n += 1,
            _ => {
                self.accepted.push_back((now, 1));
                self.forget_older_than_measure(now);
            }
        }
        let Some(rate) = self.rate else { return };
        if self
            .cut_at
            .is_some_and(|c| now.saturating_duration_since(c) >= FORGET)
        {
            self.rate = None;
            self.slow_start = false;
            return;
        }
        let dt = now
            .saturating_duration_since(self.grown_at)
            .min(Duration::from_secs(1))
            .as_secs_f64();
        self.grown_at = now;
        if !std::mem::take(&mut self.binding) || dt <= 0.0 {
            return;
        }
        self.refill(now);
        self.rate = if self.slow_start {
            Some(rate * 2f64.powf(dt / DOUBLING.as_secs_f64())).filter(|r| *r < SLOW_START_END)
        } else {
            let since = self
                .cut_at
                .map_or(0.0, |c| now.saturating_duration_since(c).as_secs_f64());
            let step =
                GROWTH.max(rate * RELATIVE_GROWTH) * (1.0 + since / ACCELERATE.as_secs_f64());
            Some(rate + step * dt)
        };
        if self.rate.is_none() {
            self.slow_start = false;
        }
    }

    /// A 429 to a request sent at `sent`: the rate is cut (once per round).
    pub(crate) fn on_too_many(&mut self, sent: Instant, now: Instant) {
        if self.cut_at.is_some_and(|c| sent < c) {
            return;
        }
        let (rate, slow_start) = match self.rate {
            // The first: what the receiver took within the last second, or a slow start.
            None => {
                let second = f64::from(self.taken(now, Duration::from_secs(1)));
                (second * DECREASE, second == 0.0)
            }
            Some(r) => {
                let taken = f64::from(self.taken(now, MEASURE));
                (r.min(taken / MEASURE.as_secs_f64()) * DECREASE, false)
            }
        };
        self.cut(now, rate.max(MIN_RATE), slow_start);
        // This answer's request was the last one the receiver would take for now.
        self.tokens = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn unlimited_until_the_first_429_then_what_the_receiver_took() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::new(t0);
        for i in 0..100 {
            assert_eq!(a.ready_at(ms(t0, i)), None);
            a.on_send(ms(t0, i));
        }
        // 40 taken within the last second, then a 429.
        for i in 0..40 {
            a.on_accepted(ms(t0, 500 + i));
        }
        a.on_too_many(ms(t0, 600), ms(t0, 700));
        assert_eq!(a.rate(), Some(40.0 * DECREASE));
        // Paced now: one token of one request, refilled at the rate.
        let at = a.ready_at(ms(t0, 700)).unwrap();
        // (one request per 1/36 s)
        assert!(at > ms(t0, 720) && at <= ms(t0, 728), "{at:?}");
        // A 429 to a request sent before the cut does not cut again.
        a.on_too_many(ms(t0, 650), ms(t0, 710));
        assert_eq!(a.rate(), Some(40.0 * DECREASE));
    }

    #[test]
    fn a_first_429_with_nothing_taken_slow_starts_from_the_floor() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::new(t0);
        a.on_send(t0);
        a.on_too_many(t0, ms(t0, 5));
        assert_eq!(a.rate(), Some(MIN_RATE));
        // Held back and accepted over 2.8 × DOUBLING: it doubles every DOUBLING (0.5 × 2^2.8).
        let mut now = ms(t0, 5);
        for _ in 0..(28 * DOUBLING.as_millis() / 1000) {
            now += Duration::from_millis(100);
            if a.ready_at(now).is_none() {
                a.on_send(now);
            }
            a.on_accepted(now);
        }
        let r = a.rate().unwrap();
        assert!((2.5..4.5).contains(&r), "{r}");
        // The next 429 ends the slow start, from what the receiver took of the last 2 s.
        a.on_send(now);
        a.on_too_many(now, now + Duration::from_millis(5));
        let cut = a.rate().unwrap();
        assert!(cut <= r * DECREASE && cut >= MIN_RATE, "{cut}");
    }

    #[test]
    fn growth_only_while_the_rate_holds_requests_back_and_faster_the_longer_no_429() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::new(t0);
        for i in 0..20 {
            a.on_accepted(ms(t0, 50 * i));
        }
        a.on_send(ms(t0, 999));
        a.on_too_many(ms(t0, 999), ms(t0, 1000));
        let start = a.rate().unwrap();
        // Not held back (little to send): no growth.
        a.on_accepted(ms(t0, 3000));
        assert_eq!(a.rate(), Some(start));
        // Held back for 10 s: grows by GROWTH per second, doubling over ACCELERATE.
        let mut now = ms(t0, 3000);
        let mut last = start;
        let mut steps = Vec::new();
        for _ in 0..10 {
            a.on_send(now);
            assert!(a.ready_at(now).is_some());
            now += Duration::from_secs(1);
            a.on_accepted(now);
            let r = a.rate().unwrap();
            steps.push(r - last);
            last = r;
        }
        assert!(steps.windows(2).all(|w| w[1] > w[0]), "{steps:?}");
        assert!(steps[0] >= GROWTH && steps[9] < 4.0 * GROWTH.max(last * RELATIVE_GROWTH));
    }

    #[test]
    fn after_an_outage_the_drain_slow_starts_until_a_429_or_the_end() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::new(t0);
        a.restart(t0);
        assert_eq!(a.rate(), Some(RESTART_RATE));
        let mut now = t0;
        let mut per_step = Vec::new();
        while a.rate().is_some() {
            now += Duration::from_millis(1);
            if a.ready_at(now).is_none() {
                a.on_send(now);
                a.on_accepted(now);
            }
            if (now - t0).as_millis() % DOUBLING.as_millis() == 0 {
                per_step.push(a.rate().unwrap_or(f64::INFINITY));
            }
        }
        // 8, 16, 32, … per second, doubling every DOUBLING: 7 s to 1000/s, then not limited.
        assert!((5..=8).contains(&per_step.len()), "{per_step:?}");
        assert!(
            per_step[1..per_step.len() - 1]
                .windows(2)
                .all(|w| (1.8..2.2).contains(&(w[1] / w[0]))),
            "{per_step:?}"
        );
    }

    #[test]
    fn forgotten_after_a_long_time_without_429() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::new(t0);
        a.on_too_many(t0, t0);
        assert!(a.rate().is_some());
        a.on_accepted(t0 + FORGET);
        assert_eq!(a.rate(), None);
        assert_eq!(a.ready_at(t0 + FORGET), None);
    }

    /// A fleet against a receiver that takes `cap` requests in each second and answers 429
    /// to the rest: `g` gateways with `backlog` messages each come back at random moments
    /// of the first `spread` seconds, each pauses `Retry-After: 1` (jittered to 1-2 s) after
    /// a 429. Returns (share of the capacity used while backlogged, share refused, most
    /// requests in any second).
    fn fleet(
        g: usize,
        cap: u32,
        backlog: u32,
        spread: f64,
        restart: bool,
        seed: u64,
    ) -> (f64, f64, u32) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let rtt = Duration::from_millis(3);
        // Without a limit, a gateway sends one request per round trip (one in flight).
        struct Gw {
            a: AdaptiveRate,
            next: Instant,
            paused: Instant,
            left: u32,
        }
        let mut gws: Vec<Gw> = (0..g)
            .map(|_| {
                let at = t0 + Duration::from_secs_f64(rng.random::<f64>() * spread);
                let mut a = AdaptiveRate::new(at);
                if restart {
                    a.restart(at);
                }
                Gw {
                    a,
                    next: at,
                    paused: at,
                    left: backlog,
                }
            })
            .collect();
        let mut seconds: Vec<(u32, u32)> = Vec::new();
        let total = g as u32 * backlog;
        let mut delivered = 0;
        while delivered < total {
            let (i, _) = gws
                .iter()
                .enumerate()
                .filter(|(_, x)| x.left > 0)
                .min_by_key(|(_, x)| x.next.max(x.paused))
                .unwrap();
            let gw = &mut gws[i];
            let now = gw.next.max(gw.paused);
            if let Some(t) = gw.a.ready_at(now) {
                gw.next = t;
                continue;
            }
            gw.a.on_send(now);
            let s = now.duration_since(t0).as_secs() as usize;
            if seconds.len() <= s {
                seconds.resize(s + 1, (0, 0));
            }
            let back = now + rtt;
            if seconds[s].0 < cap {
                seconds[s].0 += 1;
                gw.left -= 1;
                delivered += 1;
                gw.a.on_accepted(back);
                gw.next = back;
            } else {
                seconds[s].1 += 1;
                gw.a.on_too_many(now, back);
                gw.paused = back + Duration::from_secs_f64(1.0 + rng.random::<f64>());
                gw.next = gw.paused;
            }
        }
        let (mut cum, mut busy) = (0, 0);
        for s in &seconds {
            cum += s.0;
            if cum + cap >= total {
                break;
            }
            busy += 1;
        }
        let used = seconds[..busy].iter().map(|s| s.0).sum::<u32>() as f64
            / (busy as f64 * f64::from(cap));
        let refused = seconds.iter().map(|s| s.1).sum::<u32>() as f64
            / seconds.iter().map(|s| s.0 + s.1).sum::<u32>() as f64;
        let peak = seconds.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
        (used, refused, peak)
    }

    #[test]
    fn a_fleet_shares_a_capped_receiver_without_flooding_it() {
        for seed in 0..3 {
            let (used, refused, peak) = fleet(50, 300, 360, 10.0, true, seed);
            eprintln!("50 gateways: used {used:.3}, refused {refused:.4}, peak {peak}");
            assert!(used >= 0.7, "used {used:.3}");
            assert!(refused <= 0.03, "refused {refused:.3}");
            assert!(peak <= 450, "peak {peak}");
            let (used, refused, _) = fleet(1, 300, 9000, 0.1, false, seed);
            eprintln!("alone: used {used:.3}, refused {refused:.4}");
            assert!(
                used >= 0.8 && refused <= 0.01,
                "alone: {used:.3} {refused:.4}"
            );
        }
    }
}
