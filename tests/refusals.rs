//! What a receiver's refusals cost, through the real binary: a proxy answering 404 during a
//! deploy loses nothing; a receiver refusing every message does not empty the queue into
//! the dead letters; a busy receiver (429) never opens the circuit; a 413 on a batch is
//! retried in smaller batches.

use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use std::time::Duration;

fn dead_letters(admin: u16) -> Option<f64> {
    metric(admin, "roomhook_dead_letters{webhook=\"facilities\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answering_404_during_a_deploy_loses_nothing() {
    let (r, mut daemon) = Rig::new().receiver(Behaviour::Status(404)).start().await;
    let (devices, per_device) = (5, 20);
    publish(r.broker.port, &workload(devices, per_device)).await;
    // Ten 404s: were a 404 taken as a refusal, the first ones would be dead letters by then.
    assert!(r.rx.wait_status(404, 10, Duration::from_secs(20)).await);
    assert_eq!(dead_letters(r.admin), Some(0.0), "404 must not dead-letter");
    r.rx.receiver.set_behaviour(Behaviour::Accept);
    r.rx.expect_accepted(devices * per_device, Duration::from_secs(60), &daemon)
        .await;
    assert_complete_and_ordered(&r.rx.receiver.accepted(), devices, per_device);
    assert_eq!(dead_letters(r.admin), Some(0.0));
    assert_eq!(daemon.stop(), Some(0));
}

/// A receiver that answers 429 (without `Retry-After`) is up: more 429s in a row than the
/// circuit breaker's threshold do not open the circuit (it would probe one request at a
/// time, and restart the drain slowly after), and everything goes once it takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_receiver_never_opens_the_circuit() {
    let (r, mut daemon) = Rig::new()
        .receiver(Behaviour::Status(429))
        .webhook("circuit_breaker_threshold = 2")
        .start()
        .await;
    let (devices, per_device) = (3, 2);
    publish(r.broker.port, &workload(devices, per_device)).await;
    // The state, looked at all along until four 429s came (threshold 2).
    let open = || r.metric("roomhook_webhook_state{webhook=\"facilities\",state=\"circuit_open\"}");
    let refused = || {
        r.rx.receiver
            .requests()
            .iter()
            .filter(|q| q.status == 429)
            .count()
    };
    let mut seen_open = false;
    assert!(
        wait_until(Duration::from_secs(30), || {
            seen_open |= open() != 0.0;
            refused() >= 4
        }),
        "{}",
        daemon.logs()
    );
    assert!(!seen_open && open() == 0.0, "{}", daemon.logs());
    r.rx.receiver.set_behaviour(Behaviour::Accept);
    r.rx.expect_accepted(devices * per_device, Duration::from_secs(60), &daemon)
        .await;
    assert_complete_and_ordered(&r.rx.receiver.accepted(), devices, per_device);
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_everything_does_not_empty_the_queue() {
    let (r, mut daemon) = Rig::new().receiver(Behaviour::Status(422)).start().await;
    let (rx, admin) = (&r.rx, r.admin);
    let n = 100;
    publish(r.broker.port, &workload(1, n)).await;
    let state = |s: &str| {
        metric(
            admin,
            &format!("roomhook_webhook_state{{webhook=\"facilities\",state=\"{s}\"}}"),
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || state("refusing") == Some(1.0)),
        "never refusing; log:\n{}",
        daemon.logs()
    );
    // The first refusals are taken at their word; then the queue is held.
    let queued = || metric(admin, "roomhook_queue_events{webhook=\"facilities\"}");
    assert!(
        wait_until(Duration::from_secs(10), || dead_letters(admin)
            == Some(19.0)
            && queued() == Some((n - 19) as f64)),
        "dead letters {:?}, queued {:?}: the first 19 refusals are dead letters, the rest is held",
        dead_letters(admin),
        queued()
    );
    let (code, body) = roomhook_testkit::http_get(admin, "/readyz", None);
    assert_eq!(code, 503);
    assert!(body.contains("refused 20 messages in a row"), "{body}");
    // roomhook_ready says the same at every scrape.
    assert_eq!(metric(admin, "roomhook_ready"), Some(0.0));
    // The receiver is fixed: the held queue goes out.
    rx.receiver.set_behaviour(Behaviour::Accept);
    rx.expect_accepted(n - 19, Duration::from_secs(60), &daemon)
        .await;
    assert!(wait_until(Duration::from_secs(10), || state("active") == Some(1.0)));
    assert_eq!(dead_letters(admin), Some(19.0));
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_on_a_batch_is_retried_in_smaller_batches() {
    let r = Rig::new()
        .webhook("batch_max_messages = 50")
        .receiver(Behaviour::MaxMessages(10))
        .build()
        .await;
    // A backlog in the store before the start: the first batches are full (50 > 10).
    let (devices, per_device) = (10, 20);
    let backlog = workload(devices, per_device)
        .iter()
        .map(|(d, v)| people_event(d, *v))
        .collect();
    prefill(&r.dir.path().join("data"), "facilities", backlog).await;
    let mut daemon = Daemon::start(&r.config);
    r.rx.expect_messages(devices * per_device, Duration::from_secs(60), &daemon)
        .await;
    assert!(
        r.rx.receiver.requests().iter().any(|r| r.status == 413),
        "the receiver never saw a batch over its limit"
    );
    assert_complete_and_ordered(&r.rx.receiver.accepted(), devices, per_device);
    assert_eq!(dead_letters(r.admin), Some(0.0));
    assert_eq!(daemon.stop(), Some(0));
}
