//! A simulated Cisco RoomOS device: the xAPI (JSON-RPC 2.0) over a real wss:// server with a throwaway self-signed certificate, for roomhook demo, the tests and the benchmark.
//!
//! The simulator keeps a status tree shaped as the device returns it (objects, and arrays
//! as lists of objects with a string `"id"`), answers `xGet`, `xQuery`,
//! `xFeedback/Subscribe` and `xFeedback/Unsubscribe`, and pushes `xFeedback/Event`
//! notifications when the test or demo changes a value, removes an array entry (a ghost)
//! or emits an event. Faults can be injected: malformed frames, abrupt disconnects,
//! refused upgrades and a silent (dead) peer.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
/// Subscriptions one connection may hold (RoomOS's limit).
const MAX_SUBSCRIPTIONS: usize = 50;
/// The largest frame or message a client may send.
const MAX_MESSAGE: usize = 1 << 20;

/// What the simulated device's account may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Reads everything.
    Admin,
    /// Reads everything but the main unit's environmental sensors (temperature, humidity, air quality).
    #[default]
    Integrator,
    /// Reads everything.
    User,
}

/// How a simulated device looks and whom it lets in.
#[derive(Debug, Clone)]
pub struct DeviceSimOptions {
    /// `Status.SystemUnit.Hardware.Module.SerialNumber`, e.g. "FOC2447N0AB".
    pub serial: String,
    /// `Status.SystemUnit.ProductId`, e.g. "Cisco Room Kit Pro".
    pub product_id: String,
    /// The account's user name.
    pub username: String,
    /// The account's password.
    pub password: String,
    /// What the account may read.
    pub role: Role,
    /// true: wss:// with a self-signed certificate; false: plain ws:// (lab use).
    pub tls: bool,
}

impl Default for DeviceSimOptions {
    fn default() -> Self {
        DeviceSimOptions {
            serial: "FOC0000SIM1".to_string(),
            product_id: "Cisco Room Kit".to_string(),
            username: "admin".to_string(),
            password: "secret".to_string(),
            role: Role::Integrator,
            tls: true,
        }
    }
}

/// A running simulated device; a cheap handle (clones share the device, which stops when
/// `stop()` is called or the last handle is dropped).
#[derive(Clone)]
pub struct DeviceSim {
    /// The shared owner; its drop stops the device.
    owner: Arc<Owner>,
}

impl std::fmt::Debug for DeviceSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSim")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

/// Stops the device when the last `DeviceSim` handle goes away.
struct Owner {
    /// The state the server tasks share.
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// Switches the server tasks watch.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    /// The device is stopped: every task ends.
    stop: bool,
    /// Connections read and write nothing.
    silent: bool,
    /// Bumped by `drop_connections`: connections opened before the bump end.
    drop_gen: u64,
}

/// What the accept loop and the connection tasks share with the handles.
struct Shared {
    /// Listening port on 127.0.0.1.
    port: u16,
    /// Whether the server speaks TLS.
    tls: Option<TlsAcceptor>,
    /// The certificate (DER).
    cert_der: Vec<u8>,
    /// The certificate (PEM).
    cert_pem: String,
    /// The account's `user:password`.
    credentials: Vec<u8>,
    /// What the account may not read.
    deny: Deny,
    /// The status tree, the schemas and the connections.
    state: Mutex<State>,
    /// Stop, silence and disconnect switches.
    ctl: watch::Sender<Control>,
    /// Forced HTTP status for upgrades (0: none).
    handshake_status: AtomicU32,
    /// Upgrade attempts.
    handshakes: AtomicU64,
    /// Successful upgrades.
    connects: AtomicU64,
    /// When each successful upgrade happened.
    connect_times: Mutex<Vec<Instant>>,
}

/// The device's data and its connections.
struct State {
    /// The Status document's content (without the "Status" wrapper).
    tree: Value,
    /// Every Status path the device knows of (valid even when no value is there now).
    schema: Schema,
    /// Every Event path the device knows of.
    event_schema: Schema,
    /// Open connections by id.
    conns: BTreeMap<u64, Conn>,
    /// Id for the next connection.
    next_conn: u64,
}

/// One open WebSocket connection.
struct Conn {
    /// Frames for its writer, in order.
    tx: mpsc::UnboundedSender<Out>,
    /// Its feedback subscriptions by id.
    subs: BTreeMap<u64, Sub>,
    /// Id for its next subscription.
    next_sub: u64,
}

/// A frame for a connection's writer.
enum Out {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// One feedback subscription.
struct Sub {
    /// The document it watches.
    doc: Doc,
    /// The query below the document name.
    pattern: Vec<Elem>,
    /// The query as the client sent it, as strings.
    query: Vec<String>,
}

/// An xAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doc {
    /// Status values.
    Status,
    /// Events.
    Event,
}

impl Doc {
    /// The document's name, as the first path element and the notification key.
    fn name(self) -> &'static str {
        match self {
            Doc::Status => "Status",
            Doc::Event => "Event",
        }
    }
}

/// One element of a query path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    /// A node name, or an array entry id after an array name.
    Key(String),
    /// `*`: any one level.
    Any,
    /// `**`: any depth, including none.
    Deep,
}

/// One element of a dotted path given to `set_status`, `remove` or `emit_event`.
#[derive(Debug, Clone)]
enum Seg {
    /// A node name.
    Key(String),
    /// `Name[id]`: the entry with this id in the array `Name`.
    Indexed(String, String),
}

