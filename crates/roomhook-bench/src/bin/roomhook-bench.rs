//! `roomhook-bench`: drives the real `roomhook` binary from outside — a Mosquitto broker, an
//! HTTPS receiver behind a private CA, a publisher — and prints a table plus one JSON line
//! per scenario. Build first: `cargo build --release -p roomhook -p roomhook-bench && target/release/roomhook-bench`.

use clap::Parser;
use roomhook::demo::receiver::Receiver;
use roomhook_testkit::{
    cpu_seconds, publish_all, status_kib, wait_until, Config, Mosquitto, Section, TestReceiver,
};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmarks the roomhook daemon binary end to end")]
struct Args {
    /// Scenarios to run (comma-separated): throughput, batched, compression, latency, idle,
    /// drain, store, roomos, wear, fleet (not among the defaults: it takes minutes).
    #[arg(
        long,
        default_value = "throughput,batched,compression,latency,idle,drain,store,roomos,wear"
    )]
    scenarios: String,
    /// Events in the store scenario.
    #[arg(long, default_value_t = 100_000)]
    store_events: usize,
    /// Messages in the throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Devices in the throughput scenario.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Messages in each run of the compression scenario (batches of 100).
    #[arg(long, default_value_t = 10_000)]
    compression_messages: usize,
    /// Events per second in the latency scenario.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the latency scenario.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Messages in the backlog-drain scenario.
    #[arg(long, default_value_t = 100_000)]
    drain_messages: usize,
    /// rate_limit (requests/s) of the backlog-drain scenario.
    #[arg(long, default_value_t = 2000)]
    drain_rate: u64,
    /// max_in_flight of the benchmark webhook.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Steady rates (events/s) of the wear scenario.
    #[arg(long, default_value = "1,20,200")]
    wear_rates: String,
    /// Seconds per rate in the wear scenario.
    #[arg(long, default_value_t = 20)]
    wear_seconds: u64,
    /// `[gateway] commit_interval` values the wear scenario compares.
    #[arg(long, default_value = "0s,250ms")]
    wear_commit_intervals: String,
    /// Simulated RoomOS devices in the roomos scenario.
    #[arg(long, default_value_t = 50)]
    roomos_devices: usize,
    /// The daemon binary (default: `roomhook` next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Extra `[gateway]` lines of the daemon's config, e.g. "threads = 2".
    #[arg(long, default_value = "")]
    gateway: String,
    /// Fleet: gateways (roomhook processes, each with its own data directory and devices).
    #[arg(long, default_value_t = 50)]
    gateways: usize,
    /// Fleet: requests per second the receiver takes; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = 300)]
    cap: u32,
    /// Fleet: seconds the receiver is down (503) while the backlog builds up.
    #[arg(long, default_value_t = 120)]
    down: u64,
    /// Fleet: `Retry-After` (seconds) of the receiver's 429s.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Fleet: devices per gateway.
    #[arg(long, default_value_t = 5)]
    fleet_devices: usize,
    /// Fleet: events per second per gateway published during the outage (its backlog).
    #[arg(long, default_value_t = 3.0)]
    fleet_rate: f64,
    /// Fleet: also print the receiver's accepted and refused requests of every second.
    #[arg(long)]
    series: bool,
    /// Fleet: run it first with this daemon binary too ("before"), then with `--binary`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Fleet: extra keys of every gateway's webhook (TOML lines, e.g. "rate_limit = 10").
    #[arg(long, default_value = "")]
    fleet_webhook: String,
}

/// What every scenario runs against: the test rig's Mosquitto and HTTPS receiver (behind a
/// private CA made for the run), and the daemon's configs built as values by the rig.
struct Setup {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    receiver: Receiver,
    ca_file: PathBuf,
    url: String,
    /// `--gateway`: extra `[gateway]` lines of every config written for this setup.
    gateway: String,
}

async fn setup(args: &Args) -> Result<Setup, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let broker = Mosquitto::start().map_err(|e| e.to_string())?;
    let TestReceiver {
        receiver,
        ca_file,
        url,
    } = roomhook_testkit::receiver(dir.path(), false).await;
    Ok(Setup {
        dir,
        broker,
        receiver,
        ca_file,
        url,
        gateway: args.gateway.clone(),
    })
}

/// The daemon's config: `sources` MQTT sources on the bench topics (people count, no
/// workspace), `webhooks` webhooks to the receiver with `max_in_flight` and the `extra`
/// keys, and the run's `--gateway` keys; retries at the daemon's defaults.
fn config(
    s: &Setup,
    webhooks: usize,
    sources: usize,
    max_in_flight: usize,
    extra: &str,
) -> PathBuf {
    let mut config = Config::new()
        .gateway("org_id = \"bench\"")
        .gateway(&s.gateway);
    for i in 0..sources {
        config = config.with(
            Section::mqtt(&format!("s{i}"), s.broker.port)
                .set("client_id", format!("roomhook-bench-{i}"))
                .subscribe(Section::people().remove("workspace").remove("format")),
        );
    }
    for i in 0..webhooks {
        config = config.with(
            Section::webhook(&format!("w{i}"), &s.url, &s.ca_file)
                .remove("devices")
                .remove("retry_base")
                .remove("retry_max")
                .set("max_in_flight", max_in_flight as i64)
                .merge(extra),
        );
    }
    config.write(s.dir.path())
}

struct Daemon(Child);

