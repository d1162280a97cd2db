//! Golden tests of the payload decoders: for each format, a config
//! (`tests/fixtures/decoders/<format>.toml`) and realistic messages with the events (or
//! the rejection reasons) they must give (`<format>.json`). A fixture's `ts` of `null`
//! means the receive time.

use roomhook::source::decode::decode;
use serde_json::{json, Value};
use std::path::Path;

/// The receive time (2025-12-01T00:00:00Z; the fixtures' sensor times are before it).
const NOW: i64 = 1_764_547_200_000;

fn run_fixtures(format: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders");
    let config = dir.join(format!("{format}.toml"));
    let text = std::fs::read_to_string(&config).unwrap();
    let settings = roomhook::config::load_str(&config, &text)
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let source = &settings.mqtt[0];
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{format}.json"))).unwrap())
            .unwrap();
    for case in &cases {
        let what = case["what"].as_str().unwrap();
        let topic = case["topic"].as_str().unwrap();
        let payload = match case.get("payload_text") {
            Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
            None => serde_json::to_vec(&case["payload"]).unwrap(),
        };
        let sub = source
            .subscriptions
            .iter()
            .find(|s| s.filter.matches(topic))
            .unwrap_or_else(|| panic!("{what}: no subscription matches {topic}"));
        let d = decode(sub, &source.devices, topic, &payload, NOW);
        let mut got: Vec<Value> = d
            .events
            .iter()
            .map(|e| {
                json!({
                    "device": e.device,
                    "workspace": e.workspace,
                    "path": e.path,
                    "value": e.value,
                    "ts": if e.ts_ms == NOW { Value::Null } else { json!(e.ts_ms) },
                })
            })
            .collect();
        let mut want: Vec<Value> = case["events"].as_array().unwrap().clone();
        let by_path = |v: &Value| v["path"].as_str().unwrap_or("").to_string();
        got.sort_by_key(by_path);
        want.sort_by_key(by_path);
        assert_eq!(got, want, "{format}: {what}");
        let errors: Vec<&str> = d.errors.iter().map(|e| e.label()).collect();
        let want_errors: Vec<&str> = case
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(errors, want_errors, "{format}: {what}: {:?}", d.errors);
    }
    cases.len()
}

/// A test per format: its fixtures pass, and there are at least `min` of them.
macro_rules! fixtures {
    ($($test:ident: $format:literal, at least $min:literal;)*) => {$(
        #[test]
        fn $test() {
            assert!(run_fixtures($format) >= $min);
        }
    )*};
}

fixtures! {
    zigbee2mqtt: "zigbee2mqtt", at least 10;
    meraki_mt: "meraki-mt", at least 8;
    meraki_mv: "meraki-mv", at least 5;
    generic_json_with_transforms: "json", at least 3;
}
