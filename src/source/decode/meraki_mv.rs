//! Meraki MV camera people counting (`format = "meraki-mv"`): `/merakimv/<serial>/<zone>`
//! with `{"ts":<epoch ms>,"counts":{"person":2}}` (zone `0` is the whole frame). The
//! sensor id is the serial for zone 0 and `<serial>/<zone>` for the others.
//! `…/raw_detections` (one box per object) is not a count: ignored unless
//! `raw_detections = true`, which counts its `person` objects instead.

use super::{object, payload_time, DecodeError, Read, Reading};
use serde_json::Value;

/// Default mapping: object class → catalog path (the config's `fields` override it).
pub const DEFAULTS: &[(&str, &str)] = &[("person", "RoomAnalytics.PeopleCount.Current")];

/// Reads one message.
pub fn read(topic: &str, payload: &[u8], raw_detections: bool) -> Read {
    let levels: Vec<&str> = topic.split('/').filter(|l| !l.is_empty()).collect();
    let n = levels.len();
    if n < 2 || levels[n - 2].is_empty() {
        return Read::Rejected(DecodeError::NoDevice(topic.to_string()));
    }
    let (serial, zone) = (levels[n - 2], levels[n - 1]);
    if zone == "raw_detections" && !raw_detections {
        return Read::NotData;
    }
    let doc = match object(payload) {
        Ok(d) => d,
        Err(e) => return Read::Rejected(e),
    };
    let values: Vec<(String, Value)> = if zone == "raw_detections" {
        let Some(objects) = doc.get("objects").and_then(Value::as_array) else {
            return Read::Rejected(DecodeError::WrongType(
                "raw_detections without an \"objects\" array".into(),
            ));
        };
        let people = objects
            .iter()
            .filter(|o| o.get("type").and_then(Value::as_str) == Some("person"))
            .count();
        vec![("person".to_string(), Value::from(people))]
    } else {
        match doc.get("counts") {
            Some(Value::Object(c)) => c.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(other) => {
                return Read::Rejected(DecodeError::WrongType(format!(
                    "\"counts\" is {other}, not an object"
                )))
            }
            None => Vec::new(),
        }
    };
    let sensor = if zone == "0" || zone == "raw_detections" {
        serial.to_string()
    } else {
        format!("{serial}/{zone}")
    };
    Read::Reading(Reading {
        sensor: Some(sensor),
        values,
        ts_ms: payload_time(&doc),
        known: 0,
        doc,
    })
}
