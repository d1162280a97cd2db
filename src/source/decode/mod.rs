//! Payload decoders of MQTT subscriptions (`format = …`). Each format reads a message into
//! a [`Reading`]: the sensor's own id, its properties, its timestamp — or says the message
//! is not sensor data (availability, bridge state, commands). What is common lives here:
//! properties to catalog paths (the format's defaults, the config's overrides), value
//! transforms, device and workspace (topic levels, payload fields, the `[[devices]]`
//! table), and the reasons a payload (or part of it) is rejected.

pub(crate) mod json;
pub(crate) mod meraki_mt;
pub(crate) mod meraki_mv;
pub(crate) mod zigbee2mqtt;

use crate::catalog::CoerceError;
use crate::config::{DeviceMap, FieldMap, Format, SubscriptionSettings};
use crate::event::{Event, MAX_ID_BYTES};
use serde_json::Value;

/// Why (part of) a payload was rejected: the `reason` label of decode errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON document.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not the shape the format has (an array where an object belongs, …).
    #[error("payload is not what this format sends: {0}")]
    WrongType(String),
    /// No device id: the template names a missing topic level, or the field is absent.
    #[error("no device id for topic {0:?}")]
    NoDevice(String),
    /// None of the mapped (or known) fields is in the payload.
    #[error("none of the mapped fields is in the payload")]
    NoKnownField,
    /// A device id, workspace id or path over [`MAX_ID_BYTES`].
    #[error("{what} of {len} bytes (at most {MAX_ID_BYTES})")]
    TooLong {
        /// `device id`, `workspace id` or `path`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A value does not fit its catalog type.
    #[error("{path}: {err}")]
    BadValue {
        /// The catalog path.
        path: String,
        /// Why.
        err: CoerceError,
    },
}

impl DecodeError {
    /// Every metric label.
    pub const LABELS: [&'static str; 6] = [
        "not_json",
        "wrong_type",
        "no_device",
        "no_known_field",
        "too_long",
        "bad_value",
    ];

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::WrongType(_) => "wrong_type",
            DecodeError::NoDevice(_) => "no_device",
            DecodeError::NoKnownField => "no_known_field",
            DecodeError::TooLong { .. } => "too_long",
            DecodeError::BadValue { .. } => "bad_value",
        }
    }
}

/// What one payload gave: events, and problems with some of its fields.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Good events.
    pub events: Vec<Event>,
    /// Rejected fields (or the whole payload).
    pub errors: Vec<DecodeError>,
}

impl Decoded {
    fn error(e: DecodeError) -> Self {
        Decoded {
            events: Vec::new(),
            errors: vec![e],
        }
    }
}

/// What a format found in one message.
#[derive(Debug, Default)]
pub(crate) struct Reading {
    /// The sensor's own id (friendly name, MAC, camera serial), when the format has one.
    pub(crate) sensor: Option<String>,
    /// Property (or JSON pointer) → raw value, in payload order.
    pub(crate) values: Vec<(String, Value)>,
    /// When the sensor measured it (unix ms), if the payload says.
    pub(crate) ts_ms: Option<i64>,
    /// Properties the format knows but that map to nothing (battery, link quality, …).
    pub(crate) known: usize,
    /// The parsed payload (for `device_field` / `workspace_field`).
    pub(crate) doc: Value,
}

/// What a format made of a message.
#[derive(Debug)]
pub(crate) enum Read {
    /// Sensor data.
    Reading(Reading),
    /// Recognised, and not sensor data (availability, bridge state, commands).
    NotData,
    /// Rejected.
    Rejected(DecodeError),
}

/// Parses a payload as one JSON object.
pub(crate) fn object(payload: &[u8]) -> Result<Value, DecodeError> {
    let doc: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    if !doc.is_object() {
        return Err(DecodeError::WrongType(format!(
            "a JSON {} where an object belongs",
            kind_of(&doc)
        )));
    }
    Ok(doc)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A timestamp as sensors write it: RFC 3339 text, or a number of epoch seconds,
/// milliseconds, microseconds or nanoseconds (told apart by size). `None` when it is
/// neither (then the receive time is used).
pub(crate) fn timestamp(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => {
            let f = n.as_f64()?;
            let ms = if f > 1.0e17 {
                f / 1.0e6
            } else if f > 1.0e14 {
                f / 1.0e3
            } else if f > 1.0e11 {
                f
            } else if f > 1.0e8 {
                f * 1000.0
            } else {
                return None;
            };
            Some(ms as i64)
        }
        Value::String(s) => {
            if let Ok(t) =
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            {
                return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
            }
            s.parse::<f64>()
                .ok()
                .and_then(|f| timestamp(&Value::from(f)))
        }
        _ => None,
    }
}

/// The first of `ts`, `time`, `timestamp`, `last_seen` in an object that is a timestamp.
pub(crate) fn payload_time(doc: &Value) -> Option<i64> {
    ["ts", "time", "timestamp", "last_seen"]
        .iter()
        .find_map(|k| doc.get(*k).and_then(timestamp))
}

