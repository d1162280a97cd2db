//! `roomhook webhook …`: the operator's commands against a running daemon, sent to its
//! control API over the Unix socket, with answers printed for people (or as JSON).

use crate::admin::api::{
    DeadLetterList, DeleteAnswer, EditAnswer, ProbeReport, ReplayAnswer, StatusReport, TestAnswer,
    WebhookList,
};
use clap::{Args, Subcommand};
use hyper::Method;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What to do with sources.
#[derive(Subcommand)]
pub enum SourceAction {
    /// Connect to a RoomOS device as the daemon would: TLS certificate and its SHA-256 (for
    /// pin_sha256), product and serial number, and which subscriptions the device accepts.
    Test {
        /// Source name (`[[sources.roomos]] name`).
        name: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
    },
}

/// `roomhook source …`; exit 0 when everything works, 1 when not, 2 for a bad config.
pub async fn source(config: PathBuf, action: SourceAction) -> ExitCode {
    let SourceAction::Test { name, timeout } = action;
    let (settings, unpinned) = match crate::config::load_for_source_test(&config, &name) {
        Ok(s) => s,
        Err(errs) => {
            eprintln!("{errs}");
            return ExitCode::from(2);
        }
    };
    let Some(s) = settings.roomos.iter().find(|r| r.name == name) else {
        let known: Vec<&str> = settings.roomos.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "roomhook source: no [[sources.roomos]] named {name:?} in {} (RoomOS sources: {})",
            config.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(2);
    };
    if unpinned {
        println!("(no pin_sha256 or ca_file yet: the certificate is shown, not trusted, and no credentials are sent)");
    }
    let report = crate::source::roomos::probe::test(
        s,
        std::time::Duration::from_secs_f64(timeout.clamp(1.0, 600.0)),
        unpinned,
    )
    .await;
    for line in &report.lines {
        println!("{line}");
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The daemon takes files only relative to its config directory (or from
/// `$CREDENTIALS_DIRECTORY`): a `--*-file` inside that directory is sent relative to it; one
/// elsewhere is refused here, with the fix.
fn relative_files(config: &Path, m: &mut Map<String, Value>) -> Result<(), String> {
    let dir = crate::config::base_dir(config);
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for (key, v) in m.iter_mut() {
        let Some(p) = v.as_str().filter(|_| key.ends_with("_file")) else {
            continue;
        };
        let full = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        match full.strip_prefix(&dir) {
            Ok(rel) => *v = Value::from(rel.to_string_lossy().to_string()),
            Err(_) if Path::new(p).is_relative() => {}
            Err(_) => {
                return Err(format!(
                    "--{}: {p} is outside {} (the config file's directory); copy it there, or under $CREDENTIALS_DIRECTORY, and name it from there",
                    key.replace('_', "-"),
                    dir.display()
                ))
            }
        }
    }
    Ok(())
}

/// What to do with webhooks.
#[derive(Subcommand)]
pub enum WebhookAction {
    /// Every webhook: state, queue, dead letters, last error.
    List {
        /// Print the JSON the control API returns.
        #[arg(long)]
        json: bool,
    },
    /// One webhook's settings (secrets redacted) and live figures, as JSON.
    Show {
        /// Webhook name.
        name: String,
    },
    /// Add a webhook: it is saved only after its receiver answers a healthCheck with 200.
    Add {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// HTTPS URL of the receiver.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        fields: Fields,
        /// Save without verifying; the webhook stays disabled until `webhook enable` verifies it.
        #[arg(long)]
        no_verify: bool,
    },
    /// Change a webhook; a new URL or new credentials are verified first.
    Set {
        /// Webhook name.
        name: String,
        /// New name (the queue moves with it).
        #[arg(long = "name", value_name = "NEW_NAME")]
        rename: Option<String>,
        /// New HTTPS URL.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        fields: Fields,
        /// Apply without verifying the receiver.
        #[arg(long)]
        no_verify: bool,
    },
    /// Delete a webhook and its queue; prints how many queued events were discarded.
    Delete {
        /// Webhook name.
        name: String,
    },
    /// Send a healthCheck now, outside the queue: status, latency, TLS version, certificate.
    Test {
        /// Webhook name.
        name: String,
    },
    /// Enable a webhook (verifies the receiver first).
    Enable {
        /// Webhook name.
        name: String,
        /// Enable without verifying.
        #[arg(long)]
        no_verify: bool,
    },
    /// Disable a webhook: it enqueues nothing and sends nothing; its queue is kept.
    Disable {
        /// Webhook name.
        name: String,
    },
    /// The messages the receiver refused for good, with its status and answer.
    DeadLetters {
        /// Webhook name.
        name: String,
    },
    /// Put dead letters back into the queue.
    Replay {
        /// Webhook name.
        name: String,
        /// Replay the dead letters (the only kind of replay: delivered events are not kept).
        #[arg(long)]
        dead_letters: bool,
        /// Only those that died at or after this time: RFC 3339, or an age such as "2h".
        #[arg(long)]
        since: Option<String>,
    },
}

/// Settings shared by `add` and `set`; each maps to the config key of the same name.
#[derive(Args, Default, Clone)]
pub struct Fields {
    /// Authorization header value, sent verbatim (e.g. "Bearer …"). Prefer --authorization-file.
    #[arg(long, group = "authn")]
    authorization: Option<String>,
    /// File holding the Authorization header value.
    #[arg(long, group = "authn")]
    authorization_file: Option<PathBuf>,
    /// Basic auth user name (with --password-file or --password).
    #[arg(long, group = "authn")]
    username: Option<String>,
    /// Basic auth password file.
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
    /// Basic auth password. Prefer --password-file.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// Send no Authorization header.
    #[arg(long, group = "authn")]
    no_auth: bool,
    /// PEM file of a private CA that signed the receiver's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "client_key_file")]
    client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// Device ids or globs, comma-separated ("*" for all).
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<String>>,
    /// Statuses from the catalog, comma-separated ("RoomAnalytics.*" allowed).
    #[arg(long, value_delimiter = ',')]
    statuses: Option<Vec<String>>,
    /// Events from the catalog, comma-separated.
    #[arg(long, value_delimiter = ',')]
    events: Option<Vec<String>>,
    /// Standard Webhooks signing secret file (whsec_…).
    #[arg(long)]
    signing_secret_file: Option<PathBuf>,
    /// Request-body compression: gzip (Content-Encoding: gzip on bodies of 1 KiB or more;
    /// the healthCheck goes compressed to show the receiver takes it) or none (the default).
    #[arg(long, value_parser = ["none", "gzip"])]
    compression: Option<String>,
    /// true: a queued status value that a newer one of the same device and path supersedes
    /// leaves unsent (after an outage the receiver gets current values, and every event).
    #[arg(long, value_name = "true|false")]
    conflate: Option<bool>,
    /// 0 (lowest) to 9 (highest; default 5): while [gateway] uplink_bytes_per_s is the limit,
    /// the webhooks of a higher priority go first.
    #[arg(long, value_name = "0-9")]
    priority: Option<u8>,
    /// Its share of the uplink budget among webhooks of the same priority, by bytes (default 1).
    #[arg(long, value_name = "N")]
    uplink_weight: Option<u32>,
    /// Extra header sent with every request, "Name: value" (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Any other config key, KEY=VALUE with a JSON or plain value, e.g. rate_limit=50 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl Fields {
    /// The config keys these flags set.
    fn into_map(self) -> Result<Map<String, Value>, String> {
        let mut m = Map::new();
        // A path that exists from here is made absolute (then relative to the config
        // directory); one that does not is a name in that directory or in
        // $CREDENTIALS_DIRECTORY, sent as written.
        let path = |p: PathBuf| -> Value {
            if p.is_relative() && !p.exists() {
                return Value::from(p.to_string_lossy().to_string());
            }
            Value::from(
                std::path::absolute(&p)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .to_string(),
            )
        };
        if let Some(v) = self.authorization {
            m.insert("authorization".into(), v.into());
        }
        if let Some(v) = self.authorization_file {
            m.insert("authorization_file".into(), path(v));
        }
        if let Some(v) = self.username {
            m.insert("username".into(), v.into());
        }
        if let Some(v) = self.password_file {
            m.insert("password_file".into(), path(v));
        }
        if let Some(v) = self.password {
            m.insert("password".into(), v.into());
        }
        if self.no_auth {
            m.insert("auth".into(), "none".into());
        }
        if let Some(v) = self.ca_file {
            m.insert("ca_file".into(), path(v));
        }
        if let Some(v) = self.client_cert_file {
            m.insert("client_cert_file".into(), path(v));
        }
        if let Some(v) = self.client_key_file {
            m.insert("client_key_file".into(), path(v));
        }
        for (k, v) in [
            ("devices", self.devices),
            ("statuses", self.statuses),
            ("events", self.events),
        ] {
            if let Some(list) = v {
                let list: Vec<Value> = list
                    .into_iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map(Value::from)
                    .collect();
                m.insert(k.into(), Value::Array(list));
            }
        }
        if let Some(v) = self.signing_secret_file {
            m.insert("signing_secret_file".into(), path(v));
        }
        if let Some(v) = self.compression {
            m.insert("compression".into(), v.into());
        }
        if let Some(v) = self.conflate {
            m.insert("conflate".into(), v.into());
        }
        if let Some(v) = self.priority {
            m.insert("priority".into(), v.into());
        }
        if let Some(v) = self.uplink_weight {
            m.insert("uplink_weight".into(), v.into());
        }
        if !self.headers.is_empty() {
            let mut h = Map::new();
            for raw in self.headers {
                let (k, v) = raw
                    .split_once(':')
                    .ok_or_else(|| format!("--header {raw:?}: write \"Name: value\""))?;
                h.insert(k.trim().to_string(), v.trim().into());
            }
            m.insert("headers".into(), Value::Object(h));
        }
        for raw in self.set {
            let (k, v) = raw
                .split_once('=')
                .ok_or_else(|| format!("--set {raw:?}: write KEY=VALUE, e.g. rate_limit=50"))?;
            let value = serde_json::from_str(v.trim()).unwrap_or_else(|_| Value::from(v.trim()));
            m.insert(k.trim().to_string(), value);
        }
        Ok(m)
    }
}

fn parse_since(raw: &str) -> Result<i64, String> {
    if let Ok(d) = crate::config::units::parse_duration(raw) {
        return Ok(crate::timefmt::now_ms() - d.as_millis() as i64);
    }
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            format!(
                "--since {raw:?}: write an RFC 3339 time (2026-11-27T10:00:00Z) or an age (\"2h\")"
            )
        })
}

/// The control socket named by `--socket`, or by the config file.
pub(crate) fn socket_of(config: &Path, socket: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    if let Some(s) = socket {
        return Ok(s);
    }
    crate::config::locations(config)
        .map(|(_, socket)| socket)
        .map_err(|errs| {
            eprintln!("{errs}\n(or name the control socket with --socket)");
            ExitCode::from(2)
        })
}

fn verify_query(no_verify: bool) -> &'static str {
    if no_verify {
        "?verify=false"
    } else {
        ""
    }
}

