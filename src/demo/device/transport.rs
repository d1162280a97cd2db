//! The server side of the socket: accepting TCP, TLS, the WebSocket upgrade and its
//! authentication, and each connection's loop, the single reader and writer of its socket.

use super::tree::Conn;
use super::{Control, Shared};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a client may take for the TLS handshake and the HTTP upgrade together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame or message a client may send.
const MAX_MESSAGE: usize = 1 << 20;

/// A frame for a connection's writer.
pub(super) enum Out {
    /// A text frame.
    Text(String),
    /// A binary frame (sent only through the `faults` knob `send_binary`).
    #[cfg_attr(not(any(test, feature = "faults")), allow(dead_code))]
    Binary(Vec<u8>),
}

/// The TLS side of a wss:// device: this certificate (DER) and key.
pub(super) fn acceptor(cert_der: &[u8], key: &rcgen::KeyPair) -> std::io::Result<TlsAcceptor> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(rustls::DEFAULT_VERSIONS)
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert_der.to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .map_err(std::io::Error::other)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Shared {
    /// The upgrade callback: counts the attempt, checks the path and the credentials.
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback has
    fn check_upgrade(&self, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
        self.handshakes.fetch_add(1, Ordering::SeqCst);
        let forced = self.handshake_status.load(Ordering::SeqCst);
        if forced != 0 {
            let status = u16::try_from(forced).unwrap_or(500);
            return Err(reject(status, "Refused by the simulator"));
        }
        if req.uri().path() != "/ws" {
            return Err(reject(404, "Not Found"));
        }
        let mut offered = false;
        let mut ok = false;
        for value in req.headers().get_all(header::AUTHORIZATION) {
            let Ok(text) = value.to_str() else {
                offered = true;
                continue;
            };
            let text = text.trim();
            let (Some(scheme), Some(encoded)) = (text.get(..6), text.get(6..)) else {
                continue;
            };
            if scheme.eq_ignore_ascii_case("basic ") {
                offered = true;
                if STANDARD.decode(encoded.trim()).ok().as_deref() == Some(&self.credentials) {
                    ok = true;
                }
            }
        }
        let url_safe = GeneralPurpose::new(
            &alphabet::URL_SAFE,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let mut echo: Option<String> = None;
        for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
            for proto in value.to_str().unwrap_or("").split(',').map(str::trim) {
                let Some(encoded) = proto.strip_prefix("auth-") else {
                    continue;
                };
                offered = true;
                let good = url_safe.decode(encoded).ok().as_deref() == Some(&self.credentials);
                if good {
                    ok = true;
                }
                if good || echo.is_none() {
                    echo = Some(proto.to_string());
                }
            }
        }
        if !offered {
            let mut r = reject(401, "Unauthorized");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RoomOS\""),
            );
            return Err(r);
        }
        if !ok {
            return Err(reject(403, "Forbidden"));
        }
        if let Some(proto) = echo {
            if let Ok(v) = HeaderValue::from_str(&proto) {
                resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        Ok(resp)
    }
}

/// An HTTP refusal of an upgrade.
fn reject(status: u16, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// The WebSocket settings: small buffers (many devices share a process).
pub(super) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Resolves once the device is stopped.
async fn stopped(mut ctl: watch::Receiver<Control>) {
    loop {
        let stop = ctl.borrow_and_update().stop;
        if stop || ctl.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts TCP connections until the device stops.
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut ctl = shared.ctl.subscribe();
    loop {
        if ctl.borrow_and_update().stop {
            return;
        }
        tokio::select! {
            changed = ctl.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let shared = shared.clone();
                    let until = shared.ctl.subscribe();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve_socket(shared, tcp) => {}
                            _ = stopped(until) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "simulated device: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// One TCP connection: TLS (if on), the upgrade, then the xAPI.
async fn serve_socket(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    match shared.tls.clone() {
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => upgrade(shared, tls).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "simulated device: TLS handshake failed"),
                Err(_) => tracing::debug!("simulated device: TLS handshake timed out"),
            }
        }
        None => upgrade(shared, tcp).await,
    }
}

/// The WebSocket upgrade, then the connection.
async fn upgrade<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let checker = shared.clone();
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback has
    let callback = move |req: &Request, resp: Response| checker.check_upgrade(req, resp);
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())),
    )
    .await;
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "simulated device: upgrade refused or failed");
            return;
        }
        Err(_) => {
            tracing::debug!("simulated device: upgrade timed out");
            return;
        }
    };
    shared.connects.fetch_add(1, Ordering::SeqCst);
    shared
        .connect_times
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Instant::now());
    run_connection(shared, ws).await;
}

