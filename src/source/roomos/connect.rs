//! Opening a RoomOS device's xAPI WebSocket: TCP, TLS trusted by a pinned SHA-256 of the
//! device's certificate or by a CA file (never by switching checks off), the upgrade with
//! Basic credentials in a header or in the `auth-…` subprotocol, and what a failure means.

use crate::config::{DeviceAuthMode, DeviceTrust, RoomosSettings};
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A byte stream a WebSocket runs over (TLS or, for a lab, plain TCP).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open xAPI WebSocket.
pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// Why a connection failed, as far as what to do next is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// DNS, TCP, timeouts: back off and retry.
    Network,
    /// The certificate is not the pinned one / not trusted: retry slowly, it will not fix itself.
    Trust,
    /// 401/403: wrong user or password: retry slowly.
    Auth,
    /// 502: the device is rebooting.
    Rebooting,
    /// 503: the device limits connection attempts.
    RateLimited,
    /// Any other answer: WebSocket not enabled, wrong path.
    Refused,
}

/// A failed connection attempt, with a sentence for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ConnectError {
    /// What kind of failure.
    pub(crate) kind: FailKind,
    /// What happened and what to do.
    pub(crate) message: String,
}

/// What the TLS handshake saw of the device's certificate.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerCert {
    /// The leaf certificate (DER), when one was presented.
    pub(crate) der: Option<Vec<u8>>,
    /// Negotiated TLS version.
    pub(crate) version: Option<String>,
}

/// SHA-256 of a certificate, as `AB:CD:…` (what `pin_sha256` takes).
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Trusts exactly the certificate whose SHA-256 is pinned (the handshake signature is still
/// verified with it); records what was presented.
#[derive(Debug)]
struct Verifier {
    pin: Option<[u8; 32]>,
    /// For `ca_file`: the usual chain and name checks.
    webpki: Option<Arc<dyn ServerCertVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<Mutex<PeerCert>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            s.der = Some(end_entity.to_vec());
        }
        if let Some(pin) = &self.pin {
            let got = ring::digest::digest(&ring::digest::SHA256, end_entity);
            return if got.as_ref() == pin {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(format!(
                    "the device's certificate has SHA-256 {}, which is not pin_sha256",
                    fingerprint(end_entity)
                )))
            };
        }
        match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::General("no trust configured".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration for a device: its pin or CA, no session cache; what the
/// handshake sees of the certificate goes to `seen`.
pub(crate) fn tls_config(
    trust: &DeviceTrust,
    seen: Arc<Mutex<PeerCert>>,
) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    crate::tls::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let trust_err = |e: String| ConnectError {
        kind: FailKind::Trust,
        message: e,
    };
    let (pin, webpki) = match trust {
        DeviceTrust::Pin(p) => (Some(*p), None),
        DeviceTrust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = crate::tls::load_pem_certs(path).map_err(|e| trust_err(e.to_string()))?;
            for c in certs {
                roots.add(c).map_err(|e| trust_err(e.to_string()))?;
            }
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| trust_err(e.to_string()))?;
            (None, Some(v as Arc<dyn ServerCertVerifier>))
        }
    };
    let verifier = Verifier {
        pin,
        webpki,
        provider: provider.clone(),
        seen,
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| trust_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // One long-lived connection per device: session resumption would save a handshake per
    // reconnect, but its cache (sized for 256 servers) and tickets cost ~15 KiB per device.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The `auth-…` subprotocol: base64url of `user:pass` without padding.
pub(crate) fn auth_subprotocol(user: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!(
        "auth-{}",
        b64.replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
    )
}

fn ws_url(s: &RoomosSettings) -> String {
    let host = if s.host.contains(':') {
        format!("[{}]", s.host)
    } else {
        s.host.clone()
    };
    let scheme = if s.trust.is_some() { "wss" } else { "ws" };
    format!("{scheme}://{host}:{}{}", s.port, s.path)
}

/// The WebSocket limits: small buffers (a gateway holds dozens of these), frames capped.
pub(crate) fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Connects, authenticates and upgrades, within `timeout`.
pub(crate) async fn connect(
    s: &RoomosSettings,
    timeout: Duration,
    seen: Arc<Mutex<PeerCert>>,
) -> Result<Ws, ConnectError> {
    match tokio::time::timeout(timeout, connect_inner(s, seen)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError {
            kind: FailKind::Network,
            message: format!(
                "no answer from {}:{} within {timeout:?} (is the address right, is the device up?)",
                s.host, s.port
            ),
        }),
    }
}

