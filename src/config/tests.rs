//! One test per kind of config error: each names the key, the line and the fix, and no
//! error ever shows a secret.

use super::*;

const GOOD: &str = r#"[gateway]
data_dir = "./data"
org_id = "my-org"

[admin]
listen = "127.0.0.1:9750"

[[sources.mqtt]]
name = "sensors"
url = "mqtt://127.0.0.1:1883"
client_id = "roomhook-gw1"

[[sources.mqtt.subscriptions]]
topic = "bench/+/status"
format = "json"
device = "{1}"
workspace = "lobby"
[sources.mqtt.subscriptions.fields]
"/people" = "RoomAnalytics.PeopleCount.Current"

[[webhooks]]
name = "facilities"
url = "https://hooks.example.com/rooms"
authorization = "Bearer abc-secret"
devices = ["*"]
statuses = ["RoomAnalytics.PeopleCount.Current"]
events = []
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(Path::new("/etc/roomhook/roomhook.toml"), text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0,
    }
}

fn one(text: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert!(!e.to_string().contains("abc-secret"), "secret in {e}");
    e
}

#[test]
fn the_issue_example_is_valid() {
    let s = load_str(Path::new("/etc/roomhook/roomhook.toml"), GOOD).unwrap();
    assert_eq!(s.data_dir, Path::new("/etc/roomhook/./data"));
    assert_eq!(
        s.webhooks[0].auth,
        Auth::Token(Secret::new("Bearer abc-secret"))
    );
    assert_eq!(s.mqtt[0].client_id, "roomhook-gw1");
    assert!(!format!("{s:?}").contains("abc-secret"));
}

#[test]
fn http_webhook_url() {
    let e = one(&GOOD.replace("https://hooks", "http://hooks"));
    assert_eq!(e.key, "webhooks[0].url");
    assert_eq!(e.line, Some(23));
    assert!(e.problem.contains("plain http"));
    assert!(e.fix.contains("https://"));
    assert!(e
        .to_string()
        .starts_with("/etc/roomhook/roomhook.toml:23: webhooks[0].url:"));
}

#[test]
fn unknown_catalog_path_suggests_the_nearest() {
    let e = one(&GOOD.replace(
        "statuses = [\"RoomAnalytics.PeopleCount.Current\"]",
        "statuses = [\"RoomAnalytics.PeopleCount.Curent\"]",
    ));
    assert_eq!(e.key, "webhooks[0].statuses[0]");
    assert_eq!(e.line, Some(26));
    assert!(
        e.fix.contains("\"RoomAnalytics.PeopleCount.Current\""),
        "{e}"
    );
    let e = one(&GOOD.replace(
        "\"/people\" = \"RoomAnalytics.PeopleCount.Current\"",
        "\"/people\" = \"RoomAnalytics.Peoplecount\"",
    ));
    assert_eq!(e.key, "sources.mqtt[0].subscriptions[0].fields./people");
    assert!(e.fix.contains("did you mean"), "{e}");
}

#[test]
fn an_event_among_statuses_says_where_it_belongs() {
    let e = one(&GOOD.replace(
        "statuses = [\"RoomAnalytics.PeopleCount.Current\"]",
        "statuses = [\"RoomAnalytics.PeopleCount.Current\", \"BootEvent\"]",
    ));
    assert_eq!(e.key, "webhooks[0].statuses[1]");
    assert!(e.fix.contains("move it to events"), "{e}");
}

#[test]
fn missing_secret_file() {
    let e = one(&GOOD.replace(
        "authorization = \"Bearer abc-secret\"",
        "authorization_file = \"/nonexistent/token\"",
    ));
    assert_eq!(e.key, "webhooks[0].authorization_file");
    assert!(e.problem.contains("/nonexistent/token"));
    assert!(e.fix.contains("create the file"));
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "Bearer from-file\n").unwrap();
    let text = GOOD.replace(
        "authorization = \"Bearer abc-secret\"",
        "authorization_file = \"token\"",
    );
    let s = load_str(&dir.path().join("roomhook.toml"), &text).unwrap();
    assert_eq!(
        s.webhooks[0].auth,
        Auth::Token(Secret::new("Bearer from-file"))
    );
}

