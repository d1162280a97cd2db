//! What each signal does. SIGTERM or SIGINT: stop taking input, let requests in flight
//! finish within `[gateway] shutdown_grace`, commit, exit 0; a second one exits at once.
//! SIGHUP: re-read the config file (an invalid file keeps the running config).

use crate::supervisor::Supervisor;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// What the daemon may take beyond the grace period: the sources drain first (an MQTT
/// source commits and acks what it took, 5 s at most, and says goodbye, 2 s at most), then
/// the requests in flight get the grace, then the store closes.
pub(crate) const CLOSE_MARGIN: Duration = Duration::from_secs(10);

/// Cancels `token` on the first SIGTERM or SIGINT; exits at once (status 1) on a second
/// one, or when the shutdown outlasts `grace` + [`CLOSE_MARGIN`]. Either way nothing
/// committed is lost (every commit is durable when it is acknowledged) and nothing
/// uncommitted was acknowledged to anyone.
pub fn stop_on_signals(token: CancellationToken, grace: Duration) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install the SIGTERM and SIGINT handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
        let backstop = grace + CLOSE_MARGIN;
        std::thread::spawn(move || {
            std::thread::sleep(backstop);
            tracing::error!("shutdown did not finish within {backstop:?}; exiting now (committed events are safe)");
            std::process::exit(1);
        });
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!("second signal ({second}): exiting now (committed events are safe; requests in flight are sent again after the restart)");
        std::process::exit(1);
    });
}

/// The SIGHUP handler, installed at once (a SIGHUP before it would end the process).
pub(crate) fn hangups() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot install the SIGHUP handler: reloads need a restart: {e}");
            None
        }
    }
}

/// SIGHUP re-reads the config file until `stop`; systemd hears `RELOADING=1` … `READY=1`.
pub(crate) async fn reload_on_sighup(
    hangups: Option<Signal>,
    supervisor: Arc<Supervisor>,
    shutdown: CancellationToken,
) {
    let Some(mut hup) = hangups else { return };
    loop {
        // Not once the daemon stops: a reload would start the sources it has drained.
        tokio::select! {
            _ = hup.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading the config");
        super::notify::reloading();
        match supervisor.reload().await {
            Ok(a) => tracing::info!(
                added = ?a.added,
                changed = ?a.changed,
                removed = ?a.removed,
                sources = ?a.sources,
                "config reloaded"
            ),
            Err(e) => tracing::error!("config not reloaded, the running config stays: {e}"),
        }
        super::notify::ready(&super::notify::status_line(&supervisor));
    }
}
