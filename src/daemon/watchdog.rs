//! The systemd watchdog (`WatchdogSec=`): `WATCHDOG=1` goes out only while the pipeline
//! turns — the store writer thread lives and is not stuck in one group, every delivery loop
//! and source task runs and none is stuck in one step (waiting for input, a timer or the
//! network by choice is not stuck). When something hangs the pings stop, and systemd
//! restarts the daemon after the period; what was committed is safe on disk.

use crate::supervisor::Supervisor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often to check (and ping) and how long one step may last, from the period systemd
/// gives: four looks per period, so that one late look never misses a ping; a step stuck
/// for half the period stops the pings (systemd acts after the rest of it).
pub(crate) fn timing(period: Duration) -> (Duration, Duration) {
    (period / 4, period / 2)
}

/// Pings systemd every `period / 4` while nothing is stuck, until `stop`.
pub async fn run(sup: Arc<Supervisor>, period: Duration, stop: CancellationToken) {
    let (every, limit) = timing(period);
    tracing::info!("systemd watchdog: {period:?}; a part stuck for {limit:?} stops the pings");
    let mut failing_since: Option<Instant> = None;
    loop {
        let problems = crate::admin::status::stuck_parts(&sup, limit);
        if problems.is_empty() {
            if let Some(since) = failing_since.take() {
                tracing::info!(
                    "watchdog: everything turns again after {:.1} s; pings resume",
                    since.elapsed().as_secs_f64()
                );
            }
            super::notify::watchdog();
        } else if failing_since.is_none() {
            failing_since = Some(Instant::now());
            tracing::error!(
                "watchdog: not pinging systemd, which restarts roomhook unless this ends within {period:?}: {}",
                problems.join("; ")
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
