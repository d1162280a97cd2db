//! The running set of webhooks and sources (MQTT brokers, RoomOS devices), changed while the daemon runs: control API
//! edits and SIGHUP reloads both end in [`Supervisor::apply`], which compares the new
//! settings with the running ones and starts, restarts, renames or removes only what
//! changed. A webhook keeps its queue through every change except an explicit delete; a
//! queue whose webhook left the config is kept as an orphan for `orphan_retention`.

use crate::config::edit::{self, Edit};
use crate::config::{MqttSettings, RoomosSettings, Settings, WebhookSettings};
use crate::deliver::client::WebhookClient;
use crate::deliver::probe::{self, ProbeError, ProbeReport};
use crate::deliver::status::{SharedStatus, State};
use crate::deliver::worker::Worker;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::pulse::Pulses;
use crate::store::{Store, WebhookId};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the control API and the status views see of one webhook.
#[derive(Clone)]
pub struct WebhookView {
    /// Store id.
    pub id: WebhookId,
    /// Settings in force.
    pub settings: WebhookSettings,
    /// Live status.
    pub status: SharedStatus,
}

struct RunningWebhook {
    view: WebhookView,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The settings of one source of any kind.
#[derive(Debug, Clone, PartialEq)]
enum SourceSettings {
    Mqtt(MqttSettings),
    Roomos(RoomosSettings),
}

impl SourceSettings {
    fn name(&self) -> &str {
        match self {
            SourceSettings::Mqtt(m) => &m.name,
            SourceSettings::Roomos(r) => &r.name,
        }
    }

    fn all(s: &Settings) -> Vec<SourceSettings> {
        s.mqtt
            .iter()
            .cloned()
            .map(SourceSettings::Mqtt)
            .chain(s.roomos.iter().cloned().map(SourceSettings::Roomos))
            .collect()
    }
}

struct RunningSource {
    settings: SourceSettings,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Inner {
    settings: Settings,
    webhooks: Vec<RunningWebhook>,
    sources: Vec<RunningSource>,
}

fn disabled(status: &SharedStatus) -> bool {
    status.lock().is_ok_and(|s| s.state == State::Disabled)
}

/// What an apply changed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Applied {
    /// Webhooks started.
    pub added: Vec<String>,
    /// Webhooks restarted with new settings (queue kept).
    pub changed: Vec<String>,
    /// Webhooks removed, with the queued events discarded.
    pub removed: Vec<(String, u64)>,
    /// Sources restarted, started or stopped.
    pub sources: Vec<String>,
    /// Changes that only take effect after a restart.
    pub need_restart: Vec<String>,
}

/// Why a control action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The daemon runs without a config file to edit.
    #[error("this roomhook runs without a config file; edit the configuration and restart")]
    NoFile,
    /// The config file could not be read or written.
    #[error("config file {path}: {reason}; make it writable by the daemon's user, or edit it by hand and send SIGHUP")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// The edit is not possible.
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    /// The result is not a valid config (nothing was saved).
    #[error("{0}")]
    Invalid(String),
    /// The receiver did not pass the health check (nothing was saved).
    #[error("verification failed, nothing was saved: {0}")]
    Verify(ProbeError),
    /// No such webhook.
    #[error("no webhook named {0:?}")]
    Unknown(String),
    /// Starting or stopping a part failed.
    #[error("{0}")]
    Runtime(String),
}

/// The result of an edit.
#[derive(Debug, Serialize)]
pub struct Edited {
    /// The health check that verified it, when one was sent.
    pub verified: Option<ProbeReport>,
    /// What changed in the running daemon.
    pub applied: Applied,
}

/// Owns the running webhooks and sources.
pub struct Supervisor {
    inner: tokio::sync::Mutex<Inner>,
    view: std::sync::RwLock<Arc<Vec<WebhookView>>>,
    store: Store,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    org_id: String,
    grace: Duration,
    worker_stop: CancellationToken,
    source_stop: CancellationToken,
    /// Drop counts already added to the metrics, per webhook.
    dropped_seen: std::sync::Mutex<std::collections::HashMap<WebhookId, [u64; 5]>>,
    /// The config file (control-API file references may not name it).
    config_file: PathBuf,
    /// The store directory (control-API file references may not point into it).
    data_dir: PathBuf,
    /// Queues whose webhook left the config: name, store id, since when (unix ms).
    orphans: std::sync::Mutex<Vec<(String, WebhookId, i64)>>,
    /// How long orphans are kept, in milliseconds (follows reloads).
    orphan_retention_ms: std::sync::atomic::AtomicU64,
    store_errors_seen: std::sync::atomic::AtomicU64,
    /// The loops that must turn (store writer, delivery loops, sources), for the watchdog.
    pulses: Pulses,
}

