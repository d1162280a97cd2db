//! The MQTT source: a persistent QoS 1 session (fixed client id, clean session off, manual
//! acks). Each message is decoded, routed and committed; its PUBACK goes out only after the
//! commit, in arrival order. Reconnects with backoff and subscribes on every connection.

use crate::config::{Format, MqttSettings, SubscriptionSettings};
use crate::ingest::Ingest;
use crate::metrics::{Metrics, SourceReasonLabel};
use crate::ratelog::RateLog;
use crate::source::json;
use crate::store::{Mark, StoreError};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
    Transport,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Messages received but not yet committed and acked; past it, reading pauses (the broker
/// holds the rest).
const MAX_PENDING: usize = 2048;
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
#[error("MQTT source {name}: {reason}")]
pub struct MqttSetupError {
    name: String,
    reason: String,
}

/// Builds the rumqttc options for a source.
pub fn options(s: &MqttSettings) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(1024 * 1024, 64 * 1024)
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

type PendingAck = BoxFuture<'static, (u64, Publish, bool)>;

/// Runs one MQTT source until shutdown.
pub async fn run(
    s: MqttSettings,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> Result<(), MqttSetupError> {
    let opts = options(&s)?;
    let (client, mut eventloop) = AsyncClient::new(opts, MAX_PENDING * 2);
    let metrics = ingest.metrics().clone();
    let label = Metrics::source(&s.name);
    let messages = metrics.source_messages.get_or_create(&label).clone();
    let connected = metrics.source_connected.get_or_create(&label).clone();
    let reconnects = metrics.source_reconnects.get_or_create(&label).clone();
    let redelivered = metrics.source_redelivered.get_or_create(&label).clone();
    let mut decode_log = RateLog::new(Duration::from_secs(10));
    let mut conn_log = RateLog::new(Duration::from_secs(30));
    let mut generation = 0u64;
    let mut backoff = RECONNECT_MIN;
    let mut pending: FuturesOrdered<PendingAck> = FuturesOrdered::new();
    let mut was_connected = false;

    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some((gen, publish, ok)) = pending.next(), if !pending.is_empty() => {
                // A PUBACK of an older connection would acknowledge the wrong packet id.
                if gen == generation && ok && client.try_ack(&publish).is_err() {
                    tracing::warn!(source = %s.name, "ack queue full; the broker will redeliver");
                }
                if !ok {
                    // Not committed: drop the connection so the broker redelivers it.
                    let _ = client.try_disconnect();
                }
            }
            ev = eventloop.poll(), if pending.len() < MAX_PENDING => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                    generation += 1;
                    backoff = RECONNECT_MIN;
                    was_connected = true;
                    connected.set(1);
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
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    messages.inc();
                    let mark = Mark { source: s.name.clone(), pkid: p.pkid, digest: digest(&p) };
                    let gen = generation;
                    if p.dup && already_committed(&ingest, &mark).await {
                        // Committed before a crash or disconnect, but the PUBACK was lost.
                        tracing::debug!(source = %s.name, pkid = p.pkid, "redelivery of a committed message: acked, not stored again");
                        redelivered.inc();
                        pending.push_back(Box::pin(async move { (gen, p, true) }));
                        continue;
                    }
                    let events = decode(&s, &p, &metrics, &mut decode_log);
                    let fut: PendingAck = if events.is_empty() {
                        // Nothing to keep (malformed or unselected): ack in order, never redeliver.
                        Box::pin(async move { (gen, p, true) })
                    } else {
                        match ingest.submit(events.clone(), Some(mark.clone())).await {
                            Ok(commit) => {
                                let (ingest, stop) = (ingest.clone(), shutdown.clone());
                                Box::pin(async move {
                                    let ok = commit_until_stored(commit.await, &ingest, events, mark, &stop).await;
                                    (gen, p, ok)
                                })
                            }
                            Err(e) => {
                                tracing::error!(source = %s.name, "store unavailable: {e}");
                                Box::pin(async move { (gen, p, false) })
                            }
                        }
                    };
                    pending.push_back(fut);
                }
                Ok(_) => {}
                Err(e) => {
                    connected.set(0);
                    if was_connected {
                        reconnects.inc();
                        was_connected = false;
                    }
                    if let Some(suppressed) = conn_log.check(Instant::now()) {
                        tracing::warn!(source = %s.name, suppressed, "MQTT connection to {}:{} failed, retrying in {:?}: {e}", s.host, s.port, backoff);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }
    // Commit and ack what was already received, then leave (the session stays on the broker).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some((gen, publish, ok))) = tokio::time::timeout_at(deadline, pending.next()).await
    {
        if gen == generation && ok {
            let _ = client.try_ack(&publish);
        }
    }
    let _ = client.try_disconnect();
    let flush = async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    connected.set(0);
    Ok(())
}

fn decode(
    s: &MqttSettings,
    p: &Publish,
    metrics: &Arc<Metrics>,
    log: &mut RateLog,
) -> Vec<crate::event::Event> {
    let topic = p.topic.as_str();
    let Some(sub) = s.subscriptions.iter().find(|sub| sub.filter.matches(topic)) else {
        return Vec::new();
    };
    let decoded = decode_with(sub, topic, &p.payload);
    for err in &decoded.errors {
        metrics
            .source_decode_errors
            .get_or_create(&SourceReasonLabel {
                source: s.name.clone(),
                reason: err.label().to_string(),
            })
            .inc();
    }
    if let Some(first) = decoded.errors.first() {
        if let Some(suppressed) = log.check(Instant::now()) {
            tracing::warn!(source = %s.name, %topic, suppressed, "payload rejected: {first}");
        }
    }
    decoded.events
}

/// Retries a failed commit (store full under `block`, disk full, I/O error) with backoff
/// until it succeeds or roomhook stops; the message stays unacked meanwhile, so the broker
/// keeps it and everything after it. `false` only when stopped first.
async fn commit_until_stored(
    first: Result<(), StoreError>,
    ingest: &Ingest,
    events: Vec<crate::event::Event>,
    mark: Mark,
    stop: &CancellationToken,
) -> bool {
    let mut result = first;
    let mut wait = Duration::from_millis(500);
    while result.is_err() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return false,
        }
        wait = (wait * 2).min(Duration::from_secs(10));
        result = match ingest.submit(events.clone(), Some(mark.clone())).await {
            Ok(commit) => commit.await,
            Err(e) => Err(e),
        };
    }
    true
}

/// Digest of a message's topic and payload (stable within one build of roomhook).
fn digest(p: &Publish) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    p.topic.hash(&mut h);
    p.payload.hash(&mut h);
    h.finish()
}

/// Whether a redelivered message (DUP set) was already committed under its packet id.
async fn already_committed(ingest: &Ingest, mark: &Mark) -> bool {
    let (store, source, pkid) = (ingest.store().clone(), mark.source.clone(), mark.pkid);
    match tokio::task::spawn_blocking(move || store.mqtt_seen(&source, pkid)).await {
        Ok(Ok(Some(d))) => d == mark.digest,
        _ => false,
    }
}

fn decode_with(sub: &SubscriptionSettings, topic: &str, payload: &[u8]) -> json::Decoded {
    match &sub.format {
        Format::Json(fields) => json::decode(sub, fields, topic, payload, crate::timefmt::now_ms()),
    }
}
