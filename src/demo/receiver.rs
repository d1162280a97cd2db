//! A real HTTPS webhook receiver (hyper + rustls) for the demo and the tests: it checks the
//! Authorization header, answers with a status it is told to use, and records every request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// The status the receiver answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The body as JSON (null if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The messages in the body: the array's elements for a batch, else the one object.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        match self.json() {
            serde_json::Value::Array(items) => items,
            other => vec![other],
        }
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 OK (401 when the Authorization header is wrong).
    Accept,
    /// This status for every request.
    Status(u16),
    /// This status for every request, with `Retry-After: secs`.
    StatusRetryAfter(u16, u64),
    /// This status for the given percentage of requests, 200 for the rest.
    FailPercent(u16, u8),
    /// 200, after a delay of this many milliseconds per request in progress (an
    /// overloaded server: the more it is sent at once, the slower it answers).
    SlowPerConcurrent(u64),
    /// 413 for a JSON array of more than this many messages, 200 otherwise (a body limit).
    MaxMessages(usize),
    /// This status for every request, with this body (what a hostile receiver can say).
    StatusBody(u16, &'static str),
}

struct State {
    requests: Mutex<Vec<Received>>,
    behaviour: Mutex<Behaviour>,
    auth: Option<String>,
    print: bool,
    notify: Notify,
    concurrent: std::sync::atomic::AtomicUsize,
    accepted_messages: std::sync::atomic::AtomicUsize,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Receiver {
    /// Listens on `addr` (use port 0 for a free one) with TLS; requires `auth` as the
    /// Authorization header when given; prints each request when `print`.
    pub async fn start(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        auth: Option<String>,
        print: bool,
    ) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::Accept),
            auth,
            print,
            notify: Notify::new(),
            concurrent: std::sync::atomic::AtomicUsize::new(0),
            accepted_messages: std::sync::atomic::AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                let (acceptor, st, stop3) = (acceptor.clone(), st.clone(), stop2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop3.cancelled() => {}
                    }
                });
            }
        });
        Ok(Receiver { addr, state, stop })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    #[cfg(any(test, feature = "faults"))]
    /// Changes how it answers from now on.
    pub fn set_behaviour(&self, b: Behaviour) {
        if let Ok(mut g) = self.state.behaviour.lock() {
            *g = b;
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state
            .requests
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Requests answered with 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until `cond` holds for the requests so far, or the timeout passes.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if let Ok(g) = self.state.requests.lock() {
                if cond(&g) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self
                    .state
                    .requests
                    .lock()
                    .map(|g| cond(&g))
                    .unwrap_or(false);
            }
        }
    }

    /// Messages (batch elements counted one by one) answered with 2xx so far.
    pub fn accepted_messages(&self) -> usize {
        self.state
            .accepted_messages
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted, or the timeout passes (cheap: for
    /// large counts, where `wait_for` would re-read every request each time).
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if self.accepted_messages() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.accepted_messages() >= n;
            }
        }
    }

    /// Stops listening and closes connections.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    use std::sync::atomic::Ordering::SeqCst;
    let (parts, body) = req.into_parts();
    let arrived = Instant::now();
    let body = body.collect().await?.to_bytes();
    let behaviour = st.behaviour.lock().map(|g| *g).unwrap_or(Behaviour::Accept);
    let concurrent = st.concurrent.fetch_add(1, SeqCst) + 1;
    if let Behaviour::SlowPerConcurrent(ms) = behaviour {
        tokio::time::sleep(Duration::from_millis(ms * concurrent as u64)).await;
    }
    st.concurrent.fetch_sub(1, SeqCst);
    let auth_ok = match &st.auth {
        None => true,
        Some(want) => {
            parts
                .headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(want.as_str())
        }
    };
    // Messages in the body (a JSON array is a batch), counted once.
    let n = match body.first() {
        Some(b'[') => {
            serde_json::from_slice::<Vec<serde_json::Value>>(&body).map_or(1, |v| v.len())
        }
        _ => 1,
    };
    let (status, retry_after) = match behaviour {
        _ if !auth_ok => (401, None),
        Behaviour::Accept | Behaviour::SlowPerConcurrent(_) => (200, None),
        Behaviour::FailPercent(s, pct) => (
            if rand::random_range(0..100u8) < pct {
                s
            } else {
                200
            },
            None,
        ),
        Behaviour::Status(s) | Behaviour::StatusBody(s, _) => (s, None),
        Behaviour::StatusRetryAfter(s, secs) => (s, Some(secs)),
        Behaviour::MaxMessages(max) => (if n > max { 413 } else { 200 }, None),
    };
    if st.print {
        let text = String::from_utf8_lossy(&body);
        println!(
            "receiver <- {} {} [{}] {}",
            parts.method,
            parts.uri.path(),
            status,
            text
        );
    }
    if let Ok(mut g) = st.requests.lock() {
        g.push(Received {
            path: parts.uri.path().to_string(),
            headers: parts.headers,
            body,
            status,
            at: arrived,
        });
        // Counted once listed (under the same lock): whoever sees the count also finds the
        // request in `requests()`.
        if (200..300).contains(&status) {
            st.accepted_messages.fetch_add(n, SeqCst);
        }
    }
    st.notify.notify_waiters();
    let custom = match st.behaviour.lock().map(|b| *b) {
        Ok(Behaviour::StatusBody(_, body)) => Some(body),
        _ => None,
    };
    let answer = match status {
        _ if custom.is_some() => custom.unwrap_or_default().to_string(),
        200..=299 => String::new(),
        401 => "{\"error\":\"invalid credentials\"}".to_string(),
        s => format!("{{\"error\":\"receiver answers {s}\"}}"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(secs) = retry_after {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
    }
    Ok(resp)
}
