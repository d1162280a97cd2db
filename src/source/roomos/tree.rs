//! What a RoomOS device's xAPI trees mean in catalog terms: the feedback queries a selection
//! needs, and a partial tree (a notification, an `xQuery` result) flattened into catalog
//! paths (`Peripherals.ConnectedDevice[1002].RoomAnalytics.AmbientTemperature`), values
//! coerced to their catalog type, removed array entries (ghosts) and events. Pure code.

use crate::catalog::{self, Kind};
use serde_json::{Map, Value};

/// The statuses and events a RoomOS source forwards (catalog patterns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Status patterns (`RoomAnalytics.*`, exact paths, `*`).
    pub(crate) statuses: Vec<String>,
    /// Event patterns.
    pub(crate) events: Vec<String>,
}

/// A tree turned into catalog terms.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    /// Status values, coerced to their catalog type.
    pub(crate) updated: Vec<(String, Value)>,
    /// Status paths that disappeared (the selected paths of a ghost array entry).
    pub(crate) removed: Vec<String>,
    /// Events: catalog key and the event's parameters.
    pub events: Vec<(String, Value)>,
    /// Values that did not fit their catalog type: path and why.
    pub(crate) bad_values: Vec<(String, String)>,
}

impl Selection {
    /// Whether a generic status path is selected (and in the catalog).
    pub(crate) fn wants_status(&self, generic: &str) -> bool {
        catalog::lookup(generic).is_some_and(|e| e.kind == Kind::Status)
            && self
                .statuses
                .iter()
                .any(|p| catalog::pattern_matches(p, generic))
    }

    /// Whether a generic event path is selected (and in the catalog).
    pub(crate) fn wants_event(&self, generic: &str) -> bool {
        catalog::lookup(generic).is_some_and(|e| e.kind == Kind::Event)
            && self
                .events
                .iter()
                .any(|p| catalog::pattern_matches(p, generic))
    }

    /// The `xFeedback/Subscribe` queries that cover the selection, the first element the
    /// document (`Status`, `Event`). Array nodes are named without an index, which matches
    /// every entry; a query already covered by a shorter one is left out.
    pub(crate) fn queries(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for (doc, kind, patterns) in [
            ("Status", Kind::Status, &self.statuses),
            ("Event", Kind::Event, &self.events),
        ] {
            let mut qs: Vec<Vec<String>> = Vec::new();
            for p in patterns {
                let prefixes: Vec<String> = if p == "*" {
                    catalog::ENTRIES
                        .iter()
                        .filter(|e| e.kind == kind)
                        .map(|e| e.path.split('.').next().unwrap_or(e.path).to_string())
                        .collect()
                } else {
                    vec![p.strip_suffix(".*").unwrap_or(p).to_string()]
                };
                for prefix in prefixes {
                    let mut q = vec![doc.to_string()];
                    q.extend(
                        prefix
                            .replace("[*]", "")
                            .split('.')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                    );
                    qs.push(q);
                }
            }
            qs.sort_by_key(Vec::len);
            let mut kept: Vec<Vec<String>> = Vec::new();
            for q in qs {
                if !kept.iter().any(|k| q.starts_with(k)) {
                    kept.push(q);
                }
            }
            out.extend(kept);
        }
        out
    }
}

/// A query as a dotted path for messages (`Status.RoomAnalytics`).
pub(crate) fn query_text(q: &[String]) -> String {
    q.join(".")
}

/// Flattens a status tree (the content under `Status`) into `out`.
pub(crate) fn decode_status(tree: &Value, sel: &Selection, out: &mut Decoded) {
    let mut path = String::new();
    walk_status(tree, &mut path, sel, out);
}

/// Finds the events in an event tree (the content under `Event`) and adds them to `out`.
pub(crate) fn decode_events(tree: &Value, sel: &Selection, out: &mut Decoded) {
    let mut path = String::new();
    walk_event(tree, &mut path, sel, out);
}

