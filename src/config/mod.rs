//! The TOML configuration: the file's model (`Raw*`, exactly the keys users write), the
//! validated settings the daemon runs on, and loading with errors that name the file, the
//! key, the line and the fix.

pub(crate) mod edit;
pub(crate) mod fleet;
mod locate;
pub(crate) mod secret;
#[cfg(test)]
mod tests;
pub mod units;
mod validate;

pub(crate) use secret::Secret;
#[cfg(test)]
pub(crate) use validate::parse_pin;
pub(crate) use validate::validate;

use crate::catalog::Entry;
use crate::value::devices::DeviceSelector;
use crate::value::topic::{Template, TopicFilter};
use crate::value::transform::Transform;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// The file as written.

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `[gateway]`: where the store lives and what goes into every payload.
    pub(crate) gateway: RawGateway,
    /// `[admin]`: the local HTTP listener for metrics and health.
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    /// `[sources]`: where events come from.
    #[serde(default)]
    pub(crate) sources: RawSources,
    /// `[[webhooks]]`: where events go.
    #[serde(default)]
    pub(crate) webhooks: Vec<RawWebhook>,
    /// `[log]`: log filter and format.
    #[serde(default)]
    pub(crate) log: RawLog,
    /// `[[devices]]`: sensor ids → device and workspace ids.
    #[serde(default)]
    pub(crate) devices: Vec<RawDevice>,
    /// `[fleet]`: the config pulled from a URL, the reports pushed to one.
    pub(crate) fleet: Option<RawFleet>,
}

/// `[fleet]`: where the fleet-managed part of the config comes from, and where reports go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    /// `https://…` of the fleet document (`{gateway}`: `[gateway] id`).
    pub(crate) config_url: Option<String>,
    /// Extra trust anchors (PEM) for `config_url`.
    pub(crate) ca_file: Option<PathBuf>,
    /// Authorization header value for `config_url`, sent verbatim.
    pub(crate) authorization: Option<String>,
    /// File holding it.
    pub(crate) authorization_file: Option<PathBuf>,
    /// How often the document is fetched, jittered (default `"5m"`).
    pub(crate) config_interval: Option<String>,
    /// Ed25519 public key (base64) that must have signed the document.
    pub(crate) config_public_key: Option<String>,
    /// File holding it.
    pub(crate) config_public_key_file: Option<PathBuf>,
    /// `https://…` the status reports are POSTed to.
    pub(crate) report_url: Option<String>,
    /// Extra trust anchors (PEM) for `report_url`.
    pub(crate) report_ca_file: Option<PathBuf>,
    /// Authorization header value for `report_url`.
    pub(crate) report_authorization: Option<String>,
    /// File holding it.
    pub(crate) report_authorization_file: Option<PathBuf>,
    /// File holding the Standard Webhooks secret (`whsec_…`) reports are signed with.
    pub(crate) report_signing_secret_file: Option<PathBuf>,
    /// How often a report goes out, jittered (default `"60s"`).
    pub(crate) report_interval: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// `RUST_LOG`-style filter, e.g. `"info,roomhook=debug"` (the `--log` flag wins).
    pub(crate) filter: Option<String>,
    /// `auto` (journald under systemd, else text), `text`, `json` or `journald`.
    pub(crate) format: Option<crate::logging::LogFormat>,
}

