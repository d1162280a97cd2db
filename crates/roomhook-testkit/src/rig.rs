//! The test rig: the real `roomhook` binary as a child process, an HTTPS receiver behind a
//! private CA, configs, workloads, and the checks on what a receiver got.

use roomhook::demo::pki::{self, ServerIdentity};
use roomhook::demo::receiver::Receiver;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Config, Section};
use crate::{free_port, wait_until, Mosquitto};

/// Starts a broker; a missing Mosquitto fails the test (never a skip).
pub fn broker() -> Mosquitto {
    Mosquitto::start().unwrap_or_else(|e| panic!("{e}"))
}

/// An HTTPS receiver and the CA file that trusts it.
pub struct TestReceiver {
    /// The receiver.
    pub receiver: Receiver,
    /// PEM file of the CA to trust it by.
    pub ca_file: PathBuf,
    /// `https://127.0.0.1:port/hook`.
    pub url: String,
}

/// The Authorization header every test webhook uses.
pub const TOKEN: &str = "Bearer s3cr3t-token-for-tests";

/// Starts a receiver with a certificate from a fresh private CA (or a self-signed one).
pub async fn receiver(dir: &Path, self_signed: bool) -> TestReceiver {
    let id: ServerIdentity = if self_signed {
        pki::self_signed(&["127.0.0.1"]).expect("cert")
    } else {
        pki::private_ca(&["127.0.0.1"]).expect("cert")
    };
    let receiver = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        id.server_config().expect("tls"),
        Some(TOKEN.into()),
        false,
    )
    .await
    .expect("receiver");
    let ca_file = dir.join(format!("ca-{}.pem", receiver.addr().port()));
    std::fs::write(&ca_file, &id.ca_pem).expect("write ca");
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr().port());
    TestReceiver {
        receiver,
        ca_file,
        url,
    }
}

impl TestReceiver {
    /// Waits up to `within` until at least `n` requests were answered `status`.
    pub async fn wait_status(&self, status: u16, n: usize, within: Duration) -> bool {
        self.receiver
            .wait_for(within, |r| {
                r.iter().filter(|x| x.status == status).count() >= n
            })
            .await
    }

    /// Waits up to `within` until `n` requests were answered 200 (delivered); fails the test
    /// with how many were, and `daemon`'s log, if not.
    pub async fn expect_ok(&self, n: usize, within: Duration, daemon: &Daemon) {
        assert!(
            self.wait_status(200, n, within).await,
            "only {} of {n} delivered within {within:?}; log:\n{}",
            self.receiver.accepted().len(),
            daemon.logs()
        );
    }

    /// Waits up to `within` until `n` messages were accepted (2xx, batches counted message
    /// by message: [`Receiver::wait_accepted`]); fails the test with how many were, and
    /// `daemon`'s log, if not.
    pub async fn expect_accepted(&self, n: usize, within: Duration, daemon: &Daemon) {
        assert!(
            self.receiver.wait_accepted(n, within).await,
            "{} of {n} messages accepted within {within:?}; log:\n{}",
            self.receiver.accepted_messages(),
            daemon.logs()
        );
    }

    /// Waits up to `within` until the requests answered 200 carry `n` messages in all
    /// (batches counted message by message); fails the test with `daemon`'s log if not.
    pub async fn expect_messages(&self, n: usize, within: Duration, daemon: &Daemon) {
        let all = self
            .receiver
            .wait_for(within, |r| {
                r.iter()
                    .filter(|x| x.status == 200)
                    .map(|x| x.messages().len())
                    .sum::<usize>()
                    >= n
            })
            .await;
        assert!(
            all,
            "only {} of {n} messages delivered within {within:?}; log:\n{}",
            self.receiver.accepted_messages(),
            daemon.logs()
        );
    }
}

/// The options of the tests' simulated RoomOS device `serial`: a Cisco Room Kit Pro over
/// wss://, user `roomhook` with [`DEVICE_PASSWORD`](crate::DEVICE_PASSWORD), role Integrator
/// (what [`Section::roomos`] expects).
pub fn device_options(serial: &str) -> roomhook::demo::device::DeviceSimOptions {
    roomhook::demo::device::DeviceSimOptions {
        serial: serial.into(),
        product_id: "Cisco Room Kit Pro".into(),
        username: "roomhook".into(),
        password: crate::DEVICE_PASSWORD.into(),
        role: roomhook::demo::device::Role::Integrator,
        tls: true,
    }
}

