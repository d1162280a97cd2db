//! The delivery loop of one webhook: loads a bounded window of its queue from the store,
//! asks the scheduler which messages go next, paces them (rate limit, adaptive in-flight
//! limit), batches them if asked, POSTs them, and hands the results back: removal on 2xx,
//! dead letters on permanent refusals, retries otherwise. Its inputs are the store's
//! commit notifications and the request results; its outputs are store ops and status.

use super::aimd::AdaptiveRate;
use super::backoff::Backoff;
use super::client::{FailureKind, Outcome, WebhookClient};
use super::concurrency::Controller;
use super::conflate::Conflation;
use super::payload;
use super::policy::{self, Action};
use super::rate::TokenBucket;
use super::scheduler::{Circuit, Scheduler, Verdict};
use super::signing;
use super::status::{LastError, SharedStatus, State};
use super::throttle::{Throttle, Turn};
use super::uplink::{Arbiter, Flow};
use crate::config::{Ordering, WebhookSettings};
use crate::metrics::{Metrics, WebhookCodeLabel, WebhookKindLabel, WebhookStateLabel};
use crate::ratelog::RateLog;
use crate::store::{DeadLetter, DropReason, Entry, Store, StoreError, WebhookId};
use crate::wallclock::Ages;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most queue entries held in memory per webhook.
pub(crate) const WINDOW: usize = 4096;
/// Most delivered entries whose removal is not yet durable; sending pauses beyond it, so a
/// crash redelivers at most this many (plus the requests in flight).
/// Twice what the store lets wait for a group with other work (`LAZY_REMOVALS`).
pub(crate) const REMOVAL_SLACK: usize = 2 * crate::store::LAZY_REMOVALS;
/// The same with `[gateway] commit_interval` set (a removal then waits up to that long for
/// its commit; 64 per interval would cap delivery at 256 events/s with 250 ms).
pub const REMOVAL_SLACK_GROUPED: usize = 2 * crate::store::LAZY_REMOVALS_GROUPED;

/// Everything one webhook's delivery loop needs.
pub(crate) struct Worker {
    /// Store id of the webhook.
    pub(crate) id: WebhookId,
    /// Its settings.
    pub(crate) settings: WebhookSettings,
    /// The HTTPS client.
    pub(crate) client: WebhookClient,
    /// The store.
    pub(crate) store: Store,
    /// `orgId` of every payload.
    pub(crate) org_id: String,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Live status, read by metrics and status views.
    pub(crate) status: SharedStatus,
    /// Stops the loop.
    pub(crate) shutdown: CancellationToken,
    /// How long in-flight requests may finish after shutdown.
    pub(crate) grace: Duration,
    /// Liveness mark for the watchdog: busy in a turn of the loop, resting while it waits.
    pub(crate) pulse: crate::pulse::Pulse,
    /// The uplink's byte budget, shared by every webhook (`[gateway] uplink_bytes_per_s`).
    pub(crate) uplink: Arbiter,
    /// The right to read the queue `id`, held for as long as the loop runs (one loop per
    /// queue: the store refuses a second claim).
    pub(crate) _claim: crate::store::change::Claim,
}

/// One request in flight: which lanes it carries and the entries in it.
struct Request {
    lanes: Vec<Arc<str>>,
    entries: Vec<Arc<Entry>>,
    /// When it was dispatched (a 429 to a request from before the last cut of the
    /// adaptive rate does not cut it again).
    sent: Instant,
}

/// A request that ended: its answer and its own round trip, or `None` when the loop stopped
/// while it waited for the uplink budget (it never went out).
type Done = (Request, Option<(Outcome, Duration)>);

/// Per-webhook counters resolved once.
struct Counters {
    delivered: Counter,
    codes: HashMap<u16, Counter>,
    logs: HashMap<&'static str, RateLog>,
    duration: Histogram,
    latency: Histogram,
    in_flight: Gauge,
    in_flight_limit: Gauge,
    /// One gauge per [`State::ALL`] entry, and the state they show.
    states: Vec<Gauge>,
    shown_state: Option<State>,
}

/// The mutable state of the loop.
struct Pace {
    sched: Scheduler<Arc<Entry>>,
    controller: Controller,
    bucket: Option<TokenBucket>,
    /// The request rate learned from 429s (AIMD), below `bucket`.
    adaptive: AdaptiveRate,
    in_flight: usize,
    items_in_flight: usize,
    disabled: bool,
    auth_failed: bool,
    start_at: Instant,
    partial_since: Option<Instant>,
    /// Delivered entries whose removal is not yet committed.
    unremoved: usize,
    /// Most of those before sending pauses.
    removal_slack: usize,
    /// Messages per request now: `batch_max_messages`, halved by each 413 on a batch.
    batch_cap: usize,
    /// Permanent refusals (dead letters) in a row.
    refusals: u32,
    /// Per-status minimum intervals.
    throttle: Throttle,
    /// Values waiting for their minimum interval, out of their lanes (the rest of a lane
    /// goes on): when, which lane, the entry.
    parked: Vec<(Instant, Arc<str>, Arc<Entry>)>,
    /// `roomhook_events_filtered_total{reason="min_interval"}`, resolved once.
    superseded: Counter,
    /// The newest value of each device and path in the window (`conflate = true`).
    conflation: Option<Conflation>,
    /// `roomhook_events_filtered_total{reason="superseded"}`, resolved once.
    conflated: Counter,
    /// `roomhook_uplink_bytes_total` of this webhook, resolved once.
    uplink_bytes: Counter,
}

