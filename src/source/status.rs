//! What each source is doing now (connected since when, messages, decode errors, last
//! message), written by the source and read by `/readyz` and `roomhook status`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Live figures of one source.
#[derive(Debug, Default)]
pub(crate) struct SourceStatus {
    connected: AtomicBool,
    /// Its subscriptions are in place on this connection (MQTT: SUBACK with at least one
    /// granted; RoomOS: subscribed and fully synced).
    subscribed: AtomicBool,
    /// When `connected` last changed (unix ms; 0: never connected).
    since_ms: AtomicI64,
    messages: AtomicU64,
    decode_errors: AtomicU64,
    last_message_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    started_ms: AtomicI64,
    /// Subscriptions the device refused, each "path: reason" (RoomOS sources).
    failed_subscriptions: Mutex<Vec<String>>,
    /// The source's decode-error counters, read for the by-reason view.
    decode_reasons: Mutex<Option<crate::metrics::DecodeErrors>>,
}

impl SourceStatus {
    /// The source (re)connected.
    pub(crate) fn connected(&self) {
        self.subscribed.store(false, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
        self.since_ms
            .store(crate::timefmt::now_ms(), Ordering::Relaxed);
    }

    /// The connection failed or was lost.
    pub(crate) fn disconnected(&self, why: String) {
        self.subscribed.store(false, Ordering::Relaxed);
        if self.connected.swap(false, Ordering::Relaxed) {
            self.since_ms
                .store(crate::timefmt::now_ms(), Ordering::Relaxed);
        }
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(why);
        }
    }

    /// The subscriptions are in place on this connection.
    pub(crate) fn subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// A message arrived with `errors` payload errors.
    pub fn message(&self, errors: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.decode_errors.fetch_add(errors, Ordering::Relaxed);
        self.last_message_ms
            .store(crate::timefmt::now_ms(), Ordering::Relaxed);
    }

    /// The counters of the source's decode errors by reason (set once at its start).
    pub(crate) fn count_reasons(&self, counters: crate::metrics::DecodeErrors) {
        if let Ok(mut g) = self.decode_reasons.lock() {
            *g = Some(counters);
        }
    }

    /// The subscriptions the device refuses now.
    pub(crate) fn set_failed_subscriptions(&self, failed: Vec<String>) {
        if let Ok(mut g) = self.failed_subscriptions.lock() {
            *g = failed;
        }
    }

    /// A snapshot.
    pub(crate) fn view(&self, name: &str) -> SourceView {
        let now = crate::timefmt::now_ms();
        let since = self.since_ms.load(Ordering::Relaxed);
        let last = self.last_message_ms.load(Ordering::Relaxed);
        let connected = self.connected.load(Ordering::Relaxed);
        SourceView {
            name: name.to_string(),
            connected,
            subscribed: connected && self.subscribed.load(Ordering::Relaxed),
            // Never connected: count from the source's start.
            state_age_s: (now
                - if since == 0 {
                    self.started_ms.load(Ordering::Relaxed)
                } else {
                    since
                })
            .max(0) as f64
                / 1000.0,
            messages: self.messages.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            decode_errors_by_reason: self
                .decode_reasons
                .lock()
                .ok()
                .and_then(|g| g.as_ref().map(|d| d.counts()))
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            last_message_age_s: (last > 0).then(|| (now - last).max(0) as f64 / 1000.0),
            last_error: self.last_error.lock().ok().and_then(|g| g.clone()),
            failed_subscriptions: self
                .failed_subscriptions
                .lock()
                .map(|g| g.clone())
                .unwrap_or_default(),
        }
    }
}

/// A source as `/readyz` and `roomhook status` show it (and the CLI reads back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceView {
    /// Name.
    pub(crate) name: String,
    /// Connected now.
    pub(crate) connected: bool,
    /// Its subscriptions are in place on this connection (MQTT: the broker granted at
    /// least one; RoomOS: subscribed and fully synced).
    #[serde(default)]
    pub subscribed: bool,
    /// Seconds in the current connected/disconnected state.
    pub(crate) state_age_s: f64,
    /// Messages received since start.
    pub(crate) messages: u64,
    /// Payload errors since start.
    pub(crate) decode_errors: u64,
    /// The same by reason (`roomhook_source_decode_errors_total`'s, since start).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) decode_errors_by_reason: BTreeMap<String, u64>,
    /// Seconds since the last message.
    pub(crate) last_message_age_s: Option<f64>,
    /// The last connection error.
    pub(crate) last_error: Option<String>,
    /// Subscriptions the device refuses ("path: reason"); RoomOS sources only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) failed_subscriptions: Vec<String>,
}

/// Every source's status, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources(Arc<Mutex<BTreeMap<String, Arc<SourceStatus>>>>);

impl Sources {
    /// The status of a source (created, and its clock started, on first use).
    pub(crate) fn get(&self, name: &str) -> Arc<SourceStatus> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| {
                let s = SourceStatus::default();
                s.started_ms
                    .store(crate::timefmt::now_ms(), Ordering::Relaxed);
                Arc::new(s)
            })
            .clone()
    }

    /// Forgets a source that was removed from the config.
    pub fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Snapshots of every source.
    pub(crate) fn views(&self) -> Vec<SourceView> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| s.view(n))
            .collect()
    }
}
