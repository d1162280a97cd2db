//! The local control API: JSON over HTTP on a Unix socket (mode 0600) that the `roomhook
//! webhook …` commands talk to (and on the TCP admin listener with a bearer token): list,
//! show, add, set, delete, test, enable, disable webhooks; dead letters and replay; reload.

use super::api::{
    AuthView, DeadLetterList, DeadLetterReport, DeleteAnswer, EditAnswer, QueueBrief, ReplayAnswer,
    StatusView, TestAnswer, WebhookDescription, WebhookList,
};
use crate::config::edit::{Edit, EditError};
use crate::config::Auth;
use crate::supervisor::{ActionError, Edited, Supervisor, WebhookView};
use crate::timefmt::human_duration;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// Everything the control API serves.
pub(crate) struct Control {
    /// The running webhooks and sources.
    pub(crate) supervisor: Arc<Supervisor>,
}

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// Another roomhook answers on it.
    #[error("another roomhook is running on the control socket {0}")]
    InUse(PathBuf),
    /// File-system trouble.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds the socket, mode 0600 from its creation (never briefly open to others). Only a
/// stale *socket* left by a crashed daemon is removed; any other file there is an error.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    use std::os::unix::fs::FileTypeExt;
    let io = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; move it, or choose another [admin] socket",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // The umask is process-wide: the daemon creates no other file while it binds (start-up).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound.map_err(io)
}

/// Serves the control API until shutdown, then removes the socket file.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let control = control.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, control.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

type Reply = Result<Response<Full<Bytes>>, Infallible>;

