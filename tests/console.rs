//! The web console over plain HTTP as a browser speaks it (sign-in form, session cookie,
//! CSRF token, rate limit, sign-out); `console_browser.rs` drives it in a real browser.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

const ADMIN_TOKEN: &str = "console-test-token-0123456789";

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn http(port: u16, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Answer {
    http_with(port, method, path, cookie, form, None)
}

fn http_with(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    csrf: Option<&str>,
) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = form.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if form.is_some() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    if let Some(t) = csrf {
        req.push_str(&format!("X-CSRF-Token: {t}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_live_state_csrf_sign_out_and_the_rate_limit() {
    let e = env("", "").await;
    let text = with_console(&std::fs::read_to_string(&e.config).unwrap(), ADMIN_TOKEN);
    std::fs::write(&e.config, text).unwrap();
    let mut daemon = Daemon::start(&e.config);
    let port = e.admin;

    // Nothing but the sign-in page without a session.
    let page = http(port, "GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Admin token"), "{}", page.body);
    assert_eq!(http(port, "GET", "/console/state", None, None).status, 401);
    assert_eq!(http(port, "GET", "/console/app.js", None, None).status, 401);

    // Sign in: a session cookie, HttpOnly and SameSite=Strict.
    let ok = http(
        port,
        "POST",
        "/login",
        None,
        Some(&format!("token={ADMIN_TOKEN}")),
    );
    assert_eq!(ok.status, 303);
    let set = ok.header("set-cookie").expect("a cookie").to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let app = http(port, "GET", "/", Some(&cookie), None);
    assert_eq!(app.status, 200);
    let csrf = app
        .body
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token in the page")
        .to_string();

    // The live state moves while events flow.
    publish(e.broker.port, &workload(2, 5)).await;
    assert!(
        e.rx.receiver
            .wait_accepted(10, Duration::from_secs(20))
            .await
    );
    let delivered = wait_until(Duration::from_secs(10), || {
        let s = http(port, "GET", "/console/state", Some(&cookie), None);
        let v: serde_json::Value = serde_json::from_str(&s.body).unwrap_or_default();
        v["webhooks"][0]["recent"]["delivered_5m"].as_u64() == Some(10)
    });
    assert!(delivered);

    // Actions are the control API, behind the session and its CSRF token.
    let disable = "/console/v1/webhooks/facilities/disable";
    assert_eq!(http(port, "POST", disable, Some(&cookie), None).status, 403);
    assert_eq!(
        http_with(port, "POST", disable, None, None, Some(&csrf)).status,
        401
    );
    let done = http_with(port, "POST", disable, Some(&cookie), None, Some(&csrf));
    assert_eq!(done.status, 200, "{}", done.body);
    let list = http(port, "GET", "/console/v1/webhooks", Some(&cookie), None);
    assert_eq!(list.status, 200);
    assert!(list.body.contains("\"enabled\":false"), "{}", list.body);
    assert!(
        !list.body.contains("s3cr3t-token-for-tests"),
        "a secret echoed: {}",
        list.body
    );
    let enable = "/console/v1/webhooks/facilities/enable";
    assert_eq!(
        http_with(port, "POST", enable, Some(&cookie), None, Some(&csrf)).status,
        200
    );
    let test = http_with(
        port,
        "POST",
        "/console/v1/webhooks/facilities/test",
        Some(&cookie),
        None,
        Some(&csrf),
    );
    assert_eq!(test.status, 200, "{}", test.body);
    assert!(test.body.contains("\"status\":200"), "{}", test.body);

    // Sign-out needs the form's CSRF token.
    assert_eq!(
        http(port, "POST", "/logout", Some(&cookie), Some("csrf=forged")).status,
        403
    );
    assert_eq!(
        http(port, "POST", "/logout", Some(&cookie), Some("")).status,
        403
    );
    let out = http(
        port,
        "POST",
        "/logout",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(out.status, 303);
    assert_eq!(
        http(port, "GET", "/console/state", Some(&cookie), None).status,
        401
    );

    // Wrong tokens: refused, then rate limited (even the right one waits).
    for _ in 0..5 {
        assert_eq!(
            http(port, "POST", "/login", None, Some("token=guess")).status,
            401
        );
    }
    let limited = http(
        port,
        "POST",
        "/login",
        None,
        Some(&format!("token={ADMIN_TOKEN}")),
    );
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_unless_asked_for() {
    let e = env("", "").await;
    let mut daemon = Daemon::start(&e.config);
    assert_eq!(http(e.admin, "GET", "/", None, None).status, 404);
    assert_eq!(daemon.stop(), Some(0));
}
