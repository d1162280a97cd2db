//! The control API's answers as types: `status.rs` and `control.rs` build and serialise
//! them, `roomhook status` (cli.rs) reads them back — one definition, no untyped look-ups.
//! The console's script reads the same JSON.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) use crate::deliver::status::RecentCounts;

/// `GET /v1/status`: everything `roomhook status` shows, with the readiness verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub(crate) version: String,
    /// Ready: no problem below.
    pub(crate) ready: bool,
    /// What is wrong, each with what to do.
    pub problems: Vec<String>,
    /// The store.
    pub(crate) store: StoreReport,
    /// Every source.
    pub sources: Vec<SourceReport>,
    /// Every webhook of the running set.
    pub webhooks: Vec<WebhookReport>,
    /// Queues kept after their webhook left the config.
    pub(crate) orphans: Vec<OrphanReport>,
    /// The store's register of delivery loops: one per queue.
    pub(crate) delivery_loops: Vec<LoopReport>,
    /// Second loops the register refused since start (a bug if ever non-zero).
    pub(crate) delivery_loops_refused: u64,
    /// The fleet's pulls and reports (only with `[fleet]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
}

/// The fleet in [`StatusReport`].
pub use crate::supervisor::FleetState as FleetReport;

/// The store in [`StatusReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoreReport {
    /// No commit failed lately.
    pub(crate) ok: bool,
    /// Commits that failed since start.
    pub(crate) errors: u64,
    /// The last failure.
    pub(crate) last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub(crate) last_error_at: Option<String>,
    /// Bytes held by the queues.
    pub(crate) bytes: u64,
    /// The byte budget.
    pub(crate) max_bytes: u64,
    /// Events dropped since start, by reason (all webhooks).
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// A source in [`StatusReport`]: the sources' own view.
pub(crate) use crate::source::status::SourceView as SourceReport;

/// A webhook in [`StatusReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookReport {
    /// Name.
    pub(crate) name: String,
    /// URL, secrets hidden.
    pub(crate) url: String,
    /// Enabled in the config.
    pub(crate) enabled: bool,
    /// Delivery state (`delivering`, `retrying`, `paused`, …).
    pub(crate) state: String,
    /// Seconds in that state.
    pub(crate) state_age_s: f64,
    /// Delivered events and failed requests over 5 minutes, an hour, a day.
    pub(crate) recent: RecentCounts,
    /// Its queue.
    pub(crate) queue: QueueReport,
    /// Requests in flight.
    pub(crate) in_flight: usize,
    /// The adaptive in-flight limit.
    pub(crate) in_flight_limit: usize,
    /// The last failure.
    pub last_error: Option<ErrorReport>,
}

/// A webhook's queue in [`WebhookReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueueReport {
    /// Events queued.
    pub(crate) events: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Age of the oldest, in seconds.
    pub(crate) oldest_age_s: Option<f64>,
    /// Dead letters held.
    pub(crate) dead_letters: u64,
    /// Events dropped since start, by reason.
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// A webhook's last failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What happened.
    pub message: String,
    /// When (RFC 3339).
    pub(crate) at: String,
    /// How long ago, in seconds.
    pub(crate) age_s: f64,
}

/// A kept (orphaned) queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrphanReport {
    /// The name its webhook had.
    pub(crate) name: String,
    /// Events it holds.
    pub(crate) events: u64,
    /// Kept since (RFC 3339).
    pub(crate) since: String,
}

/// A delivery loop in the store's register.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoopReport {
    /// The queue it holds.
    pub(crate) queue: u32,
    /// The webhook of that queue, if it is in the running set.
    pub(crate) webhook: Option<String>,
}

pub(crate) use crate::deliver::probe::ProbeReport;
pub(crate) use crate::deliver::status::LastError;
pub(crate) use crate::supervisor::Applied;

