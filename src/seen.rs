//! The devices seen so far and the latest value of each of their statuses and events, as
//! the sources handed them to ingest (whether or not a webhook selects them): what the
//! console shows as "what the rooms report right now" and offers in the device picker.
//! Kept only while the console is on; bounded in devices and paths.

use crate::event::Event;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most devices remembered; past it the one heard from longest ago is forgotten.
pub const MAX_DEVICES: usize = 1000;
/// Most paths remembered per device; past it new paths are not added.
pub const MAX_PATHS: usize = 64;

#[derive(Debug, Default)]
struct Device {
    workspace: Option<String>,
    last_ms: i64,
    /// Path → (value, observed at, unix ms).
    values: BTreeMap<String, (Value, i64)>,
}

/// The register.
#[derive(Debug, Default)]
pub struct Seen {
    devices: Mutex<HashMap<String, Device>>,
}

impl Seen {
    /// Notes the values of `events` (one lock for the lot).
    pub fn record(&self, events: &[Event]) {
        let mut all = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if !all.contains_key(&e.device) && all.len() >= MAX_DEVICES {
                let oldest = all
                    .iter()
                    .min_by_key(|(_, d)| d.last_ms)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    all.remove(&k);
                }
            }
            let d = all.entry(e.device.clone()).or_default();
            if e.workspace.is_some() {
                d.workspace.clone_from(&e.workspace);
            }
            d.last_ms = d.last_ms.max(e.ts_ms);
            for (path, value) in e.changes() {
                if value.is_null() {
                    d.values.remove(path);
                } else if let Some(slot) = d.values.get_mut(path) {
                    *slot = (value.clone(), e.ts_ms);
                } else if d.values.len() < MAX_PATHS {
                    d.values.insert(path.to_string(), (value.clone(), e.ts_ms));
                }
            }
        }
    }

    /// The ids of every device seen, sorted.
    pub fn ids(&self) -> Vec<String> {
        let all = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = all.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Every device with its latest values and their ages as of `now_ms`, sorted by id.
    pub fn view(&self, now_ms: i64) -> Value {
        let all = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices: Vec<(&String, &Device)> = all.iter().collect();
        devices.sort_by(|a, b| a.0.cmp(b.0));
        let age = |t: i64| (now_ms - t).max(0) as f64 / 1000.0;
        Value::Array(
            devices
                .into_iter()
                .map(|(id, d)| {
                    json!({
                        "device": id,
                        "workspace": d.workspace,
                        "last_age_s": age(d.last_ms),
                        "values": d.values.iter().map(|(p, (v, t))| json!({
                            "path": p, "value": v, "age_s": age(*t),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Kind;

    fn ev(device: &str, path: &str, value: Value, ts_ms: i64) -> Event {
        Event {
            device: device.into(),
            workspace: None,
            path: path.into(),
            kind: Kind::Status,
            value,
            ts_ms,
            full_sync: false,
            more: vec![],
        }
    }

    #[test]
    fn keeps_the_latest_value_per_device_and_path() {
        let s = Seen::default();
        let pc = "RoomAnalytics.PeopleCount.Current";
        s.record(&[ev("b", pc, json!(1), 1000), ev("a", pc, json!(2), 1000)]);
        s.record(&[ev("b", pc, json!(3), 2000)]);
        assert_eq!(s.ids(), ["a", "b"]);
        let v = s.view(5000);
        assert_eq!(v[1]["device"], "b");
        assert_eq!(v[1]["values"][0]["value"], 3);
        assert_eq!(v[1]["values"][0]["age_s"], 3.0);
        // A removal (null) forgets the path.
        s.record(&[ev("b", pc, Value::Null, 3000)]);
        assert_eq!(s.view(5000)[1]["values"], json!([]));
    }

    #[test]
    fn bounded_in_devices_and_paths() {
        let s = Seen::default();
        for i in 0..MAX_DEVICES + 5 {
            s.record(&[ev(&format!("d{i}"), "p", json!(1), i as i64)]);
        }
        let ids = s.ids();
        assert_eq!(ids.len(), MAX_DEVICES);
        assert!(!ids.contains(&"d0".to_string()), "the oldest went first");
        assert!(ids.contains(&format!("d{}", MAX_DEVICES + 4)));
        for i in 0..MAX_PATHS + 5 {
            s.record(&[ev("x", &format!("p{i}"), json!(i), 1)]);
        }
        assert_eq!(
            s.view(0)
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["device"] == "x")
                .unwrap()["values"]
                .as_array()
                .unwrap()
                .len(),
            MAX_PATHS
        );
    }
}
