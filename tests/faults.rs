//! Network faults between roomhook and its peers, injected by a TCP proxy (the kernel here has
//! no `netem`): a slow receiver path, a black hole, resets mid-request, a TLS handshake that
//! never finishes, a broker gone while the receiver is slow. Each scenario ends with every event delivered,
//! in order per device (a request whose answer was lost may arrive twice in a row: at least
//! once).

use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::proxy::{Fault, Proxy};
use roomhook_testkit::*;
use std::time::Duration;

/// The rig with a fault proxy on each of roomhook's two ways out.
struct Faulty {
    rig: Rig,
    /// Between roomhook and the receiver.
    to_receiver: Proxy,
    /// Between roomhook and the broker.
    to_broker: Proxy,
    daemon: Daemon,
}

impl std::ops::Deref for Faulty {
    type Target = Rig;
    fn deref(&self) -> &Rig {
        &self.rig
    }
}

async fn rig(webhook_extra: &str) -> Faulty {
    let rig = Rig::new().webhook(webhook_extra).build().await;
    let to_receiver = Proxy::start(rig.rx.receiver.addr().port()).await;
    let to_broker = Proxy::start(rig.broker.port).await;
    let (receiver, broker) = (to_receiver.port, to_broker.port);
    rig.edit_config(|d| {
        d.set(
            "webhooks[facilities].url",
            format!("https://127.0.0.1:{receiver}/hook"),
        )
        .set(
            "sources.mqtt[sensors].url",
            format!("mqtt://127.0.0.1:{broker}"),
        );
    });
    let daemon = Daemon::start(&rig.config);
    Faulty {
        rig,
        to_receiver,
        to_broker,
        daemon,
    }
}

const DEVICES: usize = 10;

/// Every value 0..per_device of every device arrived, in order; a value may repeat right
/// after itself (its first request reached the receiver, the answer did not come back).
fn assert_all_in_order(r: &Faulty, each: usize) {
    let accepted = r.rx.receiver.accepted();
    let messages: usize = accepted.iter().map(|q| q.messages().len()).sum();
    assert_eq!(
        people_counts(&accepted).len(),
        messages,
        "a message without a value"
    );
    let per = per_device(&accepted);
    assert_eq!(per.len(), DEVICES, "devices seen");
    let want: Vec<i64> = (0..each as i64).collect();
    for (device, mut values) in per {
        values.dedup();
        assert_eq!(values, want, "values of {device}: lost or out of order");
    }
}

