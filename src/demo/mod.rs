//! `roomhook demo`: the whole path on one machine with nothing external — simulated rooms,
//! the real store in a temporary directory, and an in-process HTTPS receiver behind a
//! throwaway private CA that prints every webhook it gets.

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
    let config_path = dir.path().join("roomhook.toml");
    let config = format!(
        r#"# Written by `roomhook demo`; a real gateway's config looks the same, plus [[sources.mqtt]].
[gateway]
data_dir = "data"
org_id = "demo-org"

[[webhooks]]
name = "demo-receiver"
url = "https://127.0.0.1:{port}/webhook"
authorization = "{token}"
ca_file = "demo-ca.pem"
devices = ["room-*"]
statuses = ["RoomAnalytics.*"]
events = ["UserInterface.Extensions.Widget.Action"]
drain_start_jitter = "0s"
"#,
        port = receiver.addr().port()
    );
    std::fs::write(&config_path, &config)?;
    println!(
        "roomhook demo: {} simulated rooms -> store in {} -> HTTPS receiver on {} (private CA)",
        opts.rooms,
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
    running.spawn_source(move |ingest, stop| simulator::run(sim, ingest, stop));
    if let Some(d) = opts.duration {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let store = running.store().clone();
    running.wait().await;
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