/// `[gateway] shutdown_grace` when not set: how long in-flight requests may finish after a
/// stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The longest `[gateway] shutdown_grace` accepted: the unit's `TimeoutStopSec` (30 s)
/// less the time the stop takes beside the grace (sources draining, the store closing).
pub(crate) const SHUTDOWN_GRACE_MAX: Duration = Duration::from_secs(20);

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    /// The gateway's name in the fleet (default: the host name).
    pub(crate) id: Option<String>,
    /// Directory of the embedded store (relative paths: relative to the config file).
    pub(crate) data_dir: PathBuf,
    /// Copied into payloads as `orgId`.
    pub(crate) org_id: Option<String>,
    /// Budget for all queued events, e.g. `"64MiB"` (default `"128MiB"`).
    pub(crate) max_store_bytes: Option<String>,
    /// Threads of the async runtime (default 1; the store writer has its own).
    pub(crate) threads: Option<usize>,
    /// Group commits gather this long (default `"0s"`): fewer writes, later acks.
    pub(crate) commit_interval: Option<String>,
    /// How long the queue of a webhook that left the config is kept (default `"7d"`).
    pub(crate) orphan_retention: Option<String>,
    /// How long in-flight requests may finish after SIGTERM (default `"5s"`).
    pub(crate) shutdown_grace: Option<String>,
    /// Bytes per second all webhooks together may put on the uplink: a number of bytes or
    /// a size such as `"20KiB"` (default: no budget).
    pub(crate) uplink_bytes_per_s: Option<toml::Value>,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// `host:port` for `GET /metrics` and `GET /healthz`.
    pub(crate) listen: Option<String>,
    /// Unix socket of the control API (default `<data_dir>/roomhook.sock`).
    pub(crate) socket: Option<PathBuf>,
    /// Bearer token that opens the control API on the TCP listener (`/v1/…`).
    pub(crate) token: Option<String>,
    /// File holding the token.
    pub(crate) token_file: Option<PathBuf>,
    /// Serve the web console under `/` (needs `listen` and `token`; default false).
    pub(crate) console: Option<bool>,
    /// Addresses of reverse proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are
    /// believed.
    pub(crate) trusted_proxies: Option<Vec<String>>,
}

/// `[sources]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSources {
    /// `[[sources.mqtt]]`.
    #[serde(default)]
    pub(crate) mqtt: Vec<RawMqtt>,
    /// `[[sources.roomos]]`.
    #[serde(default)]
    pub(crate) roomos: Vec<RawRoomos>,
}

/// `[[sources.roomos]]`: one Cisco RoomOS device read over its xAPI WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoomos {
    /// Name used in logs and metrics.
    pub(crate) name: String,
    /// `wss://<device>/ws` (`ws://` only with `allow_plaintext`). Empty when missing (a
    /// fleet document names a source without it).
    #[serde(default)]
    pub(crate) url: String,
    /// Allows a plain `ws://` URL (lab use).
    pub(crate) allow_plaintext: Option<bool>,
    /// Local user on the device (the Integrator role is enough for most statuses).
    #[serde(default)]
    pub(crate) username: String,
    /// Its password (prefer `password_file`).
    pub(crate) password: Option<String>,
    /// File holding the password.
    pub(crate) password_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the device's certificate (hex, colons optional).
    pub(crate) pin_sha256: Option<String>,
    /// Or: PEM with the CA that issued the device's certificate.
    pub(crate) ca_file: Option<PathBuf>,
    /// `"header"` (Authorization: Basic, default) or `"subprotocol"` (`auth-…`).
    pub(crate) auth_mode: Option<String>,
    /// Device id in payloads (default: the device's serial number).
    pub(crate) device: Option<String>,
    /// Workspace id in payloads.
    pub(crate) workspace: Option<String>,
    /// Statuses to subscribe to (default: what the webhooks select).
    pub(crate) statuses: Option<Vec<String>>,
    /// Events to subscribe to (default: what the webhooks select).
    pub(crate) events: Option<Vec<String>>,
    /// WebSocket ping interval; no pong within it means a dead peer (default `"30s"`).
    pub(crate) keep_alive: Option<String>,
    /// Largest frame accepted from the device (default `"1MiB"`).
    pub(crate) max_frame: Option<String>,
}

/// `[[sources.mqtt]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    /// Name used in logs and metrics.
    pub(crate) name: String,
    /// `mqtt://host:port` or `mqtts://host:port`. Empty when missing (a fleet document
    /// names a source without it).
    #[serde(default)]
    pub(crate) url: String,
    /// Fixed client id (the persistent session hangs on it); default `roomhook-<name>`.
    pub(crate) client_id: Option<String>,
    /// Broker user name.
    pub(crate) username: Option<String>,
    /// Broker password (prefer `password_file`).
    pub(crate) password: Option<String>,
    /// File holding the broker password.
    pub(crate) password_file: Option<PathBuf>,
    /// Extra trust anchors (PEM) for `mqtts://`.
    pub(crate) ca_file: Option<PathBuf>,
    /// MQTT keep-alive, e.g. `"30s"`.
    pub(crate) keep_alive: Option<String>,
    /// Largest payload decoded (default `"1MiB"`); larger messages are acked, counted, skipped.
    pub(crate) max_payload: Option<String>,
    /// `[[sources.mqtt.subscriptions]]`.
    #[serde(default)]
    pub(crate) subscriptions: Vec<RawSubscription>,
}

