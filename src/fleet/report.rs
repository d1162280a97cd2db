//! The report loop of `[fleet] report_url`: once in every `report_interval` (full jitter),
//! POST what `status --json` shows with the gateway's id, version, uptime and the fleet
//! document's hash, signed like a webhook (Standard Webhooks). Retried with backoff, but
//! never queued: each attempt sends the report as of then, and one still failing when the
//! next is due is dropped — at most one in flight, none waiting.

use super::{sleep_or_stop, unit, Jitter};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::deliver::client::{Outcome, WebhookClient};
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
        let fleet = self.sup.fleet();
        let body = serde_json::json!({
            "gateway": self.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "at": crate::timefmt::rfc3339_ms(crate::timefmt::now_ms()),
            "config_sha256": fleet.as_ref().and_then(|f| f.config_sha256.clone()),
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
            next += jitter.next(unit());
            let mut attempt = 0;
            loop {
                let body = self.report();
                let id = format!("rpt_{}_{}", self.gateway, crate::timefmt::now_ms());
                let headers = crate::deliver::signing::headers(self.signer.as_ref(), &id, &body);
                let sent = tokio::select! {
                    r = self.client.post(body, &headers) => r.0,
                    _ = stop.cancelled() => return,
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
                let delay = failure
                    .retry_after
                    .unwrap_or_else(|| backoff.delay(attempt, unit()));
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