impl Pace {
    /// Past [`REFUSING_AFTER`] permanent refusals in a row: the queue is held instead of
    /// emptied (state `refusing`).
    fn refusing(&self) -> bool {
        self.refusals >= REFUSING_AFTER
    }
}

/// Permanent refusals in a row after which the queue is held (state `refusing`) rather
/// than moved into the dead letters: a receiver that refuses everything is broken, not
/// judging messages.
pub(crate) const REFUSING_AFTER: u32 = 20;

impl Worker {
    /// Runs until shutdown.
    pub async fn run(self) {
        let Some(mut committed) = self.store.watch(self.id) else {
            tracing::error!(webhook = %self.settings.name, "webhook has no queue in the store");
            return;
        };
        let p = &self.settings.pacing;
        let now = Instant::now();
        let jitter = p.drain_start_jitter.mul_f64(rand::random::<f64>());
        // Its own statement: the family's lock guard of a `get_or_create` lives to the end
        // of the statement, and a second one in the same statement would wait for it.
        let conflated = self
            .metrics
            .events_filtered
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "superseded".into(),
            })
            .clone();
        let uplink_bytes = self
            .metrics
            .uplink_bytes
            .get_or_create(&Metrics::webhook(&self.settings.name))
            .clone();
        let mut pace = Pace {
            sched: Scheduler::new(
                Backoff {
                    base: self.settings.retry_base,
                    max: self.settings.retry_max,
                },
                p.circuit_breaker_threshold,
            ),
            controller: Controller::new(self.settings.max_in_flight, now),
            bucket: p.rate_limit.map(|r| TokenBucket::new(r, p.burst, now)),
            adaptive: AdaptiveRate::new(now),
            in_flight: 0,
            items_in_flight: 0,
            disabled: !self.settings.enabled,
            auth_failed: false,
            start_at: now + jitter,
            partial_since: None,
            unremoved: 0,
            removal_slack: REMOVAL_SLACK,
            batch_cap: p.batch_max_messages,
            refusals: 0,
            throttle: Throttle::new(&self.settings.filters),
            parked: Vec::new(),
            superseded: self
                .metrics
                .events_filtered
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "min_interval".into(),
                })
                .clone(),
            conflation: self.settings.conflate.then(Conflation::default),
            conflated,
            uplink_bytes,
        };
        let label = Metrics::webhook(&self.settings.name);
        let m = &self.metrics;
        for kind in crate::deliver::client::FailureKind::LABELS {
            let _ = m.request_errors.get_or_create(&WebhookKindLabel {
                webhook: self.settings.name.clone(),
                kind: kind.to_string(),
            });
        }
        let mut counters = Counters {
            delivered: m.events_delivered.get_or_create(&label).clone(),
            codes: HashMap::new(),
            logs: HashMap::new(),
            duration: m.request_duration.get_or_create(&label).clone(),
            latency: m.delivery_latency.get_or_create(&label).clone(),
            in_flight: m.in_flight.get_or_create(&label).clone(),
            in_flight_limit: m.in_flight_limit.get_or_create(&label).clone(),
            states: State::ALL
                .iter()
                .map(|s| {
                    m.webhook_state
                        .get_or_create(&WebhookStateLabel {
                            webhook: self.settings.name.clone(),
                            state: s.as_str().to_string(),
                        })
                        .clone()
                })
                .collect(),
            shown_state: None,
        };
        let mut loaded = 0u64;
        let mut removed: Vec<u64> = Vec::new();
        // Refused for good and not yet moved to the dead letters (oldest first).
        let mut dead: Vec<(u64, DeadLetter)> = Vec::new();
        let mut dead_moves = DeadMoves::new();
        let mut in_flight: InFlight = FuturesUnordered::new();
        let mut removal_log = RateLog::new(Duration::from_secs(10));
        let mut removals: FuturesUnordered<
            futures_util::future::BoxFuture<'static, (Vec<u64>, bool)>,
        > = FuturesUnordered::new();
        // Twice what the store lets wait for a group with other work: never a stall.
        pace.removal_slack = 2 * self.store.lazy_removals();

        loop {
            self.pulse.step();
            // 1. Refill the window from the store.
            // Mark a commit as seen only when reading it: with a full window the commit must
            // still wake the loop once there is room (input may have stopped by then).
            if pace.sched.len() < WINDOW && *committed.borrow() > loaded {
                let last_committed = *committed.borrow_and_update();
                let (store, id, after, limit) = (
                    self.store.clone(),
                    self.id,
                    loaded,
                    WINDOW - pace.sched.len(),
                );
                // A few entries (fresh ones, or the few the window has room for) come from
                // redb's cache in microseconds: read them here, without a hand-off to a
                // blocking thread. Big refills (an empty window over a backlog) go to one.
                let read = if (last_committed - loaded).min(limit as u64) <= INLINE_READ {
                    Ok(store.read_after(id, after, limit))
                } else {
                    self.pulse
                        .waiting(tokio::task::spawn_blocking(move || {
                            store.read_after(id, after, limit)
                        }))
                        .await
                };
                match read {
                    Ok(Ok(window)) => {
                        for (seq, why) in window.undecodable {
                            // A damaged entry is skipped (and counted), never retried forever.
                            loaded = loaded.max(seq);
                            removed.push(seq);
                            self.store
                                .count_dropped(self.id, DropReason::Undecodable, 1);
                            if let Some(suppressed) = removal_log.check(Instant::now()) {
                                tracing::error!(webhook = %self.settings.name, seq, suppressed, "queued entry does not decode, skipped (roomhook store check tells what else is damaged): {why}");
                            }
                        }
                        self.store.set_window_end(self.id, loaded);
                        for e in window.entries {
                            loaded = loaded.max(e.seq);
                            self.store.set_window_end(self.id, loaded);
                            let lane = self.lane(&e.event.device, e.seq);
                            pace.throttle.queued(e.seq, &e.event);
                            // The value it supersedes leaves now, unless it is in flight
                            // (then it is looked at again if it comes back for a retry).
                            let older = pace
                                .conflation
                                .as_mut()
                                .and_then(|c| c.joined(e.seq, &e.event));
                            if let Some(older) = older {
                                let gone = pace
                                    .sched
                                    .remove_untaken(&self.lane(&e.event.device, older), |x| {
                                        x.seq == older
                                    });
                                pace.conflated.inc_by(gone.len() as u64);
                                removed.extend(gone.iter().map(|x| x.seq));
                            }
                            pace.sched.push(&lane, Arc::new(e));
                        }
                    }
                    Ok(Err(StoreError::Busy)) => {
                        // A compaction holds the store: read again in a moment (quietly).
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                            _ = self.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(webhook = %self.settings.name, "cannot read the queue: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = self.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(webhook = %self.settings.name, "queue reader failed: {e}");
                        break;
                    }
                }
            }
            // Parked values whose minimum interval has passed go back to their lanes.
            if !pace.parked.is_empty() {
                let now = Instant::now();
                let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut pace.parked)
                    .into_iter()
                    .partition(|(t, _, _)| *t <= now);
                pace.parked = wait;
                for (_, lane, e) in due {
                    pace.sched.push(&lane, e);
                }
            }
            // 2. Send what pacing allows now (expired entries leave without a request).
            let mut wake = self.dispatch(&mut pace, &mut in_flight, &mut removed);
            // 3. Hand results back to the store. Removals are counted until their commit:
            //    past the slack, sending pauses (the bound on what a crash sends again).
            if !removed.is_empty() {
                let seqs = std::mem::take(&mut removed);
                match self
                    .pulse
                    .waiting(self.store.remove(self.id, seqs.clone()))
                    .await
                {
                    Ok(commit) => {
                        pace.unremoved += seqs.len();
                        removals.push(Box::pin(async move {
                            let ok = commit.await.is_ok();
                            (seqs, ok)
                        }));
                    }
                    Err(_) => break,
                }
            }
            // One move into the dead letters at a time, so that a failed one is retried
            // before those refused after it.
            if !dead.is_empty() && dead_moves.ready(Instant::now()) {
                let batch = std::mem::take(&mut dead);
                match self
                    .pulse
                    .waiting(self.store.dead_letter(self.id, &batch))
                    .await
                {
                    Ok(commit) => dead_moves.started(batch, commit),
                    Err(_) => break,
                }
            }
            self.publish_status(&pace, &mut counters);
            // 4. Wait for something to do.
            if let Some(w) = pace.sched.next_wakeup() {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            if let Some(w) = pace.parked.iter().map(|(t, _, _)| *t).min() {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            if let Some(w) = dead_moves.retry_at().filter(|_| !dead.is_empty()) {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            let want_more = pace.sched.len() < WINDOW;
            // Waiting for requests (each bounded by the webhook's timeout), commits, a timer.
            self.pulse.rest();
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(&mut pace, &mut counters, &mut removed, &mut dead, done);
                }
                Some((seqs, ok)) = removals.next(), if !removals.is_empty() => {
                    pace.unremoved -= seqs.len();
                    if !ok {
                        // Retried with the next removal; until then they count as queued.
                        if let Some(suppressed) = removal_log.check(Instant::now()) {
                            tracing::error!(webhook = %self.settings.name, suppressed, "removing {} delivered message(s) failed; retrying (a crash meanwhile would deliver them again)", seqs.len());
                        }
                        removed.extend(seqs);
                    }
                }
                Some((batch, ok)) = dead_moves.next(), if dead_moves.busy() => {
                    if !ok {
                        if let Some(suppressed) = removal_log.check(Instant::now()) {
                            tracing::error!(webhook = %self.settings.name, suppressed, "moving {} refused message(s) to the dead letters failed; retrying (they stay queued meanwhile)", batch.len());
                        }
                    }
                    dead_moves.finished(ok, batch, &mut dead, Instant::now());
                }
                changed = committed.changed(), if want_more => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        // Let requests already sent finish within the grace period.
        let deadline = tokio::time::Instant::now() + self.grace;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, in_flight.next()).await {
            self.finish(&mut pace, &mut counters, &mut removed, &mut dead, done);
        }
        // Removals already handed over get what is left of the grace period: a store that
        // cannot commit (a failing disk) must not hold the shutdown.
        let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        if let Ok(Ok(commit)) =
            tokio::time::timeout_at(deadline, self.store.remove(self.id, removed)).await
        {
            let _ = tokio::time::timeout_at(deadline, commit).await;
        }
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, removals.next()).await {}
        // Within the same bound: a writer that reads no ops (reopening on a full disk) must
        // not hold the stop, and so an edit that restarts this loop. Dead letters not moved
        // stay queued and are tried again by the next loop.
        while let Ok(Some((batch, ok))) = tokio::time::timeout_at(deadline, dead_moves.next()).await
        {
            dead_moves.finished(ok, batch, &mut dead, Instant::now());
        }
        if !dead.is_empty() {
            if let Ok(Ok(commit)) =
                tokio::time::timeout_at(deadline, self.store.dead_letter(self.id, &dead)).await
            {
                let _ = tokio::time::timeout_at(deadline, commit).await;
            }
        }
        self.publish_status(&pace, &mut counters);
    }

    /// The lane of an entry: its device (`ordering = "device"`), or one of `max_in_flight`
    /// lanes of it (`ordering = "none"`).
    fn lane(&self, device: &str, seq: u64) -> String {
        match self.settings.pacing.ordering {
            Ordering::Device => device.to_string(),
            Ordering::None => format!("{device}#{}", seq % self.settings.max_in_flight as u64),
        }
    }

    /// Starts every request pacing allows; returns when to look again if pacing (not the
    /// scheduler) is what holds the next one back.
    fn dispatch(
        &self,
        pace: &mut Pace,
        in_flight: &mut InFlight,
        removed: &mut Vec<u64>,
    ) -> Option<Instant> {
        let p = &self.settings.pacing;
        let now = Instant::now();
        if pace.disabled {
            return None;
        }
        if now < pace.start_at {
            return Some(pace.start_at);
        }
        loop {
            let limit = match pace.sched.circuit() {
                Circuit::HalfOpen => 1,
                _ => pace.controller.limit(),
            };
            if pace.in_flight >= limit
                || pace.unremoved >= pace.removal_slack
                || !pace.sched.has_ready(now)
            {
                return None;
            }
            if let Some(b) = pace.bucket.as_mut() {
                if !b.ready(now) {
                    return Some(b.next_token(now));
                }
            }
            if let Some(at) = pace.adaptive.ready_at(now) {
                return Some(at);
            }
            // A partial batch waits a little for more, unless nothing is in flight.
            if p.batch_max_messages > 1 && pace.in_flight > 0 {
                let queued = pace.sched.len().saturating_sub(pace.items_in_flight);
                if queued < p.batch_max_messages {
                    let since = *pace.partial_since.get_or_insert(now);
                    if now < since + p.batch_linger {
                        return Some(since + p.batch_linger);
                    }
                }
            }
            let (request, body) = self.assemble(pace, now, removed)?;
            pace.partial_since = None;
            if let Some(b) = pace.bucket.as_mut() {
                b.take(now);
            }
            pace.adaptive.on_send(now);
            pace.in_flight += 1;
            pace.items_in_flight += request.entries.len();
            pace.controller.on_send(pace.in_flight);
            let client = self.client.clone();
            let seqs: Vec<u64> = request.entries.iter().map(|e| e.seq).collect();
            let id = signing::message_id(self.store.store_id(), self.id.0, &seqs);
            let signer = self.settings.signer.clone();
            let (uplink, sent, status, stop) = (
                self.uplink.clone(),
                pace.uplink_bytes.clone(),
                self.status.clone(),
                self.shutdown.clone(),
            );
            let flow = Flow {
                id: self.id.0,
                priority: self.settings.priority,
                weight: self.settings.uplink_weight,
            };
            in_flight.push(Box::pin(async move {
                let headers = signing::headers(signer.as_ref(), &id, &body);
                let mut ready = match client.prepare(body.clone(), &headers).await {
                    Ok(r) => r,
                    Err(f) => return (request, Some((Outcome::Failed(f), Duration::ZERO))),
                };
                // The uplink budget, last: after the rate limit and the in-flight limit, and
                // outside the round trip the in-flight limit is adapted by. A stop while it
                // waits leaves the request unsent.
                let waited = tokio::select! {
                    biased;
                    waited = uplink.acquire(flow, ready.bytes) => waited,
                    () = stop.cancelled() => return (request, None),
                };
                if waited {
                    // A fresh timestamp: receivers refuse old ones (Standard Webhooks: 5 min).
                    ready.restamp(&signing::headers(signer.as_ref(), &id, &body));
                }
                sent.inc_by(ready.bytes);
                if let Ok(mut st) = status.lock() {
                    st.recent.sent(crate::timefmt::now_ms(), ready.bytes);
                }
                let answer = client.send(ready).await;
                (request, Some(answer))
            }));
        }
    }

    /// Takes the next request's messages from the scheduler and renders its body.
    fn assemble(
        &self,
        pace: &mut Pace,
        now: Instant,
        removed: &mut Vec<u64>,
    ) -> Option<(Request, Bytes)> {
        let p = &self.settings.pacing;
        let max = p.batch_max_messages.min(pace.batch_cap).max(1);
        let mut request = Request {
            lanes: Vec::new(),
            entries: Vec::new(),
            sent: now,
        };
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 2usize;
        while request.entries.len() < max {
            let Some((lane, items)) = pace.sched.next(now, max - request.entries.len()) else {
                break;
            };
            // Entries the store already dropped as oldest (it was full) leave quietly.
            let dropped_through = self.store.dropped_through(self.id);
            let dropped = items
                .iter()
                .take_while(|e| e.seq <= dropped_through)
                .count();
            if dropped > 0 {
                pace.sched.discard(&lane, dropped);
                continue;
            }
            if let Some(age) = self.settings.max_queue_age {
                let expired = expired(&items, age, &crate::wallclock::ages());
                if expired > 0 {
                    let gone = pace.sched.discard(&lane, expired);
                    self.store
                        .count_dropped(self.id, DropReason::Expired, gone.len() as u64);
                    removed.extend(gone.iter().map(|e| e.seq));
                    continue;
                }
            }
            // Conflation: values that a newer one in the window supersedes leave unsent
            // (those that were in flight when it came, back for a retry).
            if let Some(c) = &pace.conflation {
                if items.iter().any(|e| c.superseded(e.seq, &e.event)) {
                    pace.sched.give_back(&lane, 0);
                    let gone = pace
                        .sched
                        .remove_untaken(&lane, |e| c.superseded(e.seq, &e.event));
                    pace.conflated.inc_by(gone.len() as u64);
                    removed.extend(gone.iter().map(|e| e.seq));
                    continue;
                }
            }
            // Minimum intervals: superseded values at the head leave without a request; a
            // head value whose turn has not come holds its lane until then.
            if !pace.throttle.is_off() {
                let mut superseded = 0;
                let mut wait = None;
                for e in &items {
                    match pace.throttle.turn(e.seq, &e.event, now) {
                        Turn::Superseded => superseded += 1,
                        Turn::Now => break,
                        Turn::At(t) => {
                            wait = Some(t);
                            break;
                        }
                    }
                }
                if superseded > 0 {
                    let gone = pace.sched.discard(&lane, superseded);
                    pace.superseded.inc_by(gone.len() as u64);
                    removed.extend(gone.iter().map(|e| e.seq));
                    continue;
                }
                if let Some(t) = wait {
                    // Out of its lane until its turn: the device's other values go on.
                    for e in pace.sched.discard(&lane, 1) {
                        pace.parked.push((t, lane.clone(), e));
                    }
                    continue;
                }
            }
            let mut kept = 0;
            for item in items {
                if kept > 0 && pace.throttle.turn(item.seq, &item.event, now) != Turn::Now {
                    break;
                }
                let body = payload::message(&item.event, &self.org_id);
                if !request.entries.is_empty()
                    && (bytes + body.len() + 1) as u64 > p.batch_max_bytes
                {
                    break;
                }
                pace.throttle.sent(&item.event, now);
                bytes += body.len() + 1;
                bodies.push(body);
                request.entries.push(item);
                kept += 1;
            }
            pace.sched.give_back(&lane, kept);
            if kept == 0 {
                break;
            }
            request.lanes.push(lane);
            if bytes as u64 >= p.batch_max_bytes {
                break;
            }
        }
        if request.entries.is_empty() {
            return None;
        }
        let body = if max == 1 {
            bodies.pop().unwrap_or_default()
        } else {
            let mut out = Vec::with_capacity(bytes);
            out.push(b'[');
            for (i, b) in bodies.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b);
            }
            out.push(b']');
            out
        };
        Some((request, Bytes::from(body)))
    }

    /// Applies a finished request: metrics, scheduling, store ops, state.
    fn finish(
        &self,
        pace: &mut Pace,
        counters: &mut Counters,
        removed: &mut Vec<u64>,
        dead: &mut Vec<(u64, DeadLetter)>,
        (request, answer): Done,
    ) {
        let name = &self.settings.name;
        pace.in_flight -= 1;
        pace.items_in_flight = pace.items_in_flight.saturating_sub(request.entries.len());
        let Some((outcome, took)) = answer else {
            // Stopped before the uplink budget let it go: never sent, still queued.
            for lane in &request.lanes {
                pace.sched.give_back(lane, 0);
            }
            for e in &request.entries {
                pace.throttle.unsent(&e.event);
            }
            return;
        };
        counters.duration.observe(took.as_secs_f64());
        let now = Instant::now();
        let unit: f64 = rand::random();
        let status = match &outcome {
            Outcome::Delivered { status } => Some(status.as_u16()),
            Outcome::Failed(f) => match f.kind {
                FailureKind::Http(s) => Some(s.as_u16()),
                _ => None,
            },
        };
        if let Some(code) = status {
            counters
                .codes
                .entry(code)
                .or_insert_with(|| {
                    self.metrics
                        .requests
                        .get_or_create(&WebhookCodeLabel {
                            webhook: name.clone(),
                            code: code.to_string(),
                        })
                        .clone()
                })
                .inc();
        }
        let action = policy::classify(&outcome);
        // A refusal for good: a 4xx the receiver means, or a 413 on a single message (it
        // never will fit). Past the streak, the queue is held instead.
        let batch = request.entries.len() > 1;
        let permanent = match action {
            Action::DeadLetter => true,
            Action::TooLarge => !batch,
            _ => false,
        };
        let streak = permanent && pace.refusals + 1 >= REFUSING_AFTER;

        pace.controller.on_response(took, action.signal(), now);
        match (&action, status) {
            (Action::Delivered, _) => pace.adaptive.on_accepted(now),
            (_, Some(429)) => {
                let before = pace.adaptive.rate();
                pace.adaptive.on_too_many(request.sent, now);
                let after = pace.adaptive.rate();
                if after != before {
                    tracing::debug!(webhook = %name, "429: requests paced at {:.1}/s", after.unwrap_or(0.0));
                }
            }
            _ => {}
        }
        if let Outcome::Failed(f) = &outcome {
            self.metrics
                .request_errors
                .get_or_create(&WebhookKindLabel {
                    webhook: name.clone(),
                    kind: f.kind.label().to_string(),
                })
                .inc();
            let what = match action {
                Action::AuthFailed => {
                    "the receiver refused the credentials; the queue is held and retried slowly"
                }
                Action::Gone => {
                    "the receiver answered 410 Gone; the webhook is disabled, its queue kept"
                }
                _ if streak => {
                    "the receiver refuses every message for good; the queue is held (state refusing) and retried every retry_max"
                }
                Action::TooLarge if batch => {
                    "the receiver answered 413 (body too large); retried in smaller batches"
                }
                _ if permanent => {
                    "the receiver refused the message for good (4xx, or 413 for a single message); it moves to the dead letters"
                }
                _ => "delivery failed, the message stays queued and is retried",
            };
            let log = counters
                .logs
                .entry(f.kind.label())
                .or_insert_with(|| RateLog::new(Duration::from_secs(10)));
            if let Some(suppressed) = log.check(now) {
                tracing::warn!(webhook = %name, kind = f.kind.label(), suppressed, "{what}: {}", f.message);
            }
            if let Ok(mut st) = self.status.lock() {
                let at_ms = crate::timefmt::now_ms();
                st.last_error = Some(LastError {
                    message: f.message.clone(),
                    at_ms,
                });
                st.recent.record(at_ms, 0, 1);
            }
        }
        // Whether the entries go back to their lanes (a retry): their minimum interval
        // does not count a failed attempt.
        let mut retried = true;
        match action {
            Action::Delivered => {
                retried = false;
                if pace.sched.circuit() != Circuit::Closed {
                    // Back after an outage: the drain starts slowly (the adaptive rate).
                    pace.adaptive.restart(now);
                }
                pace.auth_failed = false;
                pace.refusals = 0;
                // A batch limit halved by a 413 grows back (the receiver's limit may be gone).
                pace.batch_cap = (pace.batch_cap * 2).min(self.settings.pacing.batch_max_messages);
                let done = pace
                    .sched
                    .complete(&request.lanes, Verdict::Done, now, unit);
                counters.delivered.inc_by(done.len() as u64);
                let now_ms = crate::timefmt::now_ms();
                if let Ok(mut st) = self.status.lock() {
                    st.recent.record(now_ms, done.len() as u64, 0);
                }
                for e in done {
                    if let Some(c) = pace.conflation.as_mut() {
                        c.left(e.seq, &e.event);
                    }
                    counters
                        .latency
                        .observe(now_ms.saturating_sub(e.event.ts_ms).max(0) as f64 / 1000.0);
                    removed.push(e.seq);
                }
            }
            Action::DeadLetter | Action::TooLarge if streak => {
                pace.refusals += 1;
                let pause = Some(self.settings.retry_max);
                pace.sched
                    .complete(&request.lanes, Verdict::Retry { pause }, now, unit);
            }
            Action::TooLarge if batch => {
                pace.batch_cap = (request.entries.len() / 2).max(1);
                pace.sched
                    .complete(&request.lanes, Verdict::Retry { pause: None }, now, unit);
            }
            // One message too large for the receiver: it never will be taken.
            Action::DeadLetter | Action::TooLarge => {
                retried = false;
                pace.refusals += 1;
                let reason = match &outcome {
                    Outcome::Failed(f) => f.message.clone(),
                    Outcome::Delivered { .. } => String::new(),
                };
                let done = pace
                    .sched
                    .complete(&request.lanes, Verdict::Done, now, unit);
                let at_ms = crate::timefmt::now_ms();
                for e in done {
                    if let Some(c) = pace.conflation.as_mut() {
                        c.left(e.seq, &e.event);
                    }
                    dead.push((
                        e.seq,
                        DeadLetter {
                            event: e.event.clone(),
                            status,
                            reason: reason.clone(),
                            at_ms,
                        },
                    ));
                }
            }
            Action::Retry { pause, .. } => {
                // Retry-After, spread so that a fleet does not come back in one instant.
                let pause = pause.map(|d| policy::spread(d, rand::random()));
                // A 429 comes from a receiver that is up: its pause, not the circuit.
                let verdict = if status == Some(429) {
                    Verdict::Busy { pause }
                } else {
                    Verdict::Retry { pause }
                };
                pace.sched.complete(&request.lanes, verdict, now, unit);
            }
            Action::AuthFailed => {
                pace.auth_failed = true;
                let pause = Some(self.settings.pacing.auth_retry);
                pace.sched
                    .complete(&request.lanes, Verdict::Retry { pause }, now, unit);
            }
            Action::Gone => {
                pace.disabled = true;
                pace.sched
                    .complete(&request.lanes, Verdict::Retry { pause: None }, now, unit);
            }
        }
        if retried {
            for e in &request.entries {
                pace.throttle.unsent(&e.event);
            }
        }
    }

    /// Publishes state, limits and queue figures to the shared status and the metrics.
    /// Publishes state and limits to the shared status and the metrics (queue figures are
    /// read from the store at scrape time).
    fn publish_status(&self, pace: &Pace, counters: &mut Counters) {
        let now = Instant::now();
        let state = if pace.disabled {
            State::Disabled
        } else if pace.refusing() {
            State::Refusing
        } else if pace.auth_failed {
            State::AuthFailed
        } else if pace.sched.circuit() != Circuit::Closed {
            State::CircuitOpen
        } else if pace.sched.paused_until(now).is_some() {
            State::Paused
        } else if pace.sched.consecutive_failures() > 0 {
            State::Retrying
        } else {
            State::Active
        };
        if let Ok(mut st) = self.status.lock() {
            if st.state != state {
                tracing::info!(webhook = %self.settings.name, "state {} -> {}", st.state.as_str(), state.as_str());
                st.state_since_ms = crate::timefmt::now_ms();
            }
            st.state = state;
            st.in_flight_limit = pace.controller.limit();
            st.in_flight = pace.in_flight;
            st.consecutive_failures = pace.sched.consecutive_failures();
        }
        counters.in_flight.set(pace.in_flight as i64);
        counters.in_flight_limit.set(pace.controller.limit() as i64);
        if counters.shown_state != Some(state) {
            for (gauge, s) in counters.states.iter().zip(State::ALL) {
                gauge.set(i64::from(s == state));
            }
            counters.shown_state = Some(state);
        }
    }
}

