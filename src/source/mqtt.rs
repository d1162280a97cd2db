//! The MQTT source: a persistent QoS 1 session (fixed client id, clean session off, manual
//! acks). Each message is decoded, routed and committed; its PUBACK goes out only after the
//! commit, in arrival order. Reconnects with backoff and subscribes on every connection.

use crate::backoff::Doubling;
use crate::config::MqttSettings;
use crate::ingest::Ingest;
use crate::metrics::{DecodeErrors, Metrics};
use crate::pulse::Pulse;
use crate::ratelog::RateLog;
use crate::source::decode::DecodeError;
use crate::source::status::SourceStatus;
use crate::store::{Mark, StoreError};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
    Transport,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Messages received but not yet committed and acked; past it, reading pauses (the broker
/// holds the rest).
const MAX_PENDING: usize = 2048;
/// A quiet source's cleared redelivery marks are committed this long after the last ack.
const MARKS_FLUSH_AFTER: Duration = Duration::from_secs(5);
/// Acks whose marks are handed to the store together, at most.
const MARKS_BATCH: usize = 256;
/// How long acks wait for more before their marks are handed over.
const MARKS_DELAY: Duration = Duration::from_millis(100);
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
#[error("MQTT source {name}: {reason}")]
pub(crate) struct MqttSetupError {
    name: String,
    reason: String,
}

/// Builds the rumqttc options for a source.
pub(crate) fn options(s: &MqttSettings) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        // Packets up to `max_payload` and a topic: rumqttc refuses a larger one at its
        // fixed header (before reading any of it) and drops the connection, and the run
        // loop reads past it on a second connection (mqtt_drain.rs). Payloads over
        // `max_payload` within the cap are acked, counted and skipped.
        .set_max_packet_size(packet_cap(s), 64 * 1024)
        .set_request_channel_capacity(MAX_PENDING * 2);
    if let Some((user, pass)) = &s.credentials {
        o.set_credentials(user.clone(), pass.expose().to_string());
    }
    if let Some(trust) = &s.tls {
        let cfg = crate::tls::client_config(trust, &[]).map_err(|e| MqttSetupError {
            name: s.name.clone(),
            reason: e.to_string(),
        })?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(cfg),
        ));
    }
    Ok(o)
}

/// The largest packet the source reads: `max_payload` plus room for a topic.
pub(crate) fn packet_cap(s: &MqttSettings) -> usize {
    s.max_payload.saturating_add(super::mqtt_drain::HEADROOM)
}