/// `[[sources.mqtt.subscriptions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubscription {
    /// MQTT filter.
    pub(crate) topic: String,
    /// Payload decoder: `"json"` (generic, with `fields`), `"zigbee2mqtt"`, `"meraki-mt"`,
    /// `"meraki-mv"`.
    #[serde(default = "default_format")]
    pub(crate) format: String,
    /// Device id: a literal or `{n}` topic levels (default for the built-in formats: the
    /// sensor's own id).
    pub(crate) device: Option<String>,
    /// Workspace id: a literal or `{n}` topic levels.
    pub(crate) workspace: Option<String>,
    /// JSON pointer in the payload whose value is the device id.
    pub(crate) device_field: Option<String>,
    /// JSON pointer in the payload whose value is the workspace id.
    pub(crate) workspace_field: Option<String>,
    /// `json`: JSON pointer → catalog path. Built-in formats: property (metric, object
    /// class) → catalog path, overriding the defaults; `""` drops a default.
    #[serde(default)]
    pub(crate) fields: BTreeMap<String, String>,
    /// Value transforms, by the same keys as `fields`.
    #[serde(default)]
    pub(crate) transforms: BTreeMap<String, RawTransform>,
    /// `meraki-mv`: count the `person` objects of `…/raw_detections` (default false).
    pub(crate) raw_detections: Option<bool>,
    /// `zigbee2mqtt`: Zigbee2MQTT's base topic (default: the filter's first level).
    pub(crate) base_topic: Option<String>,
}

/// `[sources.mqtt.subscriptions.transforms."<key>"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransform {
    /// Replacements by the value's text, e.g. `{ "true" = "Yes", "false" = "No" }`.
    #[serde(default)]
    pub(crate) map: BTreeMap<String, serde_json::Value>,
    /// Multiply numbers by this.
    pub(crate) scale: Option<f64>,
    /// Then add this.
    pub(crate) offset: Option<f64>,
    /// Then round to this many decimals.
    pub(crate) round: Option<u32>,
}

/// `[[devices]]`: a sensor's id (friendly name, MAC, camera serial, or the id its
/// subscription gives) → the device (and workspace) its events carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    /// The sensor's id as its format gives it (case does not matter).
    pub(crate) sensor: String,
    /// Device id in payloads.
    pub(crate) device: String,
    /// Workspace id in payloads.
    pub(crate) workspace: Option<String>,
}

fn default_format() -> String {
    "json".to_string()
}

