//! The door into the store for every source: routes a source's events to webhooks, submits
//! them as one group, and gives back a future that resolves once they are durably
//! committed — the moment a source may acknowledge its input.

use crate::event::Event;
use crate::metrics::{Metrics, ReasonLabel};
use crate::route::Filtered;
use crate::route::Router;
use crate::store::{Mark, Store, StoreError, WebhookId};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;

/// Shared handle sources use to hand over events; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    router: Arc<Mutex<Router>>,
    store: Store,
    metrics: Arc<Metrics>,
    /// `roomhook_events_enqueued_total` per webhook, resolved once per webhook.
    enqueued: Arc<std::sync::RwLock<HashMap<WebhookId, Counter>>>,
    /// `roomhook_events_filtered_total` for not_selected, unchanged and deadband, resolved once.
    filtered: Arc<[Counter; 3]>,
    /// What each source is doing.
    /// The devices seen and their latest values (only while the console is on).
    seen: Option<Arc<crate::seen::Seen>>,
}

impl Ingest {
    /// An ingest path into a store, routing to no webhook until they are added with
    /// [`Ingest::upsert_webhook`].
    pub(crate) fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        let filtered = [
            Filtered::NotSelected,
            Filtered::Unchanged,
            Filtered::Deadband,
        ]
        .map(|f| {
            metrics
                .events_filtered
                .get_or_create(&ReasonLabel {
                    reason: f.label().to_string(),
                })
                .clone()
        });
        // Counted by the delivery loops (values superseded within a min_interval); shown
        // at 0 from the start like the others.
        let _ = metrics.events_filtered.get_or_create(&ReasonLabel {
            reason: "min_interval".into(),
        });
        Self {
            router: Arc::new(Mutex::new(Router::new([]))),
            store,
            metrics,
            enqueued: Default::default(),
            filtered: Arc::new(filtered),
            seen: None,
        }
    }

    /// Also notes every device and its latest values in `seen`, when given (the console).
    pub(crate) fn recording_seen(mut self, seen: Option<Arc<crate::seen::Seen>>) -> Self {
        self.seen = seen;
        self
    }

    /// Routes and submits events. Waits while the store is busy (backpressure); the
    /// returned future resolves when they are committed. Events of one source reach each
    /// queue in the order the source submitted them.
    pub(crate) async fn submit(
        &self,
        events: Vec<Event>,
        mark: Option<Mark>,
    ) -> Result<impl Future<Output = Result<(), StoreError>> + Send + 'static, StoreError> {
        if let Some(seen) = &self.seen {
            seen.record(&events, crate::timefmt::now_ms());
        }
        let mut items = Vec::new();
        let mut per_webhook: HashMap<WebhookId, u64> = HashMap::new();
        // Routing takes the lock briefly and never across an await: a source's own pending
        // commits (retries) must never wait behind the source itself.
        let routed: Vec<_> = {
            let mut router = self.router.lock().unwrap_or_else(|p| p.into_inner());
            events.iter().map(|e| router.route(e)).collect()
        };
        for (e, r) in events.iter().zip(routed) {
            match r {
                Ok(targets) => {
                    let mut whole = None;
                    for (t, part) in targets {
                        *per_webhook.entry(t).or_default() += 1;
                        let bytes = match part {
                            Some(p) => p.encode(),
                            None => whole.get_or_insert_with(|| e.encode()).clone(),
                        };
                        items.push((t, bytes));
                    }
                }
                Err(why) => {
                    self.filtered[why as usize].inc();
                }
            }
        }
        let commit = if items.is_empty() {
            None
        } else {
            Some(self.store.submit(items, mark).await?)
        };
        let this = self.clone();
        Ok(async move {
            let Some(commit) = commit else {
                return Ok(());
            };
            match commit.await {
                Ok(()) => {
                    let enqueued = this.enqueued.read().unwrap_or_else(|p| p.into_inner());
                    for (id, n) in per_webhook {
                        if let Some(c) = enqueued.get(&id) {
                            c.inc_by(n);
                        }
                    }
                    Ok(())
                }
                Err(StoreError::Redelivered) => Err(StoreError::Redelivered),
                Err(e) => {
                    // The change-only memory already counts these values as forwarded;
                    // forget it so the redelivered input is not filtered as unchanged.
                    this.router
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .forget();
                    Err(e)
                }
            }
        })
    }

    /// Adds a webhook or changes its name or selection; applies to events submitted after.
    pub(crate) fn upsert_webhook(&self, id: WebhookId, w: &crate::config::WebhookSettings) {
        let counter = self
            .metrics
            .events_enqueued
            .get_or_create(&Metrics::webhook(&w.name))
            .clone();
        self.enqueued
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, counter);
        self.router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upsert(id, w);
    }

    /// Removes a webhook: events submitted after this no longer go to it.
    pub(crate) fn remove_webhook(&self, id: WebhookId) {
        self.router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.enqueued
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Routes, submits and waits for the commit.
    pub(crate) async fn accept(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.submit(events, None).await?.await
    }

    /// The PUBACKs of these packet ids of MQTT source `source` were written: their
    /// redelivery marks go with the next commit ([`Store::clear_marks`]).
    pub(crate) async fn clear_marks(&self, source: &str, pkids: Vec<u16>) {
        self.store.clear_marks(source, pkids).await
    }

    /// A quiet source's cleared marks are written now ([`Store::flush_marks`]).
    pub(crate) fn flush_marks(&self, source: &str) {
        self.store.flush_marks(source)
    }

    /// Changes whenever the store freed room: a source holding input the store refused
    /// as full retries then, not only on its timer.
    pub(crate) fn room_freed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.room_freed()
    }

    /// The metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
