//! The pull loop of `[fleet] config_url`: GET with `If-None-Match` (a 304 is unchanged),
//! the detached Ed25519 signature (`X-Roomhook-Signature`, else `<url>.sig`) when a public
//! key is set, the check of the local file with the document merged in (`check-config`'s
//! own), then the document kept in `<data_dir>/fleet-config.toml` and applied through the
//! reload's all-or-nothing path (put back as it was when that fails). Each pull is
//! counted (`roomhook_fleet_config_total{result}`), logged, and noted for `status`.

use super::{sleep_or_stop, unit, Jitter};
use crate::config::Settings;
use crate::deliver::client::WebhookClient;
use crate::metrics::{Metrics, ResultLabel};
use crate::supervisor::{ActionError, Applied, Refusal, Supervisor};
use hyper::{StatusCode, Uri};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The largest document read.
const MAX_DOC: usize = 1024 * 1024;
/// The response header that may carry the signature instead of `<url>.sig`.
pub(crate) const SIGNATURE_HEADER: &str = "x-roomhook-signature";
/// The results counted.
const RESULTS: [&str; 4] = ["applied", "unchanged", "refused", "failed"];

/// How one pull ended.
enum Outcome {
    Applied(Applied),
    Unchanged,
    /// The document is not taken (what and why, with file:line and fix).
    Refused(String),
    /// No document came, or it could not be applied.
    Failed(String),
    /// The daemon is stopping: a request was given up (not counted).
    Stopped,
}

/// The state of the pull loop.
pub(super) struct Puller {
    sup: Arc<Supervisor>,
    client: WebhookClient,
    /// The URL, credentials hidden (messages, and the document's name in errors).
    shown: String,
    /// `<url>.sig` (`None`: the URL has no such form; the header must carry it).
    sig_url: Option<Uri>,
    public_key: Option<[u8; 32]>,
    /// The local config file.
    file: PathBuf,
    /// `<data_dir>/fleet-config.toml`.
    kept: PathBuf,
    /// The `ETag` of the last document pulled, with its SHA-256: sent only while that
    /// document is the one in force (a SIGHUP may have set it aside since).
    etag: Option<(String, String)>,
    /// The SHA-256 of the document the last pull refused after reading it whole (it did
    /// not check with the local file): a reload that applies it clears the refusal.
    refused: Option<String>,
}

impl Puller {
    pub(super) fn new(
        s: &Settings,
        url: &Uri,
        client: WebhookClient,
        (sup, metrics): (Arc<Supervisor>, Arc<Metrics>),
    ) -> Self {
        let mut sig = url.clone().into_parts();
        let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
        sig.path_and_query = format!("{}.sig{query}", url.path()).parse().ok();
        let sig_url = Uri::from_parts(sig).ok();
        for r in RESULTS {
            let _ = metrics.fleet_config.get_or_create(&label(r));
        }
        Puller {
            sup,
            client,
            shown: crate::redact::url(&url.to_string()),
            sig_url,
            public_key: s.fleet.as_ref().and_then(|f| f.public_key),
            file: s.file.clone(),
            kept: s.data_dir.join(crate::config::fleet::KEPT),
            etag: None,
            refused: None,
        }
    }

    /// SHA-256 of the document in force, as the supervisor last applied it.
    fn in_force(&self) -> Option<String> {
        self.sup.fleet_sha256()
    }

    /// Pulls once in every `interval` (full jitter) until `stop`, the first time within
    /// [`FIRST_PULL`] when no document is kept yet; every request is given up when `stop`
    /// comes, and nothing is applied after it.
    pub(super) async fn run(self, interval: Duration, stop: CancellationToken) {
        poll(self, interval, stop).await
    }
}

/// The first pull of a gateway that runs no kept document (none yet, or one that no longer
/// fits) comes within this (or within the interval, when shorter): a new gateway gets its
/// config at once.
pub(super) const FIRST_PULL: Duration = Duration::from_secs(10);

/// One pull, as the poll loop sees it.
pub(super) trait Pull {
    /// Whether a kept document is in force (else the first pull comes within
    /// [`FIRST_PULL`]).
    fn kept(&self) -> bool;
    /// Pulls once; false when `stop` came first.
    async fn once(&mut self, stop: &CancellationToken) -> bool;
}

impl Pull for Puller {
    /// A document is in force (kept, and it fits the local file).
    fn kept(&self) -> bool {
        self.in_force().is_some()
    }

    async fn once(&mut self, stop: &CancellationToken) -> bool {
        match self.pull(stop).await {
            Outcome::Stopped => false,
            outcome => {
                self.note(outcome);
                true
            }
        }
    }
}

