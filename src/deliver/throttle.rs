//! Per-status minimum intervals of one webhook (`[webhooks.filters."…"] min_interval`): a
//! device's value of such a status goes out at most once per interval, and always the
//! latest one — a queued value that a later value of the same device and path supersedes
//! leaves without a request, and the last one waits for its turn (never dropped: it is in
//! the store like every queued event). Plain, clock-injected logic: no I/O.

use crate::config::PathFilter;
use crate::event::Event;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most (device, path) pairs remembered; past it the memory starts again (a value may then
/// go out early once).
const MAX_REMEMBERED: usize = 100_000;

type Key = (String, String);

/// What to do with a queued value now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Send it (no interval applies, or its interval has passed).
    Now,
    /// A later value of the same device and path is queued: leave without a request.
    Superseded,
    /// Wait until then.
    At(Instant),
}

/// The minimum intervals of one webhook and what it last sent.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// Generic status pattern → interval, in config order.
    rules: Vec<(String, Duration)>,
    /// When each (device, path) last went out.
    sent: HashMap<Key, Instant>,
    /// The newest queued entry of each (device, path) under a rule.
    latest: HashMap<Key, u64>,
}

impl Throttle {
    /// The rules of a webhook's filters (those with `min_interval`).
    pub(crate) fn new(filters: &[PathFilter]) -> Self {
        Throttle {
            rules: filters
                .iter()
                .filter_map(|f| f.min_interval.map(|d| (f.pattern.clone(), d)))
                .collect(),
            ..Throttle::default()
        }
    }

    /// Whether no rule applies at all (the common case: nothing to do per message).
    pub(crate) fn is_off(&self) -> bool {
        self.rules.is_empty()
    }

    /// The key and interval of a single status value under a rule.
    fn rule(&self, e: &Event) -> Option<(Key, Duration)> {
        if self.is_off()
            || e.kind != crate::catalog::Kind::Status
            || e.full_sync
            || !e.more.is_empty()
            || e.value.is_null()
        {
            return None;
        }
        let generic = crate::catalog::generic_path(&e.path);
        let (_, d) = self
            .rules
            .iter()
            .find(|(p, _)| crate::catalog::pattern_matches(p, &generic))?;
        Some(((e.device.clone(), e.path.clone()), *d))
    }

    /// An entry joined the window.
    pub(crate) fn queued(&mut self, seq: u64, e: &Event) {
        if let Some((key, _)) = self.rule(e) {
            if self.latest.len() >= MAX_REMEMBERED && !self.latest.contains_key(&key) {
                self.latest.clear();
            }
            let last = self.latest.entry(key).or_insert(seq);
            *last = (*last).max(seq);
        }
    }

    /// What to do with a queued entry now.
    pub(crate) fn turn(&self, seq: u64, e: &Event, now: Instant) -> Turn {
        let Some((key, interval)) = self.rule(e) else {
            return Turn::Now;
        };
        if self.latest.get(&key).is_some_and(|l| *l > seq) {
            return Turn::Superseded;
        }
        match self.sent.get(&key) {
            Some(at) if *at + interval > now => Turn::At(*at + interval),
            _ => Turn::Now,
        }
    }

    /// An attempt failed and is retried: it does not count.
    pub(crate) fn unsent(&mut self, e: &Event) {
        if let Some((key, _)) = self.rule(e) {
            self.sent.remove(&key);
        }
    }

    /// An entry goes out now.
    pub(crate) fn sent(&mut self, e: &Event, now: Instant) {
        if let Some((key, _)) = self.rule(e) {
            if self.sent.len() >= MAX_REMEMBERED && !self.sent.contains_key(&key) {
                self.sent.clear();
            }
            self.sent.insert(key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ev(device: &str, path: &str, v: i64) -> Event {
        Event {
            device: device.into(),
            workspace: None,
            path: path.into(),
            kind: crate::catalog::Kind::Status,
            value: Value::from(v),
            ts_ms: 0,
            full_sync: false,
            more: Vec::new(),
        }
    }

    const PC: &str = "RoomAnalytics.PeopleCount.Current";
    const T: &str = "RoomAnalytics.AmbientTemperature";

    fn throttle() -> Throttle {
        Throttle::new(&[PathFilter {
            pattern: PC.into(),
            deadband: None,
            min_interval: Some(Duration::from_secs(10)),
        }])
    }

    #[test]
    fn at_most_one_value_per_interval_and_always_the_latest() {
        let mut t = throttle();
        let t0 = Instant::now();
        let (a, b, c) = (
            ev("room-1", PC, 1),
            ev("room-1", PC, 2),
            ev("room-1", PC, 3),
        );
        t.queued(1, &a);
        assert_eq!(t.turn(1, &a, t0), Turn::Now);
        t.sent(&a, t0);
        // Two more within the interval: the older is superseded, the newest waits.
        t.queued(2, &b);
        t.queued(3, &c);
        assert_eq!(t.turn(2, &b, t0), Turn::Superseded);
        let due = t0 + Duration::from_secs(10);
        assert_eq!(t.turn(3, &c, t0 + Duration::from_secs(1)), Turn::At(due));
        // The final value goes out when its turn comes.
        assert_eq!(t.turn(3, &c, due), Turn::Now);
        // Other devices and other paths are not held.
        let other = ev("room-2", PC, 5);
        t.queued(4, &other);
        assert_eq!(t.turn(4, &other, t0), Turn::Now);
        assert_eq!(t.turn(5, &ev("room-1", T, 21), t0), Turn::Now);
    }

    #[test]
    fn no_rule_means_nothing_held() {
        let t = Throttle::new(&[]);
        assert!(t.is_off());
        assert_eq!(t.turn(1, &ev("room-1", PC, 1), Instant::now()), Turn::Now);
    }
}
