//! A simulated Cisco RoomOS device: the xAPI (JSON-RPC 2.0) over a real wss:// server with a throwaway self-signed certificate, for roomhook demo, the tests and the benchmark.
//!
//! The simulator keeps a status tree shaped as the device returns it (objects, and arrays
//! as lists of objects with a string `"id"`), answers `xGet`, `xQuery`,
//! `xFeedback/Subscribe`, `xFeedback/Unsubscribe` and `xCommand/RoomAnalytics/RoomInUse/Set`
//! (a third-party occupancy source), and pushes `xFeedback/Event`
//! notifications when the test or demo changes a value, removes an array entry (a ghost)
//! or emits an event. Faults can be injected: malformed frames, abrupt disconnects,
//! refused upgrades and a silent (dead) peer.
//!
//! The handle and its knobs are here; the server side of the socket is in `transport.rs`,
//! the JSON-RPC methods in `rpc.rs`, the query language in `query.rs`, the status tree and
//! its notifications in `tree.rs`, and what a new device holds in `data.rs`.

#[cfg(test)]
mod catalog_test;
mod data;
mod query;
mod rpc;
#[cfg(test)]
mod test_client;
mod transport;
mod tree;

use query::{Deny, Schema};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
#[cfg(any(test, feature = "faults"))]
use transport::Out;
use tree::{parse_dotted, State};

/// What the simulated device's account may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Reads everything.
    Admin,
    /// Reads what the xAPI reference grants the Integrator role: everything here but the main
    /// unit's environmental sensors (temperature, humidity, air quality), the room's
    /// `InsideRoom`/`OutsideRoom` readings, `Bookings` and `SystemUnit.State.System`.
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
    #[cfg_attr(not(test), allow(dead_code))]
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
            Some(transport::acceptor(&cert_der, &key)?)
        } else {
            None
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let tree = data::initial_status(&opts);
        let mut schema = Schema::of(&tree);
        schema.merge(Schema::of(&data::status_shapes()));
        let state = State {
            schema,
            event_schema: Schema::of(&data::event_schema_tree()),
            tree,
            conns: BTreeMap::new(),
            next_conn: 1,
            anonymous_in_use: false,
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
        tokio::spawn(transport::accept_loop(shared.clone(), listener));
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
    #[cfg(test)]
    pub(crate) fn port(&self) -> u16 {
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
    #[cfg(test)]
    pub(crate) fn cert_pem(&self) -> String {
        self.shared().cert_pem.clone()
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
        shared.lock().set_status(&segs, value, shared.deny);
    }

    /// Removes a status node; for an array entry ("Peripherals.ConnectedDevice[1115]") the
    /// subscriptions that covered it get a ghost.
    pub fn remove(&self, path: &str) {
        let Some(segs) = parse_dotted(path, "Status") else {
            tracing::warn!(path, "simulated device: bad status path");
            return;
        };
        let shared = self.shared();
        shared.lock().remove(&segs, shared.deny);
    }

    /// Emits an event ("UserInterface.Extensions.Widget.Action", {"WidgetId":"w1",...}) to the matching Event subscriptions.
    pub fn emit_event(&self, path: &str, value: Value) {
        let Some(segs) = parse_dotted(path, "Event") else {
            tracing::warn!(path, "simulated device: bad event path");
            return;
        };
        self.shared().lock().emit_event(&segs, value);
    }

    #[cfg(any(test, feature = "faults"))]
    /// Sends this text frame verbatim to every open connection.
    pub fn send_raw(&self, text: &str) {
        let st = self.shared().lock();
        for conn in st.conns.values() {
            let _ = conn.tx.send(Out::Text(text.to_string()));
        }
    }

    #[cfg(any(test, feature = "faults"))]
    /// Sends this binary frame to every open connection.
    pub fn send_binary(&self, bytes: Vec<u8>) {
        let st = self.shared().lock();
        for conn in st.conns.values() {
            let _ = conn.tx.send(Out::Binary(bytes.clone()));
        }
    }

    #[cfg(any(test, feature = "faults"))]
    /// Closes every open connection abruptly (TCP close, no close frame).
    pub fn drop_connections(&self) {
        self.shared()
            .ctl
            .send_modify(|c| c.drop_gen = c.drop_gen.wrapping_add(1));
    }

    #[cfg(any(test, feature = "faults"))]
    /// Some(status): refuse new upgrades with this HTTP status; None: accept them normally.
    pub fn set_handshake_status(&self, status: Option<u16>) {
        self.shared()
            .handshake_status
            .store(status.map_or(0, u32::from), Ordering::SeqCst);
    }

    #[cfg(any(test, feature = "faults"))]
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
    #[cfg(test)]
    pub(crate) fn subscriptions(&self) -> Vec<Vec<String>> {
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
}