/// The Status paths an account may not read (relative to Status).
#[derive(Debug, Clone, Copy)]
struct Deny(&'static [&'static [&'static str]]);

/// What an Integrator account may not read.
const INTEGRATOR_DENY: &[&[&str]] = &[
    &["RoomAnalytics", "AmbientTemperature"],
    &["RoomAnalytics", "RelativeHumidity"],
    &["RoomAnalytics", "AirQuality"],
];

impl Deny {
    /// The paths `role` may not read.
    fn for_role(role: Role) -> Deny {
        match role {
            Role::Integrator => Deny(INTEGRATOR_DENY),
            Role::Admin | Role::User => Deny(&[]),
        }
    }

    /// Whether the concrete path is (below) a forbidden node.
    fn path(&self, path: &[String]) -> bool {
        self.0
            .iter()
            .any(|f| path.len() >= f.len() && f.iter().zip(path).all(|(a, b)| *a == b.as_str()))
    }

    /// Whether a query names a forbidden node (or something below it) literally.
    fn pattern(&self, pat: &[Elem]) -> bool {
        self.0.iter().any(|f| {
            pat.len() >= f.len()
                && f.iter()
                    .zip(pat)
                    .all(|(a, b)| matches!(b, Elem::Key(k) if k == a))
        })
    }
}

/// The shape of a document: which paths exist.
#[derive(Debug, Clone, Default)]
enum Schema {
    /// A value.
    #[default]
    Leaf,
    /// An object with named children.
    Node(BTreeMap<String, Schema>),
    /// An array whose entries have this shape (a `Node`).
    List(Box<Schema>),
}

impl Schema {
    /// The shape of a value.
    fn of(value: &Value) -> Schema {
        match value {
            Value::Object(m) => {
                Schema::Node(m.iter().map(|(k, v)| (k.clone(), Schema::of(v))).collect())
            }
            Value::Array(list) => {
                let mut element = Schema::Node(BTreeMap::new());
                for entry in list {
                    let mut s = Schema::of(entry);
                    if let Schema::Node(m) = &mut s {
                        m.remove("id");
                    }
                    element.merge(s);
                }
                Schema::List(Box::new(element))
            }
            _ => Schema::Leaf,
        }
    }

    /// Adds the paths of `other`.
    fn merge(&mut self, other: Schema) {
        match (&mut *self, other) {
            (_, Schema::Leaf) => {}
            (Schema::Node(a), Schema::Node(b)) => {
                for (k, v) in b {
                    a.entry(k).or_default().merge(v);
                }
            }
            (Schema::List(a), Schema::List(b)) => a.merge(*b),
            (me, other) => *me = other,
        }
    }

    /// Whether a query matches at least one path of this shape.
    fn matches(&self, pat: &[Elem]) -> bool {
        let Some((first, rest)) = pat.split_first() else {
            return true;
        };
        if *first == Elem::Deep {
            return self.matches(rest)
                || match self {
                    Schema::Leaf => false,
                    Schema::Node(m) => m.values().any(|c| c.matches(pat)),
                    Schema::List(e) => e.matches(pat),
                };
        }
        match self {
            Schema::Leaf => false,
            Schema::Node(m) => match first {
                Elem::Key(k) => m.get(k).is_some_and(|c| c.matches(rest)),
                _ => m.values().any(|c| c.matches(rest)),
            },
            Schema::List(e) => match first {
                Elem::Key(k) if is_index(k) => e.matches(rest),
                Elem::Any => e.matches(rest),
                _ => e.matches(pat),
            },
        }
    }
}

/// A JSON-RPC error.
#[derive(Debug, Clone, Copy)]
struct RpcError {
    /// The error code.
    code: i64,
    /// The error message.
    message: &'static str,
}

/// Path matches nothing in the schema.
const NO_MATCH: RpcError = RpcError {
    code: 3,
    message: "No match on Path argument",
};
/// The account may not read this.
const DENIED: RpcError = RpcError {
    code: -31999,
    message: "Permission denied",
};
/// Too many subscriptions on one connection.
const TOO_MANY: RpcError = RpcError {
    code: -31998,
    message: "Global subscription count exceeded",
};
/// Frame is not JSON.
const PARSE_ERROR: RpcError = RpcError {
    code: -32700,
    message: "Parse error",
};
/// JSON that is not a request.
const INVALID_REQUEST: RpcError = RpcError {
    code: -32600,
    message: "Invalid Request",
};
/// Unknown method.
const NO_METHOD: RpcError = RpcError {
    code: -32601,
    message: "Method not found",
};
/// Missing or ill-typed params.
const INVALID_PARAMS: RpcError = RpcError {
    code: -32602,
    message: "Invalid params",
};

impl DeviceSim {
    /// Starts a device on 127.0.0.1 (a free port), serving until `stop()` or the drop of every handle.
    pub async fn start(opts: DeviceSimOptions) -> std::io::Result<DeviceSim> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(std::io::Error::other)?;
        let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
        let cert_der = cert.der().to_vec();
        let tls = if opts.tls {
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(std::io::Error::other)?;
            Some(TlsAcceptor::from(Arc::new(config)))
        } else {
            None
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let tree = initial_status(&opts);
        let state = State {
            schema: Schema::of(&tree),
            event_schema: Schema::of(&event_schema_tree()),
            tree,
            conns: BTreeMap::new(),
            next_conn: 1,
        };
        let (ctl, _) = watch::channel(Control::default());
        let shared = Arc::new(Shared {
            port,
            tls,
            cert_der,
            cert_pem: cert.pem(),
            credentials: format!("{}:{}", opts.username, opts.password).into_bytes(),
            deny: Deny::for_role(opts.role),
            state: Mutex::new(state),
            ctl,
            handshake_status: AtomicU32::new(0),
            handshakes: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_times: Mutex::new(Vec::new()),
        });
        tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(DeviceSim {
            owner: Arc::new(Owner { shared }),
        })
    }

    /// The shared state.
    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The xAPI WebSocket URL: "wss://127.0.0.1:PORT/ws" (or ws://).
    pub fn url(&self) -> String {
        let scheme = if self.shared().tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://127.0.0.1:{}/ws", self.shared().port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.shared().port
    }

    /// SHA-256 of the certificate DER, uppercase hex with ':' between bytes.
    pub fn cert_sha256(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.shared().cert_der);
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.shared().cert_pem.clone()
    }

    /// The certificate (DER), e.g. to pin it in a client.
    pub fn cert_der(&self) -> Vec<u8> {
        self.shared().cert_der.clone()
    }

    /// Sets a status value ("RoomAnalytics.PeopleCount.Current",
    /// "Peripherals.ConnectedDevice[1002].RoomAnalytics.AmbientTemperature"), creating what is
    /// missing, and notifies the matching subscriptions if the value changed.
    pub fn set_status(&self, path: &str, value: Value) {
        let Some(segs) = parse_dotted(path, "Status") else {
            tracing::warn!(path, "simulated device: bad status path");
            return;
        };
        let shared = self.shared();
        let mut st = shared.lock();
        if !set_in(&mut st.tree, &segs, value.clone()) {
            return;
        }
        let change = build_tree(&segs, value);
        st.schema.merge(Schema::of(&change));
        st.notify(Doc::Status, &change, &change, shared.deny);
    }

    /// Removes a status node; for an array entry ("Peripherals.ConnectedDevice[1115]") the
    /// subscriptions that covered it get a ghost.
    pub fn remove(&self, path: &str) {
        let Some(segs) = parse_dotted(path, "Status") else {
            tracing::warn!(path, "simulated device: bad status path");
            return;
        };
        let shared = self.shared();
        let mut st = shared.lock();
        let Some(old) = remove_at(&mut st.tree, &segs) else {
            return;
        };
        if let Some(Seg::Indexed(..)) = segs.last() {
            let covered = build_tree(&segs, old);
            let ghost = build_tree(&segs, json!({ "ghost": "True" }));
            st.notify(Doc::Status, &covered, &ghost, shared.deny);
        }
    }

    /// Emits an event ("UserInterface.Extensions.Widget.Action", {"WidgetId":"w1",...}) to the matching Event subscriptions.
    pub fn emit_event(&self, path: &str, value: Value) {
        let Some(segs) = parse_dotted(path, "Event") else {
            tracing::warn!(path, "simulated device: bad event path");
            return;
        };
        let event = build_tree(&segs, value);
        let mut st = self.shared().lock();
        st.event_schema.merge(Schema::of(&event));
        st.notify(Doc::Event, &event, &event, Deny(&[]));
    }

    /// Sends this text frame verbatim to every open connection.
    pub fn send_raw(&self, text: &str) {
        let st = self.shared().lock();
        for conn in st.conns.values() {
            let _ = conn.tx.send(Out::Text(text.to_string()));
        }
    }

    /// Sends this binary frame to every open connection.
    pub fn send_binary(&self, bytes: Vec<u8>) {
        let st = self.shared().lock();
        for conn in st.conns.values() {
            let _ = conn.tx.send(Out::Binary(bytes.clone()));
        }
    }

    /// Closes every open connection abruptly (TCP close, no close frame).
    pub fn drop_connections(&self) {
        self.shared()
            .ctl
            .send_modify(|c| c.drop_gen = c.drop_gen.wrapping_add(1));
    }

    /// Some(status): refuse new upgrades with this HTTP status; None: accept them normally.
    pub fn set_handshake_status(&self, status: Option<u16>) {
        self.shared()
            .handshake_status
            .store(status.map_or(0, u32::from), Ordering::SeqCst);
    }

    /// While true, connections read and write nothing (pings and requests go unanswered; TCP stays open).
    pub fn set_silent(&self, silent: bool) {
        self.shared().ctl.send_modify(|c| c.silent = silent);
    }

    /// Open WebSocket connections now.
    pub fn connections(&self) -> usize {
        self.shared().lock().conns.len()
    }

    /// Successful upgrades since start.
    pub fn connects(&self) -> u64 {
        self.shared().connects.load(Ordering::SeqCst)
    }

    /// Upgrade attempts (refused ones too) since start.
    pub fn handshakes(&self) -> u64 {
        self.shared().handshakes.load(Ordering::SeqCst)
    }

    /// When each successful upgrade happened.
    pub fn connect_times(&self) -> Vec<Instant> {
        self.shared()
            .connect_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Query arrays currently subscribed, over all connections.
    pub fn subscriptions(&self) -> Vec<Vec<String>> {
        let st = self.shared().lock();
        st.conns
            .values()
            .flat_map(|c| c.subs.values().map(|s| s.query.clone()))
            .collect()
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.shared().stop();
    }
}

impl Shared {
    /// The state, even after a panic elsewhere.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells every task to end.
    fn stop(&self) {
        self.ctl.send_modify(|c| c.stop = true);
    }

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

    /// Answers one text frame from connection `conn_id`: the frames to send, in order.
    fn handle_text(&self, st: &mut State, conn_id: u64, text: &str) -> Vec<String> {
        let Ok(req) = serde_json::from_str::<Value>(text) else {
            return vec![error_frame(&Value::Null, PARSE_ERROR)];
        };
        let Some(obj) = req.as_object() else {
            return vec![error_frame(&Value::Null, INVALID_REQUEST)];
        };
        let id = obj.get("id");
        let id_valid = id.is_none_or(|v| v.is_null() || v.is_number() || v.is_string());
        let version_ok = obj.get("jsonrpc").is_none_or(|v| v.as_str() == Some("2.0"));
        let method = obj.get("method").and_then(Value::as_str);
        let (Some(method), true, true) = (method, id_valid, version_ok) else {
            let id = if id_valid { id.cloned() } else { None };
            return vec![error_frame(&id.unwrap_or(Value::Null), INVALID_REQUEST)];
        };
        let params = obj.get("params");
        let mut after = Vec::new();
        let outcome = match method {
            "xGet" => self.x_get(st, params),
            "xQuery" => self.x_query(st, params),
            "xFeedback/Subscribe" => self.subscribe(st, conn_id, params, &mut after),
            "xFeedback/Unsubscribe" => unsubscribe(st, conn_id, params),
            _ => Err(NO_METHOD),
        };
        let mut frames = Vec::with_capacity(1 + after.len());
        // A request without an id is a JSON-RPC notification: no response.
        if let Some(id) = id {
            frames.push(match outcome {
                Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }).to_string(),
                Err(e) => error_frame(id, e),
            });
        }
        frames.extend(after);
        frames
    }

    /// `xGet`: the value at a path.
    fn x_get(&self, st: &State, params: Option<&Value>) -> Result<Value, RpcError> {
        let (doc, pat, _) = parse_query(param(params, "Path")?)?;
        if doc != Doc::Status || !st.schema.matches(&pat) {
            return Err(NO_MATCH);
        }
        if self.deny.pattern(&pat) {
            return Err(DENIED);
        }
        let mut path = Vec::with_capacity(pat.len());
        let mut node = &st.tree;
        for elem in &pat {
            let Elem::Key(k) = elem else {
                return Err(NO_MATCH);
            };
            node = match node {
                Value::Object(m) => m.get(k),
                Value::Array(list) => list.iter().find(|e| entry_id(e) == Some(k.as_str())),
                _ => None,
            }
            .ok_or(NO_MATCH)?;
            path.push(k.clone());
        }
        filter(node, &mut path, self.deny).ok_or(DENIED)
    }

    /// `xQuery`: the matching part of the tree, from the root.
    fn x_query(&self, st: &State, params: Option<&Value>) -> Result<Value, RpcError> {
        let (doc, pat, _) = parse_query(param(params, "Query")?)?;
        if doc != Doc::Status || !st.schema.matches(&pat) {
            return Err(NO_MATCH);
        }
        if self.deny.pattern(&pat) {
            return Err(DENIED);
        }
        let found = select(&st.tree, &pat, &mut Vec::new(), self.deny).unwrap_or_else(|| json!({}));
        Ok(json!({ "Status": found }))
    }

    /// `xFeedback/Subscribe`; the current values (NotifyCurrentValue) go to `after`.
    fn subscribe(
        &self,
        st: &mut State,
        conn_id: u64,
        params: Option<&Value>,
        after: &mut Vec<String>,
    ) -> Result<Value, RpcError> {
        let query = param(params, "Query")?;
        let notify = match params.and_then(|p| p.get("NotifyCurrentValue")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(INVALID_PARAMS),
        };
        let (doc, pattern, strings) = parse_query(query)?;
        let (schema, deny) = match doc {
            Doc::Status => (&st.schema, self.deny),
            Doc::Event => (&st.event_schema, Deny(&[])),
        };
        if !schema.matches(&pattern) {
            return Err(NO_MATCH);
        }
        if deny.pattern(&pattern) {
            return Err(DENIED);
        }
        let Some(conn) = st.conns.get_mut(&conn_id) else {
            return Err(INVALID_REQUEST);
        };
        if conn.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(TOO_MANY);
        }
        let id = conn.next_sub;
        conn.next_sub += 1;
        if notify && doc == Doc::Status {
            if let Some(current) = select(&st.tree, &pattern, &mut Vec::new(), deny) {
                after.push(notification(id, doc, current));
            }
        }
        conn.subs.insert(
            id,
            Sub {
                doc,
                pattern,
                query: strings,
            },
        );
        Ok(json!({ "Id": id }))
    }
}

