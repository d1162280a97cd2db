//! A Cisco RoomOS device as a source: one task per device keeps its xAPI WebSocket open
//! (connect, identify, subscribe, full sync, read, ping) and reconnects with capped,
//! jittered backoff. What the device reports becomes Control Hub `status` / `events`
//! messages: the current values after every (re)connect as one `isFullSync` message, then
//! each change, removals of array entries as `changes.removed`.
//!
//! Read top to bottom: [`run`] is the reconnect loop, [`Session`] one connection's state
//! machine (what is pending, what is subscribed, the snapshot being gathered).

pub(crate) mod connect;
pub(crate) mod probe;
pub(crate) mod rpc;
pub(crate) mod tree;

use crate::backoff::Doubling;
use crate::catalog::Kind;
use crate::config::RoomosSettings;
use crate::event::Event;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::pulse::Pulse;
use crate::ratelog::RateLog;
use crate::source::status::SourceStatus;
use crate::store::StoreError;
use connect::{ConnectError, FailKind, PeerCert};
use futures_util::{FutureExt, SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rpc::Incoming;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tree::{Decoded, Selection};

/// First reconnect delay; doubles per failure up to [`BACKOFF_MAX`], full jitter.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// [`BACKOFF_MAX`], or with the `testkit` feature `ROOMHOOK_TEST_RECONNECT_MAX_MS`: a test
/// hook, so that a test of the back-off need not wait out a minute's ceiling.
fn backoff_max() -> Duration {
    #[cfg(feature = "testkit")]
    if let Some(ms) = std::env::var("ROOMHOOK_TEST_RECONNECT_MAX_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    BACKOFF_MAX
}

/// Wrong credentials or an untrusted certificate do not fix themselves: retry this slowly.
const SLOW_RETRY: Duration = Duration::from_secs(60);
/// TCP + TLS + upgrade must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// A full sync not complete by then goes out with what arrived.
const SYNC_DEADLINE: Duration = Duration::from_secs(30);
/// Retry of subscriptions the device refused for a passing reason (not ready, too many).
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(30);

/// The `reason`s of `roomhook_source_decode_errors_total` a RoomOS source counts (exported
/// at 0 from the start).
const DECODE_REASONS: [&str; 8] = [
    "not_json",
    "too_long",
    "malformed",
    "unknown_method",
    "unknown_id",
    "binary",
    "bad_value",
    "too_large",
];

/// Frames already received that are handled (and committed) together.
const FRAME_BATCH: usize = 256;

/// Why a session ended.
enum End {
    /// Shutdown was asked for.
    Shutdown,
    /// The store is closed: the daemon is going away.
    StoreClosed,
    /// The connection was lost or is unusable; reconnect.
    Lost(String),
}

/// What one source counts, resolved once.
struct Counters {
    messages: Counter,
    connected: Gauge,
    reconnects: Counter,
    subscriptions_failed: Gauge,
    decode_errors: crate::metrics::DecodeErrors,
}

impl Counters {
    fn new(metrics: &Arc<Metrics>, name: &str) -> Self {
        let label = Metrics::source(name);
        Self {
            messages: metrics.source_messages.get_or_create(&label).clone(),
            connected: metrics.source_connected.get_or_create(&label).clone(),
            reconnects: metrics.source_reconnects.get_or_create(&label).clone(),
            subscriptions_failed: metrics
                .source_subscriptions_failed
                .get_or_create(&label)
                .clone(),
            decode_errors: crate::metrics::DecodeErrors::new(metrics, name, &DECODE_REASONS),
        }
    }

    fn decode_error(&self, reason: &str) {
        self.decode_errors.inc(reason);
    }
}

/// Runs one RoomOS source until shutdown.
pub async fn run(
    s: RoomosSettings,
    ingest: Ingest,
    status: std::sync::Arc<crate::source::status::SourceStatus>,
    shutdown: CancellationToken,
    pulse: Pulse,
) {
    let counters = Counters::new(ingest.metrics(), &s.name);
    status.count_reasons(counters.decode_errors.clone());
    let sel = Selection {
        statuses: s.statuses.clone(),
        events: s.events.clone(),
    };
    let mut conn_log = RateLog::new(Duration::from_secs(30));
    // A new kind of failure is logged at once; the same one again at most every 30 s.
    let mut last_failure: Option<String> = None;
    let mut backoff = Doubling::new(BACKOFF_MIN, backoff_max());
    loop {
        // Connecting is bounded by CONNECT_TIMEOUT; the session marks its own steps.
        pulse.rest();
        let seen = Arc::new(Mutex::new(PeerCert::default()));
        let attempt = tokio::select! {
            r = connect::connect(&s, CONNECT_TIMEOUT, seen) => r,
            _ = shutdown.cancelled() => break,
        };
        pulse.step();
        let delay = match attempt {
            Ok(ws) => {
                let started = Instant::now();
                counters.connected.set(1);
                status.connected();
                tracing::info!(source = %s.name, "connected to the device at {}", s.url);
                let mut session = Session::new(&s, &sel, &ingest, &counters, &status, &pulse);
                let end = session.run(ws, &shutdown).await;
                counters.connected.set(0);
                counters.subscriptions_failed.set(0);
                status.set_failed_subscriptions(Vec::new());
                match end {
                    End::Shutdown | End::StoreClosed => break,
                    End::Lost(why) => {
                        counters.reconnects.inc();
                        status.disconnected(why.clone());
                        tracing::warn!(source = %s.name, "connection to the device at {} lost: {why}; reconnecting", s.url);
                        // A connection that dies young (a device that drops it at once, a
                        // frame over max_frame every time) backs off like a failed connect.
                        let young = started.elapsed() < STABLE_AFTER;
                        if !young {
                            backoff.reset();
                        }
                        let d = jitter(backoff.current());
                        if young {
                            backoff.failed();
                        }
                        d
                    }
                }
            }
            Err(ConnectError { kind, message }) => {
                status.disconnected(message.clone());
                let failure = message.clone();
                let delay = match kind {
                    FailKind::Auth | FailKind::Trust => {
                        // Never a tight loop on a wrong password or pin; say it every time.
                        tracing::error!(source = %s.name, "device at {}: {message}; retrying in about {}s", s.url, SLOW_RETRY.as_secs());
                        SLOW_RETRY + jitter(Duration::from_secs(10))
                    }
                    _ => {
                        let d = jitter(backoff.current());
                        let new = last_failure.as_deref() != Some(message.as_str());
                        let check = conn_log.check(Instant::now());
                        if new || check.is_some() {
                            let suppressed = check.unwrap_or(0);
                            tracing::warn!(source = %s.name, suppressed, "device at {}: {message}; retrying in {:.1}s", s.url, d.as_secs_f64());
                        }
                        if kind == FailKind::RateLimited {
                            backoff.failed();
                        }
                        d
                    }
                };
                backoff.failed();
                last_failure = Some(failure);
                delay
            }
        };
        pulse.rest();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    counters.connected.set(0);
}

/// Full jitter: uniformly between zero and `max`, so that devices (and gateways) that lost
/// their connections together do not come back together.
fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

/// What a request that is waiting for its answer was for.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// `xGet` of the serial number (the default device id).
    Identity,
    /// `xFeedback/Subscribe` of query `n`.
    Subscribe(usize),
    /// `xQuery` of query `n` (current values).
    Query(usize),
}

/// One connection's state.
struct Session<'a> {
    s: &'a RoomosSettings,
    sel: &'a Selection,
    ingest: &'a Ingest,
    counters: &'a Counters,
    status: &'a SourceStatus,
    /// The feedback queries, by index.
    queries: Vec<Vec<String>>,
    /// Device id in payloads (None until the serial number is known).
    device: Option<String>,
    next_id: u64,
    /// Requests sent and not yet answered, by id (as text).
    pending: HashMap<String, Pending>,
    /// Subscription id → query index.
    subs: HashMap<u64, usize>,
    /// Queries the device refused: index → (code, reason).
    failed: BTreeMap<usize, (i64, String)>,
    /// While true, values are gathered into `snapshot` for the full sync.
    syncing: bool,
    snapshot: BTreeMap<String, Value>,
    /// Events that arrived during the sync, sent after it.
    held: Vec<Event>,
    frame_log: RateLog,
    shutdown: CancellationToken,
    /// Liveness mark of the source (for the watchdog).
    pulse: Pulse,
    /// Events decoded and not yet committed (committed together after a batch of frames).
    outbox: Vec<Event>,
}

impl<'a> Session<'a> {
    fn new(
        s: &'a RoomosSettings,
        sel: &'a Selection,
        ingest: &'a Ingest,
        counters: &'a Counters,
        status: &'a SourceStatus,
        pulse: &Pulse,
    ) -> Self {
        Self {
            s,
            sel,
            ingest,
            counters,
            status,
            queries: sel.queries(),
            device: s.device.clone(),
            next_id: 1,
            pending: HashMap::new(),
            subs: HashMap::new(),
            failed: BTreeMap::new(),
            syncing: true,
            snapshot: BTreeMap::new(),
            held: Vec::new(),
            frame_log: RateLog::new(Duration::from_secs(10)),
            shutdown: CancellationToken::new(),
            outbox: Vec::new(),
            pulse: pulse.clone(),
        }
    }

    fn request(&mut self, what: Pending) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id.to_string(), what);
        match what {
            Pending::Identity => rpc::get(
                id,
                &["Status", "SystemUnit", "Hardware", "Module", "SerialNumber"],
            ),
            Pending::Subscribe(q) => rpc::subscribe(id, &self.queries[q]),
            Pending::Query(q) => rpc::query(id, &self.queries[q]),
        }
    }

    /// Runs the connection until it ends.
    async fn run(&mut self, ws: connect::Ws, shutdown: &CancellationToken) -> End {
        self.shutdown = shutdown.clone();
        let (mut tx, mut rx) = ws.split();
        let mut out = Vec::new();
        if self.device.is_none() {
            out.push(self.request(Pending::Identity));
        }
        for q in 0..self.queries.len() {
            out.push(self.request(Pending::Subscribe(q)));
        }
        for frame in out {
            if let Err(e) = tx.send(Message::text(frame)).await {
                return End::Lost(format!("sending a request: {e}"));
            }
        }
        self.maybe_finish_sync();
        if let Err(end) = self.flush().await {
            return end;
        }
        let keep_alive = self.s.keep_alive;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        // After a stall (the store refusing), one tick, not a burst of them.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let sync_deadline = tokio::time::Instant::now() + SYNC_DEADLINE;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let mut out: Vec<String> = Vec::new();
            // Waiting for the device (the keep-alive bounds that) and timers.
            self.pulse.rest();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(None))).await;
                    return End::Shutdown;
                }
                // Frames before the ping timer: a pong that already arrived is read first.
                frame = rx.next() => {
                    self.pulse.step();
                    awaiting_pong = false;
                    // Whatever else has already arrived is handled with it, and committed
                    // together (with commit_interval set, a commit takes that long).
                    let mut next = Some(frame);
                    let mut batch = 0;
                    while let Some(frame) = next.take() {
                        match self.on_frame(frame, &mut out) {
                            Ok(true) if retry_at.is_none() => {
                                retry_at = Some(tokio::time::Instant::now() + SUBSCRIBE_RETRY);
                            }
                            Ok(_) => {}
                            Err(end) => {
                                // What the frames before it brought is still committed.
                                let _ = self.flush().await;
                                return end;
                            }
                        }
                        batch += 1;
                        if batch < FRAME_BATCH {
                            next = rx.next().now_or_never();
                        }
                    }
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                }
                _ = ping.tick() => {
                    self.pulse.step();
                    if awaiting_pong {
                        return End::Lost(format!("no pong within keep_alive ({keep_alive:?}): the device stopped answering"));
                    }
                    awaiting_pong = true;
                    match self.pulse.waiting(tokio::time::timeout(keep_alive, tx.send(Message::Ping(Vec::new().into())))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return End::Lost(format!("sending a ping: {e}")),
                        Err(_) => return End::Lost(format!("a ping could not be sent within keep_alive ({keep_alive:?}): the device stopped reading")),
                    }
                }
                _ = tokio::time::sleep_until(sync_deadline), if self.syncing => {
                    self.pulse.step();
                    tracing::warn!(source = %self.s.name, "the device did not answer every subscription and query within {SYNC_DEADLINE:?}; sending the full sync with what arrived");
                    self.pending.retain(|_, p| !matches!(p, Pending::Query(_)));
                    self.finish_sync();
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                }
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    self.pulse.step();
                    retry_at = None;
                    let asked: Vec<usize> = self.pending.values().filter_map(|p| match p { Pending::Subscribe(q) => Some(*q), _ => None }).collect();
                    let again: Vec<usize> = self.failed.iter().filter(|(q, (c, _))| rpc::retryable(*c) && !asked.contains(q)).map(|(q, _)| *q).collect();
                    for q in again {
                        out.push(self.request(Pending::Subscribe(q)));
                    }
                }
            }
            for frame in out {
                match self.pulse.waiting(tokio::time::timeout(keep_alive, tx.send(Message::text(frame)))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return End::Lost(format!("sending a request: {e}")),
                    Err(_) => return End::Lost(format!("a request could not be sent within keep_alive ({keep_alive:?}): the device stopped reading")),
                }
            }
        }
    }

    /// Handles one frame (or the end of the stream); `Ok(true)`: retry a subscription later.
    fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        out: &mut Vec<String>,
    ) -> Result<bool, End> {
        match frame {
            None => Err(End::Lost("the device closed the connection".into())),
            Some(Err(tungstenite::Error::Capacity(e))) => {
                self.counters.decode_error("too_large");
                Err(End::Lost(format!(
                    "the device sent a frame over max_frame ({} bytes): {e}",
                    self.s.max_frame
                )))
            }
            Some(Err(e)) => Err(End::Lost(e.to_string())),
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str(), out),
            Some(Ok(Message::Binary(_))) => {
                self.bad_frame("binary", "a binary frame (the xAPI speaks text)");
                Ok(false)
            }
            Some(Ok(Message::Close(_))) => {
                Err(End::Lost("the device closed the connection".into()))
            }
            Some(Ok(_)) => Ok(false),
        }
    }

    fn bad_frame(&mut self, reason: &str, what: &str) {
        self.counters.decode_error(reason);
        self.status.message(1);
        if let Some(suppressed) = self.frame_log.check(Instant::now()) {
            tracing::warn!(source = %self.s.name, suppressed, reason, "frame from the device ignored: {what}");
        }
    }

    /// Handles one text frame; `Ok(true)` when a subscription should be retried later.
    fn on_text(&mut self, text: &str, out: &mut Vec<String>) -> Result<bool, End> {
        self.counters.messages.inc();
        let mut retry = false;
        match rpc::parse(text) {
            Err(e) => {
                self.bad_frame(e.label(), &e.to_string());
                return Ok(false);
            }
            Ok(Incoming::Result { id, result }) => match self.pending.remove(&id) {
                None => self.bad_frame(
                    "unknown_id",
                    &format!("an answer to request {id}, which was not sent or already answered"),
                ),
                Some(Pending::Identity) => {
                    let serial = match &result {
                        Value::String(s)
                            if !s.trim().is_empty()
                                && s.trim().len() <= crate::event::MAX_ID_BYTES =>
                        {
                            s.trim().to_string()
                        }
                        Value::Number(n) => n.to_string(),
                        _ => {
                            let shown = crate::redact::printable(
                                &result.to_string().chars().take(80).collect::<String>(),
                            );
                            tracing::warn!(source = %self.s.name, "the device's serial number is {shown} (empty, not text, or over {} bytes); using the source name as device id (set device = \"…\")", crate::event::MAX_ID_BYTES);
                            self.s.name.clone()
                        }
                    };
                    tracing::info!(source = %self.s.name, "device id {serial} (serial number)");
                    self.device = Some(serial);
                }
                Some(Pending::Subscribe(q)) => {
                    let Some(sub) = result
                        .get("Id")
                        .and_then(|i| i.as_u64().or_else(|| i.as_str()?.parse().ok()))
                    else {
                        self.bad_frame("malformed", "a subscription answer without Id");
                        self.failed.insert(
                            q,
                            (
                                0,
                                "the device answered the subscription without an Id".into(),
                            ),
                        );
                        self.publish_failures();
                        self.maybe_finish_sync();
                        return Ok(false);
                    };
                    self.subs.insert(sub, q);
                    if self.failed.remove(&q).is_some() {
                        tracing::info!(source = %self.s.name, "subscribed to {} on retry", tree::query_text(&self.queries[q]));
                        self.publish_failures();
                    }
                    if self.queries[q].first().map(String::as_str) == Some("Status") {
                        out.push(self.request(Pending::Query(q)));
                    }
                }
                Some(Pending::Query(_)) => {
                    let mut d = Decoded::default();
                    if let Some(tree) = result.get("Status") {
                        tree::decode_status(tree, self.sel, &mut d);
                    }
                    self.absorb(d);
                }
            },
            Ok(Incoming::Error { id, code, message }) => {
                let what = id.as_ref().and_then(|i| self.pending.remove(i));
                let why = rpc::explain(code, &message);
                match what {
                    Some(Pending::Identity) if code == rpc::NOT_READY => {
                        // Just after a reboot: the identity comes once the device is ready.
                        return Err(End::Lost(format!(
                            "cannot read the device's serial number yet: {why}"
                        )));
                    }
                    Some(Pending::Identity) => {
                        tracing::warn!(source = %self.s.name, "cannot read the device's serial number ({why}); using the source name as device id (set device = \"…\")");
                        self.device = Some(self.s.name.clone());
                    }
                    Some(Pending::Subscribe(q)) => {
                        let path = tree::query_text(&self.queries[q]);
                        tracing::warn!(source = %self.s.name, subscription = %path, "the device refused the subscription to {path}: {why}; the other subscriptions go on");
                        retry |= rpc::retryable(code);
                        self.failed.insert(q, (code, why));
                        self.publish_failures();
                    }
                    Some(Pending::Query(q)) => {
                        tracing::warn!(source = %self.s.name, "the device did not give the current values of {}: {why}", tree::query_text(&self.queries[q]));
                    }
                    None => self.bad_frame(
                        "unknown_id",
                        &format!("an error for an unknown request: {why}"),
                    ),
                }
            }
            Ok(Incoming::Feedback { sub, doc, tree }) => {
                if !self.subs.contains_key(&sub) {
                    self.bad_frame(
                        "unknown_id",
                        &format!(
                            "a notification for subscription {sub}, which roomhook does not hold"
                        ),
                    );
                    return Ok(false);
                }
                let mut d = Decoded::default();
                match doc.as_str() {
                    "Status" => tree::decode_status(&tree, self.sel, &mut d),
                    "Event" => tree::decode_events(&tree, self.sel, &mut d),
                    _ => {}
                }
                self.absorb(d);
            }
        }
        self.maybe_finish_sync();
        Ok(retry)
    }

    /// Publishes the refused subscriptions to `status` and the metric.
    fn publish_failures(&self) {
        self.counters
            .subscriptions_failed
            .set(self.failed.len() as i64);
        self.status.set_failed_subscriptions(
            self.failed
                .iter()
                .map(|(q, (_, why))| format!("{}: {why}", tree::query_text(&self.queries[*q])))
                .collect(),
        );
    }

    /// Takes decoded values: into the snapshot while syncing, out as messages after.
    fn absorb(&mut self, mut d: Decoded) {
        for (path, why) in &d.bad_values {
            self.counters.decode_error("bad_value");
            if let Some(suppressed) = self.frame_log.check(Instant::now()) {
                tracing::warn!(source = %self.s.name, suppressed, "value of {path} ignored: {why}");
            }
        }
        // A path over the limit (a broken or hostile device) is refused, the rest goes on.
        let fits = |p: &String| p.len() <= crate::event::MAX_ID_BYTES;
        let before = d.updated.len() + d.removed.len() + d.events.len();
        d.updated.retain(|(p, _)| fits(p));
        d.removed.retain(fits);
        d.events.retain(|(p, _)| fits(p));
        let refused = before - (d.updated.len() + d.removed.len() + d.events.len());
        if refused > 0 {
            for _ in 0..refused {
                self.counters.decode_error("too_long");
            }
            if let Some(suppressed) = self.frame_log.check(Instant::now()) {
                tracing::warn!(source = %self.s.name, suppressed, "{refused} value(s) ignored: path over {} bytes", crate::event::MAX_ID_BYTES);
            }
        }
        self.status.message((d.bad_values.len() + refused) as u64);
        let now = crate::timefmt::now_ms();
        let device = self.device.clone().unwrap_or_else(|| self.s.name.clone());
        let event = |kind: Kind, path: String, value: Value| Event {
            device: device.clone(),
            workspace: self.s.workspace.clone(),
            path,
            kind,
            value,
            ts_ms: now,
            full_sync: false,
            more: Vec::new(),
        };
        let events: Vec<Event> = d
            .events
            .into_iter()
            .map(|(p, v)| event(Kind::Event, p, v))
            .collect();
        if self.syncing {
            for (p, v) in d.updated {
                self.snapshot.insert(p, v);
            }
            for p in &d.removed {
                self.snapshot.remove(p);
            }
            self.held.extend(events);
            return;
        }
        let mut out: Vec<Event> = d
            .updated
            .into_iter()
            .map(|(p, v)| event(Kind::Status, p, v))
            .collect();
        if let Some(gone) = Event::with_changes(
            device.clone(),
            self.s.workspace.clone(),
            now,
            false,
            d.removed.into_iter().map(|p| (p, Value::Null)).collect(),
        ) {
            out.push(gone);
        }
        out.extend(events);
        self.outbox.append(&mut out);
    }

    fn maybe_finish_sync(&mut self) {
        // Every pending request is part of the sync: identity, subscriptions, their queries.
        if self.syncing && self.pending.is_empty() {
            self.finish_sync();
        }
    }

    /// Sends the full sync (every current value, one message) and the events held meanwhile.
    fn finish_sync(&mut self) {
        self.syncing = false;
        let values = std::mem::take(&mut self.snapshot);
        let n = values.len();
        let device = self.device.clone().unwrap_or_else(|| self.s.name.clone());
        let mut out = Vec::new();
        if let Some(sync) = Event::with_changes(
            device,
            self.s.workspace.clone(),
            crate::timefmt::now_ms(),
            true,
            values.into_iter().collect(),
        ) {
            out.push(sync);
        }
        out.append(&mut self.held);
        tracing::info!(source = %self.s.name, "subscribed to {} of {} path(s); full sync of {n} value(s)", self.queries.len() - self.failed.len(), self.queries.len());
        self.status.subscribed();
        self.outbox.append(&mut out);
    }

    /// Commits the outbox (retrying while the store refuses; the device will not send the
    /// events again).
    async fn flush(&mut self) -> Result<(), End> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.outbox);
        let mut wait = Doubling::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.pulse.waiting(self.ingest.accept(events.clone())).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Closed) => return Err(End::StoreClosed),
                Err(e) => {
                    tracing::warn!(source = %self.s.name, "the store refused {} event(s), retrying in {:?}: {e}", events.len(), wait.current());
                    self.pulse.rest();
                    tokio::select! {
                        _ = tokio::time::sleep(wait.current()) => {}
                        _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                    }
                    self.pulse.step();
                    wait.failed();
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