/// Starts a simulated RoomOS device with `opts` (e.g. [`device_options`]).
pub async fn device(
    opts: roomhook::demo::device::DeviceSimOptions,
) -> roomhook::demo::device::DeviceSim {
    roomhook::demo::device::DeviceSim::start(opts)
        .await
        .expect("device simulator")
}

/// The `roomhook` binary the tests run: this build's, or `ROOMHOOK_TEST_BINARY` (a cross
/// build) under `ROOMHOOK_TEST_RUNNER` (e.g. `qemu-aarch64`) when those are set.
pub fn roomhook_command() -> Command {
    let binary = std::env::var_os("ROOMHOOK_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(daemon_binary);
    match std::env::var_os("ROOMHOOK_TEST_RUNNER") {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(binary);
            c
        }
        None => Command::new(binary),
    }
}

/// The `roomhook` binary cargo built beside the running test (`target/<profile>/roomhook`;
/// a test runs from `target/<profile>/deps/`). Cargo builds a package's binaries before
/// its integration tests run.
pub fn daemon_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test runs from target/<profile>/deps");
    let bin = profile.join("roomhook");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build`), or set ROOMHOOK_TEST_BINARY",
        bin.display()
    );
    bin
}

/// `GET /v1/status` on the control socket that `config` names (`None` while nothing
/// answers there).
pub fn status_of(config: &Path) -> Option<roomhook::admin::api::StatusReport> {
    let (_, socket) = roomhook::config::locations(config).ok()?;
    crate::block_on_thread(async {
        let call = roomhook::admin::control::call(&socket, hyper::Method::GET, "/v1/status", None);
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok((code, body))) if code.is_success() => serde_json::from_value(body).ok(),
            _ => None,
        }
    })
    .flatten()
}

/// The `roomhook` binary running as a child process.
pub struct Daemon {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `roomhook run -c config`, logging to `<config>.log` (appended).
    pub fn start(config: &Path) -> Daemon {
        Self::start_with_env(config, &[])
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::start_until(config, env, "subscribe", |r| {
            r.sources.iter().all(|s| s.subscribed)
        })
    }

    /// Starts it and waits only until its control API answers (a source that is meant to
    /// fail never subscribes).
    pub fn start_answering(config: &Path) -> Daemon {
        Self::start_until(config, &[], "answer on its control socket", |_| true)
    }

    /// Starts it and waits (20 s at most) until its status, asked through the control
    /// socket, satisfies `ready` (`what` names it in the failure).
    pub fn start_until(
        config: &Path,
        env: &[(&str, &str)],
        what: &str,
        ready: impl Fn(&roomhook::admin::api::StatusReport) -> bool,
    ) -> Daemon {
        let log = config.with_extension("log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = roomhook_command()
            .args(["--log", "info,roomhook=debug", "run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(file)
            .envs(env.iter().copied())
            .spawn()
            .expect("start roomhook");
        let d = Daemon {
            child: Some(child),
            log,
        };
        // Ready: the control API answers and every source has its subscriptions in place
        // (asked through the control socket, as `roomhook status` does; never the log).
        let ok = wait_until(Duration::from_secs(20), || {
            status_of(config).is_some_and(|r| ready(&r))
        });
        assert!(
            ok,
            "roomhook did not {what} within 20 s; status: {:?}; log:\n{}",
            status_of(config).map(|r| r.sources),
            d.logs()
        );
        d
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` until it logged `text` (what a test checks it says; readiness
    /// is never decided from the log); fails the test with the log if not.
    pub fn expect_log(&self, text: &str, within: Duration) {
        assert!(
            wait_until(within, || self.logs().contains(text)),
            "{text:?} not logged within {within:?}; log:\n{}",
            self.logs()
        );
    }

    /// SIGKILL (a crash, a power cut as far as the process is concerned) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = self.child.as_ref() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Waits up to `timeout` for the exit: `Some(status)` when it exited (and is reaped).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("roomhook did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes `{"people": value}` to `bench/<device>/status` with QoS 1 for every pair and
/// waits until the broker acknowledged all of them.
pub async fn publish(port: u16, messages: &[(String, i64)]) {
    crate::publish_all(port, people_messages(messages), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The MQTT messages (topic, payload) the standard subscription reads as these people
/// counts: `{"people": value}` on `bench/<device>/status`.
pub fn people_messages(messages: &[(String, i64)]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|(d, v)| (format!("bench/{d}/status"), format!("{{\"people\":{v}}}")))
        .collect()
}

/// `devices` devices × `per_device` messages, interleaved; values 0.. per device.
pub fn workload(devices: usize, per_device: usize) -> Vec<(String, i64)> {
    let mut out = Vec::with_capacity(devices * per_device);
    for i in 0..per_device {
        for d in 0..devices {
            out.push((format!("room-{d}"), i as i64));
        }
    }
    out
}

/// What a request a receiver got put on the uplink, by the daemon's own estimate
/// (`roomhook_uplink_bytes_total`): its head as it arrived (with the `host` and
/// `content-length` hyper adds) and its body as it came over the wire.
pub fn uplink_bytes(r: &roomhook::demo::receiver::Received) -> u64 {
    use roomhook::deliver::uplink::{head_bytes, request_bytes};
    let headers = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    request_bytes(head_bytes("POST", &r.path, headers), r.wire_len as u64)
}

/// Messages in the accepted requests (batches flattened).
pub fn accepted_messages(rx: &roomhook::demo::receiver::Receiver) -> usize {
    rx.accepted().iter().map(|r| r.messages().len()).sum()
}

/// Checks the accepted requests: every device got exactly `0..per_device` in order, with
/// the right headers and payload shape.
pub fn assert_complete_and_ordered(
    received: &[roomhook::demo::receiver::Received],
    devices: usize,
    per_device: usize,
) {
    let mut per: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
    for r in received {
        assert_eq!(
            r.headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some(TOKEN)
        );
        assert_eq!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        for v in r.messages() {
            assert_eq!(v["type"], "status", "{v}");
            assert_eq!(v["orgId"], "test-org");
            assert_eq!(v["isFullSync"], false);
            let device = v["deviceId"].as_str().expect("deviceId").to_string();
            assert_eq!(v["workspaceId"], format!("ws-{device}"));
            let value = v["changes"]["updated"]["RoomAnalytics.PeopleCount.Current"]
                .as_i64()
                .expect("value");
            per.entry(device).or_default().push(value);
        }
    }
    assert_eq!(per.len(), devices, "devices seen");
    let want: Vec<i64> = (0..per_device as i64).collect();
    for (device, values) in per {
        assert_eq!(
            values, want,
            "values of {device} (lost, duplicated or out of order)"
        );
    }
}

/// Stops `daemon` (a clean exit: code 0), then checks what `rx` accepted: every device
/// got exactly `0..per_device`, in order ([`assert_complete_and_ordered`]).
pub fn stop_and_check(daemon: &mut Daemon, rx: &TestReceiver, devices: usize, per_device: usize) {
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.logs());
    assert_complete_and_ordered(&rx.receiver.accepted(), devices, per_device);
}

/// Runs `roomhook <args>` to completion: (exit code, stdout, stderr).
pub fn run_roomhook(args: &[&str]) -> (i32, String, String) {
    let out = roomhook_command()
        .args(args)
        .output()
        .expect("run roomhook");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// [`run_roomhook`] off the async runtime.
pub async fn run_cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_roomhook(&args)
    })
    .await
    .expect("cli task")
}

