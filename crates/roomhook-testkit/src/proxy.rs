//! A fault-injecting TCP proxy for the tests (the kernel here has no `netem`): it sits
//! between roomhook and a receiver or a broker on loopback and, as the test switches its
//! mode, passes bytes, delays them, swallows them, resets connections mid-stream, or
//! accepts connections and never answers.

#![allow(deprecated)] // SO_LINGER 0 on purpose: a reset, not a graceful close (never blocks)

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes bytes both ways.
    Pass,
    /// Passes bytes, each chunk held this long first (both ways).
    Latency(Duration),
    /// Connections stay open, bytes vanish (nothing forwarded, nothing answered).
    BlackHole,
    /// A new connection is reset (RST) after this many bytes from the client; connections
    /// open at the switch are reset at their next bytes.
    ResetAfter(usize),
    /// Accepts connections and reads what comes but never answers (a TLS handshake
    /// that never finishes); connections open at the switch are closed.
    Silent,
    /// Gone: connections open at the switch are closed and new ones are reset at once.
    Down,
}

/// A running proxy to `upstream`.
pub struct Proxy {
    /// The port roomhook connects to.
    pub port: u16,
    fault: Arc<Mutex<(Fault, u64)>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on a free loopback port to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(Mutex::new((Fault::Pass, 0u64)));
        let stop = CancellationToken::new();
        let (f, s) = (fault.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                let (f, s) = (f.clone(), s.clone());
                tokio::spawn(async move { serve(client, upstream, f, s).await });
            }
        });
        Proxy { port, fault, stop }
    }

    /// Switches the fault; connections opened under an earlier one follow it too.
    pub fn set(&self, fault: Fault) {
        let mut g = self.fault.lock().unwrap();
        g.0 = fault;
        g.1 += 1;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn current(f: &Mutex<(Fault, u64)>) -> (Fault, u64) {
    *f.lock().unwrap()
}

/// Closes a connection with a reset (SO_LINGER 0), as a crashed peer or middlebox would.
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve(
    client: TcpStream,
    upstream: u16,
    fault: Arc<Mutex<(Fault, u64)>>,
    stop: CancellationToken,
) {
    let (mode, epoch) = current(&fault);
    match mode {
        Fault::Down => return reset(client),
        Fault::Silent | Fault::BlackHole => {
            // Read and discard until the fault changes or the client goes.
            return swallow(client, &fault, epoch, &stop).await;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, fault.clone(), true, stop.clone());
    let down = pump(sr, cw, fault.clone(), false, stop.clone());
    // When one direction ends (or resets) the other goes too.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn swallow(
    mut client: TcpStream,
    fault: &Mutex<(Fault, u64)>,
    epoch: u64,
    stop: &CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = client.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.cancelled() => return,
        }
        if current(fault).1 != epoch {
            // The fault changed: this connection ends (the client reconnects).
            return reset(client);
        }
    }
}

/// Makes both sockets of a proxied connection close with a reset once their halves are
/// dropped (the caller returns, and `serve` drops the other direction).
fn cut(from: &tokio::net::tcp::OwnedReadHalf, to: &tokio::net::tcp::OwnedWriteHalf) {
    let _ = from.as_ref().set_linger(Some(Duration::ZERO));
    let _ = to.as_ref().set_linger(Some(Duration::ZERO));
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<(Fault, u64)>>,
    upstream: bool,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut passed = 0usize;
    let mut seen_epoch = current(&fault).1;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                // An idle connection learns of Down / Silent too: it is cut.
                let (mode, epoch) = current(&fault);
                if epoch != seen_epoch && matches!(mode, Fault::Down | Fault::Silent) {
                    return cut(&from, &to);
                }
                continue;
            }
            _ = stop.cancelled() => return,
        };
        let (mode, epoch) = current(&fault);
        if epoch != seen_epoch {
            seen_epoch = epoch;
            passed = 0;
        }
        match mode {
            Fault::Pass => {}
            Fault::Latency(d) => tokio::time::sleep(d).await,
            Fault::BlackHole => continue,
            Fault::ResetAfter(limit) => {
                if upstream {
                    passed += n;
                    if passed > limit {
                        return cut(&from, &to);
                    }
                }
            }
            Fault::Silent | Fault::Down => return cut(&from, &to),
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
