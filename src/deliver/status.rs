//! What a webhook is doing now, shared between its delivery loop (which writes it) and the
//! metrics, health and status views (which read it).

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The state of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Delivering normally.
    Active,
    /// Recent requests failed; retrying with backoff.
    Retrying,
    /// The receiver asked for a pause (Retry-After).
    Paused,
    /// Repeated failures: paused as a whole, probing one request at a time.
    CircuitOpen,
    /// The receiver answered 401/403: queue held, retried slowly.
    AuthFailed,
    /// Disabled (by config, or the receiver answered 410): queue kept, nothing sent.
    Disabled,
    /// The receiver refused many messages in a row for good (4xx): rather than emptying the
    /// queue into the dead letters, it is held and retried slowly.
    Refusing,
}

impl State {
    /// Every state, for metrics.
    pub(crate) const ALL: [State; 7] = [
        State::Active,
        State::Retrying,
        State::Paused,
        State::CircuitOpen,
        State::AuthFailed,
        State::Disabled,
        State::Refusing,
    ];

    /// The label / JSON name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Retrying => "retrying",
            State::Paused => "paused",
            State::CircuitOpen => "circuit_open",
            State::AuthFailed => "auth_failed",
            State::Disabled => "disabled",
            State::Refusing => "refusing",
        }
    }
}

/// The last failure of a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LastError {
    /// What happened (never contains secrets).
    pub(crate) message: String,
    /// When, unix milliseconds.
    pub(crate) at_ms: i64,
}

/// A webhook's live status.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WebhookStatus {
    /// State.
    pub(crate) state: State,
    /// Current adaptive in-flight limit.
    pub(crate) in_flight_limit: usize,
    /// Requests in flight.
    pub(crate) in_flight: usize,
    /// Failed requests in a row.
    pub(crate) consecutive_failures: u32,
    /// The last failure.
    pub(crate) last_error: Option<LastError>,
    /// When the state last changed (unix ms).
    pub(crate) state_since_ms: i64,
    /// Delivered events, failed requests and bytes sent per minute, last 24 hours.
    #[serde(skip)]
    pub(crate) recent: Recent,
}

/// Minutes kept by [`Recent`].
const MINUTES: usize = 24 * 60;

/// One minute of [`Recent`].
#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    delivered: u32,
    errors: u32,
    /// Bytes put on the uplink (estimated, every request).
    bytes: u64,
}

/// Delivered events, failed requests and bytes sent per minute over the last 24 hours.
#[derive(Debug, Clone)]
pub(crate) struct Recent {
    /// By minute, a ring indexed by unix minute.
    buckets: Vec<Minute>,
    /// The newest minute written.
    head: i64,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            buckets: vec![Minute::default(); MINUTES],
            head: 0,
        }
    }
}

/// Sums over the windows `roomhook status` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecentCounts {
    /// Events delivered in the last 5 minutes.
    pub(crate) delivered_5m: u64,
    /// Failed requests in the last 5 minutes.
    pub(crate) errors_5m: u64,
    /// Events delivered in the last hour.
    pub(crate) delivered_1h: u64,
    /// Failed requests in the last hour.
    pub(crate) errors_1h: u64,
    /// Events delivered in the last 24 hours.
    pub(crate) delivered_24h: u64,
    /// Failed requests in the last 24 hours.
    pub(crate) errors_24h: u64,
    /// Bytes put on the uplink in the last 5 minutes (estimated; a daemon from before it: 0).
    #[serde(default)]
    pub(crate) bytes_5m: u64,
    /// The same in the last hour.
    #[serde(default)]
    pub(crate) bytes_1h: u64,
    /// The same in the last 24 hours.
    #[serde(default)]
    pub(crate) bytes_24h: u64,
}

impl Recent {
    fn advance(&mut self, minute: i64) {
        if minute <= self.head {
            return;
        }
        let gap = (minute - self.head).min(MINUTES as i64);
        for m in (minute - gap + 1)..=minute {
            self.buckets[m.rem_euclid(MINUTES as i64) as usize] = Minute::default();
        }
        self.head = minute;
    }

    /// The bucket of the minute of `now_ms` (`None`: older than the ring).
    fn at(&mut self, now_ms: i64) -> Option<&mut Minute> {
        let minute = now_ms / 60_000;
        self.advance(minute);
        if minute + (MINUTES as i64) <= self.head {
            return None;
        }
        Some(&mut self.buckets[minute.rem_euclid(MINUTES as i64) as usize])
    }