/// `[[webhooks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    /// Unique name.
    pub(crate) name: String,
    /// `https://…` only.
    pub(crate) url: String,
    /// Whether it takes events (default true).
    pub(crate) enabled: Option<bool>,
    /// `"none"` to send no Authorization header on purpose.
    pub(crate) auth: Option<String>,
    /// Authorization header value, sent verbatim.
    pub(crate) authorization: Option<String>,
    /// File holding the Authorization header value.
    pub(crate) authorization_file: Option<PathBuf>,
    /// Basic auth user name.
    pub(crate) username: Option<String>,
    /// Basic auth password.
    pub(crate) password: Option<String>,
    /// File holding the Basic auth password.
    pub(crate) password_file: Option<PathBuf>,
    /// Extra trust anchors (PEM), for a private CA.
    pub(crate) ca_file: Option<PathBuf>,
    /// Device ids or globs (default `["*"]`).
    pub(crate) devices: Option<Vec<String>>,
    /// Catalog statuses (`"RoomAnalytics.*"` allowed).
    #[serde(default)]
    pub(crate) statuses: Vec<String>,
    /// Catalog events.
    #[serde(default)]
    pub(crate) events: Vec<String>,
    /// Most requests in flight at once (default 8).
    pub(crate) max_in_flight: Option<usize>,
    /// TCP + TLS connect timeout (default `"5s"`).
    pub(crate) connect_timeout: Option<String>,
    /// Whole-request timeout (default `"15s"`).
    pub(crate) request_timeout: Option<String>,
    /// First retry delay (default `"1s"`).
    pub(crate) retry_base: Option<String>,
    /// Longest retry delay (default `"5m"`).
    pub(crate) retry_max: Option<String>,
    /// Requests per second, never exceeded (default: unlimited).
    pub(crate) rate_limit: Option<f64>,
    /// Requests that may be saved up for a burst (default: one second's worth).
    pub(crate) burst: Option<u32>,
    /// Random delay before the first request after start-up (default `"3s"`).
    pub(crate) drain_start_jitter: Option<String>,
    /// `"device"` (default: one request in flight per device) or `"none"`.
    pub(crate) ordering: Option<String>,
    /// Messages per request; above 1 sends a JSON array (default 1).
    pub(crate) batch_max_messages: Option<usize>,
    /// Largest request body of a batch (default `"1MiB"`).
    pub(crate) batch_max_bytes: Option<String>,
    /// How long a partial batch may wait for more messages (default `"50ms"`).
    pub(crate) batch_linger: Option<String>,
    /// Failed requests in a row that open the circuit (default 5).
    pub(crate) circuit_breaker_threshold: Option<u32>,
    /// Retry interval while the receiver answers 401/403 (default `"60s"`).
    pub(crate) auth_retry: Option<String>,
    /// What gives way when the store is full: `drop_oldest` (default), `coalesce`, `block`.
    pub(crate) overflow: Option<String>,
    /// Events older than this are dropped, never delivered (default: kept until delivered).
    pub(crate) max_queue_age: Option<String>,
    /// Queued status values superseded by a newer one of the same device and path leave
    /// unsent (default false).
    pub(crate) conflate: Option<bool>,
    /// Request-body compression: `none` (default) or `gzip`.
    pub(crate) compression: Option<String>,
    /// 0–9 (default 5): while the uplink budget is the limit, a higher one goes first.
    pub(crate) priority: Option<i64>,
    /// Its share of the uplink budget among webhooks of the same priority (default 1).
    pub(crate) uplink_weight: Option<i64>,
    /// Standard Webhooks signing secret (`whsec_…`).
    pub(crate) signing_secret: Option<String>,
    /// File holding the signing secret.
    pub(crate) signing_secret_file: Option<PathBuf>,
    /// Static extra headers sent with every request.
    pub(crate) headers: Option<BTreeMap<String, String>>,
    /// Client certificate (PEM) for mutual TLS.
    pub(crate) client_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub(crate) client_key_file: Option<PathBuf>,
    /// Per-path noise filters: `[webhooks.filters."<status or pattern>"]`.
    #[serde(default)]
    pub(crate) filters: BTreeMap<String, RawFilter>,
}

/// `[webhooks.filters."<status>"]`: what of a noisy status this webhook wants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    /// A numeric value goes out only when it moved at least this far from the last one sent.
    pub(crate) deadband: Option<f64>,
    /// At most one value per device and path per interval: always the latest, the final one
    /// never dropped.
    pub(crate) min_interval: Option<String>,
}

// ---------------------------------------------------------------------------------------
// What the daemon runs on.

/// Validated settings: every file read, every name checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the config came from (for reloads and messages).
    pub(crate) file: PathBuf,
    /// Store directory.
    pub data_dir: PathBuf,
    /// `orgId` of every payload.
    pub org_id: String,
    /// Budget for all queued events, in bytes.
    pub(crate) max_store_bytes: u64,
    /// Admin HTTP listener.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Unix socket of the control API.
    pub(crate) control_socket: PathBuf,
    /// Token that opens the control API on the TCP listener; without it `/v1/…` answers 401.
    pub(crate) admin_token: Option<Secret>,
    /// Serve the web console on the TCP listener.
    pub(crate) admin_console: bool,
    /// Reverse proxies believed about the client's address and scheme.
    pub(crate) admin_trusted_proxies: Vec<std::net::IpAddr>,
    /// MQTT sources.
    pub mqtt: Vec<MqttSettings>,
    /// RoomOS devices.
    pub roomos: Vec<RoomosSettings>,
    /// Webhooks.
    pub webhooks: Vec<WebhookSettings>,
    /// Threads of the async runtime.
    pub threads: usize,
    /// How long a group commit gathers before it is written (0: at once).
    pub(crate) commit_interval: Duration,
    /// How long an orphaned queue is kept.
    pub(crate) orphan_retention: Duration,
    /// How long in-flight requests may finish after a stop signal.
    pub shutdown_grace: Duration,
    /// Bytes per second all webhooks together may send (None: no budget).
    pub(crate) uplink_bytes_per_s: Option<u64>,
    /// `[log] filter`, if set.
    pub log_filter: Option<String>,
    /// `[log] format`, if set.
    pub log_format: Option<crate::logging::LogFormat>,
    /// `[gateway] id`: the gateway's name in the fleet.
    pub(crate) gateway_id: String,
    /// `[fleet]`, when it names a URL.
    pub(crate) fleet: Option<FleetSettings>,
    /// SHA-256 (hex) of the fleet document merged in, if one was.
    pub(crate) fleet_doc: Option<String>,
    /// Whether that document has `webhooks` (it then owns the webhooks).
    pub(crate) fleet_webhooks: bool,
    /// Why the kept fleet document was left out (it no longer fits the local file, which
    /// runs alone): what to log, count as refused and show in `status`, naming the file.
    pub fleet_kept_refused: Option<String>,
}