/// Decodes one message of a subscription into events.
pub fn decode(
    sub: &SubscriptionSettings,
    devices: &DeviceMap,
    topic: &str,
    payload: &[u8],
    now_ms: i64,
) -> Decoded {
    let (read, map) = match &sub.format {
        Format::Json(map) => (json::read(map, payload), map),
        Format::Zigbee2Mqtt {
            fields,
            base_levels,
        } => (zigbee2mqtt::read(topic, *base_levels, payload), fields),
        Format::MerakiMt(map) => (meraki_mt::read(topic, payload), map),
        Format::MerakiMv {
            fields,
            raw_detections,
        } => (meraki_mv::read(topic, payload, *raw_detections), fields),
    };
    match read {
        Read::NotData => Decoded::default(),
        Read::Rejected(e) => Decoded::error(e),
        Read::Reading(r) => to_events(sub, map, devices, topic, r, now_ms),
    }
}

/// A text field of the payload (a number counts as its text).
fn field_text(doc: &Value, pointer: &str) -> Option<String> {
    match doc.pointer(pointer)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The refusal of an id or path over [`MAX_ID_BYTES`].
fn too_long(what: &'static str, s: &str) -> Option<DecodeError> {
    (s.len() > MAX_ID_BYTES).then_some(DecodeError::TooLong { what, len: s.len() })
}

/// The mapping step every format shares.
fn to_events(
    sub: &SubscriptionSettings,
    map: &[FieldMap],
    devices: &DeviceMap,
    topic: &str,
    r: Reading,
    now_ms: i64,
) -> Decoded {
    let mut out = Decoded::default();
    // The id the sensor goes by: a payload field, the device template, or its own id.
    let id = match (&sub.device_field, &sub.device) {
        (Some(p), _) => field_text(&r.doc, p),
        (None, Some(t)) => t.render(topic),
        (None, None) => r.sensor.clone(),
    };
    let Some(id) = id else {
        out.errors.push(DecodeError::NoDevice(topic.to_string()));
        return out;
    };
    if let Some(e) = too_long("device id", &id) {
        out.errors.push(e);
        return out;
    }
    // The [[devices]] table names devices (and workspaces) by that id or the sensor's.
    let named = devices
        .get(&id)
        .or_else(|| r.sensor.as_deref().and_then(|s| devices.get(s)));
    let device = named.map_or(id, |d| d.device.clone());
    let workspace = named
        .and_then(|d| d.workspace.clone())
        .or_else(|| {
            sub.workspace_field
                .as_ref()
                .and_then(|p| field_text(&r.doc, p))
        })
        .or_else(|| sub.workspace.as_ref().and_then(|w| w.render(topic)));
    if let Some(e) = workspace
        .as_deref()
        .and_then(|w| too_long("workspace id", w))
    {
        out.errors.push(e);
        return out;
    }
    // A sensor clock far ahead (or a time before 2001) is not believed: receive time.
    let ts_ms = r
        .ts_ms
        .filter(|t| *t > 978_307_200_000 && *t <= now_ms.saturating_add(86_400_000))
        .unwrap_or(now_ms);
    let mut found = r.known > 0;
    for (key, raw) in &r.values {
        let Some(f) = map.iter().find(|f| &f.key == key) else {
            continue;
        };
        found = true;
        let Some(path) = f.path.render(topic) else {
            out.errors.push(DecodeError::NoDevice(topic.to_string()));
            continue;
        };
        if let Some(e) = too_long("path", &path) {
            out.errors.push(e);
            continue;
        }
        let value = f.transform.apply(raw);
        match f.entry.value.coerce(&value) {
            Ok(value) => out.events.push(Event {
                device: device.clone(),
                workspace: workspace.clone(),
                path,
                kind: f.entry.kind,
                value,
                ts_ms,
                full_sync: false,
                more: Vec::new(),
            }),
            Err(err) => out.errors.push(DecodeError::BadValue { path, err }),
        }
    }
    if !found {
        out.errors.push(DecodeError::NoKnownField);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_forms_sensors_send() {
        let want = 1_764_460_800_000; // 2025-11-30T00:00:00Z
        assert_eq!(timestamp(&Value::from("2025-11-30T00:00:00Z")), Some(want));
        assert_eq!(
            timestamp(&Value::from("2025-11-30T01:00:00.000+01:00")),
            Some(want)
        );
        assert_eq!(timestamp(&Value::from(want)), Some(want));
        assert_eq!(timestamp(&Value::from(want / 1000)), Some(want));
        assert_eq!(timestamp(&Value::from(1_764_460_800.5)), Some(want + 500));
        assert_eq!(timestamp(&Value::from(want * 1000)), Some(want));
        assert_eq!(timestamp(&Value::from(want * 1_000_000)), Some(want));
        assert_eq!(timestamp(&Value::from("soon")), None);
        assert_eq!(timestamp(&Value::from(42)), None);
    }
}
