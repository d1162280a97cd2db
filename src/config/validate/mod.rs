//! Turns the file's model into [`Settings`]: checks every key, reads secret and CA files,
//! and collects every problem (with the key and the fix) instead of stopping at the first.
//! `[gateway]`, `[admin]` and `[log]` are checked here; the sources and `[[webhooks]]` in
//! their own files.

mod fleet;
mod mqtt;
mod roomos;
mod webhook;

#[cfg(test)]
pub(crate) use roomos::parse_pin;

use super::secret::read_secret_file;
use super::units::parse_duration;
use super::*;
use crate::catalog::{self, Kind};
use mqtt::mqtt_source;
use roomos::{device_map, roomos_source};
use std::collections::HashSet;
use webhook::webhook;

struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
    errs: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) {
        self.errs.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            line: None,
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Where a secret file is: a relative path is looked up first in systemd's
    /// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), then relative to the config file.
    fn secret_path(&self, p: &Path) -> PathBuf {
        super::secret::secret_path(self.base, p)
    }

    fn secret_file(&mut self, key: &str, p: &Path) -> Option<Secret> {
        let full = self.secret_path(p);
        match read_secret_file(&full) {
            Ok(s) if s.expose().is_empty() => {
                self.err(
                    key,
                    format!("the secret file {} is empty", full.display()),
                    "write the secret into the file",
                );
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                self.err(
                    key,
                    format!("cannot read the secret file {}: {e}", full.display()),
                    "create the file or correct the path (relative paths: $CREDENTIALS_DIRECTORY first, then the config file's directory)",
                );
                None
            }
        }
    }

    /// A secret written inline (`<key>.<name>`) or in a file (`<key>.<name>_file`), at most
    /// one of them; `None` when neither is set or on an error (recorded).
    fn secret(
        &mut self,
        key: &str,
        name: &str,
        inline: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Option<Secret> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.err(
                    format!("{key}.{name}_file"),
                    format!("both {name} and {name}_file are set"),
                    "keep one of them",
                );
                None
            }
            (Some(v), None) => Some(Secret::new(v.clone())),
            (None, Some(f)) => self.secret_file(&format!("{key}.{name}_file"), f),
            (None, None) => None,
        }
    }

    fn ca_file(&mut self, key: &str, p: &Path) -> Option<PathBuf> {
        let full = self.path(p);
        match crate::tls::load_pem_certs(&full) {
            Ok(_) => Some(full),
            Err(e) => {
                self.err(
                    key,
                    e.to_string(),
                    "point ca_file at a PEM file with your CA certificate(s)",
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: Option<&String>, default: Duration) -> Duration {
        let d = self.duration_or_zero(key, raw, default);
        if d.is_zero() && raw.is_some_and(|r| parse_duration(r).is_ok()) {
            self.err(key, "must be longer than zero", "write e.g. \"5s\"");
            return default;
        }
        d
    }

    /// A duration that may be zero; [`duration_or_zero`](Self::duration_or_zero) with an
    /// upper bound: `bounds` is (default, most).
    fn duration_at_most(
        &mut self,
        key: &str,
        raw: Option<&String>,
        (default, most): (Duration, Duration),
        fix: &str,
    ) -> Duration {
        let d = self.duration_or_zero(key, raw, default);
        if d > most {
            self.err(
                key,
                format!("must be at most {}", crate::timefmt::human_duration(most)),
                fix,
            );
            return default;
        }
        d
    }

    fn duration_or_zero(&mut self, key: &str, raw: Option<&String>, default: Duration) -> Duration {
        match raw.map(|r| parse_duration(r)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.err(
                    key,
                    e,
                    "write a duration such as \"500ms\", \"15s\", \"5m\", \"7d\"",
                );
                default
            }
        }
    }

    /// An `https://host[:port]/path` URL; plain http is refused with `why` in the fix.
    fn https_url(&mut self, key: &str, raw: &str, why: &str) -> Option<hyper::Uri> {
        match raw.parse::<hyper::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty()) => {
                Some(u)
            }
            Ok(u) if u.scheme_str() == Some("http") => {
                self.err(
                    key,
                    format!("{:?} is plain http", crate::redact::url(raw)),
                    format!("use an https:// URL: {why}"),
                );
                None
            }
            _ => {
                self.err(
                    key,
                    format!("{:?} is not an https URL", crate::redact::url(raw)),
                    "write https://host[:port]/path",
                );
                None
            }
        }
    }

    fn unique_name(&mut self, key: &str, seen: &mut HashSet<String>, name: &str, what: &str) {
        if name.trim().is_empty() {
            self.err(key, format!("the {what} name is empty"), "give it a name");
        } else if !seen.insert(name.to_string()) {
            self.err(
                key,
                format!("the {what} name {name:?} is used twice"),
                format!("give each {what} a unique name"),
            );
        }
    }
}