/// `roomhook webhook <args> -c <config>`.
pub async fn webhook_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_string_lossy().to_string();
    let mut all = vec!["webhook"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", &config]);
    run_cli(&all).await
}

/// `roomhook webhook add`, argument by argument: the name, the URL and `--statuses`
/// (`RoomAnalytics.*` unless changed), then whatever else is given.
#[derive(Debug, Clone)]
pub struct AddWebhook {
    name: String,
    url: String,
    statuses: String,
    more: Vec<String>,
}

impl AddWebhook {
    /// `--name name --url url`, nothing else.
    pub fn new(name: &str, url: &str) -> AddWebhook {
        AddWebhook {
            name: name.into(),
            url: url.into(),
            statuses: "RoomAnalytics.*".into(),
            more: Vec::new(),
        }
    }

    /// A webhook to `rx`: its URL, `--authorization` [`TOKEN`] and `--ca-file` its CA.
    pub fn to(name: &str, rx: &TestReceiver) -> AddWebhook {
        AddWebhook::new(name, &rx.url)
            .arg("--authorization", TOKEN)
            .arg("--ca-file", &rx.ca_file.to_string_lossy())
    }

    /// `--statuses` (instead of `RoomAnalytics.*`).
    pub fn statuses(mut self, statuses: &str) -> AddWebhook {
        self.statuses = statuses.into();
        self
    }

    /// Another option and its value (`--devices room-1`).
    pub fn arg(mut self, option: &str, value: &str) -> AddWebhook {
        self.more.extend([option.to_string(), value.to_string()]);
        self
    }

    /// A flag (`--no-verify`, `--no-auth`).
    pub fn flag(mut self, flag: &str) -> AddWebhook {
        self.more.push(flag.into());
        self
    }

