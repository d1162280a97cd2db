//! Simulated meeting rooms for `roomhook demo`: people come and go, temperature drifts,
//! someone presses a button now and then. Feeds the same ingest path as real sources.

use crate::catalog::Kind;
use crate::event::Event;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the simulated rooms behave.
#[derive(Debug, Clone)]
pub(crate) struct Simulation {
    /// Number of rooms (devices `room-1` … `room-N`).
    pub(crate) rooms: usize,
    /// Time between two observations.
    pub(crate) interval: Duration,
}

struct Room {
    people: i64,
    temperature: f64,
}

/// Runs the simulation until shutdown; each observation is committed before the next.
pub async fn run(
    sim: Simulation,
    ingest: Ingest,
    status: std::sync::Arc<super::status::SourceStatus>,
    shutdown: CancellationToken,
) {
    let label = Metrics::source("simulator");
    let messages = ingest
        .metrics()
        .source_messages
        .get_or_create(&label)
        .clone();
    status.connected();
    status.subscribed();
    let mut rooms: Vec<Room> = (0..sim.rooms.max(1))
        .map(|i| Room {
            people: 0,
            temperature: 21.0 + i as f64 * 0.3,
        })
        .collect();
    let mut tick = tokio::time::interval(sim.interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let i = rand::random_range(0..rooms.len());
        let room = &mut rooms[i];
        let device = format!("room-{}", i + 1);
        let now = crate::timefmt::now_ms();
        let ev = |path: &str, kind: Kind, value: Value| Event {
            device: device.clone(),
            workspace: Some(format!("workspace-{}", i + 1)),
            path: path.to_string(),
            kind,
            value,
            ts_ms: now,
            full_sync: false,
            more: Vec::new(),
        };
        let roll: f64 = rand::random();
        let events = if roll < 0.6 {
            room.people = (room.people + rand::random_range(-2..=2)).clamp(0, 12);
            vec![ev(
                "RoomAnalytics.PeopleCount.Current",
                Kind::Status,
                json!(room.people),
            )]
        } else if roll < 0.9 {
            room.temperature =
                ((room.temperature + rand::random_range(-0.3..0.3)) * 10.0).round() / 10.0;
            vec![ev(
                "RoomAnalytics.AmbientTemperature",
                Kind::Status,
                json!(room.temperature),
            )]
        } else {
            vec![ev(
                "UserInterface.Extensions.Widget.Action",
                Kind::Event,
                json!({"WidgetId": "help-button", "Type": "clicked", "Value": ""}),
            )]
        };
        messages.inc();
        status.message(0);
        if let Err(e) = ingest.accept(events).await {
            tracing::error!("simulator: {e}");
        }
    }
}