/// Distinct events arrived (repeats not counted).
fn distinct(r: &Faulty) -> usize {
    people_counts(&r.rx.receiver.accepted())
        .into_iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn request_errors(r: &Faulty) -> f64 {
    scrape(r.admin)
        .lines()
        .filter(|l| l.starts_with("roomhook_request_errors_total{webhook=\"facilities\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The rig behind its proxies with the keys of `webhook`, `fault` on the way to the
/// receiver, and `per_device` people counts of each device published.
async fn faulty(webhook: &str, fault: Fault, per_device: usize) -> Faulty {
    let r = rig(webhook).await;
    r.to_receiver.set(fault);
    publish(r.broker.port, &workload(DEVICES, per_device)).await;
    r
}

/// Waits up to `within` until `n` requests failed.
fn wait_errors(r: &Faulty, n: f64, within: Duration) {
    assert!(
        wait_until(within, || request_errors(r) >= n),
        "{}\n{}",
        scrape(r.admin),
        r.daemon.logs()
    );
}

/// Every one of the `per_device` values of each device arrives (within `within`), in
/// order, and the daemon stops cleanly.
async fn delivered_in_order(mut r: Faulty, per_device: usize, within: Duration) {
    wait_all(&r, DEVICES * per_device, within).await;
    assert_eq!(r.daemon.stop(), Some(0));
    assert_all_in_order(&r, per_device);
}

async fn wait_all(r: &Faulty, n: usize, within: Duration) {
    let all = |reqs: &[roomhook::demo::receiver::Received]| {
        people_counts(reqs)
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= n
    };
    r.rx.receiver.wait_for(within, all).await;
    assert_eq!(distinct(r), n, "{}\n{}", scrape(r.admin), r.daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_seconds_of_latency_with_a_one_second_timeout() {
    let slow = Fault::Latency(Duration::from_secs(2));
    let r = faulty("request_timeout = \"1s\"", slow, 50).await;
    // Requests time out (and are retried) while the path is slow.
    wait_errors(&r, 3.0, Duration::from_secs(30));
    r.to_receiver.set(Fault::Pass);
    delivered_in_order(r, 50, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_that_times_out_request_after_request() {
    // A short timeout: the black hole lasts three of them (each retried after a backoff),
    // not a wall-clock minute. (1 s, as in the latency test: a request through the proxy
    // once it passes again takes a few milliseconds.)
    let r = faulty("request_timeout = \"1s\"", Fault::BlackHole, 50).await;
    wait_errors(&r, 3.0, Duration::from_secs(60));
    assert_eq!(distinct(&r), 0, "nothing passes a black hole");
    r.to_receiver.set(Fault::Pass);
    delivered_in_order(r, 50, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_in_the_middle_of_requests() {
    // The TLS handshake passes, then a request or two, then a reset mid-stream: on every
    // connection, for the whole run (500 events: every connection still carries only a
    // few requests before its reset).
    let mut r = faulty("", Fault::ResetAfter(4000), 50).await;
    wait_all(&r, DEVICES * 50, Duration::from_secs(120)).await;
    assert!(request_errors(&r) >= 1.0, "{}", scrape(r.admin));
    assert_eq!(r.daemon.stop(), Some(0));
    assert_all_in_order(&r, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_finishes_the_tls_handshake() {
    // The handshake is bounded by request_timeout (connect_timeout covers TCP only; it is
    // the shorter of the two, as before the timeouts were cut to save test time).
    let timeouts = "connect_timeout = \"1s\"\nrequest_timeout = \"1500ms\"";
    let r = faulty(timeouts, Fault::Silent, 50).await;
    // The handshake times out (it is not waited on forever), again and again.
    wait_errors(&r, 2.0, Duration::from_secs(40));
    assert_eq!(distinct(&r), 0);
    r.to_receiver.set(Fault::Pass);
    delivered_in_order(r, 50, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_gone_while_the_receiver_is_slow() {
    const PER_DEVICE: usize = 40;
    const HALF: i64 = PER_DEVICE as i64 / 2;
    let r = rig("").await;
    r.rx.receiver
        .set_behaviour(Behaviour::SlowPerConcurrent(10));
    // 200 events before the cut and 200 during it: at about 100 requests/s (10 ms per
    // request in progress), a backlog of about 2 s when the way to the broker goes, and
    // the source's reconnect backoff (200 ms, doubling) stays within a few seconds.
    let first: Vec<(String, i64)> = workload(DEVICES, PER_DEVICE)
        .into_iter()
        .filter(|(_, v)| *v < HALF)
        .collect();
    let second: Vec<(String, i64)> = workload(DEVICES, PER_DEVICE)
        .into_iter()
        .filter(|(_, v)| *v >= HALF)
        .collect();
    publish(r.broker.port, &first).await;
    // roomhook's way to the broker goes; the broker keeps its session and queues what is
    // published meanwhile.
    r.to_broker.set(Fault::Down);
    let at_cut = distinct(&r);
    assert!(wait_until(Duration::from_secs(10), || metric(
        r.admin,
        "roomhook_source_connected{source=\"sensors\"}"
    ) == Some(0.0)));
    publish(r.broker.port, &second).await;
    // Delivery goes on while the source is away: the slow receiver gets everything
    // roomhook took before its way to the broker went (the rest waits in the broker's
    // session) before the broker comes back; the source meanwhile retries with its backoff.
    assert!(
        wait_until(Duration::from_secs(90), || distinct(&r) > 0
            && metric(r.admin, "roomhook_queue_events{webhook=\"facilities\"}")
                == Some(0.0)),
        "{}",
        r.daemon.logs()
    );
    assert_eq!(
        metric(r.admin, "roomhook_source_connected{source=\"sensors\"}"),
        Some(0.0)
    );
    // What it delivered meanwhile came after the cut: a backlog outlived the way to the broker.
    assert!(
        distinct(&r) > at_cut,
        "nothing delivered after the cut ({at_cut} before it)"
    );
    r.to_broker.set(Fault::Pass);
    delivered_in_order(r, PER_DEVICE, Duration::from_secs(120)).await;
}
