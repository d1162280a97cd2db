//! The devices seen so far and the latest value of each of their statuses and events, as
//! the sources handed them to ingest (whether or not a webhook selects them): what the
//! console shows as "what the rooms report right now" and offers in the device picker.
//! Kept only while the console is on; bounded in devices, paths and value size. Times are
//! when roomhook received a value (a sensor's clock may be off).

use crate::event::Event;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most devices remembered; past it the one heard from longest ago is forgotten.
pub(crate) const MAX_DEVICES: usize = 1000;
/// Most paths remembered per device; past it new paths are not added.
pub(crate) const MAX_PATHS: usize = 64;
/// A value longer than this (as JSON) is shown by its size only.
pub(crate) const MAX_VALUE: usize = 256;

#[derive(Debug, Default, Clone)]
struct Device {
    workspace: Option<String>,
    last_ms: i64,
    /// Path → (value, observed at, unix ms).
    values: BTreeMap<String, (Value, i64)>,
}

/// The register.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    devices: Mutex<HashMap<String, Device>>,
}

impl Seen {
    /// Notes the values of `events`, received at `now_ms` (one lock for the lot).
    pub(crate) fn record(&self, events: &[Event], now_ms: i64) {
        let mut all = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if !all.contains_key(&e.device) {
                if all.len() >= MAX_DEVICES {
                    forget_oldest(&mut all);
                }
                all.insert(e.device.clone(), Device::default());
            }
            let Some(d) = all.get_mut(&e.device) else {
                continue;
            };
            if e.workspace.is_some() {
                d.workspace.clone_from(&e.workspace);
            }
            d.last_ms = now_ms;
            for (path, value) in e.changes() {
                if value.is_null() {
                    d.values.remove(path);
                    continue;
                }
                let value = shown(value);
                if let Some(slot) = d.values.get_mut(path) {
                    *slot = (value, now_ms);
                } else if d.values.len() < MAX_PATHS {
                    d.values.insert(path.to_string(), (value, now_ms));
                }
            }
        }
    }

    /// The ids of every device seen, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        let all = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = all.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Every device with its latest values and their ages as of `now_ms`, sorted by id.
    pub(crate) fn view(&self, now_ms: i64) -> Value {
        // Copied out under the lock, the JSON built after it (ingest waits on the lock).
        let mut devices: Vec<(String, Device)> = {
            let all = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            all.iter().map(|(k, d)| (k.clone(), d.clone())).collect()
        };
        devices.sort_by(|a, b| a.0.cmp(&b.0));
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

/// Forgets the tenth of the devices heard from longest ago (at once, so a stream of new
/// devices does not scan the map for each).
fn forget_oldest(all: &mut HashMap<String, Device>) {
    let mut by_age: Vec<(i64, String)> = all.iter().map(|(k, d)| (d.last_ms, k.clone())).collect();
    by_age.sort_unstable();
    for (_, k) in by_age.into_iter().take((MAX_DEVICES / 10).max(1)) {
        all.remove(&k);
    }
}

/// A value as kept: itself, or its size when it is long (a text or an event's payload).
fn shown(value: &Value) -> Value {
    match value {
        Value::Number(_) | Value::Bool(_) => value.clone(),
        Value::String(s) if s.len() <= MAX_VALUE => value.clone(),
        _ => {
            let len = value.to_string().len();
            if len <= MAX_VALUE {
                value.clone()
            } else {
                Value::from(format!("({len} bytes)"))
            }
        }
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
        s.record(
            &[ev("b", pc, json!(1), 1000), ev("a", pc, json!(2), 1000)],
            1000,
        );
        // The receive time counts, not the sensor's clock.
        s.record(&[ev("b", pc, json!(3), 9_999_999)], 2000);
        assert_eq!(s.ids(), ["a", "b"]);
        let v = s.view(5000);
        assert_eq!(v[1]["device"], "b");
        assert_eq!(v[1]["values"][0]["value"], 3);
        assert_eq!(v[1]["values"][0]["age_s"], 3.0);
        // A removal (null) forgets the path.
        s.record(&[ev("b", pc, Value::Null, 3000)], 3000);
        assert_eq!(s.view(5000)[1]["values"], json!([]));
        // A long value is shown by its size.
        s.record(
            &[ev(
                "a",
                "UserInterface.Message.TextInput.Response",
                json!("x".repeat(300)),
                1,
            )],
            4000,
        );
        assert_eq!(s.view(5000)[0]["values"][1]["value"], "(302 bytes)");
    }

    #[test]
    fn bounded_in_devices_and_paths() {
        let s = Seen::default();
        for i in 0..MAX_DEVICES + 5 {
            s.record(&[ev(&format!("d{i}"), "p", json!(1), 0)], i as i64);
        }
        let ids = s.ids();
        assert!(
            ids.len() <= MAX_DEVICES && ids.len() >= MAX_DEVICES * 9 / 10,
            "{}",
            ids.len()
        );
        assert!(!ids.contains(&"d0".to_string()), "the oldest went first");
        assert!(ids.contains(&format!("d{}", MAX_DEVICES + 4)));
        for i in 0..MAX_PATHS + 5 {
            s.record(&[ev("x", &format!("p{i}"), json!(i), 1)], 1);
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
