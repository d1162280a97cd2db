//! The local admin HTTP listener (`GET /metrics`, `GET /healthz`, and the control API under
//! `/v1/` for callers with the `[admin] token`) and the control API itself.

pub mod api;
pub(crate) mod console;
pub mod control;
pub(crate) mod guard;
mod slots;
pub mod status;

use crate::config::Secret;
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin listener serves.
#[derive(Clone)]
pub(crate) struct Admin {
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The control API, served under `/v1/` to callers with the token.
    pub(crate) control: Arc<control::Control>,
    /// `[admin] token`: without it the control API is not served on TCP.
    pub(crate) token: Option<Secret>,
    /// The web console (`[admin] console = true`).
    pub(crate) console: Option<Arc<console::Console>>,
    /// `[admin] trusted_proxies`.
    pub(crate) trusted_proxies: Vec<std::net::IpAddr>,
    /// Wrong tokens, at the console's sign-in and on `/v1/`.
    pub(crate) guard: Arc<std::sync::Mutex<guard::Guard>>,
}

/// A client must send its request headers within this, from the moment it connects, and
/// again between requests on a kept-alive connection (a slow or idle client cannot pin a
/// place).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A connection is closed after this long, whatever it does.
const CONNECTION_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves the admin endpoints on `listener` until shutdown.
pub(crate) async fn serve(listener: TcpListener, admin: Admin, shutdown: CancellationToken) {
    let slots = slots::Slots::new(slots::MAX_CONNECTIONS, slots::PER_ADDRESS);
    let mut refused_log = crate::ratelog::RateLog::new(std::time::Duration::from_secs(30));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin listener: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        // Every connection is accepted and gets a place, in place of an idle one if need
        // be; the backlog never holds a request behind someone else's idle connections.
        let place = match slots.take(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                if let Some(suppressed) = refused_log.check(std::time::Instant::now()) {
                    let what = match why {
                        slots::Refused::Full => format!(
                            "all {} connections are answering requests",
                            slots::MAX_CONNECTIONS
                        ),
                        slots::Refused::Address => format!(
                            "{} has {} connections answering requests",
                            peer.ip(),
                            slots::PER_ADDRESS
                        ),
                    };
                    tracing::warn!(
                        suppressed,
                        "admin listener: connection from {} closed: {what}",
                        peer.ip()
                    );
                }
                drop(stream);
                continue;
            }
        };
        let admin = admin.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let conn_state = place.conn.clone();
            let svc = hyper::service::service_fn(move |req| {
                let busy = conn_state.busy();
                let admin = admin.clone();
                async move {
                    let answer = handle(req, admin, peer.ip()).await;
                    drop(busy);
                    answer
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = tokio::time::sleep(CONNECTION_LIMIT) => {}
                _ = place.conn.closed.cancelled() => {}
                _ = stop.cancelled() => {}
            }
            drop(place);
        });
    }
}

/// What a request's `Authorization` says about the admin token.
enum Bearer {
    /// No Authorization header: not a guess.
    Absent,
    /// The token (compared in constant time).
    Right,
    /// Anything else.
    Wrong,
}

fn bearer(req: &Request<Incoming>, token: &Secret) -> Bearer {
    let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return Bearer::Absent;
    };
    let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token_matches(token, g)) {
        Bearer::Right
    } else {
        Bearer::Wrong
    }
}

/// A 429 for a client that has used up its wrong tokens, until `until`.
pub(crate) fn too_many(until: std::time::Instant) -> (StatusCode, String, u64) {
    let wait = until
        .saturating_duration_since(std::time::Instant::now())
        .as_secs()
        + 1;
    (
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many wrong tokens from this address; try again in {wait} s"),
        wait,
    )
}

/// Checks a token attempt from `client` with the guard: `Err(reply)` when refused.
pub(crate) async fn guarded(
    guard: &std::sync::Mutex<guard::Guard>,
    client: std::net::IpAddr,
    right: bool,
) -> Result<(), Option<(StatusCode, String, u64)>> {
    let now = std::time::Instant::now();
    // The lock is released before any wait.
    let wait = {
        let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(until) = g.check(client, now) {
            return Err(Some(too_many(until)));
        }
        if right {
            g.succeeded(client);
            return Ok(());
        }
        g.failed(client, now)
    };
    static LOG: std::sync::LazyLock<std::sync::Mutex<crate::ratelog::RateLog>> =
        std::sync::LazyLock::new(|| {
            std::sync::Mutex::new(crate::ratelog::RateLog::new(
                std::time::Duration::from_secs(10),
            ))
        });
    let logged = LOG.lock().ok().and_then(|mut l| l.check(now));
    if let Some(suppressed) = logged {
        tracing::warn!(%client, suppressed, "admin listener: a wrong admin token");
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Err(None)
}

/// Whether `given` (trimmed) is the admin token, compared in constant time.
pub(crate) fn token_matches(token: &Secret, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    given
        .trim()
        .as_bytes()
        .ct_eq(token.expose().as_bytes())
        .into()
}

async fn handle(
    req: Request<Incoming>,
    admin: Admin,
    peer: std::net::IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (client, tls) = guard::caller(req.headers(), peer, &admin.trusted_proxies);
    if let Some(console) = admin
        .console
        .as_ref()
        .filter(|_| console::Console::owns(req.uri().path()))
    {
        return Ok(console
            .handle(req, client, tls, &admin.guard, admin.control.clone())
            .await);
    }
    if req.uri().path().starts_with("/v1/") {
        let verdict = admin.token.as_ref().map(|t| bearer(&req, t));
        let ok = match verdict {
            Some(Bearer::Absent) | None => false,
            Some(b) => match guarded(&admin.guard, client, matches!(b, Bearer::Right)).await {
                Ok(()) => true,
                Err(None) => false,
                Err(Some((status, why, wait))) => {
                    let mut resp = control::reply(status, serde_json::json!({ "error": why }))?;
                    resp.headers_mut()
                        .insert(hyper::header::RETRY_AFTER, wait.into());
                    return Ok(resp);
                }
            },
        };
        if !ok {
            let why = if admin.token.is_some() {
                "the control API needs Authorization: Bearer <admin.token>"
            } else {
                "the control API is not open on TCP: set [admin] token (or token_file), or use the Unix socket"
            };
            let mut resp = control::reply(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": why }),
            )?;
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"roomhook\""),
            );
            return Ok(resp);
        }
        return control::handle(req, admin.control.clone()).await;
    }
    let metrics = &admin.metrics;
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        ("GET", "/healthz") => {
            let (ok, body) = status::alive(&admin.control.supervisor);
            (
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "application/json",
                body.to_string(),
            )
        }
        ("GET", "/readyz") => {
            let s = status::report(&admin.control.supervisor);
            let ready = s.ready;
            let body = serde_json::json!({
                "ready": ready,
                "problems": s.problems,
                "store": s.store,
                "sources": s.sources,
            });
            (
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "application/json",
                body.to_string(),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}
