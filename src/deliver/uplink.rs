//! The uplink's byte budget (`[gateway] uplink_bytes_per_s`), shared by every webhook:
//! what a request costs on the uplink ([`request_bytes`]: its head and body plus an
//! estimate of the TLS and TCP/IP overhead), when a request may go (a deficit rule, so the
//! budget is never exceeded by more than one request in any second), and which waiting
//! request goes next (strict priority between `priority` levels; weighted fair queuing by
//! bytes among the webhooks of one level, each weighted by its `uplink_weight`).
//!
//! [`Uplink`] is that decision as plain, clock-injected logic with its own tests;
//! [`Arbiter`] is the thin async wrapper the supervisor hands to every delivery loop: a
//! request waits in it right before it goes out (after its webhook's `rate_limit` and
//! adaptive in-flight limit), waiters are granted in order by a task woken by a timer, and
//! a waiter dropped while it waits (its loop stopped) leaves without a trace.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// What a request costs.

/// Largest TLS record payload (TLS 1.3 and 1.2: 16 KiB of plaintext per record).
const TLS_RECORD_MAX: u64 = 16 * 1024;
/// Per TLS record: the 5-byte record header, TLS 1.3's 1-byte inner content type and the
/// 16-byte AEAD tag (AES-GCM or ChaCha20-Poly1305). TLS 1.2 with AES-GCM costs 29 (an
/// explicit 8-byte nonce instead of the content type); 1.3 is what receivers speak now.
pub const TLS_RECORD_OVERHEAD: u64 = 22;
/// TCP payload per segment: the MSS of a 1500-byte Ethernet MTU with TCP timestamps.
const TCP_MSS: u64 = 1448;
/// Per TCP segment: the IPv4 header (20) and the TCP header with timestamps (32). Link-layer
/// framing (Ethernet, PPP, a cellular modem's) is not counted: it differs by uplink.
pub const TCP_SEGMENT_OVERHEAD: u64 = 52;
/// Per request, beside its own segments: the one bare segment acknowledging the
/// receiver's answer (a small answer is one segment, acknowledged once).
pub const ANSWER_ACK: u64 = 52;

/// The estimate of what one request puts on the uplink: its HTTP/1.1 head (`head` bytes)
/// and body as sent (`body` bytes: compressed when it goes compressed), in TLS records of
/// at most 16 KiB with [`TLS_RECORD_OVERHEAD`] each, in TCP segments of [`TCP_MSS`] with
/// [`TCP_SEGMENT_OVERHEAD`] each, plus [`ANSWER_ACK`]. A new connection's handshakes (TCP,
/// TLS: about 0.6 KiB up) are not counted: connections are kept alive and reused.
///
/// A 250-byte status message with a 350-byte head: 600 + 22 + 52 + 52 = 726 bytes.
pub fn request_bytes(head: u64, body: u64) -> u64 {
    let plain = head + body;
    let tls = plain + plain.div_ceil(TLS_RECORD_MAX).max(1) * TLS_RECORD_OVERHEAD;
    tls + tls.div_ceil(TCP_MSS).max(1) * TCP_SEGMENT_OVERHEAD + ANSWER_ACK
}

/// The length of an HTTP/1.1 request head as hyper writes it: `POST <target> HTTP/1.1`,
/// each header as `name: value`, each line and the head ended by CRLF.
pub fn head_bytes<'a>(
    method: &str,
    target: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u64 {
    let line = method.len() + 1 + target.len() + " HTTP/1.1\r\n".len();
    let fields: usize = headers
        .into_iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    (line + fields + 2) as u64
}

// ---------------------------------------------------------------------------------------
// The decision.

/// How far the balance may rise above zero: 5 ms of the budget. A waiter is woken by a
/// timer when the balance reaches zero; this absorbs the timer's lateness (up to a
/// millisecond, more on a busy runtime) so that it does not cost throughput, and keeps
/// what the budget can be exceeded by in any second at one request plus 0.5 % of it.
const SLACK: Duration = Duration::from_millis(5);

