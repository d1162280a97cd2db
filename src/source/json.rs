//! The generic JSON decoder: a map from JSON pointers in the payload to catalog paths, the
//! device and workspace taken from topic levels, values coerced to the catalog type.

use crate::catalog::CoerceError;
use crate::config::{FieldMap, SubscriptionSettings};
use crate::event::Event;
use serde_json::Value;

/// Why (part of) a payload was rejected: the `reason` label of decode errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON document.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The device id template names a topic level the topic does not have.
    #[error("topic {0:?} has no level for the device id")]
    NoDevice(String),
    /// None of the configured pointers is in the payload.
    #[error("none of the configured fields is in the payload")]
    NoKnownField,
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
    pub const LABELS: [&'static str; 4] = ["not_json", "no_device", "no_known_field", "bad_value"];

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NoDevice(_) => "no_device",
            DecodeError::NoKnownField => "no_known_field",
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

/// Decodes one message with the generic JSON decoder.
pub fn decode(
    sub: &SubscriptionSettings,
    fields: &[FieldMap],
    topic: &str,
    payload: &[u8],
    now_ms: i64,
) -> Decoded {
    let mut out = Decoded::default();
    let doc: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            out.errors.push(DecodeError::NotJson(e.to_string()));
            return out;
        }
    };
    let Some(device) = sub.device.render(topic) else {
        out.errors.push(DecodeError::NoDevice(topic.to_string()));
        return out;
    };
    let workspace = sub.workspace.as_ref().and_then(|w| w.render(topic));
    let mut found = false;
    for f in fields {
        let Some(raw) = doc.pointer(&f.pointer) else {
            continue;
        };
        found = true;
        let Some(path) = f.path.render(topic) else {
            out.errors.push(DecodeError::NoDevice(topic.to_string()));
            continue;
        };
        match f.entry.value.coerce(raw) {
            Ok(value) => out.events.push(Event {
                device: device.clone(),
                workspace: workspace.clone(),
                path,
                kind: f.entry.kind,
                value,
                ts_ms: now_ms,
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
    use crate::catalog::Kind;
    use crate::config::Format;

    fn sub() -> SubscriptionSettings {
        let text = r#"
[gateway]
data_dir = "d"
[[sources.mqtt]]
name = "s"
url = "mqtt://127.0.0.1:1883"
[[sources.mqtt.subscriptions]]
topic = "bench/+/status"
device = "{1}"
workspace = "lobby"
[sources.mqtt.subscriptions.fields]
"/people" = "RoomAnalytics.PeopleCount.Current"
"/t" = "RoomAnalytics.AmbientTemperature"
"/click" = "UserInterface.Extensions.Widget.Action"
"#;
        let s = crate::config::load_str(std::path::Path::new("t.toml"), text).unwrap();
        s.mqtt[0].subscriptions[0].clone()
    }

    fn run(payload: &str) -> Decoded {
        let s = sub();
        let Format::Json(fields) = &s.format;
        decode(&s, fields, "bench/room-7/status", payload.as_bytes(), 5)
    }

    #[test]
    fn decodes_fields_to_events() {
        let d = run(r#"{"people":"3","t":22.5,"click":{"WidgetId":"w"}}"#);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.events.len(), 3);
        let pc = d
            .events
            .iter()
            .find(|e| e.path.ends_with("Current"))
            .unwrap();
        assert_eq!(pc.device, "room-7");
        assert_eq!(pc.workspace.as_deref(), Some("lobby"));
        assert_eq!(pc.value, Value::from(3));
        let click = d.events.iter().find(|e| e.kind == Kind::Event).unwrap();
        assert_eq!(click.value["WidgetId"], "w");
    }

    #[test]
    fn rejects_bad_payloads_with_a_reason() {
        assert_eq!(run("not json").errors[0].label(), "not_json");
        assert_eq!(run(r#"{"other":1}"#).errors[0].label(), "no_known_field");
        let d = run(r#"{"people":"many","t":21}"#);
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.errors[0].label(), "bad_value");
    }
}