impl State {
    /// Sends `payload` to every subscription on `doc` whose query matches `probe`.
    fn notify(&self, doc: Doc, probe: &Value, payload: &Value, deny: Deny) {
        for conn in self.conns.values() {
            for (id, sub) in &conn.subs {
                if sub.doc != doc {
                    continue;
                }
                let Some(matched) = select(probe, &sub.pattern, &mut Vec::new(), deny) else {
                    continue;
                };
                let body = if std::ptr::eq(probe, payload) {
                    matched
                } else {
                    payload.clone()
                };
                let _ = conn.tx.send(Out::Text(notification(*id, doc, body)));
            }
        }
    }
}

/// `xFeedback/Unsubscribe`.
fn unsubscribe(st: &mut State, conn_id: u64, params: Option<&Value>) -> Result<Value, RpcError> {
    let id = param(params, "Id")?.as_u64().ok_or(INVALID_PARAMS)?;
    let conn = st.conns.get_mut(&conn_id).ok_or(INVALID_REQUEST)?;
    match conn.subs.remove(&id) {
        Some(_) => Ok(json!({})),
        None => Err(INVALID_PARAMS),
    }
}

/// A field of the params object.
fn param<'a>(params: Option<&'a Value>, name: &str) -> Result<&'a Value, RpcError> {
    params
        .and_then(Value::as_object)
        .and_then(|p| p.get(name))
        .ok_or(INVALID_PARAMS)
}

