//! `[[webhooks]]`: the receiver's https URL and authentication, mutual TLS, static headers,
//! the selection, per-status filters, pacing, retries, signing and compression.

use super::{did_you_mean, selection, Ctx};
use crate::catalog::{self, Kind};
use crate::config::units::{parse_bytes, parse_duration};
use crate::config::{Auth, Ordering, Pacing, PathFilter, RawWebhook, TlsTrust, WebhookSettings};
use crate::value::compression::Compression;
use crate::value::devices::DeviceSelector;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

pub(super) fn webhook(
    cx: &mut Ctx<'_>,
    names: &mut HashSet<String>,
    key: &str,
    w: &RawWebhook,
) -> Option<WebhookSettings> {
    let before = cx.errs.len();
    cx.unique_name(&format!("{key}.name"), names, &w.name, "webhook");
    let url_key = format!("{key}.url");
    let url = cx.https_url(
        &url_key,
        &w.url,
        "webhooks are only sent over TLS with a trusted certificate",
    );
    let auth = webhook_auth(cx, key, w);
    let trust = TlsTrust {
        ca_file: w
            .ca_file
            .as_ref()
            .and_then(|p| cx.ca_file(&format!("{key}.ca_file"), p)),
        client_identity: client_identity(cx, key, w),
    };
    let headers = static_headers(cx, key, w.headers.as_ref());
    let devices = match DeviceSelector::parse(w.devices.clone().unwrap_or_else(|| vec!["*".into()]))
    {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(
                format!("{key}.devices"),
                e,
                "list device ids or globs, e.g. [\"*\"] or [\"room-*\"]",
            );
            None
        }
    };
    let statuses = selection(cx, &format!("{key}.statuses"), &w.statuses, Kind::Status);
    let events = selection(cx, &format!("{key}.events"), &w.events, Kind::Event);
    if w.statuses.is_empty() && w.events.is_empty() {
        cx.err(
            format!("{key}.statuses"),
            "the webhook selects no statuses and no events",
            "add e.g. statuses = [\"RoomAnalytics.PeopleCount.Current\"] or events = [\"UserInterface.Extensions.Widget.Action\"]",
        );
    }
    let max_in_flight = w.max_in_flight.unwrap_or(8);
    if !(1..=256).contains(&max_in_flight) {
        cx.err(
            format!("{key}.max_in_flight"),
            "must be 1 to 256",
            "write e.g. 8",
        );
    }
    let connect_timeout = cx.duration(
        &format!("{key}.connect_timeout"),
        w.connect_timeout.as_ref(),
        Duration::from_secs(5),
    );
    let request_timeout = cx.duration(
        &format!("{key}.request_timeout"),
        w.request_timeout.as_ref(),
        Duration::from_secs(15),
    );
    let retry_base = cx.duration(
        &format!("{key}.retry_base"),
        w.retry_base.as_ref(),
        Duration::from_secs(1),
    );
    let retry_max = cx.duration(
        &format!("{key}.retry_max"),
        w.retry_max.as_ref(),
        Duration::from_secs(300),
    );
    if retry_max < retry_base {
        cx.err(
            format!("{key}.retry_max"),
            "is shorter than retry_base",
            "make retry_max at least retry_base",
        );
    }
    let pacing = pacing(cx, key, w);
    let overflow = match w.overflow.as_deref() {
        None | Some("drop_oldest") => crate::value::overflow::Overflow::DropOldest,
        Some("coalesce") => crate::value::overflow::Overflow::Coalesce,
        Some("block") => crate::value::overflow::Overflow::Block,
        Some(other) => {
            cx.err(
                format!("{key}.overflow"),
                format!("unknown policy {other:?}"),
                "write \"drop_oldest\" (default), \"coalesce\" or \"block\"",
            );
            crate::value::overflow::Overflow::DropOldest
        }
    };
    let compression = compression(cx, key, w.compression.as_deref());
    let priority = int_in(
        cx,
        &format!("{key}.priority"),
        w.priority,
        5,
        (0, 9),
        "write 0 (lowest) to 9 (highest), e.g. priority = 7; the default is 5",
    );
    let uplink_weight = int_in(cx, &format!("{key}.uplink_weight"), w.uplink_weight, 1, (1, 1000), "write 1 (default) or more, e.g. uplink_weight = 3 for three times the share of a webhook of weight 1 and the same priority");
    let secret = cx.secret(
        key,
        "signing_secret",
        &w.signing_secret,
        &w.signing_secret_file,
    );
    let signer = secret.and_then(
        |sec| match crate::value::signing::parse_secret(sec.expose()) {
            Ok(k) => Some(crate::value::signing::Signer::new(&k)),
            Err(e) => {
                let which = if w.signing_secret_file.is_some() {
                    "signing_secret_file"
                } else {
                    "signing_secret"
                };
                cx.err(
                    format!("{key}.{which}"),
                    e,
                    "generate one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\"",
                );
                None
            }
        },
    );
    let max_queue_age = w.max_queue_age.as_ref().map(|_| {
        cx.duration(
            &format!("{key}.max_queue_age"),
            w.max_queue_age.as_ref(),
            Duration::ZERO,
        )
    });
    let filters = path_filters(cx, key, w);
    if cx.errs.len() != before {
        return None;
    }
    Some(WebhookSettings {
        name: w.name.clone(),
        url: url?,
        enabled: w.enabled.unwrap_or(true),
        auth: auth?,
        trust,
        devices: devices?,
        statuses,
        events,
        max_in_flight,
        connect_timeout,
        request_timeout,
        retry_base,
        retry_max,
        pacing,
        overflow,
        max_queue_age,
        conflate: w.conflate.unwrap_or(false),
        signer,
        compression,
        priority: priority as u8,
        uplink_weight: uplink_weight as u32,
        headers,
        filters,
    })
}