/// The declared size of the packet that broke the connection, if it was over the cap.
fn oversized(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// A received message that is not acknowledged yet.
struct Held {
    /// Connection generation it arrived on (its packet id means nothing on another).
    gen: u64,
    publish: Publish,
    /// What it decoded to (empty: nothing to store, ack in turn).
    events: Vec<crate::event::Event>,
    mark: Mark,
}

type PendingAck = BoxFuture<'static, (Held, Result<(), StoreError>)>;

/// Longest wait between two attempts to commit a refused message.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Runs one MQTT source until shutdown.
///
/// Messages are submitted to the store as they arrive and acknowledged in arrival order once
/// committed. When the store refuses one (full under `block`, or an I/O error), the writer
/// refuses everything after it from this source too; those messages queue here, in order,
/// unacknowledged (the broker holds everything behind them), and the head is retried when
/// the store frees room, and with backoff, until it commits; then the rest follow in order.
pub async fn run(
    s: MqttSettings,
    ingest: Ingest,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    pulse: Pulse,
) -> Result<(), MqttSetupError> {
    let opts = options(&s)?;
    let (client, mut eventloop) = AsyncClient::new(opts, MAX_PENDING * 2);
    let metrics = ingest.metrics().clone();
    let label = Metrics::source(&s.name);
    let messages = metrics.source_messages.get_or_create(&label).clone();
    let connected = metrics.source_connected.get_or_create(&label).clone();
    let reconnects = metrics.source_reconnects.get_or_create(&label).clone();
    let redelivered = metrics.source_redelivered.get_or_create(&label).clone();
    let mut reasons = DecodeError::LABELS.to_vec();
    reasons.push("too_large");
    let decode_errors = DecodeErrors::new(&metrics, &s.name, &reasons);
    status.count_reasons(decode_errors.clone());
    let mut decode_log = RateLog::new(Duration::from_secs(10));
    let mut conn_log = RateLog::new(Duration::from_secs(30));
    let mut generation = 0u64;
    // Resends (DUP) of this connection not yet through the store's check: marks carried
    // over from the last connection stay until there are none.
    let mut dups_open = 0usize;
    let mut backoff = Doubling::new(RECONNECT_MIN, RECONNECT_MAX);
    // The pause after an oversized message broke the connection; back to its start once a
    // message within the cap arrives.
    let mut oversize_wait = Doubling::new(Duration::from_secs(1), Duration::from_secs(60));
    // The last messages skipped as over max_payload (packet id, digest of topic and
    // payload): the broker sends one again (DUP) when its ack had not reached it before a
    // disconnect; counted once.
    let mut skipped: std::collections::VecDeque<(u16, u64)> = Default::default();
    let mut was_connected = false;
    // Submitted, waiting for the commit, in arrival order.
    let mut pending: FuturesOrdered<PendingAck> = FuturesOrdered::new();
    // Refused by the store (or behind a refused one), in arrival order.
    let mut retry: VecDeque<Held> = VecDeque::new();
    let mut retry_wait = Doubling::new(Duration::from_millis(500), RETRY_MAX);
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Commits that freed room in the store: held input is retried at once then.
    let mut freed = ingest.room_freed();
    // PUBACKs ready to go, in arrival order; handed to the client as its queue has room
    // (the event loop below sends them).
    let mut to_ack: VecDeque<Publish> = VecDeque::new();
    // Packet ids whose PUBACK was written, on their way to the store.
    let mut acked = AckedMarks::default();
    // When the event loop was last polled: while input is held at the cap it is still
    // polled every half keep-alive, so that pings go out and the broker keeps the session
    // (else it drops the connection after 1.5 keep-alives and redelivers everything).
    let mut polled = tokio::time::Instant::now();
    let ping_every = (s.keep_alive / 2).max(Duration::from_secs(1));

    loop {
        pulse.step();
        if acked.full() {
            pulse.waiting(acked.hand_over(&ingest, &s.name)).await;
        }
        while let Some(p) = to_ack.front() {
            if client.try_ack(p).is_err() {
                break;
            }
            to_ack.pop_front();
        }
        let can_retry = !retry.is_empty() && pending.is_empty();
        let room = pending.len() + retry.len() < MAX_PENDING || !to_ack.is_empty();
        let ping_due = polled + ping_every;
        let can_poll = room || tokio::time::Instant::now() >= ping_due;
        // Waiting for the broker (its keep-alive bounds that), commits and timers.
        pulse.rest();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some((held, result)) = pending.next(), if !pending.is_empty() && to_ack.len() < MAX_PENDING => {
                if held.gen != generation {
                    // Its packet id belongs to an old connection; the broker redelivers it.
                    continue;
                }
                if held.publish.dup && matches!(result, Ok(()) | Err(StoreError::Redelivered)) {
                    dups_open = dups_open.saturating_sub(1);
                }
                match result {
                    Ok(()) => to_ack.push_back(held.publish),
                    Err(StoreError::Redelivered) => {
                        // Committed before a crash or disconnect, but its PUBACK was lost.
                        tracing::debug!(source = %s.name, pkid = held.publish.pkid, "redelivery of a committed message: acked, not stored again");
                        redelivered.inc();
                        to_ack.push_back(held.publish);
                    }
                    Err(StoreError::Closed) => break,
                    Err(e) => {
                        if retry.is_empty() {
                            tracing::warn!(source = %s.name, "the store refused a message, holding it and everything after it unacked (the broker keeps them): {e}");
                            retry_at = Some(tokio::time::Instant::now() + retry_wait.current());
                        }
                        retry.push_back(held);
                    }
                }
            }
            _ = sleep_until_opt(acked.next_wakeup()), if acked.next_wakeup().is_some() => {
                pulse.waiting(acked.on_wakeup(&ingest, &s.name)).await;
            }
            changed = freed.changed(), if can_retry => {
                // Room was freed (delivered or dropped entries): try the head now.
                if changed.is_ok() {
                    retry_at = Some(tokio::time::Instant::now());
                }
            }
            _ = sleep_until_opt(retry_at), if can_retry => {
                pulse.step();
                let Some(mut head) = retry.pop_front() else { continue };
                head.mark.resume = true;
                let result = if head.events.is_empty() {
                    Ok(())
                } else {
                    // A store that is reopening may take long to answer: a shutdown must
                    // not wait for it (the message stays with the broker).
                    let attempt = async {
                        match ingest.submit(head.events.clone(), Some(head.mark.clone())).await {
                            Ok(commit) => commit.await,
                            Err(e) => Err(e),
                        }
                    };
                    match pulse.waiting(shutdown.run_until_cancelled(attempt)).await {
                        Some(r) => r,
                        None => break,
                    }
                };
                match result {
                    Ok(()) | Err(StoreError::Redelivered) => {
                        if matches!(result, Err(StoreError::Redelivered)) {
                            redelivered.inc();
                        }
                        if head.publish.dup {
                            dups_open = dups_open.saturating_sub(1);
                        }
                        to_ack.push_back(head.publish);
                        retry_wait.reset();
                        retry_at = None;
                        tracing::info!(source = %s.name, "the store takes messages again; {} held message(s) follow in order", retry.len());
                        while let Some(h) = retry.pop_front() {
                            match pulse.waiting(shutdown.run_until_cancelled(submit(&ingest, h))).await {
                                Some(p) => pending.push_back(p),
                                None => break,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(source = %s.name, "still refused, retrying in {:?}: {e}", retry_wait.current());
                        retry.push_front(head);
                        retry_wait.failed();
                        retry_at = Some(tokio::time::Instant::now() + retry_wait.current());
                    }
                }
            }
            _ = tokio::time::sleep_until(ping_due), if !can_poll => {}
            ev = eventloop.poll(), if can_poll => { pulse.step(); polled = tokio::time::Instant::now(); match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                    generation += 1;
                    dups_open = 0;
                    // Packet ids of the old connection mean nothing on this one; the broker
                    // redelivers whatever was not acknowledged.
                    to_ack.clear();
                    acked.reconnected();
                    tracing::debug!(source = %s.name, carried = acked.carried.len(), stale = ?acked.stale_ping, "redelivery marks carried over the reconnect");
                    retry.clear();
                    retry_at = None;
                    backoff.reset();
                    was_connected = true;
                    connected.set(1);
                    status.connected();
                    tracing::info!(source = %s.name, session_present = ack.session_present, "connected to {}:{}", s.host, s.port);
                    let subs = s.subscriptions.iter().map(|sub| rumqttc::SubscribeFilter::new(sub.filter.as_str().to_string(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::error!(source = %s.name, "cannot subscribe: {e}");
                    }
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                    let mut granted = 0;
                    for (code, sub) in ack.return_codes.iter().zip(&s.subscriptions) {
                        if matches!(code, SubscribeReasonCode::Failure) {
                            tracing::error!(source = %s.name, topic = %sub.filter, "the broker refused the subscription (check its ACL)");
                        } else {
                            granted += 1;
                        }
                    }
                    tracing::info!(source = %s.name, "subscribed to {granted} of {} filter(s)", s.subscriptions.len());
                    if granted > 0 {
                        status.subscribed();
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(mut p))) => {
                    messages.inc();
                    oversize_wait.reset();
                    if p.dup {
                        dups_open += 1;
                    }
                    if acked.old_mark(p.pkid, p.dup) {
                        pulse.waiting(acked.hand_over(&ingest, &s.name)).await;
                    }
                    // With DUP set, the store recognises (in the same transaction as the
                    // append) a message it committed before whose PUBACK was never written.
                    let mark = Mark { source: s.name.clone(), pkid: p.pkid, digest: digest(&p), resume: false, dup: p.dup };
                    let events = if p.payload.len() > s.max_payload {
                        let key = (p.pkid, mark.digest);
                        let again = skipped.iter().position(|k| *k == key).filter(|_| p.dup);
                        match again {
                            Some(i) => {
                                skipped.remove(i);
                            }
                            None => {
                                decode_errors.inc("too_large");
                                if let Some(suppressed) = decode_log.check(Instant::now()) {
                                    tracing::warn!(source = %s.name, topic = %p.topic, suppressed, "message of {} bytes skipped: over max_payload ({} bytes)", p.payload.len(), s.max_payload);
                                }
                                if skipped.len() == 8 {
                                    skipped.pop_front();
                                }
                            }
                        }
                        skipped.push_back(key);
                        (Vec::new(), 1)
                    } else {
                        decode(&s, &p, &decode_errors, &mut decode_log)
                    };
                    status.message(events.1);
                    let events = events.0;
                    // Held until its ack: without its payload (decoded already), so that
                    // 2,048 held messages do not hold 2,048 payloads.
                    p.payload = bytes::Bytes::new();
                    let held = Held { gen: generation, publish: p, events, mark };
                    if retry.is_empty() {
                        // Waits for room in the store's queue of ops, unless shutting down.
                        match pulse.waiting(shutdown.run_until_cancelled(submit(&ingest, held))).await {
                            Some(p) => pending.push_back(p),
                            None => break,
                        }
                    } else {
                        // Holding: not submitted, but it takes its place behind the older
                        // messages still in `pending`, so the held queue stays in order.
                        pending.push_back(Box::pin(async move { (held, Err(StoreError::Full)) }));
                    }
                }
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::PubAck(pkid))) => acked.push(pkid),
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::PingReq)) => acked.ping_sent(),
                Ok(MqttEvent::Incoming(Packet::PingResp)) => acked.ping_answered(dups_open == 0),
                Ok(_) => {}
                Err(e) => {
                    connected.set(0);
                    if was_connected {
                        reconnects.inc();
                        was_connected = false;
                    }
                    pulse.rest();
                    if let Some(size) = oversized(&e) {
                        // Refused at its header, never buffered. The broker would send it
                        // again first on every reconnect: read past it and ack it on a
                        // connection of its own, then reconnect after a pause that grows
                        // while it keeps happening.
                        decode_errors.inc("too_large");
                        status.disconnected(format!("a message of {size} bytes is over the packet cap of {} bytes (max_payload plus the topic)", packet_cap(&s)));
                        tracing::warn!(source = %s.name, "a message of {size} bytes is over the packet cap ({} bytes: max_payload plus the topic); disconnected before reading it, reading past it and acknowledging it on a second connection", packet_cap(&s));
                        match shutdown.run_until_cancelled(super::mqtt_drain::drain(&s, packet_cap(&s))).await {
                            None => break,
                            Some(Ok(skipped)) => {
                                // The one that broke the connection is counted above.
                                for k in skipped.iter().skip(1) {
                                    decode_errors.inc("too_large");
                                    tracing::warn!(source = %s.name, topic = %k.topic, "message of {} bytes skipped: over the packet cap", k.bytes);
                                }
                                tracing::info!(source = %s.name, "read past {} oversized message(s); reconnecting in {:?}", skipped.len(), oversize_wait.current());
                            }
                            Some(Err(why)) => tracing::warn!(source = %s.name, "could not read past the oversized message, retrying in {:?}: {why}", oversize_wait.current()),
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(oversize_wait.current()) => {}
                            _ = shutdown.cancelled() => break,
                        }
                        oversize_wait.failed();
                        continue;
                    }
                    status.disconnected(e.to_string());
                    if let Some(suppressed) = conn_log.check(Instant::now()) {
                        tracing::warn!(source = %s.name, suppressed, "MQTT connection to {}:{} failed, retrying in {:?}: {e}", s.host, s.port, backoff.current());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.current()) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff.failed();
                }
            }}
        }
    }
    // Commit and ack what was already submitted, then leave (the session stays on the broker).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some((held, result))) = tokio::time::timeout_at(deadline, pending.next()).await {
        if held.gen == generation && matches!(result, Ok(()) | Err(StoreError::Redelivered)) {
            to_ack.push_back(held.publish);
        } else {
            break;
        }
    }
    for p in &to_ack {
        let _ = client.try_ack(p);
    }
    let _ = client.try_disconnect();
    let flush = async {
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                MqttEvent::Outgoing(rumqttc::Outgoing::PubAck(pkid)) => acked.push(pkid),
                MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect) => break,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    // The store commits these before it closes (a mark left behind could swallow a new
    // message that reuses the packet id with DUP set and the same payload).
    acked.hand_over(&ingest, &s.name).await;
    connected.set(0);
    Ok(())
}