/// A query path: its document, the pattern below it and the elements as strings.
fn parse_query(v: &Value) -> Result<(Doc, Vec<Elem>, Vec<String>), RpcError> {
    let list = v.as_array().ok_or(INVALID_PARAMS)?;
    let (first, rest) = list.split_first().ok_or(INVALID_PARAMS)?;
    let doc = match first.as_str().ok_or(INVALID_PARAMS)? {
        "Status" => Doc::Status,
        "Event" => Doc::Event,
        _ => return Err(NO_MATCH),
    };
    let mut strings = vec![doc.name().to_string()];
    let mut pattern = Vec::with_capacity(rest.len());
    for item in rest {
        match item {
            Value::String(s) => {
                strings.push(s.clone());
                match s.as_str() {
                    "*" => pattern.push(Elem::Any),
                    "**" => pattern.push(Elem::Deep),
                    _ => match split_indexed(s) {
                        Some((name, id)) => {
                            pattern.push(Elem::Key(name.to_string()));
                            pattern.push(Elem::Key(id.to_string()));
                        }
                        None => pattern.push(Elem::Key(s.clone())),
                    },
                }
            }
            Value::Number(n) => {
                let n = n.as_u64().ok_or(INVALID_PARAMS)?;
                strings.push(n.to_string());
                pattern.push(Elem::Key(n.to_string()));
            }
            _ => return Err(INVALID_PARAMS),
        }
    }
    Ok((doc, pattern, strings))
}