/// A JSON answer.
pub(crate) fn reply(status: StatusCode, body: Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn not_found(what: &str) -> Reply {
    reply(
        StatusCode::NOT_FOUND,
        json!({ "error": format!("no webhook named {what:?}") }),
    )
}

fn failed(e: &ActionError) -> Reply {
    let status = match e {
        ActionError::Unknown(_) => StatusCode::NOT_FOUND,
        ActionError::Edit(EditError::Unknown(_)) => StatusCode::NOT_FOUND,
        ActionError::Edit(EditError::Exists(_)) => StatusCode::CONFLICT,
        ActionError::Edit(_) | ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
        ActionError::Verify(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ActionError::NoFile | ActionError::File { .. } | ActionError::Conflict(_) => {
            StatusCode::CONFLICT
        }
        ActionError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ActionError::Runtime(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body = json!({ "error": e.to_string() });
    if let ActionError::Verify(p) = e {
        body["verify"] = serde_json::to_value(p).unwrap_or(Value::Null);
    }
    reply(status, body)
}

/// A webhook's settings and live figures, secrets redacted (header values too: they often
/// carry API keys).
pub(crate) fn describe(store: &crate::store::Store, w: &WebhookView) -> WebhookDescription {
    let s = &w.settings;
    let status = w.status.lock().ok().map(|st| StatusView::from(&*st));
    let auth = match &s.auth {
        Auth::None => AuthView::None,
        Auth::Token(_) => AuthView::Authorization {
            value: "***".into(),
        },
        Auth::Basic { username, .. } => AuthView::Basic {
            username: username.clone(),
            password: "***".into(),
        },
    };
    WebhookDescription {
        name: s.name.clone(),
        url: crate::redact::url(&s.url.to_string()),
        enabled: s.enabled,
        auth,
        signed: s.signer.is_some(),
        headers: s
            .headers
            .iter()
            .map(|(k, _)| (k.clone(), "***".to_string()))
            .collect(),
        ca_file: s.trust.ca_file.clone(),
        client_cert_file: s.trust.client_identity.as_ref().map(|(c, _)| c.clone()),
        client_key_file: s.trust.client_identity.as_ref().map(|(_, k)| k.clone()),
        devices: s.devices.patterns().to_vec(),
        statuses: s.statuses.clone(),
        events: s.events.clone(),
        overflow: s.overflow,
        compression: s.compression,
        conflate: s.conflate,
        priority: s.priority,
        uplink_weight: s.uplink_weight,
        rate_limit: s.pacing.rate_limit,
        batch_max_messages: s.pacing.batch_max_messages,
        max_in_flight: s.max_in_flight,
        connect_timeout: human_duration(s.connect_timeout),
        request_timeout: human_duration(s.request_timeout),
        retry_base: human_duration(s.retry_base),
        retry_max: human_duration(s.retry_max),
        burst: s.pacing.burst,
        drain_start_jitter: human_duration(s.pacing.drain_start_jitter),
        ordering: s.pacing.ordering.as_str().to_string(),
        circuit_breaker_threshold: s.pacing.circuit_breaker_threshold,
        auth_retry: human_duration(s.pacing.auth_retry),
        batch_max_bytes: s.pacing.batch_max_bytes,
        batch_linger: human_duration(s.pacing.batch_linger),
        max_queue_age: s.max_queue_age.map(human_duration),
        status,
        queue: QueueBrief {
            events: store.depth(w.id),
            bytes: store.bytes(w.id),
            dead_letters: store.dead_count(w.id),
        },
    }
}

/// A typed answer as JSON.
fn json_of<T: serde::Serialize>(answer: &T) -> Value {
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

/// Most bytes of a request body the control API reads.
const MAX_REQUEST: usize = 64 * 1024;

async fn json_body(req: Request<Incoming>) -> Result<serde_json::Map<String, Value>, String> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| format!("cannot read the request body: {e}"))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body must be a JSON object of config keys".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// Keys of a webhook whose file is a secret (sent to the receiver, or proving who roomhook
/// is): through the API they may name only a webhook secret (see [`confine_files`]).
const SECRET_FILE_KEYS: [&str; 4] = [
    "authorization_file",
    "password_file",
    "signing_secret_file",
    "client_key_file",
];

/// Where webhook secrets named through the API live, beside the config file.
pub(crate) const WEBHOOK_SECRETS_DIR: &str = "secrets/webhooks";

/// File references made through the API for webhook `name` (`None`: a new one) going to
/// `url`. Every file stays inside the config directory or `$CREDENTIALS_DIRECTORY`:
/// relative, without `..` (otherwise an API caller could have any file the daemon can read
/// sent to a URL of its choosing as a header). A secret file (authorization, password,
/// signing secret, client key) must moreover be a webhook secret: under
/// `secrets/webhooks/` beside the config or a credential, never a file the sources or
/// `[admin]` use (a device's password, the admin token), and never another webhook's unless
/// that one goes to the same origin.
fn confine_files(
    values: &serde_json::Map<String, Value>,
    sup: &Supervisor,
    name: Option<&str>,
) -> Result<(), String> {
    let (config_file, data_dir) = sup.paths();
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let config_dir = crate::config::base_dir(config_file);
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").and_then(|d| canon(Path::new(&d)));
    let allowed: Vec<PathBuf> = std::iter::once(canon(config_dir))
        .chain(std::iter::once(credentials.clone()))
        .flatten()
        .collect();
    let webhook_secrets: Vec<PathBuf> =
        std::iter::once(canon(&config_dir.join(WEBHOOK_SECRETS_DIR)))
            .chain(std::iter::once(credentials))
            .flatten()
            .collect();
    let forbidden_file = canon(config_file);
    let forbidden_dir = canon(data_dir);
    let url = values
        .get("url")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            name.and_then(|n| sup.webhook(n))
                .map(|w| w.settings.url.to_string())
        });
    let mut uses: Option<FileUses> = None;
    for (key, v) in values {
        let Some(p) = v.as_str().filter(|_| key.ends_with("_file")) else {
            continue;
        };
        let outside = || {
            format!(
                "{key}: {p:?} is outside the config directory; through the control API, files are named relative to the config file's directory (or $CREDENTIALS_DIRECTORY), without '..' — put the file there"
            )
        };
        let path = Path::new(p);
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(outside());
        }
        // Where it really is (symlinks followed), the way the config resolves it.
        let resolved = crate::config::secret::secret_path(config_dir, path);
        let Some(real) = canon(&resolved) else {
            continue; // missing: the config check says so, and there is nothing to read
        };
        if !allowed.iter().any(|a| real.starts_with(a)) {
            return Err(outside());
        }
        if Some(&real) == forbidden_file.as_ref()
            || forbidden_dir.as_ref().is_some_and(|d| real.starts_with(d))
        {
            return Err(format!(
                "{key}: {p:?} is roomhook's own config or store, not a secret file"
            ));
        }
        if !SECRET_FILE_KEYS.contains(&key.as_str()) {
            continue;
        }
        let uses = uses.get_or_insert_with(|| FileUses::of(config_file, config_dir));
        if let Some(user) = uses.local.iter().find(|(f, _)| *f == real).map(|(_, u)| u) {
            return Err(format!(
                "{key}: {p:?} is {user}'s secret, not a webhook's: a webhook cannot send it anywhere"
            ));
        }
        if !webhook_secrets.iter().any(|a| real.starts_with(a)) {
            return Err(format!(
                "{key}: {p:?} is not a webhook secret; through the control API a webhook's secrets are read only from {WEBHOOK_SECRETS_DIR}/ beside the config file (or $CREDENTIALS_DIRECTORY) — put the file there and name it \"{WEBHOOK_SECRETS_DIR}/…\""
            ));
        }
        let origin = url.as_deref().and_then(origin);
        if let Some(other) = uses.webhooks.iter().find(|(f, n, o)| {
            *f == real && Some(n.as_str()) != name && (o.is_none() || *o != origin)
        }) {
            return Err(format!(
                "{key}: {p:?} is the secret of webhook {:?}, which goes elsewhere; give this webhook a secret file of its own",
                other.1
            ));
        }
    }
    Ok(())
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str()?,
        u.port_or_known_default()?
    ))
}

