//! What a webhook is doing now, shared between its delivery loop (which writes it) and the
//! metrics, health and status views (which read it).

use serde::Serialize;
use std::sync::{Arc, Mutex};

/// The state of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
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
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 6] = [
        State::Active,
        State::Retrying,
        State::Paused,
        State::CircuitOpen,
        State::AuthFailed,
        State::Disabled,
    ];

    /// The label / JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Retrying => "retrying",
            State::Paused => "paused",
            State::CircuitOpen => "circuit_open",
            State::AuthFailed => "auth_failed",
            State::Disabled => "disabled",
        }
    }
}

/// The last failure of a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// What happened (never contains secrets).
    pub message: String,
    /// When, unix milliseconds.
    pub at_ms: i64,
}

/// A webhook's live status.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookStatus {
    /// State.
    pub state: State,
    /// Current adaptive in-flight limit.
    pub in_flight_limit: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Failed requests in a row.
    pub consecutive_failures: u32,
    /// The last failure.
    pub last_error: Option<LastError>,
}

/// Shared handle to a webhook's status.
pub type SharedStatus = Arc<Mutex<WebhookStatus>>;

/// A fresh status.
pub fn shared(state: State) -> SharedStatus {
    Arc::new(Mutex::new(WebhookStatus {
        state,
        in_flight_limit: 1,
        in_flight: 0,
        consecutive_failures: 0,
        last_error: None,
    }))
}
