//! One request outside the queue: the `healthCheck` that `webhook add` / `set` verify a
//! receiver with and that `webhook test` sends. It runs over a connection of its own, so
//! that it can say exactly what failed (DNS, connect, TLS and why, HTTP status and body)
//! and, on success, which TLS version was negotiated and whose certificate was shown. With
//! `compression = "gzip"` it goes gzip-compressed whatever its size, so that a receiver that
//! cannot read such bodies is found before a webhook is saved, not at its first batch.

use crate::config::WebhookSettings;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How much of the receiver's body a report keeps.
const BODY_EXCERPT: usize = 200;

/// What a successful exchange showed (any HTTP status).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct ProbeReport {
    /// The receiver's HTTP status.
    pub(crate) status: u16,
    /// Connect + TLS + request + answer, in milliseconds.
    pub(crate) latency_ms: f64,
    /// Negotiated TLS version, e.g. "TLS 1.3".
    pub(crate) tls_version: String,
    /// Subject of the receiver's certificate.
    pub(crate) peer_subject: String,
    /// Issuer of the receiver's certificate.
    pub(crate) peer_issuer: String,
    /// Expiry of the receiver's certificate (RFC 3339).
    pub(crate) peer_not_after: String,
    /// The first bytes of the receiver's answer.
    pub(crate) body: String,
    /// The healthCheck went gzip-compressed (`compression = "gzip"`).
    #[serde(default)]
    pub(crate) compressed: bool,
}

impl ProbeReport {
    /// The verdict of save-and-verify: only a 200 answer activates a webhook. A 415 (or a
    /// 400: a body it could not read) to a compressed healthCheck says the receiver does not
    /// take gzip, and names the fix.
    pub(crate) fn verified(&self) -> Result<(), ProbeError> {
        match self.status {
            200 => Ok(()),
            415 | 400 if self.compressed => Err(ProbeError::Compression {
                status: self.status,
                body: self.body.clone(),
            }),
            status => Err(ProbeError::Status {
                status,
                body: self.body.clone(),
            }),
        }
    }
}

/// Why the health check did not get an answer (or not a 200 one).
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum ProbeError {
    /// The host name does not resolve.
    #[error("DNS: cannot resolve {host}: {reason}")]
    Dns {
        /// Host.
        host: String,
        /// Resolver's answer.
        reason: String,
    },
    /// No TCP connection.
    #[error("connect: cannot connect to {addr}: {reason}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS: {reason}")]
    Tls {
        /// Why, in words.
        reason: String,
    },
    /// Sending the request or reading the answer failed.
    #[error("HTTP: {reason}")]
    Http {
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("timeout: {what}")]
    Timeout {
        /// Which stage.
        what: String,
    },
    /// The receiver answered, but not 200.
    #[error(
        "the receiver answered HTTP {status} to the healthCheck (only 200 activates a webhook){}",
        excerpt(body)
    )]
    Status {
        /// Status code.
        status: u16,
        /// First bytes of the body.
        body: String,
    },
    /// The receiver refused the gzip-compressed healthCheck (415, or 400: unreadable).
    #[error("the receiver answered HTTP {status} to a gzip-compressed healthCheck: {}; set compression = \"none\" for this webhook (--compression none){}", if *status == 415 { "it does not accept Content-Encoding: gzip" } else { "it could not read the body, so it probably does not accept Content-Encoding: gzip" }, excerpt(body))]
    Compression {
        /// Status code (415 or 400).
        status: u16,
        /// First bytes of the body.
        body: String,
    },
}

