//! The Prometheus metrics (namespace `roomhook_`) every part of the pipeline updates, and
//! their text exposition for `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `{source}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Source name.
    pub(crate) source: String,
}

/// `{source,reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceReasonLabel {
    /// Source name.
    pub(crate) source: String,
    /// Why the payload was rejected.
    pub(crate) reason: String,
}

/// `{webhook}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// Webhook name.
    pub(crate) webhook: String,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// Why.
    pub(crate) reason: String,
}

/// `{webhook,code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WebhookCodeLabel {
    /// Webhook name.
    pub(crate) webhook: String,
    /// HTTP status code.
    pub(crate) code: String,
}

/// `{webhook,kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WebhookKindLabel {
    /// Webhook name.
    pub(crate) webhook: String,
    /// Error kind: connect, tls, timeout, http_3xx, http_4xx, http_5xx, other.
    pub(crate) kind: String,
}

/// `{webhook,reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WebhookReasonLabel {
    /// Webhook name.
    pub(crate) webhook: String,
    /// Why.
    pub(crate) reason: String,
}

/// `{webhook,state}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WebhookStateLabel {
    /// Webhook name.
    pub(crate) webhook: String,
    /// State name.
    pub(crate) state: String,
}

/// `{version, commit, target, profile, features}`: what `roomhook --version` prints.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VersionLabel {
    /// Crate version.
    pub(crate) version: String,
    /// Git commit, or "unknown".
    pub(crate) commit: String,
    /// Target triple.
    pub(crate) target: String,
    /// Cargo profile.
    pub(crate) profile: String,
    /// Optional features built in ("demo", or "none").
    pub(crate) features: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric roomhook exports.
pub struct Metrics {
    registry: Registry,
    refreshers: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// MQTT messages (or simulator batches) received.
    pub(crate) source_messages: Family<SourceLabel, Counter>,
    /// Payloads that could not be decoded, by reason.
    pub(crate) source_decode_errors: Family<SourceReasonLabel, Counter>,
    /// 1 while the source is connected.
    pub(crate) source_connected: Family<SourceLabel, Gauge>,
    /// Connection losses.
    pub(crate) source_reconnects: Family<SourceLabel, Counter>,
    /// Broker redeliveries of messages already committed (acked again, not stored twice).
    pub(crate) source_redelivered: Family<SourceLabel, Counter>,
    /// Subscriptions a RoomOS device refuses now (invalid path, permission denied, …).
    pub(crate) source_subscriptions_failed: Family<SourceLabel, Gauge>,
    /// Events committed to a webhook's queue.
    pub(crate) events_enqueued: Family<WebhookLabel, Counter>,
    /// Events the receiver answered 2xx for.
    pub(crate) events_delivered: Family<WebhookLabel, Counter>,
    /// Events that went to no webhook, by reason.
    pub(crate) events_filtered: Family<ReasonLabel, Counter>,
    /// Requests by HTTP status code.
    pub(crate) requests: Family<WebhookCodeLabel, Counter>,
    /// Failed requests by kind.
    pub(crate) request_errors: Family<WebhookKindLabel, Counter>,
    /// Request round trip.
    pub(crate) request_duration: HistogramFamily<WebhookLabel>,
    /// Event observed → receiver answered 2xx.
    pub(crate) delivery_latency: HistogramFamily<WebhookLabel>,
    /// Bytes requests put on the uplink (estimated: body, head, TLS and TCP/IP overhead).
    pub(crate) uplink_bytes: Family<WebhookLabel, Counter>,
    /// Queue depth.
    pub(crate) queue_events: Family<WebhookLabel, Gauge>,
    /// Bytes charged for a queue.
    pub(crate) queue_bytes: Family<WebhookLabel, Gauge>,
    /// Bytes charged for all queues (bounded by max_store_bytes).
    pub(crate) store_bytes: Gauge,
    /// The store's budget, `[gateway] max_store_bytes`.
    pub(crate) store_max_bytes: Gauge,
    /// 1 when `/readyz` would answer 200, else 0 (set at every scrape).
    pub(crate) ready: Gauge,
    /// Events dropped, by reason (overflow, coalesced, expired).
    pub(crate) events_dropped: Family<WebhookReasonLabel, Counter>,
    /// Requests in flight now.
    pub(crate) in_flight: Family<WebhookLabel, Gauge>,
    /// The adaptive in-flight limit.
    pub(crate) in_flight_limit: Family<WebhookLabel, Gauge>,
    /// 1 for the webhook's current state, 0 for the others.
    pub(crate) webhook_state: Family<WebhookStateLabel, Gauge>,
    /// Dead letters held.
    pub(crate) dead_letters: Family<WebhookLabel, Gauge>,
    /// Build version (value 1).
    pub(crate) build_info: Family<VersionLabel, Gauge>,
    /// Age of the oldest queued event.
    pub(crate) queue_oldest_age: Family<WebhookLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Failed store commits.
    pub(crate) store_errors: Counter,
    /// Events the store dropped that no webhook's figures count, by reason.
    pub(crate) store_events_dropped: Family<ReasonLabel, Counter>,
    /// Queues kept after their webhook left the config.
    pub(crate) orphaned_queues: Gauge,
    /// Events in those queues.
    pub(crate) orphaned_events: Gauge,
    /// Duration of each group commit (fsync included).
    pub(crate) store_commit_duration: Histogram,
    /// Config reloads (SIGHUP, `POST /v1/reload`) by result: `applied` or `refused`.
    pub(crate) config_reloads: Family<ResultLabel, Counter>,
    /// 1 when the last reload was applied, 0 when it was refused (the running config stays).
    pub(crate) config_last_reload_successful: Gauge,
    /// Pulls of the fleet document by result: applied, unchanged, refused, failed.
    pub(crate) fleet_config: Family<ResultLabel, Counter>,
    /// Fleet reports by result: sent, failed (tried again), dropped (a newer one replaced it).
    pub(crate) fleet_reports: Family<ResultLabel, Counter>,
}

