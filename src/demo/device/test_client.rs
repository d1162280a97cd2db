//! Test-only: the client side the simulator's tests share — wss:// connections pinned to the
//! device's certificate, credentials, JSON-RPC calls and waiting for frames.

use super::transport::ws_config;
use super::{DeviceSim, DeviceSimOptions, Role};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(super) type Tls = tokio_rustls::client::TlsStream<TcpStream>;
pub(super) type Ws = WebSocketStream<Tls>;
pub(super) const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

pub(super) async fn tls_connect(sim: &DeviceSim) -> Tls {
    let pin = crate::config::parse_pin(&sim.cert_sha256()).unwrap();
    let config = crate::source::roomos::connect::tls_config(
        &crate::config::DeviceTrust::Pin(pin),
        Default::default(),
    )
    .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", sim.port())).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Opens a wss connection with these extra request headers.
pub(super) async fn open(
    sim: &DeviceSim,
    headers: &[(&'static str, String)],
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut req = sim.url().into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let tls = tls_connect(sim).await;
    tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_with_config(req, tls, Some(ws_config())),
    )
    .await
    .expect("handshake timed out")
}

pub(super) fn basic(user: &str, pass: &str) -> (&'static str, String) {
    (
        "Authorization",
        format!("Basic {}", STANDARD.encode(format!("{user}:{pass}"))),
    )
}

pub(super) async fn connect(sim: &DeviceSim) -> Ws {
    open(sim, &[basic("admin", "secret")]).await.unwrap().0
}

/// The next text frame, as JSON.
pub(super) async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
            .expect("connection ended")
            .expect("connection failed");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Asserts that no frame arrives for a while.
pub(super) async fn quiet(ws: &mut Ws) {
    if let Ok(m) = tokio::time::timeout(QUIET, ws.next()).await {
        panic!("unexpected frame {m:?}");
    }
}

pub(super) async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    id: Value,
    method: &str,
    params: Value,
) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::text(req.to_string())).await.unwrap();
    let resp = recv(ws).await;
    assert_eq!(resp["id"], id, "{resp}");
    resp
}

pub(super) async fn start(role: Role) -> DeviceSim {
    DeviceSim::start(DeviceSimOptions {
        role,
        ..DeviceSimOptions::default()
    })
    .await
    .unwrap()
}