/// Unregisters a connection when its task ends, however it ends.
struct ConnGuard {
    /// The device.
    shared: Arc<Shared>,
    /// The connection's id.
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.id);
    }
}

/// Serves an upgraded connection: the single reader and writer of its socket.
async fn run_connection<S>(shared: Arc<Shared>, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ctl = shared.ctl.subscribe();
    let generation = ctl.borrow_and_update().drop_gen;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut st = shared.lock();
        let id = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(
            id,
            Conn {
                tx,
                subs: BTreeMap::new(),
                next_sub: 1,
            },
        );
        id
    };
    let _guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    loop {
        let now = *ctl.borrow_and_update();
        if now.stop || now.drop_gen != generation {
            return; // dropping the stream closes TCP: no close frame
        }
        if now.silent {
            if ctl.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            changed = ctl.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            out = rx.recv() => {
                let msg = match out {
                    Some(Out::Text(t)) => Message::text(t),
                    Some(Out::Binary(b)) => Message::binary(b),
                    None => return,
                };
                if !send_frame(&mut ws, msg, &mut ctl, generation).await {
                    return;
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let mut st = shared.lock();
                    let frames = shared.handle_text(&mut st, id, text.as_str());
                    if let Some(conn) = st.conns.get(&id) {
                        for frame in frames {
                            let _ = conn.tx.send(Out::Text(frame));
                        }
                    }
                }
                // Pings are answered by tungstenite on the next read; close frames too.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "simulated device: connection failed");
                    return;
                }
                None => return,
            }
        }
    }
}

