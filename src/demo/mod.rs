//! `roomhook demo`: the whole path on one machine with nothing external — simulated rooms
//! (one of them a simulated RoomOS device read over a real wss:// xAPI WebSocket), the real
//! store in a temporary directory, and an in-process HTTPS receiver behind a throwaway
//! private CA that prints every webhook it gets.

pub mod device;
pub mod pki;
pub mod receiver;

use crate::source::simulator::{self, Simulation};
use anyhow::Context;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Simulated rooms.
    pub rooms: usize,
    /// Time between two observations.
    pub interval: Duration,
}

/// Runs the demo until its duration passes or `shutdown` is cancelled.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let identity = pki::private_ca(&["127.0.0.1", "localhost"])?;
    let ca_path = dir.path().join("demo-ca.pem");
    std::fs::write(&ca_path, &identity.ca_pem)?;
    let token = "Bearer demo-token";
    let receiver = receiver::Receiver::start(
        "127.0.0.1:0".parse()?,
        identity.server_config()?,
        Some(token.to_string()),
        true,
    )
    .await?;
    // A RoomOS device of its own: a real wss:// server with a self-signed certificate.
    let device = device::DeviceSim::start(device::DeviceSimOptions {
        serial: "FOC2447DEMO".into(),
        product_id: "Cisco Room Kit Pro".into(),
        username: "roomhook".into(),
        password: "demo-device-password".into(),
        role: device::Role::Integrator,
        tls: true,
    })
    .await
    .context("device simulator")?;
    std::fs::write(dir.path().join("boardroom.pass"), "demo-device-password\n")?;
    let config_path = dir.path().join("roomhook.toml");
    let config = format!(
        r#"# Written by `roomhook demo`; a real gateway's config looks the same, plus [[sources.mqtt]].
[gateway]
data_dir = "data"
org_id = "demo-org"

# A simulated Room Kit (a real xAPI WebSocket on loopback); the other rooms are simulated
# inside roomhook.
[[sources.roomos]]
name = "boardroom"
url = "{device_url}"
username = "roomhook"
password_file = "boardroom.pass"
pin_sha256 = "{pin}"
device = "room-boardroom"
workspace = "workspace-boardroom"

[[webhooks]]
name = "demo-receiver"
url = "https://127.0.0.1:{port}/webhook"
authorization = "{token}"
ca_file = "demo-ca.pem"
devices = ["room-*"]
statuses = ["RoomAnalytics.*", "Peripherals.*"]
events = ["UserInterface.Extensions.Widget.Action"]
drain_start_jitter = "0s"
"#,
        port = receiver.addr().port(),
        device_url = device.url(),
        pin = device.cert_sha256(),
    );
    std::fs::write(&config_path, &config)?;
    println!(
        "roomhook demo: {} simulated rooms and a simulated RoomOS device at {} -> store in {} -> HTTPS receiver on {} (private CA)",
        opts.rooms,
        device.url(),
        dir.path().display(),
        receiver.addr()
    );
    println!("config ({}):\n{config}", config_path.display());
    let settings = crate::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut running = crate::daemon::start(&settings, shutdown.clone()).await?;
    let sim = Simulation {
        rooms: opts.rooms,
        interval: opts.interval,
    };
    running.spawn_source("simulator", move |ingest, status, stop| {
        simulator::run(sim, ingest, status, stop)
    });
    tokio::spawn(drive_device(
        device.clone(),
        opts.interval * 4,
        shutdown.clone(),
    ));
    if let Some(d) = opts.duration {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let store = running.store().clone();
    running.wait().await;
    device.stop();
    let requests = receiver.requests();
    let accepted = requests.iter().filter(|r| r.status == 200).count();
    println!(
        "roomhook demo: the receiver got {} webhooks ({} accepted); {} still queued",
        requests.len(),
        accepted,
        store.depth(crate::store::WebhookId(1))
    );
    Ok(())
}

/// Makes the simulated RoomOS device's room live: people come and go, the Navigator's
/// temperature drifts, someone presses the help button now and then.
async fn drive_device(dev: device::DeviceSim, every: Duration, stop: CancellationToken) {
    let mut people = 0i64;
    let mut temperature = 22.5f64;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let roll: f64 = rand::random();
        if roll < 0.6 {
            people = (people + rand::random_range(-2..=2)).clamp(0, 10);
            dev.set_status(
                "RoomAnalytics.PeopleCount.Current",
                serde_json::json!(people),
            );
            let presence = if people > 0 { "Yes" } else { "No" };
            dev.set_status("RoomAnalytics.PeoplePresence", serde_json::json!(presence));
        } else if roll < 0.9 {
            temperature = ((temperature + rand::random_range(-0.3..0.3)) * 10.0).round() / 10.0;
            // A Navigator reports its temperature as a string; roomhook sends a number.
            dev.set_status(
                "Peripherals.ConnectedDevice[1002].RoomAnalytics.AmbientTemperature",
                serde_json::json!(format!("{temperature:.1}")),
            );
        } else {
            dev.emit_event(
                "UserInterface.Extensions.Widget.Action",
                serde_json::json!({"WidgetId": "help-button", "Type": "clicked", "Value": ""}),
            );
        }
    }
}
