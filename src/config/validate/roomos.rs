//! `[[sources.roomos]]`: the device's wss:// URL, how its certificate is trusted (pin or
//! CA), the local user, and what it subscribes to; and the `[[devices]]` table.

use super::{selection, Ctx};
use crate::catalog::{self, Kind};
use crate::config::units::parse_bytes;
use crate::config::{
    DeviceAuthMode, DeviceMap, DeviceTrust, NamedDevice, RawDevice, RawRoomos, RawWebhook,
    RoomosSettings,
};
use std::collections::HashSet;
use std::time::Duration;

/// The `[[devices]]` table.
pub(super) fn device_map(cx: &mut Ctx<'_>, raw: &[RawDevice]) -> DeviceMap {
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
pub(crate) fn parse_pin(text: &str) -> Result<[u8; 32], String> {
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

pub(super) fn roomos_source(
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
    let max_frame = match r.max_frame.as_deref().map(parse_bytes) {
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
