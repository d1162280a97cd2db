//! Test-only: the catalog against the simulated device. Every catalog status must be reported
//! by the device with a value of the type Cisco's xAPI reference gives it, and read by
//! roomhook's own decoder without a bad value; every catalog event must be one the device
//! knows and sends as an object. What the device cannot report is listed here, with why.

use super::test_client::{call, connect, recv, start, Ws};
use super::Role;
use crate::catalog::{generic_path, Kind, ValueType, ENTRIES};
use crate::source::roomos::tree::{decode_events, decode_status, Decoded, Selection};
use futures_util::SinkExt as _;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tokio_tungstenite::tungstenite::Message;

/// Catalog statuses the simulated device (a Room Kit on RoomOS, idle) does not report, and why.
const NOT_REPORTED: &[(&str, &str)] = &[
    (
        "Conference.Presentation.LocalInstance[*].SendingMode",
        "an entry exists only while a presentation is shared locally; the device shares nothing",
    ),
    (
        "Webex.DevicePersonalization.Hotdesking.SessionStatus",
        "only devices set up for hot desking (Desk series in shared mode) have it",
    ),
    (
        "MicrosoftTeams.Calling.InCall",
        "only in Microsoft Teams Rooms mode; on this device the path is invalid (tests/roomos.rs relies on that)",
    ),
    (
        "MicrosoftTeams.Pairing.Active",
        "only in Microsoft Teams Rooms mode",
    ),
    (
        "MicrosoftTeams.User.SignedIn",
        "only in Microsoft Teams Rooms mode",
    ),
];

/// Catalog statuses the reference grants only the Admin and User roles (an Integrator account
/// cannot read them), among those the device reports.
const ADMIN_AND_USER_ONLY: &[&str] = &[
    "RoomAnalytics.AmbientTemperature",
    "RoomAnalytics.RelativeHumidity",
    "RoomAnalytics.AirQuality.Index",
    "RoomAnalytics.InsideRoom.AmbientTemperature",
    "RoomAnalytics.InsideRoom.RelativeHumidity",
    "RoomAnalytics.InsideRoom.AirQualityIndex",
    "RoomAnalytics.OutsideRoom.AmbientTemperature",
    "RoomAnalytics.OutsideRoom.RelativeHumidity",
    "RoomAnalytics.OutsideRoom.AirQualityIndex",
    "SystemUnit.State.System",
    "Bookings.Availability.Status",
    "Bookings.Availability.TimeStamp",
    "Bookings.Current.Id",
];

/// Whether a value, as the device sends it, has the reference's type for this catalog type:
/// an `Integer` status is a JSON integer; a decimal one a number in a string (the reference
/// types these readings `String`: `"22.5"`) or a number; an enumeration exactly one of its
/// literals; text a string.
fn fits_the_reference(t: ValueType, v: &Value) -> bool {
    match t {
        ValueType::Integer => v.is_i64(),
        ValueType::Decimal => {
            v.is_number() || v.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok())
        }
        ValueType::Enum(values) => v.as_str().is_some_and(|s| values.contains(&s)),
        ValueType::Text => v.is_string(),
        ValueType::Object => false,
    }
}

/// Every leaf of a status tree with its concrete dotted path (`…Octaves[3].RT60`).
fn leaves<'a>(node: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match node {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Array(list) => {
                        for entry in list {
                            let id = entry["id"].as_str().unwrap_or("?");
                            let at = format!("{}[{id}]", join(k));
                            for (ek, ev) in entry.as_object().into_iter().flatten() {
                                if ek != "id" {
                                    leaves(ev, &format!("{at}.{ek}"), out);
                                }
                            }
                        }
                    }
                    _ => leaves(v, &join(k), out),
                }
            }
        }
        leaf => out.push((path.to_string(), leaf)),
    }
}

/// The whole status tree as an account of `role` reads it, after an integration has reported
/// a third-party occupancy sensor (the device has none until one does).
async fn status_tree(role: Role) -> Value {
    let sim = start(role).await;
    let mut ws = connect(&sim).await;
    let r = call(
        &mut ws,
        json!(1),
        "xCommand/RoomAnalytics/RoomInUse/Set",
        json!({"ID": "door-sensor-1", "State": "InUse", "Duration": 300}),
    )
    .await;
    assert_eq!(r["result"], json!({"status": "OK"}), "{r}");
    let r = call(
        &mut ws,
        json!(2),
        "xQuery",
        json!({"Query": ["Status", "**"]}),
    )
    .await;
    r["result"]["Status"].clone()
}

