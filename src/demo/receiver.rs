//! A real HTTPS webhook receiver (hyper + rustls) for the demo and the tests: it checks the
//! Authorization header, reads `Content-Encoding: gzip` bodies (flate2), verifies Standard
//! Webhooks signatures over the decoded body when it is given the secret, answers with a
//! status it is told to use, and records every request.

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
    /// Request body, decoded (gzip undone).
    pub body: Bytes,
    /// Bytes of the body as they came over the wire (the compressed length when compressed).
    pub wire_len: usize,
    /// The body came with `Content-Encoding: gzip`.
    pub compressed: bool,
    /// Whether its Standard Webhooks signature is valid for the decoded body (None: the
    /// receiver was given no secret, see [`Receiver::verify_signatures`]).
    pub signature_valid: Option<bool>,
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
    /// 415 for a body with a `Content-Encoding` (a receiver that reads only plain bodies),
    /// 200 otherwise.
    RefuseCompressed,
    /// A receiver with a capacity: the first `per_second` requests of each second (counted
    /// from when this behaviour was set) get 200, the rest 429 with `Retry-After:
    /// retry_after` (seconds). What each second took and refused is kept
    /// ([`Receiver::per_second`]).
    Capacity {
        /// Requests accepted per second.
        per_second: u32,
        /// `Retry-After` of a 429, in seconds.
        retry_after: u64,
    },
}

/// Requests accepted and refused in each second of a [`Behaviour::Capacity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Answered 200.
    pub accepted: u32,
    /// Answered 429 (over the capacity).
    pub refused: u32,
}

/// The seconds of a capacity: since when they count, and each one's figures.
#[derive(Debug)]
struct Seconds {
    since: Instant,
    seconds: Vec<Second>,
}

impl Seconds {
    /// Whether a request arriving `at` fits into its second's capacity; counts it.
    fn admit(&mut self, at: Instant, per_second: u32) -> bool {
        let i = at.saturating_duration_since(self.since).as_secs() as usize;
        if self.seconds.len() <= i {
            self.seconds.resize(i + 1, Second::default());
        }
        let s = &mut self.seconds[i];
        if s.accepted < per_second {
            s.accepted += 1;
            true
        } else {
            s.refused += 1;
            false
        }
    }
}

/// Largest decoded body read (a gzip bomb answers 413).
const MAX_DECODED: u64 = 64 * 1024 * 1024;
/// How far a `webhook-timestamp` may be off (Standard Webhooks' tolerance).
const TIMESTAMP_TOLERANCE_S: i64 = 300;

struct State {
    requests: Mutex<Vec<Received>>,
    behaviour: Mutex<Behaviour>,
    auth: Option<String>,
    print: bool,
    notify: Notify,
    concurrent: std::sync::atomic::AtomicUsize,
    accepted_messages: std::sync::atomic::AtomicUsize,
    /// The signing key, when signatures are verified.
    signing_key: Mutex<Option<ring::hmac::Key>>,
    /// The seconds of a [`Behaviour::Capacity`] (reset whenever the behaviour is set).
    seconds: Mutex<Seconds>,
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
            signing_key: Mutex::new(None),
            seconds: Mutex::new(Seconds {
                since: Instant::now(),
                seconds: Vec::new(),
            }),
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
    /// Changes how it answers from now on (a [`Behaviour::Capacity`] counts its seconds
    /// from now).
    pub fn set_behaviour(&self, b: Behaviour) {
        if let Ok(mut s) = self.state.seconds.lock() {
            *s = Seconds {
                since: Instant::now(),
                seconds: Vec::new(),
            };
        }
        if let Ok(mut g) = self.state.behaviour.lock() {
            *g = b;
        }
    }

    #[cfg(any(test, feature = "faults"))]
    /// Requests accepted and refused in each second since a [`Behaviour::Capacity`] was set
    /// (second 0 first), and when that was.
    pub fn per_second(&self) -> (Instant, Vec<Second>) {
        self.state
            .seconds
            .lock()
            .map(|s| (s.since, s.seconds.clone()))
            .unwrap_or_else(|_| (Instant::now(), Vec::new()))
    }

