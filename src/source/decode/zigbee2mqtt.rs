//! Zigbee2MQTT (`format = "zigbee2mqtt"`): `<base>/<friendly name>` carries one JSON object
//! of the device's exposed properties (`{"occupancy":true,"temperature":22.4,…}`); the base
//! topic is the filter's first level unless `base_topic` says more (`site-7/z2m`), and
//! friendly names may contain `/` (`zigbee2mqtt/Floor 3/PIR` is the device `Floor 3/PIR`). `…/availability`, `<base>/bridge/…` and the `…/set`, `…/get`
//! commands are recognised and are not sensor data.

use super::{object, payload_time, Read, Reading};

/// Properties Zigbee2MQTT sensors expose that no catalog path carries: not mapped by
/// default, and not a reason to count a payload as unknown.
pub(crate) const KNOWN: &[&str] = &[
    "battery",
    "battery_low",
    "voltage",
    "linkquality",
    "illuminance",
    "illuminance_lux",
    "co2",
    "voc",
    "pm25",
    "formaldehyd",
    "tamper",
    "update",
    "update_available",
    "last_seen",
    "device_temperature",
    "power_outage_count",
];

/// Reads one message; `base` is the number of topic levels of the base topic.
pub(crate) fn read(topic: &str, base: usize, payload: &[u8]) -> Read {
    let Some(name) = topic.splitn(base.max(1) + 1, '/').nth(base.max(1)) else {
        return Read::NotData;
    };
    let last = name.rsplit('/').next().unwrap_or("");
    if name == "bridge"
        || name.starts_with("bridge/")
        || matches!(last, "availability" | "set" | "get")
        || name.contains("/set/")
        || name.contains("/get/")
        || name.is_empty()
    {
        return Read::NotData;
    }
    let doc = match object(payload) {
        Ok(d) => d,
        Err(e) => return Read::Rejected(e),
    };
    let map = doc.as_object().expect("an object");
    let values = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let known = map.keys().filter(|k| KNOWN.contains(&k.as_str())).count();
    Read::Reading(Reading {
        sensor: Some(name.to_string()),
        values,
        ts_ms: payload_time(&doc),
        known,
        doc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_topic_comes_from_the_filter_and_names_keep_their_slashes() {
        let Read::Reading(r) = read("site-7/z2m/Room 1/PIR", 2, br#"{"occupancy":true}"#) else {
            panic!("not a reading");
        };
        assert_eq!(r.sensor.as_deref(), Some("Room 1/PIR"));
        assert!(matches!(
            read("site-7/z2m/bridge/state", 2, b"{}"),
            Read::NotData
        ));
        assert!(matches!(read("zigbee2mqtt", 1, b"{}"), Read::NotData));
    }
}
