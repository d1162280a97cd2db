//! The HTTPS client of one webhook: pooled hyper connections over rustls (ring), webpki
//! roots plus the webhook's private CA, connect and whole-request timeouts, the body's
//! compression (`compress`, after signing), and the classification of every answer or
//! failure.

use crate::config::WebhookSettings;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::{Duration, Instant, SystemTime};

/// How much of an error body is kept for messages.
const BODY_EXCERPT: usize = 512;
/// Largest response body read (the rest is dropped with the connection).
const MAX_BODY: usize = 64 * 1024;

/// What kind of failure a request ended in (the `kind` label of request errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// DNS or TCP connect failed.
    Connect,
    /// The TLS handshake failed (untrusted or invalid certificate, protocol).
    Tls,
    /// No complete answer within the timeout.
    Timeout,
    /// The receiver answered with a non-2xx status.
    Http(StatusCode),
    /// Anything else (connection reset mid-request, protocol error).
    Other,
}

impl FailureKind {
    /// Every label, exported at 0 from the start so that `rate()` and alerts work before
    /// the first failure.
    pub(crate) const LABELS: [&'static str; 8] = [
        "connect",
        "tls",
        "timeout",
        "http_3xx",
        "http_4xx",
        "http_5xx",
        "http_other",
        "other",
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::Http(s) if s.is_redirection() => "http_3xx",
            FailureKind::Http(s) if s.is_client_error() => "http_4xx",
            FailureKind::Http(s) if s.is_server_error() => "http_5xx",
            FailureKind::Http(_) => "http_other",
            FailureKind::Other => "other",
        }
    }
}

/// The result of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 2xx.
    Delivered {
        /// The status code.
        status: StatusCode,
    },
    /// Anything else.
    Failed(Failure),
}

/// A failed request, with what is needed to log and schedule it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The kind.
    pub(crate) kind: FailureKind,
    /// A one-line description (error chain, or status and body excerpt).
    pub(crate) message: String,
    /// `Retry-After`, if the receiver sent one.
    pub(crate) retry_after: Option<Duration>,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("webhook TLS setup: {0}")]
pub struct ClientError(#[from] crate::tls::TlsError);

/// The sender of one webhook.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    authorization: Option<HeaderValue>,
    /// The webhook's static `headers`.
    headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    timeout: Duration,
    compression: crate::value::compression::Compression,
}

/// A request ready to go ([`WebhookClient::prepare`]).
pub(crate) struct Ready {
    req: Request<Full<Bytes>>,
    /// What it puts on the uplink, estimated ([`super::uplink::request_bytes`]).
    pub(crate) bytes: u64,
}

impl Ready {
    /// Sets `headers` anew (a fresh `webhook-timestamp` and signature after a wait for the
    /// uplink budget: the same lengths, so the estimate holds).
    pub(crate) fn restamp(&mut self, headers: &[(&'static str, String)]) {
        for (k, v) in headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                self.req.headers_mut().insert(*k, v);
            }
        }
    }
}

impl WebhookClient {
    /// Builds the client for a webhook's settings.
    pub fn new(w: &WebhookSettings) -> Result<Self, ClientError> {
        let mut c = Self::connect(
            &w.trust,
            w.connect_timeout,
            w.max_in_flight,
            w.url.clone(),
            w.auth.header_value().as_ref(),
        )?;
        c.headers = w
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        c.timeout = w.request_timeout;
        c.compression = w.compression;
        Ok(c)
    }

    /// A client for one fleet URL (the config document, the reports): a webhook's trust
    /// rules and timeouts (5 s to connect, 15 s a request), one connection.
    pub(crate) fn endpoint(
        url: Uri,
        trust: &crate::tls::TlsTrust,
        authorization: Option<&crate::config::Secret>,
    ) -> Result<Self, ClientError> {
        Self::connect(trust, Duration::from_secs(5), 1, url, authorization)
    }

    fn connect(
        trust: &crate::tls::TlsTrust,
        connect_timeout: Duration,
        idle: usize,
        url: Uri,
        authorization: Option<&crate::config::Secret>,
    ) -> Result<Self, ClientError> {
        let tls = crate::tls::client_config(trust, &[])?; // hyper-rustls sets ALPN itself
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle.max(1))
            .timer(TokioTimer::new())
            .build(https);
        let authorization = authorization.and_then(|s| {
            let mut v = HeaderValue::from_str(s.expose()).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Ok(Self {
            client,
            url,
            authorization,
            headers: Vec::new(),
            timeout: Duration::from_secs(15),
            compression: crate::value::compression::Compression::None,
        })
    }

    /// GETs `url` (the client's own when `None`) with `extra` headers and the client's
    /// Authorization: the status, the headers and at most `max` bytes of body (more is a
    /// failure). Never follows redirects.
    pub(crate) async fn get(
        &self,
        url: Option<&Uri>,
        extra: &[(&'static str, String)],
        max: usize,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), Failure> {
        let mut req = Request::get(url.unwrap_or(&self.url).clone())
            .header(USER_AGENT, concat!("roomhook/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = &self.authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| Failure {
            kind: FailureKind::Other,
            message: format!("cannot build the request: {e}"),
            retry_after: None,
        })?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| classify(&e))?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| Failure {
                    kind: FailureKind::Other,
                    message: format!("reading the body (at most {max} bytes): {e}"),
                    retry_after: None,
                })?;
            Ok((head.status, head.headers, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Failure {
                    kind: FailureKind::Timeout,
                    message: format!("no answer within {:?}", self.timeout),
                    retry_after: None,
                })
            })
    }