    #[cfg(any(test, feature = "faults"))]
    /// From now on, verifies every request's Standard Webhooks signature with `secret`
    /// (`whsec_<base64>`) over the decoded body, as a receiver does, and answers 400 to a
    /// request whose signature is missing or wrong. Panics on a malformed secret.
    pub fn verify_signatures(&self, secret: &str) {
        use base64::Engine;
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .expect("a whsec_<base64> secret");
        if let Ok(mut g) = self.state.signing_key.lock() {
            *g = Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key));
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
    let wire = body.collect().await?.to_bytes();
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
    let encoding = parts
        .headers
        .get(hyper::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let compressed = encoding.as_deref() == Some("gzip");
    // What a receiver refuses before it looks at the content.
    let mut refusal: Option<(u16, &str)> = match encoding.as_deref() {
        _ if !auth_ok => Some((401, "{\"error\":\"invalid credentials\"}")),
        Some(_) if behaviour == Behaviour::RefuseCompressed => Some((
            415,
            "{\"error\":\"unsupported Content-Encoding: send plain JSON\"}",
        )),
        None | Some("gzip") | Some("identity") => None,
        Some(_) => Some((415, "{\"error\":\"unsupported Content-Encoding\"}")),
    };
    let body = match (compressed, refusal) {
        (true, None) => match gunzip(&wire) {
            Ok(b) => b,
            Err(answer) => {
                refusal = Some(answer);
                Bytes::new()
            }
        },
        _ => wire.clone(),
    };
    let key = st.signing_key.lock().ok().and_then(|k| k.clone());
    let signature_valid = key.map(|k| signature_valid(&k, &parts.headers, &body));
    if refusal.is_none() && signature_valid == Some(false) {
        refusal = Some((400, "{\"error\":\"invalid signature\"}"));
    }
    // Messages in the body (a JSON array is a batch), counted once.
    let n = match body.first() {
        Some(b'[') => {
            serde_json::from_slice::<Vec<serde_json::Value>>(&body).map_or(1, |v| v.len())
        }
        _ => 1,
    };
    let (status, retry_after) = match behaviour {
        _ if refusal.is_some() => (refusal.map_or(400, |(s, _)| s), None),
        Behaviour::Accept | Behaviour::SlowPerConcurrent(_) | Behaviour::RefuseCompressed => {
            (200, None)
        }
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
        Behaviour::Capacity {
            per_second,
            retry_after,
        } => {
            let fits = st
                .seconds
                .lock()
                .map(|mut s| s.admit(arrived, per_second))
                .unwrap_or(true);
            if fits {
                (200, None)
            } else {
                (429, Some(retry_after))
            }
        }
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
            wire_len: wire.len(),
            compressed,
            signature_valid,
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
        _ if refusal.is_some() => refusal.map(|(_, a)| a).unwrap_or_default().to_string(),
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

/// A gzip body decoded, or the answer to a body that cannot be (400 not gzip, 413 too large).
fn gunzip(wire: &[u8]) -> Result<Bytes, (u16, &'static str)> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(wire)
        .take(MAX_DECODED + 1)
        .read_to_end(&mut out)
        .map_err(|_| (400, "{\"error\":\"the body is not valid gzip\"}"))?;
    if out.len() as u64 > MAX_DECODED {
        return Err((413, "{\"error\":\"the decoded body is too large\"}"));
    }
    Ok(Bytes::from(out))
}

/// Whether `headers` carry a valid Standard Webhooks signature of `body` under `key`, as a
/// receiver checks it: `webhook-timestamp` within five minutes of now, and one of the
/// space-separated `v1,<base64>` signatures the HMAC-SHA256 of `"{id}.{timestamp}.{body}"`
/// (compared in constant time).
fn signature_valid(key: &ring::hmac::Key, headers: &HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(at) = ts.parse::<i64>() else {
        return false;
    };
    if (crate::timefmt::now_ms() / 1000 - at).abs() > TIMESTAMP_TOLERANCE_S {
        return false;
    }
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .any(|tag| ring::hmac::verify(key, &signed, &tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capacity_takes_so_many_per_second_and_counts_the_rest() {
        let since = Instant::now();
        let mut s = Seconds {
            since,
            seconds: Vec::new(),
        };
        let at = |ms: u64| since + Duration::from_millis(ms);
        let taken: Vec<bool> = [0, 10, 999, 1000, 1500, 3200]
            .iter()
            .map(|ms| s.admit(at(*ms), 2))
            .collect();
        assert_eq!(taken, [true, true, false, true, true, true]);
        let second = |accepted, refused| Second { accepted, refused };
        assert_eq!(
            s.seconds,
            [second(2, 1), second(2, 0), second(0, 0), second(1, 0)]
        );
    }
}
