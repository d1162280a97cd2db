//! The fleet against the real daemon: its config document pulled from an HTTPS server made
//! here (behind a private CA; `ETag`, signatures beside the document or in a header), with
//! refusals that keep the running config, the last good document run after a restart with
//! the server down, and status reports that arrive signed and do not pile up while their
//! receiver is down. The jitter of 20 gateways is a unit test of `src/fleet/mod.rs` and,
//! run by hand (`-- --ignored`, 2-4 min), 20 real daemons against one server.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use roomhook::admin::api::StatusReport;
use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One request the config server answered.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    path: String,
    if_none_match: Option<String>,
    status: u16,
}

/// What the config server serves: the document, its signature (as `<path>.sig`, or in the
/// `X-Roomhook-Signature` header), and what it was asked.
#[derive(Default)]
struct Served {
    doc: Option<String>,
    sig: Option<String>,
    sig_in_header: bool,
    hits: Vec<Hit>,
}

/// The fleet's HTTPS server: any path ending `.toml` gets the document (304 when its
/// `ETag` matches), `.toml.sig` the signature.
struct ConfigServer {
    port: u16,
    ca_file: PathBuf,
    served: Arc<Mutex<Served>>,
    stop: CancellationToken,
}

impl ConfigServer {
    async fn start(dir: &Path) -> ConfigServer {
        let id = roomhook::demo::pki::private_ca(&["127.0.0.1"]).expect("cert");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ca_file = dir.join("fleet-ca.pem");
        std::fs::write(&ca_file, &id.ca_pem).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config().expect("tls"));
        let (served, stop) = (Arc::<Mutex<Served>>::default(), CancellationToken::new());
        let (st, stopped) = (served.clone(), stop.clone());
        tokio::spawn(async move {
            while let Some(Ok((tcp, _))) = tokio::select! {
                r = listener.accept() => Some(r),
                _ = stopped.cancelled() => None,
            } {
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let answer = answer(&st, &req);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        ConfigServer {
            port,
            ca_file,
            served,
            stop,
        }
    }

    /// `https://127.0.0.1:port/fleet/{gateway}.toml`.
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/fleet/{{gateway}}.toml", self.port)
    }

    /// Serves `doc` with `sig` from now on.
    fn serve(&self, doc: &str, sig: Option<&str>, sig_in_header: bool) {
        let mut s = self.served.lock().unwrap();
        s.doc = Some(doc.to_string());
        s.sig = sig.map(str::to_string);
        s.sig_in_header = sig_in_header;
    }

    fn hits(&self) -> Vec<Hit> {
        self.served.lock().unwrap().hits.clone()
    }
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn answer(st: &Mutex<Served>, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let mut s = st.lock().unwrap();
    let path = req.uri().path().to_string();
    let if_none_match = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let etag = s.doc.as_ref().map(|d| {
        format!(
            "\"{}\"",
            &roomhook_digest(d.as_bytes())[..16] // a strong validator of the body
        )
    });
    let mut resp = Response::builder();
    let (status, body) = match (&s.doc, &s.sig) {
        (_, Some(sig)) if path.ends_with(".toml.sig") && !s.sig_in_header => (200, sig.clone()),
        (Some(_), _)
            if path.ends_with(".toml") && if_none_match.is_some() && if_none_match == etag =>
        {
            (304, String::new())
        }
        (Some(doc), sig) if path.ends_with(".toml") => {
            resp = resp.header("etag", etag.clone().unwrap_or_default());
            if let Some(sig) = sig.as_ref().filter(|_| s.sig_in_header) {
                resp = resp.header("x-roomhook-signature", sig.trim());
            }
            (200, doc.clone())
        }
        _ => (404, String::new()),
    };
    s.hits.push(Hit {
        at: Instant::now(),
        path,
        if_none_match,
        status,
    });
    resp.status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// SHA-256 of `b` in hex (the test's ETag).
fn roomhook_digest(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A fleet document: `[[webhooks]]` of the given names, all to `rx`, authorized by the
/// token in the gateway's file `hook.token`, trusting `rx`'s CA in the gateway's directory
/// (a document names files relatively).
fn webhooks_doc(names: &[&str], rx: &TestReceiver) -> String {
    let ca = rx.ca_file.file_name().unwrap().to_str().unwrap();
    edit("", |d| {
        for name in names {
            d.add(
                Section::webhook(name, &rx.url, Path::new(ca))
                    .remove("authorization")
                    .set("authorization_file", "hook.token"),
            );
        }
    })
}

/// `roomhook fleet keygen --out dir/fleet.key`: the public key, and what it printed.
async fn keygen(dir: &Path) -> (String, String) {
    let key = dir.join("fleet.key");
    let (code, out, err) = run_cli(&["fleet", "keygen", "--out", key.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let public = std::fs::read_to_string(dir.join("fleet.key.pub")).unwrap();
    (public.trim().to_string(), out)
}

/// Signs `doc` with `roomhook fleet sign` and the key in `dir/fleet.key`: the signature.
async fn sign(dir: &Path, doc: &str) -> String {
    let file = dir.join("doc.toml");
    std::fs::write(&file, doc).unwrap();
    let key = dir.join("fleet.key");
    let (code, out, err) = run_cli(&[
        "fleet",
        "sign",
        "--key",
        key.to_str().unwrap(),
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    std::fs::read_to_string(dir.join("doc.toml.sig")).unwrap()
}

fn names(r: &StatusReport) -> Vec<String> {
    let v = serde_json::to_value(r).unwrap();
    v["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (10 s at most) until the daemon's status satisfies `cond`; fails with `what`.
fn wait_status(
    config: &Path,
    daemon: &Daemon,
    what: &str,
    cond: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    let ok = wait_until(Duration::from_secs(10), || {
        status_of(config).is_some_and(|r| cond(&r))
    });
    let last = status_of(config);
    assert!(
        ok,
        "{what}: not within 10 s; fleet: {:?}; log:\n{}",
        last.as_ref().map(|r| &r.fleet),
        daemon.logs()
    );
    last.unwrap()
}

fn fleet_result(r: &StatusReport) -> (Option<String>, String) {
    let f = r.fleet.as_ref().expect("a fleet report");
    (f.result.clone(), f.reason.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pulled_config_is_applied_kept_and_refusals_keep_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rx = receiver(d, false).await;
    std::fs::write(d.join("hook.token"), TOKEN).unwrap();
    let (public, out) = keygen(d).await;
    assert!(
        out.contains(&format!("config_public_key = \"{public}\"")),
        "{out}"
    );
    let server = ConfigServer::start(d).await;
    let doc1 = webhooks_doc(&["central"], &rx);
    server.serve(&doc1, Some(&sign(d, &doc1).await), false);

    let admin = free_port();
    let config = Config::new()
        .admin(admin)
        .gateway("id = \"gw-1\"")
        .with(Section::webhook("local", &rx.url, &rx.ca_file))
        .edit(|c| {
            c.set("fleet.config_url", server.url())
                .set("fleet.ca_file", server.ca_file.display().to_string())
                .set("fleet.config_interval", "1s")
                .set("fleet.config_public_key", public.as_str());
        })
        .write(d);
    let mut daemon = Daemon::start(&config);

    // Within one interval (1 s, and the check's own time) the document's webhook runs in
    // place of the local one, and the document is kept.
    // (Applied: known by its time and hash, as the next pull, perhaps a few ms later, says
    // "unchanged".)
    wait_status(&config, &daemon, "the fleet's webhook", |r| {
        names(r) == ["central"]
            && r.fleet
                .as_ref()
                .is_some_and(|f| f.applied_at.is_some() && f.config_sha256.is_some())
    });
    assert!(d.join("data/fleet-config.toml").is_file());
    assert!(
        server.hits().iter().any(|h| h.path == "/fleet/gw-1.toml"),
        "{:?}",
        server.hits()
    );
    // Unchanged: asked with its ETag, answered 304.
    wait_status(&config, &daemon, "an unchanged pull", |r| {
        fleet_result(r).0.as_deref() == Some("unchanged")
    });
    assert!(
        server
            .hits()
            .iter()
            .any(|h| h.status == 304 && h.if_none_match.is_some()),
        "{:?}",
        server.hits()
    );
    // Local webhook edits are refused, naming the fleet's URL.
    let (code, _, err) = AddWebhook::to("mine", &rx).run(&config).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("managed by the fleet") && err.contains("/fleet/gw-1.toml"),
        "{err}"
    );

    // Refused, each with where and the fix; the running webhooks stay.
    let central = webhooks_doc(&["central", "second"], &rx);
    let refusals = [
        // A syntax error (first: no reason before it names the document).
        (format!("{central}\nstatuses = [\n"), "gw-1.toml:"),
        (
            format!("[gateway]\nid = \"x\"\n\n{central}"),
            "[gateway]: local-only",
        ),
        (
            central.replace(
                "authorization_file = \"hook.token\"",
                "authorization = \"Bearer x\"",
            ),
            "secret values never travel",
        ),
    ];
    for (doc, why) in &refusals {
        server.serve(doc, Some(&sign(d, doc).await), false);
        let r = wait_status(&config, &daemon, why, |r| fleet_result(r).1.contains(why));
        assert_eq!(fleet_result(&r).0.as_deref(), Some("refused"));
        assert!(fleet_result(&r).1.contains("fix:"), "{:?}", r.fleet);
        assert_eq!(names(&r), ["central"]);
    }
    // A signature of another document.
    server.serve(&central, Some(&sign(d, &doc1).await), false);
    let r = wait_status(&config, &daemon, "a bad signature", |r| {
        fleet_result(r).1.contains("signature is not valid")
    });
    assert_eq!(names(&r), ["central"]);
    // Signed, the signature in a header: applied.
    server.serve(&central, Some(&sign(d, &central).await), true);
    wait_status(&config, &daemon, "the second document", |r| {
        names(r) == ["central", "second"]
    });
    let m = |result: &str| {
        metric(
            admin,
            &format!("roomhook_fleet_config_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(
        m("applied") >= 2.0 && m("refused") >= 4.0 && m("unchanged") >= 1.0,
        "{}",
        scrape(admin)
    );

    // The kept document deleted and a SIGHUP: the local file runs alone, and a later pull
    // of the same document (the server would answer its ETag with a 304) applies it again.
    let applied = m("applied");
    std::fs::remove_file(d.join("data/fleet-config.toml")).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || m("applied") > applied),
        "{}",
        daemon.logs()
    );
    wait_status(&config, &daemon, "the document again", |r| {
        names(r) == ["central", "second"]
    });

    // Restarted with the server down, it runs the last good document.
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.logs());
    drop(server);
    let (code, out, err) = run_cli(&["check-config", "-c", config.to_str().unwrap()]).await;
    assert!(code == 0 && out.contains("2 webhook(s)"), "{out}{err}");
    let daemon = Daemon::start(&config);
    let r = status_of(&config).unwrap();
    assert_eq!(names(&r), ["central", "second"]);
    assert!(r.fleet.as_ref().unwrap().config_sha256.is_some());
    wait_status(&config, &daemon, "a failed pull", |r| {
        fleet_result(r).0.as_deref() == Some("failed")
    });
    assert_eq!(names(&status_of(&config).unwrap()), ["central", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_a_plain_http_fleet_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .edit(|c| {
            c.set("fleet.config_url", "http://fleet.example/{gateway}.toml");
        })
        .write(dir.path());
    let (code, _, err) = run_cli(&["check-config", "-c", config.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("roomhook.toml:6: fleet.config_url")
            && err.contains("plain http")
            && err.contains("fix: use an https:// URL"),
        "{err}"
    );
}

/// A document of sources' subscriptions only leaves the webhooks to the local file: edits
/// are refused only until a document is in force (the first might have had `webhooks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_edits_stay_local_under_a_document_without_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rx = receiver(d, false).await;
    let server = ConfigServer::start(d).await;
    let config = Config::new()
        .gateway("id = \"gw-2\"")
        .with(Section::sensors(free_port()))
        .with(Section::webhook("local", &rx.url, &rx.ca_file))
        .edit(|c| {
            c.set("fleet.config_url", server.url())
                .set("fleet.ca_file", server.ca_file.display().to_string())
                .set("fleet.config_interval", "1s");
        })
        .write(d);
    // No broker: the source never subscribes, which is not what this is about.
    let daemon = Daemon::start_answering(&config);
    // Nothing served yet (404): refused.
    let (code, _, err) = AddWebhook::to("early", &rx).run(&config).await;
    assert!(code != 0 && err.contains("managed by the fleet"), "{err}");
    let subscriptions = "[[sources.mqtt]]\nname = \"sensors\"\n[[sources.mqtt.subscriptions]]\ntopic = \"fleet/+\"\nformat = \"zigbee2mqtt\"\n";
    server.serve(subscriptions, None, false);
    wait_status(&config, &daemon, "the subscriptions applied", |r| {
        r.fleet
            .as_ref()
            .is_some_and(|f| f.applied_at.is_some() && f.config_sha256.is_some())
    });
    let (code, out, err) = AddWebhook::to("mine", &rx).run(&config).await;
    assert_eq!(code, 0, "{out}{err}");
    // The pulls that follow leave it.
    wait_status(&config, &daemon, "a pull after the edit", |r| {
        fleet_result(r).0.as_deref() == Some("unchanged") && names(r) == ["local", "mine"]
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_arrive_signed_every_interval_and_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rx = receiver(d, false).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    rx.receiver.verify_signatures(secret);
    std::fs::write(d.join("report.secret"), secret).unwrap();
    std::fs::write(d.join("report.token"), TOKEN).unwrap();
    let admin = free_port();
    let config = Config::new()
        .admin(admin)
        .gateway("id = \"gw-7\"")
        .edit(|c| {
            c.set("fleet.report_url", rx.url.as_str())
                .set("fleet.report_ca_file", rx.ca_file.display().to_string())
                .set("fleet.report_authorization_file", "report.token")
                .set("fleet.report_signing_secret_file", "report.secret")
                .set("fleet.report_interval", "1s");
        })
        .write(d);
    let daemon = Daemon::start(&config);
    let signed = |n: usize| {
        move |reqs: &[roomhook::demo::receiver::Received]| {
            reqs.iter()
                .filter(|r| r.status == 200 && r.signature_valid == Some(true))
                .count()
                >= n
        }
    };
    // One in each interval (full jitter): the third falls in the third interval, 2 to 3 s
    // after the start; 15 s is only a bound for a loaded machine, not a measure.
    assert!(
        rx.receiver
            .wait_for(Duration::from_secs(15), signed(3))
            .await,
        "{}",
        daemon.logs()
    );
    let report = rx.receiver.accepted()[0].json();
    assert_eq!(report["gateway"], "gw-7");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        report["uptime_s"].is_u64() && report["config_sha256"].is_null(),
        "{report}"
    );
    assert!(
        report["status"]["webhooks"].is_array() && report["status"]["store"]["max_bytes"].is_u64(),
        "{report}"
    );

    // The receiver down: attempts go on, paced (never more than the retries of one
    // report at a time), and none waits for it to come back.
    rx.receiver.set_behaviour(Behaviour::Status(503));
    let down = Instant::now();
    assert!(rx.wait_status(503, 4, Duration::from_secs(10)).await);
    // A report still failing when the next is due is dropped, not kept.
    let dropped =
        || metric(admin, "roomhook_fleet_reports_total{result=\"dropped\"}").unwrap_or(0.0);
    assert!(
        wait_until(Duration::from_secs(10), || dropped() >= 1.0),
        "{}",
        scrape(admin)
    );
    // A refusal for good (401) is not tried again: each report is sent once, none waits for
    // the next to be dropped.
    rx.receiver.set_behaviour(Behaviour::Status(401));
    let failed = || metric(admin, "roomhook_fleet_reports_total{result=\"failed\"}").unwrap_or(0.0);
    assert!(rx.wait_status(401, 1, Duration::from_secs(10)).await);
    let (failed0, dropped0) = (failed(), dropped());
    assert!(
        wait_until(Duration::from_secs(10), || failed() >= failed0 + 4.0),
        "{}",
        scrape(admin)
    );
    assert_eq!(dropped(), dropped0, "a 401 retried: {}", scrape(admin));
    let up = Instant::now();
    rx.receiver.set_behaviour(Behaviour::Accept);
    let before = rx.receiver.accepted().len();
    assert!(
        rx.receiver
            .wait_for(Duration::from_secs(5), signed(before + 1))
            .await
    );
    let during = rx
        .receiver
        .requests()
        .iter()
        .filter(|r| r.at >= down && r.at < up)
        .count();
    let secs = up.duration_since(down).as_secs_f64();
    assert!(
        (during as f64) <= 4.0 * (secs + 1.0),
        "{during} requests in {secs:.1} s"
    );
    // Back up: the latest report, not a backlog: each report accepted is made when sent
    // (its `at` and uptime later than the one before), none repeats an old one, and the
    // first carries an uptime of now, not of when the receiver went down.
    let accepted = rx.receiver.accepted();
    let at =
        |r: &roomhook::demo::receiver::Received| r.json()["at"].as_str().unwrap_or("").to_string();
    let uptime =
        |r: &roomhook::demo::receiver::Received| r.json()["uptime_s"].as_u64().unwrap_or(0);
    for w in accepted.windows(2) {
        assert!(
            at(&w[0]) < at(&w[1]) && uptime(&w[0]) <= uptime(&w[1]),
            "a stale report after a later one: {} then {}",
            w[0].json(),
            w[1].json()
        );
    }
    let after: Vec<_> = accepted.iter().filter(|r| r.at >= up).collect();
    assert!(
        uptime(after[0]) + 2 >= uptime(&accepted[before - 1]) + secs as u64,
        "a stale report"
    );
    let r = status_of(&config).unwrap();
    assert!(r.fleet.as_ref().unwrap().report_result.is_some());
    drop(daemon);
}

/// The README's Fleet section: its document, merged into its gateway's file as a kept
/// document is, passes `check-config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_fleet_example_checks() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Fleet").unwrap()..];
    let section = &section[..section.find("\n## ").unwrap()];
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    let [doc, local] = blocks[..] else {
        panic!("two TOML blocks: {blocks:?}")
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The example's key is made up: a real one, and the document kept with its signature,
    // as a pull keeps it (a kept document is checked against config_public_key).
    let (public, _) = keygen(d).await;
    let local = edit(local, |c| {
        c.set("gateway.data_dir", "data")
            .set("fleet.config_public_key", public.as_str());
    });
    let config = d.join("roomhook.toml");
    std::fs::write(&config, local).unwrap();
    std::fs::create_dir(d.join("data")).unwrap();
    std::fs::write(d.join("data/fleet-config.toml"), doc).unwrap();
    std::fs::write(d.join("data/fleet-config.toml.sig"), sign(d, doc).await).unwrap();
    for token in ["fleet.token", "facilities.token"] {
        std::fs::write(d.join(token), TOKEN).unwrap();
    }
    std::fs::write(
        d.join("report.secret"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check-config", "-c", config.to_str().unwrap()]).await;
    assert!(
        code == 0 && out.contains("1 webhook(s)") && !err.contains("warning"),
        "{out}{err}"
    );
    // A kept document that no longer fits (its source renamed in the local file), and a
    // local file that leaves its subscriptions to the document: the fix says to delete it.
    let renamed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"sensors\"", "name = \"sensors-2\"");
    std::fs::write(&config, &renamed).unwrap();
    let (code, out, err) = run_cli(&["check-config", "-c", config.to_str().unwrap()]).await;
    assert!(
        code == 2 && err.contains("no mqtt source named \"sensors\"") && err.contains("or delete "),
        "{out}{err}"
    );
    // With subscriptions of its own the local file runs alone; check-config warns, naming
    // the kept file.
    let local = format!(
        "{renamed}\n[[sources.mqtt.subscriptions]]\ntopic = \"local/+\"\nformat = \"zigbee2mqtt\"\n"
    );
    std::fs::write(&config, local).unwrap();
    let (code, out, err) = run_cli(&["check-config", "-c", config.to_str().unwrap()]).await;
    assert!(
        code == 0
            && out.contains("0 webhook(s)")
            && err.contains("warning: the kept fleet document")
            && err.contains("data/fleet-config.toml:")
            && err.contains("delete "),
        "{out}{err}"
    );
}

/// 20 gateways polling one server spread their pulls over the interval: after each one's
/// first pull (within 10 s of its start, as nothing is kept yet), the next 20 pulls come
/// over the 120-s interval with no second holding more than 3 of them. Real daemons and
/// the HTTPS server; it takes 2-4 min, so it runs by hand:
/// `cargo test --test fleet twenty -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn twenty_gateways_spread_their_pulls_over_the_interval() {
    const G: usize = 20;
    const INTERVAL: Duration = Duration::from_secs(120);
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path(), false).await;
    let server = ConfigServer::start(dir.path()).await;
    server.serve(&webhooks_doc(&["central"], &rx), None, false);
    let ca_name = rx.ca_file.file_name().unwrap();
    let mut daemons = Vec::new();
    for i in 0..G {
        let d = dir.path().join(format!("g{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hook.token"), TOKEN).unwrap();
        std::fs::copy(&rx.ca_file, d.join(ca_name)).unwrap();
        let config = Config::new()
            .gateway(&format!("id = \"gw-{i}\""))
            .with(Section::webhook("local", &rx.url, &rx.ca_file))
            .edit(|c| {
                c.set("fleet.config_url", server.url())
                    .set("fleet.ca_file", server.ca_file.display().to_string())
                    .set("fleet.config_interval", "120s");
            })
            .write(&d);
        daemons.push(Daemon::start(&config));
    }
    let pulls = |i: usize| -> Vec<Instant> {
        let path = format!("/fleet/gw-{i}.toml");
        server
            .hits()
            .into_iter()
            .filter(|h| h.path == path)
            .map(|h| h.at)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || (0..G)
            .all(|i| !pulls(i).is_empty())),
        "not every gateway pulled within 30 s of its start: {:?}",
        server.hits()
    );
    assert!(
        wait_until(2 * INTERVAL + Duration::from_secs(30), || (0..G)
            .all(|i| pulls(i).len() >= 2)),
        "not every gateway pulled again within two intervals: {:?}",
        (0..G).map(|i| pulls(i).len()).collect::<Vec<_>>()
    );
    for mut d in daemons {
        assert_eq!(d.stop(), Some(0));
    }
    let mut second: Vec<Instant> = (0..G).map(|i| pulls(i)[1]).collect();
    second.sort();
    let busiest = busiest_second(&second, None);
    let span = second[G - 1].duration_since(second[0]);
    println!("the second pulls of {G} gateways: over {span:?}, at most {busiest} in one second");
    assert!(
        busiest <= 3,
        "{busiest} pulls within one second: {second:?}"
    );
    // Spread over the interval, not bunched: 20 uniform draws over 120 s span more than
    // half of it but for a chance of about 1 in 10^5.
    assert!(span > INTERVAL / 2, "{span:?}");
}
