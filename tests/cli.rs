//! The command line as a user meets it: `check-config`, `demo` (`--version`: tests/shipped.rs).

use roomhook_testkit::run_roomhook as roomhook;

#[test]
fn check_config_reports_every_problem_with_key_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[gateway]
data_dir = "data"

[[webhooks]]
name = "facilities"
url = "http://hooks.example.com/rooms"
authorization = "Bearer top-secret-value"
statuses = ["RoomAnalytics.PeopleCount.Curent"]
"#,
    )
    .unwrap();
    let (code, _, err) = roomhook(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:6: webhooks[0].url"), "{err}");
    assert!(err.contains("bad.toml:8: webhooks[0].statuses[0]"), "{err}");
    assert!(err.contains("fix: use an https:// URL"), "{err}");
    assert!(
        err.contains("did you mean \"RoomAnalytics.PeopleCount.Current\""),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(!err.contains("top-secret-value"), "secret printed: {err}");
}

#[test]
fn check_config_accepts_a_good_file_and_a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        "[gateway]\ndata_dir = \"data\"\n[[webhooks]]\nname = \"a\"\nurl = \"https://x.example/\"\nauth = \"none\"\nstatuses = [\"RoomAnalytics.*\"]\n",
    )
    .unwrap();
    let (code, out, err) = roomhook(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("OK (0 MQTT source(s), 0 RoomOS device(s), 1 webhook(s)"),
        "{out}"
    );
    let (code, _, err) = roomhook(&["check-config", "-c", "/nonexistent/roomhook.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the config file"), "{err}");
    let (code, _, err) = roomhook(&["run", "-c", "/nonexistent/roomhook.toml"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_demo_delivers_webhooks_and_stops_by_itself() {
    let (code, out, err) = roomhook(&["demo", "--duration", "3s", "--interval", "100ms"]);
    assert_eq!(code, 0, "{err}");
    let delivered = out
        .lines()
        .filter(|l| l.starts_with("receiver <- POST /webhook [200]"))
        .count();
    assert!(delivered >= 5, "only {delivered} deliveries:\n{out}\n{err}");
    assert!(out.contains("\"orgId\":\"demo-org\""), "{out}");
    assert!(out.contains("still queued"), "{out}");
}
