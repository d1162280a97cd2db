//! Metrics, health and status against the running binary: a known mix of traffic
//! (delivered, filtered, malformed, rejected, expired) and every counter asserted exactly;
//! `/readyz`; `roomhook status` (table and JSON); JSON logs without secrets.

use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_is_exact_for_a_known_mix() {
    // Three webhooks: `main` (the rig's, renamed) for every room, `strict` for room-1 (its
    // receiver refuses: 422) and `stale` for room-2 (its receiver is down: 503).
    let retry = "retry_max = \"300ms\"\n";
    let rig = Rig::new()
        .webhook(&format!("{retry}devices = [\"room-*\"]"))
        .hook("strict", &format!("{retry}devices = [\"room-1\"]"))
        .hook(
            "stale",
            &format!("{retry}devices = [\"room-2\"]\nmax_queue_age = \"1s\""),
        )
        .config(|d| {
            d.set("webhooks[facilities].name", "main")
                .merge("log", "filter = \"info\"\nformat = \"json\"");
        })
        .build()
        .await;
    let (main, broker, admin, path) = (&rig.rx, &rig.broker, rig.admin, &rig.config);
    rig.hook("strict")
        .receiver
        .set_behaviour(Behaviour::Status(422));
    rig.hook("stale")
        .receiver
        .set_behaviour(Behaviour::Status(503));
    // The flag would win over [log]; the harness passes --log, so check the format here.
    let daemon = Daemon::start(path);

    let msg = |device: &str, payload: &str| (format!("bench/{device}/status"), payload.to_string());
    let mix = vec![
        msg("room-1", r#"{"people":1}"#),      // main + strict
        msg("room-1", r#"{"people":2}"#),      // main + strict
        msg("room-1", r#"{"people":2}"#),      // unchanged for both
        msg("room-2", r#"{"people":5}"#),      // main + stale
        msg("room-3", r#"{"people":7}"#),      // main
        msg("hall", r#"{"people":3}"#),        // selected by none
        msg("room-1", "not json"),             // decode error
        msg("room-1", r#"{"people":"many"}"#), // decode error (bad value)
        msg("room-3", r#"{"people":7}"#),      // unchanged
    ];
    roomhook_testkit::publish_all(broker.port, mix, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let m = |series: &str| metric(admin, series);
    let settled = wait_until(Duration::from_secs(30), || {
        m("roomhook_events_delivered_total{webhook=\"main\"}") == Some(4.0)
            && m("roomhook_dead_letters{webhook=\"strict\"}") == Some(2.0)
            && m("roomhook_events_dropped_total{webhook=\"stale\",reason=\"expired\"}") == Some(1.0)
            // Removals are written with the next append, or within a second (LAZY_WAIT).
            && m("roomhook_queue_events{webhook=\"stale\"}") == Some(0.0)
            && m("roomhook_queue_events{webhook=\"main\"}") == Some(0.0)
    });
    assert!(settled, "{}\n{}", scrape(admin), daemon.logs());
    let text = scrape(admin);
    let exact = [
        ("roomhook_source_messages_total{source=\"sensors\"}", 9.0),
        (
            "roomhook_source_decode_errors_total{source=\"sensors\",reason=\"not_json\"}",
            1.0,
        ),
        (
            "roomhook_source_decode_errors_total{source=\"sensors\",reason=\"bad_value\"}",
            1.0,
        ),
        ("roomhook_source_connected{source=\"sensors\"}", 1.0),
        ("roomhook_source_reconnects_total{source=\"sensors\"}", 0.0),
        ("roomhook_events_enqueued_total{webhook=\"main\"}", 4.0),
        ("roomhook_events_enqueued_total{webhook=\"strict\"}", 2.0),
        ("roomhook_events_enqueued_total{webhook=\"stale\"}", 1.0),
        ("roomhook_events_delivered_total{webhook=\"main\"}", 4.0),
        ("roomhook_events_delivered_total{webhook=\"strict\"}", 0.0),
        ("roomhook_events_delivered_total{webhook=\"stale\"}", 0.0),
        ("roomhook_events_filtered_total{reason=\"unchanged\"}", 2.0),
        (
            "roomhook_events_filtered_total{reason=\"not_selected\"}",
            1.0,
        ),
        (
            "roomhook_requests_total{webhook=\"main\",code=\"200\"}",
            4.0,
        ),
        (
            "roomhook_requests_total{webhook=\"strict\",code=\"422\"}",
            2.0,
        ),
        (
            "roomhook_request_errors_total{webhook=\"strict\",kind=\"http_4xx\"}",
            2.0,
        ),
        ("roomhook_dead_letters{webhook=\"strict\"}", 2.0),
        // Counters of a known label set exist at 0 before anything happened.
        (
            "roomhook_request_errors_total{webhook=\"main\",kind=\"timeout\"}",
            0.0,
        ),
        (
            "roomhook_events_dropped_total{webhook=\"main\",reason=\"dead_letter_evicted\"}",
            0.0,
        ),
        (
            "roomhook_events_dropped_total{webhook=\"stale\",reason=\"expired\"}",
            1.0,
        ),
        (
            "roomhook_events_dropped_total{webhook=\"main\",reason=\"overflow\"}",
            0.0,
        ),
        ("roomhook_queue_events{webhook=\"main\"}", 0.0),
        ("roomhook_queue_events{webhook=\"strict\"}", 0.0),
        ("roomhook_queue_events{webhook=\"stale\"}", 0.0),
        ("roomhook_queue_bytes{webhook=\"main\"}", 0.0),
        ("roomhook_queue_oldest_age_seconds{webhook=\"main\"}", 0.0),
        ("roomhook_store_bytes", 0.0),
        ("roomhook_store_errors_total", 0.0),
        (
            "roomhook_store_events_dropped_total{reason=\"webhook_removed\"}",
            0.0,
        ),
        (
            "roomhook_request_duration_seconds_count{webhook=\"main\"}",
            4.0,
        ),
        (
            "roomhook_delivery_latency_seconds_count{webhook=\"main\"}",
            4.0,
        ),
        (
            "roomhook_webhook_state{webhook=\"main\",state=\"active\"}",
            1.0,
        ),
    ];
    // The build's facts, as build.rs gave them to this test and to the daemon.
    let build_info = format!(
        "roomhook_build_info{{version=\"{}\",commit=\"{}\",target=\"{}\",profile=\"{}\",features=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        env!("ROOMHOOK_BUILD_COMMIT"),
        env!("ROOMHOOK_BUILD_TARGET"),
        env!("ROOMHOOK_BUILD_PROFILE"),
        roomhook::version::FEATURES,
    );
    assert_eq!(m(&build_info), Some(1.0), "{build_info}\n{text}");
    for (series, want) in exact {
        assert_eq!(m(series), Some(want), "{series}\n{text}");
    }
    // The stale receiver's 503s: every one counted as a request and as an error.
    let s503 = m("roomhook_requests_total{webhook=\"stale\",code=\"503\"}").unwrap_or(0.0);
    assert!(s503 >= 1.0, "{text}");
    assert_eq!(
        m("roomhook_request_errors_total{webhook=\"stale\",kind=\"http_5xx\"}"),
        Some(s503)
    );
    assert!(m("roomhook_store_commit_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(m("roomhook_in_flight_limit{webhook=\"main\"}").is_some_and(|n| n >= 1.0));
    assert_eq!(main.receiver.accepted_messages(), 4);
    // Every request's bytes on the uplink, as the daemon estimates them, and as they add
    // up from what each receiver got (answered or refused).
    for (name, rx) in [
        ("main", &main.receiver),
        ("strict", &rig.hook("strict").receiver),
    ] {
        let got: u64 = rx.requests().iter().map(uplink_bytes).sum();
        assert!(got > 0);
        let series = format!("roomhook_uplink_bytes_total{{webhook=\"{name}\"}}");
        assert_eq!(m(&series), Some(got as f64), "{series}\n{text}");
    }

    // /readyz: ready (nothing failing for long); the body names the parts.
    let (status, body) = roomhook_testkit::http_get(admin, "/readyz", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    assert_eq!(roomhook_testkit::http_get(admin, "/healthz", None).0, 200);
    // The same as gauges: ready, and the store's budget (the daemon's default max_store_bytes, 128 MiB).
    assert_eq!(m("roomhook_ready"), Some(1.0));
    assert_eq!(m("roomhook_store_max_bytes"), Some((128u64 << 20) as f64));

    // `roomhook status`: the table and the JSON agree with the metrics.
    let (code, out, err) = run_cli(&["status", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("— ready"), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
            .to_string()
    };
    assert!(line("main ").contains("4/4/4"), "{out}");
    assert!(
        line("strict ").contains("0/0/0") && line("strict ").contains("2/2/2"),
        "{out}"
    );
    assert!(line("strict ").contains("HTTP 422"), "{out}");
    assert!(
        line("sensors ").contains("yes") && line("sensors ").contains(" 9 "),
        "{out}"
    );
    let (code, out, _) = run_cli(&["status", "--json", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sensors = &v["sources"][0];
    assert_eq!(sensors["messages"], 9);
    assert_eq!(sensors["decode_errors"], 2);
    let main_json = v["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "main")
        .unwrap();
    assert_eq!(main_json["recent"]["delivered_24h"], 4);
    let sent: u64 = main.receiver.requests().iter().map(uplink_bytes).sum();
    assert_eq!(main_json["recent"]["bytes_24h"], sent);

    // [log] format = "json" is used when no flag says otherwise (the harness sets only the
    // filter); secrets never show up.
    let logs = daemon.logs();
    let first = logs.lines().next().unwrap_or("");
    let parsed: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(parsed["level"].is_string(), "{first}");
    assert!(!logs.contains("s3cr3t-token"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_source_that_stays_disconnected() {
    let (rig, _daemon) = Rig::new().start().await;
    let (admin, path) = (rig.admin, &rig.config);
    assert_eq!(roomhook_testkit::http_get(admin, "/readyz", None).0, 200);
    drop(rig.broker);
    // Disconnected at once; not ready only after the allowance (60 s) — check the status
    // says "NO" now, without waiting a minute in a test.
    let down = wait_until(Duration::from_secs(10), || {
        metric(admin, "roomhook_source_connected{source=\"sensors\"}") == Some(0.0)
    });
    assert!(down);
    let (code, out, _) = run_cli(&["status", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("sensors") && l.contains(" NO ")),
        "{out}"
    );
}

/// The metric names `/metrics` exposes as PromQL selects them: every sample's name, and
/// the names each `# TYPE` line's kind gives (a counter `_total`; a histogram `_bucket`,
/// `_sum`, `_count`); a counter's bare name is not one (PromQL finds nothing under it).
fn exposed_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_string());
            }
        }
    }
    names
}

/// Every `roomhook_…` identifier (`roomhook_[a-z0-9_]+`, not inside a longer word) in `text`.
fn roomhook_identifiers(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (at, _) in text.match_indices("roomhook_") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let len = bytes[at..]
            .iter()
            .take_while(|&&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            .count();
        found.insert(text[at..at + len].to_string());
    }
    found
}

/// The PromQL of a Grafana dashboard: each panel target's `expr`, and each template
/// variable's `query` and `definition`, at any depth (rows may nest panels).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

/// What `queried` names that `/metrics` (`exposed`) does not, each with `origin`.
fn not_exposed(
    origin: &str,
    queried: &std::collections::BTreeSet<String>,
    exposed: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    queried
        .iter()
        .filter(|n| !exposed.contains(*n))
        .map(|n| format!("{n} (in {origin})"))
        .collect()
}

#[test]
fn every_metric_name_scan_finds_what_it_should() {
    let text = "# HELP roomhook_a A.\n# TYPE roomhook_a counter\nroomhook_a_total{x=\"1\"} 2\n\
                # TYPE roomhook_h histogram\n# TYPE roomhook_g gauge\nroomhook_g 1\n# EOF\n";
    let names: Vec<String> = exposed_names(text).into_iter().collect();
    assert_eq!(
        names,
        [
            "roomhook_a_total",
            "roomhook_g",
            "roomhook_h_bucket",
            "roomhook_h_count",
            "roomhook_h_sum"
        ]
    );
    let ids: Vec<String> = roomhook_identifiers(
        "sum(rate(roomhook_x_total{a=\"b\"}[5m])) / xroomhook_no + roomhook_y_bucket; roomhook.json",
    )
    .into_iter()
    .collect();
    assert_eq!(ids, ["roomhook_x_total", "roomhook_y_bucket"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alert_rules_query_exists() {
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let read = |path: &str| {
        std::fs::read_to_string(contrib.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    // The dashboard: the PromQL of its panels and template variables.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/roomhook.json")).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let in_dashboard = roomhook_identifiers(&queries.join("\n"));
    // The rules: every line but comments (expressions, and the queries in annotations).
    let rules = read("prometheus/roomhook.rules.yml");
    let rule_lines: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let in_rules = roomhook_identifiers(&rule_lines.join("\n"));
    // The scan found what the files obviously query (it did not come back empty).
    for (file, set, name) in [
        (
            "the dashboard",
            &in_dashboard,
            "roomhook_events_delivered_total",
        ),
        ("the rules", &in_rules, "roomhook_queue_oldest_age_seconds"),
    ] {
        assert!(set.contains(name), "{file}: {name} not found in {set:?}");
    }

    // A daemon with one webhook and both kinds of source (an MQTT broker and a RoomOS
    // device: each exports families of its own) that delivered an event and reloaded its
    // config once, so that every family (histograms and the reload counter too) has a
    // series: prometheus-client prints nothing for a family without one.
    let device = device(device_options("FOC2447N0AB")).await;
    let (rig, daemon) = Rig::new()
        .with(Section::roomos("desk", &device))
        .start()
        .await;
    publish(rig.broker.port, &[("room-1".to_string(), 3)]).await;
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let settled = wait_until(Duration::from_secs(30), || {
        let m = |series: &str| metric(rig.admin, series);
        // The device's people count may go to the webhook too: one event at least.
        m("roomhook_delivery_latency_seconds_count{webhook=\"facilities\"}")
            .is_some_and(|n| n >= 1.0)
            && m("roomhook_config_reloads_total{result=\"applied\"}") == Some(1.0)
            && m("roomhook_source_connected{source=\"desk\"}") == Some(1.0)
    });
    let text = scrape(rig.admin);
    assert!(settled, "{text}\n{}", daemon.logs());
    let exposed = exposed_names(&text);

    let mut missing = not_exposed("contrib/grafana/roomhook.json", &in_dashboard, &exposed);
    missing.extend(not_exposed(
        "contrib/prometheus/roomhook.rules.yml",
        &in_rules,
        &exposed,
    ));
    assert!(
        missing.is_empty(),
        "queried but not exposed by /metrics:\n  {}\n\nexposed: {exposed:?}",
        missing.join("\n  ")
    );
}