/// Validates a parsed file; `base` is the directory relative paths start from.
pub(crate) fn validate(
    raw: &RawConfig,
    base: &Path,
    file: &Path,
) -> Result<Settings, ConfigErrors> {
    let mut cx = Ctx {
        file,
        base,
        errs: Vec::new(),
    };
    if raw.gateway.data_dir.as_os_str().is_empty() {
        cx.err(
            "gateway.data_dir",
            "is empty",
            "set the directory for the store, e.g. \"/var/lib/roomhook\"",
        );
    }
    let data_dir = cx.path(&raw.gateway.data_dir);
    let max_store_bytes = match raw
        .gateway
        .max_store_bytes
        .as_deref()
        .map(super::units::parse_bytes)
    {
        None => 128 * 1024 * 1024,
        Some(Ok(b)) if b >= 1024 * 1024 => b,
        Some(Ok(_)) => {
            cx.err(
                "gateway.max_store_bytes",
                "must be at least 1MiB",
                "write e.g. \"64MiB\"",
            );
            0
        }
        Some(Err(e)) => {
            cx.err(
                "gateway.max_store_bytes",
                e,
                "write a size such as \"64MiB\" or \"1GiB\"",
            );
            0
        }
    };
    let admin_listen = raw.admin.listen.as_ref().and_then(|l| match l.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(
                "admin.listen",
                format!("{l:?} is not an address:port"),
                "write e.g. \"127.0.0.1:9750\"",
            );
            None
        }
    });

    let admin_token = cx.secret("admin", "token", &raw.admin.token, &raw.admin.token_file);
    let admin_console = raw.admin.console.unwrap_or(false);
    if admin_console && (raw.admin.listen.is_none() || admin_token.is_none()) {
        cx.err(
            "admin.console",
            "the console needs [admin] listen and [admin] token (it signs in with the token)",
            "set listen = \"127.0.0.1:9750\" and token_file = \"admin.token\", or remove console",
        );
    }
    let mut admin_trusted_proxies = Vec::new();
    for (i, a) in raw.admin.trusted_proxies.iter().flatten().enumerate() {
        match a.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => admin_trusted_proxies.push(ip),
            Err(_) => cx.err(
                format!("admin.trusted_proxies[{i}]"),
                format!("{a:?} is not an IP address"),
                "name the reverse proxy by the address it connects from, e.g. \"127.0.0.1\"",
            ),
        }
    }
    if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        cx.err(
            "admin.token",
            "is shorter than 16 characters",
            "use a long random token, e.g. from: head -c 24 /dev/urandom | base64",
        );
    }
    let g = &raw.gateway;
    let commit_interval = cx.duration_at_most(
        "gateway.commit_interval",
        g.commit_interval.as_ref(),
        (Duration::ZERO, Duration::from_secs(5)),
        "MQTT acks and RoomOS reads wait for the commit; write e.g. \"250ms\"",
    );
    let orphan_retention = cx.duration_or_zero(
        "gateway.orphan_retention",
        g.orphan_retention.as_ref(),
        Duration::from_secs(7 * 86_400),
    );
    let shutdown_grace = cx.duration_at_most(
        "gateway.shutdown_grace",
        g.shutdown_grace.as_ref(),
        (SHUTDOWN_GRACE, SHUTDOWN_GRACE_MAX),
        "write e.g. \"10s\" (with TimeoutStopSec of the systemd unit, 30s, leave 10s for the rest of the stop)",
    );
    let uplink_bytes_per_s = uplink_budget(&mut cx, g.uplink_bytes_per_s.as_ref());
    if raw.gateway.threads.is_some_and(|t| !(1..=64).contains(&t)) {
        cx.err(
            "gateway.threads",
            "must be 1 to 64",
            "leave it out (1 suits a small gateway) or write e.g. 2",
        );
    }
    if let Some(f) = &raw.log.filter {
        if let Err(e) = f.parse::<tracing_subscriber::filter::Targets>() {
            cx.err(
                "log.filter",
                format!("{f:?} is not a valid filter: {e}"),
                "write e.g. \"info\" or \"info,roomhook=debug\"",
            );
        }
    }
    let devices = std::sync::Arc::new(device_map(&mut cx, &raw.devices));
    let mut names = HashSet::new();
    let mqtt = raw
        .sources
        .mqtt
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let key = format!("sources.mqtt[{i}]");
            let mut m = mqtt_source(&mut cx, &mut names, &key, m)?;
            m.devices = devices.clone();
            Some(m)
        })
        .collect();

    let mut hook_names = HashSet::new();
    let webhooks: Vec<WebhookSettings> = raw
        .webhooks
        .iter()
        .enumerate()
        .filter_map(|(i, w)| webhook(&mut cx, &mut hook_names, &format!("webhooks[{i}]"), w))
        .collect();
    let roomos = raw
        .sources
        .roomos
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            roomos_source(
                &mut cx,
                &mut names,
                &format!("sources.roomos[{i}]"),
                r,
                &raw.webhooks,
            )
        })
        .collect();

    let gateway_id = fleet::gateway_id(&mut cx, raw.gateway.id.as_ref(), raw.fleet.is_some());
    let fleet = raw
        .fleet
        .as_ref()
        .and_then(|f| fleet::fleet(&mut cx, f, &gateway_id));
    if cx.errs.is_empty() {
        Ok(Settings {
            gateway_id,
            fleet,
            fleet_doc: None,
            fleet_webhooks: false,
            fleet_kept_refused: None,
            file: file.to_path_buf(),
            data_dir,
            org_id: raw.gateway.org_id.clone().unwrap_or_default(),
            max_store_bytes,
            admin_listen,
            control_socket: raw
                .admin
                .socket
                .as_ref()
                .map(|p| cx.path(p))
                .unwrap_or_else(|| cx.path(&raw.gateway.data_dir).join("roomhook.sock")),
            admin_token,
            admin_console,
            admin_trusted_proxies,
            threads: raw.gateway.threads.unwrap_or(1),
            commit_interval,
            orphan_retention,
            shutdown_grace,
            uplink_bytes_per_s,
            log_filter: raw.log.filter.clone(),
            log_format: raw.log.format,
            mqtt,
            roomos,
            webhooks,
        })
    } else {
        Err(ConfigErrors(cx.errs))
    }
}

