//! What a publisher, a receiver or a client of the admin listener sends cannot stall the
//! daemon or make it carry more than its limits (issue #23), through the real binary: idle
//! connections do not keep a request waiting, from another address or their own; an id or path over 256 bytes is
//! refused and counted, and the messages around it still go.

use roomhook_testkit::*;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_lock_out_another() {
    let (rig, mut daemon) = Rig::new().start().await;
    assert!(
        wait_until(Duration::from_secs(20), || http_get(
            rig.admin, "/healthz", None
        )
        .0 == 200),
        "{}",
        daemon.logs()
    );
    // 200 connections from 127.0.0.1 that never send a byte.
    let idle: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", rig.admin)).ok())
        .collect();
    assert!(idle.len() >= 150, "only {} connections opened", idle.len());
    // Another address is answered at once.
    let started = Instant::now();
    let a = request_from(
        Ipv4Addr::new(127, 0, 0, 2),
        rig.admin,
        "GET",
        "/healthz",
        &[],
        "",
    );
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{}", daemon.logs());
    assert!(
        took < Duration::from_secs(1),
        "/healthz from 127.0.0.2 took {took:?}"
    );
    // And the idle ones are closed before long: each read ends (EOF or reset).
    for mut s in idle.into_iter().take(40) {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection was not closed: {other:?}"),
        }
    }
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_over_256_bytes_is_refused_and_counted() {
    let (rig, mut daemon) = Rig::new().start().await;
    let long = "d".repeat(2000);
    let messages = vec![
        (
            "bench/room-1/status".to_string(),
            r#"{"people": 1}"#.to_string(),
        ),
        (
            format!("bench/{long}/status"),
            r#"{"people": 2}"#.to_string(),
        ),
        (
            "bench/room-1/status".to_string(),
            r#"{"people": 3}"#.to_string(),
        ),
    ];
    publish_all(rig.broker.port, messages, None).await.unwrap();
    assert!(
        rig.rx
            .receiver
            .wait_accepted(2, Duration::from_secs(20))
            .await,
        "{}",
        daemon.logs()
    );
    let counted = r#"roomhook_source_decode_errors_total{source="sensors",reason="too_long"}"#;
    assert!(
        wait_until(Duration::from_secs(10), || metric(rig.admin, counted)
            == Some(1.0)),
        "{counted}: {:?}",
        metric(rig.admin, counted)
    );
    let got = people_counts(&rig.rx.receiver.accepted());
    assert_eq!(
        got,
        vec![("room-1".to_string(), 1), ("room-1".to_string(), 3)],
        "the long id must not be forwarded"
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_sends_no_secret_of_a_source_or_the_admin_to_a_webhook() {
    let token = "admin-token-0123456789";
    let rig = Rig::new()
        .config(|d| {
            d.set("sources.mqtt[sensors].username", "roomhook")
                .set("sources.mqtt[sensors].password_file", "mqtt-password")
                .set("admin.token_file", "admin-token");
        })
        .build()
        .await;
    let dir = rig.dir.path();
    std::fs::write(dir.join("mqtt-password"), "device-secret\n").unwrap();
    std::fs::write(dir.join("admin-token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.join("loose-token"), format!("{TOKEN}\n")).unwrap();
    std::fs::create_dir_all(dir.join("secrets/webhooks")).unwrap();
    std::fs::write(dir.join("secrets/webhooks/bi-token"), format!("{TOKEN}\n")).unwrap();
    // A webhook secret that is a link to the device's password.
    std::os::unix::fs::symlink(
        dir.join("mqtt-password"),
        dir.join("secrets/webhooks/sneaky"),
    )
    .unwrap();
    let mut daemon = Daemon::start(&rig.config);
    let auth = format!("Bearer {token}");
    // The receiver is trusted: without the checks, the healthCheck would carry the secret.
    let ca = rig
        .rx
        .ca_file
        .strip_prefix(dir)
        .unwrap()
        .display()
        .to_string();
    let add = |body: String| {
        let a = request(
            rig.admin,
            "POST",
            "/v1/webhooks",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &body,
        );
        (a.status, a.body)
    };
    for (key, file, why) in [
        ("password_file", "mqtt-password", "[sources]'s secret"),
        ("authorization_file", "admin-token", "[admin]'s secret"),
        (
            "password_file",
            "secrets/webhooks/sneaky",
            "[sources]'s secret",
        ),
        ("signing_secret_file", "mqtt-password", "[sources]'s secret"),
        ("authorization_file", "loose-token", "not a webhook secret"),
    ] {
        let user = if key == "password_file" {
            r#""username":"u","#
        } else {
            ""
        };
        let (status, answer) = add(format!(
            r#"{{"name":"leak","url":"{}","ca_file":"{ca}",{user}"{key}":"{file}","statuses":["RoomAnalytics.*"]}}"#,
            rig.rx.url
        ));
        assert_eq!(status, 400, "{key} = {file}: {answer}");
        assert!(answer.contains(why), "{key} = {file}: {answer}");
    }
    assert!(
        rig.rx.receiver.requests().is_empty(),
        "a refused secret reached the receiver"
    );
    // The CLI gets the same answer.
    let (code, _, err) = AddWebhook::new("leak", &rig.rx.url)
        .arg("--username", "u")
        .arg("--password-file", "mqtt-password")
        .run(&rig.config)
        .await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("[sources]'s secret"), "{err}");
    // A webhook secret is taken, and a second webhook to elsewhere cannot borrow it.
    let (status, answer) = add(format!(
        r#"{{"name":"bi","url":"{}","ca_file":"{ca}","authorization_file":"secrets/webhooks/bi-token","statuses":["RoomAnalytics.*"]}}"#,
        rig.rx.url
    ));
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = add(
        r#"{"name":"other","url":"https://127.0.0.1:9/x","authorization_file":"secrets/webhooks/bi-token","statuses":["RoomAnalytics.*"]}"#.to_string(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains(r#"secret of webhook \"bi\""#), "{answer}");
    assert_eq!(daemon.stop(), Some(0));
}

const ADMIN: &str = "admin-token-0123456789";

/// `GET /v1/webhooks` from `from` with `Bearer token`: the status.
fn api_from(admin: u16, from: [u8; 4], token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    request_from(
        from.into(),
        admin,
        "GET",
        "/v1/webhooks",
        &[("authorization", &auth)],
        "",
    )
    .status
}

/// A console sign-in from `from` with extra headers: the answer.
fn login_from(admin: u16, from: [u8; 4], token: &str, headers: &[(&str, &str)]) -> Answer {
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    request_from(
        from.into(),
        admin,
        "POST",
        "/login",
        &h,
        &format!("token={token}"),
    )
}

/// A console sign-in from `from` as the client `forwarded_for` (an X-Forwarded-For): the
/// status.
fn login_as(admin: u16, from: [u8; 4], token: &str, forwarded_for: &str) -> u16 {
    login_from(admin, from, token, &[("x-forwarded-for", forwarded_for)]).status
}

/// A daemon with the console on, whose admin listener trusts a proxy at 127.0.0.1.
async fn behind_a_proxy_at_127_0_0_1() -> (Rig, Daemon) {
    Rig::new()
        .console(ADMIN)
        .config(|d| {
            d.merge("admin", r#"trusted_proxies = ["127.0.0.1"]"#);
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_token_is_limited_and_never_locks_out_the_right_one() {
    let (rig, mut daemon) = behind_a_proxy_at_127_0_0_1().await;
    let admin = rig.admin;
    // Bearer guesses count: five wrong, then that address is refused, even its right token.
    for _ in 0..5 {
        assert_eq!(api_from(admin, [127, 0, 0, 2], "guess-guess-guess"), 401);
    }
    assert_eq!(api_from(admin, [127, 0, 0, 2], "guess-guess-guess"), 429);
    assert_eq!(api_from(admin, [127, 0, 0, 2], ADMIN), 429);
    // Another address is not.
    assert_eq!(api_from(admin, [127, 0, 0, 3], ADMIN), 200);

    // Behind the trusted proxy every client has its own count: one client's wrong
    // sign-ins do not lock out another's right one.
    let proxy = [127, 0, 0, 1];
    for _ in 0..5 {
        let a = login_from(admin, proxy, "guess", &[("x-forwarded-for", "10.0.0.5")]);
        assert_eq!(a.status, 401, "{}", a.body);
    }
    assert_eq!(login_as(admin, proxy, "guess", "10.0.0.5"), 429);
    assert_eq!(
        login_as(admin, proxy, ADMIN, "10.0.0.6"),
        303,
        "the right token from another client behind the proxy"
    );
    // A client that is not the proxy cannot name itself another address.
    for i in 0..5 {
        let xff = format!("10.0.1.{i}");
        assert_eq!(login_as(admin, [127, 0, 0, 4], "guess", &xff), 401);
    }
    assert_eq!(login_as(admin, [127, 0, 0, 4], "guess", "10.0.1.99"), 429);

    // Guesses spread over many addresses: past the global limit wrong answers slow down,
    // and the right token is still answered at once.
    // 15 wrong so far; 35 more reach the limit of 50.
    for i in 0..35u8 {
        assert_eq!(api_from(admin, [127, 0, 2, i], "guess-guess-guess"), 401);
    }
    let started = Instant::now();
    assert_eq!(api_from(admin, [127, 0, 3, 1], "guess-guess-guess"), 401);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "wrong answers did not slow down"
    );
    let started = Instant::now();
    assert_eq!(api_from(admin, [127, 0, 3, 2], ADMIN), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the right token waited"
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_trusted_proxy_is_believed_about_https() {
    let (rig, mut daemon) = behind_a_proxy_at_127_0_0_1().await;
    let https = [("x-forwarded-proto", "https")];
    let cookie = |a: &Answer| a.header("set-cookie").unwrap_or_default().to_string();
    let direct = login_from(rig.admin, [127, 0, 0, 2], ADMIN, &https);
    assert_eq!(direct.status, 303);
    assert!(!cookie(&direct).contains("Secure"), "{}", cookie(&direct));
    let proxied = login_from(rig.admin, [127, 0, 0, 1], ADMIN, &https);
    assert_eq!(proxied.status, 303);
    assert!(
        cookie(&proxied).contains("; Secure"),
        "{}",
        cookie(&proxied)
    );
    assert_eq!(daemon.stop(), Some(0));
}