/// `": body"`, or nothing for an empty body.
fn excerpt(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// Sends a `healthCheck` to the webhook's URL with its auth, headers and signature.
pub(crate) async fn probe(
    w: &WebhookSettings,
    org_id: &str,
    message_id: &str,
) -> Result<ProbeReport, ProbeError> {
    let started = Instant::now();
    let host = w
        .url
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = w.url.port_u16().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> = within(
        w.connect_timeout,
        "resolving the host",
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await?
    .map_err(|e| ProbeError::Dns {
        host: host.clone(),
        reason: e.to_string(),
    })?
    .collect();
    let mut tcp = None;
    let mut last = String::from("no address");
    for addr in &addrs {
        match within(
            w.connect_timeout,
            "connecting",
            tokio::net::TcpStream::connect(addr),
        )
        .await?
        {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or_else(|| ProbeError::Connect {
        addr: format!("{host}:{port}"),
        reason: last,
    })?;
    let _ = tcp.set_nodelay(true);
    let cfg = crate::tls::client_config(&w.trust, &[b"http/1.1"]).map_err(|e| ProbeError::Tls {
        reason: e.to_string(),
    })?;
    let name = ServerName::try_from(host.clone()).map_err(|e| ProbeError::Tls {
        reason: format!("{host:?} is not a valid TLS server name: {e}"),
    })?;
    let tls = within(
        w.connect_timeout,
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await?
    .map_err(|e| ProbeError::Tls {
        reason: explain_tls(&e, &host),
    })?;
    let (tls_version, peer) = {
        let (_, conn) = tls.get_ref();
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        };
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::tls::describe_cert(c.as_ref()))
            .unwrap_or_default();
        (version, peer)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ProbeError::Http {
            reason: e.to_string(),
        })?;
    tokio::spawn(conn);
    let body = crate::deliver::payload::health_check(org_id);
    let authority = w
        .url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host.clone());
    let mut req = Request::post(w.url.clone())
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("roomhook/", env!("CARGO_PKG_VERSION")));
    for (k, v) in &w.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(a) = w.auth.header_value() {
        req = req.header(AUTHORIZATION, a.expose());
    }
    // Signed over the body as it is; then compressed (always, when the webhook compresses).
    for (k, v) in crate::deliver::signing::headers(w.signer.as_ref(), message_id, &body) {
        req = req.header(k, v);
    }
    let wire = crate::deliver::compress::encode(w.compression, Bytes::from(body), 0).await;
    let wire_compressed = wire.encoding.is_some();
    if let Some(encoding) = wire.encoding {
        req = req.header(CONTENT_ENCODING, encoding);
    }
    let req = req
        .body(Full::new(wire.body))
        .map_err(|e| ProbeError::Http {
            reason: format!("cannot build the request: {e}"),
        })?;
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, hyper::Error>((status, body))
    };
    let (status, body) = within(w.request_timeout, "waiting for the answer", exchange)
        .await?
        .map_err(|e| explain_http(&e, &host))?;
    let cut = &body[..body.len().min(BODY_EXCERPT)];
    Ok(ProbeReport {
        status,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        tls_version,
        peer_subject: peer.0,
        peer_issuer: peer.1,
        peer_not_after: peer.2,
        body: String::from_utf8_lossy(cut).trim().to_string(),
        compressed: wire_compressed,
    })
}

async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| ProbeError::Timeout {
            what: format!("{what} took longer than {limit:?}"),
        })
}

/// Says in words why a handshake failed.
fn explain_tls(e: &std::io::Error, host: &str) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(inner) => explain_rustls(inner, host),
        None => format!("handshake failed: {e}"),
    }
}

/// Why a request failed; a TLS alert that came after the handshake (TLS 1.3 servers check
/// client certificates then) is explained like a handshake failure.
fn explain_http(e: &hyper::Error, host: &str) -> ProbeError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(err, |i| i as &(dyn std::error::Error + 'static));
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return ProbeError::Tls {
                reason: explain_rustls(tls, host),
            };
        }
        cur = inner.source();
    }
    ProbeError::Http {
        reason: e.to_string(),
    }
}

fn explain_rustls(inner: &rustls::Error, host: &str) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match inner {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the receiver's certificate is not trusted: it is self-signed or issued by a CA that is neither a public root nor in ca_file ({inner})"
        ),
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!("the receiver's certificate has expired ({inner})")
        }
        Error::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            format!("the receiver's certificate is not valid yet: check the clock of this gateway ({inner})")
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("the receiver's certificate is not valid for {host} ({inner})"),
        Error::InvalidCertificate(_) => {
            format!("the receiver's certificate was refused ({inner})")
        }
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA,
        ) => format!(
            "the receiver refused the handshake ({inner}): does it require a client certificate (client_cert_file / client_key_file)?"
        ),
        other => format!("handshake failed: {other}"),
    }
}