/// "Name[id]" → ("Name", "id").
fn split_indexed(s: &str) -> Option<(&str, &str)> {
    let (name, rest) = s.split_once('[')?;
    let id = rest.strip_suffix(']')?;
    (!name.is_empty() && !id.is_empty()).then_some((name, id))
}

/// A dotted path ("Peripherals.ConnectedDevice[1002].Name"), with an optional leading document name.
fn parse_dotted(path: &str, doc: &str) -> Option<Vec<Seg>> {
    let path = path
        .strip_prefix(doc)
        .and_then(|p| p.strip_prefix('.'))
        .unwrap_or(path);
    path.split('.')
        .map(|part| {
            if part.is_empty() {
                None
            } else if part.contains('[') {
                split_indexed(part).map(|(n, i)| Seg::Indexed(n.to_string(), i.to_string()))
            } else {
                Some(Seg::Key(part.to_string()))
            }
        })
        .collect()
}

/// Whether a path element is an array index (ids are numbers).
fn is_index(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())
}

/// An array entry's id.
fn entry_id(entry: &Value) -> Option<&str> {
    entry.get("id").and_then(Value::as_str)
}

/// An entry object with its id first.
fn with_id(id: &str, fields: Map<String, Value>) -> Value {
    let mut entry = Map::new();
    entry.insert("id".to_string(), Value::String(id.to_string()));
    for (k, v) in fields {
        if k != "id" {
            entry.insert(k, v);
        }
    }
    Value::Object(entry)
}