/// Runs one `roomhook webhook …` command.
pub async fn webhook(config: PathBuf, socket: Option<PathBuf>, action: WebhookAction) -> ExitCode {
    let socket = match socket_of(&config, socket) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = match request_for(&action) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (method, path, mut body) = request;
    if let Some(Value::Object(m)) = body.as_mut() {
        if let Err(e) = relative_files(&config, m) {
            eprintln!("roomhook webhook: {e}");
            return ExitCode::from(2);
        }
    }
    let (status, body) = match crate::admin::control::call(&socket, method, &path, body).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !status.is_success() {
        eprintln!(
            "roomhook webhook: {}",
            body["error"].as_str().unwrap_or("request failed")
        );
        return ExitCode::FAILURE;
    }
    match print_answer(&action, &body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomhook webhook {}: {e}", action.verb());
            ExitCode::FAILURE
        }
    }
}

type Call = (Method, String, Option<Value>);

fn request_for(action: &WebhookAction) -> Result<Call, String> {
    let enc = |n: &str| {
        n.replace('%', "%25")
            .replace('/', "%2F")
            .replace(' ', "%20")
    };
    Ok(match action {
        WebhookAction::List { .. } => (Method::GET, "/v1/webhooks".to_string(), None),
        WebhookAction::Show { name } => (Method::GET, format!("/v1/webhooks/{}", enc(name)), None),
        WebhookAction::Add {
            name,
            url,
            fields,
            no_verify,
        } => {
            let mut m = fields.clone().into_map()?;
            m.insert("name".into(), name.clone().into());
            m.insert("url".into(), url.clone().into());
            (
                Method::POST,
                format!("/v1/webhooks{}", verify_query(*no_verify)),
                Some(Value::Object(m)),
            )
        }
        WebhookAction::Set {
            name,
            rename,
            url,
            fields,
            no_verify,
        } => {
            let mut m = fields.clone().into_map()?;
            if let Some(n) = rename {
                m.insert("name".into(), n.clone().into());
            }
            if let Some(u) = url {
                m.insert("url".into(), u.clone().into());
            }
            if m.is_empty() {
                return Err("roomhook webhook set: nothing to change (see --help)".into());
            }
            (
                Method::PATCH,
                format!("/v1/webhooks/{}{}", enc(name), verify_query(*no_verify)),
                Some(Value::Object(m)),
            )
        }
        WebhookAction::Delete { name } => {
            (Method::DELETE, format!("/v1/webhooks/{}", enc(name)), None)
        }
        WebhookAction::Test { name } => (
            Method::POST,
            format!("/v1/webhooks/{}/test", enc(name)),
            None,
        ),
        WebhookAction::Enable { name, no_verify } => (
            Method::POST,
            format!(
                "/v1/webhooks/{}/enable{}",
                enc(name),
                verify_query(*no_verify)
            ),
            None,
        ),
        WebhookAction::Disable { name } => (
            Method::POST,
            format!("/v1/webhooks/{}/disable", enc(name)),
            None,
        ),
        WebhookAction::DeadLetters { name } => (
            Method::GET,
            format!("/v1/webhooks/{}/dead-letters", enc(name)),
            None,
        ),
        WebhookAction::Replay {
            name,
            dead_letters,
            since,
        } => {
            if !dead_letters {
                return Err("roomhook keeps no delivered events, so only dead letters can be replayed: add --dead-letters".into());
            }
            let since_ms = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
            (
                Method::POST,
                format!("/v1/webhooks/{}/replay?since_ms={since_ms}", enc(name)),
                None,
            )
        }
    })
}