fn push_segment(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn array_id(item: &Map<String, Value>) -> Option<String> {
    match item.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_ghost(item: &Map<String, Value>) -> bool {
    match item.get("ghost") {
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Bool(b)) => *b,
        _ => false,
    }
}

fn walk_status(node: &Value, path: &mut String, sel: &Selection, out: &mut Decoded) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                let len = path.len();
                push_segment(path, k);
                match v {
                    Value::Array(items) if items.iter().any(Value::is_object) => {
                        for item in items.iter().filter_map(Value::as_object) {
                            let Some(id) = array_id(item) else {
                                continue;
                            };
                            let before = path.len();
                            path.push('[');
                            path.push_str(&id);
                            path.push(']');
                            if is_ghost(item) {
                                removed_under(path, sel, out);
                            } else {
                                for (ik, iv) in item {
                                    if ik == "id" {
                                        continue;
                                    }
                                    let l = path.len();
                                    push_segment(path, ik);
                                    walk_status(iv, path, sel, out);
                                    path.truncate(l);
                                }
                            }
                            path.truncate(before);
                        }
                    }
                    _ => walk_status(v, path, sel, out),
                }
                path.truncate(len);
            }
        }
        Value::Null => {}
        leaf => {
            let generic = catalog::generic_path(path);
            if !sel.wants_status(&generic) {
                return;
            }
            let Some(entry) = catalog::lookup(&generic) else {
                return;
            };
            match entry.value.coerce(leaf) {
                Ok(v) => out.updated.push((path.clone(), v)),
                Err(e) => out.bad_values.push((path.clone(), e.to_string())),
            }
        }
    }
}

/// The selected catalog paths below a removed array entry (`Peripherals.ConnectedDevice[1115]`).
fn removed_under(prefix: &str, sel: &Selection, out: &mut Decoded) {
    let generic = catalog::generic_path(prefix);
    for e in catalog::ENTRIES.iter().filter(|e| e.kind == Kind::Status) {
        let Some(rest) = e.path.strip_prefix(generic.as_str()) else {
            continue;
        };
        if rest.starts_with('.') && !rest.contains('[') && sel.wants_status(e.path) {
            out.removed.push(format!("{prefix}{rest}"));
        }
    }
}

