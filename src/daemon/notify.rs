//! The systemd notification protocol (`sd_notify`): `READY=1` once everything runs, a
//! `STATUS=` line a person reads in `systemctl status`, `RELOADING=1` … `READY=1` around a
//! reload, `STOPPING=1`, and the watchdog's `WATCHDOG=1`. Without `NOTIFY_SOCKET` (not
//! started by systemd) every call does nothing.

use crate::supervisor::Supervisor;
use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the status line is looked at (it is sent only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Whether a service manager listens.
pub(crate) fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }
}

/// Everything is up: the store is open, the control socket listens, every source started.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (with the monotonic time systemd 253+ wants).
pub(crate) fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states.push(NotifyState::Status("reloading the config"));
    send(&states);
}

/// The daemon stops.
pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog's "still turning".
pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub(crate) fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The status line: `3/3 webhooks active, 120 queued, 2/2 sources connected`, and the first
/// problem when the daemon is not ready.
pub(crate) fn status_line(sup: &Supervisor) -> String {
    let store = sup.store();
    let webhooks = sup.webhooks();
    let active = webhooks
        .iter()
        .filter(|w| {
            w.status
                .lock()
                .is_ok_and(|s| s.state == crate::deliver::status::State::Active)
        })
        .count();
    let queued: u64 = webhooks.iter().map(|w| store.depth(w.id)).sum();
    let sources = sup.sources();
    let connected = sources.iter().filter(|s| s.connected).count();
    let mut line = format!(
        "{active}/{} active, {queued} queued, {connected}/{} connected",
        plural(webhooks.len(), "webhook", "webhooks"),
        plural(sources.len(), "source", "sources"),
    );
    let report = crate::admin::status::report(sup);
    if let Some(first) = report.problems.first() {
        line.push_str("; not ready: ");
        line.push_str(first);
    }
    // One line whatever a peer put in a problem's text: a newline would start a notify
    // line of its own (`WATCHDOG=trigger`).
    crate::redact::printable(&line)
}

/// Sends the status line when it changes (at most once a second) until `stop`.
pub(crate) async fn keep_status(sup: Arc<Supervisor>, stop: CancellationToken) {
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STATUS_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let line = status_line(&sup);
        if line != last {
            send(&[NotifyState::Status(&line)]);
            last = line;
        }
    }
}
