//! Meraki MT sensors as MR/MV gateways publish them (`format = "meraki-mt"`):
//! `meraki/v1/mt/<network>/ble/<mac>/<metric>` with `{"ts":"<RFC 3339>","<field>":v}`. The
//! field is named after the metric, except where it is not (`temperature` → `celsius`,
//! `door` → `open`, …); field names differ between firmware, so a payload with one value
//! besides `ts` is read whatever its name.

use super::{object, payload_time, DecodeError, Read, Reading};
use serde_json::Value;

/// The payload field of each metric, where it is not the metric's own name.
const FIELD: &[(&str, &str)] = &[
    ("temperature", "celsius"),
    ("door", "open"),
    ("waterDetection", "wet"),
    ("buttonPressed", "action"),
    ("battery", "batteryPercentage"),
];

/// Metrics MT sensors publish that no catalog path carries: not mapped by default.
pub(crate) const KNOWN: &[&str] = &[
    "iaqIndex",
    "tvoc",
    "CO2",
    "PM2_5MassConcentration",
    "door",
    "waterDetection",
    "buttonPressed",
    "battery",
    "indoorAirQuality",
];

/// Reads one message.
pub(crate) fn read(topic: &str, payload: &[u8]) -> Read {
    let levels: Vec<&str> = topic.split('/').collect();
    let n = levels.len();
    if n < 3 || levels[n - 3] != "ble" || levels[n - 2].is_empty() || levels[n - 1].is_empty() {
        return Read::Rejected(DecodeError::NoDevice(topic.to_string()));
    }
    let (mac, metric) = (levels[n - 2].to_ascii_uppercase(), levels[n - 1]);
    let doc = match object(payload) {
        Ok(d) => d,
        Err(e) => return Read::Rejected(e),
    };
    let field = FIELD
        .iter()
        .find(|(m, _)| *m == metric)
        .map_or(metric, |(_, f)| *f);
    let map = doc.as_object().expect("an object");
    let value: Option<&Value> = map.get(field).or_else(|| map.get(metric)).or_else(|| {
        // (Never a value in another unit: `fahrenheit` is not `celsius`.)
        let mut others = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ts" | "fahrenheit"));
        match (others.next(), others.next()) {
            (Some((_, v)), None) => Some(v),
            _ => None,
        }
    });
    let values = value
        .map(|v| vec![(metric.to_string(), v.clone())])
        .unwrap_or_default();
    let known = usize::from(value.is_some() && KNOWN.contains(&metric));
    Read::Reading(Reading {
        sensor: Some(mac),
        values,
        ts_ms: payload_time(&doc),
        known,
        doc,
    })
}