async fn connect_inner(s: &RoomosSettings, seen: Arc<Mutex<PeerCert>>) -> Result<Ws, ConnectError> {
    let net = |m: String| ConnectError {
        kind: FailKind::Network,
        message: m,
    };
    let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| net(format!("connect to {}:{}: {e}", s.host, s.port)))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match &s.trust {
        None => Box::new(tcp),
        Some(trust) => {
            let cfg = tls_config(trust, seen.clone())?;
            let name = ServerName::try_from(s.host.clone())
                .map_err(|e| net(format!("{:?} is not a host name: {e}", s.host)))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let text = e.to_string();
                    let kind = if text.contains("certificate") || text.contains("pin_sha256") {
                        FailKind::Trust
                    } else {
                        FailKind::Network
                    };
                    let hint = match (&kind, trust) {
                        (FailKind::Trust, DeviceTrust::Pin(_)) => {
                            " (the device's certificate changed, or the pin is wrong: `roomhook source test` prints the one it presents)"
                        }
                        (FailKind::Trust, DeviceTrust::Ca(_)) => {
                            " (the certificate is not issued by ca_file's CA for this address)"
                        }
                        _ => "",
                    };
                    ConnectError {
                        kind,
                        message: format!("TLS handshake with {}:{} failed: {text}{hint}", s.host, s.port),
                    }
                })?;
            if let Ok(mut p) = seen.lock() {
                p.version = tls
                    .get_ref()
                    .1
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .map(|v| v.replace('_', ".").replace("TLSv1.", "TLS 1."));
            }
            Box::new(tls)
        }
    };
    let mut req = ws_url(s)
        .into_client_request()
        .map_err(|e| net(format!("bad URL {}: {e}", ws_url(s))))?;
    let header = match s.auth_mode {
        DeviceAuthMode::Header => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                s.username,
                s.password.expose()
            ));
            ("authorization", format!("Basic {b64}"))
        }
        DeviceAuthMode::Subprotocol => (
            "sec-websocket-protocol",
            auth_subprotocol(&s.username, s.password.expose()),
        ),
    };
    let value = HeaderValue::from_str(&header.1).map_err(|_| ConnectError {
        kind: FailKind::Auth,
        message: "the user name or password has characters a header cannot carry".into(),
    })?;
    req.headers_mut().insert(header.0, value);
    match tokio_tungstenite::client_async_with_config(req, io, Some(ws_config(s.max_frame))).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let code = resp.status().as_u16();
            let (kind, what) = match code {
                401 | 403 => (
                    FailKind::Auth,
                    format!(
                        "the device refused the credentials of user {:?} (HTTP {code}): check the user and its password on the device (a local user, role Integrator or higher){}",
                        s.username,
                        if code == 401 && s.trust.is_none() {
                            "; a 401 on ws:// can also mean the device accepts HTTPS only"
                        } else {
                            ""
                        }
                    ),
                ),
                502 => (FailKind::Rebooting, "the device is rebooting (HTTP 502)".to_string()),
                503 => (
                    FailKind::RateLimited,
                    "the device limits connection attempts (HTTP 503), backing off".to_string(),
                ),
                _ => (
                    FailKind::Refused,
                    format!(
                        "the device answered HTTP {code} to the WebSocket upgrade: is xConfiguration NetworkServices Websocket set to FollowHTTPService, and the path {} right?",
                        s.path
                    ),
                ),
            };
            Err(ConnectError {
                kind,
                message: what,
            })
        }
        Err(e) => Err(net(format!(
            "WebSocket handshake with {}:{}: {e}",
            s.host, s.port
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subprotocol_is_base64url_without_padding() {
        // "user:pass?>" in standard base64 is "dXNlcjpwYXNzPz4=" — '+'/'/' and '=' change.
        assert_eq!(auth_subprotocol("user", "pass?>"), "auth-dXNlcjpwYXNzPz4");
        assert_eq!(auth_subprotocol("a", "b~~~"), "auth-YTpifn5-");
        assert_eq!(auth_subprotocol("a", "b???"), "auth-YTpiPz8_");
    }

    #[test]
    fn fingerprints_are_colon_hex() {
        let f = fingerprint(b"x");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert_eq!(crate::config::parse_pin(&f).ok().map(|p| p.len()), Some(32));
    }
}