/// An integer key within `min..=max` (`default` when unset or out of range: the error is
/// recorded).
fn int_in(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: Option<i64>,
    default: i64,
    (min, max): (i64, i64),
    fix: &str,
) -> i64 {
    match raw {
        None => default,
        Some(n) if (min..=max).contains(&n) => n,
        Some(n) => {
            cx.err(key, format!("{n} is not {min} to {max}"), fix);
            default
        }
    }
}

/// `compression`: `"none"` (default) or `"gzip"`; a near miss gets a did-you-mean.
fn compression(cx: &mut Ctx<'_>, key: &str, raw: Option<&str>) -> Compression {
    let Some(raw) = raw else {
        return Compression::default();
    };
    if let Some(c) = Compression::parse(raw) {
        return c;
    }
    let lower = raw.trim().to_ascii_lowercase();
    let near: Vec<&str> = Compression::VALUES
        .into_iter()
        .filter(|v| *v == lower || strsim::levenshtein(v, &lower) <= 2)
        .collect();
    let fix = if near.is_empty() {
        "write \"none\" (default: bodies go as they are) or \"gzip\" (Content-Encoding: gzip on bodies of 1 KiB or more; the receiver must accept it)".to_string()
    } else {
        format!(
            "{} (the values are \"none\" and \"gzip\")",
            did_you_mean(&near)
        )
    };
    cx.err(
        format!("{key}.compression"),
        format!("unknown compression {raw:?}"),
        fix,
    );
    Compression::default()
}

/// `[webhooks.filters."<status>"]`: patterns of numeric (deadband) statuses.
fn path_filters(cx: &mut Ctx<'_>, key: &str, w: &RawWebhook) -> Vec<PathFilter> {
    let mut out = Vec::new();
    for (pattern, f) in &w.filters {
        let fkey = format!("{key}.filters.{pattern}");
        let generic = catalog::generic_path(pattern);
        let entries = catalog::expand(&generic, Kind::Status);
        if entries.is_empty() {
            cx.err(
                &fkey,
                format!("{pattern:?} is not an approved status (wildcards only as a last \".*\")"),
                did_you_mean(&catalog::suggest(pattern, Some(Kind::Status))),
            );
            continue;
        }
        if f.deadband.is_none() && f.min_interval.is_none() {
            cx.err(
                &fkey,
                "the filter sets nothing",
                "set deadband = 0.5 and/or min_interval = \"30s\", or remove the table",
            );
        }
        if let Some(d) = f.deadband {
            let numeric = entries.iter().any(|e| {
                matches!(
                    e.value,
                    catalog::ValueType::Integer | catalog::ValueType::Decimal
                )
            });
            if !d.is_finite() || d < 0.0 {
                cx.err(
                    format!("{fkey}.deadband"),
                    format!("{d} is not a distance"),
                    "write a number of 0 or more, e.g. 0.3",
                );
            } else if !numeric {
                cx.err(
                    format!("{fkey}.deadband"),
                    format!("{pattern:?} has no numeric values"),
                    "use deadband only for numbers (temperature, humidity, people count, noise); change-only applies to every status anyway",
                );
            }
        }
        let min_interval = f.min_interval.as_ref().map(|raw| {
            cx.duration(
                &format!("{fkey}.min_interval"),
                Some(raw),
                Duration::from_secs(1),
            )
        });
        if let (Some(m), Some(age)) = (min_interval, w.max_queue_age.as_ref()) {
            if parse_duration(age).is_ok_and(|age| m * 2 > age) {
                cx.err(
                    format!("{fkey}.min_interval"),
                    format!("{raw} is more than half of max_queue_age ({age}): the latest value could expire while it waits its turn", raw = f.min_interval.as_deref().unwrap_or_default()),
                    "shorten min_interval or lengthen max_queue_age",
                );
            }
        }
        out.push(PathFilter {
            pattern: generic,
            deadband: f.deadband,
            min_interval,
        });
    }
    // The most specific pattern first (an exact path before `RoomAnalytics.*`): the first
    // that matches applies.
    out.sort_by_key(|f| std::cmp::Reverse((!f.pattern.ends_with('*'), f.pattern.len())));
    out
}