/// The least `[gateway] uplink_bytes_per_s` (besides 0, no budget): a request is about
/// 0.7 KiB on the uplink, so less is under one request a second (a unit forgotten, most
/// likely: `20` for 20 KiB).
const UPLINK_MIN: u64 = 1024;

/// `[gateway] uplink_bytes_per_s`: a number of bytes or a size (`"20KiB"`); 0 or unset: no
/// budget.
fn uplink_budget(cx: &mut Ctx<'_>, raw: Option<&toml::Value>) -> Option<u64> {
    const KEY: &str = "gateway.uplink_bytes_per_s";
    let bytes = match raw? {
        toml::Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        toml::Value::String(s) => super::units::parse_bytes(s),
        other => Err(format!("{other} is not a number of bytes")),
    };
    match bytes {
        Ok(0) => None,
        Ok(b) if b >= UPLINK_MIN => Some(b),
        Ok(b) => {
            cx.err(
                KEY,
                format!("{b} bytes per second is less than one request a second (a request is about 0.7 KiB)"),
                "write the budget with its unit, e.g. \"20KiB\" (or 0 for no budget)",
            );
            None
        }
        Err(e) => {
            cx.err(
                KEY,
                e,
                "write bytes per second as a number (20480) or a size such as \"20KiB\" or \"1MB\"",
            );
            None
        }
    }
}

fn did_you_mean(near: &[&str]) -> String {
    if near.is_empty() {
        "see the catalog in README.md for the approved names".to_string()
    } else {
        format!(
            "did you mean {}?",
            near.iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    }
}

fn selection(cx: &mut Ctx<'_>, key: &str, patterns: &[String], kind: Kind) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let generic = catalog::generic_path(p);
        if catalog::expand(&generic, kind).is_empty() {
            let what = match kind {
                Kind::Status => "status",
                Kind::Event => "event",
            };
            let other = match kind {
                Kind::Status => Kind::Event,
                Kind::Event => Kind::Status,
            };
            let fix = if !catalog::expand(&generic, other).is_empty() {
                format!(
                    "{p:?} is an {}; move it to {}",
                    if other == Kind::Event {
                        "event"
                    } else {
                        "status"
                    },
                    if other == Kind::Event {
                        "events"
                    } else {
                        "statuses"
                    }
                )
            } else {
                did_you_mean(&catalog::suggest(p, Some(kind)))
            };
            cx.err(
                format!("{key}[{i}]"),
                format!("{p:?} is not an approved {what} (wildcards only as a last \".*\")"),
                fix,
            );
        } else {
            out.push(generic);
        }
    }
    out
}
