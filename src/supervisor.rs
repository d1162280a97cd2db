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
use crate::store::change::{Done, Step};
use crate::store::{Store, WebhookId};
use crate::wallclock::Ages;
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
    pub(crate) id: WebhookId,
    /// Settings in force.
    pub(crate) settings: WebhookSettings,
    /// Live status.
    pub(crate) status: SharedStatus,
}

/// A delivery loop the supervisor started and tracks until it has ended.
struct RunningWebhook {
    view: WebhookView,
    /// Its client, kept so that a rolled-back change starts the same loop again.
    client: WebhookClient,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What becomes of one webhook of the new settings.
enum Fate {
    /// Runs on, unchanged (index into the running set).
    Keep(usize),
    /// Restarted with new settings, perhaps a new name; the queue stays.
    Restart { old: usize, client: WebhookClient },
    /// New, or back (`back`: it takes the kept queue of its name).
    Add { client: WebhookClient, back: bool },
}

/// A change checked against the running set, ready to apply.
struct Plan {
    settings: Settings,
    /// One per webhook of `settings`, in order.
    fates: Vec<Fate>,
    /// Running webhooks that go (index, and whether their queue is purged).
    gone: Vec<(usize, bool)>,
}

/// A queue kept after its webhook left the config.
#[derive(Debug, Clone)]
struct Orphan {
    name: String,
    id: WebhookId,
    since_ms: i64,
    /// The URL its events were routed for (`None`: kept before that was recorded).
    url: Option<String>,
}

/// The names of the orphans kept for `retention` or longer.
fn expired_orphans(orphans: &[Orphan], retention: Duration, ages: &Ages) -> Vec<String> {
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    orphans
        .iter()
        .filter(|o| ages.age_ms(o.since_ms) >= keep_ms)
        .map(|o| o.name.clone())
        .collect()
}

/// The keys that only a restart applies, as far as they changed.
fn restart_only(old: &Settings, new: &Settings) -> Vec<&'static str> {
    [
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
        ("gateway.id", old.gateway_id != new.gateway_id),
        ("fleet", old.fleet != new.fleet),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// An uplink budget for a log line.
fn budget(rate: Option<u64>) -> String {
    rate.map_or("none".into(), |b| format!("{b} bytes/s"))
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
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Applied {
    /// Webhooks started.
    pub(crate) added: Vec<String>,
    /// Webhooks restarted with new settings (queue kept).
    pub(crate) changed: Vec<String>,
    /// Webhooks removed, with the queued events discarded.
    pub(crate) removed: Vec<(String, u64)>,
    /// Sources restarted, started or stopped.
    pub(crate) sources: Vec<String>,
    /// Changes that only take effect after a restart.
    pub(crate) need_restart: Vec<String>,
}

/// The fleet's pulls and reports as `status`, the console and the reports show them.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FleetState {
    /// `[gateway] id`.
    pub gateway: String,
    /// `[fleet] config_url` (credentials hidden), if set.
    pub config_url: Option<String>,
    /// How the last pull ended: applied, unchanged, refused, failed (none yet: null).
    pub result: Option<String>,
    /// When (RFC 3339).
    pub at: Option<String>,
    /// Why the last pull was refused or failed: file:line, key, problem and fix.
    pub reason: Option<String>,
    /// When a document was last applied (RFC 3339).
    pub applied_at: Option<String>,
    /// SHA-256 (hex) of the fleet document in force (null: none, the local file's webhooks run).
    pub config_sha256: Option<String>,
    /// Whether local webhook edits are refused: `config_url` is set and the document in
    /// force has `webhooks`, or none is in force yet.
    #[serde(default)]
    pub webhooks_managed: bool,
    /// `[fleet] report_url` (credentials hidden), if set.
    pub report_url: Option<String>,
    /// What the refusal in `result` is about, when a reload that applies can end it (the
    /// next pull notes its own result anyway).
    #[serde(skip)]
    pub(crate) refusal: Option<Refusal>,
    /// How the last report ended: sent, failed, dropped (a newer one replaced it).
    pub report_result: Option<String>,
    /// When (RFC 3339).
    pub report_at: Option<String>,
}

/// A refusal shown in `status` that a successful reload may end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The kept document was set aside by a load: any load that takes one again (or finds
    /// none kept) ends it.
    SetAside,
    /// A pull refused this document (SHA-256) for not fitting the local file: ended when a
    /// reload (the file fixed, SIGHUP) applies that same document.
    Pulled(String),
}

/// Whether the fleet's document owns the webhooks of `s`: `[fleet] config_url` is set, and
/// the document in force has `webhooks`, or none is in force yet (the first may have).
fn webhooks_managed(s: &Settings) -> bool {
    s.fleet.as_ref().is_some_and(|f| f.config.is_some())
        && (s.fleet_doc.is_none() || s.fleet_webhooks)
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
    /// The change conflicts with what the store keeps (nothing was changed).
    #[error("{0}")]
    Conflict(String),
    /// The store refused the change (a full disk); nothing was changed.
    #[error("the store refused the change, nothing was changed (the running webhooks go on as before, the config file is as it was): {0}")]
    Store(String),
    /// Starting or stopping a part failed.
    #[error("{0}")]
    Runtime(String),
}

/// The result of an edit.
#[derive(Debug, Serialize)]
pub(crate) struct Edited {
    /// The health check that verified it, when one was sent.
    pub(crate) verified: Option<ProbeReport>,
    /// What changed in the running daemon.
    pub(crate) applied: Applied,
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
    /// Queues whose webhook left the config.
    orphans: std::sync::Mutex<Vec<Orphan>>,
    /// How long orphans are kept, in milliseconds (follows reloads).
    orphan_retention_ms: std::sync::atomic::AtomicU64,
    store_errors_seen: std::sync::atomic::AtomicU64,
    /// The store's count of events dropped for a removed webhook, as last exported.
    store_dropped_seen: std::sync::atomic::AtomicU64,
    /// The loops that must turn (store writer, delivery loops, sources), for the watchdog.
    pulses: Pulses,
    /// Every source's live status, handed to each source when it starts.
    source_status: crate::source::status::Sources,
    /// The uplink's byte budget, shared by every delivery loop; a reload changes it live.
    uplink: crate::deliver::uplink::Arbiter,
    /// The fleet's pulls and reports (`None` without `[fleet]`).
    fleet: std::sync::Mutex<Option<FleetState>>,
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
            store_dropped_seen: Default::default(),
            pulses: Pulses::default(),
            source_status: Default::default(),
            uplink: crate::deliver::uplink::Arbiter::new(settings.uplink_bytes_per_s),
            fleet: std::sync::Mutex::new(settings.fleet.as_ref().map(|f| {
                FleetState {
                    gateway: settings.gateway_id.clone(),
                    config_url: f
                        .config
                        .as_ref()
                        .map(|c| crate::redact::url(&c.url.to_string())),
                    config_sha256: settings.fleet_doc.clone(),
                    webhooks_managed: webhooks_managed(&settings),
                    report_url: f
                        .report
                        .as_ref()
                        .map(|r| crate::redact::url(&r.url.to_string())),
                    ..FleetState::default()
                }
            })),
        });
        if let Some(why) = &settings.fleet_kept_refused {
            sup.note_kept_refused(why);
        }
        sup.pulses.add(&sup.store.pulse());
        sup.store
            .observe_commits(sup.metrics.store_commit_duration.clone());
        let weak = Arc::downgrade(&sup);
        sup.metrics.on_scrape(move || {
            if let Some(sup) = weak.upgrade() {
                sup.refresh_metrics();
            }
        });
        sup.adopt_store(&settings).await?;
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
            sup.apply_locked(&mut inner, settings, &[], &[]).await?;
        }
        Ok(sup)
    }

    /// Reads the kept queues at start. Queues that no configured webhook names (the name
    /// went out of the file while the daemon was stopped, perhaps by a typo) are kept as
    /// orphans for orphan_retention, never silently deleted; empty ones go.
    async fn adopt_store(&self, settings: &Settings) -> Result<(), ActionError> {
        let rt = |e: crate::store::StoreError| ActionError::Runtime(e.to_string());
        let store = self.store.clone();
        let (known, kept) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((store.names()?, store.orphans()?))
        })
        .await
        .map_err(|e| ActionError::Runtime(e.to_string()))?
        .map_err(rt)?;
        let configured = |name: &str| settings.webhooks.iter().any(|w| w.name == name);
        // Kept queues whose name is configured again: the first apply takes them back (if
        // the url is the one they were kept for).
        for k in kept.iter().filter(|k| configured(&k.name)) {
            if let Some((_, id)) = known.iter().find(|(n, _)| n == &k.name) {
                self.orphans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Orphan {
                        name: k.name.clone(),
                        id: *id,
                        since_ms: k.since_ms,
                        url: k.url.clone(),
                    });
            }
        }
        // Each with the url it was kept for, if it was kept before.
        let unconfigured: Vec<(String, Option<String>)> = known
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !configured(name))
            .map(|name| {
                let url = kept
                    .iter()
                    .find(|k| k.name == name)
                    .and_then(|k| k.url.clone());
                (name, url)
            })
            .collect();
        if unconfigured.is_empty() {
            return Ok(());
        }
        // Opened (so that their bytes count against max_store_bytes like any queue's), then
        // kept, or purged when empty.
        let now = crate::timefmt::now_ms();
        let mut steps: Vec<Step> = unconfigured
            .iter()
            .map(|(name, _)| Step::Register {
                name: name.clone(),
                overflow: crate::store::Overflow::DropOldest,
            })
            .collect();
        steps.extend(unconfigured.iter().map(|(name, url)| Step::Release {
            name: name.clone(),
            url: url.clone(),
            at_ms: now,
        }));
        let done = self.store.change(steps).await.map_err(rt)?;
        let (ids, fates) = done.split_at(unconfigured.len());
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        for (((name, url), id), fate) in unconfigured.iter().zip(ids).zip(fates) {
            let (Done::Registered(id), Done::Orphaned(since)) = (id, fate) else {
                tracing::info!(webhook = %name, "webhook is no longer in the config (its queue was empty)");
                continue;
            };
            tracing::warn!(
                webhook = %name,
                "webhook is not in the config: its queue ({} events) is kept as an orphan for {} (orphan_retention), not delivered; a webhook of that name takes it back",
                self.store.depth(*id),
                crate::timefmt::human_duration(self.orphan_retention())
            );
            orphans.push(Orphan {
                name: name.clone(),
                id: *id,
                since_ms: *since,
                url: url.clone(),
            });
        }
        Ok(())
    }

    /// The webhooks as of now, in config order.
    pub(crate) fn webhooks(&self) -> Arc<Vec<WebhookView>> {
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
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Brings the queue and store figures in the metrics up to date (before a scrape).
    fn refresh_metrics(&self) {
        use crate::store::DropReason;
        let (m, store) = (&self.metrics, &self.store);
        let ages = crate::wallclock::ages();
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
                .map_or(0.0, |t| ages.age_ms(t).max(0) as f64 / 1000.0);
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
        m.store_max_bytes.set(store.max_bytes() as i64);
        let orphans = self.orphans();
        m.orphaned_queues.set(orphans.len() as i64);
        m.orphaned_events
            .set(orphans.iter().map(|o| o.1).sum::<u64>() as i64);
        let errors = store.health().errors;
        let before = self
            .store_errors_seen
            .swap(errors, std::sync::atomic::Ordering::Relaxed);
        m.store_errors.inc_by(errors.saturating_sub(before));
        let gone = store.dropped_unregistered();
        let before = self
            .store_dropped_seen
            .swap(gone, std::sync::atomic::Ordering::Relaxed);
        m.store_events_dropped
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: crate::store::WEBHOOK_REMOVED.into(),
            })
            .inc_by(gone.saturating_sub(before));
    }

    /// The register of the loops that must turn (store writer, delivery loops, sources).
    pub(crate) fn pulses(&self) -> &Pulses {
        &self.pulses
    }

    /// The live status of the source `name` (for a source started outside the config:
    /// the demo's simulator).
    #[cfg(feature = "demo")]
    pub(crate) fn source_status(&self, name: &str) -> Arc<crate::source::status::SourceStatus> {
        self.source_status.get(name)
    }

    /// The sources' live status.
    pub(crate) fn sources(&self) -> Vec<crate::source::status::SourceView> {
        self.source_status.views()
    }

    /// Names of webhooks and sources whose task ended while the daemon runs (a bug: they
    /// only end when stopped). Empty when the supervisor is busy applying a change.
    pub(crate) fn dead_tasks(&self) -> Vec<String> {
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

    /// Re-reads the config file and applies it; an invalid file changes nothing.
    pub(crate) async fn reload(&self) -> Result<Applied, ActionError> {
        let result = self.load_and_apply(None).await;
        let label = if result.is_ok() { "applied" } else { "refused" };
        self.metrics
            .config_reloads
            .get_or_create(&crate::metrics::ResultLabel {
                result: label.into(),
            })
            .inc();
        self.metrics
            .config_last_reload_successful
            .set(i64::from(result.is_ok()));
        result
    }

    /// Applies the config file with the fleet document just kept: the reload's own path,
    /// all or nothing, counted by the fleet instead. Nothing is applied once `stop` (the
    /// fleet's) is cancelled: checked under the lock the shutdown takes to empty the
    /// supervisor, so a pull can never apply onto one being emptied.
    pub(crate) async fn reload_fleet(
        &self,
        stop: &CancellationToken,
    ) -> Result<Applied, ActionError> {
        self.load_and_apply(Some(stop)).await
    }

    async fn load_and_apply(
        &self,
        stop: Option<&CancellationToken>,
    ) -> Result<Applied, ActionError> {
        let mut inner = self.inner.lock().await;
        if self.source_stop.is_cancelled() || stop.is_some_and(CancellationToken::is_cancelled) {
            return Err(ActionError::Runtime(
                "the daemon is stopping; nothing was applied".into(),
            ));
        }
        let file = inner.settings.file.clone();
        let applied = match crate::config::load(&file) {
            // A pulled document applies only merged, never by running the local file alone.
            Ok(settings) if stop.is_some() && settings.fleet_kept_refused.is_some() => Err(
                ActionError::Invalid(settings.fleet_kept_refused.unwrap_or_default()),
            ),
            Ok(settings) => {
                let kept = settings.fleet_kept_refused.clone();
                let sha = settings.fleet_doc.clone();
                let doc = sha.is_some();
                let applied = self.apply_locked(&mut inner, settings, &[], &[]).await;
                match (kept, &applied) {
                    (Some(why), Ok(_)) => self.note_kept_refused(&why),
                    // A document set aside before runs again (or none is kept any more),
                    // or the one a pull refused now fits: `status` no longer shows why.
                    (None, Ok(_)) => self.note_fleet(|f| {
                        let ends = match &f.refusal {
                            Some(Refusal::SetAside) => true,
                            Some(Refusal::Pulled(refused)) => sha.as_ref() == Some(refused),
                            None => false,
                        };
                        if ends {
                            f.refusal = None;
                            let now = crate::timefmt::rfc3339_ms(crate::timefmt::now_ms());
                            f.result = doc.then(|| "applied".to_string());
                            f.reason = None;
                            if doc {
                                f.applied_at = Some(now.clone());
                            }
                            f.at = Some(now);
                        }
                    }),
                    _ => {}
                }
                applied
            }
            Err(e) => Err(ActionError::Invalid(e.to_string())),
        }?;
        drop(inner);
        if let Err(e) = self.expire_orphans().await {
            tracing::warn!("orphaned queues: {e}");
        }
        Ok(applied)
    }

    /// A kept fleet document left out at start-up or on SIGHUP (the local file runs alone):
    /// logged, counted as refused, and shown in `status` with the reason and the fix.
    fn note_kept_refused(&self, why: &str) {
        tracing::error!("{why}");
        self.note_pull("refused", Some(why.to_string()), |f| {
            f.config_sha256 = None;
            f.refusal = Some(Refusal::SetAside);
        });
    }

    /// Counts how a pull (or a load that set the kept document aside) ended in
    /// `roomhook_fleet_config_total{result}`, and notes it, its time and `reason` for
    /// `status`; `also` notes the rest.
    pub(crate) fn note_pull(
        &self,
        result: &str,
        reason: Option<String>,
        also: impl FnOnce(&mut FleetState),
    ) {
        self.metrics
            .fleet_config
            .get_or_create(&crate::metrics::ResultLabel {
                result: result.into(),
            })
            .inc();
        let now = crate::timefmt::rfc3339_ms(crate::timefmt::now_ms());
        self.note_fleet(|f| {
            f.result = Some(result.into());
            f.at = Some(now);
            f.reason = reason;
            f.refusal = None;
            also(f);
        });
    }

    /// The fleet's pulls and reports, without `[fleet]` none.
    pub(crate) fn fleet(&self) -> Option<FleetState> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SHA-256 of the fleet document in force, as the last apply recorded it.
    pub(crate) fn fleet_sha256(&self) -> Option<String> {
        let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        fleet.as_ref().and_then(|f| f.config_sha256.clone())
    }

    /// Notes a pull's or a report's end.
    pub(crate) fn note_fleet(&self, f: impl FnOnce(&mut FleetState)) {
        if let Some(state) = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(state);
        }
    }

    /// Edits the config file and applies the result, all or nothing: the edit is checked
    /// (validation, name conflicts with kept queues, TLS files) and, when `verify` is set and
    /// the webhook is enabled and reaches a new receiver, verified by a `healthCheck` that must
    /// be answered 200, before the file is written or a loop stopped. A refused edit leaves
    /// the file byte for byte as it was. Should applying still fail (the store refuses the
    /// change: a full disk), the file is written back and the running set restored. A new
    /// webhook added with `verify` unset is saved disabled (until `enable` verifies it).
    /// `Remove` of a name that is only a kept queue deletes that queue.
    pub(crate) async fn edit(&self, mut change: Edit, verify: bool) -> Result<Edited, ActionError> {
        let mut inner = self.inner.lock().await;
        let file = inner.settings.file.clone();
        if file.as_os_str().is_empty() {
            return Err(ActionError::NoFile);
        }
        // The fleet's document owns the webhooks when it has `webhooks`, or may (none pulled
        // yet): the next pull would undo a local change (deleting a kept queue is no change
        // of it). One that sets only sources' subscriptions leaves them local.
        let fleet = inner
            .settings
            .fleet
            .as_ref()
            .and_then(|f| f.config.as_ref())
            .filter(|_| webhooks_managed(&inner.settings));
        let kept_queue = matches!(&change, Edit::Remove(n) if !inner.webhooks.iter().any(|w| &w.view.settings.name == n));
        if let Some(c) = fleet.filter(|_| !kept_queue) {
            return Err(ActionError::Conflict(format!(
                "the webhooks of this gateway are managed by the fleet ([fleet] config_url = {}): change them in the document served there (the next pull would undo a local change); nothing was changed",
                crate::redact::url(&c.url.to_string())
            )));
        }
        if let (Edit::Add(values), false) = (&mut change, verify) {
            values.insert("enabled".into(), serde_json::Value::Bool(false));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| ActionError::File {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let new_text = match edit::apply(&text, &change) {
            Ok(t) => t,
            Err(edit::EditError::Unknown(name)) if matches!(&change, Edit::Remove(_)) => {
                return self.delete_kept(&name).await;
            }
            Err(e) => return Err(e.into()),
        };
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
        let purge = match &change {
            Edit::Remove(name) => vec![name.clone()],
            _ => Vec::new(),
        };
        let plan = self.plan(&inner, settings, &renames, &purge)?;
        let mut verified = None;
        if let Some(w) = target.and_then(|t| plan.settings.webhooks.iter().find(|w| w.name == t)) {
            let running = match &change {
                Edit::Set { name, .. } => inner
                    .webhooks
                    .iter()
                    .find(|r| &r.view.settings.name == name),
                _ => None,
            };
            let before = running.map(|r| &r.view.settings);
            // What the receiver must accept anew is verified: where it goes, how it is
            // authenticated, and (gzip) how the body is encoded.
            let reaches_elsewhere = before.is_none_or(|b| {
                b.url != w.url
                    || b.auth != w.auth
                    || b.trust != w.trust
                    || b.headers != w.headers
                    || b.compression != w.compression
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
        match self.execute(&mut inner, plan).await {
            Ok(applied) => Ok(Edited { verified, applied }),
            Err(e) => {
                // The running set is as it was: so is the file.
                if let Err(w) = edit::write_atomically(&file, &text) {
                    tracing::error!(
                        "the change was not applied, but the config file {} could not be written back: {w}; it holds the refused change",
                        file.display()
                    );
                }
                Err(e)
            }
        }
    }

    /// `webhook delete NAME` for a name that is only a kept queue: the queue goes.
    async fn delete_kept(&self, name: &str) -> Result<Edited, ActionError> {
        let kept = self
            .orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|o| o.name == name);
        if !kept {
            return Err(ActionError::Edit(edit::EditError::Unknown(
                name.to_string(),
            )));
        }
        let n = self
            .store
            .purge(name)
            .await
            .map_err(|e| ActionError::Store(e.to_string()))?;
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|o| o.name != name);
        tracing::info!(webhook = %name, "kept queue deleted: {n} queued events discarded");
        Ok(Edited {
            verified: None,
            applied: Applied {
                removed: vec![(name.to_string(), n)],
                ..Applied::default()
            },
        })
    }

    fn orphan_retention(&self) -> Duration {
        Duration::from_millis(
            self.orphan_retention_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Purges orphans older than `orphan_retention`.
    pub(crate) async fn expire_orphans(&self) -> Result<(), ActionError> {
        let expired = expired_orphans(
            &self.orphans.lock().unwrap_or_else(|p| p.into_inner()),
            self.orphan_retention(),
            &crate::wallclock::ages(),
        );
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
                .retain(|o| o.name != name);
        }
        Ok(())
    }

    /// The config file and the store directory.
    pub(crate) fn paths(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.config_file, &self.data_dir)
    }

    /// The orphaned queues: name, queued events, since when (unix ms).
    pub(crate) fn orphans(&self) -> Vec<(String, u64, i64)> {
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|o| (o.name.clone(), self.store.depth(o.id), o.since_ms))
            .collect()
    }

    /// Sends a `healthCheck` to a webhook now, outside its queue.
    pub(crate) async fn test(&self, name: &str) -> Result<ProbeReport, ActionError> {
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
    pub(crate) async fn stop_sources(&self) {
        self.source_stop.cancel();
        let mut inner = self.inner.lock().await;
        for s in inner.sources.drain(..) {
            let _ = s.task.await;
        }
    }

    /// Stops the delivery workers (after the sources).
    pub(crate) async fn stop_webhooks(&self) {
        self.worker_stop.cancel();
        let mut inner = self.inner.lock().await;
        for w in inner.webhooks.drain(..) {
            let _ = w.task.await;
        }
    }

    /// Checks a change of settings against the running set and the kept queues, without
    /// changing anything: every refusal an apply can foresee comes from here, before the
    /// config file is written or a loop is stopped.
    fn plan(
        &self,
        inner: &Inner,
        new: Settings,
        renames: &[(String, String)],
        purge: &[String],
    ) -> Result<Plan, ActionError> {
        let kept = self
            .orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut claimed = vec![false; inner.webhooks.len()];
        let mut fates = Vec::with_capacity(new.webhooks.len());
        for w in &new.webhooks {
            let old_name = renames
                .iter()
                .find(|(_, to)| to == &w.name)
                .map_or(w.name.as_str(), |(from, _)| from.as_str());
            let found = inner
                .webhooks
                .iter()
                .position(|r| r.view.settings.name == old_name);
            let client = || {
                WebhookClient::new(w).map_err(|e| {
                    ActionError::Invalid(format!("webhook {}: {e}; nothing was changed", w.name))
                })
            };
            let fate = match found {
                Some(i) => {
                    claimed[i] = true;
                    let r = &inner.webhooks[i];
                    // Unchanged, unless the receiver disabled it (410): any
                    // reconfiguration, `webhook enable` included, starts it again.
                    if r.view.settings == *w && !(w.enabled && disabled(&r.view.status)) {
                        Fate::Keep(i)
                    } else {
                        if old_name != w.name {
                            if let Some(k) = kept.iter().find(|k| k.name == w.name) {
                                return Err(ActionError::Conflict(format!(
                                    "cannot rename webhook {old_name:?} to {to:?}: a kept queue named {to:?} exists ({n} events, kept since {since} after its webhook left the config). Delete it with `roomhook webhook delete {to}` (its events are discarded), or pick another name; nothing was changed",
                                    to = w.name,
                                    n = self.store.depth(k.id),
                                    since = crate::timefmt::rfc3339_ms(k.since_ms),
                                )));
                            }
                        }
                        Fate::Restart {
                            old: i,
                            client: client()?,
                        }
                    }
                }
                None => {
                    let back = kept.iter().find(|k| k.name == w.name);
                    if let Some(k) = back {
                        let url = w.url.to_string();
                        if let Some(was) = k.url.as_deref().filter(|was| *was != url) {
                            return Err(ActionError::Conflict(format!(
                                "webhook {name:?} would take the kept queue of that name ({n} events routed to {was}) to {url}. To deliver them to {was}, bring {name:?} back with that url (then change it); to discard them, `roomhook webhook delete {name}` first; or pick another name. Nothing was changed",
                                name = w.name,
                                n = self.store.depth(k.id),
                            )));
                        }
                    }
                    Fate::Add {
                        client: client()?,
                        back: back.is_some(),
                    }
                }
            };
            fates.push(fate);
        }
        let gone = (0..inner.webhooks.len())
            .filter(|i| !claimed[*i])
            .map(|i| (i, purge.contains(&inner.webhooks[i].view.settings.name)))
            .collect();
        Ok(Plan {
            settings: new,
            fates,
            gone,
        })
    }

    /// Applies a checked plan. The store's part of it (renames, new queues, kept and purged
    /// ones) commits in one transaction; if that fails (a disk full), the loops stopped for
    /// it start again as they were and nothing changed. The running set is always the one
    /// the supervisor tracks: no early return leaves a loop behind.
    async fn execute(&self, inner: &mut Inner, plan: Plan) -> Result<Applied, ActionError> {
        let Plan {
            settings: new,
            fates,
            gone,
        } = plan;
        let mut applied = Applied::default();
        // The first apply (at start) starts everything: nothing to compare or announce.
        let first = inner.webhooks.is_empty() && inner.sources.is_empty();
        if !first {
            for key in restart_only(&inner.settings, &new) {
                tracing::warn!("{key} changed: it takes effect after a restart");
                applied.need_restart.push(key.to_string());
            }
        }

        // 1. Stop the loops that restart or go. They stay in `old`, stopped, until the
        //    store's part is committed (or they start again as they were).
        let mut old: Vec<Option<RunningWebhook>> = std::mem::take(&mut inner.webhooks)
            .into_iter()
            .map(Some)
            .collect();
        let mut stopped: Vec<usize> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Restart { old, .. } => Some(*old),
                _ => None,
            })
            .chain(gone.iter().map(|(i, _)| *i))
            .collect();
        stopped.sort_unstable();
        for &i in &stopped {
            if let Some(r) = old[i].as_mut() {
                r.stop.cancel();
                let _ = (&mut r.task).await;
            }
        }
        // Nothing more is routed to a webhook that goes.
        for (i, _) in &gone {
            if let Some(r) = &old[*i] {
                self.ingest.remove_webhook(r.view.id);
            }
        }

        // 2. The store's part, all at once.
        let now = crate::timefmt::now_ms();
        let mut steps = Vec::new();
        let mut register_at = vec![None; fates.len()];
        for (k, (w, fate)) in new.webhooks.iter().zip(&fates).enumerate() {
            match fate {
                Fate::Keep(_) => {}
                Fate::Restart { old: i, .. } => {
                    let from = old[*i].as_ref().map(|r| r.view.settings.name.clone());
                    if let Some(from) = from.filter(|f| f != &w.name) {
                        steps.push(Step::Rename {
                            from,
                            to: w.name.clone(),
                        });
                    }
                }
                Fate::Add { back, .. } => {
                    register_at[k] = Some(steps.len());
                    steps.push(Step::Register {
                        name: w.name.clone(),
                        overflow: w.overflow,
                    });
                    if *back {
                        steps.push(Step::Unorphan {
                            name: w.name.clone(),
                        });
                    }
                }
            }
        }
        let mut gone_at = Vec::new();
        for (i, purge) in &gone {
            let Some(r) = &old[*i] else { continue };
            let name = r.view.settings.name.clone();
            gone_at.push(steps.len());
            steps.push(if *purge {
                Step::Purge { name }
            } else {
                Step::Release {
                    name,
                    url: Some(r.view.settings.url.to_string()),
                    at_ms: now,
                }
            });
        }
        let done = if steps.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.change(steps).await
        };
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                // Roll back: the stopped loops start again as they were.
                for &i in &stopped {
                    if let Some(r) = old[i].take() {
                        self.ingest.upsert_webhook(r.view.id, &r.view.settings);
                        old[i] = Some(self.spawn_webhook(
                            r.view.id,
                            &r.view.settings,
                            Some(r.view.status.clone()),
                            r.client,
                        ));
                    }
                }
                inner.webhooks = old.into_iter().flatten().collect();
                self.publish_view(inner);
                tracing::error!("the change was not applied, the running webhooks go on as before: the store refused it: {e}");
                return Err(ActionError::Store(e.to_string()));
            }
        };

        // 3. Committed: the new set takes effect.
        let mut next = Vec::with_capacity(fates.len());
        for (k, (w, fate)) in new.webhooks.iter().zip(fates).enumerate() {
            match fate {
                Fate::Keep(i) => {
                    if let Some(r) = old[i].take() {
                        next.push(r);
                    }
                }
                Fate::Restart { old: i, client } => {
                    let Some(r) = old[i].take() else { continue };
                    let from = &r.view.settings.name;
                    if from != &w.name {
                        self.forget_metrics(from);
                        tracing::info!(webhook = %w.name, "webhook renamed from {from}");
                    }
                    self.store.set_overflow(r.view.id, w.overflow);
                    self.ingest.upsert_webhook(r.view.id, w);
                    tracing::info!(webhook = %w.name, "webhook settings changed: restarted, queue kept");
                    applied.changed.push(w.name.clone());
                    next.push(self.spawn_webhook(r.view.id, w, Some(r.view.status), client));
                }
                Fate::Add { client, back } => {
                    let id = match register_at[k].and_then(|at| done.get(at)) {
                        Some(Done::Registered(id)) => *id,
                        other => {
                            // The store answered out of step: a bug; the webhook does not run.
                            tracing::error!(webhook = %w.name, "the store did not register the queue ({other:?})");
                            continue;
                        }
                    };
                    if back {
                        self.orphans
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|o| o.name != w.name);
                        tracing::info!(webhook = %w.name, "webhook is back: it takes its kept queue ({} events)", self.store.depth(id));
                    }
                    self.ingest.upsert_webhook(id, w);
                    if !first {
                        tracing::info!(webhook = %w.name, "webhook added");
                    }
                    applied.added.push(w.name.clone());
                    next.push(self.spawn_webhook(id, w, None, client));
                }
            }
        }
        for ((i, purge), at) in gone.iter().zip(gone_at) {
            let Some(r) = old[*i].take() else { continue };
            let name = r.view.settings.name.clone();
            let n = match (*purge, done.get(at)) {
                (true, Some(Done::Purged(n))) => {
                    tracing::info!(webhook = %name, "webhook deleted: {n} queued events discarded");
                    *n
                }
                (false, Some(Done::Orphaned(since))) => {
                    let keep = self.orphan_retention();
                    tracing::warn!(
                        webhook = %name,
                        "webhook is no longer in the config: its queue ({} events) is kept as an orphan for {} (orphan_retention), not delivered; a webhook of that name and url takes it back",
                        self.store.depth(r.view.id),
                        crate::timefmt::human_duration(keep)
                    );
                    self.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Orphan {
                            name: name.clone(),
                            id: r.view.id,
                            since_ms: *since,
                            url: Some(r.view.settings.url.to_string()),
                        });
                    0
                }
                _ => {
                    tracing::info!(webhook = %name, "webhook is no longer in the config (its queue was empty)");
                    0
                }
            };
            self.forget_metrics(&name);
            self.dropped_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&r.view.id);
            applied.removed.push((name, n));
        }
        inner.webhooks = next;
        self.publish_view(inner);

        // 4. Sources: restart the ones whose settings changed.
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
            self.source_status.remove(s.settings.name());
            tracing::info!(source = %s.settings.name(), "source removed");
            applied.sources.push(s.settings.name().to_string());
        }
        inner.sources = sources;
        if !first && inner.settings.uplink_bytes_per_s != new.uplink_bytes_per_s {
            tracing::info!(
                "gateway.uplink_bytes_per_s changed from {} to {}: applied to every webhook at once",
                budget(inner.settings.uplink_bytes_per_s),
                budget(new.uplink_bytes_per_s)
            );
        }
        self.uplink.set_rate(new.uplink_bytes_per_s);
        self.orphan_retention_ms.store(
            u64::try_from(new.orphan_retention.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let (managed, doc) = (webhooks_managed(&new), new.fleet_doc.clone());
        self.note_fleet(|f| {
            f.webhooks_managed = managed;
            f.config_sha256 = doc;
        });
        inner.settings = new;
        Ok(applied)
    }

    /// Checks, then applies (see [`Supervisor::plan`] and [`Supervisor::execute`]).
    async fn apply_locked(
        &self,
        inner: &mut Inner,
        new: Settings,
        renames: &[(String, String)],
        purge: &[String],
    ) -> Result<Applied, ActionError> {
        let plan = self.plan(inner, new, renames, purge)?;
        self.execute(inner, plan).await
    }

    /// Removes a webhook's series from the metrics.
    fn forget_metrics(&self, name: &str) {
        let states = State::ALL.map(State::as_str);
        let reasons = crate::store::DropReason::ALL.map(crate::store::DropReason::label);
        self.metrics.forget_webhook(name, &states, &reasons);
    }

    /// The webhooks the control API and the status views see: the running set.
    fn publish_view(&self, inner: &Inner) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(inner.webhooks.iter().map(|r| r.view.clone()).collect());
    }
    /// Starts the delivery loop of queue `id`. It holds the queue's claim for as long as it
    /// runs; should another loop still hold it (a bug), this one does not start, is logged,
    /// and shows as a dead task (`/readyz` fails) instead of delivering twice.
    fn spawn_webhook(
        &self,
        id: WebhookId,
        w: &WebhookSettings,
        status: Option<SharedStatus>,
        client: WebhookClient,
    ) -> RunningWebhook {
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
        let task = match self.store.claim(id) {
            Some(claim) => {
                let worker = Worker {
                    id,
                    settings: w.clone(),
                    client: client.clone(),
                    store: self.store.clone(),
                    org_id: self.org_id.clone(),
                    metrics: self.metrics.clone(),
                    status: status.clone(),
                    shutdown: stop.clone(),
                    grace: self.grace,
                    pulse: self
                        .pulses
                        .register(format!("the delivery loop of webhook {}", w.name)),
                    uplink: self.uplink.clone(),
                    _claim: claim,
                };
                tokio::spawn(worker.run())
            }
            None => {
                tracing::error!(webhook = %w.name, "bug: a second delivery loop for queue {} was refused (one runs already); this one does not start", id.0);
                tokio::spawn(async {})
            }
        };
        RunningWebhook {
            view: WebhookView {
                id,
                settings: w.clone(),
                status,
            },
            client,
            stop,
            task,
        }
    }

    fn spawn_source(&self, m: SourceSettings) -> RunningSource {
        let stop = self.source_stop.child_token();
        let (settings, ingest, token) = (m.clone(), self.ingest.clone(), stop.clone());
        let pulse = self.pulses.register(format!("source {}", m.name()));
        let status = self.source_status.get(m.name());
        let task = tokio::spawn(async move {
            match settings {
                SourceSettings::Mqtt(settings) => {
                    let name = settings.name.clone();
                    if let Err(e) =
                        crate::source::mqtt::run(settings, ingest, status, token, pulse).await
                    {
                        tracing::error!(source = %name, "{e}");
                    }
                }
                SourceSettings::Roomos(settings) => {
                    crate::source::roomos::run(settings, ingest, status, token, pulse).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallclock::{Jumps, Reading};
    use std::time::Instant;

    const DAY_MS: i64 = 86_400_000;

    fn orphan(name: &str, since_ms: i64) -> Orphan {
        Orphan {
            name: name.to_string(),
            id: WebhookId(1),
            since_ms,
            url: None,
        }
    }

    #[test]
    fn an_orphan_kept_before_the_clock_jumps_two_years_ahead_is_not_dropped_by_it() {
        // Kept since the previous shutdown, then a boot at the last saved time
        // (fake-hwclock) an hour later, and NTP moves the clock two years on.
        let boot = Reading {
            wall_ms: 1_700_000_000_000,
            mono: Instant::now(),
        };
        let mut jumps = Jumps::default();
        jumps.observe(boot);
        let orphans = [
            orphan("old", boot.wall_ms - DAY_MS),
            orphan("new", boot.wall_ms),
        ];
        let synced = Reading {
            wall_ms: boot.wall_ms + 730 * DAY_MS + 60_000,
            mono: boot.mono + Duration::from_secs(60),
        };
        jumps.observe(synced);
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(
            expired_orphans(&orphans, week, &jumps.ages(synced.wall_ms)),
            Vec::<String>::new()
        );
        // Six days on, the one kept a day before the boot has had its seven days.
        let later = Reading {
            wall_ms: synced.wall_ms + 6 * DAY_MS,
            mono: synced.mono + Duration::from_secs(6 * 86_400),
        };
        jumps.observe(later);
        assert_eq!(
            expired_orphans(&orphans, week, &jumps.ages(later.wall_ms)),
            ["old"]
        );
    }

    /// A supervisor started from the config `file`, and its store.
    async fn started(file: &std::path::Path) -> (Arc<Supervisor>, Store) {
        let settings = crate::config::load(file).unwrap();
        let limits = crate::store::Limits {
            max_bytes: settings.max_store_bytes,
            queues: Vec::new(),
        };
        let (store, _) = Store::open(&settings.data_dir, &limits).unwrap();
        let metrics = Arc::new(Metrics::new());
        let ingest = Ingest::new(store.clone(), metrics.clone());
        let grace = Duration::from_secs(1);
        let sup = Supervisor::start(settings, store.clone(), ingest, metrics, grace)
            .await
            .unwrap();
        (sup, store)
    }

    /// Once the fleet's token is cancelled (the top of the shutdown), or the sources are
    /// being stopped, no reload applies: the check is made under the supervisor's lock.
    #[tokio::test]
    async fn nothing_is_applied_once_the_stop_began() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roomhook.toml");
        std::fs::write(&file, "[gateway]\ndata_dir = \"data\"\n").unwrap();
        let (sup, store) = started(&file).await;
        let fleet = CancellationToken::new();
        assert!(sup.reload_fleet(&fleet).await.is_ok());
        fleet.cancel();
        let refused = sup.reload_fleet(&fleet).await.unwrap_err().to_string();
        assert!(refused.contains("stopping"), "{refused}");
        sup.stop_sources().await;
        assert!(sup.reload().await.is_err());
        sup.stop_webhooks().await;
        drop(sup);
        store.close().await;
    }

    /// A kept fleet document set aside at start (it no longer fits the local file) shows in
    /// `status` as refused with the reason; once a reload takes a document again, the
    /// reason goes (a pull may be minutes away). So does a pull's refusal of the document a
    /// reload then applies, and only that one.
    #[tokio::test]
    async fn a_reason_for_setting_the_kept_document_aside_goes_when_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roomhook.toml");
        std::fs::write(
            &file,
            "[gateway]\ndata_dir = \"data\"\nid = \"gw-1\"\n\n[fleet]\nconfig_url = \"https://fleet.example.com/{gateway}.toml\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let kept = dir.path().join("data").join(crate::config::fleet::KEPT);
        std::fs::write(
            &kept,
            "[[sources.mqtt]]\nname = \"renamed\"\n[[sources.mqtt.subscriptions]]\ntopic = \"a/#\"\nformat = \"zigbee2mqtt\"\n",
        )
        .unwrap();
        let (sup, store) = started(&file).await;
        let f = sup.fleet().unwrap();
        assert_eq!(f.result.as_deref(), Some("refused"));
        assert!(f.reason.unwrap_or_default().contains("\"renamed\""));
        // Still set aside on a reload: still refused.
        sup.reload().await.unwrap();
        assert_eq!(sup.fleet().unwrap().result.as_deref(), Some("refused"));
        // Fixed: taken again, and the reason is gone.
        std::fs::write(&kept, "webhooks = []\n").unwrap();
        sup.reload().await.unwrap();
        let f = sup.fleet().unwrap();
        assert_eq!(
            (f.result.as_deref(), f.reason.as_deref()),
            (Some("applied"), None)
        );
        assert!(f.config_sha256.is_some() && f.applied_at.is_some());
        // A pull refused another document: a reload of the kept one leaves that refusal.
        let refused =
            |sha: String| move |f: &mut FleetState| f.refusal = Some(Refusal::Pulled(sha));
        sup.note_pull(
            "refused",
            Some("not this one".into()),
            refused("0".repeat(64)),
        );
        sup.reload().await.unwrap();
        assert_eq!(sup.fleet().unwrap().result.as_deref(), Some("refused"));
        // A pull refused the kept document itself (it did not fit the file then): once a
        // reload applies it, the refusal goes.
        let sha = crate::config::fleet::sha256_hex(b"webhooks = []\n");
        sup.note_pull("refused", Some("did not fit".into()), refused(sha));
        sup.reload().await.unwrap();
        let f = sup.fleet().unwrap();
        assert_eq!(
            (f.result.as_deref(), f.reason.as_deref()),
            (Some("applied"), None)
        );
        sup.stop_sources().await;
        sup.stop_webhooks().await;
        drop(sup);
        store.close().await;
    }

    #[test]
    fn with_a_steady_clock_an_orphan_goes_after_orphan_retention_as_before() {
        let t0 = Reading {
            wall_ms: 1_700_000_000_000,
            mono: Instant::now(),
        };
        let mut jumps = Jumps::default();
        jumps.observe(t0);
        let orphans = [
            orphan("a", t0.wall_ms - 7 * DAY_MS),
            orphan("b", t0.wall_ms),
        ];
        let ages = jumps.ages(t0.wall_ms);
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(expired_orphans(&orphans, week, &ages), ["a"]);
    }
}
