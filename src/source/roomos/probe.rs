//! `roomhook source test NAME`: connects to one RoomOS device as the daemon would, shows its
//! certificate (and the SHA-256 to paste into `pin_sha256`), product and serial number, and
//! tries every configured subscription, saying which work and why the others are refused.

use super::connect::{self, PeerCert};
use super::rpc::{self, Incoming};
use super::tree::{self, Decoded, Selection};
use crate::config::RoomosSettings;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What the test found.
#[derive(Debug, Default)]
pub(crate) struct SourceReport {
    /// Lines for the operator, in order.
    pub(crate) lines: Vec<String>,
    /// Everything worked: connected, authenticated, every subscription accepted.
    pub(crate) ok: bool,
}

impl SourceReport {
    fn say(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }
}

fn describe_peer(seen: &Arc<Mutex<PeerCert>>, report: &mut SourceReport) -> Option<String> {
    let peer = seen.lock().ok()?.clone();
    let der = peer.der?;
    let fp = connect::fingerprint(&der);
    let (subject, issuer, expires) = crate::tls::describe_cert(&der);
    report.say(format!(
        "certificate: {subject} (issuer {issuer}), expires {expires}{}",
        peer.version.map(|v| format!(", {v}")).unwrap_or_default()
    ));
    report.say(format!("certificate SHA-256: {fp}"));
    Some(fp)
}

/// Runs the test against the device of `s` (at most about `limit` long). `unpinned`: the
/// config has no `pin_sha256`/`ca_file` yet (the certificate is only shown).
pub(crate) async fn test(s: &RoomosSettings, limit: Duration, unpinned: bool) -> SourceReport {
    let mut report = SourceReport::default();
    report.say(format!("source {}: {}", s.name, s.url));
    let seen = Arc::new(Mutex::new(PeerCert::default()));
    let ws = match connect::connect(s, limit, seen.clone()).await {
        Ok(ws) => ws,
        Err(e) => {
            let fp = describe_peer(&seen, &mut report);
            if unpinned && e.kind == connect::FailKind::Trust {
                report.say("not trusted yet: the config has neither pin_sha256 nor ca_file");
            } else {
                report.say(format!("FAILED: {e}"));
            }
            if let (Some(fp), connect::FailKind::Trust) = (fp, e.kind) {
                report.say(format!(
                    "if this is your device's certificate (compare with the device's web interface), trust it with:\n    pin_sha256 = \"{fp}\""
                ));
            }
            return report;
        }
    };
    if s.trust.is_some() {
        describe_peer(&seen, &mut report);
    } else {
        report.say("plain ws:// (allow_plaintext): no TLS".to_string());
    }
    report.say(format!(
        "authenticated as {:?} ({})",
        s.username,
        match s.auth_mode {
            crate::config::DeviceAuthMode::Header => "Authorization header",
            crate::config::DeviceAuthMode::Subprotocol => "auth- subprotocol",
        }
    ));
    let (mut tx, mut rx) = ws.split();
    let sel = Selection {
        statuses: s.statuses.clone(),
        events: s.events.clone(),
    };
    let queries = sel.queries();
    // id → what it asked: -1 product, -2 serial, n ≥ 0 query n.
    let mut pending: HashMap<String, i64> = HashMap::new();
    let mut frames = vec![
        (-1, rpc::get(1, &["Status", "SystemUnit", "ProductId"])),
        (
            -2,
            rpc::get(
                2,
                &["Status", "SystemUnit", "Hardware", "Module", "SerialNumber"],
            ),
        ),
    ];
    for (i, q) in queries.iter().enumerate() {
        frames.push((i as i64, rpc::subscribe(3 + i as u64, q)));
    }
    for (n, (what, frame)) in frames.into_iter().enumerate() {
        pending.insert((n + 1).to_string(), what);
        if let Err(e) = tx.send(Message::text(frame)).await {
            report.say(format!("FAILED: sending a request: {e}"));
            return report;
        }
    }
    let mut product = None;
    let mut serial = None;
    let mut results: Vec<Option<Result<(), String>>> = vec![None; queries.len()];
    let mut values = Decoded::default();
    let deadline = Instant::now() + limit;
    // Answers, then a short while for the current values that follow them.
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline && settle.is_none_or(|t| Instant::now() < t) {
        let left = deadline
            .min(settle.unwrap_or(deadline))
            .saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => {
                report.say(format!("FAILED: the connection broke: {e}"));
                return report;
            }
            Ok(None) => {
                report.say("FAILED: the device closed the connection".to_string());
                return report;
            }
            Err(_) => break,
        };
        match rpc::parse(frame.as_str()) {
            Ok(Incoming::Result { id, result }) => match pending.remove(&id) {
                Some(-1) => product = Some(result.to_string().trim_matches('"').to_string()),
                Some(-2) => serial = Some(result.to_string().trim_matches('"').to_string()),
                Some(q) if q >= 0 => results[q as usize] = Some(Ok(())),
                _ => {}
            },
            Ok(Incoming::Error { id, code, message }) => {
                let why = rpc::explain(code, &message);
                match id.and_then(|i| pending.remove(&i)) {
                    Some(-1) => product = Some(format!("(not readable: {why})")),
                    Some(-2) => serial = Some(format!("(not readable: {why})")),
                    Some(q) if q >= 0 => results[q as usize] = Some(Err(why)),
                    _ => {}
                }
            }
            Ok(Incoming::Feedback { doc, tree, .. }) if doc == "Status" => {
                tree::decode_status(&tree, &sel, &mut values);
            }
            _ => {}
        }
        if pending.is_empty() && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(500));
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    report.say(format!(
        "product: {}",
        product.unwrap_or_else(|| "(no answer)".into())
    ));
    report.say(format!(
        "serial number: {}{}",
        serial.unwrap_or_else(|| "(no answer)".into()),
        if s.device.is_none() {
            " (the device id in payloads)"
        } else {
            ""
        }
    ));
    if queries.is_empty() {
        report.say("subscriptions: none (set statuses/events, or select some in a webhook)");
    } else {
        report.say("subscriptions:");
    }
    let mut ok = true;
    for (q, r) in queries.iter().zip(&results) {
        let path = tree::query_text(q);
        match r {
            Some(Ok(())) => report.say(format!("  ok       {path}")),
            Some(Err(why)) => {
                ok = false;
                report.say(format!("  refused  {path}: {why}"));
            }
            None => {
                ok = false;
                report.say(format!("  no answer {path}"));
            }
        }
    }
    let current: std::collections::BTreeMap<_, _> = values.updated.into_iter().collect();
    if !current.is_empty() {
        report.say("current values:");
        for (p, v) in &current {
            report.say(format!("  {p} = {v}"));
        }
    }
    report.ok = ok;
    report
}