/// The poll loop: `p` once in every `interval` (full jitter) until `stop`; the first time
/// uniformly within min(`interval`, [`FIRST_PULL`]) when `p` keeps no document.
pub(super) async fn poll(mut p: impl Pull, interval: Duration, stop: CancellationToken) {
    let mut jitter = Jitter::new(interval);
    let mut wait = if p.kept() {
        jitter.next(unit())
    } else {
        interval.min(FIRST_PULL).mul_f64(unit())
    };
    while sleep_or_stop(wait, &stop).await && p.once(&stop).await {
        wait = jitter.next(unit());
    }
}

impl Puller {
    fn note(&mut self, outcome: Outcome) {
        let (result, reason) = match &outcome {
            Outcome::Applied(a) => {
                tracing::info!(
                    url = %self.shown,
                    added = ?a.added,
                    changed = ?a.changed,
                    removed = ?a.removed,
                    sources = ?a.sources,
                    need_restart = ?a.need_restart,
                    "fleet config applied"
                );
                ("applied", None)
            }
            Outcome::Unchanged => {
                tracing::debug!(url = %self.shown, "fleet config unchanged");
                ("unchanged", None)
            }
            Outcome::Refused(why) => {
                tracing::error!(url = %self.shown, "fleet config refused, the running config stays: {why}");
                ("refused", Some(why.clone()))
            }
            Outcome::Failed(why) => {
                tracing::warn!(url = %self.shown, "fleet config not pulled, the running config stays: {why}");
                ("failed", Some(why.clone()))
            }
            Outcome::Stopped => return,
        };
        let refused = self.refused.take().filter(|_| result == "refused");
        self.sup.note_pull(result, reason, |f| {
            if result == "applied" {
                f.applied_at = f.at.clone();
            }
            f.refusal = refused.map(Refusal::Pulled);
        });
    }

    async fn pull(&mut self, stop: &CancellationToken) -> Outcome {
        let mut headers = Vec::new();
        if let Some((_, e)) = self
            .etag
            .as_ref()
            .filter(|(sha, _)| self.in_force().as_deref() == Some(sha.as_str()))
        {
            headers.push(("if-none-match", e.clone()));
        }
        let got = tokio::select! {
            biased;
            _ = stop.cancelled() => return Outcome::Stopped,
            r = self.client.get(None, &headers, MAX_DOC) => r,
        };
        let (status, head, body) = match got {
            Ok(r) => r,
            Err(f) => return Outcome::Failed(f.message),
        };
        if status == StatusCode::NOT_MODIFIED {
            return Outcome::Unchanged;
        }
        if !status.is_success() {
            return Outcome::Failed(format!("{} answered HTTP {status}", self.shown));
        }
        let etag = header(&head, "etag");
        let mut signature = None;
        if let Some(key) = &self.public_key {
            let signed = tokio::select! {
                biased;
                _ = stop.cancelled() => return Outcome::Stopped,
                r = self.signed(key, &head, &body) => r,
            };
            match signed {
                Ok(sig) => signature = Some(sig),
                Err(why) => {
                    self.etag = None;
                    return Outcome::Refused(why);
                }
            }
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            self.etag = None;
            return Outcome::Refused(format!("{}: the document is not UTF-8 text", self.shown));
        };
        let sha = crate::config::fleet::sha256_hex(&body);
        if self.in_force().as_deref() == Some(sha.as_str()) {
            self.etag = etag.map(|e| (sha, e));
            return Outcome::Unchanged;
        }
        let label = PathBuf::from(&self.shown);
        if let Err(e) = crate::config::load_fleet(&self.file, &label, text) {
            self.etag = None;
            self.refused = Some(sha);
            return Outcome::Refused(e.to_string());
        }
        // Kept first (with its signature, which every load checks when a key is set), so
        // that a SIGHUP meanwhile reloads it too; put back if not applied.
        let sig_file = crate::config::fleet::kept_sig(&self.kept);
        let before = std::fs::read_to_string(&self.kept).ok();
        let before_sig = std::fs::read_to_string(&sig_file).ok();
        if let Err(e) = keep(&sig_file, signature.as_deref())
            .and_then(|()| crate::config::edit::write_atomically(&self.kept, text))
        {
            let _ = keep(&sig_file, before_sig.as_deref());
            return Outcome::Failed(format!("cannot keep {}: {e}", self.kept.display()));
        }
        match self.sup.reload_fleet(stop).await {
            Ok(applied) => {
                self.etag = etag.map(|e| (sha, e));
                Outcome::Applied(applied)
            }
            Err(e) => {
                let back = keep(&self.kept, before.as_deref())
                    .and_then(|()| keep(&sig_file, before_sig.as_deref()));
                if let Err(w) = back {
                    tracing::error!(
                        "{}: cannot put the last good document back: {w}",
                        self.kept.display()
                    );
                }
                self.etag = None;
                match e {
                    ActionError::Invalid(why) => {
                        self.refused = Some(sha);
                        Outcome::Refused(why)
                    }
                    other => Outcome::Failed(other.to_string()),
                }
            }
        }
    }

