//! The device's status tree and who watches it: setting and removing values, emitting events,
//! and notifying each feedback subscription a change matches.

use super::query::{select, split_indexed, Deny, Doc, Elem, Schema};
use super::rpc::notification;
use super::transport::Out;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// The device's data and its connections.
pub(super) struct State {
    /// The Status document's content (without the "Status" wrapper).
    pub(super) tree: Value,
    /// Every Status path the device knows of (valid even when no value is there now).
    pub(super) schema: Schema,
    /// Every Event path the device knows of.
    pub(super) event_schema: Schema,
    /// Open connections by id.
    pub(super) conns: BTreeMap<u64, Conn>,
    /// Id for the next connection.
    pub(super) next_conn: u64,
    /// An anonymous third-party occupancy source (`RoomInUse Set` without an `ID`) reports
    /// the room in use.
    pub(super) anonymous_in_use: bool,
}

/// Identified third-party occupancy sources a device tracks at a time.
const MAX_OCCUPANCY_SENSORS: usize = 16;

/// One open WebSocket connection.
pub(super) struct Conn {
    /// Frames for its writer, in order.
    pub(super) tx: mpsc::UnboundedSender<Out>,
    /// Its feedback subscriptions by id.
    pub(super) subs: BTreeMap<u64, Sub>,
    /// Id for its next subscription.
    pub(super) next_sub: u64,
}

/// One feedback subscription.
pub(super) struct Sub {
    /// The document it watches.
    pub(super) doc: Doc,
    /// The query below the document name.
    pub(super) pattern: Vec<Elem>,
    /// The query as the client sent it, as strings (what the unit tests look at).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) query: Vec<String>,
}

/// One element of a dotted path given to `set_status`, `remove` or `emit_event`.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    /// A node name.
    Key(String),
    /// `Name[id]`: the entry with this id in the array `Name`.
    Indexed(String, String),
}

impl State {
    /// Sets the status value at `segs`, creating what is missing, and notifies the matching
    /// subscriptions if the value changed.
    pub(super) fn set_status(&mut self, segs: &[Seg], value: Value, deny: Deny) {
        if !set_in(&mut self.tree, segs, value.clone()) {
            return;
        }
        let change = build_tree(segs, value);
        self.schema.merge(Schema::of(&change));
        self.notify(Doc::Status, &change, &change, deny);
    }

    /// Removes the status node at `segs`; for an array entry the subscriptions that covered
    /// it get a ghost.
    pub(super) fn remove(&mut self, segs: &[Seg], deny: Deny) {
        let Some(old) = remove_at(&mut self.tree, segs) else {
            return;
        };
        if let Some(Seg::Indexed(..)) = segs.last() {
            let covered = build_tree(segs, old);
            let ghost = build_tree(segs, json!({ "ghost": "True" }));
            self.notify(Doc::Status, &covered, &ghost, deny);
        }
    }

    /// `xCommand RoomAnalytics RoomInUse Set`: a third-party occupancy source says the room is
    /// in use or not. With an id (`source`) it is tracked as `RoomAnalytics.OccupancySensor[n]`
    /// (`ID`, `RoomInUse`; `NotInUse` keeps the entry, `False`); without, it is anonymous
    /// input. `RoomAnalytics.RoomInUse` follows what the sources say (the simulator has no
    /// native inputs of its own to add). `false` when a new id finds all 16 places taken.
    pub(super) fn room_in_use_set(
        &mut self,
        source: Option<&str>,
        in_use: bool,
        deny: Deny,
    ) -> bool {
        let flag = if in_use { "True" } else { "False" };
        match source {
            None => self.anonymous_in_use = in_use,
            Some(source) => {
                let sensors = self.occupancy_sensors();
                let known = sensors
                    .iter()
                    .find(|e| e.get("ID").and_then(Value::as_str) == Some(source))
                    .and_then(|e| entry_id(e));
                let n = match known {
                    Some(n) => n.to_string(),
                    None => {
                        let taken: Vec<&str> = sensors.iter().filter_map(|e| entry_id(e)).collect();
                        let free = (1..=MAX_OCCUPANCY_SENSORS)
                            .map(|n| n.to_string())
                            .find(|n| !taken.contains(&n.as_str()));
                        match free {
                            Some(n) => n,
                            None => return false,
                        }
                    }
                };
                let segs = [
                    Seg::Key("RoomAnalytics".to_string()),
                    Seg::Indexed("OccupancySensor".to_string(), n),
                ];
                self.set_status(&segs, json!({ "ID": source, "RoomInUse": flag }), deny);
            }
        }
        let any = self.anonymous_in_use
            || self
                .occupancy_sensors()
                .iter()
                .any(|e| e.get("RoomInUse").and_then(Value::as_str) == Some("True"));
        let segs = [
            Seg::Key("RoomAnalytics".to_string()),
            Seg::Key("RoomInUse".to_string()),
        ];
        self.set_status(&segs, json!(if any { "True" } else { "False" }), deny);
        true
    }