/// The move of refused messages into the dead letters: one commit at a time, and a failed
/// one (a full disk) handed back to be tried again after a pause. The loop has read past
/// those entries, so nothing else would ever move them: left alone they would stay queued
/// until a restart, and the queue's depth and age would never come down.
struct DeadMoves {
    /// The commit under way (at most one), with the messages it moves.
    commit: FuturesUnordered<futures_util::future::BoxFuture<'static, (DeadBatch, bool)>>,
    /// After a failure: not before then.
    retry_at: Option<Instant>,
    backoff: crate::backoff::Doubling,
}

type DeadBatch = Vec<(u64, DeadLetter)>;

impl DeadMoves {
    fn new() -> Self {
        DeadMoves {
            commit: FuturesUnordered::new(),
            retry_at: None,
            backoff: crate::backoff::Doubling::new(
                Duration::from_millis(250),
                Duration::from_secs(30),
            ),
        }
    }

    /// Whether a move may start now: none under way, and no pause after a failure.
    fn ready(&self, now: Instant) -> bool {
        self.commit.is_empty() && self.retry_at.is_none_or(|t| t <= now)
    }

    /// When the messages waiting may be tried again (a failure's pause).
    fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.commit.is_empty())
    }

    fn busy(&self) -> bool {
        !self.commit.is_empty()
    }

    /// A move was handed to the store; `commit` resolves when it is durable (or failed).
    fn started(
        &mut self,
        batch: DeadBatch,
        commit: impl std::future::Future<Output = Result<(), crate::store::StoreError>> + Send + 'static,
    ) {
        self.commit.push(Box::pin(async move {
            let ok = commit.await.is_ok();
            (batch, ok)
        }));
    }

    /// The move under way.
    async fn next(&mut self) -> Option<(DeadBatch, bool)> {
        self.commit.next().await
    }

    /// A move ended. A failed one goes back to the head of `waiting` (older than anything
    /// refused since), to be tried again after a pause that doubles with each failure.
    fn finished(&mut self, ok: bool, batch: DeadBatch, waiting: &mut DeadBatch, now: Instant) {
        if ok {
            self.backoff.reset();
            self.retry_at = None;
            return;
        }
        let later = std::mem::replace(waiting, batch);
        waiting.extend(later);
        self.retry_at = Some(now + self.backoff.current());
        self.backoff.failed();
    }
}

