//! The floor of the `wear` benchmark: the least a bridge built of roomhook's own parts does
//! per event, to compare the daemon with — one MQTT message in (rumqttc, QoS 1, acked by
//! hand), its Control Hub message appended to a file and `fdatasync`ed before the ack, one
//! request over HTTPS (the daemon's hyper + rustls client), all on one thread; no store, no
//! routing, pacing, retries or metrics. It takes the daemon's arguments (`[--log …] run -c
//! FILE`) and serves the first MQTT source and the first webhook of that config, so
//! `roomhook-bench --scenarios wear --binary target/release/roomhook-floor` measures it
//! exactly as it measures the daemon. Never shipped (the `testkit` feature).

use roomhook::catalog::Kind;
use roomhook::deliver::client::WebhookClient;
use roomhook::event::Event;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<(), String> {
    roomhook::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let config = args
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .ok_or("usage: roomhook-floor run -c FILE")?;
    let settings = roomhook::config::load(&config).map_err(|e| e.to_string())?;
    let source = settings
        .mqtt
        .first()
        .ok_or("the config has no MQTT source")?;
    let webhook = settings
        .webhooks
        .first()
        .ok_or("the config has no webhook")?;
    let topic = source
        .subscriptions
        .first()
        .ok_or("the source has no subscription")?
        .filter
        .to_string();
    let client = WebhookClient::new(webhook).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| e.to_string())?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(settings.data_dir.join("floor.log"))
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut opts = MqttOptions::new(&source.client_id, &source.host, source.port);
        opts.set_manual_acks(true);
        opts.set_clean_session(false);
        opts.set_keep_alive(source.keep_alive);
        let (mqtt, mut events) = AsyncClient::new(opts, 64);
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    mqtt.subscribe(&topic, QoS::AtLeastOnce)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let doc: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    let event = Event {
                        device: p.topic.split('/').nth(1).unwrap_or("").to_string(),
                        workspace: None,
                        path: "RoomAnalytics.PeopleCount.Current".into(),
                        kind: Kind::Status,
                        value: doc["people"].clone(),
                        ts_ms: roomhook::timefmt::now_ms(),
                        full_sync: false,
                        more: Vec::new(),
                    };
                    let body = roomhook::deliver::payload::message(&event, &settings.org_id);
                    log.write_all(&body).map_err(|e| e.to_string())?;
                    log.sync_data().map_err(|e| e.to_string())?;
                    mqtt.ack(&p).await.map_err(|e| e.to_string())?;
                    client.post(body.into(), &[]).await;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("roomhook-floor: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    })
}