impl Supervisor {
    /// Starts the webhooks and sources of `settings`.
    pub async fn start(
        settings: Settings,
        store: Store,
        ingest: Ingest,
        metrics: Arc<Metrics>,
        grace: Duration,
    ) -> Result<Arc<Self>, ActionError> {
        let empty = Settings {
            webhooks: Vec::new(),
            mqtt: Vec::new(),
            roomos: Vec::new(),
            ..settings.clone()
        };
        let sup = Arc::new(Self {
            inner: tokio::sync::Mutex::new(Inner {
                settings: empty,
                webhooks: Vec::new(),
                sources: Vec::new(),
            }),
            view: Default::default(),
            store,
            ingest,
            metrics,
            org_id: settings.org_id.clone(),
            grace,
            worker_stop: CancellationToken::new(),
            source_stop: CancellationToken::new(),
            dropped_seen: Default::default(),
            orphans: Default::default(),
            config_file: settings.file.clone(),
            data_dir: settings.data_dir.clone(),
            orphan_retention_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(settings.orphan_retention.as_millis()).unwrap_or(u64::MAX),
            ),
            store_errors_seen: Default::default(),
            pulses: Pulses::default(),
        });
        sup.pulses.add(&sup.store.pulse());
        sup.store
            .observe_commits(sup.metrics.store_commit_duration.clone());
        let weak = Arc::downgrade(&sup);
        sup.metrics.on_scrape(move || {
            if let Some(sup) = weak.upgrade() {
                sup.refresh_metrics();
            }
        });
        // Queues in the store that no configured webhook names any more (the name went out
        // of the file while the daemon was stopped, perhaps by a typo): kept as orphans for
        // orphan_retention, never silently deleted.
        let known = {
            let store = sup.store.clone();
            tokio::task::spawn_blocking(move || store.names())
                .await
                .map_err(|e| ActionError::Runtime(e.to_string()))?
                .map_err(|e| ActionError::Runtime(e.to_string()))?
        };
        let marked = {
            let store = sup.store.clone();
            tokio::task::spawn_blocking(move || store.orphans())
                .await
                .map_err(|e| ActionError::Runtime(e.to_string()))?
                .map_err(|e| ActionError::Runtime(e.to_string()))?
        };
        let configured = |name: &str| settings.webhooks.iter().any(|w| w.name == name);
        for (name, _) in known {
            if !configured(&name) {
                sup.orphan(&name).await?;
            }
        }
        for (name, _) in marked {
            if configured(&name) {
                sup.store
                    .set_orphan(&name, false)
                    .await
                    .map_err(|e| ActionError::Runtime(e.to_string()))?;
            }
        }
        sup.expire_orphans().await?;
        // Orphans age while the daemon runs, too: looked at once an hour.
        let weak = Arc::downgrade(&sup);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let Some(sup) = weak.upgrade() else { break };
                // Under the lock every apply takes: a name that comes back meanwhile is
                // taken off the orphans before this looks.
                let _inner = sup.inner.lock().await;
                if let Err(e) = sup.expire_orphans().await {
                    tracing::warn!("orphaned queues: {e}");
                }
            }
        });
        {
            let mut inner = sup.inner.lock().await;
            sup.apply_locked(&mut inner, settings, &[]).await?;
        }
        Ok(sup)
    }

    /// The webhooks as of now, in config order.
    pub fn webhooks(&self) -> Arc<Vec<WebhookView>> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One webhook by name.
    pub fn webhook(&self, name: &str) -> Option<WebhookView> {
        self.webhooks()
            .iter()
            .find(|w| w.settings.name == name)
            .cloned()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `orgId` of payloads.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    /// Brings the queue and store figures in the metrics up to date (before a scrape).
    fn refresh_metrics(&self) {
        use crate::store::DropReason;
        let (m, store) = (&self.metrics, &self.store);
        let now = crate::timefmt::now_ms();
        let mut seen = self.dropped_seen.lock().unwrap_or_else(|p| p.into_inner());
        for w in self.webhooks().iter() {
            let label = Metrics::webhook(&w.settings.name);
            m.queue_events
                .get_or_create(&label)
                .set(store.depth(w.id) as i64);
            m.queue_bytes
                .get_or_create(&label)
                .set(store.bytes(w.id) as i64);
            m.dead_letters
                .get_or_create(&label)
                .set(store.dead_count(w.id) as i64);
            let age = store
                .oldest_ts(w.id)
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
            m.queue_oldest_age.get_or_create(&label).set(age);
            let last = seen.entry(w.id).or_default();
            for (i, reason) in DropReason::ALL.into_iter().enumerate() {
                let total = store.dropped(w.id, reason);
                m.events_dropped
                    .get_or_create(&crate::metrics::WebhookReasonLabel {
                        webhook: w.settings.name.clone(),
                        reason: reason.label().to_string(),
                    })
                    .inc_by(total.saturating_sub(last[i]));
                last[i] = last[i].max(total);
            }
        }
        m.store_bytes.set(store.total_bytes() as i64);
        let orphans = self.orphans();
        m.orphaned_queues.set(orphans.len() as i64);
        m.orphaned_events
            .set(orphans.iter().map(|o| o.1).sum::<u64>() as i64);
        let errors = store.health().errors;
        let before = self
            .store_errors_seen
            .swap(errors, std::sync::atomic::Ordering::Relaxed);
        m.store_errors.inc_by(errors.saturating_sub(before));
    }

    /// The register of the loops that must turn (store writer, delivery loops, sources).
    pub fn pulses(&self) -> &Pulses {
        &self.pulses
    }

    /// The sources' live status.
    pub fn sources(&self) -> Vec<crate::source::status::SourceView> {
        self.ingest.sources().views()
    }

    /// Names of webhooks and sources whose task ended while the daemon runs (a bug: they
    /// only end when stopped). Empty when the supervisor is busy applying a change.
    pub fn dead_tasks(&self) -> Vec<String> {
        let Ok(inner) = self.inner.try_lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !self.worker_stop.is_cancelled() {
            for w in &inner.webhooks {
                if w.task.is_finished() {
                    out.push(format!("webhook {}", w.view.settings.name));
                }
            }
        }
        if !self.source_stop.is_cancelled() {
            for s in &inner.sources {
                if s.task.is_finished() {
                    out.push(format!("source {}", s.settings.name()));
                }
            }
        }
        out
    }

    /// The config file the daemon runs on.
    pub async fn config_file(&self) -> PathBuf {
        self.inner.lock().await.settings.file.clone()
    }

    /// Re-reads the config file and applies it; an invalid file changes nothing.
    pub async fn reload(&self) -> Result<Applied, ActionError> {
        let mut inner = self.inner.lock().await;
        let file = inner.settings.file.clone();
        let settings =
            crate::config::load(&file).map_err(|e| ActionError::Invalid(e.to_string()))?;
        let applied = self.apply_locked(&mut inner, settings, &[]).await?;
        self.expire_orphans().await?;
        Ok(applied)
    }

    /// Edits the config file and applies the result. A webhook whose URL or credentials
    /// change (or a new one) is verified first when `verify` is set and it is enabled: a
    /// `healthCheck` must be answered 200, or nothing is saved. A new webhook added with
    /// `verify` unset is saved disabled (until `enable` verifies it).
    pub async fn edit(&self, mut change: Edit, verify: bool) -> Result<Edited, ActionError> {
        let mut inner = self.inner.lock().await;
        let file = inner.settings.file.clone();
        if file.as_os_str().is_empty() {
            return Err(ActionError::NoFile);
        }
        if let (Edit::Add(values), false) = (&mut change, verify) {
            values.insert("enabled".into(), serde_json::Value::Bool(false));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| ActionError::File {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let new_text = edit::apply(&text, &change)?;
        let settings = crate::config::load_str(&file, &new_text)
            .map_err(|e| ActionError::Invalid(e.to_string()))?;
        let (target, renames) = match &change {
            Edit::Add(v) => (
                v.get("name").and_then(|n| n.as_str()).map(str::to_string),
                vec![],
            ),
            Edit::Set { name, changes } => {
                let new = changes
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or(name)
                    .to_string();
                let renames = if &new != name {
                    vec![(name.clone(), new.clone())]
                } else {
                    vec![]
                };
                (Some(new), renames)
            }
            Edit::Remove(_) => (None, vec![]),
        };
        let mut verified = None;
        if let Some(w) = target.and_then(|t| settings.webhooks.iter().find(|w| w.name == t)) {
            let running = match &change {
                Edit::Set { name, .. } => inner
                    .webhooks
                    .iter()
                    .find(|r| &r.view.settings.name == name),
                _ => None,
            };
            let before = running.map(|r| &r.view.settings);
            let reaches_elsewhere = before.is_none_or(|b| {
                b.url != w.url
                    || b.auth != w.auth
                    || b.trust != w.trust
                    || b.headers != w.headers
                    || !b.enabled
            });
            if verify && w.enabled && reaches_elsewhere {
                // A new webhook has no store id yet: its health checks say 0.
                let id = running.map_or(0, |r| r.view.id.0);
                let report = probe::probe(w, &self.org_id, &self.health_id(id))
                    .await
                    .map_err(ActionError::Verify)?;
                report.verified().map_err(ActionError::Verify)?;
                verified = Some(report);
            }
        }
        edit::write_atomically(&file, &new_text).map_err(|e| ActionError::File {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let purge = match &change {
            Edit::Remove(name) => vec![name.clone()],
            _ => Vec::new(),
        };
        let applied = self
            .apply_locked_purging(&mut inner, settings, &renames, &purge)
            .await?;
        Ok(Edited { verified, applied })
    }

    /// Keeps the queue of a webhook that left the config as an orphan (not delivered).
    async fn orphan(&self, name: &str) -> Result<(), ActionError> {
        let rt = |e: crate::store::StoreError| ActionError::Runtime(e.to_string());
        // Registered, so that its bytes count against max_store_bytes like any queue's.
        let id = self
            .store
            .register(name, crate::store::Overflow::DropOldest)
            .await
            .map_err(rt)?;
        if self.store.depth(id) == 0 && self.store.dead_count(id) == 0 {
            // Nothing to keep.
            self.store.purge(name).await.map_err(rt)?;
            tracing::info!(webhook = %name, "webhook is no longer in the config (its queue was empty)");
            return Ok(());
        }
        let since = self.store.set_orphan(name, true).await.map_err(rt)?;
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        if !orphans.iter().any(|o| o.0 == name) {
            let keep = self.orphan_retention();
            tracing::warn!(
                webhook = %name,
                "webhook is no longer in the config: its queue ({} events) is kept as an orphan for {} (orphan_retention), not delivered; a webhook of that name takes it back",
                self.store.depth(id),
                crate::timefmt::human_duration(keep)
            );
            orphans.push((
                name.to_string(),
                id,
                since.unwrap_or_else(crate::timefmt::now_ms),
            ));
        }
        Ok(())
    }

    /// A name is back in the config: its queue is no orphan any more. Whether it was one.
    async fn unorphan(&self, name: &str) -> Result<bool, ActionError> {
        let was = {
            let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            let before = orphans.len();
            orphans.retain(|o| o.0 != name);
            orphans.len() != before
        };
        if was {
            self.store
                .set_orphan(name, false)
                .await
                .map_err(|e| ActionError::Runtime(e.to_string()))?;
        }
        Ok(was)
    }

    fn orphan_retention(&self) -> Duration {
        Duration::from_millis(
            self.orphan_retention_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Purges orphans older than `orphan_retention`.
    pub async fn expire_orphans(&self) -> Result<(), ActionError> {
        let now = crate::timefmt::now_ms();
        let keep_ms = i64::try_from(self.orphan_retention().as_millis()).unwrap_or(i64::MAX);
        let expired: Vec<String> = self
            .orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|o| now.saturating_sub(o.2) >= keep_ms)
            .map(|o| o.0.clone())
            .collect();
        for name in expired {
            let n = self
                .store
                .purge(&name)
                .await
                .map_err(|e| ActionError::Runtime(e.to_string()))?;
            tracing::warn!(webhook = %name, "orphaned queue dropped after orphan_retention: {n} events discarded");
            self.orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|o| o.0 != name);
        }
        Ok(())
    }

    /// The config file and the store directory.
    pub fn paths(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.config_file, &self.data_dir)
    }

    /// The orphaned queues: name, queued events, since when (unix ms).
    pub fn orphans(&self) -> Vec<(String, u64, i64)> {
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, id, since)| (n.clone(), self.store.depth(*id), *since))
            .collect()
    }

    /// Sends a `healthCheck` to a webhook now, outside its queue.
    pub async fn test(&self, name: &str) -> Result<ProbeReport, ActionError> {
        let w = self
            .webhook(name)
            .ok_or_else(|| ActionError::Unknown(name.to_string()))?;
        probe::probe(&w.settings, &self.org_id, &self.health_id(w.id.0))
            .await
            .map_err(ActionError::Verify)
    }

    fn health_id(&self, webhook: u32) -> String {
        format!(
            "msg_{:x}_{webhook}_health_{}",
            self.store.store_id(),
            crate::timefmt::now_ms()
        )
    }

    /// Stops the sources (first step of a shutdown).
    pub async fn stop_sources(&self) {
        self.source_stop.cancel();
        let mut inner = self.inner.lock().await;
        for s in inner.sources.drain(..) {
            let _ = s.task.await;
        }
    }

    /// Stops the delivery workers (after the sources).
    pub async fn stop_webhooks(&self) {
        self.worker_stop.cancel();
        let mut inner = self.inner.lock().await;
        for w in inner.webhooks.drain(..) {
            let _ = w.task.await;
        }
    }

    async fn apply_locked(
        &self,
        inner: &mut Inner,
        new: Settings,
        renames: &[(String, String)],
    ) -> Result<Applied, ActionError> {
        self.apply_locked_purging(inner, new, renames, &[]).await
    }

    /// Applies settings; webhooks gone from them are purged when named in `purge` (an
    /// explicit `webhook delete`), else their queues are kept as orphans.
    async fn apply_locked_purging(
        &self,
        inner: &mut Inner,
        new: Settings,
        renames: &[(String, String)],
        purge: &[String],
    ) -> Result<Applied, ActionError> {
        let mut applied = Applied::default();
        self.orphan_retention_ms.store(
            u64::try_from(new.orphan_retention.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let old = &inner.settings;
        let restart_only = [
            ("gateway.data_dir", old.data_dir != new.data_dir),
            ("gateway.org_id", old.org_id != new.org_id),
            (
                "gateway.max_store_bytes",
                old.max_store_bytes != new.max_store_bytes,
            ),
            ("admin.listen", old.admin_listen != new.admin_listen),
            ("admin.socket", old.control_socket != new.control_socket),
            ("admin.token", old.admin_token != new.admin_token),
            (
                "gateway.commit_interval",
                old.commit_interval != new.commit_interval,
            ),
            (
                "gateway.shutdown_grace",
                old.shutdown_grace != new.shutdown_grace,
            ),
            ("gateway.threads", old.threads != new.threads),
        ];
        if !inner.webhooks.is_empty() || !inner.sources.is_empty() {
            for (key, changed) in restart_only {
                if changed {
                    tracing::warn!("{key} changed: it takes effect after a restart");
                    applied.need_restart.push(key.to_string());
                }
            }
        }

        // Webhooks: the old list, matched to the new by name (or by a rename).
        let mut old_hooks: Vec<RunningWebhook> = std::mem::take(&mut inner.webhooks);
        let mut next: Vec<RunningWebhook> = Vec::new();
        for w in &new.webhooks {
            let old_name = renames
                .iter()
                .find(|(_, to)| to == &w.name)
                .map_or(w.name.as_str(), |(from, _)| from.as_str());
            let found = old_hooks
                .iter()
                .position(|r| r.view.settings.name == old_name);
            match found.map(|i| old_hooks.remove(i)) {
                // Unchanged, unless the receiver disabled it (410): any reconfiguration,
                // `webhook enable` included, starts it again.
                Some(r) if r.view.settings == *w && !(w.enabled && disabled(&r.view.status)) => {
                    next.push(r)
                }
                Some(r) => {
                    r.stop.cancel();
                    let _ = r.task.await;
                    if old_name != w.name {
                        self.store
                            .rename(old_name, &w.name)
                            .await
                            .map_err(|e| ActionError::Runtime(e.to_string()))?;
                        self.metrics.forget_webhook(old_name);
                        tracing::info!(webhook = %w.name, "webhook renamed from {old_name}");
                    }
                    self.store.set_overflow(r.view.id, w.overflow);
                    self.ingest.upsert_webhook(r.view.id, w);
                    tracing::info!(webhook = %w.name, "webhook settings changed: restarted, queue kept");
                    applied.changed.push(w.name.clone());
                    next.push(self.spawn_webhook(r.view.id, w, Some(r.view.status))?);
                }
                None => {
                    // A name that comes back takes its orphaned queue again.
                    let id = self
                        .store
                        .register(&w.name, w.overflow)
                        .await
                        .map_err(|e| ActionError::Runtime(e.to_string()))?;
                    if self.unorphan(&w.name).await? {
                        tracing::info!(webhook = %w.name, "webhook is back: it takes its kept queue ({} events)", self.store.depth(id));
                    }
                    self.ingest.upsert_webhook(id, w);
                    if !inner.webhooks.is_empty() || !next.is_empty() || !old_hooks.is_empty() {
                        tracing::info!(webhook = %w.name, "webhook added");
                    }
                    applied.added.push(w.name.clone());
                    next.push(self.spawn_webhook(id, w, None)?);
                }
            }
        }
        for r in old_hooks {
            r.stop.cancel();
            let _ = r.task.await;
            self.ingest.remove_webhook(r.view.id);
            let name = &r.view.settings.name;
            let n = if purge.contains(name) {
                let n = self
                    .store
                    .purge(name)
                    .await
                    .map_err(|e| ActionError::Runtime(e.to_string()))?;
                tracing::info!(webhook = %name, "webhook deleted: {n} queued events discarded");
                n
            } else {
                self.orphan(name).await?;
                0
            };
            self.metrics.forget_webhook(&r.view.settings.name);
            self.dropped_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&r.view.id);
            applied.removed.push((r.view.settings.name.clone(), n));
        }
        inner.webhooks = next;
        *self.view.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(inner.webhooks.iter().map(|r| r.view.clone()).collect());

        // Sources: restart the ones whose settings changed.
        let mut old_sources: Vec<RunningSource> = std::mem::take(&mut inner.sources);
        let mut sources = Vec::new();
        for m in SourceSettings::all(&new) {
            let found = old_sources
                .iter()
                .position(|s| s.settings.name() == m.name());
            match found.map(|i| old_sources.remove(i)) {
                Some(s) if s.settings == m => sources.push(s),
                other => {
                    if let Some(s) = other {
                        s.stop.cancel();
                        let _ = s.task.await;
                        tracing::info!(source = %m.name(), "source settings changed: restarted");
                        applied.sources.push(m.name().to_string());
                    }
                    sources.push(self.spawn_source(m));
                }
            }
        }
        for s in old_sources {
            s.stop.cancel();
            let _ = s.task.await;
            self.ingest.sources().remove(s.settings.name());
            tracing::info!(source = %s.settings.name(), "source removed");
            applied.sources.push(s.settings.name().to_string());
        }
        inner.sources = sources;
        inner.settings = new;
        Ok(applied)
    }

    fn spawn_webhook(
        &self,
        id: WebhookId,
        w: &WebhookSettings,
        status: Option<SharedStatus>,
    ) -> Result<RunningWebhook, ActionError> {
        let client = WebhookClient::new(w)
            .map_err(|e| ActionError::Runtime(format!("webhook {}: {e}", w.name)))?;
        let state = if w.enabled {
            State::Active
        } else {
            State::Disabled
        };
        let status = match status {
            Some(s) => {
                if let Ok(mut st) = s.lock() {
                    st.state = state;
                }
                s
            }
            None => crate::deliver::status::shared(state),
        };
        let stop = self.worker_stop.child_token();
        let worker = Worker {
            id,
            settings: w.clone(),
            client,
            store: self.store.clone(),
            org_id: self.org_id.clone(),
            metrics: self.metrics.clone(),
            status: status.clone(),
            shutdown: stop.clone(),
            grace: self.grace,
            pulse: self
                .pulses
                .register(format!("the delivery loop of webhook {}", w.name)),
        };
        Ok(RunningWebhook {
            view: WebhookView {
                id,
                settings: w.clone(),
                status,
            },
            stop,
            task: tokio::spawn(worker.run()),
        })
    }

    fn spawn_source(&self, m: SourceSettings) -> RunningSource {
        let stop = self.source_stop.child_token();
        let (settings, ingest, token) = (m.clone(), self.ingest.clone(), stop.clone());
        let pulse = self.pulses.register(format!("source {}", m.name()));
        let task = tokio::spawn(async move {
            match settings {
                SourceSettings::Mqtt(settings) => {
                    let name = settings.name.clone();
                    if let Err(e) = crate::source::mqtt::run(settings, ingest, token, pulse).await {
                        tracing::error!(source = %name, "{e}");
                    }
                }
                SourceSettings::Roomos(settings) => {
                    crate::source::roomos::run(settings, ingest, token, pulse).await
                }
            }
        });
        RunningSource {
            settings: m,
            stop,
            task,
        }
    }
}