/// Refills of at most this many new entries are read on the worker's own thread.
const INLINE_READ: u64 = 256;

type InFlight = FuturesUnordered<futures_util::future::BoxFuture<'static, Done>>;

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// How many of `items`, oldest first, are older than `max_age` (`max_queue_age`): they
/// leave unsent. The count stops at the first younger one.
fn expired(items: &[Arc<Entry>], max_age: Duration, ages: &Ages) -> usize {
    let max_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    items
        .iter()
        .take_while(|e| ages.age_ms(e.event.ts_ms) > max_ms)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Kind;
    use crate::event::Event;
    use crate::wallclock::{Jumps, Reading};

    const YEAR_MS: i64 = 365 * 86_400_000;

    fn entry(seq: u64, ts_ms: i64) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            event: Event {
                device: "d".into(),
                workspace: None,
                path: "RoomAnalytics.PeopleCount.Current".into(),
                kind: Kind::Status,
                value: serde_json::json!(1),
                ts_ms,
                full_sync: false,
                more: Vec::new(),
            },
        })
    }

    #[test]
    fn events_queued_before_the_clock_jumps_two_years_ahead_do_not_expire_by_it() {
        // A gateway without a real-time clock: it boots in 1970 and NTP sets it to today.
        let boot = Reading {
            wall_ms: 60_000,
            mono: Instant::now(),
        };
        let mut jumps = Jumps::default();
        jumps.observe(boot);
        let items = [entry(1, 61_000), entry(2, 62_000)];
        let synced = Reading {
            wall_ms: boot.wall_ms + 2 * YEAR_MS + 10_000,
            mono: boot.mono + Duration::from_secs(10),
        };
        jumps.observe(synced);
        let ages = jumps.ages(synced.wall_ms);
        assert_eq!(expired(&items, Duration::from_secs(3600), &ages), 0);
        // They still age as the monotonic clock goes: an hour on, they are past an hour.
        let later = Reading {
            wall_ms: synced.wall_ms + 3_600_000,
            mono: synced.mono + Duration::from_secs(3600),
        };
        jumps.observe(later);
        assert_eq!(
            expired(
                &items,
                Duration::from_secs(3600),
                &jumps.ages(later.wall_ms)
            ),
            2
        );
    }

    #[test]
    fn with_a_steady_clock_events_older_than_max_queue_age_expire_as_before() {
        let t0 = Reading {
            wall_ms: 1_800_000_000_000,
            mono: Instant::now(),
        };
        let mut jumps = Jumps::default();
        jumps.observe(t0);
        let items = [entry(1, t0.wall_ms), entry(2, t0.wall_ms + 30_000)];
        let now = Reading {
            wall_ms: t0.wall_ms + 3_620_000,
            mono: t0.mono + Duration::from_millis(3_620_000),
        };
        jumps.observe(now);
        let ages = jumps.ages(now.wall_ms);
        assert_eq!(expired(&items, Duration::from_secs(3600), &ages), 1);
        assert_eq!(expired(&items, Duration::from_secs(3700), &ages), 0);
    }
}

