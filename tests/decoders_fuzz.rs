//! Fuzzing the payload decoders (proptest): arbitrary topics and bytes, arbitrary JSON, and
//! the golden fixtures (`tests/fixtures/decoders/`, the seed corpus) mutated byte by byte.
//! Whatever comes in: no panic, every rejection has a metric reason, every event's value
//! has its catalog type.

use proptest::prelude::*;
use roomhook::config::Settings;
use roomhook::source::decode::{decode, DecodeError};
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

const FORMATS: [&str; 4] = ["zigbee2mqtt", "meraki-mt", "meraki-mv", "json"];

/// A format's config and its fixtures' (topic, payload) pairs.
type Corpus = Vec<(Settings, Vec<(String, Vec<u8>)>)>;

fn fixtures() -> &'static Corpus {
    static F: OnceLock<Corpus> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders");
        FORMATS
            .iter()
            .map(|f| {
                let config = dir.join(format!("{f}.toml"));
                let text = std::fs::read_to_string(&config).unwrap();
                let settings = roomhook::config::load_str(&config, &text).unwrap();
                let cases: Vec<Value> = serde_json::from_str(
                    &std::fs::read_to_string(dir.join(format!("{f}.json"))).unwrap(),
                )
                .unwrap();
                let corpus = cases
                    .iter()
                    .map(|c| {
                        let payload = match c.get("payload_text") {
                            Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
                            None => serde_json::to_vec(&c["payload"]).unwrap(),
                        };
                        (c["topic"].as_str().unwrap().to_string(), payload)
                    })
                    .collect();
                (settings, corpus)
            })
            .collect()
    })
}

/// Decodes with every subscription of format `f` and checks the invariants.
fn check(f: usize, topic: &str, payload: &[u8]) {
    let (settings, _) = &fixtures()[f];
    let source = &settings.mqtt[0];
    for sub in &source.subscriptions {
        let d = decode(sub, &source.devices, topic, payload, 1);
        for e in &d.errors {
            assert!(DecodeError::LABELS.contains(&e.label()), "{e:?}");
        }
        for ev in &d.events {
            let entry = roomhook::catalog::lookup(&ev.path).expect("a catalog path");
            assert_eq!(
                entry.value.coerce(&ev.value).as_ref(),
                Ok(&ev.value),
                "{ev:?}"
            );
            assert!(!ev.device.is_empty());
        }
    }
}

/// The keys the decoders read (their formats' fields).
const KEYS: [&str; 12] = [
    "occupancy",
    "presence",
    "temperature",
    "humidity",
    "counts",
    "person",
    "celsius",
    "ts",
    "last_seen",
    "occ",
    "t10",
    "objects",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9 ._:-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                // A key the decoders look for (each as likely as any other key), or any.
                prop_oneof![
                    KEYS.len() as u32 => prop::sample::select(&KEYS[..]).prop_map(String::from),
                    1 => "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_and_topics(f in 0..4usize, topic in "[/a-zA-Z0-9 :+_-]{0,40}", payload in prop::collection::vec(any::<u8>(), 0..200)) {
        check(f, &topic, &payload);
    }

    #[test]
    fn arbitrary_json_on_real_topics(f in 0..4usize, pick in any::<prop::sample::Index>(), v in json_value()) {
        let corpus = &fixtures()[f].1;
        let (topic, _) = &corpus[pick.index(corpus.len())];
        check(f, topic, &serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn mutated_fixtures(f in 0..4usize, pick in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let corpus = &fixtures()[f].1;
        let (topic, payload) = &corpus[pick.index(corpus.len())];
        let mut p = payload.clone();
        if !p.is_empty() {
            for (at, byte) in edits {
                let i = at.index(p.len());
                p[i] = byte;
            }
        }
        check(f, topic, &p);
    }
}