/// The files the running config file names, resolved: those of the sources and `[admin]`
/// (with who uses them), and those of the webhooks (with the webhook and its origin).
struct FileUses {
    local: Vec<(PathBuf, String)>,
    webhooks: Vec<(PathBuf, String, Option<String>)>,
}

impl FileUses {
    fn of(config_file: &Path, config_dir: &Path) -> FileUses {
        let mut uses = FileUses {
            local: Vec::new(),
            webhooks: Vec::new(),
        };
        let Ok(doc) = std::fs::read_to_string(config_file)
            .map_err(|_| ())
            .and_then(|t| t.parse::<toml::Table>().map_err(|_| ()))
        else {
            return uses;
        };
        let resolve = |p: &str| {
            std::fs::canonicalize(crate::config::secret::secret_path(config_dir, Path::new(p))).ok()
        };
        for (section, v) in &doc {
            if section == "webhooks" {
                for w in v.as_array().into_iter().flatten() {
                    let name = w.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let origin = w.get("url").and_then(|u| u.as_str()).and_then(origin);
                    let mut files = Vec::new();
                    files_in(w, &mut files);
                    for f in files.iter().filter_map(|f| resolve(f)) {
                        uses.webhooks.push((f, name.to_string(), origin.clone()));
                    }
                }
            } else {
                let mut files = Vec::new();
                files_in(v, &mut files);
                for f in files.iter().filter_map(|f| resolve(f)) {
                    uses.local.push((f, format!("[{section}]")));
                }
            }
        }
        uses
    }
}

/// Every string value of a `*_file` key in `v`, at any depth.
fn files_in(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                match v {
                    toml::Value::String(s) if k.ends_with("_file") => out.push(s.clone()),
                    _ => files_in(v, out),
                }
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| files_in(v, out)),
        _ => {}
    }
}

/// The value of `key` in a query string (its first occurrence), as sent.
fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A yes/no query parameter: `true`/`1` or `false`/`0`, `default` when absent; anything
/// else is refused (never read as one or the other).
fn query_flag(query: &str, key: &str, default: bool) -> Result<bool, String> {
    match query_value(query, key) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(format!(
            "{key}={v:?} is neither true nor false; write {key}=false to skip the healthCheck, or leave it out"
        )),
    }
}

/// `since_ms` of a replay: a time in unix milliseconds, 0 (every dead letter) when absent;
/// anything else is refused rather than read as 0, which would replay them all.
fn query_since(query: &str) -> Result<i64, String> {
    match query_value(query, "since_ms") {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            format!(
                "since_ms={v:?} is not a time in unix milliseconds; leave it out to replay every dead letter"
            )
        }),
    }
}

/// The value of a `Result<_, String>`, or (returned from the handler) a 400 answer that
/// carries the reason.
macro_rules! or_400 {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(e) => return reply(StatusCode::BAD_REQUEST, json!({ "error": e })),
        }
    };
}

