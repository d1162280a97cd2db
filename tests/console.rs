//! The web console over plain HTTP as a browser speaks it (sign-in form, session cookie,
//! CSRF token, rate limit, sign-out); `console_browser.rs` drives it in a real browser.

use roomhook_testkit::*;
use std::time::Duration;

const ADMIN_TOKEN: &str = "console-test-token-0123456789";

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
    let mut headers = Vec::new();
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    if form.is_some() {
        headers.push(("content-type", "application/x-www-form-urlencoded"));
    }
    if let Some(t) = csrf {
        headers.push(("x-csrf-token", t));
    }
    request(port, method, path, &headers, form.unwrap_or(""))
}

/// The sign-in form sent with `token`.
fn sign_in(port: u16, token: &str) -> Answer {
    http(
        port,
        "POST",
        "/login",
        None,
        Some(&format!("token={token}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_live_state_csrf_sign_out_and_the_rate_limit() {
    let (e, mut daemon) = Rig::new().console(ADMIN_TOKEN).start().await;
    let port = e.admin;

    // Nothing but the sign-in page without a session.
    let page = http(port, "GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Admin token"), "{}", page.body);
    assert_eq!(http(port, "GET", "/console/state", None, None).status, 401);
    assert_eq!(http(port, "GET", "/console/app.js", None, None).status, 401);

    // Sign in: a session cookie, HttpOnly and SameSite=Strict.
    let ok = sign_in(port, ADMIN_TOKEN);
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
        assert_eq!(sign_in(port, "guess").status, 401);
    }
    let limited = sign_in(port, ADMIN_TOKEN);
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_unless_asked_for() {
    let (e, mut daemon) = Rig::new().start().await;
    assert_eq!(http(e.admin, "GET", "/", None, None).status, 404);
    assert_eq!(daemon.stop(), Some(0));
}