#[test]
fn duplicate_webhook_name() {
    let second = "\n[[webhooks]]\nname = \"facilities\"\nurl = \"https://b.example.com/\"\nauth = \"none\"\nstatuses = [\"RoomAnalytics.*\"]\n";
    let e = one(&format!("{GOOD}{second}"));
    assert_eq!(e.key, "webhooks[1].name");
    assert_eq!(e.line, Some(30));
    assert!(e.problem.contains("used twice"));
}

#[test]
fn compression_is_none_or_gzip_with_a_did_you_mean() {
    let s = load_str(Path::new("/etc/roomhook/roomhook.toml"), GOOD).unwrap();
    assert_eq!(
        s.webhooks[0].compression,
        crate::value::compression::Compression::None
    );
    let gz = load_str(
        Path::new("/etc/roomhook/roomhook.toml"),
        &format!("{GOOD}compression = \"gzip\"\n"),
    )
    .unwrap();
    assert_eq!(
        gz.webhooks[0].compression,
        crate::value::compression::Compression::Gzip
    );
    let e = one(&format!("{GOOD}compression = \"gzpi\"\n"));
    assert_eq!(e.key, "webhooks[0].compression");
    assert_eq!(e.line, Some(28));
    assert!(e.problem.contains("\"gzpi\""), "{e}");
    assert!(e.fix.contains("did you mean \"gzip\"?"), "{e}");
    let e = one(&format!("{GOOD}compression = \"brotli\"\n"));
    assert!(!e.fix.contains("did you mean"), "{e}");
    assert!(
        e.fix.contains("\"none\"") && e.fix.contains("\"gzip\""),
        "{e}"
    );
    // Not a string at all: the TOML type error, at its line.
    let e = one(&format!("{GOOD}compression = true\n"));
    assert_eq!(e.line, Some(28));
}

#[test]
fn bad_mqtt_filter() {
    let e = one(&GOOD.replace("topic = \"bench/+/status\"", "topic = \"bench/#/status\""));
    assert_eq!(e.key, "sources.mqtt[0].subscriptions[0].topic");
    assert_eq!(e.line, Some(14));
    assert!(e.problem.contains("'#'"));
}

#[test]
fn device_level_outside_the_filter() {
    let e = one(&GOOD.replace("device = \"{1}\"", "device = \"{5}\""));
    assert_eq!(e.key, "sources.mqtt[0].subscriptions[0].device");
    assert!(e.problem.contains("level 5"));
}

#[test]
fn webhook_without_auth_needs_auth_none() {
    let e = one(&GOOD.replace("authorization = \"Bearer abc-secret\"\n", ""));
    assert_eq!(e.key, "webhooks[0].authorization");
    assert!(e.fix.contains("auth = \"none\""));
    assert!(load_str(
        Path::new("x.toml"),
        &GOOD.replace("authorization = \"Bearer abc-secret\"", "auth = \"none\"")
    )
    .is_ok());
}

#[test]
fn basic_auth_and_conflicts() {
    let basic = GOOD.replace(
        "authorization = \"Bearer abc-secret\"",
        "username = \"u\"\npassword = \"abc-secret\"",
    );
    let s = load_str(Path::new("x.toml"), &basic).unwrap();
    assert_eq!(
        s.webhooks[0]
            .auth
            .header_value()
            .map(|v| v.expose().to_string())
            .as_deref(),
        Some("Basic dTphYmMtc2VjcmV0")
    );
    let e = one(&GOOD.replace(
        "authorization = \"Bearer abc-secret\"",
        "authorization = \"Bearer abc-secret\"\nusername = \"u\"\npassword = \"abc-secret\"",
    ));
    assert!(e.problem.contains("both a token"));
}