    /// Runs it against the daemon of `config`: (exit code, stdout, stderr).
    pub async fn run(&self, config: &Path) -> (i32, String, String) {
        let mut args = vec![
            "add",
            "--name",
            &self.name,
            "--url",
            &self.url,
            "--statuses",
            &self.statuses,
        ];
        args.extend(self.more.iter().map(String::as_str));
        webhook_cli(config, &args).await
    }
}

/// The daemon's webhooks as `webhook list --json` prints them.
pub async fn webhook_list(config: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = webhook_cli(config, &["list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("list json");
    v["webhooks"].as_array().cloned().unwrap_or_default()
}

/// The one test rig: a test's directory, a real Mosquitto, an HTTPS receiver behind a
/// private CA, a free admin port, and the config file naming them (one MQTT source
/// `sensors`: [`Section::sensors`]; one webhook `facilities`: [`Section::webhook`]; more
/// webhooks with receivers of their own: [`RigBuilder::hook`]). Built with [`Rig::new`];
/// the daemon is started by the test (`Daemon::start(&rig.config)`) or by
/// [`RigBuilder::start`].
pub struct Rig {
    /// The test's directory (config, store, CA file).
    pub dir: tempfile::TempDir,
    /// The broker.
    pub broker: Mosquitto,
    /// The receiver.
    pub rx: TestReceiver,
    /// The admin listener's port.
    pub admin: u16,
    /// The config file.
    pub config: PathBuf,
    /// The other webhooks' receivers, by webhook name ([`RigBuilder::hook`]).
    pub hooks: Vec<(String, TestReceiver)>,
}

/// A change of the rig's config.
type ConfigEdit = Box<dyn FnOnce(&mut crate::Doc) + Send>;

/// What a [`Rig`] is built with.
#[derive(Default)]
pub struct RigBuilder {
    gateway: Vec<String>,
    webhook: Vec<String>,
    behaviour: Option<roomhook::demo::receiver::Behaviour>,
    console: Option<String>,
    hooks: Vec<(String, String)>,
    source: Option<Box<dyn FnOnce(u16) -> Section + Send>>,
    edits: Vec<ConfigEdit>,
}

impl Rig {
    /// A rig with the standard config; see [`RigBuilder`] for what can be changed.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> RigBuilder {
        RigBuilder::default()
    }

    /// Edits the config file in place (as TOML values).
    pub fn edit_config(&self, f: impl FnOnce(&mut crate::Doc)) {
        let text = std::fs::read_to_string(&self.config).expect("the rig's config");
        std::fs::write(&self.config, crate::edit(&text, f)).expect("the rig's config");
    }

    /// The receiver of webhook `name` (one added with [`RigBuilder::hook`]).
    pub fn hook(&self, name: &str) -> &TestReceiver {
        self.hooks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, rx)| rx)
            .unwrap_or_else(|| panic!("the rig has no webhook {name}"))
    }

    /// The metric `series` from its admin listener: 0 while it is not exposed (a labelled
    /// series appears with its first count), but never for a scrape that failed.
    pub fn metric(&self, series: &str) -> f64 {
        let text = crate::scrape(self.admin);
        assert!(
            text.contains("# TYPE roomhook_build_info "),
            "no metrics from the admin listener:\n{text}"
        );
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl RigBuilder {
    /// Keys for `[gateway]` (TOML, e.g. `commit_interval = "250ms"`).
    pub fn gateway(mut self, snippet: &str) -> Self {
        self.gateway.push(snippet.to_string());
        self
    }

    /// Keys for the webhook `facilities` (TOML, e.g. `max_in_flight = 1`).
    pub fn webhook(mut self, snippet: &str) -> Self {
        self.webhook.push(snippet.to_string());
        self
    }

    /// What the receiver answers from the start.
    pub fn receiver(mut self, b: roomhook::demo::receiver::Behaviour) -> Self {
        self.behaviour = Some(b);
        self
    }

    /// The web console on, opened by `token`.
    pub fn console(mut self, token: &str) -> Self {
        self.console = Some(token.to_string());
        self
    }

    /// Another webhook, `name`, to a receiver of its own (the same defaults as
    /// `facilities`, and the keys of `snippet`); its receiver is [`Rig::hook`]`(name)`.
    pub fn hook(mut self, name: &str, snippet: &str) -> Self {
        self.hooks.push((name.to_string(), snippet.to_string()));
        self
    }

    /// The MQTT source instead of the standard one: `f` makes it for the broker's port.
    pub fn source(mut self, f: impl FnOnce(u16) -> Section + Send + 'static) -> Self {
        self.source = Some(Box::new(f));
        self
    }

    /// A section added to the config (a RoomOS source, a `[[devices]]` entry).
    pub fn with(self, section: Section) -> Self {
        self.config(move |d| {
            d.add(section);
        })
    }

    /// Any other change of the config, by path (see [`crate::config`]).
    pub fn config(mut self, f: impl FnOnce(&mut crate::Doc) + Send + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// The rig, its config written; no daemon yet.
    pub async fn build(self) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = broker();
        let rx = receiver(dir.path(), false).await;
        if let Some(b) = self.behaviour {
            rx.receiver.set_behaviour(b);
        }
        let admin = free_port();
        let source = match self.source {
            Some(f) => f(broker.port),
            None => Section::sensors(broker.port),
        };
        let mut config = Config::new()
            .admin(admin)
            .with(source)
            .with(Section::webhook("facilities", &rx.url, &rx.ca_file));
        let mut hooks = Vec::new();
        for (name, snippet) in &self.hooks {
            let hook = receiver(dir.path(), false).await;
            config = config.with(Section::webhook(name, &hook.url, &hook.ca_file).merge(snippet));
            hooks.push((name.clone(), hook));
        }
        let config = config.edit(|d| {
            for g in &self.gateway {
                d.merge("gateway", g);
            }
            for w in &self.webhook {
                d.merge("webhooks[facilities]", w);
            }
            if let Some(token) = &self.console {
                d.set("admin.console", true)
                    .set("admin.token", token.as_str());
            }
            for f in self.edits {
                f(d);
            }
        });
        let config = config.write(dir.path());
        Rig {
            dir,
            broker,
            rx,
            admin,
            config,
            hooks,
        }
    }

    /// The rig and the daemon started on it (subscribed).
    pub async fn start(self) -> (Rig, Daemon) {
        let rig = self.build().await;
        let daemon = Daemon::start(&rig.config);
        (rig, daemon)
    }
}

/// A stored event: a people count of `device` (as the standard config's source makes them).
pub fn people_event(device: &str, value: i64) -> Vec<u8> {
    roomhook::event::Event {
        device: device.into(),
        workspace: Some(format!("ws-{device}")),
        path: "RoomAnalytics.PeopleCount.Current".into(),
        kind: roomhook::catalog::Kind::Status,
        value: value.into(),
        ts_ms: roomhook::timefmt::now_ms(),
        full_sync: false,
        more: Vec::new(),
    }
    .encode()
}

/// Writes encoded entries straight into the queue of webhook `name` of the store in
/// `data_dir` (the daemon stopped), as a backlog or a damaged entry would be.
pub async fn prefill(data_dir: &Path, name: &str, entries: Vec<Vec<u8>>) {
    use roomhook::store::{Limits, Overflow, Store};
    let limits = Limits {
        max_bytes: 1 << 30,
        queues: vec![(name.into(), Overflow::DropOldest)],
    };
    let (store, ids) = Store::open(data_dir, &limits).expect("store");
    store
        .append(entries.into_iter().map(|e| (ids[0], e)).collect())
        .await
        .expect("append");
    store.close().await;
}

/// Simulates a power cut in the middle of a write-ahead log record of the stopped daemon's
/// store in `data_dir` (a record started after the last whole one, cut short).
pub fn tear_wal(data_dir: &Path) {
    let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let generation = {
        let db = redb::Database::open(data_dir.join(roomhook::store::FILE_NAME)).expect("store");
        let read = redb::ReadableDatabase::begin_read(&db).expect("read");
        let t = read.open_table(meta).expect("meta");
        t.get("wal_gen")
            .expect("get")
            .expect("a log generation")
            .value()
    };
    roomhook::store::wal::tear_tail(data_dir, generation).expect("tear the log");
}

/// The (device, people count) of every message in `requests`, batches flattened, in
/// arrival order; messages without a people count are left out.
pub fn people_counts(requests: &[roomhook::demo::receiver::Received]) -> Vec<(String, i64)> {
    requests
        .iter()
        .flat_map(|r| r.messages())
        .filter_map(|m| {
            let v = m["changes"]["updated"]["RoomAnalytics.PeopleCount.Current"].as_i64()?;
            Some((m["deviceId"].as_str().unwrap_or("").to_string(), v))
        })
        .collect()
}

/// The people counts in `requests` per device, in arrival order.
pub fn per_device(
    requests: &[roomhook::demo::receiver::Received],
) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut per: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (d, v) in people_counts(requests) {
        per.entry(d).or_default().push(v);
    }
    per
}