/// A copy of `node` without what `deny` forbids (`path` is where `node` is); None if nothing is left.
fn filter(node: &Value, path: &mut Vec<String>, deny: Deny) -> Option<Value> {
    if deny.path(path) {
        return None;
    }
    match node {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in m {
                path.push(k.clone());
                if let Some(v) = filter(child, path, deny) {
                    out.insert(k.clone(), v);
                }
                path.pop();
            }
            (m.is_empty() || !out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(list) => {
            let mut out = Vec::with_capacity(list.len());
            for entry in list {
                path.push(entry_id(entry).unwrap_or_default().to_string());
                if let Some(v) = filter(entry, path, deny) {
                    out.push(v);
                }
                path.pop();
            }
            (list.is_empty() || !out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

/// The part of `node` a query pattern matches, as a partial tree from `node`; None if nothing.
fn select(node: &Value, pat: &[Elem], path: &mut Vec<String>, deny: Deny) -> Option<Value> {
    if deny.path(path) {
        return None;
    }
    let Some((first, rest)) = pat.split_first() else {
        return filter(node, path, deny);
    };
    match (first, node) {
        (Elem::Deep, _) => {
            if rest.is_empty() {
                return filter(node, path, deny);
            }
            let here = select(node, rest, path, deny);
            let deeper = match node {
                Value::Object(m) => select_children(m, pat, path, deny),
                Value::Array(list) => select_entries(list, None, pat, path, deny),
                _ => None,
            };
            match (here, deeper) {
                (Some(a), Some(b)) => Some(merge(a, b)),
                (a, b) => a.or(b),
            }
        }
        (Elem::Key(k), Value::Object(m)) => {
            let child = m.get(k)?;
            path.push(k.clone());
            let found = select(child, rest, path, deny);
            path.pop();
            let mut out = Map::new();
            out.insert(k.clone(), found?);
            Some(Value::Object(out))
        }
        (Elem::Any, Value::Object(m)) => select_children(m, rest, path, deny),
        (Elem::Key(k), Value::Array(list)) => {
            if is_index(k) || list.iter().any(|e| entry_id(e) == Some(k.as_str())) {
                select_entries(list, Some(k), rest, path, deny)
            } else {
                // An array name without an index: every entry.
                select_entries(list, None, pat, path, deny)
            }
        }
        (Elem::Any, Value::Array(list)) => select_entries(list, None, rest, path, deny),
        _ => None,
    }
}

/// `select` on every child of an object.
fn select_children(
    m: &Map<String, Value>,
    pat: &[Elem],
    path: &mut Vec<String>,
    deny: Deny,
) -> Option<Value> {
    let mut out = Map::new();
    for (k, child) in m {
        path.push(k.clone());
        if let Some(v) = select(child, pat, path, deny) {
            out.insert(k.clone(), v);
        }
        path.pop();
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// `select` on the entries of an array (only the one with id `only`, if given).
fn select_entries(
    list: &[Value],
    only: Option<&str>,
    pat: &[Elem],
    path: &mut Vec<String>,
    deny: Deny,
) -> Option<Value> {
    let mut out = Vec::new();
    for entry in list {
        let id = entry_id(entry).unwrap_or_default();
        if only.is_some_and(|o| o != id) {
            continue;
        }
        path.push(id.to_string());
        let found = select(entry, pat, path, deny);
        path.pop();
        if let Some(Value::Object(fields)) = found {
            out.push(with_id(id, fields));
        }
    }
    (!out.is_empty()).then_some(Value::Array(out))
}

/// Two partial trees as one (array entries joined by id).
fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut x), Value::Object(y)) => {
            for (k, v) in y {
                let joined = match x.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                x.insert(k, joined);
            }
            Value::Object(x)
        }
        (Value::Array(mut x), Value::Array(y)) => {
            for entry in y {
                let slot = entry_id(&entry)
                    .and_then(|id| x.iter().position(|o| entry_id(o) == Some(id)))
                    .and_then(|p| x.get_mut(p));
                match slot {
                    Some(slot) => {
                        let old = std::mem::take(slot);
                        *slot = merge(old, entry);
                    }
                    None => x.push(entry),
                }
            }
            Value::Array(x)
        }
        (_, b) => b,
    }
}

/// Sets the value at `segs` below `node`, creating what is missing; whether anything changed.
fn set_in(node: &mut Value, segs: &[Seg], value: Value) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        if *node == value {
            return false;
        }
        *node = value;
        return true;
    };
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else {
        return false;
    };
    match first {
        Seg::Key(k) => {
            let existed = map.contains_key(k);
            let child = map.entry(k.clone()).or_insert(Value::Null);
            set_in(child, rest, value) || !existed
        }
        Seg::Indexed(name, id) => {
            let slot = map
                .entry(name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            let Value::Array(list) = slot else {
                return false;
            };
            let (index, created) = match list.iter().position(|e| entry_id(e) == Some(id)) {
                Some(p) => (p, false),
                None => {
                    list.push(json!({ "id": id }));
                    (list.len() - 1, true)
                }
            };
            let Some(entry) = list.get_mut(index) else {
                return false;
            };
            if rest.is_empty() {
                let fields = match value {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                let new = with_id(id, fields);
                let changed = *entry != new;
                *entry = new;
                changed || created
            } else {
                set_in(entry, rest, value) || created
            }
        }
    }
}

/// Removes the node at `segs`; the removed value.
fn remove_at(node: &mut Value, segs: &[Seg]) -> Option<Value> {
    let (last, parents) = segs.split_last()?;
    let mut cur = node;
    for seg in parents {
        let map = cur.as_object_mut()?;
        cur = match seg {
            Seg::Key(k) => map.get_mut(k)?,
            Seg::Indexed(name, id) => map
                .get_mut(name)?
                .as_array_mut()?
                .iter_mut()
                .find(|e| entry_id(e) == Some(id.as_str()))?,
        };
    }
    let map = cur.as_object_mut()?;
    match last {
        Seg::Key(k) => map.remove(k),
        Seg::Indexed(name, id) => {
            let list = map.get_mut(name)?.as_array_mut()?;
            let p = list.iter().position(|e| entry_id(e) == Some(id.as_str()))?;
            Some(list.remove(p))
        }
    }
}

/// The partial tree from the document root holding `leaf` at `segs`.
fn build_tree(segs: &[Seg], leaf: Value) -> Value {
    segs.iter().rev().fold(leaf, |inner, seg| {
        let (name, value) = match seg {
            Seg::Key(k) => (k, inner),
            Seg::Indexed(name, id) => {
                let fields = match inner {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                (name, Value::Array(vec![with_id(id, fields)]))
            }
        };
        let mut out = Map::new();
        out.insert(name.clone(), value);
        Value::Object(out)
    })
}

/// An `xFeedback/Event` frame.
fn notification(id: u64, doc: Doc, body: Value) -> String {
    let mut params = Map::new();
    params.insert("Id".to_string(), Value::from(id));
    params.insert(doc.name().to_string(), body);
    json!({ "jsonrpc": "2.0", "method": "xFeedback/Event", "params": params }).to_string()
}

/// A JSON-RPC error frame.
fn error_frame(id: &Value, e: RpcError) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code, "message": e.message } })
        .to_string()
}

