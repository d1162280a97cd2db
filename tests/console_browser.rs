//! The web console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver + fantoccini) against the real daemon, Mosquitto and HTTPS receivers with
//! certificates from a private CA made here. Sign-in, the live view, add (a bad URL and a
//! self-signed receiver refused with the stage shown, then verified), edit statuses and see
//! the events change, Test, dead letters and Replay, delete with the queue count, CSRF,
//! sign-out. Screenshots of each page go to `$CARGO_TARGET_TMPDIR/console/`.

use fantoccini::{Client, ClientBuilder, Locator};
use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "console-browser-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);
const TEMP: &str = "RoomAnalytics.AmbientTemperature";

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        use std::os::unix::process::CommandExt;
        // Its own process group: the browser it starts goes with it, even after a panic.
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}): install Debian's chromium and chromium-driver (.ci/run does)")
            });
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1200", "--lang=en-US"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot of the page scrolled to `css` (the top when `None`).
async fn screenshot(c: &Client, name: &str, at: Option<&str>) {
    let _ = c
        .execute(
            "const e = arguments[0] && document.querySelector(arguments[0]);
             if (e) e.scrollIntoView(); else window.scrollTo(0, 0);",
            vec![json!(at)],
        )
        .await;
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(shots().join(name), png).unwrap();
}

/// Runs `script` in the page until it returns something truthy; returns it.
async fn until(c: &Client, what: &str, script: &str) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < WAIT {
        if let Ok(v) = c.execute(script, vec![]).await {
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("in the browser: {what} did not happen within {WAIT:?} (last: {last})");
}

/// Waits until the add/edit form is filled and shown.
async fn editor_ready(c: &Client) {
    until(
        c,
        "the form ready",
        "const e = document.getElementById('editor');
         return !e.hidden && e.dataset.ready === '1' && !!document.querySelector('#f-statuses input');",
    )
    .await;
}

/// Waits until the element `css` contains `needle`; returns its text.
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let script = format!(
        "const e = document.querySelector({}); return e && e.textContent.includes({}) ? e.textContent : '';",
        json!(css),
        json!(needle)
    );
    let v = until(c, &format!("{css} showing {needle:?}"), &script).await;
    v.as_str().unwrap_or_default().to_string()
}