fn walk_event(node: &Value, path: &mut String, sel: &Selection, out: &mut Decoded) {
    if !path.is_empty() {
        let generic = catalog::generic_path(path);
        if catalog::lookup(&generic).is_some_and(|e| e.kind == Kind::Event) {
            if sel.wants_event(&generic) {
                out.events.push((path.clone(), node.clone()));
            }
            return;
        }
    }
    if let Value::Object(map) = node {
        for (k, v) in map {
            let len = path.len();
            push_segment(path, k);
            walk_event(v, path, sel, out);
            path.truncate(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(statuses: &[&str], events: &[&str]) -> Selection {
        Selection {
            statuses: statuses.iter().map(|s| s.to_string()).collect(),
            events: events.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn queries_cover_the_selection_without_overlap() {
        let s = sel(
            &[
                "RoomAnalytics.*",
                "RoomAnalytics.PeopleCount.Current",
                "Peripherals.ConnectedDevice[*].RoomAnalytics.AmbientTemperature",
                "Standby.State",
            ],
            &["UserInterface.Extensions.Widget.Action"],
        );
        let q: Vec<String> = s.queries().iter().map(|q| q.join(" ")).collect();
        assert_eq!(
            q,
            vec![
                "Status RoomAnalytics",
                "Status Standby State",
                "Status Peripherals ConnectedDevice RoomAnalytics AmbientTemperature",
                "Event UserInterface Extensions Widget Action",
            ]
        );
        let all = sel(&["*"], &[]).queries();
        assert!(all.contains(&vec!["Status".to_string(), "RoomAnalytics".to_string()]));
        assert!(all.iter().all(|q| q.len() == 2), "{all:?}");
    }

    #[test]
    fn a_people_count_notification() {
        // {"jsonrpc":"2.0","method":"xFeedback/Event","params":{"Id":1,"Status":{…}}}
        let tree = json!({"RoomAnalytics":{"PeopleCount":{"Current":3}}});
        let mut out = Decoded::default();
        decode_status(&tree, &sel(&["RoomAnalytics.*"], &[]), &mut out);
        assert_eq!(
            out.updated,
            vec![("RoomAnalytics.PeopleCount.Current".to_string(), json!(3))]
        );
    }

    #[test]
    fn navigator_strings_are_coerced_and_unselected_leaves_skipped() {
        // A Room Navigator reports AmbientTemperature and AirQuality.Index as strings.
        let tree = json!({"Peripherals":{"ConnectedDevice":[{"id":"1002",
            "Name":"Room Navigator","Type":"TouchPanel",
            "RoomAnalytics":{"AmbientTemperature":"22.5","RelativeHumidity":41,"AirQuality":{"Index":"1.2"}}}]}});
        let mut out = Decoded::default();
        decode_status(
            &tree,
            &sel(
                &[
                    "Peripherals.ConnectedDevice[*].RoomAnalytics.AmbientTemperature",
                    "Peripherals.ConnectedDevice[*].RoomAnalytics.AirQuality.Index",
                ],
                &[],
            ),
            &mut out,
        );
        assert_eq!(
            out.updated,
            vec![
                (
                    "Peripherals.ConnectedDevice[1002].RoomAnalytics.AirQuality.Index".to_string(),
                    json!(1.2)
                ),
                (
                    "Peripherals.ConnectedDevice[1002].RoomAnalytics.AmbientTemperature"
                        .to_string(),
                    json!(22.5)
                ),
            ]
        );
    }

    #[test]
    fn a_ghost_removes_the_selected_paths_of_the_entry() {
        let tree = json!({"Peripherals":{"ConnectedDevice":[{"id":1115,"ghost":"True"}]}});
        let mut out = Decoded::default();
        decode_status(&tree, &sel(&["Peripherals.*"], &[]), &mut out);
        assert!(out.updated.is_empty());
        assert_eq!(
            out.removed,
            vec![
                "Peripherals.ConnectedDevice[1115].RoomAnalytics.AmbientTemperature",
                "Peripherals.ConnectedDevice[1115].RoomAnalytics.RelativeHumidity",
                "Peripherals.ConnectedDevice[1115].RoomAnalytics.AirQuality.Index",
            ]
        );
    }

    #[test]
    fn a_full_query_result_with_non_catalog_leaves() {
        // xQuery {"Query":["Status","RoomAnalytics"]} answers from the root; a status of a
        // newer RoomOS than the catalog knows is left out.
        let result = json!({"Status":{"RoomAnalytics":{
            "PeopleCount":{"Current":-1,"Capacity":8},"PeoplePresence":"No","RoomInUse":"False",
            "AmbientNoise":{"Level":{"A":32}},"T3Alarm":{"Detected":"False"},
            "NotInTheCatalog":{"Level":3}}}});
        let mut out = Decoded::default();
        decode_status(&result["Status"], &sel(&["RoomAnalytics.*"], &[]), &mut out);
        let paths: Vec<&str> = out.updated.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "RoomAnalytics.AmbientNoise.Level.A",
                "RoomAnalytics.PeopleCount.Capacity",
                "RoomAnalytics.PeopleCount.Current",
                "RoomAnalytics.PeoplePresence",
                "RoomAnalytics.RoomInUse",
                "RoomAnalytics.T3Alarm.Detected",
            ]
        );
        assert_eq!(out.updated[2].1, json!(-1));
    }

    #[test]
    fn bad_values_are_reported_not_forwarded() {
        let tree =
            json!({"RoomAnalytics":{"PeopleCount":{"Current":"many"},"PeoplePresence":"Maybe"}});
        let mut out = Decoded::default();
        decode_status(&tree, &sel(&["RoomAnalytics.*"], &[]), &mut out);
        assert!(out.updated.is_empty());
        assert_eq!(out.bad_values.len(), 2);
    }

    #[test]
    fn a_widget_action_event() {
        let tree = json!({"UserInterface":{"Extensions":{"Widget":{"Action":
            {"WidgetId":"join-meeting","Type":"clicked","Value":""}}}}});
        let mut out = Decoded::default();
        decode_events(
            &tree,
            &sel(&[], &["UserInterface.Extensions.Widget.Action"]),
            &mut out,
        );
        assert_eq!(
            out.events,
            vec![(
                "UserInterface.Extensions.Widget.Action".to_string(),
                json!({"WidgetId":"join-meeting","Type":"clicked","Value":""})
            )]
        );
        let mut none = Decoded::default();
        decode_events(&tree, &sel(&[], &["BootEvent"]), &mut none);
        assert!(none.events.is_empty());
    }
}
