//! What a receiver's refusals cost, through the real binary: a proxy answering 404 during a
//! deploy loses nothing; a receiver refusing every message does not empty the queue into
//! the dead letters; a 413 on a batch is retried in smaller batches.

use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use std::time::Duration;

fn dead_letters(admin: u16) -> Option<f64> {
    metric(admin, "roomhook_dead_letters{webhook=\"facilities\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answering_404_during_a_deploy_loses_nothing() {
    let Rig {
        dir: _dir,
        broker,
        rx,
        admin,
        config,
    } = Rig::new().build().await;
    rx.receiver.set_behaviour(Behaviour::Status(404));
    let mut daemon = Daemon::start(&config);
    let (devices, per_device) = (5, 20);
    publish(broker.port, &workload(devices, per_device)).await;
    assert!(
        rx.receiver
            .wait_for(Duration::from_secs(20), |r| r
                .iter()
                .filter(|x| x.status == 404)
                .count()
                >= 30)
            .await
    );
    assert_eq!(dead_letters(admin), Some(0.0), "404 must not dead-letter");
    rx.receiver.set_behaviour(Behaviour::Accept);
    assert!(
        rx.receiver
            .wait_accepted(devices * per_device, Duration::from_secs(60))
            .await,
        "{}",
        daemon.logs()
    );
    assert_complete_and_ordered(&rx.receiver.accepted(), devices, per_device);
    assert_eq!(dead_letters(admin), Some(0.0));
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_everything_does_not_empty_the_queue() {
    let Rig {
        dir: _dir,
        broker,
        rx,
        admin,
        config,
    } = Rig::new().build().await;
    rx.receiver.set_behaviour(Behaviour::Status(422));
    let mut daemon = Daemon::start(&config);
    let n = 100;
    publish(broker.port, &workload(1, n)).await;
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
    assert!(
        rx.receiver
            .wait_accepted(n - 19, Duration::from_secs(60))
            .await,
        "{}",
        daemon.logs()
    );
    assert!(wait_until(Duration::from_secs(10), || state("active") == Some(1.0)));
    assert_eq!(dead_letters(admin), Some(19.0));
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_on_a_batch_is_retried_in_smaller_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let rx = receiver(dir.path(), false).await;
    rx.receiver.set_behaviour(Behaviour::MaxMessages(10));
    let admin = free_port();
    let config = write_config(
        dir.path(),
        &with_admin(
            &standard_config(broker.port, &rx.url, &rx.ca_file, "batch_max_messages = 50"),
            admin,
        ),
    );
    // A backlog in the store before the start: the first batches are full (50 > 10).
    let (devices, per_device) = (10, 20);
    let backlog = workload(devices, per_device)
        .iter()
        .map(|(d, v)| people_event(d, *v))
        .collect();
    prefill(&dir.path().join("data"), "facilities", backlog).await;
    let mut daemon = Daemon::start(&config);
    assert!(
        rx.receiver
            .wait_for(Duration::from_secs(60), |r| {
                r.iter()
                    .filter(|x| x.status == 200)
                    .map(|x| x.messages().len())
                    .sum::<usize>()
                    >= devices * per_device
            })
            .await,
        "{}",
        daemon.logs()
    );
    assert!(
        rx.receiver.requests().iter().any(|r| r.status == 413),
        "the receiver never saw a batch over its limit"
    );
    assert_complete_and_ordered(&rx.receiver.accepted(), devices, per_device);
    assert_eq!(dead_letters(admin), Some(0.0));
    assert_eq!(daemon.stop(), Some(0));
}