/// Sends one frame, giving up if the device stops or drops its connections meanwhile.
async fn send_frame<S>(
    ws: &mut WebSocketStream<S>,
    msg: Message,
    ctl: &mut watch::Receiver<Control>,
    generation: u64,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send = ws.send(msg);
    tokio::pin!(send);
    loop {
        tokio::select! {
            sent = &mut send => return sent.is_ok(),
            changed = ctl.changed() => {
                if changed.is_err() {
                    return false;
                }
                let now = *ctl.borrow_and_update();
                if now.stop || now.drop_gen != generation {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_client::{
        basic, call, connect, open, quiet, start, tls_connect, Ws, WAIT,
    };
    use super::super::{DeviceSim, DeviceSimOptions, Role};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use futures_util::{SinkExt as _, StreamExt as _};
    use serde_json::json;
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::Message;

    fn refused_status(r: Result<(Ws, impl std::fmt::Debug), WsError>) -> u16 {
        match r {
            Err(WsError::Http(resp)) => resp.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {other:?}"),
        }
    }

    /// Polls `cond` until it holds (bounded).
    async fn eventually(mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(WAIT, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("condition never held");
    }

    #[tokio::test]
    async fn subprotocol_auth_is_echoed() {
        let sim = DeviceSim::start(DeviceSimOptions {
            password: "s~~~".to_string(),
            ..DeviceSimOptions::default()
        })
        .await
        .unwrap();
        let token = STANDARD
            .encode("admin:s~~~")
            .replace('+', "-")
            .replace('/', "_")
            .replace('=', "");
        assert!(token.contains('-') || token.contains('_'), "{token}");
        let proto = format!("auth-{token}");
        let (mut ws, resp) = open(&sim, &[("Sec-WebSocket-Protocol", proto.clone())])
            .await
            .unwrap();
        assert_eq!(
            resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
            proto.as_str()
        );
        let r = call(
            &mut ws,
            json!(7),
            "xGet",
            json!({"Path": ["Status", "SystemUnit", "ProductId"]}),
        )
        .await;
        assert_eq!(r["result"], json!("Cisco Room Kit"));
    }

    #[tokio::test]
    async fn refused_upgrades() {
        let sim = start(Role::Integrator).await;
        assert_eq!(
            refused_status(open(&sim, &[basic("admin", "wrong")]).await),
            403
        );
        assert_eq!(refused_status(open(&sim, &[]).await), 401);
        let bad_proto = ("Sec-WebSocket-Protocol", "auth-Zm9vOmJhcg".to_string());
        assert_eq!(refused_status(open(&sim, &[bad_proto]).await), 403);
        sim.set_handshake_status(Some(503));
        assert_eq!(
            refused_status(open(&sim, &[basic("admin", "secret")]).await),
            503
        );
        sim.set_handshake_status(None);
        let _ws = connect(&sim).await;
        assert_eq!(sim.handshakes(), 5);
        assert_eq!(sim.connects(), 1);

        // Another path: 404.
        let mut req = format!("wss://127.0.0.1:{}/other", sim.port())
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&basic("admin", "secret").1).unwrap(),
        );
        let tls = tls_connect(&sim).await;
        let r = tokio_tungstenite::client_async_with_config(req, tls, None).await;
        assert_eq!(refused_status(r), 404);
    }

    #[tokio::test]
    async fn faults_drop_silence_raw_and_stop() {
        let sim = start(Role::Integrator).await;
        let mut ws = connect(&sim).await;

        sim.send_raw("{\"jsonrpc\":\"2.0\",");
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "{\"jsonrpc\":\"2.0\","),
            other => panic!("{other:?}"),
        }
        sim.send_binary(vec![1, 2, 3]);
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[1, 2, 3]),
            other => panic!("{other:?}"),
        }

        // Pings are answered, except while silent.
        ws.send(Message::Ping(b"a".to_vec().into())).await.unwrap();
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"a"),
            other => panic!("{other:?}"),
        }
        sim.set_silent(true);
        ws.send(Message::Ping(b"b".to_vec().into())).await.unwrap();
        quiet(&mut ws).await;
        sim.set_silent(false);
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"b"),
            other => panic!("{other:?}"),
        }

        // drop_connections: the client sees the end, without a close frame.
        sim.drop_connections();
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            None | Some(Err(_)) => {}
            Some(Ok(m)) => panic!("unexpected {m:?}"),
        }
        eventually(|| sim.connections() == 0).await;

        // A new connection after the drop works.
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xGet",
            json!({"Path": ["Status", "Standby", "State"]}),
        )
        .await;
        assert_eq!(r["result"], json!("Standby"));
        assert_eq!(sim.connects(), 2);

        // stop: connections end and the port closes.
        let other = sim.clone();
        other.stop();
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            None | Some(Err(_)) => {}
            Some(Ok(m)) => panic!("unexpected {m:?}"),
        }
        let port = sim.port();
        tokio::time::timeout(WAIT, async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("still listening after stop");
    }

    #[tokio::test]
    async fn plain_ws() {
        let sim = DeviceSim::start(DeviceSimOptions {
            tls: false,
            role: Role::Admin,
            ..DeviceSimOptions::default()
        })
        .await
        .unwrap();
        assert!(sim.url().starts_with("ws://127.0.0.1:"));
        let mut req = sim.url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&basic("admin", "secret").1).unwrap(),
        );
        let tcp = TcpStream::connect(("127.0.0.1", sim.port())).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, None)
            .await
            .unwrap();
        let r = call(
            &mut ws,
            json!(1),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "AirQuality"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"RoomAnalytics": {"AirQuality": {"Index": "1.4"}}}})
        );
        drop(sim);
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            None | Some(Err(_)) => {}
            Some(Ok(m)) => panic!("unexpected {m:?}"),
        }
    }
}
