//! Wiring: opens the store, starts one delivery worker per webhook, the sources and the
//! admin listener, and stops them in order (sources, then workers, then the store).

use crate::config::Settings;
use crate::deliver::client::WebhookClient;
use crate::deliver::status::{SharedStatus, State};
use crate::deliver::worker::Worker;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::store::{Limits, Store, WebhookId};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may finish after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A started daemon.
pub struct Running {
    /// Where sources hand over events (the demo attaches its simulator here).
    pub ingest: Ingest,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The admin listener's address, if configured.
    pub admin_addr: Option<SocketAddr>,
    /// Store ids of the configured webhooks, by name.
    pub webhook_ids: HashMap<String, WebhookId>,
    /// Live status of each webhook, by name.
    pub statuses: HashMap<String, SharedStatus>,
    store: Store,
    sources: JoinSet<()>,
    workers: JoinSet<()>,
    /// Cancelled to stop the sources (first).
    source_stop: CancellationToken,
    /// Cancelled to stop the workers and the admin listener (after the sources).
    worker_stop: CancellationToken,
    shutdown: CancellationToken,
}

/// Starts everything the settings describe; `shutdown` stops it.
pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let limits = Limits {
        max_bytes: settings.max_store_bytes,
        queues: settings
            .webhooks
            .iter()
            .map(|w| (w.name.clone(), w.overflow))
            .collect(),
    };
    let (store, ids) = {
        let dir = settings.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir, &limits))
            .await
            .context("store open task")??
    };
    tracing::info!(store = %store.path().display(), "store open");
    let router = Router::new(ids.iter().copied().zip(settings.webhooks.iter()));
    let id_names: HashMap<WebhookId, String> = ids
        .iter()
        .copied()
        .zip(settings.webhooks.iter().map(|w| w.name.clone()))
        .collect();
    let ingest = Ingest::new(router, store.clone(), metrics.clone(), id_names);

    let source_stop = CancellationToken::new();
    let worker_stop = CancellationToken::new();
    let mut workers = JoinSet::new();
    let mut statuses = HashMap::new();
    for (id, w) in ids.iter().copied().zip(&settings.webhooks) {
        let client = WebhookClient::new(w).with_context(|| format!("webhook {}", w.name))?;
        let status = crate::deliver::status::shared(if w.enabled {
            State::Active
        } else {
            State::Disabled
        });
        statuses.insert(w.name.clone(), status.clone());
        let worker = Worker {
            id,
            settings: w.clone(),
            client,
            store: store.clone(),
            org_id: settings.org_id.clone(),
            metrics: metrics.clone(),
            status,
            shutdown: worker_stop.clone(),
            grace: SHUTDOWN_GRACE,
        };
        workers.spawn(worker.run());
    }

    let admin_addr = match settings.admin_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on admin.listen = {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!("metrics on http://{local}/metrics");
            workers.spawn(crate::admin::serve(
                listener,
                metrics.clone(),
                worker_stop.clone(),
            ));
            Some(local)
        }
        None => None,
    };

    let socket = crate::admin::control::bind(&settings.control_socket).await?;
    let control = Arc::new(crate::admin::control::Control {
        store: store.clone(),
        webhooks: ids
            .iter()
            .copied()
            .zip(&settings.webhooks)
            .map(|(id, w)| crate::admin::control::ControlWebhook {
                id,
                settings: w.clone(),
                status: statuses
                    .get(&w.name)
                    .cloned()
                    .unwrap_or_else(|| crate::deliver::status::shared(State::Active)),
            })
            .collect(),
    });
    tracing::info!(socket = %settings.control_socket.display(), "control API listening");
    workers.spawn(crate::admin::control::serve(
        socket,
        settings.control_socket.clone(),
        control,
        worker_stop.clone(),
    ));

    let mut sources = JoinSet::new();
    for m in &settings.mqtt {
        let (m, ingest, stop) = (m.clone(), ingest.clone(), source_stop.clone());
        sources.spawn(async move {
            let name = m.name.clone();
            if let Err(e) = crate::source::mqtt::run(m, ingest, stop).await {
                tracing::error!(source = %name, "{e}");
            }
        });
    }
    let webhook_ids = settings
        .webhooks
        .iter()
        .map(|w| w.name.clone())
        .zip(ids)
        .collect();
    Ok(Running {
        ingest,
        metrics,
        admin_addr,
        webhook_ids,
        statuses,
        store,
        sources,
        workers,
        source_stop,
        worker_stop,
        shutdown,
    })
}

impl Running {
    /// Adds a task that feeds the ingest path and stops with the sources.
    pub fn spawn_source<F>(&mut self, f: impl FnOnce(Ingest, CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = f(self.ingest.clone(), self.source_stop.clone());
        self.sources.spawn(fut);
    }

    /// The store (for counts in the demo and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits for the shutdown signal, then stops sources, workers and the store in order.
    pub async fn wait(self) {
        let Running {
            ingest,
            store,
            mut sources,
            mut workers,
            source_stop,
            worker_stop,
            shutdown,
            ..
        } = self;
        shutdown.cancelled().await;
        tracing::info!("stopping: no new input, finishing in-flight requests");
        source_stop.cancel();
        while sources.join_next().await.is_some() {}
        worker_stop.cancel();
        while workers.join_next().await.is_some() {}
        drop(ingest);
        store.close().await;
        tracing::info!("stopped");
    }
}