/// Clicks `css` with a real WebDriver click, again if the live view redrew it meanwhile.
async fn click(c: &Client, css: &str) {
    let start = Instant::now();
    loop {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(err) if start.elapsed() > WAIT => panic!("click {css}: {err}"),
                Err(_) => {}
            },
            Err(err) if start.elapsed() > WAIT => panic!("find {css}: {err}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn type_into(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

async fn set_checked(c: &Client, value: &str, on: bool) {
    let css = format!("input[type=checkbox][value=\"{value}\"]");
    let e = c.find(Locator::Css(&css)).await.expect("a checkbox");
    if e.is_selected().await.unwrap() != on {
        e.click().await.unwrap();
    }
}

/// Publishes people counts and temperatures of `device`, QoS 1.
async fn publish_values(port: u16, device: &str, values: &[(Option<i64>, Option<f64>)]) {
    let msgs = values
        .iter()
        .map(|(p, t)| {
            let mut body = serde_json::Map::new();
            if let Some(p) = p {
                body.insert("people".into(), json!(p));
            }
            if let Some(t) = t {
                body.insert("temperature".into(), json!(t));
            }
            (
                format!("bench/{device}/status"),
                Value::Object(body).to_string(),
            )
        })
        .collect();
    roomhook_testkit::publish_all(port, msgs, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The values of `path` the receiver accepted, in order.
fn values_of(rx: &roomhook::demo::receiver::Receiver, path: &str) -> Vec<Value> {
    rx.accepted()
        .iter()
        .flat_map(|r| r.messages())
        .filter_map(|m| {
            let u = m["changes"]["updated"].as_object()?.clone();
            u.get(path).cloned()
        })
        .collect()
}

async fn wait_values(rx: &roomhook::demo::receiver::Receiver, path: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let v = values_of(rx, path);
        if v.len() >= n {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{path}: {v:?}, expected {n} values");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_does_in_a_browser_what_the_control_hub_page_does() {
    // The standard source, reading a temperature too.
    let e = Rig::new()
        .console(ADMIN_TOKEN)
        .source(|port| {
            let people = Section::people().field("/temperature", TEMP);
            Section::mqtt("sensors", port).subscribe(people)
        })
        .build()
        .await;
    let bi = receiver(e.dir.path(), false).await;
    let self_signed = receiver(e.dir.path(), true).await;
    let mut daemon = Daemon::start(&e.config);
    let base = format!("http://127.0.0.1:{}", e.admin);
    let driver = Driver::start();
    let c = browser(&driver).await;

    // No access without a session: the state answers 401, the page is the sign-in form.
    c.goto(&format!("{base}/console/state")).await.unwrap();
    wait_text(&c, "body", "sign in first").await;
    c.goto(&format!("{base}/")).await.unwrap();
    type_into(&c, "#token", "not-the-token").await;
    click(&c, "button[type=submit]").await;
    wait_text(&c, ".error", "not the admin token").await;
    screenshot(&c, "login.png", None).await;
    // By keyboard: the token, then Enter.
    type_into(&c, "#token", &format!("{ADMIN_TOKEN}\u{E007}")).await;
    wait_text(&c, "tr[data-webhook=\"facilities\"]", "active").await;

    // The live view moves while events flow: the delivered counter, the chart, the devices.
    publish_values(
        e.broker.port,
        "room-1",
        &[
            (Some(1), Some(21.0)),
            (Some(2), None),
            (Some(3), Some(21.5)),
        ],
    )
    .await;
    wait_values(&e.rx.receiver, PEOPLE, 3).await;
    wait_text(
        &c,
        "tr[data-webhook=\"facilities\"] td.delivered",
        "3 / 3 / 3",
    )
    .await;
    let chart = until(
        &c,
        "the chart counting 3 delivered",
        "const img = document.querySelector('figure[data-webhook=\"facilities\"] img');
         if (!img || !img.complete || img.naturalWidth === 0) return '';
         const x = new XMLHttpRequest(); x.open('GET', img.src, false); x.send();
         return x.responseText.includes(': 3 delivered') ? x.responseText : '';",
    )
    .await;
    assert!(chart.as_str().unwrap().contains("<rect x="), "{chart}");
    wait_text(&c, "tr[data-device=\"room-1\"]", &format!("{PEOPLE} = 3")).await;
    wait_text(&c, "tr[data-device=\"room-1\"]", &format!("{TEMP} = 21.5")).await;
    wait_text(&c, "#sources", "sensors").await;
    wait_text(&c, "#store-drops", "Dropped: none").await;
    // A device id is the publisher's to choose, commas and glob characters included.
    publish_values(e.broker.port, "x, *", &[(None, Some(19.0))]).await;
    wait_text(&c, "#devices", "x, *").await;

    // Add: a plain-http URL and a self-signed receiver are refused with the stage shown.
    click(&c, "#add").await;
    editor_ready(&c).await;
    wait_text(&c, "#h-editor", "Add webhook").await;
    type_into(&c, "#f-name", "bi").await;
    type_into(&c, "#f-url", "http://127.0.0.1:9/hook").await;
    type_into(&c, "#f-authorization", TOKEN).await;
    set_checked(&c, PEOPLE, true).await;
    click(&c, "#save").await;
    let bad_url = wait_text(&c, "#form-result", "Not saved").await;
    assert!(bad_url.contains("https"), "{bad_url}");
    type_into(&c, "#f-url", &self_signed.url).await;
    click(&c, "#save").await;
    let refused = wait_text(&c, "#form-result", "verification failed").await;
    assert!(refused.contains("TLS:"), "the stage is named: {refused}");
    assert!(
        self_signed.receiver.requests().is_empty(),
        "nothing was sent to the self-signed receiver"
    );
    // The receiver with a certificate from a private CA, trusted by its CA file.
    type_into(&c, "#f-url", &bi.url).await;
    let ca = bi
        .ca_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    type_into(&c, "#f-ca", &ca).await;
    // The devices seen are offered.
    wait_text(&c, "#seen-devices", "room-1").await;
    // Picking `x, *` selects that device alone, not `x` and every device.
    wait_text(&c, "#seen-devices", "x, *").await;
    set_checked(&c, "x, *", true).await;
    let picked = c
        .execute("return document.getElementById('f-devices').value", vec![])
        .await
        .unwrap();
    // One quoted item, its glob character escaped (on main: `x, *`, i.e. x and every device).
    assert_eq!(
        picked,
        json!(r#""x, \\*""#),
        "the picked id widened the selection"
    );
    set_checked(&c, "x, *", false).await;
    type_into(&c, "#f-devices", "*").await;
    screenshot(&c, "add-webhook.png", Some("#editor")).await;
    click(&c, "#save").await;
    let added = wait_text(&c, "#outcome", "Added bi").await;
    assert!(added.contains("verified: HTTP 200"), "{added}");
    wait_text(&c, "tr[data-webhook=\"bi\"]", "active").await;
    let config = std::fs::read_to_string(&e.config).unwrap();
    assert!(config.contains("name = \"bi\""), "{config}");
    assert!(
        !config.contains(&self_signed.url),
        "the refused add saved nothing: {config}"
    );

    // Events flow to it; then its statuses are edited and the events change.
    publish_values(e.broker.port, "room-1", &[(Some(4), Some(21.5))]).await;
    assert_eq!(wait_values(&bi.receiver, PEOPLE, 1).await, [json!(4)]);
    click(&c, "button[aria-label=\"Edit bi\"]").await;
    editor_ready(&c).await;
    wait_text(&c, "#h-editor", "Edit bi").await;
    let kept = c
        .find(Locator::Css("#f-authorization"))
        .await
        .unwrap()
        .attr("placeholder")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(kept.contains("***"), "the secret is not echoed: {kept}");
    set_checked(&c, PEOPLE, false).await;
    set_checked(&c, TEMP, true).await;
    screenshot(&c, "edit-webhook.png", Some("#f-statuses")).await;
    click(&c, "#save").await;
    wait_text(&c, "#outcome", "Saved bi").await;
    let config = std::fs::read_to_string(&e.config).unwrap();
    // The secret was kept in the file (two webhooks use it now) and the server never
    // sends it to the page.
    assert_eq!(config.matches(TOKEN).count(), 2, "{config}");
    let shown = c
        .execute_async(
            "const done = arguments[0];
             fetch('/console/v1/webhooks/bi').then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("\"authorization\"") && !shown.contains(TOKEN),
        "{shown}"
    );
    publish_values(e.broker.port, "room-1", &[(Some(5), Some(22.5))]).await;
    assert_eq!(wait_values(&bi.receiver, TEMP, 1).await, [json!(22.5)]);
    wait_values(&e.rx.receiver, PEOPLE, 5).await;
    assert_eq!(
        values_of(&bi.receiver, PEOPLE),
        [json!(4)],
        "bi no longer gets people counts"
    );

    // Test: the healthCheck report.
    click(&c, "button[aria-label=\"Test bi\"]").await;
    let report = wait_text(&c, "#outcome", "Test bi: HTTP 200").await;
    assert!(
        report.contains("TLS 1.3") && report.contains("expires"),
        "{report}"
    );

    // A message the receiver refuses for good becomes a dead letter; Replay sends it again.
    bi.receiver.set_behaviour(Behaviour::Status(422));
    publish_values(e.broker.port, "room-1", &[(None, Some(23.0))]).await;
    click(&c, "button[aria-label=\"Dead letters of bi\"]").await;
    wait_text(&c, "#dead-rows td:nth-child(2)", "422").await;
    bi.receiver.set_behaviour(Behaviour::Accept);
    click(&c, "#dead-replay").await;
    wait_text(&c, "#outcome", "1 dead letter(s) queued again").await;
    assert_eq!(
        wait_values(&bi.receiver, TEMP, 2).await,
        [json!(22.5), json!(23.0)]
    );

    // Without the CSRF token (or with a wrong one) an action is refused.
    let refused = c
        .execute_async(
            "const done = arguments[0];
             Promise.all([
               fetch('/console/v1/webhooks/facilities/disable', {method: 'POST'}),
               fetch('/console/v1/webhooks/facilities/disable', {method: 'POST', headers: {'X-CSRF-Token': 'forged'}}),
             ]).then(rs => done(rs.map(r => r.status)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!([403, 403]));
    assert!(!std::fs::read_to_string(&e.config)
        .unwrap()
        .contains("enabled = false"));

    screenshot(&c, "webhooks.png", None).await;

    // Every field of the page has a label; on a phone nothing but the tables' own scroll
    // boxes is wider than the screen.
    let unlabelled = c
        .execute(
            "return [...document.querySelectorAll('input,textarea,progress')]
               .filter(i => i.type !== 'hidden' && !i.labels.length && !i.getAttribute('aria-label'))
               .map(i => i.id || i.outerHTML);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]));
    c.set_window_size(390, 844).await.unwrap();
    until(
        &c,
        "the page fitting a phone's width",
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
    )
    .await;
    screenshot(&c, "phone.png", None).await;
    c.set_window_size(1280, 1200).await.unwrap();

    // Delete asks, naming the queued events that go with it.
    bi.receiver.set_behaviour(Behaviour::Status(503));
    publish_values(
        e.broker.port,
        "room-1",
        &[(None, Some(24.0)), (None, Some(25.0)), (None, Some(26.0))],
    )
    .await;
    wait_text(&c, "tr[data-webhook=\"bi\"] td.queued", "3").await;
    click(&c, "button[aria-label=\"Delete bi\"]").await;
    let question = c.get_alert_text().await.expect("a confirmation");
    assert_eq!(question, "Delete bi? 3 queued event(s) go with it.");
    c.accept_alert().await.unwrap();
    wait_text(&c, "#outcome", "deleted; 3 queued event(s) went with it").await;
    until(
        &c,
        "the bi row gone",
        "return !document.querySelector('tr[data-webhook=\"bi\"]');",
    )
    .await;
    assert!(!std::fs::read_to_string(&e.config)
        .unwrap()
        .contains("name = \"bi\""));

    // Sign out: back to the form, and the state is closed again.
    click(&c, "header button[type=submit]").await;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    c.goto(&format!("{base}/console/state")).await.unwrap();
    wait_text(&c, "body", "sign in first").await;

    c.close().await.unwrap();
    assert_eq!(daemon.stop(), Some(0));
    eprintln!("screenshots in {}", shots().display());
}
