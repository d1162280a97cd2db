//! `roomhook-testkit`: what the integration tests and the benchmark share, in a crate of
//! its own so that none of it ships (the daemon's `cargo tree -e normal` has none of it).
//!
//! - this file: a real Mosquitto on a free loopback port, free ports, waiting on a
//!   condition, /proc readings, a QoS 1 publisher;
//! - [`rig`]: the rig (the daemon as a child process, an HTTPS receiver behind a private
//!   CA, a broker, the config), workloads, the simulated RoomOS device's options, the CLI,
//!   and the checks on what a receiver got;
//! - [`config`]: configs built and edited as TOML values (toml_edit), never as text;
//! - [`http`]: the one HTTP client of the tests (hyper), for the admin listener;
//! - [`proxy`]: a fault-injecting TCP proxy (the kernel here has no `netem`);
//! - [`mqtt_wire`]: MQTT 3.1.1 packets, for tests that play a broker themselves.

pub mod config;
pub mod http;
pub mod mqtt_wire;
pub mod proxy;
pub mod rig;

pub use config::{edit, list, Config, Doc, Section, DEVICE_PASSWORD, PEOPLE};
pub use http::{http_get, metric, request, request_from, scrape, Answer};
pub use rig::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, for a server a test starts later (a daemon, Mosquitto).
/// Taken below the kernel's ephemeral range (32768-60999 by default), where `bind(0)` and
/// every outgoing connection take theirs: a port from there could be taken as the source
/// port of another test's connection before the server binds it ("Address already in
/// use"). Each process walks its own sequence from a start derived from its pid, so test
/// binaries running side by side rarely meet, and a port is handed out once per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN)
}

/// Runs `fut` to its end on a thread of its own with a small runtime, so that blocking
/// helpers (HTTP, the control socket) can be called anywhere, `wait_until` conditions
/// inside an async test included (never inside the caller's runtime). `None` if it panicked.
pub fn block_on_thread<T: Send>(fut: impl std::future::Future<Output = T> + Send) -> Option<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for a test helper")
                    .block_on(fut)
            })
            .join()
            .ok()
    })
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where Mosquitto is installed, if it is.
pub fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A Mosquitto broker on 127.0.0.1, killed when dropped.
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Why a broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Not installed.
    #[error("mosquitto is not installed: run `apt-get install -y mosquitto`")]
    NotInstalled,
    /// Could not be started or did not listen.
    #[error("mosquitto: {0}")]
    Start(String),
}

impl Mosquitto {
    /// Starts a broker that queues up to a million messages for an offline client.
    pub fn start() -> Result<Mosquitto, BrokerError> {
        let bin = mosquitto_binary().ok_or(BrokerError::NotInstalled)?;
        let dir = tempfile::tempdir().map_err(|e| BrokerError::Start(e.to_string()))?;
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .map_err(|e| BrokerError::Start(e.to_string()))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BrokerError::Start(e.to_string()))?;
        let mut m = Mosquitto {
            child,
            port,
            _dir: dir,
        };
        if !wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }) {
            let _ = m.child.kill();
            return Err(BrokerError::Start(format!(
                "not listening on {port} after 10 s"
            )));
        }
        Ok(m)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The most of `times` (sorted) within any one second whose window starts before
/// `starting_before` (every window if `None`): what a receiver saw at its busiest.
pub fn busiest_second(times: &[Instant], starting_before: Option<Instant>) -> usize {
    times
        .iter()
        .enumerate()
        .take_while(|(_, t)| starting_before.is_none_or(|end| **t < end))
        .map(|(i, t)| {
            times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Publishes every `(topic, payload)` with QoS 1 and waits until the broker acknowledged
/// them all; `pace` spaces the publishes (none: as fast as the broker takes them). Returns
/// the instant each message was handed to the client, in order.
pub async fn publish_all(
    port: u16,
    messages: Vec<(String, String)>,
    pace: Option<Duration>,
) -> Result<Vec<Instant>, String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let id = format!("publisher-{}", free_port());
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(100);
    // Large messages too (tests of max_payload).
    opts.set_max_packet_size(1 << 20, 64 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let total = messages.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("publisher connection failed: {e}")),
            }
        }
        Ok(())
    });
    let mut sent = Vec::with_capacity(total);
    let mut tick = pace.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    for (topic, payload) in messages {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        sent.push(Instant::now());
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| e.to_string())?;
    }
    match tokio::time::timeout(Duration::from_secs(120), acks).await {
        Ok(Ok(Ok(()))) => Ok(sent),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the broker did not acknowledge every message within 120 s".into()),
    }
}