/// Packet ids whose PUBACK was written, on their way to the store, where their redelivery
/// marks are cleared: handed over in batches (one op per 256 acks or 100 ms, not one per
/// message: thousands of writer wake-ups saved at full speed), at once when the broker
/// reuses one of them (its old mark must go before the new message is checked: channel
/// order), and with a flush request once the source has been quiet for a while.
#[derive(Default)]
struct AckedMarks {
    /// PUBACKs written on this connection that the broker is not yet known to have read
    /// (a PUBACK written just before the connection breaks may be lost in transit: its mark
    /// must stay, or the broker's redelivery would be stored twice).
    unconfirmed: Vec<u16>,
    /// The packet ids in `unconfirmed`, for a check per publish that does not scan it (it
    /// holds every PUBACK since the last ping answer: up to 65,535 at full speed).
    unconfirmed_set: PkidSet,
    /// How many of `unconfirmed` were written before the ping in flight: its answer
    /// confirms those, not the PUBACKs written after it.
    before_ping: Option<usize>,
    /// PUBACKs of earlier connections not known to have arrived. The first ping answered
    /// on this connection confirms them all: a broker resends what it has not seen acked
    /// right after CONNACK, before it reads anything of ours, so every such redelivery
    /// came (and met its mark) before that answer; whatever did not come was acked.
    carried: Vec<u16>,
    /// The packet ids in `carried`.
    carried_set: PkidSet,
    /// The part of `carried` written before the last connection's ping in flight when it
    /// broke. rumqttc hands out a ping answer read together with the break only after the
    /// next CONNACK; that answer proves the broker read these (one TCP stream, in order).
    stale_ping: Option<std::ops::Range<usize>>,
    /// PUBACKs the broker has read (a later ping answered, or the packet id reused): their
    /// marks go to the store.
    written: Vec<u16>,
    /// When the ones gathered so far are handed over.
    due: Option<tokio::time::Instant>,
    /// When the store is asked to commit what it holds of them.
    flush_at: Option<tokio::time::Instant>,
}

