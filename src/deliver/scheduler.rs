//! Which queued messages go out next: per-device lanes served round-robin (fairness), at
//! most one request in flight per lane (per-device order under retries), retry backoff per
//! lane, a webhook-wide pause (Retry-After, slow auth retries) and a circuit breaker (never
//! opened by a 429: that receiver is up, its pause says when to come back).
//! Request concurrency and rate are the caller's (see `concurrency.rs`, `rate.rs`).
//! Plain, clock-injected logic: no I/O, tested without sockets.

use super::backoff::Backoff;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Lane<T> {
    items: VecDeque<T>,
    /// Head items handed out in the request in flight (0: idle).
    taken: usize,
    attempts: u32,
}

/// How a finished request went, for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The items leave the queue (delivered, or moved to the dead letters).
    Done,
    /// Failed: retry the same items later; `pause` holds the whole webhook that long.
    Retry {
        /// Webhook-wide pause (Retry-After, slow retry after 401/403).
        pause: Option<Duration>,
    },
    /// Refused for now by a receiver that is up (429): `pause` (its `Retry-After`) holds
    /// the whole webhook and is when the items go again; without one they back off like a
    /// retry. Never counted towards the circuit breaker: the receiver answers.
    Busy {
        /// Webhook-wide pause (Retry-After).
        pause: Option<Duration>,
    },
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Circuit {
    /// Sending normally.
    Closed,
    /// Paused after repeated failures.
    Open,
    /// The pause is over; one probe request at a time until one succeeds.
    HalfOpen,
}

/// The longest the circuit stays open between probes, whatever `retry_max` is: after an
/// outage every gateway of a fleet notices the recovery within this long (the probes are
/// jittered over 0 … this), instead of some minutes later.
pub(crate) const PROBE_MAX: Duration = Duration::from_secs(10);

/// The scheduler of one webhook.
pub(crate) struct Scheduler<T> {
    lanes: HashMap<Arc<str>, Lane<T>>,
    ready: VecDeque<Arc<str>>,
    waiting: BTreeSet<(Instant, Arc<str>)>,
    len: usize,
    paused_until: Option<Instant>,
    consecutive_failures: u32,
    threshold: u32,
    circuit: Circuit,
    backoff: Backoff,
}

impl<T: Clone> Scheduler<T> {
    /// An empty scheduler; the circuit opens after `threshold` failed requests in a row.
    pub(crate) fn new(backoff: Backoff, threshold: u32) -> Self {
        Self {
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            waiting: BTreeSet::new(),
            len: 0,
            paused_until: None,
            consecutive_failures: 0,
            threshold: threshold.max(1),
            circuit: Circuit::Closed,
            backoff,
        }
    }

    /// Items held (queued or in flight).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The circuit breaker's state.
    pub(crate) fn circuit(&self) -> Circuit {
        self.circuit
    }

