//! Which queued message is sent next: per-device lanes served round-robin (fairness), at
//! most one request in flight per device (order under retries), an in-flight limit, retry
//! backoff per device, and a webhook-wide pause (Retry-After, open circuit). Plain,
//! clock-injected logic: no I/O, tested without sockets.

use super::backoff::Backoff;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Consecutive failures after which the webhook pauses as a whole (circuit open).
pub const CIRCUIT_THRESHOLD: u32 = 5;

struct Lane<T> {
    items: VecDeque<T>,
    busy: bool,
    attempts: u32,
}

/// What a finished request means for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the item leaves the queue.
    Done,
    /// Failed: retry the same item later; `retry_after` pauses the whole webhook.
    Retry {
        /// Receiver-requested pause.
        retry_after: Option<Duration>,
    },
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Sending normally.
    Closed,
    /// Paused after repeated failures, until the given time.
    Open,
    /// Paused time is over; one probe request at a time until one succeeds.
    HalfOpen,
}

/// The scheduler of one webhook.
pub struct Scheduler<T> {
    lanes: HashMap<Arc<str>, Lane<T>>,
    ready: VecDeque<Arc<str>>,
    waiting: BTreeSet<(Instant, Arc<str>)>,
    in_flight: usize,
    limit: usize,
    len: usize,
    paused_until: Option<Instant>,
    consecutive_failures: u32,
    circuit: Circuit,
    backoff: Backoff,
}

impl<T: Clone> Scheduler<T> {
    /// An empty scheduler.
    pub fn new(limit: usize, backoff: Backoff) -> Self {
        Self {
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            waiting: BTreeSet::new(),
            in_flight: 0,
            limit: limit.max(1),
            len: 0,
            paused_until: None,
            consecutive_failures: 0,
            circuit: Circuit::Closed,
            backoff,
        }
    }

    /// Items held (queued or in flight).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The circuit breaker's state.
    pub fn circuit(&self) -> Circuit {
        self.circuit
    }

    /// Appends an item to its device's lane (items of one device keep their order).
    pub fn push(&mut self, device: &str, item: T) {
        self.len += 1;
        if let Some(lane) = self.lanes.get_mut(device) {
            lane.items.push_back(item);
            return;
        }
        let key: Arc<str> = Arc::from(device);
        self.lanes.insert(
            key.clone(),
            Lane {
                items: VecDeque::from([item]),
                busy: false,
                attempts: 0,
            },
        );
        self.ready.push_back(key);
    }

    fn effective_limit(&self) -> usize {
        match self.circuit {
            Circuit::HalfOpen => 1,
            _ => self.limit,
        }
    }