#[test]
fn unknown_key_and_bad_toml_point_at_the_line() {
    let errs = errors(&GOOD.replace(
        "org_id = \"my-org\"",
        "org_id = \"my-org\"\norg_name = \"x\"",
    ));
    assert_eq!(errs[0].line, Some(4));
    assert!(
        errs[0].problem.contains("unknown field `org_name`"),
        "{}",
        errs[0]
    );
    let errs = errors("[gateway\n");
    assert_eq!(errs[0].line, Some(1));
}

#[test]
fn durations_and_limits() {
    let e = one(&GOOD.replace("events = []", "events = []\nrequest_timeout = \"soon\""));
    assert_eq!(e.key, "webhooks[0].request_timeout");
    let e = one(&GOOD.replace("events = []", "events = []\nmax_in_flight = 0"));
    assert_eq!(e.key, "webhooks[0].max_in_flight");
}

#[test]
fn bad_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let text = GOOD.replace("events = []", "events = []\nca_file = \"ca.pem\"");
    let errs = load_str(&dir.path().join("r.toml"), &text).unwrap_err().0;
    assert_eq!(errs[0].key, "webhooks[0].ca_file");
    assert!(errs[0].problem.contains("no CERTIFICATE"), "{}", errs[0]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("https://hooks", "http://hooks")
        .replace("topic = \"bench/+/status\"", "topic = \"a+\"")
        .replace("listen = \"127.0.0.1:9750\"", "listen = \"everywhere\"");
    assert_eq!(errors(&text).len(), 3);
}

#[test]
fn signing_secret_must_be_whsec_base64() {
    let e = one(&GOOD.replace(
        "events = []",
        "events = []\nsigning_secret = \"not-a-secret\"",
    ));
    assert_eq!(e.key, "webhooks[0].signing_secret");
    assert!(e.fix.contains("whsec_"), "{e}");
    assert!(
        !e.to_string().contains("not-a-secret"),
        "secret echoed: {e}"
    );
    let ok = GOOD.replace(
        "events = []",
        "events = []\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
    );
    assert!(load_str(Path::new("x.toml"), &ok).unwrap().webhooks[0]
        .signer
        .is_some());
}

