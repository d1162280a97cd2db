//! Webhook management against a running daemon (the binary) and real HTTPS receivers:
//! add with verify, set, delete with a backlog, test, enable/disable, persistence across a
//! restart, SIGHUP reloads, the TCP control API's token, mutual TLS, static headers,
//! systemd credentials — and no secret in any output.

use nix::sys::signal::Signal::SIGHUP;
use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use std::path::Path;
use std::time::Duration;

fn config_text(config: &Path) -> String {
    std::fs::read_to_string(config).unwrap()
}

fn find<'a>(list: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|w| w["name"] == name)
}

fn health_checks(rx: &roomhook::demo::receiver::Receiver) -> usize {
    rx.requests()
        .iter()
        .filter(|r| r.json()["type"] == "healthCheck")
        .count()
}

/// Runs `add`, which must be refused; its output joins `outputs` (checked for secrets at
/// the end). Returns its stderr.
async fn refused(add: AddWebhook, config: &Path, outputs: &mut String) -> String {
    let (code, out, err) = add.run(config).await;
    outputs.push_str(&out);
    outputs.push_str(&err);
    assert_ne!(code, 0, "accepted: {out}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_is_saved_only_after_the_receiver_answers_200() {
    let (r, daemon) = Rig::new().start().await;
    let (config, rx) = (&r.config, &r.rx);
    let ca = rx.ca_file.to_str().unwrap();
    let mut outputs = String::new();

    // 200 → saved, active, and events flow to it.
    let good = receiver(r.dir.path(), false).await;
    let (code, out, err) = AddWebhook::to("bi", &good)
        .arg("--devices", "room-1,room-2")
        .statuses(PEOPLE)
        .run(config)
        .await;
    outputs.push_str(&out);
    outputs.push_str(&err);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("webhook bi added (verified: HTTP 200"),
        "{out}"
    );
    assert!(out.contains("TLS 1.3"), "{out}");
    assert_eq!(health_checks(&good.receiver), 1);
    let check = &good.receiver.requests()[0];
    assert_eq!(
        check
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(TOKEN)
    );
    assert_eq!(check.json()["orgId"], "test-org");
    assert!(config_text(config).contains("name = \"bi\""));
    let list = webhook_list(config).await;
    assert_eq!(find(&list, "bi").unwrap()["status"]["state"], "active");
    publish(r.broker.port, &workload(3, 5)).await;
    assert!(
        good.receiver
            .wait_accepted(1 + 2 * 5, Duration::from_secs(20))
            .await,
        "events did not reach the added webhook; log:\n{}",
        daemon.logs()
    );

    // 401 → refused, nothing saved, the status and body are shown.
    let before = config_text(config);
    let wrong = AddWebhook::new("wrong", &rx.url)
        .arg("--authorization", "Bearer nope-nope")
        .arg("--ca-file", ca);
    let err = refused(wrong, config, &mut outputs).await;
    assert!(
        err.contains("HTTP 401") && err.contains("invalid credentials"),
        "{err}"
    );
    assert!(err.contains("nothing was saved"), "{err}");
    assert_eq!(config_text(config), before);

    // Self-signed → refused with a message that says so.
    let selfsigned = receiver(r.dir.path(), true).await;
    let ss = AddWebhook::new("ss", &selfsigned.url).arg("--authorization", TOKEN);
    let err = refused(ss, config, &mut outputs).await;
    assert!(err.contains("TLS") && err.contains("self-signed"), "{err}");
    assert_eq!(health_checks(&selfsigned.receiver), 0);

    // Unreachable → refused (connect).
    let url = format!("https://127.0.0.1:{}/hook", free_port());
    let gone = AddWebhook::new("gone", &url).arg("--authorization", TOKEN);
    let err = refused(gone, config, &mut outputs).await;
    assert!(err.contains("connect"), "{err}");

    // A name that does not resolve → refused at the DNS stage.
    let nowhere = AddWebhook::new("nowhere", "https://roomhook-test.invalid/hook")
        .arg("--authorization", TOKEN);
    let err = refused(nowhere, config, &mut outputs).await;
    assert!(
        err.contains("DNS: cannot resolve roomhook-test.invalid")
            || err.contains("timeout: resolving the host"),
        "{err}"
    );

    // An invalid setting → the config error with its key; nothing saved.
    let typo = AddWebhook::new("typo", &good.url)
        .flag("--no-auth")
        .statuses("RoomAnalytics.PeopleCnt");
    let err = refused(typo, config, &mut outputs).await;
    assert!(
        err.contains("statuses") && err.contains("did you mean"),
        "{err}"
    );
    assert_eq!(config_text(config), before);

    // --no-verify → saved disabled; enable verifies it.
    let (code, out, err) = AddWebhook::to("later", &good)
        .flag("--no-verify")
        .run(config)
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("saved disabled"), "{out}");
    let list = webhook_list(config).await;
    assert_eq!(find(&list, "later").unwrap()["status"]["state"], "disabled");
    assert_eq!(find(&list, "later").unwrap()["enabled"], false);
    let checks = health_checks(&good.receiver);
    let (code, out, err) = webhook_cli(config, &["enable", "later"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("enabled (verified: HTTP 200"), "{out}");
    assert_eq!(health_checks(&good.receiver), checks + 1);
    let list = webhook_list(config).await;
    assert_eq!(find(&list, "later").unwrap()["status"]["state"], "active");

    // Secrets appear nowhere: command output, list/show, logs.
    let (_, show, _) = webhook_cli(config, &["show", "bi"]).await;
    let (_, list_text, _) = webhook_cli(config, &["list", "--json"]).await;
    for text in [&outputs, &show, &list_text, &daemon.logs()] {
        assert!(!text.contains("s3cr3t-token"), "token leaked:\n{text}");
        assert!(!text.contains("nope-nope"), "token leaked:\n{text}");
    }
    assert!(show.contains("\"value\": \"***\""), "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_url_selection_and_name_with_events_flowing() {
    let (r, daemon) = Rig::new().start().await;
    let (config, a, admin, broker) = (&r.config, &r.rx, r.admin, &r.broker);
    let b = receiver(r.dir.path(), false).await;

    // Events flow while the URL changes: every one arrives at a or b, none after the change at a.
    let port = broker.port;
    let publisher = tokio::spawn(async move {
        for round in 0..20 {
            let msgs: Vec<(String, i64)> = (0..4).map(|d| (format!("room-{d}"), round)).collect();
            publish(port, &msgs).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(a.receiver.wait_accepted(8, Duration::from_secs(20)).await);
    let (code, out, err) = webhook_cli(
        config,
        &[
            "set",
            "facilities",
            "--url",
            &b.url,
            "--ca-file",
            b.ca_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("webhook facilities changed (verified: HTTP 200"),
        "{out}"
    );
    let at_a = a.receiver.requests().len();
    publisher.await.unwrap();
    let all = |rx: &[roomhook::demo::receiver::Received]| {
        rx.iter()
            .filter(|r| r.status == 200 && r.json()["type"] == "status")
            .count()
    };
    let done = b
        .receiver
        .wait_for(Duration::from_secs(30), |r| {
            all(r) + all(&a.receiver.requests()) >= 80
        })
        .await;
    assert!(
        done,
        "events lost across the URL change; log:\n{}",
        daemon.logs()
    );
    assert_eq!(
        a.receiver.requests().len(),
        at_a,
        "a got requests after the change"
    );
    let mut seen = std::collections::BTreeSet::new();
    for r in a
        .receiver
        .accepted()
        .iter()
        .chain(b.receiver.accepted().iter())
    {
        for m in r.messages() {
            if m["type"] == "status" {
                seen.insert((
                    m["deviceId"].as_str().unwrap().to_string(),
                    m["changes"]["updated"]["RoomAnalytics.PeopleCount.Current"]
                        .as_i64()
                        .unwrap(),
                ));
            }
        }
    }
    assert_eq!(
        seen.len(),
        80,
        "every (device, value) delivered once at least"
    );
    assert!(config_text(config).contains(&b.url));

    // New credentials that the receiver refuses: nothing changes.
    let before = config_text(config);
    let (code, _, err) = webhook_cli(
        config,
        &["set", "facilities", "--authorization", "Bearer wrong-one"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 401"), "{err}");
    assert_eq!(config_text(config), before);

    // Selection: only room-0 from now on.
    let (code, _, err) = webhook_cli(config, &["set", "facilities", "--devices", "room-0"]).await;
    assert_eq!(code, 0, "{err}");
    let before = b.receiver.accepted_messages();
    let not_selected = "roomhook_events_filtered_total{reason=\"not_selected\"}";
    let filtered_before = metric(admin, not_selected).unwrap_or(0.0);
    publish(
        broker.port,
        &[("room-1".into(), 100), ("room-0".into(), 100)],
    )
    .await;
    assert!(
        b.receiver
            .wait_accepted(before + 1, Duration::from_secs(20))
            .await
    );
    // room-1's event came first from the same source, so it was routed before room-0's:
    // by now it is counted as selected by no webhook.
    assert_eq!(metric(admin, not_selected), Some(filtered_before + 1.0));
    let last: Vec<_> = b.receiver.accepted()[before..]
        .iter()
        .map(|r| r.json()["deviceId"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(last, vec!["room-0".to_string()]);

    // Rename with a backlog: the queue moves with the name and is delivered after.
    b.receiver.set_behaviour(Behaviour::Status(503));
    publish(
        broker.port,
        &[("room-0".into(), 101), ("room-0".into(), 102)],
    )
    .await;
    let queued = wait_until(Duration::from_secs(10), || {
        futures_block(webhook_list(config))
            .iter()
            .any(|w| w["queue"]["events"].as_u64() == Some(2))
    });
    assert!(queued, "backlog not queued");
    let (code, out, err) = webhook_cli(
        config,
        &[
            "set",
            "facilities",
            "--name",
            "facilities-v2",
            "--no-verify",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("facilities-v2 changed"), "{out}");
    let list = webhook_list(config).await;
    assert!(find(&list, "facilities").is_none());
    assert_eq!(find(&list, "facilities-v2").unwrap()["queue"]["events"], 2);
    b.receiver.set_behaviour(Behaviour::Accept);
    assert!(
        b.receiver
            .wait_accepted(before + 3, Duration::from_secs(20))
            .await
    );
    let text = config_text(config);
    assert!(text.contains("name = \"facilities-v2\"") && !text.contains("name = \"facilities\""));
}

/// Runs a future to completion from synchronous code inside a multi-thread runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_purges_the_backlog_and_survives_a_restart() {
    let (r, mut daemon) = Rig::new().receiver(Behaviour::Status(503)).start().await;
    let (config, rx, broker) = (&r.config, &r.rx, &r.broker);
    publish(broker.port, &workload(5, 10)).await;
    let queued = wait_until(Duration::from_secs(20), || {
        futures_block(webhook_list(config))
            .first()
            .is_some_and(|w| w["queue"]["events"].as_u64() == Some(50))
    });
    assert!(queued, "backlog not queued; log:\n{}", daemon.logs());
    let (code, out, err) = webhook_cli(config, &["delete", "facilities"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("webhook facilities deleted; 50 queued event(s) discarded"),
        "{out}"
    );
    assert!(webhook_list(config).await.is_empty());
    assert!(!config_text(config).contains("[[webhooks]]"));
    let (code, _, err) = webhook_cli(config, &["delete", "facilities"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no webhook named"), "{err}");
    assert_eq!(daemon.stop(), Some(0));
    // The store itself no longer holds the queue (not just the config no longer naming it).
    let cfg = config.to_str().unwrap();
    let (code, out, err) = run_cli(&["store", "check", "-c", cfg]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("webhook facilities"), "{out}");
    // A webhook of the same name added back starts with an empty queue: nothing of the
    // deleted backlog goes out.
    rx.receiver.set_behaviour(Behaviour::Accept);
    r.edit_config(|d| {
        d.add(Section::webhook("facilities", &rx.url, &rx.ca_file));
    });
    let requests = rx.receiver.requests().len();
    let daemon = Daemon::start(config);
    let list = webhook_list(config).await;
    assert_eq!(list[0]["queue"]["events"].as_u64(), Some(0), "{list:?}");
    publish(broker.port, &[("after".to_string(), 1)]).await;
    let from_after = |reqs: &[roomhook::demo::receiver::Received]| {
        reqs.iter()
            .skip(requests)
            .flat_map(|r| r.messages())
            .any(|m| m["deviceId"] == "after")
    };
    assert!(
        rx.receiver
            .wait_for(Duration::from_secs(20), from_after)
            .await
    );
    // Everything sent since the restart is that one new event.
    let since: Vec<_> = rx.receiver.requests().into_iter().skip(requests).collect();
    let messages: usize = since.iter().map(|r| r.messages().len()).sum();
    assert_eq!(messages, 1, "the deleted backlog came back");
    assert_eq!(
        people_counts(&since),
        vec![("after".to_string(), 1)],
        "the deleted backlog came back"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_reports_status_latency_tls_and_certificate() {
    let (r, _daemon) = Rig::new().start().await;
    let (config, rx) = (&r.config, &r.rx);
    let (code, out, err) = webhook_cli(config, &["test", "facilities"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("healthCheck to facilities: HTTP 200 in "),
        "{out}"
    );
    assert!(out.contains("over TLS 1.3"), "{out}");
    assert!(out.contains("certificate CN=127.0.0.1"), "{out}");
    assert!(out.contains("issuer CN=roomhook throwaway CA"), "{out}");
    let year = out
        .split("expires ")
        .nth(1)
        .and_then(|s| s.get(..4))
        .unwrap_or("");
    assert!(year.parse::<u32>().is_ok_and(|y| y >= 2026), "{out}");
    assert_eq!(health_checks(&rx.receiver), 1);
    // A failing receiver: the test says what it answered, exit code non-zero.
    rx.receiver.set_behaviour(Behaviour::Status(500));
    let (code, _, err) = webhook_cli(config, &["test", "facilities"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 500"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_webhook_enqueues_nothing() {
    let (r, _daemon) = Rig::new().start().await;
    let (config, rx, admin, broker) = (&r.config, &r.rx, r.admin, &r.broker);
    let (code, out, err) = webhook_cli(config, &["disable", "facilities"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("webhook facilities disabled"), "{out}");
    publish(broker.port, &workload(2, 10)).await;
    // Every message was routed (and went nowhere) once the filter counted all 20.
    let routed = wait_until(Duration::from_secs(20), || {
        metric(
            admin,
            "roomhook_events_filtered_total{reason=\"not_selected\"}",
        ) == Some(20.0)
    });
    assert!(routed, "{}", scrape(admin));
    assert_eq!(webhook_list(config).await[0]["queue"]["events"], 0);
    assert_eq!(rx.receiver.requests().len(), 0);
    let (code, _, err) = webhook_cli(config, &["enable", "facilities"]).await;
    assert_eq!(code, 0, "{err}");
    publish(broker.port, &[("room-0".into(), 50)]).await;
    assert!(rx.receiver.wait_accepted(2, Duration::from_secs(20)).await); // healthCheck + 1
    let statuses: Vec<i64> = rx
        .receiver
        .accepted()
        .iter()
        .filter(|r| r.json()["type"] == "status")
        .map(|r| {
            r.json()["changes"]["updated"]["RoomAnalytics.PeopleCount.Current"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        statuses,
        vec![50],
        "events published while disabled were delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_keeps_the_old_config_on_an_invalid_one() {
    let (r, mut daemon) = Rig::new().start().await;
    let (config, rx, broker) = (&r.config, &r.rx, &r.broker);
    let other = receiver(r.dir.path(), false).await;
    let hup = || daemon.signal(SIGHUP);

    // A hand edit adds a webhook: SIGHUP starts it.
    r.edit_config(|d| {
        d.add(Section::webhook("hand-made", &other.url, &other.ca_file));
    });
    let text = config_text(config);
    hup();
    let reloaded = wait_until(Duration::from_secs(10), || {
        find(&futures_block(webhook_list(config)), "hand-made").is_some()
    });
    assert!(
        reloaded,
        "SIGHUP did not add the webhook; log:\n{}",
        daemon.logs()
    );
    publish(broker.port, &[("room-7".into(), 1)]).await;
    other
        .expect_accepted(1, Duration::from_secs(20), &daemon)
        .await;

    // An invalid file: logged, old config kept, events still flow.
    r.edit_config(|d| {
        d.set("webhooks[hand-made].statuses_typo", list(["Nope.Nothing"]));
    });
    hup();
    daemon.expect_log(
        "config not reloaded, the running config stays",
        Duration::from_secs(10),
    );
    assert!(daemon.logs().contains("statuses_typo"), "{}", daemon.logs());
    assert_eq!(webhook_list(config).await.len(), 2);
    publish(broker.port, &[("room-7".into(), 2)]).await;
    other
        .expect_accepted(2, Duration::from_secs(20), &daemon)
        .await;
    assert!(rx.receiver.wait_accepted(2, Duration::from_secs(20)).await);

    // API edits persist across a restart (the file is the one source of truth).
    std::fs::write(config, &text).unwrap();
    hup();
    let (code, _, err) =
        webhook_cli(config, &["set", "hand-made", "--devices", "room-7,room-8"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.stop(), Some(0));
    let _daemon = Daemon::start(config);
    let list = webhook_list(config).await;
    assert_eq!(
        find(&list, "hand-made").unwrap()["devices"],
        serde_json::json!(["room-7", "room-8"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_control_api_needs_the_token_and_the_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let r = Rig::new()
        .config(|d| {
            d.set("admin.token_file", "admin-token");
        })
        .build()
        .await;
    let (dir, rx, admin_port, broker) = (&r.dir, &r.rx, r.admin, &r.broker);
    let token = "a-long-admin-token-0123456789";
    std::fs::write(dir.path().join("admin-token"), format!("{token}\n")).unwrap();
    // A receiver that takes a key in its URL: the key is never shown.
    let url = format!("{}?key=url-secret-123", rx.url);
    r.edit_config(|d| {
        d.set("webhooks[facilities].url", url);
    });
    let config = &r.config;
    let daemon = Daemon::start(config);
    let get = |auth: Option<String>| {
        roomhook_testkit::http_get(admin_port, "/v1/webhooks", auth.as_deref())
    };
    let (status, body) = get(None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = get(Some("Bearer wrong-token-wrong-token".into()));
    assert_eq!(status, 401);
    let (status, body) = get(Some(format!("Bearer {token}")));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"facilities\""), "{body}");
    assert!(!body.contains("s3cr3t"), "{body}");
    assert!(body.contains("/hook?key=***"), "{body}");
    assert!(!body.contains("url-secret-123"), "{body}");
    let (_, status, _) = run_cli(&["status", "--json", "-c", config.to_str().unwrap()]).await;
    assert!(
        status.contains("/hook?key=***") && !status.contains("url-secret-123"),
        "{status}"
    );
    publish(broker.port, &[("keyed".to_string(), 1)]).await;
    assert!(rx.receiver.wait_accepted(1, Duration::from_secs(20)).await);
    assert!(!daemon.logs().contains("url-secret-123"));
    // Metrics stay open without a token.
    assert_eq!(
        roomhook_testkit::http_get(admin_port, "/metrics", None).0,
        200
    );
    let socket = dir.path().join("data/roomhook.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!daemon.logs().contains(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_static_headers_and_systemd_credentials() {
    let r = Rig::new()
        .webhook("headers = { \"X-Site\" = \"oslo-7\" }")
        .config(|d| {
            d.remove("webhooks[facilities].authorization")
                .set("webhooks[facilities].authorization_file", "receiver-token");
        })
        .build()
        .await;
    let (dir, rx, broker, config) = (&r.dir, &r.rx, &r.broker, &r.config);
    let client = roomhook::demo::pki::client_identity("gateway-7").unwrap();
    let server = roomhook::demo::pki::private_ca(&["127.0.0.1"]).unwrap();
    let mtls = roomhook::demo::receiver::Receiver::start(
        "127.0.0.1:0".parse().unwrap(),
        server
            .server_config_requiring_client(&client.ca_pem)
            .unwrap(),
        Some(TOKEN.into()),
        false,
    )
    .await
    .unwrap();
    let ca = dir.path().join("server-ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    // Through the API a webhook's private key is read only from secrets/webhooks/.
    std::fs::create_dir_all(dir.path().join("secrets/webhooks")).unwrap();
    let (cert, key) = (
        dir.path().join("client.pem"),
        dir.path().join("secrets/webhooks/client.key"),
    );
    std::fs::write(&cert, &client.cert_pem).unwrap();
    std::fs::write(&key, &client.key_pem).unwrap();
    let url = format!("https://127.0.0.1:{}/hook", mtls.addr().port());

    // The receiver token comes from $CREDENTIALS_DIRECTORY (a relative authorization_file).
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("receiver-token"), format!("{TOKEN}\n")).unwrap();
    let daemon = Daemon::start_with_env(
        config,
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    );
    publish(broker.port, &[("room-1".into(), 5)]).await;
    assert!(
        rx.receiver.wait_accepted(1, Duration::from_secs(20)).await,
        "log:\n{}",
        daemon.logs()
    );
    let got = &rx.receiver.accepted()[0];
    assert_eq!(
        got.headers.get("x-site").and_then(|v| v.to_str().ok()),
        Some("oslo-7")
    );

    // Without a client certificate the handshake is refused, and the message says why.
    let add = AddWebhook::new("mtls", &url)
        .arg("--authorization", TOKEN)
        .arg("--ca-file", ca.to_str().unwrap());
    let (code, _, err) = add.run(config).await;
    assert_ne!(code, 0);
    assert!(err.contains("client certificate"), "{err}");
    let (code, out, err) = add
        .arg("--client-cert-file", cert.to_str().unwrap())
        .arg("--client-key-file", key.to_str().unwrap())
        .run(config)
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified: HTTP 200"), "{out}");
    publish(broker.port, &[("room-2".into(), 6)]).await;
    assert!(
        mtls.wait_accepted(2, Duration::from_secs(20)).await,
        "log:\n{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_surface_is_careful() {
    use std::os::unix::fs::PermissionsExt;
    let token = "a-long-admin-token-0123456789";
    let r = Rig::new()
        .config(move |d| {
            d.set("admin.token", token);
        })
        .build()
        .await;
    let (dir, rx, admin_port, config) = (&r.dir, &r.rx, r.admin, &r.config);
    let data = dir.path().join("data").display().to_string();
    r.edit_config(|d| {
        d.set("gateway.data_dir", data)
            .comment("gateway.data_dir", "data beside the link");
    });
    // The config is a symlink to the real file (as configuration managers lay it out).
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    let real = dir.path().join("etc/real.toml");
    std::fs::rename(config, &real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink(&real, config).unwrap();

    // A file that is not a socket where the socket goes: refused, not deleted.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let socket = dir.path().join("data/roomhook.sock");
    std::fs::write(&socket, "precious").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomhook"))
        .args(["run", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
    std::fs::remove_file(&socket).unwrap();

    let daemon = Daemon::start(config);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A name with a space, a slash and a percent sign works end to end.
    let name = "lobby east/2 50%";
    let (code, out, err) = AddWebhook::to(name, rx).run(config).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = webhook_cli(config, &["show", name]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("lobby east/2 50%"), "{out}");
    let (code, out, err) = webhook_cli(config, &["delete", name]).await;
    assert_eq!(code, 0, "{out}{err}");
    // The edits went to the link's target, which kept its mode; the link is still a link.
    assert!(std::fs::symlink_metadata(config)
        .unwrap()
        .file_type()
        .is_symlink());
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(std::fs::read_to_string(&real)
        .unwrap()
        .contains("# data beside the link"));

    // Through the API, files stay inside the config directory: no absolute path, no '..'.
    let auth = format!("Bearer {token}");
    // A link inside the config directory that points outside, and the config itself.
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("innocent")).unwrap();
    for bad in [
        "/etc/hostname",
        "../../etc/hostname",
        "innocent",
        "roomhook.toml",
    ] {
        let body = format!(
            r#"{{"name":"leak","url":"{}","authorization_file":"{bad}","statuses":["RoomAnalytics.*"]}}"#,
            rx.url
        );
        let (status, answer) = post(admin_port, "/v1/webhooks", &auth, &body);
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer.contains("outside the config directory") || answer.contains("own config"),
            "{answer}"
        );
    }
    let (code, _, err) = AddWebhook::new("leak", &rx.url)
        .arg("--authorization-file", "/etc/hostname")
        .run(config)
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is outside"), "{err}");
    assert!(!std::fs::read_to_string(&real).unwrap().contains("leak"));

    // Idle TCP clients (no request headers) cannot take every place of the admin listener.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap())
        .collect();
    let t = std::time::Instant::now();
    // Bounded: a regression must fail the test, not hang it.
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || {
            roomhook_testkit::http_get(admin_port, "/metrics", None)
        }),
    )
    .await
    .expect("the admin listener answered within 15 s despite 40 idle clients")
    .unwrap();
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    drop(idle);
    drop(daemon);
}

/// A POST on the admin listener: (status, body).
fn post(port: u16, path: &str, authorization: &str, body: &str) -> (u16, String) {
    let a = request(
        port,
        "POST",
        path,
        &[
            ("authorization", authorization),
            ("content-type", "application/json"),
        ],
        body,
    );
    (a.status, a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_dropped_from_the_file_keeps_its_queue_as_an_orphan() {
    let (r, mut daemon) = Rig::new()
        .gateway("orphan_retention = \"1h\"")
        .receiver(Behaviour::Status(503))
        .start()
        .await;
    let (config, rx, admin, broker) = (&r.config, &r.rx, r.admin, &r.broker);
    let with_hook = config_text(config);
    // The same file after a hand edit that lost the webhook (a typo in its name, say).
    let without = edit(&with_hook, |d| {
        d.set("webhooks[facilities].name", "facilites");
    });
    publish(broker.port, &workload(5, 10)).await;
    assert!(wait_until(Duration::from_secs(20), || {
        metric(admin, "roomhook_queue_events{webhook=\"facilities\"}") == Some(50.0)
    }));
    std::fs::write(config, &without).unwrap();
    daemon.signal(SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            admin,
            "roomhook_orphaned_events"
        ) == Some(50.0)),
        "{}",
        daemon.logs()
    );
    let cfg = config.to_str().unwrap().to_string();
    let (_, out, _) = run_cli(&["status", "-c", &cfg]).await;
    assert!(
        out.contains("ORPHANED QUEUES") && out.contains("- facilities: 50 event(s)"),
        "{out}"
    );
    assert!(daemon.logs().contains("kept as an orphan for 1h"));
    assert_eq!(daemon.stop(), Some(0));
    // Across a restart too: still kept, listed by `store check`.
    let (code, out, err) = run_cli(&["store", "check", "-c", &cfg]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("webhook facilities: 50 queued, 0 dead letters (orphaned since"),
        "{out}"
    );
    let mut daemon = Daemon::start(config);
    assert_eq!(metric(admin, "roomhook_orphaned_events"), Some(50.0));
    // The name is fixed: the webhook takes its queue back, and everything arrives.
    rx.receiver.set_behaviour(Behaviour::Accept);
    std::fs::write(config, &with_hook).unwrap();
    daemon.signal(SIGHUP);
    assert!(
        rx.receiver.wait_accepted(50, Duration::from_secs(30)).await,
        "{}",
        daemon.logs()
    );
    assert_complete_and_ordered(&rx.receiver.accepted(), 5, 10);
    assert_eq!(metric(admin, "roomhook_orphaned_queues"), Some(0.0));
    // With a short retention, an orphan goes at the next look (here: a reload).
    rx.receiver.set_behaviour(Behaviour::Status(503));
    publish(broker.port, &[("late".to_string(), 1)]).await;
    assert!(wait_until(Duration::from_secs(20), || {
        metric(admin, "roomhook_queue_events{webhook=\"facilities\"}") == Some(1.0)
    }));
    std::fs::write(
        config,
        edit(&without, |d| {
            d.set("gateway.orphan_retention", "1s");
        }),
    )
    .unwrap();
    daemon.signal(SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || metric(
        admin,
        "roomhook_orphaned_queues"
    ) == Some(1.0)));
    // Reloads until the retention has passed (no guess at how long that takes).
    assert!(
        wait_until(Duration::from_secs(10), || {
            daemon.signal(SIGHUP);
            std::thread::sleep(Duration::from_millis(200));
            metric(admin, "roomhook_orphaned_queues") == Some(0.0)
        }),
        "{}",
        daemon.logs()
    );
    assert!(daemon
        .logs()
        .contains("orphaned queue dropped after orphan_retention: 1 events discarded"));
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_is_verified_with_a_compressed_health_check_before_it_is_saved() {
    let (r, daemon) = Rig::new().start().await;
    let config = &r.config;
    let mut outputs = String::new();

    // A receiver that reads only plain bodies answers the compressed healthCheck 415: the
    // add is refused with a message that names compression and the fix; nothing is saved.
    let plain = receiver(r.dir.path(), false).await;
    plain.receiver.set_behaviour(Behaviour::RefuseCompressed);
    let before = config_text(config);
    let gzip = AddWebhook::to("plain", &plain).arg("--compression", "gzip");
    let err = refused(gzip, config, &mut outputs).await;
    assert!(
        err.contains("HTTP 415 to a gzip-compressed healthCheck")
            && err.contains("does not accept Content-Encoding: gzip")
            && err.contains("compression = \"none\""),
        "{err}"
    );
    assert!(err.contains("nothing was saved"), "{err}");
    assert_eq!(config_text(config), before);
    let checks = plain.receiver.requests();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].compressed && checks[0].status == 415);

    // Without compression the same receiver verifies (plain healthCheck); turning gzip on
    // with `set` is verified too, and refused the same way.
    let (code, out, err) = AddWebhook::to("plain", &plain).run(config).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!plain.receiver.requests()[1].compressed);
    let before = config_text(config);
    let (code, _, err) = webhook_cli(config, &["set", "plain", "--compression", "gzip"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("HTTP 415") && err.contains("compression"),
        "{err}"
    );
    assert_eq!(config_text(config), before);
    outputs.push_str(&err);

    // A receiver that reads gzip: added; its healthCheck, small as it is, came compressed,
    // and signed over the decoded body. The file and the API say compression = "gzip".
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let gz = receiver(r.dir.path(), false).await;
    gz.receiver.verify_signatures(secret);
    let (code, out, err) = AddWebhook::to("gz", &gz)
        .arg("--compression", "gzip")
        .arg("--set", &format!("signing_secret={secret}"))
        .run(config)
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gzip-compressed"), "{out}");
    let check = &gz.receiver.requests()[0];
    assert!(check.compressed && check.status == 200);
    assert_eq!(check.json()["type"], "healthCheck");
    assert_eq!(check.signature_valid, Some(true));
    assert!(config_text(config).contains("compression = \"gzip\""));
    let list = webhook_list(config).await;
    assert_eq!(find(&list, "gz").unwrap()["compression"], "gzip");
    assert_eq!(find(&list, "plain").unwrap()["compression"], "none");
    // A value the CLI does not know is refused before anything is sent.
    let (code, _, err) = webhook_cli(config, &["set", "gz", "--compression", "brotli"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("gzip"), "{err}");
    assert!(!daemon.logs().contains("MfKQ9r8G"), "the secret was logged");
}
