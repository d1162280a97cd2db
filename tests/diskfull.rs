//! A full file system under the store: the daemon does not crash, the error shows in the
//! log, /readyz and the metrics, MQTT input waits with the broker, and everything resumes
//! when space returns — nothing accepted is lost, per-device order holds.
//!
//! It mounts a small tmpfs, so it needs root: `.ci/run` runs it (as root) with
//! `cargo test --test diskfull -- --ignored`.

use roomhook::demo::receiver::Behaviour;
use roomhook_testkit::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system with a ballast file, then frees `leave` bytes of it.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    let len = std::fs::metadata(&path).unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

/// A daemon whose store sits on a full 8 MiB tmpfs while 10 × 2,000 messages come in and
/// the receiver answers 503: returned once a commit failed.
struct FullDisk {
    daemon: Daemon,
    publisher: tokio::task::JoinHandle<()>,
    ballast: PathBuf,
    _mount: Mount,
    rig: Rig,
}

const DEVICES: usize = 10;
const PER_DEVICE: usize = 2000;

async fn full_disk() -> FullDisk {
    let rig = Rig::new()
        // A 1 MiB write-ahead log (a sixteenth of the budget): the log fills, and the
        // checkpoint into redb meets the full disk.
        .gateway("max_store_bytes = \"16MiB\"")
        .receiver(Behaviour::Status(503))
        .build()
        .await;
    let data = rig.dir.path().join("data");
    let mount = Mount::tmpfs(&data, "8m");
    let daemon = Daemon::start(&rig.config);
    let ballast = fill(&data, 1024 * 1024);
    let port = rig.broker.port;
    let publisher =
        tokio::spawn(async move { publish(port, &workload(DEVICES, PER_DEVICE)).await });
    // The disk filled.
    daemon.expect_log("store commit failed", Duration::from_secs(60));
    FullDisk {
        daemon,
        publisher,
        ballast,
        _mount: mount,
        rig,
    }
}

/// Once space returned: the broker gets every PUBACK, and every message arrives (each
/// within 120 s).
async fn space_returned(
    publisher: tokio::task::JoinHandle<()>,
    rx: &TestReceiver,
    daemon: &Daemon,
) {
    tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("the broker got every PUBACK once space returned")
        .unwrap();
    rx.expect_accepted(DEVICES * PER_DEVICE, Duration::from_secs(120), daemon)
        .await;
}

/// Every message arrived once, in order per device: a message redelivered by the broker
/// after a failed commit may arrive twice in a row, and is counted once.
fn once_in_order(rx: &TestReceiver) {
    let mut received = rx.receiver.accepted();
    received.dedup_by(|a, b| a.headers.get("webhook-id") == b.headers.get("webhook-id"));
    assert_complete_and_ordered(&received, DEVICES, PER_DEVICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a tmpfs (.ci/run runs it)"]
async fn a_full_disk_pauses_input_and_resumes_when_space_returns() {
    let f = full_disk().await;
    let (rx, admin) = (&f.rig.rx, f.rig.admin);
    let (status, body) = roomhook_testkit::http_get(admin, "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store"), "{body}");
    assert!(
        metric(admin, "roomhook_store_errors_total").is_some_and(|n| n >= 1.0),
        "{}",
        scrape(admin)
    );
    // Still alive a while later, and not in a crash loop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(roomhook_testkit::http_get(admin, "/healthz", None).0, 200);

    std::fs::remove_file(&f.ballast).unwrap();
    rx.receiver.set_behaviour(Behaviour::Accept);
    space_returned(f.publisher, rx, &f.daemon).await;
    // Ready again once no commit failed for 10 s.
    let ready = wait_until(Duration::from_secs(40), || {
        roomhook_testkit::http_get(admin, "/readyz", None).0 == 200
    });
    assert!(
        ready,
        "{}",
        roomhook_testkit::http_get(admin, "/readyz", None).1
    );
    // redb refuses everything after an I/O error until reopened: the writer did that.
    assert!(
        f.daemon
            .logs()
            .contains("store reopened after the I/O error"),
        "{}",
        f.daemon.logs()
    );
    once_in_order(rx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a tmpfs (.ci/run runs it)"]
async fn sigterm_ends_the_daemon_in_time_while_the_disk_is_full() {
    let mut f = full_disk().await;
    // Input held, commits failing, the store reopening: SIGTERM still ends it in time.
    let t = std::time::Instant::now();
    let code = f.daemon.stop();
    let took = t.elapsed();
    assert!(
        took < roomhook::config::SHUTDOWN_GRACE + Duration::from_secs(7),
        "SIGTERM took {took:?}; log:\n{}",
        f.daemon.logs()
    );
    // A clean exit: the sources and the store writer saw the shutdown (the backstop, which
    // exits 1 once the grace period is over, was not needed).
    assert_eq!(code, Some(0), "{}", f.daemon.logs());
    f.publisher.abort();
}

/// An edit that the full disk refuses changes nothing: the answer says so, the config file is
/// byte for byte as it was, the running webhook keeps its one delivery loop; once space
/// returns the same edit goes through and every event arrives (#21).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a tmpfs (.ci/run runs it)"]
async fn an_edit_the_full_disk_refuses_changes_nothing() {
    let f = full_disk().await;
    let (rx, config) = (&f.rig.rx, &f.rig.config);
    let before = std::fs::read(config).unwrap();
    let (code, _, err) = webhook_cli(config, &["set", "facilities", "--name", "renamed"]).await;
    assert_ne!(code, 0, "a rename went through on a full disk");
    assert!(
        err.contains("the store refused the change, nothing was changed"),
        "{err}"
    );
    assert_eq!(std::fs::read(config).unwrap(), before, "the file changed");
    let names: Vec<String> = webhook_list(config)
        .await
        .iter()
        .map(|w| w["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["facilities"]);
    let cfg = config.to_string_lossy().to_string();
    let (_, out, _) = run_cli(&["status", "--json", "-c", &cfg]).await;
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let loops = status["delivery_loops"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(loops.len(), 1, "{status}");
    assert_eq!(loops[0]["webhook"], "facilities", "{status}");
    // Space returns: the rename goes through, and everything arrives once, in order.
    std::fs::remove_file(&f.ballast).unwrap();
    rx.receiver.set_behaviour(Behaviour::Accept);
    let renamed = wait_until(Duration::from_secs(60), || {
        run_roomhook(&[
            "webhook",
            "set",
            "facilities",
            "--name",
            "renamed",
            "-c",
            &cfg,
        ])
        .0 == 0
    });
    assert!(renamed, "{}", f.daemon.logs());
    space_returned(f.publisher, rx, &f.daemon).await;
    once_in_order(rx);
}