/// `client_cert_file` + `client_key_file` for mutual TLS: both or neither, both loadable.
fn client_identity(cx: &mut Ctx<'_>, key: &str, w: &RawWebhook) -> Option<(PathBuf, PathBuf)> {
    let (cert, k) = match (&w.client_cert_file, &w.client_key_file) {
        (None, None) => return None,
        (Some(c), Some(k)) => (cx.path(c), cx.secret_path(k)),
        (Some(_), None) | (None, Some(_)) => {
            cx.err(
                format!("{key}.client_cert_file"),
                "mutual TLS needs both client_cert_file and client_key_file",
                "set both (PEM certificate chain and its private key), or neither",
            );
            return None;
        }
    };
    match crate::tls::load_identity(&cert, &k) {
        Ok(_) => Some((cert, k)),
        Err(e) => {
            cx.err(
                format!("{key}.client_cert_file"),
                e.to_string(),
                "point client_cert_file at a PEM certificate and client_key_file at its PEM private key",
            );
            None
        }
    }
}

/// Headers a static `headers` table may not set: the ones roomhook owns.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

fn static_headers(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in raw.into_iter().flatten() {
        let k = format!("{key}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            cx.err(
                k,
                format!("{name:?} is not a valid header name"),
                "use letters, digits and '-'",
            );
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            cx.err(
                k,
                format!("{name} is set by roomhook itself"),
                "use authorization/username for auth and signing_secret for signatures; remove it from headers",
            );
        } else if hyper::header::HeaderValue::from_str(value).is_err() {
            cx.err(
                k,
                "the value has characters a header cannot carry",
                "use printable ASCII",
            );
        } else {
            out.push((lower, value.clone()));
        }
    }
    out
}

fn pacing(cx: &mut Ctx<'_>, key: &str, w: &RawWebhook) -> Pacing {
    let rate_limit = w.rate_limit;
    if let Some(r) = rate_limit {
        if !(r.is_finite() && r > 0.0) {
            cx.err(
                format!("{key}.rate_limit"),
                "must be a positive number of requests per second",
                "write e.g. rate_limit = 20",
            );
        }
    }
    let burst = w
        .burst
        .unwrap_or_else(|| rate_limit.map_or(1, |r| r.ceil().max(1.0) as u32));
    if burst == 0 {
        cx.err(
            format!("{key}.burst"),
            "must be at least 1",
            "write e.g. burst = 10",
        );
    }
    if w.burst.is_some() && rate_limit.is_none() {
        cx.err(
            format!("{key}.burst"),
            "burst is set without rate_limit",
            "add rate_limit, or remove burst",
        );
    }
    let jitter_key = format!("{key}.drain_start_jitter");
    let drain_start_jitter = cx.duration_or_zero(
        &jitter_key,
        w.drain_start_jitter.as_ref(),
        Duration::from_secs(3),
    );
    let ordering = match w.ordering.as_deref() {
        None | Some("device") => Ordering::Device,
        Some("none") => Ordering::None,
        Some(other) => {
            cx.err(
                format!("{key}.ordering"),
                format!("unknown ordering {other:?}"),
                "write \"device\" (default) or \"none\"",
            );
            Ordering::Device
        }
    };
    let batch_max_messages = w.batch_max_messages.unwrap_or(1);
    if !(1..=1000).contains(&batch_max_messages) {
        cx.err(
            format!("{key}.batch_max_messages"),
            "must be 1 to 1000",
            "write 1 (Control Hub compatible) or e.g. 100",
        );
    }
    let batch_max_bytes = match w.batch_max_bytes.as_deref().map(parse_bytes) {
        None => 1024 * 1024,
        Some(Ok(b)) if b >= 1024 => b,
        Some(Ok(_)) => {
            cx.err(
                format!("{key}.batch_max_bytes"),
                "must be at least 1KiB",
                "write e.g. \"1MiB\"",
            );
            1024 * 1024
        }
        Some(Err(e)) => {
            cx.err(
                format!("{key}.batch_max_bytes"),
                e,
                "write a size such as \"256KiB\" or \"1MiB\"",
            );
            1024 * 1024
        }
    };
    let linger_key = format!("{key}.batch_linger");
    let batch_linger = cx.duration_or_zero(
        &linger_key,
        w.batch_linger.as_ref(),
        Duration::from_millis(50),
    );
    let circuit_breaker_threshold = w.circuit_breaker_threshold.unwrap_or(5);
    if circuit_breaker_threshold == 0 {
        cx.err(
            format!("{key}.circuit_breaker_threshold"),
            "must be at least 1",
            "write e.g. 5",
        );
    }
    let auth_retry = cx.duration(
        &format!("{key}.auth_retry"),
        w.auth_retry.as_ref(),
        Duration::from_secs(60),
    );
    Pacing {
        rate_limit,
        burst: burst.max(1),
        drain_start_jitter,
        ordering,
        batch_max_messages,
        batch_max_bytes,
        batch_linger,
        circuit_breaker_threshold,
        auth_retry,
    }
}

