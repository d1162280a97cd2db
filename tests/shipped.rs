//! What ships, run as a gateway would run it: `--version`, the README's example config and
//! the package's config through `check-config`, and a short end-to-end run (Mosquitto →
//! roomhook → HTTPS receiver, nothing lost). CI runs this file a second time against the
//! aarch64 build under qemu (`ROOMHOOK_TEST_BINARY`, `ROOMHOOK_TEST_RUNNER`).

use roomhook_testkit::*;
use std::time::Duration;

/// The TOML block that follows `heading` in README.md.
fn readme_toml(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let after = &readme[readme.find(heading).expect("heading in README")..];
    let start = after.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = after[start..].find("```").expect("the end of the block");
    after[start..start + end].to_string()
}

#[test]
fn version() {
    let (code, out, err) = run_roomhook(&["--version"]);
    assert_eq!(code, 0, "{err}");
    // A cross build is a gateway build: another target, the gateway profile, no demo; it
    // may come from another commit than this test (a commit between the two builds), so its
    // commit is only checked for its form. The binary cargo built with this test carries the
    // commit build.rs read for both.
    let (target, profile, features, commit) = match std::env::var("ROOMHOOK_TEST_BINARY") {
        Ok(path) => {
            let name = std::path::Path::new(&path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let prefix = format!("roomhook-{}-", env!("CARGO_PKG_VERSION"));
            let target = name
                .strip_prefix(&prefix)
                .expect("dist/roomhook-VERSION-TARGET")
                .to_string();
            let commit = out
                .split("(commit ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or_default()
                .to_string();
            let hash = commit.strip_suffix("-dirty").unwrap_or(&commit);
            assert!(
                commit == "unknown"
                    || (hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit())),
                "{out}"
            );
            (target, "gateway".to_string(), "none; no demo", commit)
        }
        Err(_) => (
            env!("ROOMHOOK_BUILD_TARGET").to_string(),
            env!("ROOMHOOK_BUILD_PROFILE").to_string(),
            roomhook::version::FEATURES,
            env!("ROOMHOOK_BUILD_COMMIT").to_string(),
        ),
    };
    assert_eq!(
        out.trim(),
        format!(
            "roomhook {} (commit {commit}, target {target}, profile {profile}, features: {features})",
            env!("CARGO_PKG_VERSION"),
        )
    );
}

#[test]
fn the_readme_example_config_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roomhook.toml");
    std::fs::write(&path, readme_toml("### Example")).unwrap();
    // The file it names for the device's password (relative to the config).
    std::fs::write(dir.path().join("boardroom.pass"), "device-password\n").unwrap();
    let (code, out, err) = run_roomhook(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("OK (1 MQTT source(s), 1 RoomOS device(s), 1 webhook(s)"),
        "{out}"
    );
}

/// Every TOML block of a README section.
fn readme_section_tomls(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme.find(heading).expect("heading in README");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```toml\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("end of block")].to_string())
        .collect()
}

#[test]
fn the_readme_sensor_format_examples_check() {
    let blocks = readme_section_tomls("## Sensor formats");
    assert!(blocks.len() >= 5, "{} blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("facilities.token"), "Bearer x\n").unwrap();
    for block in blocks {
        // A subscription needs its source; a webhook its gateway.
        let source = if block.contains("[[sources.mqtt.subscriptions]]") {
            "[[sources.mqtt]]\nname = \"sensors\"\nurl = \"mqtt://127.0.0.1:1883\"\n\n"
        } else {
            ""
        };
        let text = format!("[gateway]\ndata_dir = \"data\"\n\n{source}{block}");
        let path = dir.path().join("roomhook.toml");
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = run_roomhook(&["check-config", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{text}\n{out}{err}");
    }
}

#[test]
fn the_packaged_config_checks() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/roomhook.toml");
    let (code, out, err) = run_roomhook(&["check-config", "-c", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("store in /var/lib/roomhook"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_end_to_end_loses_nothing() {
    let e = Rig::new().build().await;
    let mut daemon = Daemon::start(&e.config);
    let (devices, per_device) = (4, 75);
    publish(e.broker.port, &workload(devices, per_device)).await;
    let all =
        e.rx.receiver
            .wait_accepted(devices * per_device, Duration::from_secs(60))
            .await;
    assert!(
        all,
        "{} of {} delivered\n{}",
        accepted_messages(&e.rx.receiver),
        devices * per_device,
        daemon.logs()
    );
    assert_eq!(daemon.stop(), Some(0));
    assert_complete_and_ordered(&e.rx.receiver.accepted(), devices, per_device);
}