    /// Adds to the minute of `now_ms`.
    pub(crate) fn record(&mut self, now_ms: i64, delivered: u64, errors: u64) {
        if let Some(b) = self.at(now_ms) {
            let clamp = |n: u64| n.min(u64::from(u32::MAX)) as u32;
            b.delivered = b.delivered.saturating_add(clamp(delivered));
            b.errors = b.errors.saturating_add(clamp(errors));
        }
    }

    /// Adds the bytes of a request that went out to the minute of `now_ms`.
    pub(crate) fn sent(&mut self, now_ms: i64, bytes: u64) {
        if let Some(b) = self.at(now_ms) {
            b.bytes = b.bytes.saturating_add(bytes);
        }
    }

    /// (delivered, errors) of each of the last `n` minutes as of `now_ms`, oldest first
    /// (the current minute last): what the console's chart draws.
    pub(crate) fn minutes(&self, now_ms: i64, n: usize) -> Vec<(u32, u32)> {
        self.last(now_ms, n)
            .map(|m| (m.delivered, m.errors))
            .collect()
    }

    /// The last `n` minutes as of `now_ms`, oldest first.
    fn last(&self, now_ms: i64, n: usize) -> impl Iterator<Item = Minute> + '_ {
        let now = now_ms / 60_000;
        let n = n.min(MINUTES) as i64;
        ((now - n + 1)..=now).map(move |m| {
            if m > self.head || m + (MINUTES as i64) <= self.head {
                Minute::default()
            } else {
                self.buckets[m.rem_euclid(MINUTES as i64) as usize]
            }
        })
    }

    /// The sums of the last 5 minutes, hour and day as of `now_ms` (the current minute
    /// included).
    pub(crate) fn counts(&self, now_ms: i64) -> RecentCounts {
        let sum = |minutes: usize| {
            self.last(now_ms, minutes)
                .fold((0u64, 0u64, 0u64), |(d, e, b), m| {
                    (
                        d + u64::from(m.delivered),
                        e + u64::from(m.errors),
                        b.saturating_add(m.bytes),
                    )
                })
        };
        let (d5, e5, b5) = sum(5);
        let (d60, e60, b60) = sum(60);
        let (d24, e24, b24) = sum(MINUTES);
        RecentCounts {
            delivered_5m: d5,
            errors_5m: e5,
            delivered_1h: d60,
            errors_1h: e60,
            delivered_24h: d24,
            errors_24h: e24,
            bytes_5m: b5,
            bytes_1h: b60,
            bytes_24h: b24,
        }
    }
}

/// Shared handle to a webhook's status.
pub(crate) type SharedStatus = Arc<Mutex<WebhookStatus>>;

/// A fresh status.
pub(crate) fn shared(state: State) -> SharedStatus {
    Arc::new(Mutex::new(WebhookStatus {
        state,
        in_flight_limit: 1,
        in_flight: 0,
        consecutive_failures: 0,
        last_error: None,
        state_since_ms: crate::timefmt::now_ms(),
        recent: Recent::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_5_minutes_an_hour_and_a_day() {
        let mut r = Recent::default();
        let t0 = 1_000_000 * 60_000;
        r.record(t0, 10, 1);
        r.record(t0 + 2 * 60_000, 5, 0);
        r.record(t0 + 30 * 60_000, 7, 2);
        r.sent(t0, 700);
        r.sent(t0 + 28 * 60_000, 1000);
        r.sent(t0 + 30 * 60_000, 300);
        let c = r.counts(t0 + 30 * 60_000);
        assert_eq!((c.bytes_5m, c.bytes_1h, c.bytes_24h), (1300, 2000, 2000));
        assert_eq!((c.delivered_5m, c.errors_5m), (7, 2));
        assert_eq!((c.delivered_1h, c.errors_1h), (22, 3));
        assert_eq!(c.delivered_24h, 22);
        // The chart's minutes: oldest first, the current one last.
        let m = r.minutes(t0 + 30 * 60_000, 31);
        assert_eq!((m[0], m[2], m[30]), ((10, 1), (5, 0), (7, 2)));
        assert_eq!(m.iter().map(|b| b.0).sum::<u32>(), 22);
        // A day later the first minute has left every window.
        let later = t0 + 24 * 60 * 60_000;
        r.record(later, 1, 0);
        let c = r.counts(later);
        assert_eq!(
            (c.delivered_5m, c.delivered_1h, c.delivered_24h),
            (1, 1, 13)
        );
        assert_eq!(c.bytes_24h, 1300);
        // Reading far ahead without writes: nothing recent.
        assert_eq!(
            r.counts(later + 10 * 24 * 60 * 60_000),
            RecentCounts::default()
        );
    }
}
