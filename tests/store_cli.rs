//! `roomhook store check` and `roomhook store salvage` on a healthy and a damaged store, and
//! the daemon's message when it cannot open one.

use roomhook::catalog::Kind;
use roomhook::event::Event;
use roomhook::store::{Limits, Overflow, Store};
use std::path::Path;
use std::process::Command;

fn roomhook(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roomhook"))
        .args(args)
        .output()
        .expect("run roomhook");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

async fn fill(dir: &Path, n: usize) {
    let limits = Limits {
        max_bytes: 0,
        queues: vec![("facilities".into(), Overflow::DropOldest)],
    };
    let (store, ids) = Store::open(dir, &limits).unwrap();
    for chunk in 0..n / 1000 {
        let items = (0..1000)
            .map(|i| {
                let e = Event {
                    device: format!("room-{}", i % 10),
                    workspace: None,
                    path: "RoomAnalytics.PeopleCount.Current".into(),
                    kind: Kind::Status,
                    value: serde_json::json!(chunk * 1000 + i),
                    ts_ms: 1,
                    full_sync: false,
                    more: Vec::new(),
                };
                (ids[0], e.encode())
            })
            .collect();
        store.append(items).await.unwrap();
    }
    store.close().await;
}

#[tokio::test]
async fn check_passes_on_a_healthy_store() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 2000).await;
    let (code, out) = roomhook(&["store", "check", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("webhook facilities: 2000 queued, 0 dead letters"),
        "{out}"
    );
    assert!(out.contains("OK"), "{out}");
}

#[tokio::test]
async fn a_damaged_store_is_reported_and_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 30_000).await;
    let file = dir.path().join(roomhook::store::FILE_NAME);
    // Scribble over a stretch in the middle of the data.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64 * 1024] {
        *b = 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();

    let (code, out) = roomhook(&["store", "check", "--data-dir", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0, "damage went unnoticed: {out}");
    assert!(out.contains("salvage"), "{out}");

    let (code, out) = roomhook(&[
        "store",
        "salvage",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("damaged store moved to"), "{out}");
    let kept = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".damaged-"));
    assert!(kept, "the damaged file must be kept aside");

    let (code, out) = roomhook(&["store", "check", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "the salvaged store is not sound: {out}");
    let queued: u64 = out
        .lines()
        .find(|l| l.contains("webhook facilities:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        queued > 0 && queued < 30_000,
        "salvaged {queued} of 30000: {out}"
    );
}

#[tokio::test]
async fn check_refuses_while_the_daemon_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 0,
        queues: vec![("facilities".into(), Overflow::DropOldest)],
    };
    let (store, _) = Store::open(dir.path(), &limits).unwrap();
    let (code, out) = roomhook(&["store", "check", "--data-dir", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("stop it first"), "{out}");
    store.close().await;
}
