//! What an answer means: delivered, retry (and whether it is back-pressure), hold the
//! queue after 401/403, disable on 410, smaller batches on 413, or dead-letter on other
//! client errors (404, 405, 415 are retried: proxies answer them during a deploy).

use super::client::{Failure, FailureKind, Outcome};
use super::concurrency::Signal;
use std::time::Duration;

/// Shortest and longest pause a `Retry-After` may ask for.
pub(crate) const RETRY_AFTER_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// A receiver's pause (`Retry-After`) spread over `pause` … `2 × pause` by `unit`, a uniform
/// draw from [0, 1): never earlier than asked, and a fleet of gateways that got the same
/// answer in the same second does not come back in the same instant (full jitter over one
/// more pause).
pub(crate) fn spread(pause: Duration, unit: f64) -> Duration {
    pause + pause.mul_f64(unit.clamp(0.0, 1.0))
}

/// What to do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// 2xx: remove from the queue.
    Delivered,
    /// Try again later; `pause` holds the whole webhook (Retry-After on 429/503).
    Retry {
        /// Receiver-requested pause, clamped.
        pause: Option<Duration>,
        /// Whether it signals overload (for adaptive concurrency).
        backpressure: bool,
    },
    /// 401/403: keep everything, retry slowly, report `auth_failed`.
    AuthFailed,
    /// 410: the receiver is gone for good: disable the webhook, keep the queue.
    Gone,
    /// Another 4xx: the receiver will never take this message: move it to the dead letters.
    DeadLetter,
    /// 413: the body is too large for the receiver: retry in smaller batches.
    TooLarge,
}

impl Action {
    /// The signal for the concurrency controller.
    pub(crate) fn signal(&self) -> Signal {
        match self {
            Action::Delivered | Action::DeadLetter => Signal::Ok,
            Action::Retry {
                backpressure: true, ..
            } => Signal::Backpressure,
            _ => Signal::Neutral,
        }
    }
}

/// Classifies an outcome.
pub(crate) fn classify(outcome: &Outcome) -> Action {
    match outcome {
        Outcome::Delivered { .. } => Action::Delivered,
        Outcome::Failed(f) => classify_failure(f),
    }
}

/// Classifies a failure (the fleet's report loop retries by the same rules).
pub(crate) fn classify_failure(f: &Failure) -> Action {
    match f.kind {
        FailureKind::Timeout => Action::Retry {
            pause: None,
            backpressure: true,
        },
        FailureKind::Connect | FailureKind::Tls | FailureKind::Other => Action::Retry {
            pause: None,
            backpressure: false,
        },
        FailureKind::Http(s) => match s.as_u16() {
            401 | 403 => Action::AuthFailed,
            410 => Action::Gone,
            // 404/405/415 often come from a proxy or a deploy in progress, not from the
            // receiver's verdict on the message: held and retried like a 5xx.
            408 | 425 | 404 | 405 | 415 => Action::Retry {
                pause: None,
                backpressure: false,
            },
            413 => Action::TooLarge,
            429 | 503 => Action::Retry {
                pause: f
                    .retry_after
                    .map(|d| d.clamp(RETRY_AFTER_RANGE.0, RETRY_AFTER_RANGE.1)),
                backpressure: true,
            },
            500..=599 => Action::Retry {
                pause: None,
                backpressure: true,
            },
            400..=499 => Action::DeadLetter,
            // 1xx/3xx (redirects are not followed) and anything odd: retry.
            _ => Action::Retry {
                pause: None,
                backpressure: false,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    fn http(code: u16, retry_after: Option<u64>) -> Action {
        classify(&Outcome::Failed(Failure {
            kind: FailureKind::Http(StatusCode::from_u16(code).unwrap()),
            message: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }))
    }

    #[test]
    fn a_pause_is_spread_over_one_more_pause_never_shortened() {
        let p = Duration::from_secs(2);
        assert_eq!(spread(p, 0.0), p);
        assert_eq!(spread(p, 0.5), Duration::from_secs(3));
        assert!(spread(p, 0.999_999) < Duration::from_secs(4));
        assert_eq!(spread(p, 7.0), Duration::from_secs(4));
        assert_eq!(spread(p, -1.0), p);
    }

    #[test]
    fn classifies_like_the_issue_says() {
        assert_eq!(http(401, None), Action::AuthFailed);
        assert_eq!(http(403, None), Action::AuthFailed);
        assert_eq!(http(410, None), Action::Gone);
        assert_eq!(http(400, None), Action::DeadLetter);
        assert_eq!(http(422, None), Action::DeadLetter);
        assert!(matches!(http(408, None), Action::Retry { .. }));
        for code in [404, 405, 415] {
            assert!(matches!(http(code, None), Action::Retry { .. }), "{code}");
        }
        assert_eq!(http(413, None), Action::TooLarge);
        assert!(matches!(http(425, None), Action::Retry { .. }));
        assert!(matches!(
            http(302, None),
            Action::Retry {
                backpressure: false,
                ..
            }
        ));
        assert_eq!(
            http(429, Some(3)),
            Action::Retry {
                pause: Some(Duration::from_secs(3)),
                backpressure: true
            }
        );
        assert_eq!(
            http(503, Some(0)),
            Action::Retry {
                pause: Some(Duration::from_secs(1)),
                backpressure: true
            }
        );
        assert_eq!(
            http(503, Some(86_400)),
            Action::Retry {
                pause: Some(Duration::from_secs(3600)),
                backpressure: true
            }
        );
        // Retry-After only counts on 429 and 503.
        assert_eq!(
            http(500, Some(30)),
            Action::Retry {
                pause: None,
                backpressure: true
            }
        );
    }
}