/// Longest wait [`Uplink::next_grant`] answers (the arbiter looks again after it).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A request's place in the arbitration: its webhook and that webhook's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    /// The webhook (its store id).
    pub(crate) id: u32,
    /// `priority`, 0–9: while the budget is the limit, a higher one goes first.
    pub(crate) priority: u8,
    /// `uplink_weight` (1 or more): its share of the budget among the webhooks of its
    /// priority, by bytes.
    pub(crate) weight: u32,
}

/// The answer to [`Uplink::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Go now (charged).
    Now,
    /// Wait for [`Uplink::grants`] to name this ticket.
    Wait(u64),
}

/// A request waiting for the budget.
#[derive(Debug, Clone)]
struct Waiter {
    ticket: u64,
    flow: u32,
    bytes: u64,
    /// Its tags in the weighted fair queue of its level: virtual start and finish.
    start: f64,
    finish: f64,
}

/// The requests of one priority level, in a self-clocked fair queue (Golestani's SCFQ):
/// a request of `b` bytes of a webhook of weight `w` is tagged to finish at
/// `max(clock, the webhook's last finish) + b / w`; the smallest finish goes first and
/// moves the clock to it. A webhook that waits longer gets no credit for it: its next
/// request starts at the clock, so it cannot burst ahead of the others afterwards.
#[derive(Debug, Default)]
struct Level {
    clock: f64,
    last: HashMap<u32, f64>,
    waiting: Vec<Waiter>,
}

/// The byte budget: a deficit rule and the order of the waiting requests. A request may
/// go when the balance is at least zero; it takes its bytes off the balance (which may go
/// below zero by as much), and the balance grows back at the budget's rate, never above
/// [`SLACK`]'s worth. So in any second at most the budget, [`SLACK`]'s worth and one
/// request go out, and never a second's worth saved up for a burst.
#[derive(Debug)]
pub(crate) struct Uplink {
    /// Bytes per second; `None`: no budget (nothing waits).
    rate: Option<f64>,
    balance: f64,
    at: Instant,
    /// By priority; only levels with waiters.
    levels: BTreeMap<u8, Level>,
    next_ticket: u64,
}