#[cfg(all(test, feature = "demo"))]
mod demo_tests {
    use super::*;
    use crate::demo::pki;
    use crate::demo::receiver::{Behaviour, Receiver};
    use crate::store::{Limits, Overflow};

    fn event(n: i64) -> Vec<u8> {
        crate::event::Event {
            device: "d".into(),
            workspace: None,
            path: "RoomAnalytics.PeopleCount.Current".into(),
            kind: crate::catalog::Kind::Status,
            value: n.into(),
            ts_ms: crate::timefmt::now_ms(),
            full_sync: false,
            more: Vec::new(),
        }
        .encode()
    }

    /// Waits up to `secs` for `cond`.
    async fn eventually(secs: u64, cond: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn a_failed_dead_letter_commit_is_retried_not_skipped() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let identity = pki::private_ca(&["127.0.0.1"]).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &identity.ca_pem).unwrap();
        let tls = identity.server_config().unwrap();
        let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), tls, None, false)
            .await
            .unwrap();
        // The receiver refuses every message for good: each goes to the dead letters.
        receiver.set_behaviour(Behaviour::Status(422));
        let text = format!(
            "[gateway]\ndata_dir='d'\n[[webhooks]]\nname='a'\nurl='https://{}/'\nauth='none'\nca_file='{}'\nstatuses=['RoomAnalytics.*']\ndrain_start_jitter='0s'\n",
            receiver.addr(),
            ca.display()
        );
        let settings = crate::config::load_str(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .webhooks[0]
            .clone();
        let limits = Limits {
            max_bytes: 1 << 30,
            queues: vec![("a".into(), Overflow::DropOldest)],
        };
        let (store, ids) = Store::open(&dir.path().join("store"), &limits).unwrap();
        let a = ids[0];
        // The first two commits that move dead letters fail (a full disk, for a while).
        store.fail_dead_letter_commits(2);
        store.append(vec![(a, event(1))]).await.unwrap();
        let shutdown = CancellationToken::new();
        let worker = Worker {
            id: a,
            client: WebhookClient::new(&settings).unwrap(),
            settings,
            store: store.clone(),
            org_id: "org".into(),
            metrics: Arc::new(Metrics::new()),
            status: super::super::status::shared(State::Active),
            shutdown: shutdown.clone(),
            grace: Duration::from_secs(1),
            pulse: crate::pulse::Pulse::new("the delivery loop of webhook a"),
            uplink: crate::deliver::uplink::Arbiter::new(None),
            _claim: store.claim(a).unwrap(),
        };
        let task = tokio::spawn(worker.run());
        // Dead-lettered in the end: out of the queue, into the dead letters, sent once.
        let moved = eventually(15, || store.dead_count(a) == 1 && store.depth(a) == 0).await;
        assert!(
            moved,
            "depth {}, dead letters {}, store errors {}",
            store.depth(a),
            store.dead_count(a),
            store.health().errors
        );
        assert_eq!(store.health().errors, 2, "both injected failures happened");
        assert_eq!(
            receiver.requests().len(),
            1,
            "the message was not sent again"
        );
        shutdown.cancel();
        task.await.unwrap();
        store.close().await;
    }
}