impl WebhookAction {
    /// The verb as typed (for messages).
    fn verb(&self) -> &'static str {
        match self {
            WebhookAction::List { .. } => "list",
            WebhookAction::Show { .. } => "show",
            WebhookAction::Add { .. } => "add",
            WebhookAction::Set { .. } => "set",
            WebhookAction::Delete { .. } => "delete",
            WebhookAction::Test { .. } => "test",
            WebhookAction::Enable { .. } => "enable",
            WebhookAction::Disable { .. } => "disable",
            WebhookAction::DeadLetters { .. } => "dead-letters",
            WebhookAction::Replay { .. } => "replay",
        }
    }
}

fn describe_check(r: &ProbeReport) -> String {
    format!(
        "HTTP {} in {:.1} ms over {}{}; certificate {} (issuer {}), expires {}",
        r.status,
        r.latency_ms,
        r.tls_version,
        if r.compressed {
            ", gzip-compressed"
        } else {
            ""
        },
        r.peer_subject,
        r.peer_issuer,
        r.peer_not_after,
    )
}

/// The control API's answer as the type it is (a daemon of another version may answer
/// otherwise: said, not guessed).
fn answer<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, String> {
    T::deserialize(body).map_err(|e| {
        format!(
            "the daemon's answer is not what this roomhook expects ({e}); is it another version?"
        )
    })
}