/// Answers one control request (from the Unix socket, or an authenticated TCP caller).
pub(crate) async fn handle(req: Request<Incoming>, c: Arc<Control>) -> Reply {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    // Segments are percent-decoded once: a webhook named "lobby east", "a/b" or "50%" works.
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let sup = &c.supervisor;
    let store = sup.store();
    // Refused (400) only by the edits that use it.
    let verify = query_flag(&query, "verify", true);
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "webhooks"]) => {
            let list = WebhookList {
                webhooks: sup.webhooks().iter().map(|w| describe(store, w)).collect(),
            };
            reply(StatusCode::OK, json_of(&list))
        }
        (&Method::POST, ["v1", "webhooks"]) => {
            let verify = or_400!(verify);
            let body = json_body(req).await;
            let values = or_400!(body.and_then(|v| confine_files(&v, sup, None).map(|()| v)));
            let Some(name) = values
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "a new webhook needs a name"}),
                );
            };
            match sup.edit(Edit::Add(values), verify).await {
                Ok(done) => reply(StatusCode::CREATED, edited(sup, &name, done)),
                Err(e) => failed(&e),
            }
        }
        (&Method::GET, ["v1", "webhooks", name]) => match sup.webhook(name) {
            Some(w) => reply(StatusCode::OK, json_of(&describe(store, &w))),
            None => not_found(name),
        },
        (&Method::PATCH, ["v1", "webhooks", name]) => {
            let verify = or_400!(verify);
            let name = name.to_string();
            let body = json_body(req).await;
            let changes =
                or_400!(body.and_then(|v| confine_files(&v, sup, Some(&name)).map(|()| v)));
            let new_name = changes
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(&name)
                .to_string();
            match sup.edit(Edit::Set { name, changes }, verify).await {
                Ok(done) => reply(StatusCode::OK, edited(sup, &new_name, done)),
                Err(e) => failed(&e),
            }
        }
        (&Method::DELETE, ["v1", "webhooks", name]) => {
            match sup.edit(Edit::Remove(name.to_string()), false).await {
                Ok(done) => {
                    let discarded: u64 = done.applied.removed.iter().map(|(_, n)| n).sum();
                    let answer = DeleteAnswer {
                        deleted: name.to_string(),
                        discarded,
                    };
                    reply(StatusCode::OK, json_of(&answer))
                }
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, ["v1", "webhooks", name, action @ ("enable" | "disable")]) => {
            let verify = or_400!(verify);
            let mut changes = serde_json::Map::new();
            changes.insert("enabled".into(), Value::Bool(*action == "enable"));
            let name = name.to_string();
            match sup
                .edit(
                    Edit::Set {
                        name: name.clone(),
                        changes,
                    },
                    verify,
                )
                .await
            {
                Ok(done) => reply(StatusCode::OK, edited(sup, &name, done)),
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, ["v1", "webhooks", name, "test"]) => match sup.test(name).await {
            Ok(report) => reply(StatusCode::OK, json_of(&TestAnswer { test: report })),
            Err(e) => failed(&e),
        },
        (&Method::GET, ["v1", "status"]) => reply(StatusCode::OK, super::status::status(sup)),
        (&Method::POST, ["v1", "reload"]) => match sup.reload().await {
            Ok(applied) => reply(StatusCode::OK, json!({ "applied": applied })),
            Err(e) => failed(&e),
        },
        (&Method::GET, ["v1", "webhooks", name, "dead-letters"]) => {
            let Some(w) = sup.webhook(name) else {
                return not_found(name);
            };
            let (store, id) = (store.clone(), w.id);
            match tokio::task::spawn_blocking(move || store.dead_letters(id, 1000)).await {
                Ok(Ok(list)) => {
                    let answer = DeadLetterList {
                        dead_letters: list
                            .into_iter()
                            .map(|(seq, d)| DeadLetterReport {
                                seq,
                                status: d.status,
                                reason: d.reason,
                                at: crate::timefmt::rfc3339_ms(d.at_ms),
                                event: json_of(&d.event),
                            })
                            .collect(),
                    };
                    reply(StatusCode::OK, json_of(&answer))
                }
                Ok(Err(
                    e @ (crate::store::StoreError::Busy | crate::store::StoreError::Reopening),
                )) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": e.to_string() }),
                ),
                Ok(Err(e)) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
            }
        }
        (&Method::POST, ["v1", "webhooks", name, "replay"]) => {
            let Some(w) = sup.webhook(name) else {
                return not_found(name);
            };
            let since = or_400!(query_since(&query));
            match store.replay_dead_letters(w.id, since).await {
                Ok(n) => reply(StatusCode::OK, json_of(&ReplayAnswer { replayed: n })),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such endpoint: {method} {path}")}),
        ),
    }
}

fn edited(sup: &Supervisor, name: &str, done: Edited) -> Value {
    json_of(&EditAnswer {
        webhook: sup.webhook(name).map(|w| describe(sup.store(), &w)),
        verified: done.verified,
        applied: done.applied,
    })
}

/// Sends one request to the control socket and returns the status and the JSON body.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach roomhook on {}: {e} (is the daemon running? is this the right config?)",
            socket.display()
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "roomhook")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_flags_and_times_are_read_exactly_or_refused() {
        assert_eq!(query_flag("", "verify", true), Ok(true));
        assert_eq!(query_flag("verify=false", "verify", true), Ok(false));
        assert_eq!(query_flag("a=1&verify=0", "verify", true), Ok(false));
        assert_eq!(query_flag("verify=true", "verify", false), Ok(true));
        assert!(query_flag("verify=", "verify", true).is_err());
        assert!(query_flag("verify=no", "verify", true).is_err());
        assert_eq!(query_since(""), Ok(0));
        assert_eq!(query_since("since_ms=1796524844307"), Ok(1_796_524_844_307));
        assert_eq!(query_since("since_ms=-5"), Ok(-5));
        // Read as 0 before: every dead letter replayed.
        assert!(query_since("since_ms=abc").is_err());
        assert!(query_since("since_ms=99999999999999999999").is_err());
        assert!(query_since("since_ms=").is_err());
    }
}
