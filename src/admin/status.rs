//! What `/healthz`, `/readyz` and `roomhook status` report: the store's health, each
//! source's connection and traffic, each webhook's state, recent deliveries and errors,
//! queue and last error — and the verdict, with what is wrong named.

use super::api::{
    ErrorReport, LoopReport, OrphanReport, QueueReport, StatusReport, StoreReport, WebhookReport,
};
use crate::supervisor::Supervisor;
use serde_json::{json, Value};

/// A source disconnected longer than this makes the daemon not ready.
pub(crate) const SOURCE_DOWN_LIMIT_S: f64 = 60.0;
/// A webhook failing (retrying, paused, circuit open, auth failed) longer than this makes
/// the daemon not ready.
pub(crate) const WEBHOOK_STUCK_LIMIT_S: f64 = 300.0;

/// A loop in one step for longer than this makes `/healthz` fail (the systemd watchdog
/// uses its own period).
pub(crate) const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What stopped or hangs that must run: the store writer, every worker and source task,
/// and any of their loops in one step for longer than `limit`.
pub(crate) fn stuck_parts(sup: &Supervisor, limit: std::time::Duration) -> Vec<String> {
    let mut problems = sup.dead_tasks();
    if !sup.store().writer_alive() {
        problems.push("the store writer thread stopped".into());
    }
    for (name, busy) in sup.pulses().stalled(limit) {
        problems.push(format!(
            "{name} has been in one step for {:.1} s",
            busy.as_secs_f64()
        ));
    }
    problems
}

fn dead_parts(sup: &Supervisor) -> Vec<String> {
    stuck_parts(sup, STALL_LIMIT)
}

/// Liveness: the store writer and every worker and source task run, none of them hangs.
pub(crate) fn alive(sup: &Supervisor) -> (bool, Value) {
    let problems = dead_parts(sup);
    let ok = problems.is_empty();
    (
        ok,
        json!({ "status": if ok { "ok" } else { "failing" }, "problems": problems }),
    )
}

/// Everything `roomhook status` shows, with the readiness verdict, as JSON.
pub fn status(sup: &Supervisor) -> Value {
    serde_json::to_value(report(sup)).unwrap_or(Value::Null)
}

/// Everything `roomhook status` shows, with the readiness verdict.
pub(crate) fn report(sup: &Supervisor) -> StatusReport {
    let now = crate::timefmt::now_ms();
    // The oldest queued event's age as max_queue_age measures it.
    let ages = crate::wallclock::ages();
    let store = sup.store();
    let health = store.health();
    let mut problems: Vec<String> = Vec::new();
    if !health.ok {
        problems.push(format!(
            "store: commits fail ({}); input waits",
            health.last_error.clone().unwrap_or_default()
        ));
    }
    problems.extend(dead_parts(sup));
    let sources = sup.sources();
    for s in &sources {
        if !s.connected && s.state_age_s > SOURCE_DOWN_LIMIT_S {
            problems.push(format!(
                "source {}: not connected for {:.0} s{}",
                s.name,
                s.state_age_s,
                s.last_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut webhooks = Vec::new();
    let mut dropped_total = std::collections::BTreeMap::<&str, u64>::new();
    for w in sup.webhooks().iter() {
        let st = w.status.lock().map(|g| g.clone()).ok();
        let Some(st) = st else { continue };
        let state = st.state.as_str();
        let state_age_s = (now - st.state_since_ms).max(0) as f64 / 1000.0;
        let failing = matches!(
            state,
            "retrying" | "paused" | "circuit_open" | "auth_failed"
        );
        if failing && state_age_s > WEBHOOK_STUCK_LIMIT_S {
            problems.push(format!(
                "webhook {}: {state} for {state_age_s:.0} s{}",
                w.settings.name,
                st.last_error
                    .as_ref()
                    .map(|e| format!(" ({})", e.message))
                    .unwrap_or_default()
            ));
        }
        if state == "refusing" {
            problems.push(format!(
                "webhook {}: the receiver refused {} messages in a row for good (4xx); the queue is held and retried every retry_max{}",
                w.settings.name,
                crate::deliver::worker::REFUSING_AFTER,
                st.last_error
                    .as_ref()
                    .map(|e| format!(" ({})", e.message))
                    .unwrap_or_default()
            ));
        }
        if state == "disabled" && w.settings.enabled {
            problems.push(format!(
                "webhook {}: disabled by the receiver (410 Gone); `roomhook webhook enable {}` starts it again",
                w.settings.name, w.settings.name
            ));
        }
        let oldest = store.oldest_ts(w.id);
        let mut dropped = std::collections::BTreeMap::new();
        for reason in crate::store::DropReason::ALL {
            let n = store.dropped(w.id, reason);
            if n > 0 {
                dropped.insert(reason.label().to_string(), n);
                *dropped_total.entry(reason.label()).or_default() += n;
            }
        }
        webhooks.push(WebhookReport {
            name: w.settings.name.clone(),
            url: crate::redact::url(&w.settings.url.to_string()),
            enabled: w.settings.enabled,
            state: state.to_string(),
            state_age_s,
            recent: st.recent.counts(now),
            queue: QueueReport {
                events: store.depth(w.id),
                bytes: store.bytes(w.id),
                oldest_age_s: oldest.map(|t| ages.age_ms(t).max(0) as f64 / 1000.0),
                dead_letters: store.dead_count(w.id),
                dropped,
            },
            in_flight: st.in_flight,
            in_flight_limit: st.in_flight_limit,
            last_error: st.last_error.as_ref().map(|e| ErrorReport {
                message: e.message.clone(),
                at: crate::timefmt::rfc3339_ms(e.at_ms),
                age_s: (now - e.at_ms).max(0) as f64 / 1000.0,
            }),
        });
    }
    // Dropped by the store for a webhook removed before their commit: no webhook's.
    let gone = store.dropped_unregistered();
    if gone > 0 {
        dropped_total.insert(crate::store::WEBHOOK_REMOVED, gone);
    }
    let running = sup.webhooks();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        ready: problems.is_empty(),
        problems,
        store: StoreReport {
            ok: health.ok,
            errors: health.errors,
            last_error: health.last_error,
            last_error_at: health.last_error_at,
            bytes: store.total_bytes(),
            max_bytes: store.max_bytes(),
            dropped: dropped_total
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        },
        sources,
        webhooks,
        orphans: sup
            .orphans()
            .into_iter()
            .map(|(name, events, since)| OrphanReport {
                name,
                events,
                since: crate::timefmt::rfc3339_ms(since),
            })
            .collect(),
        // The store's register of delivery loops: one per queue, each queue a webhook's.
        delivery_loops: store
            .claimed()
            .into_iter()
            .map(|id| LoopReport {
                queue: id.0,
                webhook: running
                    .iter()
                    .find(|w| w.id == id)
                    .map(|w| w.settings.name.clone()),
            })
            .collect(),
        delivery_loops_refused: store.claims_refused(),
        fleet: sup.fleet(),
    }
}