fn print_answer(action: &WebhookAction, body: &Value) -> Result<(), String> {
    let verified = |e: &EditAnswer| match &e.verified {
        Some(r) => format!(" (verified: {})", describe_check(r)),
        None => String::new(),
    };
    match action {
        WebhookAction::List { json: false } => {
            let list: WebhookList = answer(body)?;
            println!(
                "{:<20} {:<13} {:>8} {:>6}  {:<40} LAST ERROR",
                "WEBHOOK", "STATE", "QUEUED", "DEAD", "URL"
            );
            for w in &list.webhooks {
                let status = w.status.as_ref();
                println!(
                    "{:<20} {:<13} {:>8} {:>6}  {:<40} {}",
                    w.name,
                    status.map_or("", |s| s.state.as_str()),
                    w.queue.events,
                    w.queue.dead_letters,
                    w.url,
                    status
                        .and_then(|s| s.last_error.as_ref())
                        .map_or("-", |e| e.message.as_str()),
                );
            }
        }
        WebhookAction::Add {
            name, no_verify, ..
        } => {
            if *no_verify {
                println!("webhook {name} saved disabled, not verified; `roomhook webhook enable {name}` verifies and enables it");
            } else {
                println!("webhook {name} added{}", verified(&answer(body)?));
            }
        }
        WebhookAction::Set { name, .. } => {
            let e: EditAnswer = answer(body)?;
            let now = e
                .webhook
                .as_ref()
                .map_or(name.as_str(), |w| w.name.as_str());
            println!("webhook {now} changed{}", verified(&e));
        }
        WebhookAction::Enable { name, .. } => {
            println!("webhook {name} enabled{}", verified(&answer(body)?))
        }
        WebhookAction::Disable { name } => println!("webhook {name} disabled (queue kept)"),
        WebhookAction::Delete { name } => {
            let d: DeleteAnswer = answer(body)?;
            println!(
                "webhook {name} deleted; {} queued event(s) discarded",
                d.discarded
            )
        }
        WebhookAction::Test { name } => {
            let t: TestAnswer = answer(body)?;
            println!("healthCheck to {name}: {}", describe_check(&t.test));
            if !t.test.body.is_empty() {
                println!("answer: {}", t.test.body);
            }
            if let Err(e @ crate::deliver::probe::ProbeError::Compression { .. }) =
                t.test.verified()
            {
                return Err(e.to_string());
            }
            if t.test.status != 200 {
                return Err(format!(
                    "the receiver answered HTTP {}, not 200",
                    t.test.status
                ));
            }
        }
        WebhookAction::DeadLetters { .. } => {
            let list: DeadLetterList = answer(body)?;
            for d in &list.dead_letters {
                let field = |k: &str| d.event.get(k).cloned().unwrap_or(Value::Null);
                println!(
                    "{}  HTTP {}  {} {}={}  {}",
                    d.at,
                    d.status.map_or("-".to_string(), |s| s.to_string()),
                    field("d").as_str().unwrap_or(""),
                    field("p").as_str().unwrap_or(""),
                    field("v"),
                    d.reason,
                );
            }
        }
        WebhookAction::Replay { name, .. } => {
            let r: ReplayAnswer = answer(body)?;
            println!("{} dead letter(s) of {name} back in the queue", r.replayed)
        }
        WebhookAction::List { json: true } | WebhookAction::Show { .. } => {
            println!("{}", serde_json::to_string_pretty(body).unwrap_or_default())
        }
    }
    Ok(())
}