fn webhook_auth(cx: &mut Ctx<'_>, key: &str, w: &RawWebhook) -> Option<Auth> {
    let token_set = w.authorization.is_some() || w.authorization_file.is_some();
    let basic_set = w.username.is_some() || w.password.is_some() || w.password_file.is_some();
    let none = match w.auth.as_deref() {
        None => false,
        Some("none") => true,
        Some(other) => {
            cx.err(
                format!("{key}.auth"),
                format!("unknown value {other:?}"),
                "the only value is \"none\" (no Authorization header); otherwise set authorization or username + password",
            );
            return None;
        }
    };
    match (none, token_set, basic_set) {
        (true, false, false) => Some(Auth::None),
        (true, _, _) => {
            cx.err(
                format!("{key}.auth"),
                "auth = \"none\" is set together with credentials",
                "remove auth = \"none\", or remove the credentials",
            );
            None
        }
        (false, true, true) => {
            cx.err(
                format!("{key}.authorization"),
                "both a token (authorization) and Basic credentials (username/password) are set",
                "keep one kind of receiver authentication",
            );
            None
        }
        (false, false, false) => {
            cx.err(
                format!("{key}.authorization"),
                "the webhook has no receiver authentication",
                "set authorization = \"Bearer …\" (or authorization_file), or username + password_file for Basic; write auth = \"none\" to send none on purpose",
            );
            None
        }
        (false, true, false) => {
            let token = cx.secret(
                key,
                "authorization",
                &w.authorization,
                &w.authorization_file,
            )?;
            if token.expose().trim().is_empty() {
                cx.err(
                    format!("{key}.authorization"),
                    "is empty",
                    "write the header value, e.g. \"Bearer …\"",
                );
                return None;
            }
            if hyper::header::HeaderValue::from_str(token.expose()).is_err() {
                cx.err(
                    format!("{key}.authorization"),
                    "has characters an HTTP header cannot carry (control characters or non-ASCII); requests would go out unauthenticated",
                    "use printable ASCII, e.g. \"Bearer <token>\"",
                );
                return None;
            }
            Some(Auth::Token(token))
        }
        (false, false, true) => {
            let Some(username) = w.username.clone().filter(|u| !u.is_empty()) else {
                cx.err(
                    format!("{key}.username"),
                    "a password is set without a username",
                    "add username",
                );
                return None;
            };
            if username.contains(':') {
                cx.err(
                    format!("{key}.username"),
                    "contains ':', which Basic auth cannot carry",
                    "choose a user name without ':'",
                );
                return None;
            }
            if w.password.is_none() && w.password_file.is_none() {
                cx.err(
                    format!("{key}.password"),
                    "username is set without a password",
                    "add password_file (or password)",
                );
                return None;
            }
            let password = cx.secret(key, "password", &w.password, &w.password_file)?;

            Some(Auth::Basic { username, password })
        }
    }
}