impl Daemon {
    fn start(binary: &Path, config: &Path) -> Result<Daemon, String> {
        let log = std::fs::File::create(config.with_extension("log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(["--log", "warn,roomhook::store=info", "run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Daemon(child))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Waits until the daemon's MQTT session is subscribed: a probe message is delivered.
async fn wait_ready(s: &Setup, devices_before: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        publish_all(
            s.broker.port,
            vec![("bench/probe/status".into(), format!("{{\"people\":{n}}}"))],
            None,
        )
        .await?;
        let ok = s
            .receiver
            .wait_for(Duration::from_millis(500), |r| r.len() > devices_before)
            .await;
        if ok {
            return Ok(());
        }
    }
    Err("the daemon did not deliver a probe within 20 s".into())
}

/// (device, people count) of every message in a request (one, or a batch).
fn people(r: &roomhook::demo::receiver::Received) -> Vec<(String, i64)> {
    r.messages()
        .iter()
        .filter_map(|v| {
            let device = v["deviceId"].as_str()?.to_string();
            let value = v["changes"]["updated"]["RoomAnalytics.PeopleCount.Current"].as_i64()?;
            Some((device, value))
        })
        .collect()
}

fn workload(devices: usize, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("bench/dev-{}/status", i % devices),
                format!("{{\"people\":{}}}", i / devices),
            )
        })
        .collect()
}

async fn throughput(args: &Args, binary: &Path, batch: usize) -> Result<serde_json::Value, String> {
    let s = setup(args).await?;
    let extra = format!("batch_max_messages = {batch}\nbatch_linger = \"5ms\"");
    let daemon = Daemon::start(binary, &config(&s, 1, 1, args.max_in_flight, &extra))?;
    wait_ready(&s, 0).await?;
    let base = s.receiver.requests().len();
    let base_msgs = s.receiver.accepted_messages();
    let cpu0 = cpu_seconds(daemon.pid()).unwrap_or(0.0);
    let n = args.messages;
    let t0 = Instant::now();
    publish_all(s.broker.port, workload(args.devices, n), None).await?;
    let published = t0.elapsed();
    let done = s
        .receiver
        .wait_accepted(base_msgs + n, Duration::from_secs(300))
        .await;
    let elapsed = s
        .receiver
        .requests()
        .last()
        .map(|r| r.at.duration_since(t0))
        .unwrap_or_default();
    let cpu = cpu_seconds(daemon.pid()).unwrap_or(0.0) - cpu0;
    let peak_kib = status_kib(daemon.pid(), "VmHWM").unwrap_or(0);
    daemon.stop();
    let reqs = s.receiver.requests();
    let mut seen = HashSet::new();
    let mut dups = 0;
    for r in &reqs[base..] {
        for k in people(r) {
            if !seen.insert(k) {
                dups += 1;
            }
        }
    }
    let lost = n.saturating_sub(seen.len());
    if !done {
        eprintln!(
            "throughput: only {} of {n} arrived within 300 s",
            seen.len()
        );
    }
    let requests = reqs.len() - base;
    let name = if batch > 1 {
        "throughput_batched"
    } else {
        "throughput_control_hub_mode"
    };
    Ok(serde_json::json!({
        "scenario": name, "batch_max_messages": batch, "requests": requests,
        "requests_per_second": requests as f64 / elapsed.as_secs_f64().max(1e-9),
        "messages": n, "devices": args.devices, "max_in_flight": args.max_in_flight,
        "publish_seconds": published.as_secs_f64(),
        "seconds_to_last_delivery": elapsed.as_secs_f64(),
        "events_per_second": n as f64 / elapsed.as_secs_f64().max(1e-9),
        "daemon_cpu_seconds": cpu,
        "daemon_cpu_us_per_event": cpu * 1e6 / n as f64,
        "daemon_peak_rss_mib": peak_kib as f64 / 1024.0,
        "lost": lost, "duplicates": dups,
    }))
}