impl AckedMarks {
    /// A PUBACK for `pkid` was written. It supersedes one written earlier for the same id
    /// and not yet confirmed (on an earlier connection, say): the store holds one mark per
    /// id, and it may go only once the broker has read this newest PUBACK. Confirming the
    /// older one (by reuse of an id acked after it, or a ping) would clear the mark that
    /// this one still needs (found by tests/mqtt_dupguard.rs, seed 2001).
    fn push(&mut self, pkid: u16) {
        self.arrived(pkid);
        if self.unconfirmed_set.contains(pkid) {
            if let Some(i) = self.unconfirmed.iter().position(|p| *p == pkid) {
                self.unconfirmed.remove(i);
                self.before_ping = self.before_ping.map(|b| if i < b { b - 1 } else { b });
            }
        }
        self.unconfirmed.push(pkid);
        self.unconfirmed_set.insert(pkid);
    }

    /// The first `n` unconfirmed PUBACKs are known to have arrived.
    fn confirm(&mut self, n: usize) {
        for p in self.unconfirmed.drain(..n) {
            self.unconfirmed_set.remove(p);
            self.written.push(p);
        }
        self.before_ping = self.before_ping.map(|b| b.saturating_sub(n));
    }

    /// A ping was written: the PUBACKs written so far come before it on the stream.
    fn ping_sent(&mut self) {
        // A stale answer is handed out before anything of this connection: none now.
        self.stale_ping = None;
        self.before_ping = Some(self.unconfirmed.len());
    }