/// An HTTP refusal of an upgrade.
fn reject(status: u16, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// The status tree a device starts with.
fn initial_status(opts: &DeviceSimOptions) -> Value {
    json!({
        "SystemUnit": {
            "ProductId": opts.product_id,
            "Hardware": { "Module": { "SerialNumber": opts.serial } },
            "State": { "NumberOfActiveCalls": 0, "System": "Initialized" }
        },
        "RoomAnalytics": {
            "PeopleCount": { "Current": -1, "Capacity": 8 },
            "PeoplePresence": "No",
            "RoomInUse": "False",
            "AmbientTemperature": "23.5",
            "RelativeHumidity": 38,
            "AirQuality": { "Index": "1.4" },
            "AmbientNoise": { "Level": { "A": 32 } },
            "Sound": { "Level": { "A": 35 } },
            "Engagement": { "CloseProximity": "False" }
        },
        "Standby": { "State": "Standby" },
        "Peripherals": {
            "ConnectedDevice": [{
                "id": "1002",
                "Name": "Room Navigator",
                "Type": "TouchPanel",
                "RoomAnalytics": {
                    "AmbientTemperature": "22.5",
                    "RelativeHumidity": 41,
                    "AirQuality": { "Index": "1.2" }
                }
            }]
        }
    })
}

/// The events a device knows (the shape only).
fn event_schema_tree() -> Value {
    json!({
        "UserInterface": {
            "Extensions": {
                "Widget": { "Action": { "WidgetId": "", "Type": "", "Value": "" } },
                "Panel": {
                    "Clicked": { "PanelId": "" },
                    "Close": { "PanelId": "" }
                }
            },
            "Message": { "Prompt": { "Response": { "FeedbackId": "", "OptionId": "" } } }
        },
        "BootEvent": { "Level": "" },
        "CallDisconnect": { "CallId": "", "CauseType": "", "CauseValue": "" },
        "CallSuccessful": { "CallId": "", "Protocol": "", "RemoteURI": "" },
        "OutgoingCallIndication": { "CallId": "" },
        "Bookings": { "Start": { "Id": "" }, "End": { "Id": "" } }
    })
}

/// The WebSocket settings: small buffers (many devices share a process).
fn ws_config() -> WebSocketConfig {
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
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
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
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;

    type Tls = tokio_rustls::client::TlsStream<TcpStream>;
    type Ws = WebSocketStream<Tls>;
    const WAIT: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(300);

    async fn tls_connect(sim: &DeviceSim) -> Tls {
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
    async fn open(
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

    fn basic(user: &str, pass: &str) -> (&'static str, String) {
        (
            "Authorization",
            format!("Basic {}", STANDARD.encode(format!("{user}:{pass}"))),
        )
    }

    async fn connect(sim: &DeviceSim) -> Ws {
        open(sim, &[basic("admin", "secret")]).await.unwrap().0
    }

    fn refused_status(r: Result<(Ws, impl std::fmt::Debug), WsError>) -> u16 {
        match r {
            Err(WsError::Http(resp)) => resp.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {other:?}"),
        }
    }

    /// The next text frame, as JSON.
    async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
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
    async fn quiet(ws: &mut Ws) {
        if let Ok(m) = tokio::time::timeout(QUIET, ws.next()).await {
            panic!("unexpected frame {m:?}");
        }
    }

    async fn call<S: AsyncRead + AsyncWrite + Unpin>(
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

    async fn start(role: Role) -> DeviceSim {
        DeviceSim::start(DeviceSimOptions {
            role,
            ..DeviceSimOptions::default()
        })
        .await
        .unwrap()
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
    async fn basic_auth_and_xget() {
        let sim = start(Role::Integrator).await;
        assert!(sim.url().starts_with("wss://127.0.0.1:"));
        assert_eq!(sim.cert_sha256().len(), 32 * 3 - 1);
        assert!(sim.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xGet",
            json!({"Path": ["Status", "SystemUnit", "Hardware", "Module", "SerialNumber"]}),
        )
        .await;
        assert_eq!(
            r,
            json!({"jsonrpc": "2.0", "id": 1, "result": "FOC0000SIM1"})
        );
        let r = call(
            &mut ws,
            json!("abc"),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "PeopleCount", "Current"]}),
        )
        .await;
        assert_eq!(r["result"], json!(-1));
        let r = call(
            &mut ws,
            json!(2),
            "xGet",
            json!({"Path": ["Status", "Peripherals", "ConnectedDevice", 1002, "RoomAnalytics"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"AmbientTemperature": "22.5", "RelativeHumidity": 41, "AirQuality": {"Index": "1.2"}})
        );
        let r = call(
            &mut ws,
            json!(3),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics"]}),
        )
        .await;
        assert_eq!(r["result"]["PeopleCount"]["Capacity"], json!(8));
        assert!(r["result"].get("AmbientTemperature").is_none());
        assert_eq!(sim.connections(), 1);
        assert_eq!(sim.connects(), 1);
        assert_eq!(sim.connect_times().len(), 1);
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
    async fn query_shapes_and_errors() {
        let sim = start(Role::Integrator).await;
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "PeopleCount"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"RoomAnalytics": {"PeopleCount": {"Current": -1, "Capacity": 8}}}})
        );
        let r = call(
            &mut ws,
            json!(2),
            "xQuery",
            json!({"Query": ["Status", "Peripherals", "ConnectedDevice", "RoomAnalytics", "AmbientTemperature"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"Peripherals": {"ConnectedDevice": [
                {"id": "1002", "RoomAnalytics": {"AmbientTemperature": "22.5"}}
            ]}}})
        );
        let r = call(
            &mut ws,
            json!(3),
            "xQuery",
            json!({"Query": ["Status", "Peripherals", "ConnectedDevice", "1002", "Name"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"Peripherals": {"ConnectedDevice": [{"id": "1002", "Name": "Room Navigator"}]}}})
        );
        // A subtree holding forbidden nodes: allowed, without them.
        let r = call(
            &mut ws,
            json!(4),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "**"]}),
        )
        .await;
        let ra = &r["result"]["Status"]["RoomAnalytics"];
        assert_eq!(ra["PeoplePresence"], json!("No"));
        assert!(ra.get("AmbientTemperature").is_none() && ra.get("AirQuality").is_none());
        // Errors.
        let code = |r: &Value| r["error"]["code"].as_i64().unwrap();
        let r = call(
            &mut ws,
            json!(5),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "AmbientTemperature"]}),
        )
        .await;
        assert_eq!(code(&r), -31999);
        assert_eq!(r["error"]["message"], json!("Permission denied"));
        let r = call(
            &mut ws,
            json!(6),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "AirQuality", "Index"]}),
        )
        .await;
        assert_eq!(code(&r), -31999);
        let r = call(
            &mut ws,
            json!(7),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "Nope"]}),
        )
        .await;
        assert_eq!(code(&r), 3);
        assert_eq!(r["error"]["message"], json!("No match on Path argument"));
        let r = call(
            &mut ws,
            json!(8),
            "xQuery",
            json!({"Query": ["Status", "roomanalytics"]}),
        )
        .await;
        assert_eq!(code(&r), 3);
        let r = call(&mut ws, json!(9), "xCommand/Dial", json!({})).await;
        assert_eq!(code(&r), -32601);
        let r = call(&mut ws, json!(10), "xGet", json!({})).await;
        assert_eq!(code(&r), -32602);
        let r = call(
            &mut ws,
            json!(11),
            "xFeedback/Unsubscribe",
            json!({"Id": 99}),
        )
        .await;
        assert_eq!(code(&r), -32602);
        ws.send(Message::text("{not json")).await.unwrap();
        let r = recv(&mut ws).await;
        assert_eq!((code(&r), r["id"].clone()), (-32700, Value::Null));
        ws.send(Message::text("[1,2]")).await.unwrap();
        assert_eq!(code(&recv(&mut ws).await), -32600);
        ws.send(Message::text(r#"{"jsonrpc":"2.0","id":12,"result":{}}"#))
            .await
            .unwrap();
        let r = recv(&mut ws).await;
        assert_eq!((code(&r), r["id"].clone()), (-32600, json!(12)));

        // An Admin reads the main unit's sensors.
        let admin = start(Role::Admin).await;
        let mut ws = connect(&admin).await;
        let r = call(
            &mut ws,
            json!(1),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "AmbientTemperature"]}),
        )
        .await;
        assert_eq!(r["result"], json!("23.5"));
    }

    #[tokio::test]
    async fn feedback_status_ghosts_and_events() {
        let sim = start(Role::Integrator).await;
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "RoomAnalytics", "PeopleCount", "Current"], "NotifyCurrentValue": true}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 1}));
        assert_eq!(
            recv(&mut ws).await,
            json!({"jsonrpc": "2.0", "method": "xFeedback/Event",
                   "params": {"Id": 1, "Status": {"RoomAnalytics": {"PeopleCount": {"Current": -1}}}}})
        );
        let r = call(
            &mut ws,
            json!(2),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "RoomAnalytics"], "NotifyCurrentValue": false}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 2}));

        sim.set_status("RoomAnalytics.PeopleCount.Current", json!(3));
        let expected = json!({"RoomAnalytics": {"PeopleCount": {"Current": 3}}});
        for id in [1, 2] {
            let n = recv(&mut ws).await;
            assert_eq!(n["method"], json!("xFeedback/Event"));
            assert_eq!(n["params"], json!({"Id": id, "Status": expected}));
        }
        // Unchanged value and a forbidden one: nothing.
        sim.set_status("RoomAnalytics.PeopleCount.Current", json!(3));
        sim.set_status("RoomAnalytics.AmbientTemperature", json!("24.0"));
        quiet(&mut ws).await;

        // The Navigator, a new entry, and its ghost.
        let r = call(
            &mut ws,
            json!(3),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "Peripherals", "ConnectedDevice"]}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 3}));
        sim.set_status(
            "Peripherals.ConnectedDevice[1002].RoomAnalytics.AmbientTemperature",
            json!("22.7"),
        );
        assert_eq!(
            recv(&mut ws).await["params"],
            json!({"Id": 3, "Status": {"Peripherals": {"ConnectedDevice": [
                {"id": "1002", "RoomAnalytics": {"AmbientTemperature": "22.7"}}
            ]}}})
        );
        sim.set_status("Peripherals.ConnectedDevice[1115].Name", json!("Room Bar"));
        assert_eq!(
            recv(&mut ws).await["params"]["Status"]["Peripherals"]["ConnectedDevice"][0],
            json!({"id": "1115", "Name": "Room Bar"})
        );
        sim.remove("Peripherals.ConnectedDevice[1115]");
        assert_eq!(
            recv(&mut ws).await["params"],
            json!({"Id": 3, "Status": {"Peripherals": {"ConnectedDevice": [{"id": "1115", "ghost": "True"}]}}})
        );
        assert_eq!(
            sim.subscriptions(),
            vec![
                vec!["Status", "RoomAnalytics", "PeopleCount", "Current"],
                vec!["Status", "RoomAnalytics"],
                vec!["Status", "Peripherals", "ConnectedDevice"],
            ]
        );

        // Events.
        let r = call(
            &mut ws,
            json!(4),
            "xFeedback/Subscribe",
            json!({"Query": ["Event", "UserInterface", "Extensions"]}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 4}));
        let r = call(
            &mut ws,
            json!(5),
            "xFeedback/Subscribe",
            json!({"Query": ["Event", "NoSuchEvent"]}),
        )
        .await;
        assert_eq!(r["error"]["code"], json!(3));
        let action = json!({"WidgetId": "w1", "Type": "clicked", "Value": ""});
        sim.emit_event("UserInterface.Extensions.Widget.Action", action.clone());
        assert_eq!(
            recv(&mut ws).await["params"],
            json!({"Id": 4, "Event": {"UserInterface": {"Extensions": {"Widget": {"Action": action}}}}})
        );
        sim.emit_event("CallDisconnect", json!({"CallId": 1}));
        quiet(&mut ws).await;

        // Unsubscribe, then a change reaches only the others, in order.
        let r = call(&mut ws, json!(6), "xFeedback/Unsubscribe", json!({"Id": 2})).await;
        assert_eq!(r["result"], json!({}));
        for n in 4..7 {
            sim.set_status("RoomAnalytics.PeopleCount.Current", json!(n));
        }
        for n in 4..7 {
            let got = recv(&mut ws).await;
            assert_eq!(got["params"]["Id"], json!(1));
            assert_eq!(
                got["params"]["Status"]["RoomAnalytics"]["PeopleCount"]["Current"],
                json!(n)
            );
        }
        quiet(&mut ws).await;
    }

    #[tokio::test]
    async fn subscription_limit() {
        let sim = start(Role::User).await;
        let mut ws = connect(&sim).await;
        for i in 1..=50 {
            let r = call(
                &mut ws,
                json!(i),
                "xFeedback/Subscribe",
                json!({"Query": ["Status", "Standby", "State"]}),
            )
            .await;
            assert_eq!(r["result"]["Id"], json!(i));
        }
        let r = call(
            &mut ws,
            json!(51),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "Standby", "State"]}),
        )
        .await;
        assert_eq!(r["error"]["code"], json!(-31998));
        assert_eq!(sim.subscriptions().len(), 50);
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