/// Bytes on the wire of 100-message batches of Control Hub status messages, with
/// `compression = "none"` and with `"gzip"`: the request bodies as they came over the wire
/// (the compressed length) against their decoded length, and the daemon's CPU per event
/// each way. Only full batches (100 messages) are counted.
async fn compression(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    let n = args.compression_messages;
    let mut runs = serde_json::Map::new();
    for mode in ["none", "gzip"] {
        let s = setup(args).await?;
        let extra =
            format!("batch_max_messages = 100\nbatch_linger = \"50ms\"\ncompression = \"{mode}\"");
        let daemon = Daemon::start(binary, &config(&s, 1, 1, args.max_in_flight, &extra))?;
        wait_ready(&s, 0).await?;
        let base = s.receiver.requests().len();
        let base_msgs = s.receiver.accepted_messages();
        let cpu0 = cpu_seconds(daemon.pid()).unwrap_or(0.0);
        publish_all(s.broker.port, workload(args.devices, n), None).await?;
        let done = s
            .receiver
            .wait_accepted(base_msgs + n, Duration::from_secs(300))
            .await;
        let cpu = cpu_seconds(daemon.pid()).unwrap_or(0.0) - cpu0;
        daemon.stop();
        if !done {
            return Err(format!(
                "compression {mode}: not every message arrived within 300 s"
            ));
        }
        let requests = s.receiver.requests();
        let full: Vec<_> = requests[base..]
            .iter()
            .filter(|r| r.status == 200 && r.messages().len() == 100)
            .collect();
        if full.is_empty() {
            return Err(format!("compression {mode}: no batch of 100 messages"));
        }
        let wire: usize = full.iter().map(|r| r.wire_len).sum();
        let decoded: usize = full.iter().map(|r| r.body.len()).sum();
        let batches = full.len() as f64;
        runs.insert(
            mode.to_string(),
            serde_json::json!({
                "batches_of_100": full.len(),
                "compressed_batches": full.iter().filter(|r| r.compressed).count(),
                "decoded_bytes_per_batch": decoded as f64 / batches,
                "wire_bytes_per_batch": wire as f64 / batches,
                "daemon_cpu_us_per_event": cpu * 1e6 / n as f64,
            }),
        );
    }
    let per_batch = |mode: &str, k: &str| runs[mode][k].as_f64().unwrap_or(f64::NAN);
    Ok(serde_json::json!({
        "scenario": "compression", "messages": n, "devices": args.devices,
        "wire_bytes_per_batch_none": per_batch("none", "wire_bytes_per_batch"),
        "wire_bytes_per_batch_gzip": per_batch("gzip", "wire_bytes_per_batch"),
        "gzip_ratio": per_batch("gzip", "decoded_bytes_per_batch") / per_batch("gzip", "wire_bytes_per_batch"),
        "cpu_us_per_event_none": per_batch("none", "daemon_cpu_us_per_event"),
        "cpu_us_per_event_gzip": per_batch("gzip", "daemon_cpu_us_per_event"),
        "runs": runs,
    }))
}

