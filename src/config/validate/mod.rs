//! Turns the file's model into [`Settings`]: checks every key, reads secret and CA files,
//! and collects every problem (with the key and the fix) instead of stopping at the first.

use super::secret::read_secret_file;
use super::units::parse_duration;
use super::*;
use crate::catalog::{self, Kind};
use crate::value::devices::DeviceSelector;
use std::collections::HashSet;

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
pub fn validate(raw: &RawConfig, base: &Path, file: &Path) -> Result<Settings, ConfigErrors> {
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

    if cx.errs.is_empty() {
        Ok(Settings {
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
            threads: raw.gateway.threads.unwrap_or(1),
            commit_interval,
            orphan_retention,
            shutdown_grace,
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

fn mqtt_source(
    cx: &mut Ctx<'_>,
    names: &mut HashSet<String>,
    key: &str,
    m: &RawMqtt,
) -> Option<MqttSettings> {
    let before = cx.errs.len();
    cx.unique_name(&format!("{key}.name"), names, &m.name, "source");
    let url_key = format!("{key}.url");
    // A real URL parser: `mqtt://user:pw@host` must not become a host name with the
    // password in it. User-info in the URL is taken as the credentials.
    let parsed = url::Url::parse(&m.url).ok();
    let tls = match parsed.as_ref().map(|u| u.scheme()) {
        Some("mqtts") => true,
        Some("mqtt") => false,
        _ => {
            cx.err(
                &url_key,
                format!("{:?} is not an MQTT URL", crate::redact::url(&m.url)),
                "write mqtt://host:1883, or mqtts://host:8883 for TLS",
            );
            false
        }
    };
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str())
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = parsed
        .as_ref()
        .and_then(|u| u.port())
        .unwrap_or(if tls { 8883 } else { 1883 });
    if host.is_empty() && cx.errs.len() == before {
        cx.err(&url_key, "has no host", "write mqtt://host:port");
    }
    let decode = |t: &str| {
        percent_encoding::percent_decode_str(t)
            .decode_utf8_lossy()
            .to_string()
    };
    let url_user = parsed
        .as_ref()
        .map(|u| decode(u.username()))
        .filter(|u| !u.is_empty());
    let url_password = parsed.as_ref().and_then(|u| u.password()).map(decode);
    if url_user.is_some()
        && (m.username.is_some() || m.password.is_some() || m.password_file.is_some())
    {
        cx.err(
            &url_key,
            "has credentials in it, and username/password are set too",
            "keep one: prefer username and password_file (the URL is shown in logs, redacted)",
        );
    }
    let ca_file = m
        .ca_file
        .as_ref()
        .and_then(|p| cx.ca_file(&format!("{key}.ca_file"), p));
    if m.ca_file.is_some() && !tls {
        cx.err(
            format!("{key}.ca_file"),
            "ca_file is set but the URL is mqtt:// (no TLS)",
            "use an mqtts:// URL, or remove ca_file",
        );
    }
    let password = cx
        .secret(key, "password", &m.password, &m.password_file)
        .or(url_password.map(Secret::new));
    let username = m.username.clone().or(url_user);
    let credentials = match (&username, password) {
        (Some(u), p) => Some((u.clone(), p.unwrap_or_else(|| Secret::new("")))),
        (None, Some(_)) => {
            cx.err(
                format!("{key}.username"),
                "a password is set without a username",
                "add username, or remove the password",
            );
            None
        }
        (None, None) => None,
    };
    let keep_alive = cx.duration(
        &format!("{key}.keep_alive"),
        m.keep_alive.as_ref(),
        Duration::from_secs(30),
    );
    if keep_alive < Duration::from_secs(5) {
        cx.err(
            format!("{key}.keep_alive"),
            "must be at least 5s",
            "write e.g. \"30s\"",
        );
    }
    let max_payload = match m.max_payload.as_deref().map(super::units::parse_bytes) {
        None => 1024 * 1024,
        Some(Ok(b)) if (1024..=256 * 1024 * 1024).contains(&b) => b as usize,
        Some(Ok(_)) => {
            cx.err(
                format!("{key}.max_payload"),
                "must be 1KiB to 256MiB",
                "write e.g. \"1MiB\"",
            );
            0
        }
        Some(Err(e)) => {
            cx.err(
                format!("{key}.max_payload"),
                e,
                "write a size such as \"1MiB\"",
            );
            0
        }
    };
    let client_id = m
        .client_id
        .clone()
        .unwrap_or_else(|| format!("roomhook-{}", m.name));
    if client_id.is_empty() || client_id.len() > 256 {
        cx.err(
            format!("{key}.client_id"),
            "must be 1 to 256 characters",
            "use a fixed id unique to this gateway, e.g. \"roomhook-gw1\"",
        );
    }
    if m.subscriptions.is_empty() {
        cx.err(
            format!("{key}.subscriptions"),
            "the source has no subscriptions",
            "add a [[sources.mqtt.subscriptions]] table with topic, device and fields",
        );
    }
    let subscriptions = m
        .subscriptions
        .iter()
        .enumerate()
        .filter_map(|(i, s)| subscription(cx, &format!("{key}.subscriptions[{i}]"), s))
        .collect();
    (cx.errs.len() == before).then(|| MqttSettings {
        name: m.name.clone(),
        host,
        port,
        tls: tls.then_some(TlsTrust {
            ca_file,
            client_identity: None,
        }),
        client_id,
        credentials,
        keep_alive,
        max_payload,
        subscriptions,
        devices: Default::default(),
    })
}

/// The `[[devices]]` table.
fn device_map(cx: &mut Ctx<'_>, raw: &[RawDevice]) -> DeviceMap {
    let mut map = DeviceMap::default();
    for (i, d) in raw.iter().enumerate() {
        let key = format!("devices[{i}]");
        if d.sensor.trim().is_empty() || d.device.trim().is_empty() {
            cx.err(
                &key,
                "sensor and device must both be set",
                "write sensor = \"<friendly name, MAC or serial>\" and device = \"<device id>\"",
            );
            continue;
        }
        let named = NamedDevice {
            device: d.device.clone(),
            workspace: d.workspace.clone(),
        };
        if !map.insert(&d.sensor, named) {
            cx.err(
                format!("{key}.sensor"),
                format!("the sensor {:?} is named twice", d.sensor),
                "keep one [[devices]] entry per sensor (several sensors may name one device)",
            );
        }
    }
    map
}

/// Parses a SHA-256 fingerprint: 64 hex digits, any case, colons (or spaces) optional.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} is not a hex digit"));
    }
    if hex.len() != 64 {
        return Err(format!(
            "has {} hex digits ({} bytes); a SHA-256 fingerprint has 64 (32 bytes)",
            hex.len(),
            hex.len() / 2
        ));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn roomos_source(
    cx: &mut Ctx<'_>,
    names: &mut HashSet<String>,
    key: &str,
    r: &RawRoomos,
    webhooks: &[RawWebhook],
) -> Option<RoomosSettings> {
    let before = cx.errs.len();
    cx.unique_name(&format!("{key}.name"), names, &r.name, "source");
    let url_key = format!("{key}.url");
    let plaintext_ok = r.allow_plaintext.unwrap_or(false);
    let uri = r.url.parse::<hyper::Uri>().ok();
    let scheme = uri.as_ref().and_then(|u| u.scheme_str()).unwrap_or("");
    let host = uri
        .as_ref()
        .and_then(|u| u.host())
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let tls = match scheme {
        "wss" => true,
        "ws" if plaintext_ok => false,
        "ws" => {
            cx.err(
                &url_key,
                format!(
                    "{:?} is plain ws:// (credentials and data unencrypted)",
                    crate::redact::url(&r.url)
                ),
                "use wss://<device>/ws (device: xConfiguration NetworkServices HTTP Mode: HTTPS), or set allow_plaintext = true for a lab",
            );
            false
        }
        _ => {
            cx.err(
                &url_key,
                format!(
                    "{:?} is not a RoomOS WebSocket URL",
                    crate::redact::url(&r.url)
                ),
                "write wss://<device address>/ws",
            );
            true
        }
    };
    if host.is_empty() && cx.errs.len() == before {
        cx.err(&url_key, "has no host", "write wss://<device address>/ws");
    }
    if uri
        .as_ref()
        .and_then(|u| u.authority())
        .is_some_and(|a| a.as_str().contains('@'))
    {
        cx.err(
            &url_key,
            "has credentials in it (they would not be used, and URLs are logged)",
            "write wss://<device address>/ws and set username and password_file",
        );
    }
    let port = uri
        .as_ref()
        .and_then(|u| u.port_u16())
        .unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .as_ref()
        .map(|u| u.path_and_query().map_or("/ws", |p| p.as_str()))
        .filter(|p| *p != "/")
        .unwrap_or("/ws")
        .to_string();
    let pin = r.pin_sha256.as_ref().and_then(|p| match parse_pin(p) {
        Ok(pin) => Some(pin),
        Err(e) => {
            cx.err(
                format!("{key}.pin_sha256"),
                format!("{p:?} {e}"),
                format!(
                    "paste the fingerprint that `roomhook source test {} -c <file>` prints",
                    r.name
                ),
            );
            None
        }
    });
    let ca = r
        .ca_file
        .as_ref()
        .and_then(|p| cx.ca_file(&format!("{key}.ca_file"), p));
    let trust = match (tls, pin, ca) {
        (false, _, _) => {
            if plaintext_ok && (r.pin_sha256.is_some() || r.ca_file.is_some()) {
                cx.err(
                    format!("{key}.pin_sha256"),
                    "pin_sha256/ca_file are set but the URL is plain ws://",
                    "use a wss:// URL, or remove pin_sha256 and ca_file",
                );
            }
            None
        }
        (true, Some(pin), None) => Some(DeviceTrust::Pin(pin)),
        (true, None, Some(ca)) => Some(DeviceTrust::Ca(ca)),
        (true, Some(_), Some(_)) => {
            cx.err(
                format!("{key}.pin_sha256"),
                "both pin_sha256 and ca_file are set",
                "keep one: pin_sha256 for the device's own (self-signed) certificate, ca_file for one your CA issued",
            );
            None
        }
        (true, None, None) => {
            if r.pin_sha256.is_none() && r.ca_file.is_none() {
                cx.err(
                    format!("{key}.pin_sha256"),
                    "the device's certificate cannot be trusted: neither pin_sha256 nor ca_file is set",
                    format!(
                        "devices ship self-signed certificates: run `roomhook source test {} -c <file>` and paste the SHA-256 it prints as pin_sha256, or set ca_file",
                        r.name
                    ),
                );
            }
            None
        }
    };
    if r.username.trim().is_empty() {
        cx.err(
            format!("{key}.username"),
            "is empty",
            "create a local user on the device (role Integrator) and name it here",
        );
    } else if r.username.contains(':') {
        cx.err(
            format!("{key}.username"),
            "contains ':', which Basic auth cannot carry",
            "choose a user name without ':'",
        );
    }
    if r.password.is_none() && r.password_file.is_none() {
        cx.err(
            format!("{key}.password_file"),
            "no password is set",
            "set password_file (or password) to the device user's password",
        );
    }
    let password = cx.secret(key, "password", &r.password, &r.password_file);
    let auth_mode = match r.auth_mode.as_deref() {
        None | Some("header") => DeviceAuthMode::Header,
        Some("subprotocol") => DeviceAuthMode::Subprotocol,
        Some(other) => {
            cx.err(
                format!("{key}.auth_mode"),
                format!("unknown value {other:?}"),
                "write \"header\" (Authorization: Basic, default) or \"subprotocol\"",
            );
            DeviceAuthMode::Header
        }
    };
    for (k, v) in [("device", &r.device), ("workspace", &r.workspace)] {
        if v.as_ref().is_some_and(|v| v.trim().is_empty()) {
            cx.err(
                format!("{key}.{k}"),
                "is empty",
                format!("remove it or write the {k} id"),
            );
        }
    }
    // Default: what the enabled webhooks select (union, array ids generic).
    let union = |f: fn(&RawWebhook) -> &Vec<String>| {
        let mut out: Vec<String> = Vec::new();
        for w in webhooks.iter().filter(|w| w.enabled != Some(false)) {
            for p in f(w).iter().map(|p| catalog::generic_path(p)) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    };
    let statuses = match &r.statuses {
        Some(s) => selection(cx, &format!("{key}.statuses"), s, Kind::Status),
        None => union(|w| &w.statuses),
    };
    let events = match &r.events {
        Some(e) => selection(cx, &format!("{key}.events"), e, Kind::Event),
        None => union(|w| &w.events),
    };
    let keep_alive = cx.duration(
        &format!("{key}.keep_alive"),
        r.keep_alive.as_ref(),
        Duration::from_secs(30),
    );
    if keep_alive < Duration::from_secs(1) {
        cx.err(
            format!("{key}.keep_alive"),
            "must be at least 1s",
            "write e.g. \"30s\"",
        );
    }
    let max_frame = match r.max_frame.as_deref().map(super::units::parse_bytes) {
        None => 1024 * 1024,
        Some(Ok(b)) if (4096..=64 * 1024 * 1024).contains(&b) => b as usize,
        Some(Ok(_)) => {
            cx.err(
                format!("{key}.max_frame"),
                "must be 4KiB to 64MiB",
                "write e.g. \"1MiB\"",
            );
            0
        }
        Some(Err(e)) => {
            cx.err(
                format!("{key}.max_frame"),
                e,
                "write a size such as \"1MiB\"",
            );
            0
        }
    };
    if cx.errs.len() != before {
        return None;
    }
    Some(RoomosSettings {
        name: r.name.clone(),
        url: crate::redact::url(&r.url),
        host,
        port,
        path,
        trust,
        username: r.username.clone(),
        password: password?,
        auth_mode,
        device: r.device.clone(),
        workspace: r.workspace.clone(),
        statuses,
        events,
        keep_alive,
        max_frame,
    })
}

fn subscription(cx: &mut Ctx<'_>, key: &str, s: &RawSubscription) -> Option<SubscriptionSettings> {
    use crate::value::formats;
    let before = cx.errs.len();
    let filter = match TopicFilter::parse(&s.topic) {
        Ok(f) => f,
        Err(e) => {
            cx.err(
                format!("{key}.topic"),
                format!("{:?} is not a valid MQTT filter: {e}", s.topic),
                "use '/' between levels, '+' for one whole level, '#' only as the last level",
            );
            return None;
        }
    };
    let template = |cx: &mut Ctx<'_>, what: &str, raw: &str| {
        if raw.trim().is_empty() {
            cx.err(
                format!("{key}.{what}"),
                "is empty",
                "write a literal id or \"{1}\" for topic level 1, or leave it out",
            );
            return None;
        }
        Template::parse(raw, &filter)
            .map_err(|e| {
                cx.err(
                    format!("{key}.{what}"),
                    format!("{raw:?}: {e}"),
                    "write a literal id or {n} with n a level of the topic filter (0-based)",
                )
            })
            .ok()
    };
    let device = s.device.as_ref().and_then(|d| template(cx, "device", d));
    let workspace = s
        .workspace
        .as_ref()
        .and_then(|w| template(cx, "workspace", w));
    for (what, pointer) in [
        ("device_field", &s.device_field),
        ("workspace_field", &s.workspace_field),
    ] {
        if let Some(p) = pointer.as_ref().filter(|p| !p.starts_with('/')) {
            cx.err(
                format!("{key}.{what}"),
                format!("{p:?} is not a JSON pointer"),
                format!("write \"/{p}\" (JSON pointers start with '/')"),
            );
        }
    }
    let builtin = |defaults: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut m: Vec<(String, String)> = defaults
            .iter()
            .filter(|(k, _)| !s.fields.contains_key(*k))
            .map(|(k, p)| (k.to_string(), p.to_string()))
            .collect();
        m.extend(
            s.fields
                .iter()
                .filter(|(_, p)| !p.is_empty())
                .map(|(k, p)| (k.clone(), p.clone())),
        );
        m
    };
    let pairs: Vec<(String, String)> = match s.format.as_str() {
        "json" => {
            if s.fields.is_empty() {
                cx.err(
                    format!("{key}.fields"),
                    "the json format needs at least one field",
                    "add [sources.mqtt.subscriptions.fields] with \"/pointer\" = \"Catalog.Path\"",
                );
            }
            if s.device.is_none() && s.device_field.is_none() {
                cx.err(
                    format!("{key}.device"),
                    "the json format needs a device id",
                    "write device = \"{1}\" (a topic level), a literal id, or device_field = \"/pointer\"",
                );
            }
            for pointer in s.fields.keys() {
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    cx.err(
                        format!("{key}.fields.{pointer}"),
                        format!("{pointer:?} is not a JSON pointer"),
                        format!("write \"/{pointer}\" (JSON pointers start with '/')"),
                    );
                }
            }
            s.fields
                .iter()
                .filter(|(p, _)| p.is_empty() || p.starts_with('/'))
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect()
        }
        "zigbee2mqtt" => builtin(formats::ZIGBEE2MQTT),
        "meraki-mt" => builtin(formats::MERAKI_MT),
        "meraki-mv" => builtin(formats::MERAKI_MV),
        other => {
            cx.err(
                format!("{key}.format"),
                format!("unknown format {other:?}"),
                "use \"json\", \"zigbee2mqtt\", \"meraki-mt\" or \"meraki-mv\"",
            );
            Vec::new()
        }
    };
    if let Some(base) = &s.base_topic {
        let starts = s.topic == *base || s.topic.starts_with(&format!("{base}/"));
        if s.format != "zigbee2mqtt" {
            cx.err(
                format!("{key}.base_topic"),
                "only the zigbee2mqtt format has a base topic",
                "remove base_topic, or set format = \"zigbee2mqtt\"",
            );
        } else if base.is_empty() || base.contains(['+', '#']) || !starts {
            cx.err(
                format!("{key}.base_topic"),
                format!("{base:?} is not the start of the topic filter {:?}", s.topic),
                "write Zigbee2MQTT's base_topic setting, e.g. \"site-7/zigbee2mqtt\" with topic = \"site-7/zigbee2mqtt/#\"",
            );
        }
    }
    if s.raw_detections.is_some() && s.format != "meraki-mv" {
        cx.err(
            format!("{key}.raw_detections"),
            "only the meraki-mv format has raw detections",
            "remove raw_detections, or set format = \"meraki-mv\"",
        );
    }
    for t in s.transforms.keys() {
        if !pairs.iter().any(|(k, _)| k == t) {
            cx.err(
                format!("{key}.transforms.{t}"),
                format!("{t:?} is not a mapped field of this subscription"),
                "name a key of fields (or of the format's defaults, see README.md)",
            );
        }
    }
    let mut maps = Vec::new();
    for (k, path) in pairs {
        let fkey = format!("{key}.fields.{k}");
        let template = match Template::parse(&path, &filter) {
            Ok(t) => t,
            Err(e) => {
                cx.err(
                    &fkey,
                    format!("{path:?}: {e}"),
                    "use {n} only inside [..] array ids",
                );
                continue;
            }
        };
        let Some(entry) = catalog::lookup(&path) else {
            let near = catalog::suggest(&path, None);
            cx.err(
                &fkey,
                format!("{path:?} is not in the catalog of approved statuses and events"),
                did_you_mean(&near),
            );
            continue;
        };
        let transform = match s.transforms.get(&k) {
            Some(t) => Transform {
                map: t.map.clone(),
                scale: t.scale,
                offset: t.offset,
                round: t.round,
            },
            // Whole numbers for integer paths (sensors send 41.5 % humidity).
            None if entry.value == catalog::ValueType::Integer && s.format != "json" => {
                Transform::round(0)
            }
            None => Transform::default(),
        };
        maps.push(FieldMap {
            key: k,
            path: template,
            entry,
            transform,
        });
    }
    let format = match s.format.as_str() {
        "zigbee2mqtt" => Format::Zigbee2Mqtt {
            fields: maps,
            base_levels: s.base_topic.as_ref().map_or(1, |b| b.split('/').count()),
        },
        "meraki-mt" => Format::MerakiMt(maps),
        "meraki-mv" => Format::MerakiMv {
            fields: maps,
            raw_detections: s.raw_detections.unwrap_or(false),
        },
        _ => Format::Json(maps),
    };
    if cx.errs.len() != before {
        return None;
    }
    Some(SubscriptionSettings {
        filter,
        format,
        device,
        workspace,
        device_field: s.device_field.clone(),
        workspace_field: s.workspace_field.clone(),
    })
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

fn webhook(
    cx: &mut Ctx<'_>,
    names: &mut HashSet<String>,
    key: &str,
    w: &RawWebhook,
) -> Option<WebhookSettings> {
    let before = cx.errs.len();
    cx.unique_name(&format!("{key}.name"), names, &w.name, "webhook");
    let url_key = format!("{key}.url");
    let url = match w.url.parse::<hyper::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty()) => {
            Some(u)
        }
        Ok(u) if u.scheme_str() == Some("http") => {
            cx.err(
                &url_key,
                format!("{:?} is plain http", crate::redact::url(&w.url)),
                "use an https:// URL: webhooks are only sent over TLS with a trusted certificate",
            );
            None
        }
        _ => {
            cx.err(
                &url_key,
                format!("{:?} is not an https URL", crate::redact::url(&w.url)),
                "write https://host[:port]/path",
            );
            None
        }
    };
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
        signer,
        headers,
        filters,
    })
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
    let batch_max_bytes = match w.batch_max_bytes.as_deref().map(super::units::parse_bytes) {
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
