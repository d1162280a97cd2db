//! RoomOS devices end to end: a simulated device (a real wss:// server speaking the xAPI's
//! JSON-RPC) → roomhook (the binary) → an HTTPS receiver with a private CA.

use roomhook::demo::device::{DeviceSim, DeviceSimOptions};
use roomhook_testkit::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The selection most tests' webhook has.
const ANALYTICS: &str = "statuses = [\"RoomAnalytics.*\"]";
const NAV: &str = "Peripherals.ConnectedDevice[1002].RoomAnalytics";

/// A config with the RoomOS `sources` and one webhook to `rx` selecting what `selection`
/// (TOML) says.
fn config(rx: &TestReceiver, admin_port: u16, sources: Vec<Section>, selection: &str) -> Config {
    let mut config = Config::new().admin(admin_port);
    for source in sources {
        config = config.with(source);
    }
    config.with(Section::webhook("facilities", &rx.url, &rx.ca_file).merge(selection))
}

/// Every message the receiver accepted, in arrival order.
fn messages(rx: &TestReceiver) -> Vec<Value> {
    rx.receiver
        .accepted()
        .iter()
        .flat_map(|r| r.messages())
        .collect()
}

/// Waits for the `n`th accepted message (1-based) that `f` matches, and returns it.
async fn wait_nth(rx: &TestReceiver, what: &str, n: usize, f: impl Fn(&Value) -> bool) -> Value {
    wait_nth_within(rx, Duration::from_secs(20), what, n, f).await
}

/// [`wait_nth`] with its own timeout.
async fn wait_nth_within(
    rx: &TestReceiver,
    timeout: Duration,
    what: &str,
    n: usize,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let found = rx
        .receiver
        .wait_for(timeout, |r| {
            r.iter()
                .filter(|x| x.status == 200)
                .flat_map(|x| x.messages())
                .filter(|m| f(m))
                .count()
                >= n
        })
        .await;
    assert!(found, "no {what} arrived; got:\n{:#?}", messages(rx));
    messages(rx)
        .into_iter()
        .filter(|m| f(m))
        .nth(n - 1)
        .expect("found")
}

async fn wait_message(rx: &TestReceiver, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_nth(rx, what, 1, f).await
}

fn is_sync(m: &Value) -> bool {
    m["type"] == "status" && m["isFullSync"] == true
}

fn updated<'a>(m: &'a Value, path: &str) -> Option<&'a Value> {
    m["changes"]["updated"].get(path)
}

/// One simulated device, a receiver, and roomhook reading the device (its first full sync
/// already delivered).
struct OneDevice {
    /// The config and the store (removed with the rig).
    _dir: tempfile::TempDir,
    dev: DeviceSim,
    rx: TestReceiver,
    admin: u16,
    path: std::path::PathBuf,
    daemon: Daemon,
    sync: Value,
}