/// `[fleet]`: the pulled config and the pushed reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FleetSettings {
    /// Where the fleet-managed part of the config comes from.
    pub(crate) config: Option<FleetEndpoint>,
    /// How often it is fetched (jittered).
    pub(crate) config_interval: Duration,
    /// The Ed25519 public key that must have signed it.
    pub(crate) public_key: Option<[u8; 32]>,
    /// Where reports go.
    pub(crate) report: Option<FleetEndpoint>,
    /// How often a report goes out (jittered).
    pub(crate) report_interval: Duration,
    /// Signs reports (Standard Webhooks).
    pub(crate) report_signer: Option<crate::value::signing::Signer>,
}

/// One fleet URL and how it is reached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FleetEndpoint {
    /// The URL, `{gateway}` replaced.
    pub(crate) url: hyper::Uri,
    /// Trust anchors.
    pub(crate) trust: TlsTrust,
    /// Authorization header value.
    pub(crate) authorization: Option<Secret>,
}

/// One MQTT source.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    /// Name in logs and metrics.
    pub(crate) name: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`), with optional extra trust anchors.
    pub(crate) tls: Option<TlsTrust>,
    /// Fixed client id.
    pub client_id: String,
    /// User name and password.
    pub(crate) credentials: Option<(String, Secret)>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Largest payload decoded, bytes.
    pub(crate) max_payload: usize,
    /// What to subscribe to and how to decode it.
    pub subscriptions: Vec<SubscriptionSettings>,
    /// The `[[devices]]` table.
    pub devices: std::sync::Arc<DeviceMap>,
}

/// One RoomOS device read over its xAPI WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomosSettings {
    /// Name in logs and metrics.
    pub(crate) name: String,
    /// The URL as written (for messages).
    pub(crate) url: String,
    /// Device host (name or IP address).
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
    /// Request path (`/ws`).
    pub(crate) path: String,
    /// How the device's certificate is trusted; `None` for plain `ws://`.
    pub(crate) trust: Option<DeviceTrust>,
    /// Local user name.
    pub(crate) username: String,
    /// Its password.
    pub(crate) password: Secret,
    /// Where the credentials go in the handshake.
    pub(crate) auth_mode: DeviceAuthMode,
    /// Device id (None: the serial number, read at connect).
    pub(crate) device: Option<String>,
    /// Workspace id.
    pub(crate) workspace: Option<String>,
    /// Status selection (catalog patterns) to subscribe to.
    pub(crate) statuses: Vec<String>,
    /// Event selection (catalog patterns) to subscribe to.
    pub(crate) events: Vec<String>,
    /// Ping interval and pong deadline.
    pub(crate) keep_alive: Duration,
    /// Largest frame accepted, bytes.
    pub(crate) max_frame: usize,
}

/// How a device's certificate is trusted (never by switching checks off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceTrust {
    /// The leaf certificate's SHA-256 must be this.
    Pin([u8; 32]),
    /// A chain to this CA (PEM file), names checked.
    Ca(PathBuf),
}

/// Where a device's credentials go in the WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceAuthMode {
    /// `Authorization: Basic …`.
    Header,
    /// `Sec-WebSocket-Protocol: auth-<base64url(user:pass)>`.
    Subprotocol,
}

pub(crate) use crate::tls::TlsTrust;