    /// The next item to send now, if any: marks its device busy.
    pub fn next(&mut self, now: Instant) -> Option<(Arc<str>, T)> {
        if let Some(until) = self.paused_until {
            if now < until {
                return None;
            }
            self.paused_until = None;
            if self.circuit == Circuit::Open {
                self.circuit = Circuit::HalfOpen;
            }
        }
        while let Some(first) = self.waiting.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, dev)) = self.waiting.pop_first() {
                self.ready.push_back(dev);
            }
        }
        if self.in_flight >= self.effective_limit() {
            return None;
        }
        let device = self.ready.pop_front()?;
        let lane = self.lanes.get_mut(&device)?;
        let item = lane.items.front()?.clone();
        lane.busy = true;
        self.in_flight += 1;
        Some((device, item))
    }

    /// Records the end of the request for `device`'s head item; returns that item when it
    /// is done (to be removed from the store). `unit` is a uniform draw in [0, 1) for jitter.
    pub fn complete(
        &mut self,
        device: &str,
        verdict: Verdict,
        now: Instant,
        unit: f64,
    ) -> Option<T> {
        let lane = self.lanes.get_mut(device)?;
        if !lane.busy {
            return None;
        }
        lane.busy = false;
        self.in_flight = self.in_flight.saturating_sub(1);
        let key: Arc<str> = self.lanes.get_key_value(device)?.0.clone();
        match verdict {
            Verdict::Done => {
                self.consecutive_failures = 0;
                self.circuit = Circuit::Closed;
                let lane = self.lanes.get_mut(device)?;
                lane.attempts = 0;
                let item = lane.items.pop_front();
                self.len = self.len.saturating_sub(1);
                if lane.items.is_empty() {
                    self.lanes.remove(device);
                } else {
                    self.ready.push_back(key);
                }
                item
            }
            Verdict::Retry { retry_after } => {
                let lane = self.lanes.get_mut(device)?;
                lane.attempts += 1;
                let at = now + self.backoff.delay(lane.attempts, unit);
                self.waiting.insert((at, key));
                self.consecutive_failures += 1;
                let mut pause = retry_after.map(|d| now + d);
                if self.circuit == Circuit::HalfOpen
                    || self.consecutive_failures >= CIRCUIT_THRESHOLD
                {
                    self.circuit = Circuit::Open;
                    let step = self.consecutive_failures.saturating_sub(CIRCUIT_THRESHOLD) + 1;
                    let open_until = now + self.backoff.delay(step, unit);
                    pause = Some(pause.map_or(open_until, |p| p.max(open_until)));
                }
                if let Some(p) = pause {
                    self.paused_until = Some(self.paused_until.map_or(p, |q| q.max(p)));
                }
                None
            }
        }
    }

    /// When `next` may have something new to give (a backoff or pause ends).
    pub fn next_wakeup(&self) -> Option<Instant> {
        // While paused nothing goes before the pause ends, whatever backoffs end earlier.
        self.paused_until
            .or_else(|| self.waiting.first().map(|(t, _)| *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(limit: usize) -> Scheduler<u32> {
        Scheduler::new(
            limit,
            Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn one_in_flight_per_device_and_round_robin() {
        let mut s = sched(10);
        let t = Instant::now();
        for i in 0..3 {
            s.push("a", i);
        }
        s.push("b", 100);
        assert_eq!(s.next(t).map(|x| x.1), Some(0));
        assert_eq!(s.next(t).map(|x| x.1), Some(100));
        // "a" is busy and "b" is busy: nothing else may go.
        assert_eq!(s.next(t), None);
        assert_eq!(s.complete("a", Verdict::Done, t, 0.5), Some(0));
        assert_eq!(s.next(t).map(|x| x.1), Some(1));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_failed_item_is_retried_first_after_its_backoff() {
        let mut s = sched(10);
        let t = Instant::now();
        s.push("a", 1);
        s.push("a", 2);
        assert_eq!(s.next(t).map(|x| x.1), Some(1));
        s.complete("a", Verdict::Retry { retry_after: None }, t, 0.5);
        assert_eq!(s.next(t), None);
        let wake = s.next_wakeup().unwrap();
        assert_eq!(wake, t + Duration::from_millis(500));
        assert_eq!(s.next(wake).map(|x| x.1), Some(1));
    }

    #[test]
    fn the_in_flight_limit_holds() {
        let mut s = sched(2);
        let t = Instant::now();
        for d in ["a", "b", "c"] {
            s.push(d, 0);
        }
        assert!(s.next(t).is_some());
        assert!(s.next(t).is_some());
        assert!(s.next(t).is_none());
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn retry_after_pauses_the_whole_webhook() {
        let mut s = sched(10);
        let t = Instant::now();
        s.push("a", 1);
        s.push("b", 2);
        s.next(t);
        s.complete(
            "a",
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(3)),
            },
            t,
            0.0,
        );
        assert_eq!(s.next(t + Duration::from_secs(2)), None);
        assert!(s.next(t + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn repeated_failures_open_the_circuit_then_probe_one_at_a_time() {
        let mut s = sched(10);
        let mut t = Instant::now();
        for d in 0..10 {
            s.push(&format!("d{d}"), d);
        }
        for _ in 0..CIRCUIT_THRESHOLD {
            let (dev, _) = s.next(t).unwrap();
            s.complete(&dev, Verdict::Retry { retry_after: None }, t, 0.9);
        }
        assert_eq!(s.circuit(), Circuit::Open);
        assert!(s.next(t).is_none());
        t += Duration::from_secs(120);
        let (dev, _) = s.next(t).unwrap();
        assert_eq!(s.circuit(), Circuit::HalfOpen);
        assert!(s.next(t).is_none(), "only one probe while half-open");
        s.complete(&dev, Verdict::Done, t, 0.5);
        assert_eq!(s.circuit(), Circuit::Closed);
        assert!(s.next(t).is_some() && s.next(t).is_some());
    }
}