    /// Failed requests in a row.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Until when the whole webhook is paused, if it is.
    pub(crate) fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|p| *p > now)
    }

    /// Appends an item to its lane (items of one lane keep their order).
    pub(crate) fn push(&mut self, lane: &str, item: T) {
        self.len += 1;
        if let Some(l) = self.lanes.get_mut(lane) {
            l.items.push_back(item);
            return;
        }
        let key: Arc<str> = Arc::from(lane);
        self.lanes.insert(
            key.clone(),
            Lane {
                items: VecDeque::from([item]),
                taken: 0,
                attempts: 0,
            },
        );
        self.ready.push_back(key);
    }

    /// Whether something could be sent now (ignoring concurrency and rate).
    pub(crate) fn has_ready(&mut self, now: Instant) -> bool {
        self.release(now);
        self.paused_until.is_none() && !self.ready.is_empty()
    }

    fn release(&mut self, now: Instant) {
        if let Some(until) = self.paused_until {
            if now < until {
                return;
            }
            self.paused_until = None;
            if self.circuit == Circuit::Open {
                self.circuit = Circuit::HalfOpen;
                // The probe goes now, not when a lane's own backoff (long after many failed
                // probes) ends: the lane that waits least carries it.
                if self.ready.is_empty() {
                    if let Some((_, lane)) = self.waiting.pop_first() {
                        self.ready.push_back(lane);
                    }
                }
            }
        }
        while let Some(first) = self.waiting.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, lane)) = self.waiting.pop_first() {
                self.ready.push_back(lane);
            }
        }
    }

    /// Up to `max` consecutive head items of the next ready lane; marks the lane busy.
    pub(crate) fn next(&mut self, now: Instant, max: usize) -> Option<(Arc<str>, Vec<T>)> {
        self.release(now);
        if self.paused_until.is_some() {
            return None;
        }
        let key = self.ready.pop_front()?;
        let lane = self.lanes.get_mut(&key)?;
        let n = max.max(1).min(lane.items.len());
        lane.taken = n;
        Some((key, lane.items.iter().take(n).cloned().collect()))
    }

    /// Hands back all but the first `keep` items taken from a lane (they did not fit); with
    /// `keep == 0` the lane is idle again and first in line.
    pub(crate) fn give_back(&mut self, lane: &Arc<str>, keep: usize) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.taken = keep.min(l.taken);
            if l.taken == 0 {
                self.ready.push_front(lane.clone());
            }
        }
    }

    /// Takes the first `n` items handed out from a lane out of the queue without a request
    /// (expired); failure counts and the circuit are untouched.
    pub(crate) fn discard(&mut self, lane: &Arc<str>, n: usize) -> Vec<T> {
        let mut out = Vec::new();
        let Some(l) = self.lanes.get_mut(lane) else {
            return out;
        };
        for _ in 0..n.min(l.taken) {
            if let Some(item) = l.items.pop_front() {
                out.push(item);
                self.len -= 1;
            }
        }
        l.taken = 0;
        if l.items.is_empty() {
            self.lanes.remove(lane);
        } else {
            self.ready.push_front(lane.clone());
        }
        out
    }

    /// Takes the items of a lane that are not handed out and match `pred` out of the queue
    /// without a request (superseded); the lane keeps its place, or leaves if it is empty.
    pub(crate) fn remove_untaken(&mut self, lane: &str, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let Some(l) = self.lanes.get_mut(lane) else {
            return Vec::new();
        };
        let taken = l.taken;
        let mut out = Vec::new();
        let mut i = taken;
        while i < l.items.len() {
            if pred(&l.items[i]) {
                if let Some(item) = l.items.remove(i) {
                    out.push(item);
                }
            } else {
                i += 1;
            }
        }
        self.len -= out.len();
        if l.items.is_empty() {
            // Never a ready or waiting key without a lane: `next` would hand out nothing.
            self.lanes.remove(lane);
            self.ready.retain(|k| &**k != lane);
            self.waiting.retain(|(_, k)| &**k != lane);
        }
        out
    }

    /// Records the end of one request that carried items of `lanes`; returns the items
    /// that left the queue (on `Done`). `unit` is a uniform draw in [0, 1) for jitter.
    pub(crate) fn complete(
        &mut self,
        lanes: &[Arc<str>],
        verdict: Verdict,
        now: Instant,
        unit: f64,
    ) -> Vec<T> {
        let mut out = Vec::new();
        match verdict {
            Verdict::Done => {
                self.consecutive_failures = 0;
                if self.circuit != Circuit::Closed {
                    // The receiver is back: the other lanes' backoff was the outage's, not
                    // theirs (long after many probes); they go again now.
                    while let Some((_, key)) = self.waiting.pop_first() {
                        if let Some(lane) = self.lanes.get_mut(&key) {
                            lane.attempts = 0;
                        }
                        self.ready.push_back(key);
                    }
                }
                self.circuit = Circuit::Closed;
                for key in lanes {
                    let Some(lane) = self.lanes.get_mut(key) else {
                        continue;
                    };
                    let n = std::mem::take(&mut lane.taken);
                    lane.attempts = 0;
                    for _ in 0..n {
                        if let Some(item) = lane.items.pop_front() {
                            out.push(item);
                            self.len -= 1;
                        }
                    }
                    if lane.items.is_empty() {
                        self.lanes.remove(key);
                    } else {
                        self.ready.push_back(key.clone());
                    }
                }
            }
            Verdict::Busy { pause: Some(pause) } => {
                // The receiver said when: each lane goes again then, no backoff of its own.
                self.wait(lanes, |_| now + pause);
                self.hold(now + pause);
            }
            // A probe answered 429 (the circuit not closed): the receiver is back, and its
            // lane goes again after the first step of its backoff, not the outage's longest.
            Verdict::Busy { pause: None } => {
                let fresh = self.circuit != Circuit::Closed;
                self.back_off(lanes, now, unit, fresh)
            }
            Verdict::Retry { pause } => {
                self.back_off(lanes, now, unit, false);
                self.consecutive_failures += 1;
                let mut until = pause.map(|d| now + d);
                if self.circuit == Circuit::HalfOpen || self.consecutive_failures >= self.threshold
                {
                    self.circuit = Circuit::Open;
                    let step = self.consecutive_failures.saturating_sub(self.threshold) + 1;
                    let probe = Backoff {
                        max: self.backoff.max.min(PROBE_MAX),
                        ..self.backoff
                    };
                    let open_until = now + probe.delay(step, unit);
                    until = Some(until.map_or(open_until, |p| p.max(open_until)));
                }
                if let Some(p) = until {
                    self.hold(p);
                }
            }
        }
        out
    }

    /// The `lanes` of a request that failed back off: each waits its retry backoff, which
    /// grows with its attempts (counted from none again when `fresh`).
    fn back_off(&mut self, lanes: &[Arc<str>], now: Instant, unit: f64, fresh: bool) {
        let backoff = self.backoff;
        self.wait(lanes, |attempts| {
            *attempts = if fresh { 1 } else { *attempts + 1 };
            now + backoff.delay(*attempts, unit)
        });
    }

    /// Holds the whole webhook until `until` at least.
    fn hold(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |q| q.max(until)));
    }

    /// The `lanes` of a request that did not go through wait until `until(attempts)`.
    fn wait(&mut self, lanes: &[Arc<str>], mut until: impl FnMut(&mut u32) -> Instant) {
        for key in lanes {
            let Some(lane) = self.lanes.get_mut(key) else {
                continue;
            };
            lane.taken = 0;
            let at = until(&mut lane.attempts);
            self.waiting.insert((at, key.clone()));
        }
    }

    /// When `next` may have something new to give (a backoff or pause ends).
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        // While paused nothing goes before the pause ends, whatever backoffs end earlier.
        self.paused_until
            .or_else(|| self.waiting.first().map(|(t, _)| *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> Scheduler<u32> {
        Scheduler::new(
            Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            5,
        )
    }

    fn lanes(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn one_request_per_device_and_round_robin() {
        let mut s = sched();
        let t = Instant::now();
        for i in 0..3 {
            s.push("a", i);
        }
        s.push("b", 100);
        assert_eq!(s.next(t, 1).map(|x| x.1), Some(vec![0]));
        assert_eq!(s.next(t, 1).map(|x| x.1), Some(vec![100]));
        // Both devices are busy: nothing else may go.
        assert_eq!(s.next(t, 1), None);
        assert_eq!(s.complete(&lanes(&["a"]), Verdict::Done, t, 0.5), vec![0]);
        assert_eq!(s.next(t, 1).map(|x| x.1), Some(vec![1]));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn batches_take_consecutive_items_of_a_device() {
        let mut s = sched();
        let t = Instant::now();
        for i in 0..5 {
            s.push("a", i);
        }
        let (lane, items) = s.next(t, 3).unwrap();
        assert_eq!(items, vec![0, 1, 2]);
        s.give_back(&lane, 2);
        assert_eq!(
            s.complete(&lanes(&["a"]), Verdict::Done, t, 0.5),
            vec![0, 1]
        );
        assert_eq!(s.next(t, 10).map(|x| x.1), Some(vec![2, 3, 4]));
    }

    #[test]
    fn a_lane_given_back_whole_or_discarded_is_served_again() {
        let mut s = sched();
        let t = Instant::now();
        for i in 0..3 {
            s.push("a", i);
        }
        let (lane, _) = s.next(t, 1).unwrap();
        s.give_back(&lane, 0);
        let (lane, items) = s.next(t, 2).unwrap();
        assert_eq!(items, vec![0, 1]);
        assert_eq!(s.discard(&lane, 1), vec![0]);
        assert_eq!(s.next(t, 5).map(|x| x.1), Some(vec![1, 2]));
    }

    #[test]
    fn a_failed_item_is_retried_first_after_its_backoff() {
        let mut s = sched();
        let t = Instant::now();
        s.push("a", 1);
        s.push("a", 2);
        assert_eq!(s.next(t, 1).map(|x| x.1), Some(vec![1]));
        s.complete(&lanes(&["a"]), Verdict::Retry { pause: None }, t, 0.5);
        assert_eq!(s.next(t, 1), None);
        let wake = s.next_wakeup().unwrap();
        assert_eq!(wake, t + Duration::from_millis(500));
        assert_eq!(s.next(wake, 1).map(|x| x.1), Some(vec![1]));
    }

    #[test]
    fn a_pause_holds_the_whole_webhook() {
        let mut s = sched();
        let t = Instant::now();
        s.push("a", 1);
        s.push("b", 2);
        s.next(t, 1);
        s.complete(
            &lanes(&["a"]),
            Verdict::Retry {
                pause: Some(Duration::from_secs(3)),
            },
            t,
            0.0,
        );
        assert!(!s.has_ready(t + Duration::from_secs(2)));
        assert_eq!(s.next(t + Duration::from_secs(2), 1), None);
        assert!(s.next(t + Duration::from_secs(3), 1).is_some());
    }

    #[test]
    fn repeated_failures_open_the_circuit_then_half_open() {
        let mut s = sched();
        let mut t = Instant::now();
        for d in 0..10 {
            s.push(&format!("d{d}"), d);
        }
        for _ in 0..5 {
            let (lane, _) = s.next(t, 1).unwrap();
            s.complete(&[lane], Verdict::Retry { pause: None }, t, 0.9);
        }
        assert_eq!(s.circuit(), Circuit::Open);
        assert!(s.next(t, 1).is_none());
        t += Duration::from_secs(120);
        let (lane, _) = s.next(t, 1).unwrap();
        assert_eq!(s.circuit(), Circuit::HalfOpen);
        s.complete(&[lane], Verdict::Done, t, 0.5);
        assert_eq!(s.circuit(), Circuit::Closed);
        assert_eq!(s.consecutive_failures(), 0);
    }

    /// A receiver that answers 429 is up: however many in a row, the circuit stays closed
    /// (a half-open one stays half-open), and a lane goes again when the pause ends, not
    /// after a backoff that grew with each refusal.
    #[test]
    fn refusals_for_now_pause_but_never_open_the_circuit() {
        let mut s = sched();
        let mut t = Instant::now();
        s.push("a", 1);
        let pause = Duration::from_secs(1);
        for _ in 0..20 {
            let (lane, _) = s.next(t, 1).expect("ready when the pause ends");
            s.complete(&[lane], Verdict::Busy { pause: Some(pause) }, t, 0.999);
            assert_eq!(s.circuit(), Circuit::Closed);
            assert!(s.next(t + pause / 2, 1).is_none(), "held by the pause");
            t += pause;
        }
        assert_eq!(s.consecutive_failures(), 0);
        // Without a Retry-After the lane backs off, still without opening the circuit.
        let (lane, _) = s.next(t, 1).unwrap();
        s.complete(&[lane], Verdict::Busy { pause: None }, t, 0.5);
        assert_eq!((s.circuit(), s.next(t, 1)), (Circuit::Closed, None));
        // Half-open (after an outage), a 429 to the probe leaves it half-open: the next
        // request after the pause probes again, without another open period.
        for _ in 0..5 {
            t = s.next_wakeup().unwrap();
            let (lane, _) = s.next(t, 1).unwrap();
            s.complete(&[lane], Verdict::Retry { pause: None }, t, 0.5);
        }
        assert_eq!(s.circuit(), Circuit::Open);
        t = s.next_wakeup().unwrap();
        let (lane, _) = s.next(t, 1).unwrap();
        assert_eq!(s.circuit(), Circuit::HalfOpen);
        s.complete(&[lane], Verdict::Busy { pause: Some(pause) }, t, 0.999);
        assert_eq!(s.circuit(), Circuit::HalfOpen);
        assert_eq!(s.next_wakeup(), Some(t + pause));
        // Without a Retry-After, after a long outage (the lane's backoff at its longest):
        // probed again within the backoff's first step, not after minutes.
        for _ in 0..12 {
            t = s.next_wakeup().unwrap();
            let (lane, _) = s.next(t, 1).unwrap();
            s.complete(&[lane], Verdict::Retry { pause: None }, t, 0.999);
        }
        t = s.next_wakeup().unwrap();
        let (lane, _) = s.next(t, 1).unwrap();
        assert_eq!(s.circuit(), Circuit::HalfOpen);
        s.complete(&[lane], Verdict::Busy { pause: None }, t, 0.999);
        let again = s.next_wakeup().unwrap() - t;
        assert!(again <= Duration::from_secs(1), "{again:?}");
        assert_eq!(s.circuit(), Circuit::HalfOpen);
    }

    #[test]
    fn an_open_circuit_probes_within_probe_max_and_its_close_releases_every_lane() {
        let mut s = Scheduler::new(
            Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            2,
        );
        let mut t = Instant::now();
        for d in 0..3 {
            s.push(&format!("d{d}"), d);
        }
        // A long outage: many failed probes; the open periods stay within PROBE_MAX.
        for _ in 0..30 {
            let Some((lane, _)) = s.next(t, 1) else {
                t = s.next_wakeup().unwrap();
                continue;
            };
            s.complete(&[lane], Verdict::Retry { pause: None }, t, 0.999);
            if let Some(until) = s.paused_until(t) {
                assert!(until - t <= PROBE_MAX, "{:?}", until - t);
            }
            t = s.next_wakeup().unwrap();
        }
        // The probe succeeds: every other lane goes now, not after its long backoff.
        let (lane, _) = s.next(t, 1).unwrap();
        assert_eq!(s.circuit(), Circuit::HalfOpen);
        s.complete(&[lane], Verdict::Done, t, 0.5);
        assert_eq!(s.circuit(), Circuit::Closed);
        let mut now = Vec::new();
        while let Some((lane, items)) = s.next(t, 1) {
            now.extend(items);
            s.complete(&[lane], Verdict::Done, t, 0.5);
        }
        assert_eq!(now.len(), 2, "{now:?}");
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn untaken_items_can_leave_from_the_middle_and_an_emptied_lane_leaves() {
        let now = Instant::now();
        let mut s = sched();
        for i in 1..=4 {
            s.push("a", i);
        }
        s.push("b", 10);
        let (lane, items) = s.next(now, 1).unwrap();
        assert_eq!((&*lane, items), ("a", vec![1]));
        // The item in flight stays, whatever the predicate says.
        assert_eq!(s.remove_untaken("a", |x| *x == 1 || *x == 3), vec![3]);
        assert_eq!(s.len(), 4);
        s.complete(&[lane], Verdict::Done, now, 0.5);
        assert_eq!(s.next(now, 10).unwrap().1, vec![10]);
        // Lane b is handed out; lane a is next with what is left, in order.
        let (a, items) = s.next(now, 10).unwrap();
        assert_eq!(items, vec![2, 4]);
        s.give_back(&a, 0);
        assert_eq!(s.remove_untaken("a", |_| true), vec![2, 4]);
        assert_eq!(s.len(), 1);
        // No key of the gone lane is left to hand out nothing.
        assert!(s.next(now, 10).is_none());
        assert!(s.remove_untaken("gone", |_| true).is_empty());
    }
}