/// One subscription of an MQTT source.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSettings {
    /// The MQTT filter.
    pub filter: TopicFilter,
    /// The payload decoder.
    pub(crate) format: Format,
    /// Device id template (`None`: the sensor's own id).
    pub(crate) device: Option<Template>,
    /// Workspace id template.
    pub(crate) workspace: Option<Template>,
    /// JSON pointer of the device id in the payload.
    pub(crate) device_field: Option<String>,
    /// JSON pointer of the workspace id in the payload.
    pub(crate) workspace_field: Option<String>,
}

/// A payload decoder and its mapping (defaults merged with the config's `fields`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Format {
    /// Generic JSON: each JSON pointer gives one catalog path.
    Json(Vec<FieldMap>),
    /// Zigbee2MQTT device state objects.
    Zigbee2Mqtt {
        /// Property → path.
        fields: Vec<FieldMap>,
        /// Topic levels of Zigbee2MQTT's base topic (what comes before the friendly name).
        base_levels: usize,
    },
    /// Meraki MT sensor metrics.
    MerakiMt(Vec<FieldMap>),
    /// Meraki MV people counts.
    MerakiMv {
        /// Object class → path.
        fields: Vec<FieldMap>,
        /// Count `person` objects of `raw_detections`.
        raw_detections: bool,
    },
}

/// One mapped field: where its value is, which catalog path it becomes, how it changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldMap {
    /// JSON pointer (`json`) or property name (built-in formats).
    pub(crate) key: String,
    /// Catalog path, possibly with `{n}` array ids from the topic.
    pub(crate) path: Template,
    /// The catalog entry (type and kind).
    pub(crate) entry: &'static Entry,
    /// Applied before the value is coerced to the entry's type.
    pub(crate) transform: Transform,
}

/// A device (and workspace) that a sensor's events carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedDevice {
    /// Device id.
    pub(crate) device: String,
    /// Workspace id.
    pub(crate) workspace: Option<String>,
}

/// The `[[devices]]` table: sensor id (case folded) → device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMap(std::collections::HashMap<String, NamedDevice>);

impl DeviceMap {
    /// Adds an entry; `false` when the sensor was named already.
    pub(crate) fn insert(&mut self, sensor: &str, d: NamedDevice) -> bool {
        self.0.insert(sensor.to_lowercase(), d).is_none()
    }

    /// The device a sensor id names.
    pub(crate) fn get(&self, sensor: &str) -> Option<&NamedDevice> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(&sensor.to_lowercase())
    }
}

/// How a webhook authenticates to its receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// No Authorization header (written explicitly as `auth = "none"`).
    None,
    /// Authorization header sent verbatim.
    Token(Secret),
    /// HTTP Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
}

impl Auth {
    /// The Authorization header value to send, if any.
    pub(crate) fn header_value(&self) -> Option<Secret> {
        use base64::Engine;
        match self {
            Auth::None => None,
            Auth::Token(t) => Some(t.clone()),
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                Some(Secret::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )))
            }
        }
    }
}

/// One webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// Unique name.
    pub(crate) name: String,
    /// HTTPS URL.
    pub(crate) url: hyper::Uri,
    /// Takes events.
    pub(crate) enabled: bool,
    /// Receiver authentication.
    pub(crate) auth: Auth,
    /// Trust anchors.
    pub(crate) trust: TlsTrust,
    /// Which devices.
    pub(crate) devices: DeviceSelector,
    /// Status patterns (catalog spelling).
    pub(crate) statuses: Vec<String>,
    /// Event patterns (catalog spelling).
    pub(crate) events: Vec<String>,
    /// Most requests in flight.
    pub(crate) max_in_flight: usize,
    /// Connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Whole-request timeout.
    pub(crate) request_timeout: Duration,
    /// First retry delay.
    pub(crate) retry_base: Duration,
    /// Longest retry delay.
    pub(crate) retry_max: Duration,
    /// Pacing and batching.
    pub(crate) pacing: Pacing,
    /// What gives way when the store is full.
    pub(crate) overflow: crate::value::overflow::Overflow,
    /// Events older than this are dropped.
    pub(crate) max_queue_age: Option<Duration>,
    /// Superseded status values leave the queue unsent (`conflate`).
    pub(crate) conflate: bool,
    /// Signs every request (Standard Webhooks) when set.
    pub(crate) signer: Option<crate::value::signing::Signer>,
    /// How request bodies go on the wire (gzip: batches of 1 KiB or more).
    pub(crate) compression: crate::value::compression::Compression,
    /// 0–9: while the uplink budget is the limit, a higher one goes first.
    pub(crate) priority: u8,
    /// Its share of the uplink budget among webhooks of the same priority, by bytes.
    pub(crate) uplink_weight: u32,
    /// Static extra headers (names lower-case, checked).
    pub(crate) headers: Vec<(String, String)>,
    /// Per-path noise filters, the most specific pattern first (the first that matches
    /// applies).
    pub(crate) filters: Vec<PathFilter>,
}

