//! The report loop of `[fleet] report_url`: once in every `report_interval` (full jitter),
//! POST what `status --json` shows with the gateway's id, version, uptime and the fleet
//! document's hash, signed like a webhook (Standard Webhooks). Retried with backoff (a
//! refusal for good, such as a 401, is not: the rules of `deliver::policy`), but never
//! queued: each attempt sends the report as of then, and one still failing when the next
//! is due is dropped — at most one in flight, none waiting.

use super::{sleep_or_stop, unit, Jitter};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::deliver::client::{Failure, Outcome, WebhookClient};
use crate::deliver::policy::{self, Action};
use crate::metrics::{Metrics, ResultLabel};
use crate::supervisor::Supervisor;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The first retry's delay ceiling (doubling).
const RETRY_BASE: Duration = Duration::from_secs(1);

/// The state of the report loop.
pub(super) struct Reporter {
    sup: Arc<Supervisor>,
    metrics: Arc<Metrics>,
    client: WebhookClient,
    signer: Option<crate::value::signing::Signer>,
    gateway: String,
    started: Instant,
}

impl Reporter {
    pub(super) fn new(
        s: &Settings,
        client: WebhookClient,
        sup: Arc<Supervisor>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reporter {
            sup,
            metrics,
            client,
            signer: s.fleet.as_ref().and_then(|f| f.report_signer.clone()),
            gateway: s.gateway_id.clone(),
            started: Instant::now(),
        }
    }

    /// The report as of now.
    fn report(&self) -> Bytes {
        let body = serde_json::json!({
            "gateway": self.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "at": crate::timefmt::rfc3339_ms(crate::timefmt::now_ms()),
            "config_sha256": self.sup.fleet_sha256(),
            "status": crate::admin::status::status(&self.sup),
        });
        Bytes::from(body.to_string())
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .fleet_reports
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        let now = crate::timefmt::rfc3339_ms(crate::timefmt::now_ms());
        self.sup.note_fleet(|f| {
            f.report_result = Some(result.into());
            f.report_at = Some(now);
        });
    }

    /// Reports once in every `interval` (full jitter) until `stop`.
    pub(super) async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut jitter = Jitter::new(interval);
        let backoff = Backoff {
            base: RETRY_BASE,
            max: interval,
        };
        let mut next = tokio::time::Instant::now() + jitter.next(unit());
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => return,
            }
            // After a slow report the next time may be past: from now, not back to back.
            next = following(next, tokio::time::Instant::now(), &mut jitter, unit());
            let mut attempt = 0;
            loop {
                let body = self.report();
                let id = format!("rpt_{}_{}", self.gateway, crate::timefmt::now_ms());
                let headers = crate::deliver::signing::headers(self.signer.as_ref(), &id, &body);
                let sent = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    r = self.client.post(body, &headers) => r.0,
                };
                let failure = match sent {
                    Outcome::Delivered { .. } => {
                        self.count("sent");
                        break;
                    }
                    Outcome::Failed(f) => f,
                };
                self.count("failed");
                attempt += 1;
                let Some(delay) = retry_delay(&failure, backoff.delay(attempt, unit())) else {
                    tracing::warn!(
                        "fleet report refused ({}); not tried again, the next one is due in {:?}",
                        failure.message,
                        next.saturating_duration_since(tokio::time::Instant::now())
                    );
                    break;
                };
                if tokio::time::Instant::now() + delay >= next {
                    // The next report is due first: this one is stale.
                    tracing::warn!(
                        "fleet report not sent ({}); the next one replaces it",
                        failure.message
                    );
                    self.count("dropped");
                    break;
                }
                tracing::debug!(
                    "fleet report not sent ({}); again in {delay:?}",
                    failure.message
                );
                if !sleep_or_stop(delay, &stop).await {
                    return;
                }
            }
        }
    }
}

/// The pause before a failed report is tried again, by the rules of a webhook's delivery
/// (`deliver::policy`): `None` for a refusal for good (401, 403, 410, 413, and the other
/// 4xx but 404, 405, 408, 415, 425 and 429); else the backoff's `delay`, or a 429's or 503's
/// `Retry-After` (taken within its range, never zero) when longer.
fn retry_delay(failure: &Failure, delay: Duration) -> Option<Duration> {
    match policy::classify_failure(failure) {
        Action::Retry { pause, .. } => Some(pause.map_or(delay, |p| p.max(delay))),
        _ => None,
    }
}

/// The time of the report after the one due at `due`, as of `now`: the next in the
/// schedule, or, when that is already past (a slow report), a time drawn within an interval
/// from now; `unit` is a uniform draw from [0, 1).
fn following(
    due: tokio::time::Instant,
    now: tokio::time::Instant,
    jitter: &mut Jitter,
    unit: f64,
) -> tokio::time::Instant {
    let next = due + jitter.next(unit);
    if next > now {
        return next;
    }
    *jitter = Jitter::new(jitter.interval());
    now + jitter.next(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_good_is_not_retried_and_a_retry_after_is_taken_within_its_range() {
        let s = Duration::from_secs;
        let backoff = Duration::from_millis(300);
        let http = |code: u16, retry_after: Option<Duration>| Failure {
            kind: crate::deliver::client::FailureKind::Http(
                hyper::StatusCode::from_u16(code).unwrap(),
            ),
            message: String::new(),
            retry_after,
        };
        assert_eq!(
            retry_delay(&http(429, Some(Duration::ZERO)), backoff),
            Some(s(1))
        );
        assert_eq!(
            retry_delay(&http(503, Some(s(7200))), backoff),
            Some(s(3600))
        );
        assert_eq!(retry_delay(&http(429, Some(s(5))), backoff), Some(s(5)));
        assert_eq!(retry_delay(&http(429, Some(s(1))), s(4)), Some(s(4)));
        assert_eq!(retry_delay(&http(500, None), backoff), Some(backoff));
        // A proxy's 404 during a deploy is retried; the receiver's verdicts are not.
        assert_eq!(retry_delay(&http(404, None), backoff), Some(backoff));
        for code in [400, 401, 403, 410, 413, 422] {
            assert_eq!(
                retry_delay(&http(code, Some(s(5))), backoff),
                None,
                "{code}"
            );
        }
    }

    #[test]
    fn a_report_past_its_time_schedules_the_next_from_now() {
        let i = Duration::from_secs(10);
        let t0 = tokio::time::Instant::now();
        let mut j = Jitter::new(i);
        // On time: the next one in the schedule.
        let due = t0 + j.next(0.5);
        assert_eq!(following(due, due, &mut j, 0.5), t0 + i + i / 2);
        // A report that took two intervals: the next within an interval from now, not at
        // once (nor at the two past times, back to back).
        let mut j = Jitter::new(i);
        let due = t0 + j.next(0.0);
        let now = due + i * 2;
        let next = following(due, now, &mut j, 0.25);
        assert_eq!(next, now + i / 4);
        // And the schedule goes on from there.
        assert_eq!(following(next, next, &mut j, 0.25), now + i + i / 4);
    }
}