fn reported(tree: &Value) -> BTreeSet<String> {
    let mut all = Vec::new();
    leaves(tree, "", &mut all);
    all.iter().map(|(p, _)| generic_path(p)).collect()
}

#[tokio::test]
async fn every_catalog_status_is_reported_by_the_device_with_its_reference_type() {
    let tree = status_tree(Role::Admin).await;
    let mut all = Vec::new();
    leaves(&tree, "", &mut all);
    let mut problems = Vec::new();
    for e in ENTRIES.iter().filter(|e| e.kind == Kind::Status) {
        let values: Vec<_> = all
            .iter()
            .filter(|(p, _)| generic_path(p) == e.path)
            .collect();
        let excused = NOT_REPORTED.iter().any(|(p, _)| *p == e.path);
        if values.is_empty() && !excused {
            problems.push(format!("{}: not reported by the device", e.path));
        }
        if !values.is_empty() && excused {
            problems.push(format!("{}: reported, yet listed in NOT_REPORTED", e.path));
        }
        for (p, v) in values {
            if !fits_the_reference(e.value, v) {
                problems.push(format!("{p} = {v}: not {:?} as sent by RoomOS", e.value));
            }
            if let Err(why) = e.value.coerce(v) {
                problems.push(format!("{p} = {v}: {why}"));
            }
        }
    }
    for (p, why) in NOT_REPORTED {
        assert!(!why.is_empty());
        if crate::catalog::lookup(p).is_none() {
            problems.push(format!("{p}: listed in NOT_REPORTED, not in the catalog"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // roomhook's own reading of the same tree: every reported entry, and no bad value.
    let mut out = Decoded::default();
    let everything = Selection {
        statuses: vec!["*".to_string()],
        events: Vec::new(),
    };
    decode_status(&tree, &everything, &mut out);
    assert!(out.bad_values.is_empty(), "{:?}", out.bad_values);
    let decoded: BTreeSet<String> = out.updated.iter().map(|(p, _)| generic_path(p)).collect();
    let expected: BTreeSet<String> = ENTRIES
        .iter()
        .filter(|e| e.kind == Kind::Status)
        .filter(|e| !NOT_REPORTED.iter().any(|(p, _)| *p == e.path))
        .map(|e| e.path.to_string())
        .collect();
    assert_eq!(decoded, expected);
    let octaves = out
        .updated
        .iter()
        .filter(|(p, _)| p.ends_with("CenterFrequency"))
        .count();
    assert_eq!(octaves, 6, "125 Hz to 4000 Hz");
}

#[tokio::test]
async fn an_integrator_reads_the_catalog_statuses_the_reference_grants_it() {
    let admin = reported(&status_tree(Role::Admin).await);
    let integrator = reported(&status_tree(Role::Integrator).await);
    let catalog: BTreeSet<&str> = ENTRIES.iter().map(|e| e.path).collect();
    let hidden: BTreeSet<&str> = admin
        .difference(&integrator)
        .map(String::as_str)
        .filter(|p| catalog.contains(p))
        .collect();
    assert_eq!(hidden, ADMIN_AND_USER_ONLY.iter().copied().collect());
}

#[tokio::test]
async fn every_catalog_event_is_known_to_the_device_and_arrives_as_an_object() {
    let sim = start(Role::Integrator).await;
    let mut ws = connect(&sim).await;
    let shapes = super::data::event_schema_tree();
    for (n, e) in ENTRIES.iter().filter(|e| e.kind == Kind::Event).enumerate() {
        let segs: Vec<&str> = e.path.split('.').collect();
        let mut query = vec!["Event"];
        query.extend(&segs);
        let r = call(
            &mut ws,
            json!(n),
            "xFeedback/Subscribe",
            json!({ "Query": query }),
        )
        .await;
        let id = r["result"]["Id"].clone();
        assert!(id.is_u64(), "{}: {r}", e.path);
        let shape = segs.iter().fold(&shapes, |node, s| &node[*s]);
        assert!(shape.is_object(), "{}: no parameters in data.rs", e.path);
        sim.emit_event(e.path, shape.clone());
        let frame = recv(&mut ws).await;
        assert_eq!(frame["params"]["Id"], id, "{frame}");
        let mut out = Decoded::default();
        let only = Selection {
            statuses: Vec::new(),
            events: vec![e.path.to_string()],
        };
        decode_events(&frame["params"]["Event"], &only, &mut out);
        assert_eq!(out.events, vec![(e.path.to_string(), shape.clone())]);
        let r = call(
            &mut ws,
            json!(format!("u{n}")),
            "xFeedback/Unsubscribe",
            json!({ "Id": id }),
        )
        .await;
        assert_eq!(r["result"], json!({}), "{r}");
    }
}

/// Sends `xCommand RoomAnalytics RoomInUse Set`; its answer and the feedback the command
/// caused on this connection (which the device sends first).
async fn room_in_use_set(
    ws: &mut Ws,
    id: u64,
    source: Option<&str>,
    state: &str,
) -> (Value, Vec<Value>) {
    let mut params = json!({ "State": state });
    if let Some(source) = source {
        params["ID"] = json!(source);
    }
    send_command(ws, id, params).await
}

async fn send_command(ws: &mut Ws, id: u64, params: Value) -> (Value, Vec<Value>) {
    let req = json!({"jsonrpc": "2.0", "id": id, "method": "xCommand/RoomAnalytics/RoomInUse/Set", "params": params});
    ws.send(Message::text(req.to_string())).await.unwrap();
    let mut feedback = Vec::new();
    loop {
        let frame = recv(ws).await;
        if frame["id"] == json!(id) {
            return (frame, feedback);
        }
        feedback.push(frame["params"].clone());
    }
}

#[tokio::test]
async fn catalog_occupancy_sensors_follow_the_room_in_use_command() {
    let sim = start(Role::Integrator).await;
    let mut ws = connect(&sim).await;
    let ok = json!({"status": "OK"});
    let query = json!({"Query": ["Status", "RoomAnalytics", "**"]});
    // The path is valid before any source reports.
    let r = call(
        &mut ws,
        json!(1),
        "xFeedback/Subscribe",
        json!({"Query": ["Status", "RoomAnalytics", "OccupancySensor"]}),
    )
    .await;
    assert_eq!(r["result"], json!({"Id": 1}), "{r}");
    let (r, feedback) = room_in_use_set(&mut ws, 2, Some("door-1"), "InUse").await;
    assert_eq!(r["result"], ok);
    assert_eq!(
        feedback,
        vec![
            json!({"Id": 1, "Status": {"RoomAnalytics": {"OccupancySensor": [
                {"id": "1", "ID": "door-1", "RoomInUse": "True"}
            ]}}})
        ]
    );
    room_in_use_set(&mut ws, 3, Some("desk-2"), "InUse").await;
    room_in_use_set(&mut ws, 4, Some("door-1"), "NotInUse").await;
    let r = call(&mut ws, json!(5), "xQuery", query.clone()).await;
    let ra = &r["result"]["Status"]["RoomAnalytics"];
    assert_eq!(
        ra["OccupancySensor"],
        json!([
            {"id": "1", "ID": "door-1", "RoomInUse": "False"},
            {"id": "2", "ID": "desk-2", "RoomInUse": "True"}
        ])
    );
    assert_eq!(ra["RoomInUse"], json!("True"));
    room_in_use_set(&mut ws, 6, Some("desk-2"), "NotInUse").await;
    let r = call(&mut ws, json!(7), "xQuery", query.clone()).await;
    assert_eq!(
        r["result"]["Status"]["RoomAnalytics"]["RoomInUse"],
        json!("False")
    );
    // Anonymous input counts, and creates no entry.
    let (r, feedback) = room_in_use_set(&mut ws, 8, None, "InUse").await;
    assert_eq!((r["result"].clone(), feedback.len()), (ok.clone(), 0));
    let r = call(&mut ws, json!(9), "xQuery", query).await;
    let ra = &r["result"]["Status"]["RoomAnalytics"];
    assert_eq!(ra["RoomInUse"], json!("True"));
    assert_eq!(ra["OccupancySensor"].as_array().map(Vec::len), Some(2));
    // Sixteen identified sources at most; bad parameters.
    for n in 3..=16 {
        let (r, _) = room_in_use_set(&mut ws, 100 + n, Some(&format!("s{n}")), "InUse").await;
        assert_eq!(r["result"], ok, "{r}");
    }
    let (r, _) = room_in_use_set(&mut ws, 200, Some("s17"), "InUse").await;
    assert_eq!(r["error"]["code"], json!(1), "{r}");
    for (n, bad) in [
        json!({"State": "Busy"}),
        json!({"ID": "x"}),
        json!({"State": "InUse", "Duration": 0}),
        json!({"State": "InUse", "ID": ""}),
    ]
    .into_iter()
    .enumerate()
    {
        let (r, _) = send_command(&mut ws, 300 + n as u64, bad).await;
        assert_eq!(r["error"]["code"], json!(-32602), "{r}");
    }
}
