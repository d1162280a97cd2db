//! The generic JSON decoder (`format = "json"`): each configured JSON pointer in the
//! payload gives one catalog path; the device and workspace come from topic levels or
//! payload fields.

use super::{payload_time, DecodeError, Read, Reading};
use crate::config::FieldMap;
use serde_json::Value;

/// Reads the configured pointers out of one payload.
pub(crate) fn read(map: &[FieldMap], payload: &[u8]) -> Read {
    let doc: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Read::Rejected(DecodeError::NotJson(e.to_string())),
    };
    let values = map
        .iter()
        .filter_map(|f| doc.pointer(&f.key).map(|v| (f.key.clone(), v.clone())))
        .collect();
    Read::Reading(Reading {
        sensor: None,
        values,
        ts_ms: payload_time(&doc),
        known: 0,
        doc,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, Decoded};
    use crate::catalog::Kind;
    use serde_json::Value;

    fn sub() -> crate::config::SubscriptionSettings {
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
        decode(
            &sub(),
            &Default::default(),
            "bench/room-7/status",
            payload.as_bytes(),
            5,
        )
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
