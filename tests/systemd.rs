//! The daemon as a systemd service sees it: the notification protocol on a datagram socket
//! the test owns (`NOTIFY_SOCKET`), the watchdog (`WATCHDOG_USEC`) and what stops its pings,
//! and what each stop signal does.

use nix::sys::signal::Signal;
use roomhook_testkit::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the daemon told the "service manager", one entry per `KEY=value` line, with when.
#[derive(Clone)]
struct Manager {
    socket: std::path::PathBuf,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Manager {
    fn listen(dir: &Path) -> Manager {
        let socket = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&socket).expect("bind notify socket");
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let now = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let mut l = sink.lock().unwrap();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    l.push((now, line.to_string()));
                }
            }
        });
        Manager { socket, lines }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    fn texts(&self) -> Vec<String> {
        self.lines().into_iter().map(|(_, l)| l).collect()
    }

    fn count(&self, line: &str) -> usize {
        self.texts().iter().filter(|l| *l == line).count()
    }

    /// Waits until `f` holds for what arrived.
    fn wait(&self, what: &str, f: impl Fn(&[String]) -> bool) {
        let ok = wait_until(Duration::from_secs(20), || f(&self.texts()));
        assert!(ok, "no {what}; the daemon sent:\n{:#?}", self.texts());
    }

    fn env(&self, watchdog: Duration) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.socket.display().to_string()),
            ("WATCHDOG_USEC".into(), watchdog.as_micros().to_string()),
        ]
    }
}

fn start(config: &Path, env: &[(String, String)]) -> Daemon {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start_with_env(config, &env)
}