    /// The `RoomAnalytics.OccupancySensor` entries.
    fn occupancy_sensors(&self) -> &[Value] {
        self.tree
            .pointer("/RoomAnalytics/OccupancySensor")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Sends the event at `segs` to the matching Event subscriptions.
    pub(super) fn emit_event(&mut self, segs: &[Seg], value: Value) {
        let event = build_tree(segs, value);
        self.event_schema.merge(Schema::of(&event));
        self.notify(Doc::Event, &event, &event, Deny(&[]));
    }

    /// Sends `payload` to every subscription on `doc` whose query matches `probe`.
    fn notify(&self, doc: Doc, probe: &Value, payload: &Value, deny: Deny) {
        for conn in self.conns.values() {
            for (id, sub) in &conn.subs {
                if sub.doc != doc {
                    continue;
                }
                let Some(matched) = select(probe, &sub.pattern, &mut Vec::new(), deny) else {
                    continue;
                };
                let body = if std::ptr::eq(probe, payload) {
                    matched
                } else {
                    payload.clone()
                };
                let _ = conn.tx.send(Out::Text(notification(*id, doc, body)));
            }
        }
    }
}

/// A dotted path ("Peripherals.ConnectedDevice[1002].Name"), with an optional leading document name.
pub(super) fn parse_dotted(path: &str, doc: &str) -> Option<Vec<Seg>> {
    let path = path
        .strip_prefix(doc)
        .and_then(|p| p.strip_prefix('.'))
        .unwrap_or(path);
    path.split('.')
        .map(|part| {
            if part.is_empty() {
                None
            } else if part.contains('[') {
                split_indexed(part).map(|(n, i)| Seg::Indexed(n.to_string(), i.to_string()))
            } else {
                Some(Seg::Key(part.to_string()))
            }
        })
        .collect()
}

/// An array entry's id.
pub(super) fn entry_id(entry: &Value) -> Option<&str> {
    entry.get("id").and_then(Value::as_str)
}

/// An entry object with its id first.
pub(super) fn with_id(id: &str, fields: Map<String, Value>) -> Value {
    let mut entry = Map::new();
    entry.insert("id".to_string(), Value::String(id.to_string()));
    for (k, v) in fields {
        if k != "id" {
            entry.insert(k, v);
        }
    }
    Value::Object(entry)
}

/// Sets the value at `segs` below `node`, creating what is missing; whether anything changed.
fn set_in(node: &mut Value, segs: &[Seg], value: Value) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        if *node == value {
            return false;
        }
        *node = value;
        return true;
    };
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else {
        return false;
    };
    match first {
        Seg::Key(k) => {
            let existed = map.contains_key(k);
            let child = map.entry(k.clone()).or_insert(Value::Null);
            set_in(child, rest, value) || !existed
        }
        Seg::Indexed(name, id) => {
            let slot = map
                .entry(name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            let Value::Array(list) = slot else {
                return false;
            };
            let (index, created) = match list.iter().position(|e| entry_id(e) == Some(id)) {
                Some(p) => (p, false),
                None => {
                    list.push(json!({ "id": id }));
                    (list.len() - 1, true)
                }
            };
            let Some(entry) = list.get_mut(index) else {
                return false;
            };
            if rest.is_empty() {
                let fields = match value {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                let new = with_id(id, fields);
                let changed = *entry != new;
                *entry = new;
                changed || created
            } else {
                set_in(entry, rest, value) || created
            }
        }
    }
}

/// Removes the node at `segs`; the removed value.
fn remove_at(node: &mut Value, segs: &[Seg]) -> Option<Value> {
    let (last, parents) = segs.split_last()?;
    let mut cur = node;
    for seg in parents {
        let map = cur.as_object_mut()?;
        cur = match seg {
            Seg::Key(k) => map.get_mut(k)?,
            Seg::Indexed(name, id) => map
                .get_mut(name)?
                .as_array_mut()?
                .iter_mut()
                .find(|e| entry_id(e) == Some(id.as_str()))?,
        };
    }
    let map = cur.as_object_mut()?;
    match last {
        Seg::Key(k) => map.remove(k),
        Seg::Indexed(name, id) => {
            let list = map.get_mut(name)?.as_array_mut()?;
            let p = list.iter().position(|e| entry_id(e) == Some(id.as_str()))?;
            Some(list.remove(p))
        }
    }
}

/// The partial tree from the document root holding `leaf` at `segs`.
fn build_tree(segs: &[Seg], leaf: Value) -> Value {
    segs.iter().rev().fold(leaf, |inner, seg| {
        let (name, value) = match seg {
            Seg::Key(k) => (k, inner),
            Seg::Indexed(name, id) => {
                let fields = match inner {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                (name, Value::Array(vec![with_id(id, fields)]))
            }
        };
        let mut out = Map::new();
        out.insert(name.clone(), value);
        Value::Object(out)
    })
}
