//! Meraki MV camera people counting (`format = "meraki-mv"`): `/merakimv/<serial>/<zone>`
//! with `{"ts":<epoch ms>,"counts":{"person":2}}` (zone `0` is the whole frame). The
//! sensor id is the serial for zone 0 and `<serial>/<zone>` for the others.
//! `…/raw_detections` (one box per object) is not a count: ignored unless
//! `raw_detections = true`, which counts its `person` objects instead.

use super::{object, payload_time, DecodeError, Read, Reading};
use serde_json::Value;

/// Reads one message.
pub(crate) fn read(topic: &str, payload: &[u8], raw_detections: bool) -> Read {
    let levels: Vec<&str> = topic.split('/').filter(|l| !l.is_empty()).collect();
    let n = levels.len();
    if n < 2 || levels[n - 2].is_empty() {
        return Read::Rejected(DecodeError::NoDevice(topic.to_string()));
    }
    let (serial, zone) = (levels[n - 2], levels[n - 1]);
    // Zones are numbers; other topics of a camera (light levels, …) are not counts. With
    // raw_detections the boxes are counted instead of the zones (not both).
    let counted = if raw_detections {
        zone == "raw_detections"
    } else {
        !zone.is_empty() && zone.bytes().all(|b| b.is_ascii_digit())
    };
    if !counted {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_detections_count_people_instead_of_the_zones() {
        let boxes = br#"{"ts":1764494100000,"objects":[{"type":"person","oid":1},{"type":"person","oid":2},{"type":"car","oid":3}]}"#;
        let Read::Reading(r) = read("/merakimv/Q2GV-1/raw_detections", boxes, true) else {
            panic!("not a reading");
        };
        assert_eq!(r.sensor.as_deref(), Some("Q2GV-1"));
        assert_eq!(r.values, vec![("person".to_string(), Value::from(2))]);
        // With raw detections asked for, the zone counts are not read (not both).
        let zone = br#"{"ts":1764494100000,"counts":{"person":5}}"#;
        assert!(matches!(
            read("/merakimv/Q2GV-1/0", zone, true),
            Read::NotData
        ));
        assert!(matches!(
            read("/merakimv/Q2GV-1/0", zone, false),
            Read::Reading(_)
        ));
        assert!(matches!(
            read("/merakimv/Q2GV-1/raw_detections", boxes, false),
            Read::NotData
        ));
    }
}