#[test]
fn headers_mtls_and_admin_token_are_checked() {
    let text = GOOD.replace(
        "events = []",
        "events = []\nheaders = { \"X-Site\" = \"oslo\", \"Authorization\" = \"x\" }\nclient_cert_file = \"/nonexistent/c.pem\"",
    );
    let errs = errors(&text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert!(
        keys.contains(&"webhooks[0].headers.Authorization"),
        "{keys:?}"
    );
    assert!(keys.contains(&"webhooks[0].client_cert_file"), "{keys:?}");
    let e = errs
        .iter()
        .find(|e| e.key == "webhooks[0].client_cert_file")
        .unwrap();
    assert!(e
        .problem
        .contains("both client_cert_file and client_key_file"));

    let errs = errors(&GOOD.replace(
        "listen = \"127.0.0.1:9750\"",
        "listen = \"127.0.0.1:9750\"\ntoken = \"short\"",
    ));
    assert_eq!(errs[0].key, "admin.token");
    assert!(!errs[0].to_string().contains("short\""));

    let ok = load_str(
        Path::new("/etc/roomhook/roomhook.toml"),
        &GOOD.replace(
            "events = []",
            "events = []\nheaders = { \"X-Site\" = \"oslo\" }",
        ),
    )
    .unwrap();
    assert_eq!(
        ok.webhooks[0].headers,
        vec![("x-site".to_string(), "oslo".to_string())]
    );
}

const ROOMOS: &str = r#"
[[sources.roomos]]
name = "boardroom"
url = "wss://10.0.0.5/ws"
username = "roomhook"
password = "dev-secret"
pin_sha256 = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89"
workspace = "boardroom"
"#;

#[test]
fn a_roomos_source_defaults_to_what_the_webhooks_select() {
    let s = load_str(
        Path::new("/etc/roomhook/roomhook.toml"),
        &format!("{GOOD}{ROOMOS}"),
    )
    .unwrap();
    let r = &s.roomos[0];
    assert_eq!(
        (r.host.as_str(), r.port, r.path.as_str()),
        ("10.0.0.5", 443, "/ws")
    );
    assert_eq!(r.statuses, vec!["RoomAnalytics.PeopleCount.Current"]);
    assert!(r.events.is_empty());
    assert_eq!(r.device, None);
    assert_eq!(r.auth_mode, DeviceAuthMode::Header);
    assert_eq!(r.keep_alive, Duration::from_secs(30));
    let DeviceTrust::Pin(pin) = r.trust.as_ref().unwrap() else {
        panic!("not a pin");
    };
    assert_eq!(pin[..3], [0xab, 0xcd, 0xef]);
    assert!(!format!("{s:?}").contains("dev-secret"));
    // Plain hex, upper case, is the same pin.
    let plain = ROOMOS.replace(
        "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89",
        &"ABCDEF0123456789".repeat(4),
    );
    let s2 = load_str(Path::new("/x/r.toml"), &format!("{GOOD}{plain}")).unwrap();
    assert_eq!(s2.roomos[0].trust, r.trust);
}

#[test]
fn roomos_errors_name_the_key_and_the_fix() {
    let e = one(&format!("{GOOD}{}", ROOMOS.replace("ab:cd:ef:01:", "ab:")));
    assert_eq!(e.key, "sources.roomos[0].pin_sha256");
    assert_eq!(e.line, Some(34));
    assert!(e.problem.contains("(20 bytes)"), "{e}");
    assert!(e.fix.contains("roomhook source test boardroom"), "{e}");

    let e = one(&format!(
        "{GOOD}{}",
        ROOMOS.replace("wss://10.0.0.5/ws", "ws://10.0.0.5/ws")
    ));
    assert_eq!(e.key, "sources.roomos[0].url");
    assert!(e.fix.contains("allow_plaintext"), "{e}");

    let e = one(&format!(
        "{GOOD}{}statuses = [\"RoomAnalytics.PeopleCount.Curent\"]\n",
        ROOMOS
    ));
    assert_eq!(e.key, "sources.roomos[0].statuses[0]");
    assert!(e.fix.contains("RoomAnalytics.PeopleCount.Current"), "{e}");

    let unpinned: String = ROOMOS
        .lines()
        .filter(|l| !l.starts_with("pin_sha256"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = one(&format!("{GOOD}{unpinned}"));
    assert_eq!(e.key, "sources.roomos[0].pin_sha256");
    assert!(e.fix.contains("self-signed"), "{e}");

    let e = one(&format!(
        "{GOOD}{}",
        ROOMOS.replace("name = \"boardroom\"", "name = \"sensors\"")
    ));
    assert_eq!(e.key, "sources.roomos[0].name");

    let e = one(&format!(
        "{GOOD}{}",
        ROOMOS.replace("wss://10.0.0.5/ws", "wss://admin:pw@10.0.0.5/ws")
    ));
    assert_eq!(e.key, "sources.roomos[0].url");
    assert!(e.problem.contains("credentials"), "{e}");

    let e = one(&format!("{GOOD}{ROOMOS}auth_mode = \"cookie\"\n"));
    assert_eq!(e.key, "sources.roomos[0].auth_mode");
    assert!(!e.to_string().contains("dev-secret"));
}

#[test]
fn plaintext_roomos_for_a_lab() {
    let text = format!(
        "{GOOD}{}allow_plaintext = true\nauth_mode = \"subprotocol\"\n",
        ROOMOS
            .replace("wss://10.0.0.5/ws", "ws://10.0.0.5:8080")
            .lines()
            .filter(|l| !l.starts_with("pin_sha256"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let s = load_str(Path::new("/x/r.toml"), &text).unwrap();
    let r = &s.roomos[0];
    assert_eq!(
        (r.port, r.path.as_str(), r.trust.is_none()),
        (8080, "/ws", true)
    );
    assert_eq!(r.auth_mode, DeviceAuthMode::Subprotocol);
}

#[test]
fn absurd_numbers_are_errors_not_panics() {
    let e = one(&GOOD.replace(
        "events = []",
        "events = []\nrate_limit = 1e-300\nretry_max = \"99999999999999999999d\"",
    ));
    assert_eq!(e.key, "webhooks[0].retry_max");
    assert!(e.problem.contains("too long"), "{e}");
}

#[test]
fn an_authorization_value_a_header_cannot_carry_is_refused() {
    let e = one(&GOOD.replace("Bearer abc-secret", "Bearer abc-secret\\u0001"));
    assert_eq!(e.key, "webhooks[0].authorization");
    assert!(e.problem.contains("cannot carry"), "{e}");
}

#[test]
fn commit_interval_is_bounded() {
    let s = load_str(
        Path::new("/x/r.toml"),
        &GOOD.replace(
            "org_id = \"my-org\"",
            "org_id = \"my-org\"\ncommit_interval = \"250ms\"",
        ),
    )
    .unwrap();
    assert_eq!(s.commit_interval, Duration::from_millis(250));
    let e = one(&GOOD.replace(
        "org_id = \"my-org\"",
        "org_id = \"my-org\"\ncommit_interval = \"10s\"",
    ));
    assert_eq!(e.key, "gateway.commit_interval");
}

#[test]
fn broker_credentials_in_the_url_are_credentials_not_a_host_name() {
    let s = load_str(
        Path::new("/x/r.toml"),
        &GOOD.replace(
            "mqtt://127.0.0.1:1883",
            "mqtt://gw%2F1:p%40ss@broker.lan:1884",
        ),
    )
    .unwrap();
    let m = &s.mqtt[0];
    assert_eq!((m.host.as_str(), m.port), ("broker.lan", 1884));
    assert_eq!(
        m.credentials,
        Some(("gw/1".to_string(), Secret::new("p@ss")))
    );
    let e = one(&GOOD.replace("mqtt://127.0.0.1:1883", "http://user:pw-secret@broker.lan"));
    assert_eq!(e.key, "sources.mqtt[0].url");
    assert!(!e.to_string().contains("pw-secret"), "{e}");
    let e = one(&GOOD.replace(
        "https://hooks.example.com/rooms",
        "http://u:pw-secret@hooks.example.com/rooms?token=abc-secret",
    ));
    assert!(e.problem.contains("***@hooks.example.com"), "{e}");
}

#[test]
fn shutdown_grace_defaults_to_5s_and_is_bounded() {
    let file = Path::new("/x/r.toml");
    assert_eq!(
        load_str(file, GOOD).unwrap().shutdown_grace,
        Duration::from_secs(5)
    );
    let with = |v: &str| {
        GOOD.replace(
            "org_id = \"my-org\"",
            &format!("org_id = \"my-org\"\nshutdown_grace = \"{v}\""),
        )
    };
    let s = load_str(file, &with("12s")).unwrap();
    assert_eq!(s.shutdown_grace, Duration::from_secs(12));
    let e = one(&with("25s"));
    assert_eq!(e.key, "gateway.shutdown_grace");
    assert!(e.problem.contains("at most 20s"), "{e}");
    assert!(e.fix.contains("TimeoutStopSec"), "{e}");
    let e = one(&with("soon"));
    assert_eq!(e.key, "gateway.shutdown_grace");
}

#[test]
fn the_console_needs_a_listener_and_a_token() {
    let e = one(&GOOD.replace("[admin]\n", "[admin]\nconsole = true\n"));
    assert_eq!(e.key, "admin.console");
    assert!(e.fix.contains("token"), "{e}");
}

#[test]
fn the_webhook_defaults_the_console_shows_are_the_validators() {
    let plain = load_str(Path::new("/etc/roomhook/roomhook.toml"), GOOD).unwrap();
    let mut text = GOOD.to_string();
    for (key, value) in WEBHOOK_DEFAULTS {
        if value.parse::<f64>().is_ok() || value.parse::<bool>().is_ok() {
            text.push_str(&format!("{key} = {value}\n"));
        } else {
            text.push_str(&format!("{key} = {value:?}\n"));
        }
    }
    let explicit = load_str(Path::new("/etc/roomhook/roomhook.toml"), &text).unwrap();
    assert_eq!(plain.webhooks[0], explicit.webhooks[0]);
    // And the test can fail: a value other than the default changes the settings.
    let other = load_str(
        Path::new("/etc/roomhook/roomhook.toml"),
        &format!("{GOOD}max_in_flight = 7\n"),
    )
    .unwrap();
    assert_ne!(plain.webhooks[0], other.webhooks[0]);
}

#[test]
fn the_uplink_budget_is_bytes_or_a_size_and_names_its_line_when_wrong() {
    let file = Path::new("/etc/roomhook/roomhook.toml");
    let with = |v: &str| {
        GOOD.replace(
            "org_id = \"my-org\"",
            &format!("org_id = \"my-org\"\nuplink_bytes_per_s = {v}"),
        )
    };
    assert_eq!(load_str(file, GOOD).unwrap().uplink_bytes_per_s, None);
    for (v, want) in [
        ("20480", Some(20_480)),
        ("\"20KiB\"", Some(20_480)),
        ("\"1MB\"", Some(1_000_000)),
        ("0", None),
        ("\"0\"", None),
    ] {
        assert_eq!(
            load_str(file, &with(v)).unwrap().uplink_bytes_per_s,
            want,
            "{v}"
        );
    }
    for (v, says) in [
        ("\"lots\"", "not a size"),
        ("-5", "negative"),
        ("1.5", "not a number of bytes"),
        ("20", "less than one request a second"),
    ] {
        let e = one(&with(v));
        assert_eq!(e.key, "gateway.uplink_bytes_per_s", "{v}");
        assert_eq!(e.line, Some(4), "{v}");
        assert!(e.problem.contains(says), "{v}: {e}");
        assert!(e.fix.contains("\"20KiB\""), "{v}: {e}");
    }
}

#[test]
fn priority_is_0_to_9_and_the_weight_at_least_1() {
    let file = Path::new("/etc/roomhook/roomhook.toml");
    let plain = load_str(file, GOOD).unwrap();
    assert_eq!(
        (plain.webhooks[0].priority, plain.webhooks[0].uplink_weight),
        (5, 1)
    );
    let set = load_str(file, &format!("{GOOD}priority = 9\nuplink_weight = 3\n")).unwrap();
    assert_eq!(
        (set.webhooks[0].priority, set.webhooks[0].uplink_weight),
        (9, 3)
    );
    let e = one(&format!("{GOOD}priority = 10\n"));
    assert_eq!(e.key, "webhooks[0].priority");
    assert_eq!(e.line, Some(28));
    assert!(e.problem.contains("0 to 9"), "{e}");
    assert!(e.fix.contains("highest"), "{e}");
    let e = one(&format!("{GOOD}uplink_weight = 0\n"));
    assert_eq!(e.key, "webhooks[0].uplink_weight");
    assert_eq!(e.line, Some(28));
    assert!(e.fix.contains("uplink_weight = 3"), "{e}");
}

/// A kept fleet document that no longer fits the local file (its source renamed) does not
/// keep the gateway from starting: the local file runs alone, and the reason names the
/// kept file and says to delete it.
#[test]
fn a_kept_fleet_document_that_no_longer_fits_leaves_the_local_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let kept = dir.path().join("data").join(fleet::KEPT);
    // (named as the local file names its data_dir: `./data`)
    std::fs::write(
        &kept,
        "[[sources.mqtt]]\nname = \"renamed\"\n[[sources.mqtt.subscriptions]]\ntopic = \"a/#\"\nformat = \"zigbee2mqtt\"\n",
    )
    .unwrap();
    let text = GOOD.replace(
        "[admin]",
        "id = \"gw-1\"\n\n[fleet]\nconfig_url = \"https://fleet.example.com/{gateway}.toml\"\n\n[admin]",
    );
    let file = dir.path().join("roomhook.toml");
    let s = load_str(&file, &text).unwrap();
    assert_eq!(s.fleet_doc, None);
    assert_eq!(s.webhooks[0].name, "facilities");
    let why = s.fleet_kept_refused.expect("the reason");
    assert!(why.contains("data/fleet-config.toml:2:"), "{why}");
    assert!(why.contains("\"renamed\""), "{why}");
    assert!(
        why.ends_with(
            "delete {}/./data/fleet-config.toml"
                .replace("{}", &dir.path().display().to_string())
                .as_str()
        ),
        "{why}"
    );
    // One that fits is merged as before.
    std::fs::write(&kept, "webhooks = []\n").unwrap();
    let s = load_str(&file, &text).unwrap();
    assert!(
        s.fleet_kept_refused.is_none() && s.fleet_doc.is_some(),
        "{:?}",
        s.fleet_kept_refused
    );
    assert!(s.webhooks.is_empty());
    // A broken local file is still its own error.
    std::fs::write(&kept, "[[sources.mqtt]]\nname = \"renamed\"\n").unwrap();
    assert!(load_str(&file, &text.replace("org_id = \"my-org\"", "org_id = 5")).is_err());
}

/// `[gateway] id = ".."` would change the path of `config_url`: refused; a good one is taken.
#[test]
fn a_gateway_id_of_dots_is_refused() {
    for id in ["..", ".", ".x"] {
        let text = GOOD.replace("[admin]", &format!("id = \"{id}\"\n\n[admin]"));
        let errs = load_str(Path::new("/etc/roomhook/roomhook.toml"), &text)
            .expect_err(id)
            .0;
        assert_eq!(errs[0].key, "gateway.id", "{id}");
        assert!(errs[0].problem.contains("not starting with '.'"), "{id}");
    }
    let text = GOOD.replace("[admin]", "id = \"oslo-1.site\"\n\n[admin]");
    let s = load_str(Path::new("/etc/roomhook/roomhook.toml"), &text).unwrap();
    assert_eq!(s.gateway_id, "oslo-1.site");
}

/// With `[fleet] config_public_key`, a kept document is taken only with a valid signature
/// kept beside it: one kept before the key was set is left out (the local file runs alone).
#[test]
fn a_kept_fleet_document_without_its_signature_is_left_out_once_a_key_is_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let kept = dir.path().join("data").join(fleet::KEPT);
    std::fs::write(&kept, "webhooks = []\n").unwrap();
    let file = dir.path().join("roomhook.toml");
    let fleet = |key: &str| {
        GOOD.replace(
            "[admin]",
            &format!("id = \"gw-1\"\n\n[fleet]\nconfig_url = \"https://fleet.example.com/{{gateway}}.toml\"\n{key}\n[admin]"),
        )
    };
    assert!(load_str(&file, &fleet("")).unwrap().webhooks.is_empty());
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    use ring::signature::KeyPair;
    let text = fleet(&format!(
        "config_public_key = \"{}\"",
        b64(pair.public_key().as_ref())
    ));
    let s = load_str(&file, &text).unwrap();
    assert_eq!(s.webhooks.len(), 1, "the local webhooks run");
    let why = s.fleet_kept_refused.expect("left out");
    assert!(why.contains("no valid signature"), "{why}");
    // Kept with its signature (as a pull keeps it): taken.
    std::fs::write(
        fleet::kept_sig(&kept),
        b64(pair.sign(b"webhooks = []\n").as_ref()),
    )
    .unwrap();
    let s = load_str(&file, &text).unwrap();
    assert!(s.fleet_kept_refused.is_none() && s.webhooks.is_empty());
}
