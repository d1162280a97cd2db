//! Third-party sensors end to end: Zigbee2MQTT and Meraki MV payloads published to a real
//! Mosquitto, decoded, named by `[[devices]]`, filtered per webhook (deadband, min_interval)
//! and delivered to the HTTPS receiver; junk counted and acknowledged.

use roomhook_testkit::*;
use std::time::{Duration, Instant};

const T: &str = "RoomAnalytics.AmbientTemperature";
const P: &str = "RoomAnalytics.PeoplePresence";

async fn send(port: u16, msgs: &[(&str, &str)]) {
    roomhook_testkit::publish_all(
        port,
        msgs.iter()
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect(),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// (device, path, value) of every message the receiver accepted, in order, and when.
fn received(rx: &TestReceiver) -> Vec<(String, String, serde_json::Value, Instant)> {
    rx.receiver
        .accepted()
        .iter()
        .flat_map(|r| {
            let at = r.at;
            r.messages().into_iter().flat_map(move |m| {
                let device = m["deviceId"].as_str().unwrap_or("").to_string();
                m["changes"]["updated"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |(p, v)| (device.clone(), p, v, at))
            })
        })
        .collect()
}

/// Waits (20 s at most) until a people count of `n` arrived.
async fn wait_count(rx: &TestReceiver, n: i64, daemon: &Daemon) {
    let arrived = rx
        .receiver
        .wait_for(Duration::from_secs(20), |r| {
            r.iter()
                .flat_map(|x| x.messages())
                .any(|m| m["changes"]["updated"][PEOPLE] == n)
        })
        .await;
    assert!(arrived, "{:?}\n{}", received(rx), daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zigbee2mqtt_and_meraki_mv_through_mosquitto_with_identity_and_filters() {
    let (rig, mut daemon) = Rig::new()
        .source(|port| {
            Section::mqtt("sensors", port)
                .subscribe(Section::subscription("zigbee2mqtt/#", "zigbee2mqtt"))
                .subscribe(Section::subscription("/merakimv/#", "meraki-mv"))
        })
        .with(Section::device("Room 12/PIR", "room-12", "ws-12"))
        .with(Section::device("0x00158d0001a2b3c4", "room-12", "ws-12"))
        .with(Section::device("Q2GV-ABCD-1234", "room-12", "ws-12"))
        .webhook(
            "statuses = [\"RoomAnalytics.*\"]\n\
             filters.\"RoomAnalytics.AmbientTemperature\".deadband = 0.3\n\
             filters.\"RoomAnalytics.PeopleCount.Current\".min_interval = \"2s\"",
        )
        .start()
        .await;
    let (broker, rx, admin) = (&rig.broker, &rig.rx, rig.admin);

    // Zigbee2MQTT: a PIR, a climate sensor with small moves, availability, the bridge, junk.
    let climate = "zigbee2mqtt/0x00158d0001a2b3c4";
    send(
        broker.port,
        &[
            ("zigbee2mqtt/bridge/state", r#"{"state":"online"}"#),
            (
                "zigbee2mqtt/Room 12/PIR/availability",
                r#"{"state":"online"}"#,
            ),
            (
                "zigbee2mqtt/Room 12/PIR",
                r#"{"battery":100,"illuminance_lux":53,"linkquality":120,"occupancy":true}"#,
            ),
            (
                climate,
                r#"{"battery":91,"humidity":41.57,"temperature":22.5}"#,
            ),
            (
                climate,
                r#"{"battery":91,"humidity":41.57,"temperature":22.6}"#,
            ),
            (
                climate,
                r#"{"battery":91,"humidity":41.57,"temperature":22.7}"#,
            ),
            (
                climate,
                r#"{"battery":91,"humidity":41.57,"temperature":22.9}"#,
            ),
            ("zigbee2mqtt/Room 12/PIR", "\u{0}garbage"),
        ],
    )
    .await;
    // Meraki MV: a noisy count. The first goes out; four more within a fraction of the
    // interval: only the last of them, one interval after the first.
    let count = |n: i64| {
        format!(
            r#"{{"ts":{},"counts":{{"person":{n}}}}}"#,
            roomhook::timefmt::now_ms()
        )
    };
    let camera = "/merakimv/Q2GV-ABCD-1234/0";
    send(broker.port, &[(camera, &count(1))]).await;
    wait_count(rx, 1, &daemon).await;
    let more: Vec<String> = (2..=5).map(count).collect();
    let mut more: Vec<(&str, &str)> = more.iter().map(|p| (camera, p.as_str())).collect();
    // The same device's temperature right behind the held count: not held with it.
    more.push((
        climate,
        r#"{"battery":91,"humidity":41.57,"temperature":23.5}"#,
    ));
    send(broker.port, &more).await;

    // The final count arrives, after the interval.
    wait_count(rx, 5, &daemon).await;
    let got = received(rx);
    let of = |path: &str| -> Vec<serde_json::Value> {
        got.iter()
            .filter(|(_, p, _, _)| p == path)
            .map(|(_, _, v, _)| v.clone())
            .collect()
    };
    // Everything is the one device the [[devices]] table names.
    assert!(got.iter().all(|(d, _, _, _)| d == "room-12"), "{got:?}");
    assert_eq!(of(P), vec![serde_json::json!("Yes")]);
    // 22.6 and 22.7 are within 0.3 of 22.5; 22.9 is not.
    assert_eq!(
        of(T),
        vec![
            serde_json::json!(22.5),
            serde_json::json!(22.9),
            serde_json::json!(23.5)
        ]
    );
    let pos = |path: &str, v: serde_json::Value| {
        got.iter()
            .position(|(_, p, x, _)| p == path && *x == v)
            .unwrap()
    };
    assert!(
        pos(T, serde_json::json!(23.5)) < pos(PEOPLE, serde_json::json!(5)),
        "the temperature waited behind the held count: {got:?}"
    );
    assert_eq!(
        of("RoomAnalytics.RelativeHumidity"),
        vec![serde_json::json!(42)]
    );
    // The first count at once, then only the latest, one interval later.
    assert_eq!(of(PEOPLE), vec![serde_json::json!(1), serde_json::json!(5)]);
    let at: Vec<Instant> = got
        .iter()
        .filter(|(_, p, _, _)| p == PEOPLE)
        .map(|(_, _, _, t)| *t)
        .collect();
    assert!(
        at[1].duration_since(at[0]) >= Duration::from_millis(1900),
        "two counts {:?} apart",
        at[1].duration_since(at[0])
    );
    let m = |s: &str| metric(admin, s).unwrap_or(-1.0);
    assert_eq!(
        m(r#"roomhook_source_decode_errors_total{source="sensors",reason="not_json"}"#),
        1.0
    );
    assert_eq!(
        m(r#"roomhook_events_filtered_total{reason="deadband"}"#),
        2.0
    );
    assert_eq!(
        m(r#"roomhook_events_filtered_total{reason="min_interval"}"#),
        3.0
    );
    assert_eq!(daemon.stop(), Some(0));
}