/// One webhook's noise filter for the statuses a pattern matches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PathFilter {
    /// Generic status path or `…*` pattern.
    pub(crate) pattern: String,
    /// Least change of a numeric value that goes out (0: any change).
    pub(crate) deadband: Option<f64>,
    /// Least time between two values of one device and path.
    pub(crate) min_interval: Option<Duration>,
}

/// The defaults of a webhook's optional keys that have a fixed default, as config values
/// (a number, or the text of a string): what the console's forms show. A test checks them
/// against the validator.
pub(crate) const WEBHOOK_DEFAULTS: &[(&str, &str)] = &[
    ("max_in_flight", "8"),
    ("connect_timeout", "5s"),
    ("request_timeout", "15s"),
    ("retry_base", "1s"),
    ("retry_max", "5m"),
    ("drain_start_jitter", "3s"),
    ("ordering", "device"),
    ("circuit_breaker_threshold", "5"),
    ("auth_retry", "60s"),
    ("batch_max_messages", "1"),
    ("batch_max_bytes", "1MiB"),
    ("batch_linger", "50ms"),
    ("overflow", "drop_oldest"),
    ("compression", "none"),
    ("conflate", "false"),
    ("priority", "5"),
    ("uplink_weight", "1"),
];

/// Whether a device's messages must stay in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ordering {
    /// One request in flight per device; a failed message is retried before the next.
    Device,
    /// No ordering: a device's messages may be in flight together.
    None,
}

impl Ordering {
    /// The config value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ordering::Device => "device",
            Ordering::None => "none",
        }
    }
}

/// How a webhook paces its receiver.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pacing {
    /// Requests per second (None: unlimited).
    pub(crate) rate_limit: Option<f64>,
    /// Token bucket size.
    pub(crate) burst: u32,
    /// Random delay before the first request after start-up.
    pub(crate) drain_start_jitter: Duration,
    /// Ordering.
    pub(crate) ordering: Ordering,
    /// Messages per request.
    pub(crate) batch_max_messages: usize,
    /// Largest batch body in bytes.
    pub(crate) batch_max_bytes: u64,
    /// Wait for a fuller batch at most this long.
    pub(crate) batch_linger: Duration,
    /// Failed requests in a row that open the circuit.
    pub(crate) circuit_breaker_threshold: u32,
    /// Retry interval while the receiver answers 401/403.
    pub(crate) auth_retry: Duration,
}

// ---------------------------------------------------------------------------------------
// Errors.

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub(crate) file: PathBuf,
    /// The key path (`webhooks[0].url`), empty for file-level problems.
    pub(crate) key: String,
    /// 1-based line, where known.
    pub(crate) line: Option<usize>,
    /// What is wrong.
    pub(crate) problem: String,
    /// How to fix it.
    pub(crate) fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "\n    fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn read(file: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            line: None,
            problem: format!("cannot read the config file: {e}"),
            fix: "check the path given with -c/--config and its permissions".into(),
        }])
    })
}

/// Reads, parses and validates a config file.
pub fn load(file: &Path) -> Result<Settings, ConfigErrors> {
    let text = read(file)?;
    load_str(file, &text)
}

/// The data directory and the control socket a config file names, without checking the
/// rest (the CLI needs only these, and may lack the daemon's secrets).
pub fn locations(file: &Path) -> Result<(PathBuf, PathBuf), ConfigErrors> {
    let text = read(file)?;
    /// Only what `locations` needs; everything else is ignored here.
    #[derive(Deserialize)]
    struct Lenient {
        gateway: LenientGateway,
        #[serde(default)]
        admin: LenientAdmin,
    }
    #[derive(Deserialize)]
    struct LenientGateway {
        data_dir: PathBuf,
    }
    #[derive(Deserialize, Default)]
    struct LenientAdmin {
        socket: Option<PathBuf>,
    }
    let raw: Lenient = toml::from_str(&text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            line: None,
            problem: e.message().trim().to_string(),
            fix: "roomhook check-config -c <file> shows every problem".into(),
        }])
    })?;
    let base = base_dir(file);
    let data_dir = base.join(&raw.gateway.data_dir);
    let socket = match &raw.admin.socket {
        Some(s) => base.join(s),
        None => data_dir.join("roomhook.sock"),
    };
    Ok((data_dir, socket))
}