    /// A publish with `pkid` arrived (a resend or a new message): a PUBACK carried over a
    /// reconnect for an earlier message with that id no longer speaks for the store's mark,
    /// which this publish checks or replaces; the PUBACK written for it will. Left carried,
    /// it could be confirmed later (a reuse of an id acked after it) and its clear, handed
    /// over after this publish's append, would delete the mark the append wrote (found by
    /// tests/mqtt_dupguard.rs, seed 2005).
    fn arrived(&mut self, pkid: u16) {
        if !self.carried_set.contains(pkid) {
            return;
        }
        self.carried_set.remove(pkid);
        if let Some(i) = self.carried.iter().position(|p| *p == pkid) {
            self.carried.remove(i);
            self.stale_ping = self.stale_ping.take().map(|r| {
                let shift = |x: usize| if i < x { x - 1 } else { x };
                shift(r.start)..shift(r.end)
            });
        }
    }

    /// The broker answered the ping (one TCP stream, in order): it has read the PUBACKs
    /// written before the ping.
    /// `settled`: every resend (DUP) of this connection has met the store's check (one
    /// held back while the store refuses must still find its mark).
    /// An answer to no ping of this connection is a stale one (rumqttc hands out a ping
    /// answer read together with the break after the next CONNACK): it confirms the
    /// PUBACKs the last connection wrote before its ping, and nothing else.
    fn ping_answered(&mut self, settled: bool) {
        let Some(before) = self.before_ping.take() else {
            if let Some(r) = self.stale_ping.take().filter(|r| !r.is_empty()) {
                for p in self.carried.drain(r) {
                    self.carried_set.remove(p);
                    self.written.push(p);
                }
                self.due
                    .get_or_insert_with(|| tokio::time::Instant::now() + MARKS_DELAY);
            }
            return;
        };
        let n = before.min(self.unconfirmed.len());
        let carried = settled && !self.carried.is_empty();
        if n == 0 && !carried {
            return;
        }
        if carried {
            self.written.append(&mut self.carried);
            self.carried_set.clear();
            self.stale_ping = None;
        }
        self.confirm(n);
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + MARKS_DELAY);
    }

    /// A new connection: what was not confirmed may not have arrived; those marks stay
    /// until the first ping of the new connection is answered.
    fn reconnected(&mut self) {
        let base = self.carried.len();
        let before = self
            .before_ping
            .take()
            .map(|b| b.min(self.unconfirmed.len()));
        self.stale_ping = before.map(|b| base..base + b);
        for p in &self.unconfirmed {
            self.carried_set.insert(*p);
        }
        self.carried.append(&mut self.unconfirmed);
        self.unconfirmed_set.clear();
    }

    fn full(&self) -> bool {
        self.written.len() >= MARKS_BATCH
    }

    async fn hand_over(&mut self, store: &Ingest, source: &str) {
        if !self.written.is_empty() {
            tracing::debug!(source, pkids = ?self.written, carried = self.carried.len(), unconfirmed = self.unconfirmed.len(), "redelivery marks cleared");
            store
                .clear_marks(source, std::mem::take(&mut self.written))
                .await;
        }
        self.due = None;
        self.flush_at = Some(tokio::time::Instant::now() + MARKS_FLUSH_AFTER);
    }

    /// A publish with `pkid` arrived: whether the marks must go to the store before it (a
    /// mark of its packet id is old). A DUP whose id the broker is known to have freed (a
    /// ping answered after our PUBACK) is a new message too.
    fn old_mark(&mut self, pkid: u16, dup: bool) -> bool {
        if dup {
            self.arrived(pkid);
            self.written.contains(&pkid)
        } else {
            self.reused(pkid)
        }
    }

    /// A publish with `pkid` and DUP unset arrived: whether its old mark must go to the
    /// store first. The broker reuses a packet id only once it has read our PUBACK for it
    /// (and so every PUBACK written before that one). A DUP publish proves nothing: it is
    /// the broker's resend after a reconnect, sent before it read any PUBACK written on
    /// this connection (one queued before the break and written after it, say), so it is
    /// checked against its mark.
    fn reused(&mut self, pkid: u16) -> bool {
        let found = self.carried_set.contains(pkid);
        if let Some(i) = found
            .then(|| self.carried.iter().position(|p| *p == pkid))
            .flatten()
        {
            for p in self.carried.drain(..=i) {
                self.carried_set.remove(p);
                self.written.push(p);
            }
            self.stale_ping = self
                .stale_ping
                .take()
                .map(|r| r.start.saturating_sub(i + 1)..r.end.saturating_sub(i + 1));
        }
        if self.unconfirmed_set.contains(pkid) {
            // Reuse follows the broker's own order: the id is near the front.
            if let Some(i) = self.unconfirmed.iter().position(|p| *p == pkid) {
                self.confirm(i + 1);
            }
        }
        self.written.contains(&pkid)
    }

    fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        self.due.or(self.flush_at)
    }

    async fn on_wakeup(&mut self, store: &Ingest, source: &str) {
        if self.due.is_some() {
            self.hand_over(store, source).await;
        } else {
            self.flush_at = None;
            store.flush_marks(source);
        }
    }
}