    /// POSTs a JSON body with `extra` headers (signed over `body` as it is), compressed for
    /// the wire when the webhook says so; never follows redirects. The duration is the
    /// whole of it, compression included.
    pub async fn post(&self, body: Bytes, extra: &[(&'static str, String)]) -> (Outcome, Duration) {
        let started = Instant::now();
        match self.prepare(body, extra).await {
            Ok(ready) => (self.send(ready).await.0, started.elapsed()),
            Err(f) => (Outcome::Failed(f), started.elapsed()),
        }
    }

    /// A request made ready to go: the body compressed for the wire when the webhook says
    /// so, every header set, and what it will put on the uplink estimated.
    pub(crate) async fn prepare(
        &self,
        body: Bytes,
        extra: &[(&'static str, String)],
    ) -> Result<Ready, Failure> {
        let wire =
            super::compress::encode(self.compression, body, super::compress::MIN_BYTES).await;
        let mut req = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("roomhook/", env!("CARGO_PKG_VERSION")));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(a) = &self.authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        if let Some(encoding) = wire.encoding {
            req = req.header(CONTENT_ENCODING, encoding);
        }
        let req = req.body(Full::new(wire.body)).map_err(|e| Failure {
            kind: FailureKind::Other,
            message: format!("cannot build the request: {e}"),
            retry_after: None,
        })?;
        let bytes = self.uplink_bytes(&req);
        Ok(Ready { req, bytes })
    }

    /// What `req` puts on the uplink ([`super::uplink::request_bytes`]): its head as hyper
    /// writes it (with the `host` and `content-length` it adds) and its body.
    fn uplink_bytes(&self, req: &Request<Full<Bytes>>) -> u64 {
        use hyper::body::Body as _;
        let body = req.body().size_hint().exact().unwrap_or(0);
        let host = match (self.url.host(), self.url.port_u16()) {
            (Some(h), Some(p)) if p != 443 => format!("{h}:{p}"),
            (Some(h), _) => h.to_string(),
            (None, _) => String::new(),
        };
        let length = body.to_string();
        let added = [
            ("host", host.as_bytes()),
            ("content-length", length.as_bytes()),
        ];
        let target = self.url.path_and_query().map_or("/", |p| p.as_str());
        let head = super::uplink::head_bytes(
            req.method().as_str(),
            target,
            req.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .chain(added),
        );
        super::uplink::request_bytes(head, body)
    }

    /// Sends a request made ready by [`prepare`](Self::prepare); never follows redirects.
    /// The duration is the request's own round trip (from the moment it goes out).
    pub(crate) async fn send(&self, ready: Ready) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.exchange(ready.req)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed(Failure {
                kind: FailureKind::Timeout,
                message: format!("no answer within {:?}", self.timeout),
                retry_after: None,
            }),
        };
        (outcome, started.elapsed())
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Outcome {
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(classify(&e)),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = Limited::new(resp.into_body(), MAX_BODY).collect().await;
        if status.is_success() {
            return Outcome::Delivered { status };
        }
        let excerpt = body
            .map(|b| {
                let bytes = b.to_bytes();
                let cut = &bytes[..bytes.len().min(BODY_EXCERPT)];
                // One printable line: the receiver's text reaches status, logs and sd_notify.
                crate::redact::printable(String::from_utf8_lossy(cut).trim())
            })
            .unwrap_or_default();
        Outcome::Failed(Failure {
            kind: FailureKind::Http(status),
            message: if excerpt.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {excerpt}")
            },
            retry_after,
        })
    }
}

/// Parses `Retry-After`: seconds, or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(v, &fmt).ok()?;
    let at: SystemTime = at.into();
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Describes a transport error with its whole cause chain and sorts it into a kind.
fn classify(e: &hyper_util::client::legacy::Error) -> Failure {
    let mut parts = vec![e.to_string()];
    let mut tls = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        // io::Error hides what it wraps from `source()`; unwrap it by hand (possibly twice:
        // hyper-rustls wraps tokio-rustls's io::Error in another one).
        let mut inner: &(dyn std::error::Error + 'static) = err;
        while let Some(wrapped) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = wrapped;
        }
        if inner.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        parts.push(inner.to_string());
        cur = inner.source();
    }
    parts.dedup();
    let message = parts.join(": ");
    let kind = if tls {
        FailureKind::Tls
    } else if message.contains("timed out") || message.contains("deadline") {
        FailureKind::Timeout
    } else if e.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Other
    };
    let message = if kind == FailureKind::Tls {
        format!("TLS handshake failed (the receiver's certificate is not trusted or not valid for this host; set ca_file for a private CA): {message}")
    } else {
        message
    };
    Failure {
        kind,
        message,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