pub(crate) fn base_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn parse<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            line,
            problem: e.message().trim().to_string(),
            fix: "correct the TOML at that line (see the configuration reference in README.md)"
                .into(),
        }])
    })
}

/// Loads a config for `roomhook source test NAME`: like [`load`], except that a RoomOS source
/// of that name without `pin_sha256` or `ca_file` gets a pin no certificate matches, so the
/// test can show the device's certificate (and the fingerprint to pin) without trusting it.
/// The bool says whether that happened.
pub(crate) fn load_for_source_test(
    file: &Path,
    name: &str,
) -> Result<(Settings, bool), ConfigErrors> {
    let text = read(file)?;
    let mut raw: RawConfig = parse(file, &text)?;
    let mut unpinned = false;
    for r in raw.sources.roomos.iter_mut().filter(|r| r.name == name) {
        if r.pin_sha256.is_none() && r.ca_file.is_none() && !r.url.starts_with("ws://") {
            r.pin_sha256 = Some("00".repeat(32));
            unpinned = true;
        }
    }
    validate(&raw, base_dir(file), file)
        .map(|s| (s, unpinned))
        .map_err(|mut errs| {
            for e in &mut errs.0 {
                if e.line.is_none() && !e.key.is_empty() {
                    e.line = locate::line_of(&text, &e.key);
                }
            }
            errs
        })
}

/// Parses and validates config text that came from `file`, with the last good fleet
/// document merged in when `[fleet] config_url` is set and one was kept.
pub fn load_str(file: &Path, text: &str) -> Result<Settings, ConfigErrors> {
    let raw: RawConfig = parse(file, text)?;
    let kept =
        fleet::kept_path(&raw, file).and_then(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)));
    if let Some((label, doc)) = kept {
        // A document that no longer fits (a source renamed, a file gone) must not keep the
        // gateway from starting: the local file runs alone, and the reason is shown.
        let merged = fleet::check(file, text, raw, &label, &doc)
            .and_then(|s| fleet::check_kept_signature(s, &label, &doc));
        return match merged {
            Ok(s) => Ok(s),
            Err(mut errs) => {
                // The local file alone does not check either (it leaves to the document what
                // the document set): the document's errors, with the way out.
                // Read again rather than cloned (a clone of the whole model costs the
                // gateway binary some 9 KB).
                let raw: RawConfig = parse(file, text)?;
                let Ok(mut s) = local(&raw, file, text) else {
                    for e in errs.0.iter_mut().filter(|e| e.file == label) {
                        e.fix = format!(
                            "{}; or delete {} (the kept fleet document) and make the local file check alone",
                            e.fix,
                            label.display()
                        );
                    }
                    return Err(errs);
                };
                s.fleet_kept_refused = Some(format!(
                    "the kept fleet document {kept} is left out (it no longer fits the local file, or is not signed for config_public_key), and the local file runs alone until a pull brings one that checks:\n{errs}\nfix: correct the document served at [fleet] config_url (the next pull replaces the kept one), or delete {kept}",
                    kept = label.display()
                ));
                Ok(s)
            }
        };
    }
    local(&raw, file, text)
}

/// The local file's `raw` (its `text`) checked alone.
fn local(raw: &RawConfig, file: &Path, text: &str) -> Result<Settings, ConfigErrors> {
    validate(raw, base_dir(file), file).map_err(|mut errs| {
        for e in &mut errs.0 {
            if e.line.is_none() && !e.key.is_empty() {
                e.line = locate::line_of(text, &e.key);
            }
        }
        errs
    })
}

/// The config `file` with a fleet document (`doc`, from `label`: its URL) merged in,
/// checked like [`load`].
pub(crate) fn load_fleet(file: &Path, label: &Path, doc: &str) -> Result<Settings, ConfigErrors> {
    let text = read(file)?;
    let raw: RawConfig = parse(file, &text)?;
    fleet::check(file, &text, raw, label, doc)
}