impl Uplink {
    /// A budget of `rate` bytes per second (`None` or 0: none).
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0).map(|r| r as f64),
            balance: 0.0,
            at: now,
            levels: BTreeMap::new(),
            next_ticket: 0,
        }
    }

    fn cap(&self) -> f64 {
        self.rate.map_or(0.0, |r| r * SLACK.as_secs_f64())
    }

    fn refill(&mut self, now: Instant) {
        if let Some(r) = self.rate {
            let dt = now.saturating_duration_since(self.at).as_secs_f64();
            self.balance = (self.balance + dt * r).min(self.cap());
        }
        self.at = self.at.max(now);
    }

    /// A new budget (a reload): what is owed stays owed, repaid at the new rate; `None`
    /// lets every waiter go (at the next [`grants`](Self::grants)).
    pub(crate) fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        self.refill(now);
        self.rate = rate.filter(|r| *r > 0).map(|r| r as f64);
        self.balance = if self.rate.is_some() {
            self.balance.min(self.cap())
        } else {
            0.0
        };
    }

    /// Requests waiting.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.levels.values().map(|l| l.waiting.len()).sum()
    }

    /// A request of `bytes` of `flow` wants to go: at once when there is no budget, or
    /// nothing waits and the balance allows; else it waits its turn.
    pub(crate) fn request(&mut self, flow: Flow, bytes: u64, now: Instant) -> Ask {
        if self.rate.is_none() {
            return Ask::Now;
        }
        self.refill(now);
        if self.levels.is_empty() && self.balance >= 0.0 {
            self.balance -= bytes as f64;
            return Ask::Now;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let level = self.levels.entry(flow.priority).or_default();
        let start = level
            .clock
            .max(level.last.get(&flow.id).copied().unwrap_or(0.0));
        let finish = start + bytes as f64 / f64::from(flow.weight.max(1));
        level.last.insert(flow.id, finish);
        level.waiting.push(Waiter {
            ticket,
            flow: flow.id,
            bytes,
            start,
            finish,
        });
        Ask::Wait(ticket)
    }

    /// The waiting requests that go now, in order, each with its bytes (charged): the best
    /// one while the balance is at least zero (every one when there is no budget). The best
    /// is of the highest priority waiting, and among those the earliest fair-queue finish.
    pub(crate) fn grants(&mut self, now: Instant) -> Vec<(u64, u64)> {
        self.refill(now);
        let mut out = Vec::new();
        while self.rate.is_none() || self.balance >= 0.0 {
            let Some(w) = self.take_best() else { break };
            if self.rate.is_some() {
                self.balance -= w.bytes as f64;
            }
            out.push((w.ticket, w.bytes));
        }
        out
    }

    fn take_best(&mut self) -> Option<Waiter> {
        let mut entry = self.levels.last_entry()?;
        let level = entry.get_mut();
        let i = (0..level.waiting.len()).min_by(|&a, &b| {
            let (x, y) = (&level.waiting[a], &level.waiting[b]);
            x.finish.total_cmp(&y.finish).then(x.ticket.cmp(&y.ticket))
        })?;
        let w = level.waiting.swap_remove(i);
        level.clock = level.clock.max(w.finish);
        if level.waiting.is_empty() {
            // Nothing of this level waits: every webhook's last finish is behind the clock,
            // so a fresh level is the same queue.
            entry.remove();
        }
        Some(w)
    }

    /// When the next waiter may go (`None`: nothing waits).
    pub(crate) fn next_grant(&self, now: Instant) -> Option<Instant> {
        if self.levels.is_empty() {
            return None;
        }
        let Some(r) = self.rate else {
            return Some(now);
        };
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let balance = (self.balance + dt * r).min(self.cap());
        if balance >= 0.0 {
            return Some(now);
        }
        let wait = (-balance / r).min(MAX_WAIT.as_secs_f64());
        Some(now + Duration::from_secs_f64(wait))
    }

    /// A waiter leaves before its grant (its delivery loop stopped): `true` if it was
    /// waiting. The budget is untouched; its webhook's next request is tagged as if it
    /// had not been there, unless one of its requests waits behind it.
    pub(crate) fn cancel(&mut self, ticket: u64) -> bool {
        for (&priority, level) in &mut self.levels {
            let Some(i) = level.waiting.iter().position(|w| w.ticket == ticket) else {
                continue;
            };
            let w = level.waiting.swap_remove(i);
            if level.last.get(&w.flow) == Some(&w.finish) {
                level.last.insert(w.flow, w.start);
            }
            if level.waiting.is_empty() {
                self.levels.remove(&priority);
            }
            return true;
        }
        false
    }

    /// A granted request that did not go out after all: its bytes come back (never above
    /// the cap).
    pub(crate) fn refund(&mut self, bytes: u64, now: Instant) {
        if self.rate.is_some() {
            self.refill(now);
            self.balance = (self.balance + bytes as f64).min(self.cap());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The shared arbiter.

/// The budget shared by every delivery loop: [`Uplink`] behind a lock, and a task that
/// grants the waiting requests in order when the balance allows, woken by a timer (when
/// the balance will be back at zero) or by a change (a new waiter, one that left, a new
/// budget). Cheap to clone; the task ends with the last clone.
#[derive(Clone)]
pub(crate) struct Arbiter {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

struct State {
    uplink: Uplink,
    /// How each waiting ticket is told it may go.
    tell: HashMap<u64, oneshot::Sender<()>>,
}

/// Stops the granting task when the last [`Arbiter`] goes.
struct TaskGuard(CancellationToken);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells every waiter that may go now; returns when to look again.
    fn grant(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        for (ticket, bytes) in st.uplink.grants(now) {
            let told = st
                .tell
                .remove(&ticket)
                .is_some_and(|tx| tx.send(()).is_ok());
            if !told {
                st.uplink.refund(bytes, now);
            }
        }
        st.uplink.next_grant(now)
    }
}

impl Arbiter {
    /// An arbiter for a budget of `rate` bytes per second (`None` or 0: none), with its
    /// granting task (spawned on the current runtime).
    pub(crate) fn new(rate: Option<u64>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                uplink: Uplink::new(rate, Instant::now()),
                tell: HashMap::new(),
            }),
            wake: Notify::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(run(shared.clone(), stop.clone()));
        Self {
            shared,
            _task: Arc::new(TaskGuard(stop)),
        }
    }

    /// A new budget, applied at once (a reload): waiters are granted by it from now on.
    pub(crate) fn set_rate(&self, rate: Option<u64>) {
        self.shared.lock().uplink.set_rate(rate, Instant::now());
        self.shared.wake.notify_one();
    }

    /// Waits until a request of `bytes` of `flow` may go; `true` if it had to wait.
    /// Cancellation-safe: dropped while it waits, it leaves the queue (or, granted but not
    /// yet told, gives its bytes back), so it neither costs budget nor holds anyone up.
    pub(crate) async fn acquire(&self, flow: Flow, bytes: u64) -> bool {
        let (ticket, rx) = {
            let mut st = self.shared.lock();
            match st.uplink.request(flow, bytes, Instant::now()) {
                Ask::Now => return false,
                Ask::Wait(ticket) => {
                    let (tx, rx) = oneshot::channel();
                    st.tell.insert(ticket, tx);
                    (ticket, rx)
                }
            }
        };
        self.shared.wake.notify_one();
        let mut waiting = Waiting {
            shared: &self.shared,
            ticket,
            bytes,
            rx,
            done: false,
        };
        // The sender goes only with a grant or with this waiter's own cancellation.
        let _ = (&mut waiting.rx).await;
        waiting.done = true;
        true
    }
}

/// A waiter in [`Arbiter::acquire`]; its drop before the grant is the cancellation.
struct Waiting<'a> {
    shared: &'a Shared,
    ticket: u64,
    bytes: u64,
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.shared.lock();
        if st.uplink.cancel(self.ticket) {
            st.tell.remove(&self.ticket);
        } else if self.rx.try_recv().is_ok() {
            st.uplink.refund(self.bytes, Instant::now());
        }
        drop(st);
        self.shared.wake.notify_one();
    }
}

