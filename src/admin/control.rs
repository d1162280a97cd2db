//! The local control API: JSON over HTTP on a Unix socket (mode 0600) that the `roomhook
//! webhook …` commands talk to. Today: list and show webhooks (settings with secrets
//! redacted, state, queue), list dead letters, replay them.

use crate::config::{Auth, WebhookSettings};
use crate::deliver::status::SharedStatus;
use crate::store::{Store, WebhookId};
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

/// What the control API can see of one webhook.
pub struct ControlWebhook {
    /// Store id.
    pub id: WebhookId,
    /// Settings (secrets are never shown).
    pub settings: WebhookSettings,
    /// Live status.
    pub status: SharedStatus,
}

/// Everything the control API serves.
pub struct Control {
    /// The store.
    pub store: Store,
    /// The webhooks, in config order.
    pub webhooks: Vec<ControlWebhook>,
}

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
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

/// Binds the socket: a stale file from a crashed daemon is removed; the socket is 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves the control API until shutdown, then removes the socket file.
pub async fn serve(
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

fn reply(status: StatusCode, body: Value) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn not_found(what: &str) -> Result<Response<Full<Bytes>>, Infallible> {
    reply(
        StatusCode::NOT_FOUND,
        json!({ "error": format!("no webhook named {what:?}") }),
    )
}

/// A webhook's settings and live figures, secrets redacted.
fn describe(c: &Control, w: &ControlWebhook) -> Value {
    let s = &w.settings;
    let status = w
        .status
        .lock()
        .map(|st| serde_json::to_value(&*st).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let auth = match &s.auth {
        Auth::None => json!({"kind": "none"}),
        Auth::Token(_) => json!({"kind": "authorization", "value": "***"}),
        Auth::Basic { username, .. } => {
            json!({"kind": "basic", "username": username, "password": "***"})
        }
    };
    json!({
        "name": s.name,
        "url": s.url.to_string(),
        "enabled": s.enabled,
        "auth": auth,
        "signed": s.signer.is_some(),
        "devices": s.devices.patterns(),
        "statuses": s.statuses,
        "events": s.events,
        "status": status,
        "queue": {
            "events": c.store.depth(w.id),
            "bytes": c.store.bytes(w.id),
            "dead_letters": c.store.dead_count(w.id),
        },
    })
}

async fn handle(
    req: Request<Incoming>,
    c: Arc<Control>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let find = |name: &str| c.webhooks.iter().find(|w| w.settings.name == name);
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["v1", "webhooks"]) => {
            let list: Vec<Value> = c.webhooks.iter().map(|w| describe(&c, w)).collect();
            reply(StatusCode::OK, json!({ "webhooks": list }))
        }
        (&Method::GET, ["v1", "webhooks", name]) => match find(name) {
            Some(w) => reply(StatusCode::OK, describe(&c, w)),
            None => not_found(name),
        },
        (&Method::GET, ["v1", "webhooks", name, "dead-letters"]) => {
            let Some(w) = find(name) else {
                return not_found(name);
            };
            let (store, id) = (c.store.clone(), w.id);
            match tokio::task::spawn_blocking(move || store.dead_letters(id, 1000)).await {
                Ok(Ok(list)) => {
                    let items: Vec<Value> = list
                        .into_iter()
                        .map(|(seq, d)| {
                            json!({"seq": seq, "status": d.status, "reason": d.reason,
                                   "at": crate::timefmt::rfc3339_ms(d.at_ms), "event": d.event})
                        })
                        .collect();
                    reply(StatusCode::OK, json!({ "dead_letters": items }))
                }
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
            let Some(w) = find(name) else {
                return not_found(name);
            };
            let since = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since_ms="))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            match c.store.replay_dead_letters(w.id, since).await {
                Ok(n) => reply(StatusCode::OK, json!({ "replayed": n })),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such endpoint: {} {path}", req.method())}),
        ),
    }
}

/// Sends one request to the control socket and returns the status and the JSON body.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
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
        .body(Full::new(Bytes::new()))
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
