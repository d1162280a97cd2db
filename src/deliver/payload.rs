//! The Control Hub compatible JSON messages: `status` (with `changes.updated` / `removed`),
//! `events`, and `healthCheck`.

use crate::catalog::Kind;
use crate::event::Event;
use crate::timefmt::rfc3339_ms;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    device_id: &'a str,
    workspace_id: &'a str,
    org_id: &'a str,
    timestamp: String,
    is_full_sync: bool,
    changes: Changes<'a>,
}

#[derive(Serialize)]
struct Changes<'a> {
    updated: BTreeMap<&'a str, &'a Value>,
    removed: Vec<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    device_id: &'a str,
    workspace_id: &'a str,
    org_id: &'a str,
    timestamp: String,
    events: [EventItem<'a>; 1],
}

#[derive(Serialize)]
struct EventItem<'a> {
    key: &'a str,
    value: &'a Value,
    timestamp: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthCheck<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    org_id: &'a str,
    timestamp: String,
}

/// The JSON body for one event. A status whose value is `null` is reported as removed; an
/// event with several changes (full sync, removal of an array entry) is one message.
pub fn message(e: &Event, org_id: &str) -> Vec<u8> {
    let ts = rfc3339_ms(e.ts_ms);
    let workspace = e.workspace.as_deref().unwrap_or("");
    let out = match e.kind {
        Kind::Status => {
            let (mut updated, mut removed) = (BTreeMap::new(), Vec::new());
            for (path, value) in e.changes() {
                if value.is_null() {
                    removed.push(path);
                } else {
                    updated.insert(path, value);
                }
            }
            serde_json::to_vec(&StatusMessage {
                kind: "status",
                device_id: &e.device,
                workspace_id: workspace,
                org_id,
                timestamp: ts,
                is_full_sync: e.full_sync,
                changes: Changes { updated, removed },
            })
        }
        Kind::Event => serde_json::to_vec(&EventsMessage {
            kind: "events",
            device_id: &e.device,
            workspace_id: workspace,
            org_id,
            timestamp: ts.clone(),
            events: [EventItem {
                key: &e.path,
                value: &e.value,
                timestamp: ts,
            }],
        }),
    };
    out.unwrap_or_default()
}

/// The JSON body of a `healthCheck` message, stamped now.
pub(crate) fn health_check(org_id: &str) -> Vec<u8> {
    serde_json::to_vec(&HealthCheck {
        kind: "healthCheck",
        org_id,
        timestamp: rfc3339_ms(crate::timefmt::now_ms()),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: Kind, path: &str, value: Value) -> Event {
        Event {
            device: "dev-1".into(),
            workspace: Some("ws-1".into()),
            path: path.into(),
            kind,
            value,
            ts_ms: 1_764_238_530_123,
            full_sync: false,
            more: Vec::new(),
        }
    }

    #[test]
    fn status_has_the_control_hub_shape() {
        let body = message(
            &ev(Kind::Status, "RoomAnalytics.PeopleCount.Current", json!(3)),
            "org",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"type":"status","deviceId":"dev-1","workspaceId":"ws-1","orgId":"org",
                   "timestamp":"2025-11-27T10:15:30.123Z","isFullSync":false,
                   "changes":{"updated":{"RoomAnalytics.PeopleCount.Current":3},"removed":[]}})
        );
    }

    #[test]
    fn removed_status_and_events() {
        let body = message(
            &ev(
                Kind::Status,
                "Peripherals.ConnectedDevice[1].RoomAnalytics.AmbientTemperature",
                Value::Null,
            ),
            "",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["changes"],
            json!({"updated":{},"removed":["Peripherals.ConnectedDevice[1].RoomAnalytics.AmbientTemperature"]})
        );
        let body = message(
            &ev(
                Kind::Event,
                "UserInterface.Extensions.Widget.Action",
                json!({"WidgetId":"x","Type":"clicked"}),
            ),
            "o",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "events");
        assert_eq!(
            v["events"][0]["key"],
            "UserInterface.Extensions.Widget.Action"
        );
        assert_eq!(v["events"][0]["value"]["WidgetId"], "x");
        let v: Value = serde_json::from_slice(&health_check("o")).unwrap();
        assert_eq!(v["type"], "healthCheck");
        let nav = "Peripherals.ConnectedDevice[1115].RoomAnalytics";
        let sync = Event::with_changes(
            "d".into(),
            None,
            0,
            true,
            vec![
                ("RoomAnalytics.PeopleCount.Current".into(), json!(2)),
                (format!("{nav}.AmbientTemperature"), Value::Null),
                (format!("{nav}.RelativeHumidity"), Value::Null),
            ],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&message(&sync, "o")).unwrap();
        assert_eq!(v["isFullSync"], true);
        assert_eq!(
            v["changes"],
            json!({"updated":{"RoomAnalytics.PeopleCount.Current":2},
                   "removed":[format!("{nav}.AmbientTemperature"), format!("{nav}.RelativeHumidity")]})
        );
        let v: Value = serde_json::from_slice(&health_check("o")).unwrap();
        assert_eq!(v["type"], "healthCheck");
        assert_eq!(v["orgId"], "o");
    }
}