/// Seconds as "45s", "12m", "3h", "2d".
fn human_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes as "512 B", "12.3 KiB", "4.5 MiB", "1.2 GiB".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// The `roomhook status` table, from the control API's `/v1/status` answer.
pub(crate) fn render_status(s: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let store = &s.store;
    let _ = writeln!(
        out,
        "roomhook {} — {}; store {} of {}, {} failed commit(s){}",
        s.version,
        if s.ready { "ready" } else { "NOT READY" },
        mib(store.bytes),
        mib(store.max_bytes),
        store.errors,
        if store.ok { "" } else { " — FAILING NOW" },
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<18} {:<12} {:>5}  {:>20}  {:>14}  {:>10}  {:>7} {:>6} {:>5}  LAST ERROR",
        "WEBHOOK",
        "STATE",
        "FOR",
        "DELIVERED 5m/1h/24h",
        "ERRORS 5m/1h/24h",
        "SENT 24h",
        "QUEUED",
        "OLDEST",
        "LIMIT"
    );
    for w in &s.webhooks {
        let r = &w.recent;
        let last = match &w.last_error {
            Some(e) => format!("{} ago: {}", human_age(e.age_s), e.message),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:<12} {:>5}  {:>20}  {:>14}  {:>10}  {:>7} {:>6} {:>5}  {}",
            w.name,
            w.state,
            human_age(w.state_age_s),
            format!("{}/{}/{}", r.delivered_5m, r.delivered_1h, r.delivered_24h),
            format!("{}/{}/{}", r.errors_5m, r.errors_1h, r.errors_24h),
            human_bytes(r.bytes_24h),
            w.queue.events,
            w.queue.oldest_age_s.map_or("-".into(), human_age),
            w.in_flight_limit,
            last.chars().take(100).collect::<String>(),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<18} {:<10} {:>5}  {:>10}  {:>13}  LAST MESSAGE",
        "SOURCE", "CONNECTED", "FOR", "MESSAGES", "DECODE ERRORS"
    );
    for src in &s.sources {
        let _ = writeln!(
            out,
            "{:<18} {:<10} {:>5}  {:>10}  {:>13}  {}",
            src.name,
            if src.connected { "yes" } else { "NO" },
            human_age(src.state_age_s),
            src.messages,
            src.decode_errors,
            src.last_message_age_s
                .map_or("never".into(), |a| format!("{} ago", human_age(a))),
        );
        if !src.connected {
            if let Some(e) = &src.last_error {
                let _ = writeln!(
                    out,
                    "  last error: {}",
                    e.chars().take(200).collect::<String>()
                );
            }
        }
        for f in &src.failed_subscriptions {
            let _ = writeln!(out, "  refused subscription {f}");
        }
    }
    if !s.orphans.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "ORPHANED QUEUES (their webhook left the config; kept, not delivered; a webhook of that name takes one back)"
        );
        for o in &s.orphans {
            let _ = writeln!(
                out,
                "- {}: {} event(s), since {}",
                o.name, o.events, o.since
            );
        }
    }
    if let Some(f) = &s.fleet {
        let _ = writeln!(out);
        let _ = writeln!(out, "FLEET (gateway {})", f.gateway);
        let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.into());
        if let Some(url) = &f.config_url {
            let _ = writeln!(
                out,
                "config   {url}: {} {}; in force: {}",
                or(&f.result, "not pulled yet"),
                or(&f.at, ""),
                f.config_sha256
                    .as_ref()
                    .map_or("the local file's webhooks".into(), |h| format!(
                        "document sha256 {}, applied {}",
                        h.get(..12).unwrap_or(h),
                        or(&f.applied_at, "before this start")
                    )),
            );
            if let Some(r) = &f.reason {
                for line in r.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        if let Some(url) = &f.report_url {
            let _ = writeln!(
                out,
                "reports  {url}: {} {}",
                or(&f.report_result, "none yet"),
                or(&f.report_at, "")
            );
        }
    }
    if !s.problems.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "PROBLEMS");
        for p in &s.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