async fn latency(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    let s = setup(args).await?;
    let daemon = Daemon::start(binary, &config(&s, 1, 1, args.max_in_flight, ""))?;
    wait_ready(&s, 0).await?;
    let base = s.receiver.requests().len();
    let base_msgs = s.receiver.accepted_messages();
    let n = (args.rate * args.seconds) as usize;
    let devices = 10;
    let sent = publish_all(
        s.broker.port,
        workload(devices, n),
        Some(Duration::from_secs_f64(1.0 / args.rate as f64)),
    )
    .await?;
    s.receiver
        .wait_accepted(base_msgs + n, Duration::from_secs(60))
        .await;
    let peak_kib = status_kib(daemon.pid(), "VmHWM").unwrap_or(0);
    daemon.stop();
    let mut lat: Vec<f64> = Vec::new();
    for r in &s.receiver.requests()[base..] {
        for (dev, v) in people(r) {
            let d: usize = dev.trim_start_matches("dev-").parse().unwrap_or(0);
            let i = v as usize * devices + d;
            if let Some(t) = sent.get(i) {
                lat.push(r.at.duration_since(*t).as_secs_f64() * 1000.0);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(serde_json::json!({
        "scenario": "latency", "rate_per_second": args.rate, "seconds": args.seconds,
        "delivered": lat.len(), "expected": n,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat.last().copied().unwrap_or(f64::NAN),
        "daemon_peak_rss_mib": peak_kib as f64 / 1024.0,
    }))
}

async fn drain(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    let s = setup(args).await?;
    s.receiver
        .set_behaviour(roomhook::demo::receiver::Behaviour::Status(503));
    let rate = args.drain_rate;
    let extra = format!(
        "rate_limit = {rate}\nburst = {}\nretry_max = \"1s\"",
        (rate / 10).max(1)
    );
    let daemon = Daemon::start(binary, &config(&s, 1, 1, args.max_in_flight, &extra))?;
    // Wait for the subscription (the probe is refused, so watch for its request).
    let ready = s
        .receiver
        .wait_for(Duration::from_secs(20), |r| !r.is_empty());
    let port = s.broker.port;
    let probe = tokio::spawn(async move {
        for n in 0..200 {
            let _ = publish_all(
                port,
                vec![("bench/probe/status".into(), format!("{{\"people\":{n}}}"))],
                None,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let ok = ready.await;
    probe.abort();
    if !ok {
        return Err("the daemon never tried the receiver".into());
    }
    let n = args.drain_messages;
    publish_all(s.broker.port, workload(args.devices.max(50), n), None).await?;
    // Restart with the backlog: time to ready (the first request at the receiver) and
    // memory at that point. Every message the broker acked reaches the store eventually.
    let config_path = s.dir.path().join("roomhook.toml");
    let admin_port = roomhook_testkit::free_port();
    let text = std::fs::read_to_string(&config_path).map_err(|e| e.to_string())?;
    let text = roomhook_testkit::edit(&text, |d| {
        d.set("admin.listen", format!("127.0.0.1:{admin_port}"));
    });
    std::fs::write(&config_path, text).map_err(|e| e.to_string())?;
    // Let the daemon take in the whole backlog before the restart.
    let pid = daemon.pid();
    wait_until(Duration::from_secs(600), || {
        let c0 = cpu_seconds(pid).unwrap_or(0.0);
        std::thread::sleep(Duration::from_millis(500));
        cpu_seconds(pid).unwrap_or(0.0) - c0 < 0.02
    });
    daemon.stop();
    let before = s.receiver.requests().len();
    let t_start = Instant::now();
    let daemon = Daemon::start(binary, &config_path)?;
    let ready = s
        .receiver
        .wait_for(Duration::from_secs(120), |r| r.len() > before)
        .await;
    let ready_seconds = t_start.elapsed().as_secs_f64();
    if !ready {
        return Err("the daemon did not resume delivery within 120 s".into());
    }
    let queued = roomhook_testkit::metric(admin_port, "roomhook_queue_events{webhook=\"w0\"}")
        .unwrap_or(0.0);
    let rss_ready_mib = status_kib(daemon.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
    // The receiver comes back.
    s.receiver
        .set_behaviour(roomhook::demo::receiver::Behaviour::Accept);
    let t0 = Instant::now();
    let all = s.receiver.wait_accepted(n, Duration::from_secs(3600)).await;
    let reqs: Vec<_> = s
        .receiver
        .requests()
        .into_iter()
        .filter(|r| r.status == 200 && r.at >= t0)
        .collect();
    let peak_kib = status_kib(daemon.pid(), "VmHWM").unwrap_or(0);
    daemon.stop();
    if !all {
        eprintln!("drain: not complete within an hour");
    }
    // Disk: the file after the drained backlog, and after the next start (which compacts).
    let store_file = s.dir.path().join("data").join(roomhook::store::FILE_NAME);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(0.0)
    };
    let drained_mib = size(&store_file);
    let again = Daemon::start(binary, &config_path)?;
    let log = config_path.with_extension("log");
    wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("compacted"))
            || size(&store_file) < drained_mib
    });
    again.stop();
    let restarted_mib = size(&store_file);
    let span = reqs
        .last()
        .map(|r| r.at.duration_since(reqs[0].at))
        .unwrap_or_default();
    let observed = reqs.len().saturating_sub(1) as f64 / span.as_secs_f64().max(1e-9);
    let times: Vec<Instant> = reqs.iter().map(|r| r.at).collect();
    let max_1s = roomhook_testkit::busiest_second(&times, None);
    Ok(serde_json::json!({
        "scenario": "backlog_drain", "messages": n, "rate_limit": rate, "burst": (rate / 10).max(1),
        "observed_rate": observed, "observed_vs_limit": observed / rate as f64,
        "max_requests_in_any_second": max_1s, "drain_seconds": span.as_secs_f64(),
        "daemon_peak_rss_mib": peak_kib as f64 / 1024.0,
        "store_file_after_drain_mib": drained_mib, "store_file_after_restart_mib": restarted_mib,
        "queued_at_restart": queued, "ready_seconds_with_backlog": ready_seconds, "rss_at_ready_mib": rss_ready_mib,
    }))
}

async fn idle(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    let s = setup(args).await?;
    let daemon = Daemon::start(binary, &config(&s, 3, 2, 8, ""))?;
    let ok = wait_until(Duration::from_secs(15), || {
        status_kib(daemon.pid(), "VmRSS").is_some()
    });
    if !ok {
        return Err("daemon did not start".into());
    }
    std::thread::sleep(Duration::from_secs(10));
    let rss = status_kib(daemon.pid(), "VmRSS").unwrap_or(0);
    let cpu = cpu_seconds(daemon.pid()).unwrap_or(0.0);
    daemon.stop();
    Ok(serde_json::json!({
        "scenario": "idle", "webhooks": 3, "sources": 2,
        "rss_after_10s_mib": rss as f64 / 1024.0, "cpu_seconds_first_10s": cpu,
    }))
}

/// CPU time of a process in nanoseconds, threads that already ended included
/// (`/proc/PID/stat`: clock-tick resolution, so the wear windows are long).
fn cpu_ns(pid: u32) -> u64 {
    (cpu_seconds(pid).unwrap_or(0.0) * 1e9) as u64
}

/// Bytes a process caused to be written to storage (`/proc/PID/io` `write_bytes`).
fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a gateway writes to its SD card: at steady low rates (one MQTT message = one event,
/// one webhook), bytes written to storage, daemon CPU and durable commits per event, for
/// each `commit_interval`; and what an idle daemon writes.
async fn wear(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    let s = setup(args).await?;
    let admin = roomhook_testkit::free_port();
    let rates: Vec<u64> = args
        .wear_rates
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .filter(|r| *r > 0)
        .collect();
    let mut rows = Vec::new();
    for interval in args.wear_commit_intervals.split(',').map(str::trim) {
        let path = config(&s, 1, 1, 8, "");
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let text = text.replacen(
            "org_id = \"bench\"\n",
            &format!(
                "org_id = \"bench\"\ncommit_interval = \"{interval}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
            ),
            1,
        );
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let daemon = Daemon::start(binary, &path)?;
        wait_ready(&s, s.receiver.requests().len()).await?;
        let commits = || {
            roomhook_testkit::metric(admin, "roomhook_store_commit_duration_seconds_count")
                .unwrap_or(0.0)
        };
        // Idle first: once the start-up writes settled (and the redelivery marks of the
        // probe were committed, 5 s after its ack), nothing should be written.
        std::thread::sleep(Duration::from_secs(7));
        let (w0, c0) = (write_bytes(daemon.pid()), cpu_ns(daemon.pid()));
        std::thread::sleep(Duration::from_secs(5));
        let idle_bytes = write_bytes(daemon.pid()).saturating_sub(w0);
        let idle_cpu_ms = cpu_ns(daemon.pid()).saturating_sub(c0) as f64 / 1e6;
        for &rate in &rates {
            let n = (rate * args.wear_seconds).max(1) as usize;
            let base = s.receiver.accepted_messages();
            let (w0, c0, k0) = (write_bytes(daemon.pid()), cpu_ns(daemon.pid()), commits());
            publish_all(
                s.broker.port,
                workload(10, n),
                Some(Duration::from_secs_f64(1.0 / rate as f64)),
            )
            .await?;
            s.receiver
                .wait_accepted(base + n, Duration::from_secs(60))
                .await;
            // The removals of the last deliveries are committed too.
            std::thread::sleep(Duration::from_millis(500));
            let bytes = write_bytes(daemon.pid()).saturating_sub(w0);
            let cpu_us = cpu_ns(daemon.pid()).saturating_sub(c0) as f64 / 1e3;
            let k = commits() - k0;
            let per_event = bytes as f64 / n as f64;
            rows.push(serde_json::json!({
                "commit_interval": interval, "rate_per_second": rate, "events": n,
                "delivered": s.receiver.accepted_messages() - base,
                "written_kib_per_event": per_event / 1024.0,
                "written_gb_per_day": per_event * rate as f64 * 86_400.0 / 1e9,
                "daemon_cpu_us_per_event": cpu_us / n as f64,
                "durable_commits_per_event": k / n as f64,
            }));
        }
        daemon.stop();
        rows.push(serde_json::json!({
            "commit_interval": interval, "idle_written_bytes_in_5s": idle_bytes,
            "idle_cpu_ms_in_5s": idle_cpu_ms,
        }));
    }
    Ok(serde_json::json!({ "scenario": "wear", "runs": rows }))
}

/// Idle RSS with `n` RoomOS devices connected against none, and how their reconnects spread
/// after every connection drops at once (a shared network outage).
async fn roomos(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    use roomhook::demo::device::{DeviceSim, DeviceSimOptions};
    let s = setup(args).await?;
    let n = args.roomos_devices;
    let mut devices = Vec::new();
    for i in 0..n {
        devices.push(
            DeviceSim::start(DeviceSimOptions {
                serial: format!("FOC{i:08}"),
                ..DeviceSimOptions::default()
            })
            .await
            .map_err(|e| e.to_string())?,
        );
    }
    let webhook = Section::webhook("w", &s.url, &s.ca_file)
        .remove("devices")
        .remove("retry_base")
        .remove("retry_max")
        .set(
            "statuses",
            roomhook_testkit::list(["RoomAnalytics.*", "Peripherals.*"]),
        )
        .set(
            "events",
            roomhook_testkit::list(["UserInterface.Extensions.Widget.Action"]),
        );
    // Both runs also deliver MQTT traffic, so that what the delivery path costs once (the
    // receiver's connection, code paged in) is not charged to the devices.
    let base = Config::new().gateway("org_id = \"bench\"").with(
        Section::mqtt("mqtt", s.broker.port)
            .remove("client_id")
            .subscribe(Section::people().remove("workspace").remove("format")),
    );
    let mut with_devices = base.clone();
    for (i, d) in devices.iter().enumerate() {
        with_devices = with_devices.with(
            Section::roomos(&format!("room-{i}"), d)
                .remove("workspace")
                .remove("keep_alive")
                .set("username", "admin")
                .set("password", "secret"),
        );
    }
    let path = s.dir.path().join("roomhook.toml");
    let settle = Duration::from_secs(10);
    let mut rss = Vec::new();
    for config in [base.with(webhook.clone()), with_devices.with(webhook)] {
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        let daemon = Daemon::start(binary, &path)?;
        wait_ready(&s, s.receiver.requests().len()).await?;
        let before = s.receiver.accepted_messages();
        let msgs = (0..n)
            .map(|i| {
                (
                    format!("bench/mqtt-{i}/status"),
                    format!("{{\"people\":{i}}}"),
                )
            })
            .collect();
        publish_all(s.broker.port, msgs, None).await?;
        let syncs_before = before;
        let devices_on = rss.len() == 1;
        if !devices_on {
            wait_until(Duration::from_secs(30), || {
                s.receiver.accepted_messages() >= syncs_before + n
            });
        }
        if devices_on {
            let all = wait_until(Duration::from_secs(60), || {
                devices.iter().all(|d| d.connections() == 1)
                    && s.receiver.accepted_messages() >= syncs_before + 2 * n
            });
            if !all {
                daemon.stop();
                return Err("not every device connected and synced within 60 s".into());
            }
        }
        std::thread::sleep(settle);
        let kib = status_kib(daemon.pid(), "VmRSS").unwrap_or(0);
        let anon = status_kib(daemon.pid(), "RssAnon").unwrap_or(0);
        let cpu0 = cpu_seconds(daemon.pid()).unwrap_or(0.0);
        std::thread::sleep(settle);
        let idle_cpu = cpu_seconds(daemon.pid()).unwrap_or(0.0) - cpu0;
        let mut spread = serde_json::Value::Null;
        if devices_on {
            for d in &devices {
                d.drop_connections();
            }
            let dropped = Instant::now();
            let back = wait_until(Duration::from_secs(60), || {
                devices.iter().all(|d| d.connects() >= 2)
            });
            if back {
                let mut t: Vec<f64> = devices
                    .iter()
                    .filter_map(|d| d.connect_times().get(1).copied())
                    .map(|t| t.saturating_duration_since(dropped).as_secs_f64())
                    .collect();
                t.sort_by(f64::total_cmp);
                spread = serde_json::json!({
                    "first_s": t.first(), "median_s": t.get(t.len() / 2), "last_s": t.last(),
                    "most_in_any_100ms": (0..t.len())
                        .map(|i| t[i..].iter().take_while(|x| **x - t[i] < 0.1).count())
                        .max()
                        .unwrap_or(0),
                });
            }
        }
        daemon.stop();
        rss.push((kib, idle_cpu, spread, anon));
    }
    for d in &devices {
        d.stop();
    }
    let (none, with) = (rss[0].0 as f64 / 1024.0, rss[1].0 as f64 / 1024.0);
    Ok(serde_json::json!({
        "scenario": "roomos", "devices": n,
        "idle_rss_no_devices_mib": none, "idle_rss_with_devices_mib": with,
        "idle_rss_added_mib": with - none,
        "idle_anon_added_mib": (rss[1].3 as f64 - rss[0].3 as f64) / 1024.0, "idle_rss_per_device_kib": (with - none) * 1024.0 / n.max(1) as f64,
        "idle_cpu_seconds_per_10s_with_devices": rss[1].1,
        "reconnect_after_shared_drop": rss[1].2,
    }))
}

fn print_table(results: &[serde_json::Value]) {
    println!("\n{:<30} figures", "scenario");
    for r in results {
        let mut figures = BTreeMap::new();
        if let Some(o) = r.as_object() {
            for (k, v) in o {
                if k != "scenario" {
                    let shown = match v.as_f64() {
                        Some(f) if v.is_f64() => format!("{f:.2}"),
                        _ => v.to_string(),
                    };
                    figures.insert(k.clone(), shown);
                }
            }
        }
        let line: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<30} {}",
            r["scenario"].as_str().unwrap_or("?"),
            line.join(" ")
        );
    }
}

/// `fleet` with `--baseline` first (its result goes into `results` as `fleet_before`),
/// then with the daemon under test.
async fn fleet_compare(
    args: &Args,
    binary: &Path,
    results: &mut Vec<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    if let Some(before) = &args.baseline {
        let mut r = fleet(args, before).await?;
        r["scenario"] = "fleet_before".into();
        println!("{r}");
        results.push(r);
    }
    fleet(args, binary).await
}

/// A fleet that fills a receiver without flooding it: `--gateways` roomhook processes, each
/// with its own data directory, MQTT client and devices (`fleet/g<i>/g<i>-d<k>/status` on
/// one Mosquitto), deliver to one receiver. It is down (answering 503, no Retry-After) for
/// `--down` seconds while every gateway's backlog builds up (`--fleet-rate` events/s per
/// gateway), then takes `--cap` requests per second and answers 429 with `Retry-After`
/// beyond. The webhooks are at the daemon's defaults (no rate_limit). Measured at the
/// receiver: lost, duplicates, the share of the capacity used while backlogged, the share of requests refused, the busiest second of the first 30 s after the
/// recovery, the drain time. "While backlogged": the whole seconds after the recovery
/// before the fleet had less than one second of the capacity left to deliver.
async fn fleet(args: &Args, binary: &Path) -> Result<serde_json::Value, String> {
    use roomhook::demo::receiver::Behaviour;
    let s = setup(args).await?;
    s.receiver.set_behaviour(Behaviour::Status(503));
    let g = args.gateways.max(1);
    let devices = args.fleet_devices.max(1);
    let mut configs = Vec::new();
    for i in 0..g {
        let dir = s.dir.path().join(format!("g{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = Config::new()
            .gateway("org_id = \"bench\"")
            .gateway(&s.gateway)
            .with(
                Section::mqtt("mqtt", s.broker.port)
                    .set("client_id", format!("roomhook-fleet-{i}"))
                    .subscribe(
                        Section::subscription(&format!("fleet/g{i}/+/status"), "json")
                            .set("device", "{2}")
                            .field("/people", roomhook_testkit::PEOPLE),
                    ),
            )
            .with(
                Section::webhook("w", &s.url, &s.ca_file)
                    .remove("devices")
                    .remove("retry_base")
                    .remove("retry_max")
                    .remove("drain_start_jitter")
                    .merge(&args.fleet_webhook),
            );
        configs.push(config.write(&dir));
    }
    let mut daemons = Vec::new();
    for c in &configs {
        daemons.push(Daemon::start(binary, c)?);
    }
    // Ready: every gateway's MQTT source subscribed (asked on its control socket).
    let cs = configs.clone();
    let ready = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(120), || {
            cs.iter().all(|c| {
                roomhook_testkit::status_of(c).is_some_and(|r| {
                    !r.sources.is_empty() && r.sources.iter().all(|s| s.subscribed)
                })
            })
        })
    })
    .await
    .unwrap_or(false);
    if !ready {
        for d in daemons {
            d.stop();
        }
        return Err("not every gateway subscribed within 120 s".into());
    }
    // The outage: the backlog is published over `--down` seconds, gateways and devices
    // interleaved; each device counts 0, 1, 2, … (its sequence).
    let down_at = Instant::now();
    let per_gateway = (args.fleet_rate * args.down as f64).round().max(1.0) as usize;
    let total = per_gateway * g;
    let messages: Vec<(String, String)> = (0..total)
        .map(|k| {
            let (gw, j) = (k % g, k / g);
            let (dev, seq) = (j % devices, j / devices);
            (
                format!("fleet/g{gw}/g{gw}-d{dev}/status"),
                format!("{{\"people\":{seq}}}"),
            )
        })
        .collect();
    let pace = Duration::from_secs_f64(args.down as f64 / total as f64);
    publish_all(s.broker.port, messages, Some(pace)).await?;
    tokio::time::sleep_until((down_at + Duration::from_secs(args.down)).into()).await;
    let outage_requests = s.receiver.requests().len();
    // The receiver comes back with a capacity.
    s.receiver.set_behaviour(Behaviour::Capacity {
        per_second: args.cap,
        retry_after: args.retry_after,
    });
    let cpu0: f64 = daemons
        .iter()
        .map(|d| cpu_seconds(d.pid()).unwrap_or(0.0))
        .sum();
    let timeout = Duration::from_secs(600 + 20 * total as u64 / u64::from(args.cap.max(1)));
    let all = s.receiver.wait_accepted(total, timeout).await;
    // Stragglers (a duplicate would be counted as one of the `total`).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu: f64 = daemons
        .iter()
        .map(|d| cpu_seconds(d.pid()).unwrap_or(0.0))
        .sum::<f64>()
        - cpu0;
    let rss: Vec<u64> = daemons
        .iter()
        .map(|d| status_kib(d.pid(), "VmHWM").unwrap_or(0))
        .collect();
    tokio::task::spawn_blocking(move || {
        for d in daemons {
            d.stop();
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let (since, seconds) = s.receiver.per_second();
    let reqs = s.receiver.requests();
    let after: Vec<_> = reqs[outage_requests..]
        .iter()
        .filter(|r| r.at >= since)
        .collect();
    // Lost and duplicated: by device and sequence, and by webhook-id.
    let mut seen: HashSet<(String, i64)> = HashSet::new();
    let mut ids: HashSet<String> = HashSet::new();
    let (mut dups, mut id_dups, mut out_of_order) = (0, 0, 0);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let mut first_ok = vec![None::<Instant>; g];
    let mut last_ok = vec![None::<Instant>; g];
    for r in reqs.iter().filter(|r| r.status == 200) {
        if let Some(id) = r.headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
            if !ids.insert(id.to_string()) {
                id_dups += 1;
            }
        }
        for (device, value) in people(r) {
            let gw: usize = device
                .trim_start_matches('g')
                .split('-')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
                .min(g - 1);
            first_ok[gw] = Some(first_ok[gw].map_or(r.at, |t: Instant| t.min(r.at)));
            last_ok[gw] = Some(last_ok[gw].map_or(r.at, |t: Instant| t.max(r.at)));
            if last.get(&device).is_some_and(|l| *l >= value) {
                out_of_order += 1;
            }
            last.insert(device.clone(), value);
            if !seen.insert((device, value)) {
                dups += 1;
            }
        }
    }
    let lost = total.saturating_sub(seen.len());
    if !all {
        eprintln!(
            "fleet: {} of {total} messages arrived within {timeout:?}",
            seen.len()
        );
    }
    let secs = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(since).as_secs_f64());
    let drain = last_ok.iter().filter_map(|t| secs(*t)).fold(0.0, f64::max);
    // While backlogged: the whole seconds before the fleet had less than one second of
    // the capacity left to deliver (until then it could have filled every second).
    let mut backlogged = 0;
    let mut delivered = 0u64;
    for x in &seconds {
        delivered += u64::from(x.accepted);
        if delivered + u64::from(args.cap) >= total as u64 {
            break;
        }
        backlogged += 1;
    }
    let cap = f64::from(args.cap);
    let taken: u64 = seconds[..backlogged]
        .iter()
        .map(|x| u64::from(x.accepted))
        .sum();
    let used_backlogged = taken as f64 / (backlogged as f64 * cap);
    let refused: u64 = seconds.iter().map(|x| u64::from(x.refused)).sum();
    let answered: u64 = seconds
        .iter()
        .map(|x| u64::from(x.accepted + x.refused))
        .sum();
    // The busiest second of the first 30 s after the recovery: any window of one second
    // that starts within them (every request counted, refused ones too).
    let times: Vec<Instant> = after.iter().map(|r| r.at).collect();
    let peak_30 = roomhook_testkit::busiest_second(&times, Some(since + Duration::from_secs(30)));
    let busiest = seconds
        .iter()
        .map(|x| x.accepted + x.refused)
        .max()
        .unwrap_or(0);
    let mut starts: Vec<f64> = first_ok.iter().filter_map(|t| secs(*t)).collect();
    starts.sort_by(f64::total_cmp);
    let used_overall = total.min(seen.len()) as f64 / (drain.max(1e-9) * cap);
    let refused_share = refused as f64 / answered.max(1) as f64;
    let mut out = serde_json::json!({
        "scenario": "fleet", "binary": binary.display().to_string(),
        "gateways": g, "cap_per_second": args.cap, "down_seconds": args.down,
        "down_answer": "503 without Retry-After", "retry_after_seconds": args.retry_after,
        "devices_per_gateway": devices, "backlog_per_gateway": per_gateway, "messages": total,
        "lost": lost, "duplicates": dups, "duplicate_webhook_ids": id_dups,
        "out_of_order": out_of_order,
        "used_while_backlogged": used_backlogged, "backlogged_seconds": backlogged,
        "used_over_drain": used_overall,
        "refused_share": refused_share, "refused": refused, "requests_after_recovery": answered,
        "peak_1s_first_30s": peak_30, "peak_1s_first_30s_vs_cap": peak_30 as f64 / cap,
        "busiest_second": busiest,
        "drain_seconds": drain,
        "first_delivery_s": { "first": starts.first(), "median": starts.get(starts.len() / 2), "last": starts.last() },
        "requests_during_outage": outage_requests,
        "daemons_cpu_seconds_drain": cpu,
        "daemon_peak_rss_mib_max": rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        "goals": {
            "lost_0": lost == 0, "duplicates_0": dups == 0 && id_dups == 0,
            "used_ge_90pct": used_backlogged >= 0.9, "refused_le_3pct": refused_share <= 0.03,
            "peak_le_1_5_cap": peak_30 as f64 <= 1.5 * cap,
        },
    });
    if args.series {
        out["series_accepted_refused"] = seconds
            .iter()
            .map(|x| serde_json::json!([x.accepted, x.refused]))
            .collect();
    }
    Ok(out)
}

/// The queue alone, in this process: durable appends of one event each from 64 producers
/// at once (like MQTT messages in flight), then reading windows and removing what was
/// "delivered" in groups of 64 (like a delivery worker).
async fn store(args: &Args) -> Result<serde_json::Value, String> {
    use roomhook::store::{Limits, Overflow, Store};
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let limits = Limits {
        max_bytes: 0,
        queues: vec![("bench".into(), Overflow::DropOldest)],
    };
    let (store, ids) = Store::open(dir.path(), &limits).map_err(|e| e.to_string())?;
    let id = ids[0];
    let event = roomhook::event::Event {
        device: "room-42".into(),
        workspace: Some("workspace-42".into()),
        path: "RoomAnalytics.PeopleCount.Current".into(),
        kind: roomhook::catalog::Kind::Status,
        value: 3.into(),
        ts_ms: roomhook::timefmt::now_ms(),
        full_sync: false,
        more: Vec::new(),
    }
    .encode();
    let n = args.store_events;
    let producers = 64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let (store, event) = (store.clone(), event.clone());
        let count = n / producers + usize::from(p < n % producers);
        tasks.spawn(async move {
            for _ in 0..count {
                store.append(vec![(id, event.clone())]).await?;
            }
            Ok::<(), roomhook::store::StoreError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    let append_s = started.elapsed().as_secs_f64();
    let (append_commits, append_commit_s) = store.commits();
    let file_mib = std::fs::metadata(store.path()).map_or(0, |m| m.len()) as f64 / 1048576.0;

    let started = Instant::now();
    let mut after = 0u64;
    let mut removed = 0usize;
    let mut pending = Vec::new();
    loop {
        let (s, a) = (store.clone(), after);
        let window =
            tokio::task::spawn_blocking(move || s.read_after(id, a, 4096).map(|w| w.entries))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let Some(last) = window.last() else { break };
        after = last.seq;
        for chunk in window.chunks(64) {
            let seqs: Vec<u64> = chunk.iter().map(|e| e.seq).collect();
            removed += seqs.len();
            pending.push(store.remove(id, seqs).await.map_err(|e| e.to_string())?);
        }
        for p in pending.drain(..) {
            p.await.map_err(|e| e.to_string())?;
        }
    }
    let remove_s = started.elapsed().as_secs_f64();
    let remove_commits = store.commits().0 - append_commits;
    store.close().await;
    if removed != n {
        return Err(format!("read back {removed} of {n} events"));
    }
    Ok(serde_json::json!({
        "scenario": "store",
        "events": n,
        "event_bytes": event.len(),
        "producers": producers,
        "append_events_per_second": n as f64 / append_s,
        "append_commits_per_second": append_commits as f64 / append_s,
        "events_per_commit": n as f64 / append_commits.max(1) as f64,
        "mean_commit_ms": append_commit_s * 1000.0 / append_commits.max(1) as f64,
        "file_mib_after_append": file_mib,
        "remove_events_per_second": n as f64 / remove_s,
        "remove_commits_per_second": remove_commits as f64 / remove_s,
    }))
}

fn main() -> std::process::ExitCode {
    roomhook::install_crypto_provider();
    let args = Args::parse();
    let binary = args.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("roomhook")))
            .unwrap_or_else(|| PathBuf::from("roomhook"))
    });
    if !binary.exists() {
        eprintln!(
            "{} not found: run `cargo build --release --bins` first",
            binary.display()
        );
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "roomhook-bench on {} core(s), {cpu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let mut results = Vec::new();
    let mut failed = false;
    for scenario in args.scenarios.split(',').map(str::trim) {
        let r = rt.block_on(async {
            match scenario {
                "throughput" => throughput(&args, &binary, 1).await,
                "batched" => throughput(&args, &binary, 100).await,
                "compression" => compression(&args, &binary).await,
                "drain" => drain(&args, &binary).await,
                "latency" => latency(&args, &binary).await,
                "idle" => idle(&args, &binary).await,
                "roomos" => roomos(&args, &binary).await,
                "wear" => wear(&args, &binary).await,
                "store" => store(&args).await,
                "fleet" => fleet_compare(&args, &binary, &mut results).await,
                other => Err(format!("unknown scenario {other:?}")),
            }
        });
        match r {
            Ok(v) => {
                println!("{v}");
                results.push(v);
            }
            Err(e) => {
                eprintln!("{scenario}: {e}");
                failed = true;
            }
        }
    }
    print_table(&results);
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
