//! The delivery loop of one webhook: loads a bounded window of its queue from the store,
//! asks the scheduler what to send, POSTs it, and reports 2xx answers back to the store
//! for removal. Its inputs are the store's commit notifications and the request results.

use super::backoff::Backoff;
use super::client::{Failure, FailureKind, Outcome, WebhookClient};
use super::payload;
use super::scheduler::{Scheduler, Verdict};
use crate::metrics::{Metrics, WebhookCodeLabel, WebhookKindLabel};
use crate::ratelog::RateLog;
use crate::store::{Entry, Store, WebhookId};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most queue entries held in memory per webhook.
pub const WINDOW: usize = 1024;
/// Shortest and longest pause a `Retry-After` may ask for.
const RETRY_AFTER_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

/// Everything one webhook's delivery loop needs.
pub struct Worker {
    /// Store id of the webhook.
    pub id: WebhookId,
    /// Its name (logs, metric labels).
    pub name: String,
    /// The HTTPS client.
    pub client: WebhookClient,
    /// The store.
    pub store: Store,
    /// `orgId` of every payload.
    pub org_id: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Retry delays.
    pub backoff: Backoff,
    /// Most requests in flight.
    pub max_in_flight: usize,
    /// Stops the loop.
    pub shutdown: CancellationToken,
    /// How long in-flight requests may finish after shutdown.
    pub grace: Duration,
}

type Done = (Arc<str>, Arc<Entry>, Outcome, Duration);

impl Worker {
    /// Runs until shutdown.
    pub async fn run(self) {
        let Some(mut committed) = self.store.watch(self.id) else {
            tracing::error!(webhook = %self.name, "webhook has no queue in the store");
            return;
        };
        let label = Metrics::webhook(&self.name);
        let delivered = self.metrics.events_delivered.get_or_create(&label).clone();
        let duration = self.metrics.request_duration.get_or_create(&label).clone();
        let latency = self.metrics.delivery_latency.get_or_create(&label).clone();
        let queue_gauge = self.metrics.queue_events.get_or_create(&label).clone();
        let in_flight_gauge = self.metrics.in_flight.get_or_create(&label).clone();
        let mut codes: HashMap<u16, Counter> = HashMap::new();
        let mut logs: HashMap<&'static str, RateLog> = HashMap::new();

        let mut sched: Scheduler<Arc<Entry>> = Scheduler::new(self.max_in_flight, self.backoff);
        let mut loaded = 0u64;
        let mut removed: Vec<u64> = Vec::new();
        let mut in_flight = FuturesUnordered::new();

        let mut handle = |sched: &mut Scheduler<Arc<Entry>>, removed: &mut Vec<u64>, done: Done| {
            let (device, entry, outcome, took) = done;
            duration.observe(took.as_secs_f64());
            let now = Instant::now();
            let unit: f64 = rand::random();
            match outcome {
                Outcome::Delivered { status } => {
                    codes
                        .entry(status.as_u16())
                        .or_insert_with(|| self.code_counter(status.as_u16()))
                        .inc();
                    delivered.inc();
                    let age_ms = crate::timefmt::now_ms()
                        .saturating_sub(entry.event.ts_ms)
                        .max(0);
                    latency.observe(age_ms as f64 / 1000.0);
                    if let Some(e) = sched.complete(&device, Verdict::Done, now, unit) {
                        removed.push(e.seq);
                    }
                }
                Outcome::Failed(f) => {
                    if let FailureKind::Http(s) = f.kind {
                        codes
                            .entry(s.as_u16())
                            .or_insert_with(|| self.code_counter(s.as_u16()))
                            .inc();
                    }
                    self.metrics
                        .request_errors
                        .get_or_create(&WebhookKindLabel {
                            webhook: self.name.clone(),
                            kind: f.kind.label().to_string(),
                        })
                        .inc();
                    let log = logs
                        .entry(f.kind.label())
                        .or_insert_with(|| RateLog::new(Duration::from_secs(10)));
                    if let Some(suppressed) = log.check(now) {
                        tracing::warn!(
                            webhook = %self.name,
                            kind = f.kind.label(),
                            suppressed,
                            "delivery failed, the event stays queued and is retried: {}",
                            f.message
                        );
                    }
                    let retry_after = retry_after(&f);
                    sched.complete(&device, Verdict::Retry { retry_after }, now, unit);
                }
            }
        };

        loop {
            // 1. Refill the window from the store.
            if sched.len() < WINDOW && *committed.borrow_and_update() > loaded {
                let (store, id, after, limit) =
                    (self.store.clone(), self.id, loaded, WINDOW - sched.len());
                match tokio::task::spawn_blocking(move || store.read_after(id, after, limit)).await
                {
                    Ok(Ok(entries)) => {
                        for e in entries {
                            loaded = e.seq;
                            let device = e.event.device.clone();
                            sched.push(&device, Arc::new(e));
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(webhook = %self.name, "cannot read the queue: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = self.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(webhook = %self.name, "queue reader failed: {e}");
                        break;
                    }
                }
            }
            // 2. Send what the scheduler allows now.
            let now = Instant::now();
            while let Some((device, entry)) = sched.next(now) {
                in_flight.push(self.send(device, entry));
            }
            // 3. Hand delivered entries back to the store.
            if !removed.is_empty()
                && self
                    .store
                    .remove(self.id, std::mem::take(&mut removed))
                    .await
                    .is_err()
            {
                break;
            }
            queue_gauge.set(self.store.depth(self.id) as i64);
            in_flight_gauge.set(sched.in_flight() as i64);
            // 4. Wait for something to do.
            let wake = sched.next_wakeup();
            let want_more = sched.len() < WINDOW;
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => handle(&mut sched, &mut removed, done),
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
            handle(&mut sched, &mut removed, done);
        }
        let _ = self.store.remove(self.id, removed).await;
        in_flight_gauge.set(0);
    }

    fn code_counter(&self, code: u16) -> Counter {
        self.metrics
            .requests
            .get_or_create(&WebhookCodeLabel {
                webhook: self.name.clone(),
                code: code.to_string(),
            })
            .clone()
    }

    fn send(&self, device: Arc<str>, entry: Arc<Entry>) -> impl std::future::Future<Output = Done> {
        let client = self.client.clone();
        let body = Bytes::from(payload::message(&entry.event, &self.org_id));
        async move {
            let (outcome, took) = client.post(body, &[]).await;
            (device, entry, outcome, took)
        }
    }
}

/// The pause a failure asks for: `Retry-After` on 429 and 503, clamped to [1 s, 1 h].
fn retry_after(f: &Failure) -> Option<Duration> {
    match f.kind {
        FailureKind::Http(s) if s.as_u16() == 429 || s.as_u16() == 503 => f
            .retry_after
            .map(|d| d.clamp(RETRY_AFTER_RANGE.0, RETRY_AFTER_RANGE.1)),
        _ => None,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