/// `roomhook status`: the table (or JSON); with `watch`, redrawn every so often.
pub async fn status(
    config: PathBuf,
    socket: Option<PathBuf>,
    json: bool,
    watch: Option<std::time::Duration>,
) -> ExitCode {
    let socket = match socket_of(&config, socket) {
        Ok(s) => s,
        Err(c) => return c,
    };
    loop {
        let body = match crate::admin::control::call(&socket, Method::GET, "/v1/status", None).await
        {
            Ok((s, body)) if s.is_success() => body,
            Ok((_, body)) => {
                eprintln!(
                    "roomhook status: {}",
                    body["error"].as_str().unwrap_or("failed")
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let report = match StatusReport::deserialize(&body) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("roomhook status: the daemon's answer is not a status report ({e}); is it another version?");
                return ExitCode::FAILURE;
            }
        };
        let text = if json {
            serde_json::to_string_pretty(&body).unwrap_or_default()
        } else {
            render_status(&report)
        };
        match watch {
            None => {
                println!("{text}");
                return if report.ready {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                };
            }
            Some(every) => {
                // Clear the screen, home the cursor, draw.
                print!("\x1b[2J\x1b[H{text}");
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_become_config_keys() {
        let f = Fields {
            authorization_file: Some("/run/tok".into()),
            devices: Some(vec!["room-*".into(), " lobby ".into()]),
            headers: vec!["X-Site: Oslo".into()],
            compression: Some("gzip".into()),
            conflate: Some(true),
            priority: Some(9),
            uplink_weight: Some(3),
            set: vec!["rate_limit=50".into(), "batch_linger=100ms".into()],
            ..Fields::default()
        };
        let m = f.into_map().unwrap();
        assert_eq!(m["authorization_file"], json!("/run/tok"));
        assert_eq!(m["devices"], json!(["room-*", "lobby"]));
        assert_eq!(m["headers"], json!({"X-Site": "Oslo"}));
        assert_eq!(m["rate_limit"], json!(50));
        assert_eq!(m["batch_linger"], json!("100ms"));
        assert_eq!(m["compression"], json!("gzip"));
        assert_eq!(m["conflate"], json!(true));
        assert_eq!(
            (&m["priority"], &m["uplink_weight"]),
            (&json!(9), &json!(3))
        );
        let bad = Fields {
            headers: vec!["nocolon".into()],
            ..Fields::default()
        };
        assert!(bad.into_map().is_err());
    }
}