/// The granting task.
async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = shared.grant(Instant::now());
        let timer = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = timer => {}
            () = shared.wake.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn flow(id: u32, priority: u8, weight: u32) -> Flow {
        Flow {
            id,
            priority,
            weight,
        }
    }

    /// Plays `flows` against a budget of `rate` for `secs` seconds, in 1 ms steps: each
    /// flow keeps `depth` requests waiting of the sizes `size(flow, n)` while `active`
    /// says it is. Returns every grant: (ms, flow, bytes).
    fn play(
        rate: u64,
        flows: &[Flow],
        depth: usize,
        secs: u64,
        size: impl Fn(u32, u64) -> u64,
        active: impl Fn(u32, u64) -> bool,
    ) -> Vec<(u64, u32, u64)> {
        let t0 = Instant::now();
        let mut u = Uplink::new(Some(rate), t0);
        let mut tickets: HashMap<u64, u32> = HashMap::new();
        let mut queued: HashMap<u32, usize> = HashMap::new();
        let mut sent: HashMap<u32, u64> = HashMap::new();
        let mut out = Vec::new();
        for ms in 0..secs * 1000 {
            let now = t0 + Duration::from_millis(ms);
            for f in flows {
                while active(f.id, ms) && queued.get(&f.id).copied().unwrap_or(0) < depth {
                    let n = sent.entry(f.id).or_default();
                    let bytes = size(f.id, *n);
                    *n += 1;
                    match u.request(*f, bytes, now) {
                        Ask::Now => out.push((ms, f.id, bytes)),
                        Ask::Wait(t) => {
                            tickets.insert(t, f.id);
                            *queued.entry(f.id).or_default() += 1;
                        }
                    }
                }
            }
            for (t, bytes) in u.grants(now) {
                let id = tickets.remove(&t).expect("a known ticket");
                *queued.entry(id).or_default() -= 1;
                out.push((ms, id, bytes));
            }
        }
        out
    }

    fn bytes_of(grants: &[(u64, u32, u64)], id: u32, from_ms: u64, to_ms: u64) -> u64 {
        grants
            .iter()
            .filter(|(ms, f, _)| *f == id && (from_ms..to_ms).contains(ms))
            .map(|g| g.2)
            .sum()
    }

    #[test]
    fn the_estimate_counts_head_body_tls_records_and_tcp_segments() {
        // 600 bytes: one record, one segment, and the ACK of the answer.
        assert_eq!(request_bytes(350, 250), 600 + 22 + 52 + 52);
        // 40,000 bytes: three records (16 KiB each at most), 28 segments.
        let tls = 40_000 + 3 * 22;
        assert_eq!(request_bytes(400, 39_600), tls + 28 * 52 + 52);
        let head = head_bytes(
            "POST",
            "/hook",
            [("host", &b"127.0.0.1:8443"[..]), ("content-length", b"2")],
        );
        assert_eq!(
            head as usize,
            "POST /hook HTTP/1.1\r\nhost: 127.0.0.1:8443\r\ncontent-length: 2\r\n\r\n".len()
        );
    }

    #[test]
    fn no_budget_or_a_zero_one_never_waits() {
        for rate in [None, Some(0)] {
            let t0 = Instant::now();
            let mut u = Uplink::new(rate, t0);
            for _ in 0..1000 {
                assert_eq!(u.request(flow(1, 5, 1), 1 << 20, t0), Ask::Now);
            }
            assert_eq!(u.waiting(), 0);
            assert_eq!(u.next_grant(t0), None);
        }
    }

    #[test]
    fn at_most_one_request_over_the_budget_in_any_second() {
        let rate = 20 * KIB;
        let flows = [flow(1, 9, 1), flow(2, 5, 1), flow(3, 5, 3)];
        // Sizes from 200 bytes to 4 KiB, all flows backlogged but for 3 s of silence (a
        // bucket would save a second's worth then, and send it at once after).
        let size = |id: u32, n: u64| 200 + (n * 7919 + u64::from(id) * 104_729) % (4 * KIB - 200);
        let quiet = |_, ms: u64| !(5000..8000).contains(&ms);
        let grants = play(rate, &flows, 4, 20, size, quiet);
        let largest = grants.iter().map(|g| g.2).max().unwrap();
        let cap = rate as f64 * SLACK.as_secs_f64();
        for start in 0..19_000 {
            let in_window: u64 = grants
                .iter()
                .filter(|(ms, _, _)| (start..start + 1000).contains(ms))
                .map(|g| g.2)
                .sum();
            assert!(
                in_window as f64 <= rate as f64 + cap + largest as f64,
                "{in_window} bytes in the second from {start} ms (budget {rate}, largest {largest})"
            );
        }
        // And the budget is used: over the last 12 s, within two requests of 12 s worth.
        let total: u64 = grants.iter().filter(|g| g.0 >= 8000).map(|g| g.2).sum();
        assert!(total + 2 * largest >= 12 * rate, "{total}");
        assert!(total <= 12 * rate + largest + cap as u64, "{total}");
    }

    #[test]
    fn a_higher_priority_goes_first_while_the_budget_is_the_limit() {
        let rate = 10 * KIB;
        let flows = [flow(1, 1, 1), flow(2, 9, 1), flow(3, 5, 1)];
        // The high one only wants 4 KiB/s (4 requests of 1 KiB a second, from a queue of
        // one); the middle one is backlogged from 5 s on, the low one always.
        let active = |id: u32, ms: u64| match id {
            2 => ms % 250 == 0,
            3 => ms >= 5000,
            _ => true,
        };
        let grants = play(rate, &flows, 1, 10, |_, _| KIB, active);
        // 0-5 s: the high one gets what it asks, the low one the rest.
        let high = bytes_of(&grants, 2, 1000, 5000);
        assert!((15 * KIB..=17 * KIB).contains(&high), "high {high}");
        let low = bytes_of(&grants, 1, 1000, 5000);
        assert!(low + high >= 39 * KIB, "low {low}, high {high}");
        // 5-10 s: the middle one takes all the high one leaves; the low one gets nothing.
        assert!(bytes_of(&grants, 2, 6000, 10_000) >= 15 * KIB);
        assert!(bytes_of(&grants, 3, 6000, 10_000) >= 22 * KIB);
        assert_eq!(bytes_of(&grants, 1, 6000, 10_000), 0);
    }

    /// The bytes webhooks 1 and 2, of the same priority and weights `w1` and `w2`, get of
    /// 20 s of a 20 KiB/s budget while both are backlogged with requests of `size(id)`.
    fn shares(w1: u32, w2: u32, size: impl Fn(u32) -> u64) -> (u64, u64) {
        let flows = [flow(1, 5, w1), flow(2, 5, w2)];
        let grants = play(20 * KIB, &flows, 3, 20, |id, _| size(id), |_, _| true);
        let of = |id| bytes_of(&grants, id, 0, 20_000);
        (of(1), of(2))
    }

    #[test]
    fn equal_priorities_share_by_bytes_in_proportion_to_their_weights() {
        // Equal weights, different request sizes: equal bytes, not equal requests.
        let (a, b) = shares(1, 1, |id| if id == 1 { 300 } else { 3000 });
        let ratio = a as f64 / b as f64;
        assert!((0.95..=1.05).contains(&ratio), "{a} vs {b}");
        // Weights 1 and 3: a quarter and three quarters.
        let (a, b) = shares(1, 3, |_| 700);
        let ratio = b as f64 / a as f64;
        assert!((2.85..=3.15).contains(&ratio), "{a} vs {b}");
        // A webhook that was idle gets no credit for it: once both wait, they alternate.
        let flows = [flow(1, 5, 1), flow(2, 5, 1)];
        let late_start = |id, ms| id == 1 || ms >= 10_000;
        let grants = play(20 * KIB, &flows, 3, 20, |_, _| 1000, late_start);
        let late = bytes_of(&grants, 2, 10_000, 11_000);
        assert!(
            late <= 11 * KIB,
            "the late one took {late} in its first second"
        );
    }

    #[test]
    fn a_webhook_removed_while_waiting_leaves_the_queue_and_the_budget_as_they_were() {
        let t0 = Instant::now();
        let rate = 10_000;
        let mut u = Uplink::new(Some(rate), t0);
        let (gone, stays) = (flow(1, 9, 1), flow(2, 1, 1));
        // One request goes at once and puts the balance 1000 below zero.
        assert_eq!(u.request(stays, 1000, t0), Ask::Now);
        let doomed: Vec<u64> = (0..3)
            .map(|_| match u.request(gone, 5000, t0) {
                Ask::Wait(t) => t,
                Ask::Now => panic!("the balance is below zero"),
            })
            .collect();
        let Ask::Wait(mine) = u.request(stays, 1000, t0) else {
            panic!("waits");
        };
        assert_eq!(u.waiting(), 4);
        for t in &doomed {
            assert!(u.cancel(*t));
        }
        assert!(!u.cancel(doomed[0]), "only once");
        assert_eq!(u.waiting(), 1);
        // The low one goes when the first request is paid for: 100 ms, as if the others
        // had never been there.
        let at = t0 + Duration::from_millis(100);
        assert_eq!(u.next_grant(t0), Some(at));
        assert!(u.grants(at - Duration::from_millis(1)).is_empty());
        assert_eq!(u.grants(at), vec![(mine, 1000)]);
        assert_eq!(u.next_grant(at), None);
        // A grant that did not go out gives its bytes back.
        u.refund(1000, at);
        assert_eq!(u.request(stays, 1000, at), Ask::Now);
    }

    #[test]
    fn a_new_budget_applies_at_once_and_none_lets_every_waiter_go() {
        let t0 = Instant::now();
        let mut u = Uplink::new(Some(1000), t0);
        assert_eq!(u.request(flow(1, 5, 1), 2000, t0), Ask::Now);
        let Ask::Wait(t) = u.request(flow(1, 5, 1), 500, t0) else {
            panic!("waits");
        };
        assert_eq!(u.next_grant(t0), Some(t0 + Duration::from_secs(2)));
        // Ten times the budget: the debt is repaid ten times as fast.
        u.set_rate(Some(10_000), t0);
        assert_eq!(u.next_grant(t0), Some(t0 + Duration::from_millis(200)));
        u.set_rate(None, t0);
        assert_eq!(u.grants(t0), vec![(t, 500)]);
    }

    fn run_arbiter(rate: u64) -> (tokio::runtime::Runtime, Arbiter) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let arbiter = rt.block_on(async { Arbiter::new(Some(rate)) });
        (rt, arbiter)
    }

    #[test]
    fn the_arbiter_grants_by_priority_and_a_dropped_waiter_blocks_no_one() {
        // 100 KB/s: a request of 10 KB is paid for in 100 ms.
        let (rt, arbiter) = run_arbiter(100_000);
        rt.block_on(async {
            let t0 = Instant::now();
            assert!(
                !arbiter.acquire(flow(1, 1, 1), 10_000).await,
                "the first goes at once"
            );
            let order = Arc::new(Mutex::new(Vec::new()));
            let spawn = |f: Flow, bytes: u64| {
                let (a, order) = (arbiter.clone(), order.clone());
                tokio::spawn(async move {
                    assert!(a.acquire(f, bytes).await);
                    order.lock().unwrap().push((f.id, t0.elapsed()));
                })
            };
            let low = spawn(flow(1, 1, 1), 10_000);
            tokio::task::yield_now().await;
            let doomed = spawn(flow(2, 9, 1), 10_000);
            tokio::task::yield_now().await;
            let high = spawn(flow(3, 5, 1), 10_000);
            tokio::task::yield_now().await;
            // The highest waiter leaves (its loop stopped) before its turn.
            doomed.abort();
            let _ = doomed.await;
            high.await.unwrap();
            low.await.unwrap();
            let order = order.lock().unwrap().clone();
            assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), [3, 1]);
            // The middle one went when the first was paid for (100 ms), the low one 100 ms
            // later: the one that left cost nothing.
            assert!(order[0].1 >= Duration::from_millis(95), "{order:?}");
            assert!(order[0].1 < Duration::from_millis(180), "{order:?}");
            assert!(order[1].1 >= Duration::from_millis(195), "{order:?}");
            assert!(order[1].1 < Duration::from_millis(280), "{order:?}");
            assert_eq!(arbiter.shared.lock().uplink.waiting(), 0);
        });
    }

    #[test]
    fn the_arbiter_follows_a_new_budget_and_none_releases_everyone() {
        let (rt, arbiter) = run_arbiter(1000);
        rt.block_on(async {
            assert!(!arbiter.acquire(flow(1, 5, 1), 100_000).await);
            // 100 s owed at 1 KB/s: a waiter would wait that long, until the budget goes.
            let waiter = {
                let a = arbiter.clone();
                tokio::spawn(async move { a.acquire(flow(1, 5, 1), 10).await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished());
            arbiter.set_rate(None);
            let waited = tokio::time::timeout(Duration::from_secs(1), waiter).await;
            assert!(waited.unwrap().unwrap());
            assert!(!arbiter.acquire(flow(2, 5, 1), 1 << 30).await);
        });
    }
}