/// Submits a held message (waiting for room in the store's queue) and returns the future
/// that resolves at its commit.
async fn submit(ingest: &Ingest, held: Held) -> PendingAck {
    if held.events.is_empty() {
        // Nothing to keep (malformed, unselected, already committed): ack in turn.
        return Box::pin(async move { (held, Ok(())) });
    }
    match ingest
        .submit(held.events.clone(), Some(held.mark.clone()))
        .await
    {
        Ok(commit) => Box::pin(async move {
            let r = commit.await;
            (held, r)
        }),
        Err(e) => Box::pin(async move { (held, Err(e)) }),
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Digest of a message's topic and payload (stable within one build of roomhook).
fn digest(p: &Publish) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    p.topic.hash(&mut h);
    p.payload.hash(&mut h);
    h.finish()
}

fn decode(
    s: &MqttSettings,
    p: &Publish,
    decode_errors: &DecodeErrors,
    log: &mut RateLog,
) -> (Vec<crate::event::Event>, u64) {
    let topic = p.topic.as_str();
    let Some(sub) = s.subscriptions.iter().find(|sub| sub.filter.matches(topic)) else {
        return (Vec::new(), 0);
    };
    let decoded =
        crate::source::decode::decode(sub, &s.devices, topic, &p.payload, crate::timefmt::now_ms());
    for err in &decoded.errors {
        decode_errors.inc(err.label());
    }
    if let Some(first) = decoded.errors.first() {
        if let Some(suppressed) = log.check(Instant::now()) {
            tracing::warn!(source = %s.name, %topic, suppressed, "payload rejected: {first}");
        }
    }
    (decoded.events, decoded.errors.len() as u64)
}

/// A set of MQTT packet ids (one bit each).
#[derive(Default)]
struct PkidSet(Vec<u64>);

impl PkidSet {
    fn insert(&mut self, p: u16) {
        if self.0.is_empty() {
            self.0 = vec![0; 1024];
        }
        self.0[usize::from(p) / 64] |= 1 << (p % 64);
    }

    fn remove(&mut self, p: u16) {
        if let Some(w) = self.0.get_mut(usize::from(p) / 64) {
            *w &= !(1 << (p % 64));
        }
    }

    fn contains(&self, p: u16) -> bool {
        self.0
            .get(usize::from(p) / 64)
            .is_some_and(|w| w >> (p % 64) & 1 == 1)
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::AckedMarks;

    #[test]
    fn a_ping_answer_confirms_only_the_pubacks_written_before_the_ping() {
        let mut m = AckedMarks::default();
        m.push(1);
        m.ping_sent();
        m.push(2);
        m.ping_answered(true);
        assert_eq!(m.written, vec![1]);
        assert_eq!(m.unconfirmed, vec![2]);
        // The broker reuses 2: it has read its PUBACK (and every one before it).
        m.push(3);
        m.ping_sent();
        assert!(m.reused(2));
        m.ping_answered(true);
        assert_eq!(m.written, vec![1, 2, 3]);
        // A new connection: 4 may not have arrived; its mark stays while the broker's
        // resends come, and goes with the first ping answered on the new connection.
        m.push(4);
        m.push(5);
        m.reconnected();
        assert!(m.unconfirmed.is_empty());
        assert_eq!(m.written, vec![1, 2, 3]);
        assert!(!m.reused(6));
        // A ping answer of the old connection handed out after the new CONNACK (no ping of
        // this connection asked for it) confirms nothing: no ping was in flight.
        m.ping_answered(true);
        assert_eq!(m.written, vec![1, 2, 3]);
        m.ping_sent();
        m.push(6);
        m.ping_answered(true);
        assert_eq!(m.written, vec![1, 2, 3, 4, 5]);
        assert_eq!(m.unconfirmed, vec![6]);
        // A reuse of a carried id confirms it and the ones before it.
        m.push(7);
        m.push(8);
        m.reconnected();
        assert!(m.reused(7));
        assert_eq!(m.written, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(m.carried, vec![8]);
    }

    #[test]
    fn a_stale_ping_answer_confirms_what_the_old_connection_wrote_before_its_ping() {
        let mut m = AckedMarks::default();
        m.push(1);
        m.reconnected();
        // 1 is carried from an earlier connection; 2 and 3 go out before the ping, 4 after.
        m.push(2);
        m.push(3);
        m.ping_sent();
        m.push(4);
        m.reconnected();
        assert_eq!(m.carried, vec![1, 2, 3, 4]);
        // The answer read with the break, handed out after the next CONNACK.
        m.ping_answered(false);
        assert_eq!(m.written, vec![2, 3]);
        assert_eq!(m.carried, vec![1, 4]);
        // Only once.
        m.ping_answered(false);
        assert_eq!(m.written, vec![2, 3]);
        // A reuse before the stale answer shifts what it covers.
        let mut m = AckedMarks::default();
        m.push(1);
        m.push(2);
        m.ping_sent();
        m.push(3);
        m.reconnected();
        assert!(m.reused(1));
        assert_eq!(m.carried, vec![2, 3]);
        m.ping_answered(false);
        assert_eq!(m.written, vec![1, 2]);
        assert_eq!(m.carried, vec![3]);
        // A ping of the new connection ends the wait for a stale answer.
        let mut m = AckedMarks::default();
        m.push(1);
        m.ping_sent();
        m.reconnected();
        m.ping_sent();
        m.ping_answered(false);
        assert!(m.written.is_empty());
        assert_eq!(m.carried, vec![1]);
    }

    #[test]
    fn a_newer_puback_for_an_id_keeps_its_mark_until_it_is_confirmed() {
        // Connection 1 acks 2 then 1, both lost with the break; connection 2 acks the
        // resends (2, 1) and a new 3; the break loses 1 and 3.
        let mut m = AckedMarks::default();
        m.push(2);
        m.push(1);
        m.reconnected();
        m.push(2);
        m.push(1);
        m.push(3);
        assert_eq!(m.carried, Vec::<u16>::new());
        m.reconnected();
        assert_eq!(m.carried, vec![2, 1, 3]);
        // Connection 3: the resends of 1 and 3 are acked again.
        m.push(1);
        m.push(3);
        assert_eq!(m.carried, vec![2]);
        // A new message reusing 2 confirms the carried 2, not the 1 acked after it.
        assert!(m.reused(2));
        assert_eq!(m.written, vec![2]);
        assert_eq!(m.unconfirmed, vec![1, 3]);
        // Within a connection: a newer PUBACK after the ping takes the older one's place.
        let mut m = AckedMarks::default();
        m.push(5);
        m.push(6);
        m.ping_sent();
        m.push(5);
        m.ping_answered(true);
        assert_eq!(m.written, vec![6]);
        assert_eq!(m.unconfirmed, vec![5]);
        // A resend arriving takes its id out of the carried ones at once (before its
        // PUBACK): a reuse of a later id must not confirm it while its append is in flight.
        let mut m = AckedMarks::default();
        m.push(4);
        m.push(1);
        m.reconnected();
        assert!(!m.old_mark(4, true));
        assert!(m.reused(1));
        assert_eq!(m.written, vec![1]);
        assert!(m.carried.is_empty());
    }
}