    /// Whether the document carries a valid signature: in the response's header, else in
    /// `<url>.sig`.
    async fn signed(
        &self,
        key: &[u8; 32],
        head: &hyper::HeaderMap,
        body: &[u8],
    ) -> Result<String, String> {
        let sig = match (header(head, SIGNATURE_HEADER), &self.sig_url) {
            (Some(s), _) => s,
            (None, None) => {
                return Err(format!(
                    "{}: no signature (no {SIGNATURE_HEADER} header, and the URL has no <url>.sig form); fix: serve the signature of `roomhook fleet sign` in that header",
                    self.shown
                ))
            }
            (None, Some(sig_url)) => match self.client.get(Some(sig_url), &[], 4096).await {
                Ok((s, _, b)) if s.is_success() => String::from_utf8_lossy(&b).into_owned(),
                Ok((s, _, _)) => {
                    return Err(format!(
                        "{}: no signature (no {SIGNATURE_HEADER} header, and its .sig answered HTTP {s}); fix: sign it with `roomhook fleet sign --key KEY DOC` and serve DOC.sig beside it",
                        self.shown
                    ))
                }
                Err(f) => return Err(format!("{}: its .sig could not be read: {}", self.shown, f.message)),
            },
        };
        if super::sign::verify(key, body, &sig) {
            Ok(sig)
        } else {
            Err(format!(
                "{}: the signature is not valid for [fleet] config_public_key; fix: sign the document as served with the private key of that public key (`roomhook fleet sign`)",
                self.shown
            ))
        }
    }
}

/// Writes `text` to `file` atomically, or removes it when `None` (absent is fine).
fn keep(file: &std::path::Path, text: Option<&str>) -> std::io::Result<()> {
    match text {
        Some(t) => crate::config::edit::write_atomically(file, t),
        None => match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

fn header(head: &hyper::HeaderMap, name: &str) -> Option<String> {
    head.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn label(result: &str) -> ResultLabel {
    ResultLabel {
        result: result.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A gateway of the test: each pull notes its time (seconds since `t0`) in `log`.
    struct Counter {
        kept: bool,
        t0: tokio::time::Instant,
        log: Arc<Mutex<Vec<u64>>>,
    }

    impl Pull for Counter {
        fn kept(&self) -> bool {
            self.kept
        }
        async fn once(&mut self, _: &CancellationToken) -> bool {
            let at = self.t0.elapsed().as_secs();
            self.log.lock().unwrap().push(at);
            true
        }
    }

    /// `n` gateways started at once run the real poll loop (tokio's clock paused) for
    /// `intervals` intervals: the times of their pulls, in seconds.
    async fn pulls(n: usize, kept: bool, interval: Duration, intervals: u32) -> Vec<u64> {
        let t0 = tokio::time::Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let c = Counter {
                kept,
                t0,
                log: log.clone(),
            };
            tasks.spawn(poll(c, interval, stop.clone()));
        }
        tokio::time::sleep(interval * intervals).await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        let mut v = log.lock().unwrap().clone();
        v.sort_unstable();
        v
    }

    /// 20 gateways started in the same second, polling every 5 minutes: over the first
    /// interval each pulls once, and no second has more than 3 of the 20 requests (a loop
    /// that slept a fixed interval would put all 20 in one second).
    #[tokio::test(start_paused = true)]
    async fn twenty_gateways_spread_their_pulls_over_the_interval() {
        let interval = Duration::from_secs(300);
        let times = pulls(20, true, interval, 1).await;
        assert_eq!(times.len(), 20, "{times:?}");
        let mut per_second = std::collections::HashMap::<u64, u32>::new();
        for t in &times {
            *per_second.entry(*t).or_default() += 1;
        }
        let busiest = per_second.values().max().copied().unwrap_or(0);
        assert!(busiest <= 3, "a second with {busiest} requests: {times:?}");
        assert!(per_second.len() >= 10, "{times:?}");
        // And one pull in each interval after: 20 more in the second.
        let times = pulls(20, true, interval, 2).await;
        assert!((38..=40).contains(&times.len()), "{}", times.len());
    }

    /// Without a kept document the first pull comes within 10 s, then one in each interval.
    #[tokio::test(start_paused = true)]
    async fn the_first_pull_without_a_kept_document_comes_within_ten_seconds() {
        let interval = Duration::from_secs(300);
        let times = pulls(20, false, interval, 1).await;
        assert!(times.len() >= 20, "{times:?}");
        assert!(times[..20].iter().all(|t| *t < 10), "{times:?}");
        // A short interval bounds it instead.
        let times = pulls(5, false, Duration::from_secs(4), 1).await;
        assert!(times.iter().all(|t| *t < 4), "{times:?}");
    }
}