fn position(lines: &[String], from: usize, f: impl Fn(&str) -> bool) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| f(l))
        .map(|(i, _)| i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_watchdog_reloading_and_stopping_arrive_in_order() {
    let e = Rig::new().build().await;
    let manager = Manager::listen(e.dir.path());
    let mut daemon = start(&e.config, &manager.env(Duration::from_secs(2)));
    manager.wait("READY=1", |l| l.iter().any(|l| l == "READY=1"));
    // The status names the webhooks, the queue and the sources; it follows the source.
    manager.wait("a STATUS with the source connected", |l| {
        l.iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("1/1 source connected"))
    });
    // Pings every half second (a quarter of the period).
    manager.wait("three watchdog pings", |l| {
        l.iter().filter(|l| *l == "WATCHDOG=1").count() >= 3
    });
    publish(e.broker.port, &workload(2, 10)).await;
    assert!(
        e.rx.receiver
            .wait_accepted(20, Duration::from_secs(20))
            .await
    );
    assert!(
        manager
            .texts()
            .iter()
            .all(|l| !l.starts_with("STATUS=") || l.contains("1/1 webhook active")),
        "{:#?}",
        manager.texts()
    );

    daemon.signal(Signal::SIGHUP);
    manager.wait("READY=1 after the reload", |l| {
        l.iter().filter(|l| *l == "READY=1").count() >= 2
    });
    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("roomhook did not stop within 20 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.logs());

    let l = manager.texts();
    let ready = position(&l, 0, |x| x == "READY=1").expect("READY");
    assert!(
        l[..ready].iter().all(|x| x != "WATCHDOG=1"),
        "a ping before READY: {l:#?}"
    );
    let ping = position(&l, ready, |x| x == "WATCHDOG=1").expect("a ping after READY");
    let reloading = position(&l, ping, |x| x == "RELOADING=1").expect("RELOADING after pings");
    let usec = l[reloading..]
        .iter()
        .find_map(|x| x.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING");
    assert!(usec.parse::<u64>().expect("a number") > 0);
    let ready_again = position(&l, reloading, |x| x == "READY=1").expect("READY after RELOADING");
    let stopping = position(&l, ready_again, |x| x == "STOPPING=1").expect("STOPPING last");
    assert!(
        l[stopping..].iter().all(|x| x != "READY=1"),
        "READY after STOPPING: {l:#?}"
    );
    // The status line is sent when it changes (never the same line twice in a row), and
    // the updates between READY and RELOADING at most once a second.
    let timed = manager.lines();
    let updates: Vec<&(Instant, String)> = timed[ready + 1..reloading]
        .iter()
        .filter(|(_, x)| x.starts_with("STATUS="))
        .collect();
    for w in updates.windows(2) {
        assert_ne!(w[0].1, w[1].1, "the same status twice: {l:#?}");
        assert!(
            w[1].0.duration_since(w[0].0) >= Duration::from_millis(900),
            "two status updates {:?} apart",
            w[1].0.duration_since(w[0].0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_store_writer_stops_the_watchdog_pings_and_a_restart_loses_nothing() {
    let e = Rig::new().build().await;
    let manager = Manager::listen(e.dir.path());
    let wedge = e.dir.path().join("wedge");
    let mut env = manager.env(Duration::from_secs(2));
    env.push((
        "ROOMHOOK_TEST_WEDGE_FILE".into(),
        wedge.display().to_string(),
    ));
    let mut daemon = start(&e.config, &env);
    manager.wait("pings", |l| {
        l.iter().filter(|l| *l == "WATCHDOG=1").count() >= 2
    });
    let first = workload(3, 5);
    publish(e.broker.port, &first).await;
    assert!(
        e.rx.receiver
            .wait_accepted(15, Duration::from_secs(20))
            .await
    );

    // The storage stops answering: the next group hangs in the writer.
    let stuck = "the store writer has been in one step for";
    let before = daemon.logs().matches(stuck).count();
    std::fs::write(&wedge, b"").unwrap();
    let second: Vec<(String, i64)> = (5..10)
        .flat_map(|v| (0..3).map(move |d| (format!("room-{d}"), v)))
        .collect();
    let publisher = tokio::spawn({
        let port = e.broker.port;
        let second = second.clone();
        async move { publish(port, &second).await }
    });
    // The watchdog's own check names the writer (each stop of the pings is logged once).
    let said = wait_until(Duration::from_secs(20), || {
        daemon.logs().matches(stuck).count() > before
    });
    assert!(said, "{}", daemon.logs());
    // No ping for a whole period (systemd would send SIGABRT now) while the process lives.
    let pings = manager.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(manager.count("WATCHDOG=1"), pings, "pings went on");
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon died"
    );

    // What systemd does then: kill it (SIGABRT by default; SIGKILL here, no core file),
    // and start it again (the storage answers again).
    daemon.signal(Signal::SIGKILL);
    assert!(daemon.wait_exit(Duration::from_secs(10)).is_some());
    std::fs::remove_file(&wedge).unwrap();
    let mut daemon = start(&e.config, &manager.env(Duration::from_secs(2)));
    publisher.await.unwrap();
    let all = [first, second].concat();
    // Everything, in order per room (what the writer never committed was never acked: the
    // broker sends it again; what was delivered but not yet removed may come twice).
    let complete =
        e.rx.receiver
            .wait_for(Duration::from_secs(30), |r| {
                let counts = people_counts(r);
                all.iter().all(|m| counts.contains(m))
            })
            .await;
    let counts = people_counts(&e.rx.receiver.accepted());
    let lost: Vec<_> = all.iter().filter(|m| !counts.contains(m)).collect();
    assert!(complete, "lost after the restart: {lost:?}");
    assert_eq!(daemon.stop(), Some(0));
}

/// A config whose webhook's receiver holds every request for `hold`.
async fn slow_receiver_env(grace: &str, hold: Duration) -> Rig {
    Rig::new()
        .gateway(&format!("shutdown_grace = \"{grace}\""))
        .webhook("max_in_flight = 1\nrequest_timeout = \"60s\"")
        .receiver(roomhook::demo::receiver::Behaviour::SlowPerConcurrent(
            hold.as_millis() as u64,
        ))
        .build()
        .await
}

/// Starts the daemon, publishes one message and waits until its request is at the receiver.
async fn request_in_flight(e: &Rig) -> Daemon {
    let daemon = Daemon::start(&e.config);
    publish(e.broker.port, &[("room-0".to_string(), 1)]).await;
    let sent = wait_until(Duration::from_secs(20), || {
        metric(
            e.admin,
            "roomhook_in_flight_requests{webhook=\"facilities\"}",
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(sent, "no request in flight; log:\n{}", daemon.logs());
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_requests_in_flight_up_to_shutdown_grace() {
    let e = slow_receiver_env("2s", Duration::from_secs(30)).await;
    let mut daemon = request_in_flight(&e).await;
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    // It waits for the request (not exiting at once) but no longer than the grace.
    assert!(daemon.wait_exit(Duration::from_millis(1500)).is_none());
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("did not stop after shutdown_grace");
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", daemon.logs());
    // The configured 2 s, not the default 5 s.
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_like_sigterm_and_a_request_that_ends_in_the_grace_is_not_sent_again() {
    let e = slow_receiver_env("10s", Duration::from_secs(2)).await;
    let mut daemon = request_in_flight(&e).await;
    daemon.signal(Signal::SIGINT);
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .expect("did not stop after SIGINT");
    assert_eq!(status.code(), Some(0), "{}", daemon.logs());
    assert_eq!(accepted_messages(&e.rx.receiver), 1);
    // Its removal was committed: a restart sends nothing again.
    e.rx.receiver
        .set_behaviour(roomhook::demo::receiver::Behaviour::Accept);
    let mut daemon = Daemon::start(&e.config);
    publish(e.broker.port, &[("room-0".to_string(), 2)]).await;
    assert!(
        e.rx.receiver
            .wait_accepted(2, Duration::from_secs(20))
            .await
    );
    assert_eq!(
        people_counts(&e.rx.receiver.accepted()),
        vec![("room-0".to_string(), 1), ("room-0".to_string(), 2)]
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_event_is_sent_again_after_the_restart() {
    for second in [Signal::SIGTERM, Signal::SIGINT] {
        // Held longer than the test runs: the first request is never recorded as accepted.
        let e = slow_receiver_env("20s", Duration::from_secs(600)).await;
        let mut daemon = request_in_flight(&e).await;
        daemon.signal(Signal::SIGTERM);
        assert!(
            daemon.wait_exit(Duration::from_millis(1000)).is_none(),
            "did not wait for the request in flight"
        );
        let asked = Instant::now();
        daemon.signal(second);
        let status = daemon
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("a second signal ({second}) did not end it"));
        assert!(asked.elapsed() < Duration::from_secs(2));
        assert_eq!(status.code(), Some(1));
        assert!(daemon.logs().contains("second signal"), "{}", daemon.logs());
        // The event was committed, never acknowledged by the receiver: it goes out again.
        e.rx.receiver
            .set_behaviour(roomhook::demo::receiver::Behaviour::Accept);
        let mut daemon = Daemon::start(&e.config);
        let again =
            e.rx.receiver
                .wait_for(Duration::from_secs(20), |r| {
                    r.iter().any(|x| x.status == 200)
                })
                .await;
        assert!(again, "the event was not sent again after {second}");
        assert_eq!(
            people_counts(&e.rx.receiver.accepted()),
            vec![("room-0".to_string(), 1)]
        );
        assert_eq!(daemon.stop(), Some(0));
    }
}

/// #23 (8): a receiver's answer must not become notify lines of its own. It answers 400
/// with a body that carries `WATCHDOG=trigger` and `STATUS=injected` on lines of their own;
/// once the webhook is refusing, its last error (that body) is the first problem, and the
/// status line carries it — as one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receivers_answer_never_becomes_a_notify_line_of_its_own() {
    let e = Rig::new()
        .receiver(roomhook::demo::receiver::Behaviour::StatusBody(
            400,
            "bad request\nWATCHDOG=trigger\nSTATUS=injected\r\n",
        ))
        .build()
        .await;
    let manager = Manager::listen(e.dir.path());
    let mut daemon = start(&e.config, &manager.env(Duration::from_secs(2)));
    publish(e.broker.port, &workload(4, 10)).await;
    manager.wait("a STATUS naming the receiver's answer", |l| {
        l.iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("bad request"))
    });
    let texts = manager.texts();
    assert_eq!(manager.count("WATCHDOG=trigger"), 0, "{texts:#?}");
    assert!(
        texts
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("WATCHDOG=trigger")),
        "the answer is in the status line, on it: {texts:#?}"
    );
    assert!(
        !texts.iter().any(|l| l.starts_with("STATUS=injected")),
        "{texts:#?}"
    );
    // The same text reaches `status` as one line too.
    let report = status_of(&e.config).expect("status");
    assert!(
        report
            .problems
            .iter()
            .chain(
                report
                    .webhooks
                    .iter()
                    .filter_map(|w| w.last_error.as_ref().map(|x| &x.message))
            )
            .all(|p| !p.contains('\n') && !p.contains('\r')),
        "{:?}",
        report.problems
    );
    assert_eq!(daemon.stop(), Some(0));
}
