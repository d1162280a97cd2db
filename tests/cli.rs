//! The command line as a user meets it: `check-config`, `demo`, `man`, `completions`
//! (`--version`: tests/shipped.rs).

use roomhook_testkit::run_roomhook as roomhook;

/// `roomhook check-config` of `text` as the file `name`.
fn check_config(name: &str, text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    roomhook(&["check-config", "-c", path.to_str().unwrap()])
}

#[test]
fn check_config_reports_every_problem_with_key_line_and_fix() {
    let (code, _, err) = check_config(
        "bad.toml",
        r#"[gateway]
data_dir = "data"

[[webhooks]]
name = "facilities"
url = "http://hooks.example.com/rooms"
authorization = "Bearer top-secret-value"
statuses = ["RoomAnalytics.PeopleCount.Curent"]
"#,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:6: webhooks[0].url"), "{err}");
    assert!(err.contains("bad.toml:8: webhooks[0].statuses[0]"), "{err}");
    assert!(err.contains("fix: use an https:// URL"), "{err}");
    assert!(
        err.contains("did you mean \"RoomAnalytics.PeopleCount.Current\""),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(!err.contains("top-secret-value"), "secret printed: {err}");
}

#[test]
fn check_config_names_a_bad_compression_with_its_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = roomhook_testkit::Section::webhook("bi", "https://bi.example.com/", dir.path())
        .remove("ca_file")
        .set("compression", "gzpi");
    let path = roomhook_testkit::Config::new()
        .with(webhook)
        .write(dir.path());
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("compression = "))
        .expect("the key in the file")
        + 1;
    let (code, _, err) = roomhook(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let at = format!("{}:{line}: webhooks[0].compression", path.display());
    assert!(err.contains(&at), "not at {at}: {err}");
    assert!(err.contains("unknown compression \"gzpi\""), "{err}");
    assert!(err.contains("fix: did you mean \"gzip\"?"), "{err}");
}

#[test]
fn check_config_accepts_a_good_file_and_a_missing_file_is_an_error() {
    let (code, out, err) = check_config(
        "good.toml",
        "[gateway]\ndata_dir = \"data\"\n[[webhooks]]\nname = \"a\"\nurl = \"https://x.example/\"\nauth = \"none\"\nstatuses = [\"RoomAnalytics.*\"]\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("OK (0 MQTT source(s), 0 RoomOS device(s), 1 webhook(s)"),
        "{out}"
    );
    let (code, _, err) = roomhook(&["check-config", "-c", "/nonexistent/roomhook.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the config file"), "{err}");
    let (code, _, err) = roomhook(&["run", "-c", "/nonexistent/roomhook.toml"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_demo_delivers_webhooks_and_stops_by_itself() {
    let (code, out, err) = roomhook(&["demo", "--duration", "3s", "--interval", "100ms"]);
    assert_eq!(code, 0, "{err}");
    let delivered = out
        .lines()
        .filter(|l| l.starts_with("receiver <- POST /webhook [200]"))
        .count();
    assert!(delivered >= 5, "only {delivered} deliveries:\n{out}\n{err}");
    assert!(out.contains("\"orgId\":\"demo-org\""), "{out}");
    assert!(out.contains("still queued"), "{out}");
}

/// `roomhook man DIR`: a page per verb and roomhook.toml(5) with every section of the
/// README's configuration reference; each renders without a warning where `man` exists.
#[test]
fn man_writes_a_page_per_verb_and_the_config_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = roomhook(&["man", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in [
        "roomhook.1",
        "roomhook-run.1",
        "roomhook-check-config.1",
        "roomhook-webhook-add.1",
        "roomhook-webhook-replay.1",
        "roomhook-store-salvage.1",
        "roomhook-fleet-sign.1",
        "roomhook-completions.1",
        "roomhook.toml.5",
    ] {
        assert!(dir.path().join(page).is_file(), "no {page}: {out}");
        assert!(out.contains(page), "{page} not listed: {out}");
    }
    let add = std::fs::read_to_string(dir.path().join("roomhook-webhook-add.1")).unwrap();
    assert!(add.contains("authorization\\-file"), "{add}");
    // roomhook.toml(5) holds every section and key of the README's reference tables.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let page = std::fs::read_to_string(dir.path().join("roomhook.toml.5")).unwrap();
    let start = readme
        .find("### Reference")
        .expect("the README's ### Reference");
    let reference = &readme[start..];
    let end = reference
        .find("### Catalog")
        .expect("the README's ### Catalog after it");
    let reference = &reference[..end];
    let mut keys = 0;
    for line in reference.lines() {
        let heading = line.strip_prefix("`[").and_then(|r| r.split('`').next());
        if let Some(h) = heading {
            assert!(page.contains(&format!(".SH [{h}")), "section [{h} missing");
        }
        if let Some(key) = line.strip_prefix("| `").and_then(|r| r.split('`').next()) {
            let roff = key.replace('-', "\\-");
            assert!(
                page.contains(&roff),
                "key {key} missing from roomhook.toml.5"
            );
            keys += 1;
        }
    }
    assert!(keys > 50, "only {keys} keys read from the README");
    assert!(page.is_ascii(), "roff beyond ASCII");
    if std::process::Command::new("man")
        .arg("--version")
        .output()
        .is_ok()
    {
        for page in ["roomhook.toml.5", "roomhook-webhook-add.1"] {
            let o = std::process::Command::new("man")
                .args(["--warnings", "-l"])
                .arg(dir.path().join(page))
                .env("MANWIDTH", "80")
                .env("LC_ALL", "C.UTF-8")
                .output()
                .unwrap();
            let warnings = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.success() && warnings.is_empty(),
                "{page}: {warnings}"
            );
            assert!(String::from_utf8_lossy(&o.stdout).contains("roomhook"));
        }
    }
}

/// `roomhook completions SHELL` prints a script the shell loads.
#[test]
fn completions_load_in_bash_and_name_the_verbs() {
    let (code, bash, err) = roomhook(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert!(bash.contains("complete -F _roomhook"), "{bash}");
    for verb in ["check-config", "webhook", "dead-letters", "completions"] {
        assert!(bash.contains(verb), "{verb} not completed");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("roomhook.bash");
    std::fs::write(&script, &bash).unwrap();
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p roomhook",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("_roomhook"));
    for shell in ["zsh", "fish"] {
        let (code, script, err) = roomhook(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(script.contains("webhook"), "{shell}: {script}");
    }
    let (code, _, err) = roomhook(&["completions", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
}