async fn rig(serial: &str, name: &str, extra: &str, selection: &str) -> OneDevice {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(device_options(serial)).await;
    let rx = receiver(dir.path(), false).await;
    let admin = free_port();
    let source = Section::roomos(name, &dev).merge(extra);
    let path = config(&rx, admin, vec![source], selection).write(dir.path());
    let daemon = Daemon::start(&path);
    let sync = wait_message(&rx, "full sync", is_sync).await;
    OneDevice {
        _dir: dir,
        dev,
        rx,
        admin,
        path,
        daemon,
        sync,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_events_removals_and_full_syncs_arrive_as_control_hub_sends_them() {
    let mut r = rig(
        "FOC2447N0AB",
        "boardroom",
        "",
        "statuses = [\"RoomAnalytics.PeopleCount.Current\", \"Peripherals.*\"]\nevents = [\"UserInterface.Extensions.Widget.Action\"]",
    )
    .await;
    let (dev, rx, admin, daemon, sync) = (&r.dev, &r.rx, r.admin, &mut r.daemon, &r.sync);
    // The first connect: one full sync with every selected current value.
    assert_eq!(sync["deviceId"], "FOC2447N0AB", "device id = serial number");
    assert_eq!(sync["workspaceId"], "ws-boardroom");
    assert_eq!(sync["orgId"], "test-org");
    assert_eq!(updated(sync, PEOPLE), Some(&json!(-1)));
    assert_eq!(
        updated(sync, &format!("{NAV}.AmbientTemperature")),
        Some(&json!(22.5)),
        "a Navigator's string temperature is coerced to a number: {sync}"
    );
    assert_eq!(
        updated(sync, &format!("{NAV}.AirQuality.Index")),
        Some(&json!(1.2))
    );
    assert_eq!(sync["changes"]["updated"].as_object().unwrap().len(), 4);

    // A people count change is a status message.
    dev.set_status(PEOPLE, json!(3));
    let m = wait_message(rx, "people count 3", |m| {
        !is_sync(m) && updated(m, PEOPLE) == Some(&json!(3))
    })
    .await;
    assert_eq!(m["changes"]["removed"], json!([]));

    // A widget action is an events message.
    dev.emit_event(
        "UserInterface.Extensions.Widget.Action",
        json!({"WidgetId": "help-button", "Type": "clicked", "Value": ""}),
    );
    let m = wait_message(rx, "widget action", |m| m["type"] == "events").await;
    assert_eq!(
        m["events"][0]["key"],
        "UserInterface.Extensions.Widget.Action"
    );
    assert_eq!(m["events"][0]["value"]["WidgetId"], "help-button");
    assert_eq!(m["deviceId"], "FOC2447N0AB");

    // The Navigator is unplugged: its paths are removed.
    dev.remove("Peripherals.ConnectedDevice[1002]");
    let m = wait_message(rx, "removal", |m| {
        m["changes"]["removed"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    let mut removed: Vec<String> = m["changes"]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            format!("{NAV}.AirQuality.Index"),
            format!("{NAV}.AmbientTemperature"),
            format!("{NAV}.RelativeHumidity"),
        ]
    );
    // Plugged in again with the same value: new again, because the removal was forgotten.
    dev.set_status(&format!("{NAV}.AmbientTemperature"), json!("22.5"));
    wait_message(rx, "the Navigator back", |m| {
        !is_sync(m) && updated(m, &format!("{NAV}.AmbientTemperature")) == Some(&json!(22.5))
    })
    .await;

    // The connection drops: roomhook reconnects and sends a full sync again, flagged, with
    // the unchanged people count (the receiver's resync point) ...
    let before = messages(rx).len();
    dev.drop_connections();
    let second = wait_nth(rx, "second full sync", 2, is_sync).await;
    assert_eq!(updated(&second, PEOPLE), Some(&json!(3)));
    assert_eq!(dev.connects(), 2);
    // ... and nothing else: the current values the device re-sends on subscribing are not
    // forwarded again outside the full sync, nor is an unchanged value it repeats later
    // (change-only filtering holds across the reconnect).
    dev.send_raw(
        r#"{"jsonrpc":"2.0","method":"xFeedback/Event","params":{"Id":1,"Status":{"RoomAnalytics":{"PeopleCount":{"Current":3}}}}}"#,
    );
    dev.set_status(PEOPLE, json!(5));
    wait_message(rx, "people count 5", |m| {
        updated(m, PEOPLE) == Some(&json!(5))
    })
    .await;
    let after: Vec<Value> = messages(rx).into_iter().skip(before).collect();
    assert_eq!(
        after.len(),
        2,
        "after the reconnect only the full sync and the new value: {after:#?}"
    );

    assert_eq!(
        metric(admin, "roomhook_source_connected{source=\"boardroom\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            admin,
            "roomhook_source_reconnects_total{source=\"boardroom\"}"
        ),
        Some(1.0)
    );
    assert_eq!(daemon.stop(), Some(0));
    assert!(
        !daemon.logs().contains("device-pass-123"),
        "password in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_forbidden_paths_are_reported_and_the_others_flow() {
    // The subprotocol form of authentication, as browsers (jsxapi) use it.
    let mut r = rig(
        "FOC0000FORB",
        "hall",
        "auth_mode = \"subprotocol\"\ndevice = \"hall-kit\"\nstatuses = [\"RoomAnalytics.PeopleCount.Current\", \"RoomAnalytics.AmbientTemperature\", \"MicrosoftTeams.Calling.InCall\"]",
        ANALYTICS,
    )
    .await;
    let (dev, rx, admin, path, daemon, sync) =
        (&r.dev, &r.rx, r.admin, &r.path, &mut r.daemon, &r.sync);
    assert_eq!(sync["deviceId"], "hall-kit");
    assert_eq!(
        sync["changes"]["updated"],
        json!({ PEOPLE: -1 }),
        "only what the role may read and the device has"
    );
    dev.set_status(PEOPLE, json!(2));
    wait_message(rx, "people count 2", |m| {
        updated(m, PEOPLE) == Some(&json!(2))
    })
    .await;

    assert_eq!(
        metric(
            admin,
            "roomhook_source_subscriptions_failed{source=\"hall\"}"
        ),
        Some(2.0)
    );
    let (code, out, err) = run_cli(&["status", "--json", "-c", path.to_str().unwrap()]).await;
    assert!(code == 0 || code == 3, "{err}");
    let v: Value = serde_json::from_str(&out).expect("status json");
    let hall = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hall")
        .cloned()
        .expect("hall in status");
    let failed = hall["failed_subscriptions"].to_string();
    assert!(
        failed.contains("Status.RoomAnalytics.AmbientTemperature: permission denied")
            && failed.contains("Integrator"),
        "{failed}"
    );
    assert!(
        failed.contains("Status.MicrosoftTeams.Calling.InCall: invalid path"),
        "{failed}"
    );
    let (_, table, _) = run_cli(&["status", "-c", path.to_str().unwrap()]).await;
    assert!(
        table.contains(
            "refused subscription Status.RoomAnalytics.AmbientTemperature: permission denied"
        ),
        "{table}"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("refused the subscription to Status.RoomAnalytics.AmbientTemperature"),
        "{logs}"
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_pin_is_a_clear_error_and_no_tight_loop() {
    let dir = tempfile::tempdir().unwrap();
    let good = device(device_options("FOC0000GOOD")).await;
    let locked = device(DeviceSimOptions {
        password: "another-password".into(),
        ..device_options("FOC0000LOCK")
    })
    .await;
    let other = device(device_options("FOC0000PIN1")).await;
    let rx = receiver(dir.path(), false).await;
    let admin = free_port();
    // Pinned to another device's certificate (the good one's, in lower case).
    let wrong_pin =
        Section::roomos("lobby", &other).set("pin_sha256", good.cert_sha256().to_lowercase());
    let unpinned = Section::roomos("new-room", &good).remove("pin_sha256");
    let sources = vec![
        Section::roomos("good", &good),
        Section::roomos("locked", &locked),
        wrong_pin,
    ];
    let path = config(&rx, admin, sources, ANALYTICS).write(dir.path());
    // Two of the three devices refuse: only the control API is waited for.
    let mut daemon = Daemon::start_answering(&path);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let l = daemon.logs();
            l.contains("refused the credentials of user \"roomhook\"")
                && l.contains("which is not pin_sha256")
        }),
        "{}",
        daemon.logs()
    );
    let logs = daemon.logs();
    let line = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("refused the credentials").contains("locked"),
        "names the source"
    );
    assert!(line("not pin_sha256").contains("lobby"), "names the source");
    // The good device flows meanwhile.
    wait_message(&rx, "full sync of the good device", |m| {
        is_sync(m) && m["deviceId"] == "FOC0000GOOD"
    })
    .await;
    // No tight loop: the next attempt is about a minute away.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(locked.handshakes(), 1, "a wrong password is retried slowly");
    assert_eq!(
        other.handshakes(),
        0,
        "a wrong pin never gets to the upgrade"
    );
    assert_eq!(
        metric(admin, "roomhook_source_connected{source=\"locked\"}"),
        Some(0.0)
    );

    // `source test` shows what to pin, and says what is wrong.
    let cfg = path.to_str().unwrap();
    let (code, out, _) = run_cli(&["source", "test", "lobby", "-c", cfg]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("certificate SHA-256: {}", other.cert_sha256())),
        "{out}"
    );
    assert!(out.contains("which is not pin_sha256"), "{out}");
    let (code, out, _) = run_cli(&["source", "test", "good", "-c", cfg]).await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "product: Cisco Room Kit Pro",
        "serial number: FOC0000GOOD",
        "ok       Status.RoomAnalytics",
        "RoomAnalytics.PeopleCount.Current = -1",
        &good.cert_sha256(),
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    let (code, out, _) = run_cli(&["source", "test", "locked", "-c", cfg]).await;
    assert_eq!(code, 1);
    assert!(out.contains("refused the credentials"), "{out}");
    // A source not pinned yet: the certificate is shown, nothing is sent to it.
    let fresh =
        config(&rx, free_port(), vec![unpinned], ANALYTICS).write_as(dir.path(), "fresh.toml");
    let handshakes = good.handshakes();
    let (code, out, _) =
        run_cli(&["source", "test", "new-room", "-c", fresh.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("pin_sha256 = \"{}\"", good.cert_sha256())),
        "{out}"
    );
    assert_eq!(
        good.handshakes(),
        handshakes,
        "no credentials to an unpinned device"
    );
    let (code, _, err) = run_cli(&["check-config", "-c", fresh.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("sources.roomos[0].pin_sha256"), "{err}");
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_counted_and_never_stall_the_source() {
    let mut r = rig(
        // A serial number is the device's to choose: it must not forge a log line.
        "FOC0000JUNK\nERROR forged line",
        "junk",
        "max_frame = \"64KiB\"",
        ANALYTICS,
    )
    .await;
    let (dev, rx, admin, daemon) = (&r.dev, &r.rx, r.admin, &mut r.daemon);
    dev.send_raw("this is not JSON");
    dev.send_raw(r#"{"jsonrpc":"2.0","method":"xCommand/Dial","params":{}}"#);
    dev.send_raw(r#"{"jsonrpc":"2.0","method":"xFeedback/Event","params":{"Id":999,"Status":{"RoomAnalytics":{"PeopleCount":{"Current":9}}}}}"#);
    dev.send_raw(r#"{"jsonrpc":"2.0","id":4242,"result":{}}"#);
    dev.send_raw(r#"[1,2,3]"#);
    dev.send_binary(vec![0, 159, 146, 150]);
    dev.set_status(PEOPLE, json!("many"));
    dev.set_status(PEOPLE, json!(4));
    wait_message(rx, "people count 4", |m| {
        updated(m, PEOPLE) == Some(&json!(4))
    })
    .await;
    let reason = |r: &str| {
        metric(
            admin,
            &format!("roomhook_source_decode_errors_total{{source=\"junk\",reason=\"{r}\"}}"),
        )
    };
    for (r, n) in [
        ("not_json", 1.0),
        ("unknown_method", 1.0),
        ("unknown_id", 2.0),
        ("malformed", 1.0),
        ("binary", 1.0),
        ("bad_value", 1.0),
    ] {
        assert_eq!(reason(r), Some(n), "{r}:\n{}", scrape(admin));
    }
    assert!(
        !messages(rx)
            .iter()
            .any(|m| updated(m, PEOPLE) == Some(&json!(9))),
        "a notification for an unknown subscription was forwarded"
    );
    // A frame over max_frame: counted, the connection is renewed, values flow again.
    dev.send_raw(&format!(
        r#"{{"jsonrpc":"2.0","method":"xFeedback/Event","params":{{"Id":1,"Status":{{"Pad":"{}"}}}}}}"#,
        "x".repeat(100_000)
    ));
    assert!(
        wait_until(Duration::from_secs(20), || reason("too_large") == Some(1.0)
            && dev.connects() >= 2
            && dev.connections() == 1),
        "{}",
        daemon.logs()
    );
    wait_message(rx, "second full sync", |m| {
        is_sync(m) && updated(m, PEOPLE) == Some(&json!(4))
    })
    .await;
    dev.set_status(PEOPLE, json!(6));
    wait_message(rx, "people count 6", |m| {
        updated(m, PEOPLE) == Some(&json!(6))
    })
    .await;
    let logs = daemon.logs();
    assert!(
        logs.contains("frame from the device ignored"),
        "bad frames are logged"
    );
    assert!(
        logs.contains("forged line"),
        "the serial number is logged: {logs}"
    );
    assert!(
        !logs
            .lines()
            .any(|l| l.trim_start().starts_with("ERROR forged")),
        "a serial number forged a log line: {logs}"
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_is_detected_by_the_keepalive_and_reconnected() {
    let mut r = rig("FOC0000DEAD", "quiet", "keep_alive = \"2s\"", ANALYTICS).await;
    let (dev, rx, daemon) = (&r.dev, &r.rx, &mut r.daemon);
    dev.set_silent(true);
    // keep_alive = 2s: a ping unanswered for one interval means a dead peer.
    daemon.expect_log("no pong within keep_alive", Duration::from_secs(15));
    dev.set_silent(false);
    assert!(wait_until(Duration::from_secs(15), || dev.connects() >= 2));
    dev.set_status(PEOPLE, json!(7));
    wait_message(rx, "people count 7", |m| {
        updated(m, PEOPLE) == Some(&json!(7))
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_drop_together_reconnect_spread_over_the_jitter() {
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path(), false).await;
    let mut devices = Vec::new();
    let mut sources = Vec::new();
    for i in 0..8 {
        let d = device(device_options(&format!("FOC00000{i:03}"))).await;
        sources.push(Section::roomos(&format!("room-{i}"), &d));
        devices.push(d);
    }
    let path = config(&rx, free_port(), sources, ANALYTICS).write(dir.path());
    let mut daemon = Daemon::start(&path);
    assert!(
        wait_until(Duration::from_secs(20), || devices
            .iter()
            .all(|d| d.connections() == 1)),
        "{}",
        daemon.logs()
    );
    // A shared outage: every connection drops at the same instant.
    for d in &devices {
        d.drop_connections();
    }
    assert!(
        wait_until(Duration::from_secs(20), || devices
            .iter()
            .all(|d| d.connects() >= 2)),
        "{}",
        daemon.logs()
    );
    let times: Vec<Instant> = devices.iter().map(|d| d.connect_times()[1]).collect();
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    // Full jitter over the first backoff step (1 s): 8 uniform draws span well over 150 ms
    // (all within 150 ms of each other has a chance of about 10^-5).
    assert!(
        last - first >= Duration::from_millis(150),
        "reconnects not spread: {:?}",
        last - first
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooting_or_rate_limiting_device_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(device_options("FOC0000BOOT")).await;
    dev.set_handshake_status(Some(502));
    let rx = receiver(dir.path(), false).await;
    let source = Section::roomos("boot", &dev);
    let path = config(&rx, free_port(), vec![source], ANALYTICS).write(dir.path());
    // Not Daemon::start: it waits for a subscription, which needs the device up. The
    // back-off's ceiling is 16 s instead of 60 (a test hook), so that the wait after the
    // fault is short; the doubling below it is the daemon's own.
    let mut daemon = Daemon::start_until(
        &path,
        &[("ROOMHOOK_TEST_RECONNECT_MAX_MS", "16000")],
        "answer on its control socket",
        |_| true,
    );
    daemon.expect_log(
        "the device is rebooting (HTTP 502)",
        Duration::from_secs(15),
    );
    dev.set_handshake_status(Some(503));
    let before = dev.handshakes();
    let switched = std::time::Instant::now();
    daemon.expect_log(
        "limits connection attempts (HTTP 503)",
        Duration::from_secs(20),
    );
    // Eight seconds of 503 (the fault's duration): a retry every second would make 8 or
    // more attempts (16 with the first delay's jitter); the back-off makes a few.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(switched.elapsed())).await;
    let attempts = dev.handshakes() - before;
    dev.set_handshake_status(None);
    // The back-off may have reached its ceiling (16 s here, fully jittered) by now.
    wait_nth_within(
        &rx,
        Duration::from_secs(40),
        "full sync once the device is back",
        1,
        is_sync,
    )
    .await;
    assert!(
        attempts <= 5,
        "not backed off: {attempts} attempts in 8 s of 503"
    );
    assert_eq!(daemon.stop(), Some(0));
}
