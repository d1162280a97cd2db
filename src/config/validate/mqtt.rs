//! `[[sources.mqtt]]`: the broker URL, credentials and TLS, and each subscription's topic
//! filter, payload format and mapping of fields onto the catalog.

use super::{did_you_mean, Ctx};
use crate::catalog;
use crate::config::units::parse_bytes;
use crate::config::{
    FieldMap, Format, MqttSettings, RawMqtt, RawSubscription, Secret, SubscriptionSettings,
    TlsTrust,
};
use crate::value::topic::{Template, TopicFilter};
use crate::value::transform::Transform;
use std::collections::HashSet;
use std::time::Duration;

pub(super) fn mqtt_source(
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
    let max_payload = match m.max_payload.as_deref().map(parse_bytes) {
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