/// A webhook as `GET /v1/webhooks` lists it and `webhook show` prints it: its settings
/// (secrets masked), live status and queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WebhookDescription {
    /// Name.
    pub(crate) name: String,
    /// URL, secrets hidden.
    pub(crate) url: String,
    /// Enabled.
    pub(crate) enabled: bool,
    /// How it authenticates (secrets masked).
    pub(crate) auth: AuthView,
    /// Requests are signed (Standard Webhooks).
    pub(crate) signed: bool,
    /// Static header names (values masked).
    pub(crate) headers: BTreeMap<String, String>,
    /// Extra CA certificates.
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// Client certificate (mutual TLS).
    pub(crate) client_cert_file: Option<std::path::PathBuf>,
    /// Client key (mutual TLS).
    pub(crate) client_key_file: Option<std::path::PathBuf>,
    /// Device patterns.
    pub(crate) devices: Vec<String>,
    /// Status patterns.
    pub(crate) statuses: Vec<String>,
    /// Event patterns.
    pub(crate) events: Vec<String>,
    /// What gives way when the store is full.
    pub(crate) overflow: crate::value::overflow::Overflow,
    /// Request-body compression (`none`, `gzip`; a daemon from before it: `none`).
    #[serde(default)]
    pub(crate) compression: crate::value::compression::Compression,
    /// Superseded status values leave the queue unsent (a daemon from before it: false).
    #[serde(default)]
    pub(crate) conflate: bool,
    /// 0–9: while the uplink budget is the limit, a higher one goes first (a daemon from
    /// before it: 5).
    #[serde(default = "default_priority")]
    pub(crate) priority: u8,
    /// Its share of the uplink budget among webhooks of its priority (a daemon from before
    /// it: 1).
    #[serde(default = "default_uplink_weight")]
    pub(crate) uplink_weight: u32,
    /// Requests per second, if limited.
    pub(crate) rate_limit: Option<f64>,
    /// Messages per batch at most.
    pub(crate) batch_max_messages: usize,
    /// Requests in flight at most.
    pub(crate) max_in_flight: usize,
    /// Durations as in the config (`"10s"`).
    pub(crate) connect_timeout: String,
    /// See `connect_timeout`.
    pub(crate) request_timeout: String,
    /// See `connect_timeout`.
    pub(crate) retry_base: String,
    /// See `connect_timeout`.
    pub(crate) retry_max: String,
    /// Token bucket burst.
    pub(crate) burst: u32,
    /// See `connect_timeout`.
    pub(crate) drain_start_jitter: String,
    /// Per-device or global ordering.
    pub(crate) ordering: String,
    /// Failures in a row that open the circuit.
    pub(crate) circuit_breaker_threshold: u32,
    /// See `connect_timeout`.
    pub(crate) auth_retry: String,
    /// Bytes per batch at most.
    pub(crate) batch_max_bytes: u64,
    /// See `connect_timeout`.
    pub(crate) batch_linger: String,
    /// Oldest age kept in the queue, if limited.
    pub(crate) max_queue_age: Option<String>,
    /// Live delivery status (absent while it cannot be read).
    pub(crate) status: Option<StatusView>,
    /// Its queue.
    pub(crate) queue: QueueBrief,
}

fn default_priority() -> u8 {
    5
}

fn default_uplink_weight() -> u32 {
    1
}

/// How a webhook authenticates, secrets masked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum AuthView {
    /// None.
    None,
    /// An `Authorization` header (`value` is `***`).
    Authorization {
        /// Masked.
        value: String,
    },
    /// Basic auth (`password` is `***`).
    Basic {
        /// The user name.
        username: String,
        /// Masked.
        password: String,
    },
}

/// A webhook's live delivery status in [`WebhookDescription`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusView {
    /// State (`delivering`, `retrying`, …).
    pub(crate) state: String,
    /// The adaptive in-flight limit.
    pub(crate) in_flight_limit: usize,
    /// Requests in flight.
    pub(crate) in_flight: usize,
    /// Failed requests in a row.
    pub(crate) consecutive_failures: u32,
    /// The last failure.
    pub(crate) last_error: Option<LastError>,
    /// When the state last changed (unix ms).
    pub(crate) state_since_ms: i64,
}

impl From<&crate::deliver::status::WebhookStatus> for StatusView {
    fn from(s: &crate::deliver::status::WebhookStatus) -> Self {
        StatusView {
            state: s.state.as_str().to_string(),
            in_flight_limit: s.in_flight_limit,
            in_flight: s.in_flight,
            consecutive_failures: s.consecutive_failures,
            last_error: s.last_error.clone(),
            state_since_ms: s.state_since_ms,
        }
    }
}

/// A webhook's queue in [`WebhookDescription`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueueBrief {
    /// Events queued.
    pub(crate) events: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Dead letters held.
    pub(crate) dead_letters: u64,
}

/// `GET /v1/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WebhookList {
    /// Every webhook of the running set.
    pub(crate) webhooks: Vec<WebhookDescription>,
}

/// The answer to an add, set or enable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EditAnswer {
    /// The webhook as it is now (none after a rename away, say).
    pub(crate) webhook: Option<WebhookDescription>,
    /// The healthCheck that verified it, when one was sent.
    pub(crate) verified: Option<ProbeReport>,
    /// What changed in the running daemon.
    pub(crate) applied: Applied,
}

/// The answer to a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeleteAnswer {
    /// The webhook deleted.
    pub(crate) deleted: String,
    /// Queued events discarded with it.
    pub(crate) discarded: u64,
}

/// The answer to `POST /v1/webhooks/NAME/test`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TestAnswer {
    /// What the healthCheck showed.
    pub(crate) test: ProbeReport,
}

/// The answer to a replay of dead letters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplayAnswer {
    /// Dead letters put back in the queue.
    pub(crate) replayed: u64,
}

/// `GET /v1/webhooks/NAME/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeadLetterList {
    /// The oldest first.
    pub(crate) dead_letters: Vec<DeadLetterReport>,
}

/// One dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeadLetterReport {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The receiver's last HTTP status, if it answered.
    pub(crate) status: Option<u16>,
    /// Why it was given up.
    pub(crate) reason: String,
    /// When (RFC 3339).
    pub(crate) at: String,
    /// The event (compact JSON: `d` device, `p` path, `v` value, …).
    pub(crate) event: serde_json::Value,
}