/// `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    /// How it ended.
    pub(crate) result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("roomhook");
        let m = Metrics {
            source_messages: Family::default(),
            source_decode_errors: Family::default(),
            source_connected: Family::default(),
            source_reconnects: Family::default(),
            source_redelivered: Family::default(),
            source_subscriptions_failed: Family::default(),
            orphaned_queues: Gauge::default(),
            orphaned_events: Gauge::default(),
            events_enqueued: Family::default(),
            events_delivered: Family::default(),
            events_filtered: Family::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            uplink_bytes: Family::default(),
            queue_events: Family::default(),
            queue_bytes: Family::default(),
            store_bytes: Gauge::default(),
            store_max_bytes: Gauge::default(),
            ready: Gauge::default(),
            events_dropped: Family::default(),
            in_flight: Family::default(),
            in_flight_limit: Family::default(),
            webhook_state: Family::default(),
            dead_letters: Family::default(),
            build_info: Family::default(),
            queue_oldest_age: Family::default(),
            store_errors: Counter::default(),
            store_events_dropped: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_successful: Gauge::default(),
            fleet_config: Family::default(),
            fleet_reports: Family::default(),
            // 50 µs … ~1.6 s.
            store_commit_duration: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            registry: Registry::default(),
            refreshers: std::sync::Mutex::new(Vec::new()),
        };
        registry.register(
            "source_messages",
            "Messages received per source",
            m.source_messages.clone(),
        );
        registry.register(
            "source_decode_errors",
            "Payloads rejected per source and reason",
            m.source_decode_errors.clone(),
        );
        registry.register(
            "source_connected",
            "1 while the source is connected",
            m.source_connected.clone(),
        );
        registry.register(
            "source_reconnects",
            "Connection losses per source",
            m.source_reconnects.clone(),
        );
        registry.register(
            "events_enqueued",
            "Events committed to a webhook queue",
            m.events_enqueued.clone(),
        );
        registry.register(
            "events_delivered",
            "Events the receiver accepted (2xx)",
            m.events_delivered.clone(),
        );
        registry.register(
            "events_filtered",
            "Events forwarded to no webhook, by reason",
            m.events_filtered.clone(),
        );
        registry.register(
            "requests",
            "Webhook requests answered, by HTTP status code",
            m.requests.clone(),
        );
        registry.register(
            "request_errors",
            "Failed webhook requests, by kind",
            m.request_errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Webhook request round trip",
            m.request_duration.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Event observed to receiver 2xx",
            m.delivery_latency.clone(),
        );
        registry.register(
            "uplink_bytes",
            "Bytes webhook requests put on the uplink, estimated (body, head, TLS and TCP/IP overhead), every request sent",
            m.uplink_bytes.clone(),
        );
        registry.register(
            "queue_events",
            "Events queued per webhook",
            m.queue_events.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Webhook requests in flight",
            m.in_flight.clone(),
        );
        registry.register(
            "in_flight_limit",
            "Adaptive in-flight request limit",
            m.in_flight_limit.clone(),
        );
        registry.register(
            "webhook_state",
            "1 for the webhook's current state",
            m.webhook_state.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters held per webhook",
            m.dead_letters.clone(),
        );
        registry.register(
            "source_redelivered",
            "Broker redeliveries of already committed messages (acked again, not stored twice)",
            m.source_redelivered.clone(),
        );
        registry.register(
            "orphaned_queues",
            "Queues kept after their webhook left the config (orphan_retention)",
            m.orphaned_queues.clone(),
        );
        registry.register(
            "orphaned_events",
            "Events in orphaned queues (not delivered)",
            m.orphaned_events.clone(),
        );
        registry.register(
            "source_subscriptions_failed",
            "Subscriptions a RoomOS device refuses now (invalid path, permission denied, not ready)",
            m.source_subscriptions_failed.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes charged for a webhook's queue",
            m.queue_bytes.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes charged for all queues (max_store_bytes bounds it)",
            m.store_bytes.clone(),
        );
        registry.register(
            "store_max_bytes",
            "The store's budget ([gateway] max_store_bytes)",
            m.store_max_bytes.clone(),
        );
        registry.register(
            "ready",
            "1 when /readyz answers 200 (every webhook, source and the store working), else 0",
            m.ready.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped from a queue, by reason",
            m.events_dropped.clone(),
        );
        registry.register(
            "build_info",
            "roomhook version, git commit, target, profile and features",
            m.build_info.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued event per webhook",
            m.queue_oldest_age.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or the control API) by result: applied, refused",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last config reload was applied (or none was tried), 0 when it was refused",
            m.config_last_reload_successful.clone(),
        );
        m.config_last_reload_successful.set(1);
        registry.register(
            "fleet_config",
            "Pulls of the fleet config document by result: applied, unchanged, refused, failed",
            m.fleet_config.clone(),
        );
        registry.register(
            "fleet_reports",
            "Fleet status reports by result: sent, failed (tried again), dropped (a newer one replaced it)",
            m.fleet_reports.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store commits (disk full, I/O errors)",
            m.store_errors.clone(),
        );
        registry.register(
            "store_events_dropped",
            "Events the store dropped that no webhook's figures count, by reason (webhook_removed: routed to a webhook removed before their commit)",
            m.store_events_dropped.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "Duration of each durable group commit",
            m.store_commit_duration.clone(),
        );
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: crate::version::COMMIT.to_string(),
                target: crate::version::TARGET.to_string(),
                profile: crate::version::PROFILE.to_string(),
                features: crate::version::FEATURES.to_string(),
            })
            .set(1);
        Metrics { registry, ..m }
    }

    /// Registers a function that brings gauges up to date before every scrape.
    pub(crate) fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut r) = self.refreshers.lock() {
            r.push(Box::new(f));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Ok(r) = self.refreshers.lock() {
            for f in r.iter() {
                f();
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Removes every series of a webhook (deleted, or renamed: it reappears under the new
    /// name); `states` and `reasons` are the values its `state` and `reason` labels take.
    pub(crate) fn forget_webhook(&self, name: &str, states: &[&str], reasons: &[&str]) {
        let label = Self::webhook(name);
        for f in [
            &self.events_enqueued,
            &self.events_delivered,
            &self.uplink_bytes,
        ] {
            f.remove(&label);
        }
        for f in [
            &self.queue_events,
            &self.queue_bytes,
            &self.in_flight,
            &self.in_flight_limit,
            &self.dead_letters,
        ] {
            f.remove(&label);
        }
        self.queue_oldest_age.remove(&label);
        self.request_duration.remove(&label);
        self.delivery_latency.remove(&label);
        for s in states {
            self.webhook_state.remove(&WebhookStateLabel {
                webhook: name.to_string(),
                state: s.to_string(),
            });
        }
        for r in reasons {
            self.events_dropped.remove(&WebhookReasonLabel {
                webhook: name.to_string(),
                reason: r.to_string(),
            });
        }
    }

    /// `{webhook}` label.
    pub fn webhook(name: &str) -> WebhookLabel {
        WebhookLabel {
            webhook: name.to_string(),
        }
    }

    /// `{source}` label.
    pub fn source(name: &str) -> SourceLabel {
        SourceLabel {
            source: name.to_string(),
        }
    }
}

/// `roomhook_source_decode_errors_total` of one source: the known reasons are exported at
/// 0 from the start and counted through handles resolved once (no label built per error).
#[derive(Clone, Debug)]
pub(crate) struct DecodeErrors {
    known: Vec<(&'static str, Counter)>,
}

impl DecodeErrors {
    /// The counters of `source` for `reasons`.
    pub(crate) fn new(metrics: &Metrics, source: &str, reasons: &[&'static str]) -> Self {
        let known = reasons
            .iter()
            .map(|r| {
                let c = metrics
                    .source_decode_errors
                    .get_or_create(&SourceReasonLabel {
                        source: source.to_string(),
                        reason: r.to_string(),
                    })
                    .clone();
                (*r, c)
            })
            .collect();
        Self { known }
    }

    /// Counts one error of a known reason (an unknown one is a bug: not counted).
    pub(crate) fn inc(&self, reason: &str) {
        match self.known.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => {
                c.inc();
            }
            None => debug_assert!(false, "unregistered decode-error reason {reason}"),
        }
    }

    /// Each reason counted so far, with its count (reasons never seen left out).
    pub(crate) fn counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.known
            .iter()
            .map(|(r, c)| (*r, c.get()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
