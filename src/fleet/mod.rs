//! The fleet: the config document pulled from `[fleet] config_url` (`pull.rs`: fetch,
//! signature, check, apply through the reload's path), the status reports pushed to
//! `[fleet] report_url` (`report.rs`), the operator's Ed25519 keys and signatures
//! (`sign.rs`), and the schedule both loops keep: one time in each interval, uniformly at
//! random within it ([`Jitter`], plain logic), so that a fleet started at once spreads out.

mod pull;
mod report;
pub mod sign;

use crate::config::Settings;
use crate::deliver::client::WebhookClient;
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Full jitter over fixed periods: one time in each period of `interval`, drawn uniformly
/// within it. Two times are between 0 and two intervals apart; a fleet that starts at once
/// (after a power cut) spreads its requests over the whole interval from the first one on.
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    interval: Duration,
    /// What is left of the period of the last time.
    rest: Duration,
}

impl Jitter {
    /// The schedule from now: the first time falls within the first interval.
    pub(crate) fn new(interval: Duration) -> Self {
        Jitter {
            interval,
            rest: Duration::ZERO,
        }
    }

    /// The period.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// How long to wait for the next time; `unit` is a uniform draw from [0, 1).
    pub(crate) fn next(&mut self, unit: f64) -> Duration {
        let offset = self.interval.mul_f64(unit.clamp(0.0, 1.0));
        let wait = self.rest + offset;
        self.rest = self.interval - offset;
        wait
    }
}

/// A uniform draw from [0, 1).
fn unit() -> f64 {
    rand::random::<f64>()
}

/// Starts the pull loop and the report loop that `[fleet]` asks for, until `stop`.
pub(crate) fn spawn(
    settings: &Settings,
    supervisor: Arc<Supervisor>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let Some(fleet) = &settings.fleet else { return };
    let client = |e: &crate::config::FleetEndpoint, what: &str| {
        WebhookClient::endpoint(e.url.clone(), &e.trust, e.authorization.as_ref())
            .map_err(|err| tracing::error!("fleet {what}: {err}; nothing is sent there"))
            .ok()
    };
    if let Some((e, c)) = fleet
        .config
        .as_ref()
        .and_then(|e| Some((e, client(e, "config")?)))
    {
        let p = pull::Puller::new(settings, &e.url, c, (supervisor.clone(), metrics.clone()));
        tasks.spawn(p.run(fleet.config_interval, stop.clone()));
    }
    if let Some(c) = fleet.report.as_ref().and_then(|e| client(e, "reports")) {
        let r = report::Reporter::new(settings, c, supervisor, metrics);
        tasks.spawn(r.run(fleet.report_interval, stop));
    }
}

/// Sleeps `d`; false when `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn one_time_in_each_interval() {
        let i = Duration::from_secs(10);
        let mut j = Jitter::new(i);
        let mut at = Duration::ZERO;
        for (k, u) in [0.0, 0.99, 0.5, 0.0, 0.3].into_iter().enumerate() {
            at += j.next(u);
            assert!(at >= i * k as u32 && at < i * (k as u32 + 1), "{k}: {at:?}");
        }
    }

    /// 20 gateways started in the same second, polling every 5 minutes (the default):
    /// over 10 intervals no second sees more than 3 of their requests.
    #[test]
    fn twenty_gateways_started_at_once_spread_over_the_interval() {
        let interval = Duration::from_secs(300);
        let mut per_second = std::collections::HashMap::<u64, u32>::new();
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut j = Jitter::new(interval);
            let mut at = Duration::ZERO;
            for _ in 0..10 {
                at += j.next(rng.random::<f64>());
                *per_second.entry(at.as_secs()).or_default() += 1;
            }
        }
        let busiest = per_second.values().max().copied().unwrap_or(0);
        assert!(busiest <= 3, "a second with {busiest} requests");
        // And they do spread: requests in at least 150 distinct seconds of 3000.
        assert!(per_second.len() >= 150, "{}", per_second.len());
    }
}
