//! Wiring: opens the store, hands webhooks and sources to the supervisor, starts the admin
//! listener, the control API, the fleet's pulls and reports, the SIGHUP reload and the
//! systemd notifications, and stops
//! them in order (sources, then workers, then the listeners, then the store).

pub(crate) mod notify;
pub mod signals;
pub(crate) mod watchdog;

use crate::config::Settings;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::{Limits, Store};
use crate::supervisor::Supervisor;
use anyhow::Context;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A started daemon.
pub struct Running {
    /// Where sources hand over events (the demo attaches its simulator here).
    pub(crate) ingest: Ingest,
    /// The running webhooks and sources.
    pub(crate) supervisor: Arc<Supervisor>,
    store: Store,
    /// Extra sources (the demo's simulator).
    extra_sources: JoinSet<()>,
    /// The admin listener, the control API and the reload signal handler.
    services: JoinSet<()>,
    /// Cancelled to stop the extra sources.
    source_stop: CancellationToken,
    /// Cancelled to stop the services (last).
    service_stop: CancellationToken,
    /// The fleet's pull and report loops.
    fleet: JoinSet<()>,
    /// Cancelled first of all: a pull in flight is given up and none is applied after it.
    fleet_stop: CancellationToken,
    shutdown: CancellationToken,
}

/// Starts everything the settings describe; `shutdown` stops it.
pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Before anything runs: a SIGHUP that comes early must reload, not end the process.
    let hangups = signals::hangups();
    let metrics = Arc::new(Metrics::new());
    let limits = Limits {
        max_bytes: settings.max_store_bytes,
        queues: settings
            .webhooks
            .iter()
            .map(|w| (w.name.clone(), w.overflow))
            .collect(),
    };
    let (store, _) = {
        let dir = settings.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir, &limits))
            .await
            .context("store open task")??
    };
    store.set_commit_interval(settings.commit_interval);
    tracing::info!(store = %store.path().display(), "store open");
    // The console shows the devices seen and their latest values: noted only when it is on.
    let console_on = settings.admin_console && settings.admin_token.is_some();
    let seen = console_on.then(|| Arc::new(crate::seen::Seen::default()));
    let ingest = Ingest::new(store.clone(), metrics.clone()).recording_seen(seen.clone());
    let supervisor = Supervisor::start(
        settings.clone(),
        store.clone(),
        ingest.clone(),
        metrics.clone(),
        settings.shutdown_grace,
    )
    .await?;
    // roomhook_ready: what /readyz decides, brought up to date before every scrape (after
    // the supervisor's own figures).
    let (weak, ready) = (Arc::downgrade(&supervisor), metrics.ready.clone());
    metrics.on_scrape(move || {
        if let Some(sup) = weak.upgrade() {
            ready.set(i64::from(crate::admin::status::report(&sup).ready));
        }
    });

    let service_stop = CancellationToken::new();
    let mut services = JoinSet::new();
    let control = Arc::new(crate::admin::control::Control {
        supervisor: supervisor.clone(),
    });
    if let Some(addr) = settings.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on admin.listen = {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("metrics on http://{local}/metrics");
        services.spawn(crate::admin::serve(
            listener,
            crate::admin::Admin {
                metrics: metrics.clone(),
                control: control.clone(),
                token: settings.admin_token.clone(),
                console: settings
                    .admin_token
                    .clone()
                    .zip(seen.clone())
                    .map(|(t, seen)| Arc::new(crate::admin::console::Console::new(t, seen))),
                trusted_proxies: settings.admin_trusted_proxies.clone(),
                guard: Default::default(),
            },
            service_stop.clone(),
        ));
    }

    let socket = crate::admin::control::bind(&settings.control_socket).await?;
    tracing::info!(socket = %settings.control_socket.display(), "control API listening");
    services.spawn(crate::admin::control::serve(
        socket,
        settings.control_socket.clone(),
        control,
        service_stop.clone(),
    ));
    let fleet_stop = CancellationToken::new();
    let mut fleet = JoinSet::new();
    crate::fleet::spawn(
        settings,
        supervisor.clone(),
        metrics.clone(),
        fleet_stop.clone(),
        &mut fleet,
    );
    services.spawn(signals::reload_on_sighup(
        hangups,
        supervisor.clone(),
        shutdown.clone(),
    ));
    if notify::enabled() {
        // The store is open, the control socket listens, every source has been started
        // (READY goes out before the first watchdog ping).
        notify::ready(&notify::status_line(&supervisor));
        services.spawn(notify::keep_status(
            supervisor.clone(),
            service_stop.clone(),
        ));
        if let Some(period) = notify::watchdog_period() {
            services.spawn(watchdog::run(
                supervisor.clone(),
                period,
                service_stop.clone(),
            ));
        }
    }

    Ok(Running {
        ingest,
        supervisor,
        store,
        extra_sources: JoinSet::new(),
        services,
        source_stop: CancellationToken::new(),
        service_stop,
        fleet,
        fleet_stop,
        shutdown,
    })
}

impl Running {
    /// Adds a task that feeds the ingest path and stops with the sources (the demo's
    /// simulator).
    #[cfg(feature = "demo")]
    pub(crate) fn spawn_source<F>(
        &mut self,
        name: &str,
        f: impl FnOnce(Ingest, Arc<crate::source::status::SourceStatus>, CancellationToken) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let status = self.supervisor.source_status(name);
        let fut = f(self.ingest.clone(), status, self.source_stop.clone());
        self.extra_sources.spawn(fut);
    }

    /// The store (for counts in the demo).
    #[cfg(feature = "demo")]
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Waits for the shutdown signal, then stops sources, workers and the store in order.
    pub async fn wait(self) {
        let Running {
            ingest,
            store,
            supervisor,
            mut extra_sources,
            mut services,
            source_stop,
            service_stop,
            mut fleet,
            fleet_stop,
            shutdown,
            ..
        } = self;
        shutdown.cancelled().await;
        // The fleet first: its requests are given up, and no pull applies onto a supervisor
        // being emptied (the apply checks `fleet_stop` under the supervisor's lock).
        fleet_stop.cancel();
        while fleet.join_next().await.is_some() {}
        tracing::info!("stopping: no new input, finishing in-flight requests");
        notify::stopping("stopping: no new input, finishing requests in flight");
        store.stopping();
        source_stop.cancel();
        while extra_sources.join_next().await.is_some() {}
        supervisor.stop_sources().await;
        supervisor.stop_webhooks().await;
        service_stop.cancel();
        while services.join_next().await.is_some() {}
        drop(ingest);
        drop(supervisor);
        store.close().await;
        tracing::info!("stopped");
    }
}
