//! The MQTT duplicate guard (the store's per-packet-id marks) against a model: random
//! sequences of broker actions, from a seed that reproduces them, played by two tiny MQTT
//! 3.1.1 brokers in the test (real TCP, real packets; one per source, so that marks of two
//! sources coexist in the store) to the real `roomhook` binary, with and without
//! `[gateway] commit_interval`. Every message carries a payload of its own (a widget
//! event, which change-only filtering never holds back) and the HTTPS receiver counts them:
//! a message published new (DUP unset) must arrive exactly once, a message published new
//! again with the topic and payload of an earlier one must arrive once more (a new message,
//! not a redelivery), and a resend (DUP set) of what roomhook already committed must add
//! nothing.
//!
//! The brokers behave as MQTT 3.1.1 allows and as a broker that reuses packet ids at once
//! does: a new message takes the lowest free packet id (an id is free as soon as its PUBACK
//! was read, so it is reused right after the PUBACK); everything not acknowledged is sent
//! again with DUP set right after the CONNACK of the next connection, before anything of
//! the client is read. A break may "lose" what TCP would lose with the connection: the last
//! PUBACKs read (those the broker has not revealed it read: by answering a ping that came
//! after them, or by reusing their packet id) and the last new messages written (never
//! written here). The one window the README documents (a lost new message that reuses the
//! packet id, topic and payload of a message whose PUBACK the broker has not revealed it
//! read is taken for that message) is never played: such a lost message gets a payload of
//! its own. A broken connection is always ended with a FIN after everything written
//! (roomhook reads it all), and only once every message written on it was acknowledged, so
//! that the broker's reading of every PUBACK is unambiguous.
//!
//! `ROOMHOOK_DUPGUARD_SEED=<n>` replays one seed, `ROOMHOOK_DUPGUARD_ACTIONS=<n>` sets the
//! length of a sequence; the long variant (`--ignored`) takes `ROOMHOOK_DUPGUARD_SEEDS`
//! (how many) and `ROOMHOOK_DUPGUARD_FIRST_SEED`; `ROOMHOOK_DUPGUARD_PKIDS=up` makes the
//! brokers count packet ids up instead (as Mosquitto does), to tell what comes from their
//! reuse. A failure prints the seed, the action list (as Rust, to paste into a named
//! test), the tails of the brokers' wire trace and of the daemon's log, and keeps both
//! whole in `target/tmp/mqtt_dupguard/`.
//!
//! The sequences found three bugs, kept below as named tests: a held-back clear deleted
//! the mark of the message that reused its packet id (fixed in src/store/writer.rs), a
//! ping answer read with a break confirmed the carried marks (fixed in src/source/mqtt.rs),
//! and, the two together, a new message with the old topic and payload taken for a
//! redelivery (fixed in src/source/mqtt.rs: a late ping answer confirms exactly the
//! PUBACKs written before its ping).

use roomhook_testkit::mqtt_wire::*;
use roomhook_testkit::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1 on the wire (tests/common/mqtt_wire.rs, and what only this test needs).

const PINGRESP: [u8; 2] = [0xd0, 0x00];

/// TCP_CORK: what is written next waits (200 ms at most) for more, or for the FIN, to go
/// in one segment. A ping answer written just before a break then reaches roomhook
/// together with the end of the connection, as it would from a broker that answers and
/// closes at once (otherwise a matter of luck on loopback).
#[cfg(target_os = "linux")]
fn cork(s: &TcpStream, on: bool) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
    }
    const IPPROTO_TCP: i32 = 6;
    const TCP_CORK: i32 = 3;
    let value = i32::from(on);
    // SAFETY: an open socket, and a pointer to an int with its size.
    let r = unsafe { setsockopt(s.as_raw_fd(), IPPROTO_TCP, TCP_CORK, &value, 4) };
    assert_eq!(r, 0, "setsockopt(TCP_CORK)");
}

#[cfg(not(target_os = "linux"))]
fn cork(_: &TcpStream, _: bool) {}

// ---------------------------------------------------------------------------------------
// The random sequences.

/// xorshift64, seeded through splitmix64 (any seed, 0 included, gives a good stream).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The topic and payload of a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Like {
    /// Its own (a value no other message carries).
    Fresh,
    /// Those of the last message that had the packet id it gets (if any, on this source):
    /// the same digest under the same packet id.
    PkidOwner,
    /// Those of the source's `n`-th most recent message (0: the last one).
    Earlier(u8),
}

/// One step of a broker. `src` is the source: 0 (`a`) or 1 (`b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Publishes a new message (QoS 1, DUP unset) with the lowest free packet id (an id
    /// whose PUBACK was read is free: that PUBACK, and those read before it, are then taken
    /// as arrived, and roomhook can tell from the reuse); `lost`:
    /// lost in transit (never written; so is everything after it on this connection),
    /// it comes only as a resend (DUP) after the next break.
    New { src: usize, like: Like, lost: bool },
    /// Waits for the PUBACK of every message written on the connection.
    Acks { src: usize },
    /// Answers the pings read so far (the broker has read every PUBACK before them).
    Pong { src: usize },
    /// Waits for roomhook's next ping (a keep-alive: 5 s at most) and leaves it unanswered
    /// for now (it is answered on its own after 2.5 s, unless a `Pong` or a `Break` with
    /// `pong` comes first).
    AwaitPing { src: usize },
    /// Waits for the PUBACKs of what was written, answers the pings first if `pong`, and
    /// breaks the connection as if the last `lose_acks` PUBACKs it has not revealed it read
    /// were lost with it; after the reconnect, everything not acknowledged is sent again
    /// with DUP set, right after the CONNACK. `meanwhile`: the other source's broker
    /// publishes a new message while this one takes the reconnect (just before the
    /// CONNACK), so that its append and the resends meet in the store.
    Break {
        src: usize,
        lose_acks: u8,
        pong: bool,
        meanwhile: bool,
    },
}

use Action::*;
use Like::*;

/// A new message of source `src` that arrives (`New { src, like, lost: false }`).
fn arrives(src: usize, like: Like) -> Action {
    New {
        src,
        like,
        lost: false,
    }
}

/// A new message of source `src` lost in transit (`New { src, like, lost: true }`).
fn lost(src: usize, like: Like) -> Action {
    New {
        src,
        like,
        lost: true,
    }
}

/// A break of source `src`'s connection that loses the last `lose_acks` PUBACKs (no ping
/// answered first, nothing published meanwhile).
fn broken(src: usize, lose_acks: u8) -> Action {
    Break {
        src,
        lose_acks,
        pong: false,
        meanwhile: false,
    }
}

impl Action {
    /// The same break, the pings answered first.
    fn pong(self) -> Action {
        match self {
            Break { src, lose_acks, .. } => Break {
                src,
                lose_acks,
                pong: true,
                meanwhile: false,
            },
            other => other,
        }
    }

    /// The same break, the other source publishing meanwhile.
    fn meanwhile(self) -> Action {
        match self {
            Break {
                src,
                lose_acks,
                pong,
                ..
            } => Break {
                src,
                lose_acks,
                pong,
                meanwhile: true,
            },
            other => other,
        }
    }
}

/// Whether the seed's runs use `commit_interval` (two seeds of three do).
fn grouped(seed: u64) -> bool {
    seed % 3 != 0
}

/// `n` actions from `seed`.
fn generate(seed: u64, n: usize) -> Vec<Action> {
    let mut r = XorShift::new(seed);
    let mut out = Vec::with_capacity(n);
    let mut lossy = [false; 2];
    let like = |r: &mut XorShift| match r.below(100) {
        0..=49 => Fresh,
        50..=84 => PkidOwner,
        _ => Earlier(r.below(4) as u8),
    };
    while out.len() < n {
        let src = r.below(2) as usize;
        // After a lost message the connection is dead in fact: it breaks soon.
        if lossy[src] && r.percent(50) {
            lossy[src] = false;
            out.push(Break {
                src,
                lose_acks: [0, 1, 255][r.below(3) as usize],
                pong: false,
                meanwhile: r.percent(30),
            });
            continue;
        }
        let a = match r.below(100) {
            0..=44 => arrives(src, like(&mut r)),
            45..=50 => {
                lossy[src] = true;
                lost(src, like(&mut r))
            }
            51..=68 => Acks { src },
            69..=77 => Pong { src },
            // Up to a keep-alive's wait: rare, to keep the default run short.
            78..=79 => AwaitPing { src },
            _ => {
                lossy[src] = false;
                Break {
                    src,
                    lose_acks: [0, 1, 1, 2, 255][r.below(5) as usize],
                    pong: r.percent(30),
                    meanwhile: r.percent(30),
                }
            }
        };
        out.push(a);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The brokers and the model.

const SOURCES: [&str; 2] = ["a", "b"];
/// How long roomhook may take for something it owes (a PUBACK, a reconnect).
const PATIENCE: Duration = Duration::from_secs(15);
/// Pings are answered on their own after this (roomhook breaks the connection when one is
/// still unanswered at the next, a keep-alive later).
const PING_PATIENCE: Duration = Duration::from_millis(2500);

/// A message: its topic and payload, and the value the receiver counts it by (messages
/// published with the same topic and payload share it).
struct Msg {
    topic: String,
    payload: String,
    value: String,
}

/// A message the broker has not seen acknowledged.
struct Flight {
    msg: usize,
    pkid: u16,
    /// Written on the current connection (not lost in transit, not waiting for a resend).
    written: bool,
    /// Where in the read stream its PUBACK came, not yet taken as arrived or lost.
    ack: Option<u64>,
}

/// The last message stored with a packet id: its mark may still be in the store.
struct Owner {
    msg: usize,
    /// The broker showed roomhook that it read the PUBACK (a ping answered after it on the
    /// same connection, or the packet id reused on it).
    revealed: bool,
}

struct Broker {
    listener: TcpListener,
    stream: Option<TcpStream>,
    /// A ping answer waits in the kernel for what comes next (see [`cork`]).
    corked: bool,
    /// The current connection (0: none).
    conn: u64,
    connections: usize,
    subscribed: bool,
    /// Something written since the last break was lost: nothing written after it arrives.
    lossy: bool,
    flights: Vec<Flight>,
    /// PINGREQs read and not answered: where, and when.
    pings: Vec<(u64, Instant)>,
    owner: HashMap<u16, Owner>,
    /// This source's messages, oldest first.
    mine: Vec<usize>,
    fresh: usize,
    /// Where the next packet id is looked for when they count up.
    next_pkid: u16,
}

type Incoming = (usize, u64, Option<(u8, Vec<u8>)>);

struct Driver {
    brokers: Vec<Broker>,
    tx: mpsc::Sender<Incoming>,
    rx: mpsc::Receiver<Incoming>,
    msgs: Vec<Msg>,
    /// Packets read so far (positions in the read streams).
    pos: u64,
    next_conn: u64,
    /// Packet ids count up (as Mosquitto's do) instead of the lowest free one being
    /// reused: `ROOMHOOK_DUPGUARD_PKIDS=up`, to tell what comes from the reuse.
    count_up: bool,
    started: Instant,
    trace: Vec<String>,
}

/// What the brokers published: how many times each value must arrive.
struct Published {
    expected: BTreeMap<String, usize>,
    trace: Vec<String>,
}

impl Driver {
    fn new(listeners: Vec<TcpListener>) -> Self {
        let (tx, rx) = mpsc::channel();
        Driver {
            brokers: listeners
                .into_iter()
                .map(|listener| Broker {
                    listener,
                    stream: None,
                    corked: false,
                    conn: 0,
                    connections: 0,
                    subscribed: false,
                    lossy: false,
                    flights: Vec::new(),
                    pings: Vec::new(),
                    owner: HashMap::new(),
                    mine: Vec::new(),
                    fresh: 0,
                    next_pkid: 1,
                })
                .collect(),
            tx,
            rx,
            msgs: Vec::new(),
            pos: 0,
            next_conn: 0,
            count_up: std::env::var("ROOMHOOK_DUPGUARD_PKIDS").is_ok_and(|v| v == "up"),
            started: Instant::now(),
            trace: Vec::new(),
        }
    }

    fn log(&mut self, src: usize, what: impl AsRef<str>) {
        let ms = self.started.elapsed().as_millis();
        let conn = self.brokers[src].conn;
        self.trace.push(format!(
            "{ms:>6} ms {} c{conn} {}",
            SOURCES[src],
            what.as_ref()
        ));
    }

    fn write(&mut self, src: usize, bytes: &[u8], what: String) {
        let b = &mut self.brokers[src];
        let failed = match b.stream.as_mut() {
            Some(s) => {
                let r = s.write_all(bytes).err();
                if b.corked {
                    cork(s, false);
                    b.corked = false;
                }
                r
            }
            None => return,
        };
        match failed {
            None => self.log(src, format!("-> {what}")),
            // roomhook closed the connection; its end is read by the reader.
            Some(e) => self.log(src, format!("-> {what}: not written ({e})")),
        }
    }

    /// Takes roomhook's (re)connection: CONNECT, CONNACK and at once the resends (DUP) of
    /// everything not acknowledged, in order; the rest is read by a reader thread.
    fn accept(&mut self, src: usize, meanwhile: bool) -> Result<(), String> {
        let b = &mut self.brokers[src];
        b.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + PATIENCE;
        let mut s = loop {
            match b.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(format!("source {} did not reconnect", SOURCES[src]));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(PATIENCE))
            .map_err(|e| e.to_string())?;
        let (h, body) = read_packet(&mut s).map_err(|e| format!("reading CONNECT: {e}"))?;
        if h >> 4 != 1 {
            return Err(format!("expected CONNECT, got packet type {}", h >> 4));
        }
        // Protocol name (6) + level (1), then the flags: clean session must be off.
        if body.get(7).is_none_or(|f| f & 0x02 != 0) {
            return Err("roomhook asked for a clean session".into());
        }
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
        let other = 1 - src;
        if meanwhile && self.brokers[other].stream.is_some() && !self.brokers[other].lossy {
            self.new_message(other, Fresh, false);
        }
        self.next_conn += 1;
        let conn = self.next_conn;
        let b = &mut self.brokers[src];
        b.conn = conn;
        b.connections += 1;
        b.subscribed = false;
        b.lossy = false;
        b.pings.clear();
        let session_present = b.connections > 1;
        let mut out = vec![0x20, 0x02, u8::from(session_present), 0x00];
        let mut sent = Vec::new();
        for f in &mut b.flights {
            let m = &self.msgs[f.msg];
            out.extend(publish_packet(f.pkid, true, &m.topic, &m.payload));
            f.written = true;
            f.ack = None;
            // Stored (or met by its mark) now: its mark, if any, is this message's.
            b.owner.insert(
                f.pkid,
                Owner {
                    msg: f.msg,
                    revealed: false,
                },
            );
            sent.push(format!("{}={}", f.pkid, m.value));
        }
        let mut reader = s.try_clone().map_err(|e| e.to_string())?;
        b.stream = Some(s);
        self.log(
            src,
            format!("connected (session present: {session_present})"),
        );
        self.write(
            src,
            &out,
            format!("CONNACK + resends (DUP) [{}]", sent.join(" ")),
        );
        let tx = self.tx.clone();
        std::thread::spawn(move || loop {
            match read_packet(&mut reader) {
                Ok(p) => {
                    if tx.send((src, conn, Some(p))).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = tx.send((src, conn, None));
                    return;
                }
            }
        });
        Ok(())
    }

    /// Handles what a reader read.
    fn handle(&mut self, (src, conn, packet): Incoming) -> Result<(), String> {
        if conn != self.brokers[src].conn {
            // Read after the broker broke that connection: lost with it.
            return Ok(());
        }
        self.pos += 1;
        let pos = self.pos;
        let Some((h, body)) = packet else {
            self.log(src, "<- roomhook closed the connection");
            return self.closed_by_roomhook(src);
        };
        match h >> 4 {
            4 => {
                let pkid = u16::from_be_bytes([body[0], body[1]]);
                let waiting = self.brokers[src]
                    .flights
                    .iter_mut()
                    .find(|f| f.pkid == pkid && f.written && f.ack.is_none())
                    .map(|f| f.ack = Some(pos))
                    .is_some();
                if waiting {
                    self.log(src, format!("<- PUBACK {pkid}"));
                } else {
                    self.log(
                        src,
                        format!("<- PUBACK {pkid} (no message waits for it: ignored)"),
                    );
                }
            }
            12 => {
                self.brokers[src].pings.push((pos, Instant::now()));
                self.log(src, "<- PINGREQ");
            }
            8 => {
                // One return code per filter (2-byte length, filter, options byte).
                let mut codes = Vec::new();
                let mut i = 2;
                while i + 2 <= body.len() {
                    let len = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                    i += 2 + len + 1;
                    codes.push(0x01);
                }
                let mut out = vec![0x90];
                out.extend(remaining(2 + codes.len()));
                out.extend_from_slice(&body[..2]);
                out.extend(codes);
                self.brokers[src].subscribed = true;
                self.log(src, "<- SUBSCRIBE");
                self.write(src, &out, "SUBACK".into());
            }
            t => self.log(src, format!("<- packet type {t}")),
        }
        Ok(())
    }

    /// roomhook broke the connection: what it wrote before arrived (its PUBACKs are taken
    /// as read, not revealed); it reconnects.
    fn closed_by_roomhook(&mut self, src: usize) -> Result<(), String> {
        let b = &mut self.brokers[src];
        b.stream = None;
        b.corked = false;
        b.conn = 0;
        b.flights.retain(|f| f.ack.is_none());
        for f in &mut b.flights {
            f.written = false;
        }
        self.accept(src, false)
    }

    /// PUBACKs read up to `upto` arrived; `reveal`: roomhook can tell (see [`Owner`]).
    fn take_acks(&mut self, src: usize, upto: u64, reveal: bool) {
        let b = &mut self.brokers[src];
        let mut taken = Vec::new();
        b.flights.retain(|f| {
            let done = f.ack.is_some_and(|a| a <= upto);
            if done {
                taken.push((f.pkid, f.msg));
            }
            !done
        });
        if reveal {
            for (pkid, msg) in taken {
                if let Some(o) = b.owner.get_mut(&pkid).filter(|o| o.msg == msg) {
                    o.revealed = true;
                }
            }
        }
    }

    /// Answers the pings read so far; `corked`: the answer waits for what is written next
    /// (or the FIN of a break).
    fn pong(&mut self, src: usize, why: &str, corked: bool) {
        let b = &self.brokers[src];
        let Some(&(last, _)) = b.pings.last() else {
            return;
        };
        if b.lossy || b.stream.is_none() {
            // Written after a lost packet: lost too, it reveals nothing.
            return;
        }
        let n = b.pings.len();
        let b = &mut self.brokers[src];
        b.pings.clear();
        if let (true, Some(s)) = (corked, b.stream.as_ref()) {
            cork(s, true);
        }
        self.write(src, &PINGRESP.repeat(n), format!("PINGRESP x{n}{why}"));
        self.brokers[src].corked = corked;
        self.take_acks(src, last, true);
    }

    /// Handles whatever the readers read until `done` holds.
    fn pump_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Driver) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            for src in 0..self.brokers.len() {
                if self.brokers[src]
                    .pings
                    .first()
                    .is_some_and(|(_, at)| at.elapsed() >= PING_PATIENCE)
                {
                    self.pong(src, " (on its own)", false);
                }
            }
            if done(self) {
                return Ok(());
            }
            // Waiting for roomhook: nothing it should read may wait in the kernel.
            for b in &mut self.brokers {
                if let (true, Some(s)) = (b.corked, b.stream.as_ref()) {
                    cork(s, false);
                    b.corked = false;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            if let Ok(incoming) = self.rx.recv_timeout(Duration::from_millis(50)) {
                self.handle(incoming)?;
            }
        }
    }

    /// Handles what was read already.
    fn pump(&mut self) -> Result<(), String> {
        while let Ok(incoming) = self.rx.try_recv() {
            self.handle(incoming)?;
        }
        Ok(())
    }

    fn acked(&self, src: usize) -> bool {
        let b = &self.brokers[src];
        b.stream.is_some() && b.flights.iter().all(|f| !f.written || f.ack.is_some())
    }

    fn wait_acks(&mut self, src: usize) -> Result<(), String> {
        let what = format!("the PUBACKs of source {}", SOURCES[src]);
        self.pump_until(&what, PATIENCE, |d| d.acked(src))
    }

    fn new_message(&mut self, src: usize, like: Like, lost: bool) {
        let b = &self.brokers[src];
        let lost = lost || b.lossy;
        // The lowest packet id that no message holds, or whose PUBACK was read (or the
        // next such one after the last, counting up).
        let from = if self.count_up { b.next_pkid } else { 1 };
        let pkid = (from..=u16::MAX)
            .chain(1..from)
            .find(|p| {
                b.flights
                    .iter()
                    .find(|f| f.pkid == *p)
                    .is_none_or(|f| f.ack.is_some())
            })
            .expect("a free packet id");
        self.brokers[src].next_pkid = pkid.checked_add(1).unwrap_or(1);
        let b = &self.brokers[src];
        // Reusing it takes its PUBACK (and those read before it) as read; roomhook sees
        // that when the message arrives.
        let reused = b
            .flights
            .iter()
            .find(|f| f.pkid == pkid)
            .and_then(|f| f.ack);
        if let Some(at) = reused {
            self.take_acks(src, at, !lost);
        }
        let b = &self.brokers[src];
        let mut like_msg = match like {
            Fresh => None,
            PkidOwner => b.owner.get(&pkid).map(|o| o.msg),
            Earlier(n) => b.mine.iter().rev().nth(n as usize).copied(),
        };
        if lost {
            // The README's one window: a lost message with the packet id, topic and payload
            // of one whose PUBACK roomhook cannot know arrived is taken for it. Not played.
            if let (Some(m), Some(o)) = (like_msg, b.owner.get(&pkid)) {
                if !o.revealed && self.msgs[o.msg].value == self.msgs[m].value {
                    like_msg = None;
                }
            }
        }
        let msg = self.msgs.len();
        let new = match like_msg {
            Some(m) => Msg {
                topic: self.msgs[m].topic.clone(),
                payload: self.msgs[m].payload.clone(),
                value: self.msgs[m].value.clone(),
            },
            None => {
                let b = &mut self.brokers[src];
                let n = b.fresh;
                b.fresh += 1;
                let value = format!("{}{n}", SOURCES[src]);
                Msg {
                    topic: format!("{}/room-{}/click", SOURCES[src], n % 2),
                    payload: format!(r#"{{"click":{{"m":"{value}"}}}}"#),
                    value,
                }
            }
        };
        let (value, packet) = (
            new.value.clone(),
            publish_packet(pkid, false, &new.topic, &new.payload),
        );
        self.msgs.push(new);
        let b = &mut self.brokers[src];
        b.mine.push(msg);
        b.flights.push(Flight {
            msg,
            pkid,
            written: !lost,
            ack: None,
        });
        if lost {
            b.lossy = true;
            self.log(src, format!("-> PUBLISH {pkid}={value}: lost in transit"));
        } else {
            b.owner.insert(
                pkid,
                Owner {
                    msg,
                    revealed: false,
                },
            );
            self.write(src, &packet, format!("PUBLISH {pkid}={value}"));
        }
    }

    fn break_connection(
        &mut self,
        src: usize,
        lose_acks: u8,
        pong: bool,
        meanwhile: bool,
    ) -> Result<(), String> {
        self.wait_acks(src)?;
        if pong {
            self.pong(src, " (before the break)", true);
        }
        let b = &mut self.brokers[src];
        let mut read: Vec<(u64, usize)> = b
            .flights
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.ack.map(|a| (a, i)))
            .collect();
        read.sort();
        let keep = read.len().saturating_sub(lose_acks as usize);
        let mut lost = Vec::new();
        for &(_, i) in &read[keep..] {
            let f = &mut b.flights[i];
            f.ack = None;
            f.written = false;
            lost.push(f.pkid.to_string());
        }
        if let Some(&(upto, _)) = read[..keep].last() {
            self.take_acks(src, upto, false);
        }
        let b = &mut self.brokers[src];
        b.corked = false;
        if let Some(s) = b.stream.take() {
            // A FIN after everything written (roomhook reads it all), never a reset; the
            // reader reads on (and throws away) until roomhook closes its end.
            let _ = s.shutdown(Shutdown::Write);
        }
        for f in &mut b.flights {
            f.written = false;
        }
        self.log(
            src,
            format!("break (PUBACKs lost with it: [{}])", lost.join(" ")),
        );
        self.brokers[src].conn = 0;
        self.accept(src, meanwhile)
    }

    fn play(&mut self, a: Action) -> Result<(), String> {
        self.pump()?;
        match a {
            New { src, like, lost } => self.new_message(src, like, lost),
            Acks { src } => self.wait_acks(src)?,
            Pong { src } => self.pong(src, "", true),
            AwaitPing { src } => {
                let what = format!("a ping of source {}", SOURCES[src]);
                self.pump_until(&what, PATIENCE, |d| !d.brokers[src].pings.is_empty())?;
            }
            Break {
                src,
                lose_acks,
                pong,
                meanwhile,
            } => self.break_connection(src, lose_acks, pong, meanwhile)?,
        }
        Ok(())
    }

    /// Plays the actions, then brings every message home: lost ones come again after a
    /// break, and every PUBACK is read.
    fn run(mut self, actions: &[Action]) -> Result<Published, (String, Vec<String>)> {
        let result = (|| {
            for src in 0..self.brokers.len() {
                self.accept(src, false)?;
            }
            self.pump_until("the subscriptions", PATIENCE, |d| {
                d.brokers.iter().all(|b| b.subscribed)
            })?;
            for (i, a) in actions.iter().enumerate() {
                self.trace.push(format!("#{i} {a:?}"));
                self.play(*a)?;
            }
            self.trace.push("settle".into());
            for src in 0..self.brokers.len() {
                if self.brokers[src].lossy {
                    self.break_connection(src, 0, false, false)?;
                }
                self.wait_acks(src)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                let mut expected = BTreeMap::new();
                for m in &self.msgs {
                    *expected.entry(m.value.clone()).or_insert(0) += 1;
                }
                Ok(Published {
                    expected,
                    trace: self.trace,
                })
            }
            Err(e) => Err((e, self.trace)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon, the receiver and the check.

fn config(ports: &[u16], rx: &TestReceiver, admin: u16, grouped: bool) -> Config {
    let mut config = Config::new().admin(admin);
    if grouped {
        config = config.gateway("commit_interval = \"50ms\"");
    }
    for (name, port) in SOURCES.iter().zip(ports) {
        let clicks = Section::subscription(&format!("{name}/+/click"), "json")
            .set("device", "{1}")
            .set("workspace", "ws-{1}")
            .field("/click", WIDGET);
        config = config.with(
            Section::mqtt(name, *port)
                .set("client_id", format!("dupguard-{name}"))
                .set("keep_alive", "5s")
                .subscribe(clicks),
        );
    }
    config.with(
        Section::webhook("facilities", &rx.url, &rx.ca_file)
            .remove("statuses")
            .set("events", list([WIDGET])),
    )
}

const WIDGET: &str = "UserInterface.Extensions.Widget.Action";

/// How many times each value arrived.
fn arrived(rx: &TestReceiver) -> BTreeMap<String, usize> {
    let mut got = BTreeMap::new();
    for m in rx.receiver.accepted().iter().flat_map(|r| r.messages()) {
        if m["type"] == "events" {
            let v = m["events"][0]["value"]["m"].as_str().unwrap_or("?");
            *got.entry(v.to_string()).or_insert(0) += 1;
        }
    }
    got
}

const ENQUEUED: &str = "roomhook_events_enqueued_total{webhook=\"facilities\"}";

fn tail(lines: &[String], n: usize) -> String {
    let from = lines.len().saturating_sub(n);
    let mut out = String::new();
    if from > 0 {
        let _ = writeln!(out, "  ({from} earlier lines left out)");
    }
    for l in &lines[from..] {
        let _ = writeln!(out, "  {l}");
    }
    out
}

/// Keeps the whole broker trace and daemon log of a failure (the message shows their
/// tails) in `target/tmp/mqtt_dupguard/`; returns where.
fn keep(label: &str, trace: &[String], daemon: &Daemon) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mqtt_dupguard");
    let name = label.replace(' ', "-");
    let trace_file = dir.join(format!("{name}.trace"));
    let log_file = dir.join(format!("{name}.log"));
    let kept = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&trace_file, trace.join("\n") + "\n"))
        .and_then(|()| std::fs::write(&log_file, daemon.logs()));
    match kept {
        Ok(()) => format!(
            "whole trace: {}\nwhole daemon log: {}\n",
            trace_file.display(),
            log_file.display()
        ),
        Err(e) => format!("(could not keep the whole trace and log: {e})\n"),
    }
}

/// Runs one sequence against a fresh daemon; `Err`: what went wrong, for a person.
async fn check(label: &str, grouped: bool, actions: &[Action]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = receiver(dir.path(), false).await;
    let listeners: Vec<TcpListener> = (0..SOURCES.len())
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let admin = free_port();
    let config = config(&ports, &rx, admin, grouped).write(dir.path());
    let played = actions.to_vec();
    let driver = std::thread::spawn(move || Driver::new(listeners).run(&played));
    let mut daemon = Daemon::start(&config);
    let published = tokio::task::spawn_blocking(move || driver.join())
        .await
        .expect("the driver's task");
    let header = format!(
        "{label}: commit_interval {}, {} actions\nactions: vec!{:?}\n",
        if grouped { "50ms" } else { "unset" },
        actions.len(),
        actions
    );
    let log_tail = |daemon: &Daemon| {
        let lines: Vec<String> = daemon
            .logs()
            .lines()
            .filter(|l| !l.contains("delivered") && !l.contains("request"))
            .map(str::to_string)
            .collect();
        tail(&lines, 150)
    };
    let published = match published {
        Ok(Ok(p)) => p,
        Ok(Err((e, trace))) => {
            let logs = log_tail(&daemon);
            let kept = keep(label, &trace, &daemon);
            daemon.kill9();
            return Err(format!(
                "{header}the brokers could not play it: {e}\nbroker trace:\n{}daemon log:\n{logs}{kept}",
                tail(&trace, 300)
            ));
        }
        Err(_) => {
            daemon.kill9();
            return Err(format!("{header}the driver panicked"));
        }
    };
    let total: usize = published.expected.values().sum();
    // Every PUBACK is in, so every commit is done: wait until the receiver has what the
    // store took in (and at least what was published).
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            let n: usize = arrived(&rx).values().sum();
            n >= total && metric(admin, ENQUEUED) == Some(n as f64)
        })
    });
    let got = arrived(&rx);
    let mut wrong = String::new();
    for (value, want) in &published.expected {
        let n = got.get(value).copied().unwrap_or(0);
        if n != *want {
            let what = if n > *want {
                "stored twice (a resend not recognised)"
            } else {
                "lost (a new message taken for a redelivery?)"
            };
            let _ = writeln!(
                wrong,
                "  {value}: arrived {n} times, published new {want}: {what}"
            );
        }
    }
    for (value, n) in &got {
        if !published.expected.contains_key(value) {
            let _ = writeln!(wrong, "  {value}: arrived {n} times, never published");
        }
    }
    let redelivered: Vec<String> = SOURCES
        .iter()
        .map(|s| {
            let series = format!("roomhook_source_redelivered_total{{source=\"{s}\"}}");
            format!("{s}: {}", metric(admin, &series).unwrap_or(0.0))
        })
        .collect();
    let result = if wrong.is_empty() {
        eprintln!(
            "{label}: ok ({total} messages, resends recognised {})",
            redelivered.join(", ")
        );
        Ok(())
    } else {
        let stored = metric(admin, ENQUEUED).unwrap_or(-1.0);
        let arrived: usize = got.values().sum();
        Err(format!(
            "{header}messages wrong:\n{wrong}published new: {total}, stored: {stored}, arrived: {arrived}; resends recognised: {}\nbroker trace:\n{}daemon log:\n{}{}",
            redelivered.join(", "),
            tail(&published.trace, 300),
            log_tail(&daemon),
            keep(label, &published.trace, &daemon)
        ))
    };
    daemon.kill9();
    result
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// Seeds played at the same time. Each has a daemon, brokers, receiver and directory of its
/// own; most of a sequence's time is waiting (reconnect backoffs, a keep-alive's ping), so
/// three side by side take about as long as the longest of them alone.
const AT_ONCE: usize = 3;

/// Runs one seed on a thread and runtime of its own (as if it ran alone: a blocking wait of
/// another seed never holds up its receiver or its helpers); `Err`: what went wrong.
fn run_seed(seed: u64, actions: usize) -> Result<(), String> {
    eprintln!(
        "mqtt_dupguard: seed {seed}, {actions} actions, commit_interval {} (replay: ROOMHOOK_DUPGUARD_SEED={seed} ROOMHOOK_DUPGUARD_ACTIONS={actions})",
        if grouped(seed) { "50ms" } else { "unset" }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for a seed");
    let label = format!("seed {seed}");
    runtime.block_on(check(&label, grouped(seed), &generate(seed, actions)))
}

/// Runs the seeds, [`AT_ONCE`] at a time; panics with every failure at the end.
async fn seeds(seeds: Vec<u64>, actions: usize) {
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for group in seeds.chunks(AT_ONCE) {
            let results: Vec<(u64, Result<(), String>)> = std::thread::scope(|scope| {
                let runs: Vec<_> = group
                    .iter()
                    .map(|&seed| (seed, scope.spawn(move || run_seed(seed, actions))))
                    .collect();
                runs.into_iter()
                    .map(|(seed, run)| {
                        let result = run
                            .join()
                            .unwrap_or_else(|_| Err(format!("seed {seed}: the run panicked")));
                        (seed, result)
                    })
                    .collect()
            });
            for (seed, result) in results {
                if let Err(e) = result {
                    eprintln!("{e}");
                    failures.push(seed);
                }
            }
        }
        failures
    })
    .await
    .expect("the seeds' runs");
    assert!(
        failures.is_empty(),
        "seeds that failed: {failures:?} (details above; replay one with ROOMHOOK_DUPGUARD_SEED=<seed>)"
    );
}

/// The default run: three seeds of 40 actions (or the seed and length the environment asks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_broker_sequences_store_each_new_message_once() {
    let actions = env_u64("ROOMHOOK_DUPGUARD_ACTIONS").unwrap_or(40) as usize;
    let list = match env_u64("ROOMHOOK_DUPGUARD_SEED") {
        Some(seed) => vec![seed],
        None => vec![1, 2, 3],
    };
    seeds(list, actions).await;
}

/// The long run: `ROOMHOOK_DUPGUARD_SEEDS` seeds (default 20) from
/// `ROOMHOOK_DUPGUARD_FIRST_SEED` (default 1000), `ROOMHOOK_DUPGUARD_ACTIONS` each (default
/// 150).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: many seeds and actions (minutes)"]
async fn random_broker_sequences_long() {
    let n = env_u64("ROOMHOOK_DUPGUARD_SEEDS").unwrap_or(20);
    let first = env_u64("ROOMHOOK_DUPGUARD_FIRST_SEED").unwrap_or(1000);
    let actions = env_u64("ROOMHOOK_DUPGUARD_ACTIONS").unwrap_or(150) as usize;
    seeds((first..first + n).collect(), actions).await;
}

#[test]
fn a_seed_gives_the_same_sequence_every_time() {
    assert_eq!(generate(7, 200), generate(7, 200));
    assert_ne!(generate(7, 200), generate(8, 200));
    let a = generate(7, 200);
    assert!(a.iter().any(|a| matches!(a, New { lost: true, .. })));
    assert!(a.iter().any(|a| matches!(a, Break { pong: true, .. })));
    assert!(a.iter().any(|a| matches!(
        a,
        New {
            like: PkidOwner,
            ..
        }
    )));
    assert!(a.iter().any(|a| matches!(a, AwaitPing { .. })));
}

/// Plays a fixed sequence (a shrunk failure) and fails with the details.
async fn replay(grouped: bool, actions: &[Action]) {
    if let Err(e) = check("replay", grouped, actions).await {
        panic!("{e}");
    }
}

/// The reuse of a packet id right after its PUBACK, alone in its group: the clear of the
/// old mark comes before every append of the group, is applied first, and the new
/// message's mark meets its resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_packet_id_keeps_the_new_mark_when_its_clear_opens_the_group() {
    replay(
        true,
        &[
            arrives(0, Fresh),
            Acks { src: 0 },
            arrives(0, PkidOwner),
            broken(0, 1),
        ],
    )
    .await;
}

/// Found by the model (fixed in src/store/writer.rs, the held-back clears). Source `a` publishes `a0` with packet
/// id 1, roomhook commits it (mark (a, 1)) and acks it; the broker reads the PUBACK.
/// Source `b` publishes `b0`, and `a` at once publishes a new message (DUP unset) that
/// reuses packet id 1 with `a0`'s topic and payload. The PUBACK of that new message is
/// lost with a break; the broker resends it with DUP set after the reconnect.
///
/// Expected: `a0` arrives twice (two new messages), the resend is recognised.
/// Observed: `a0` arrives three times (the resend is stored again); with a fresh payload
/// the reusing message arrives twice. Every run fails with commit_interval, two runs in
/// three without it.
///
/// Why: the source hands the clear of (a, 1) to the store right before the new message's
/// append (mqtt.rs, `old_mark`/`reused` → `hand_over`), but `b0`'s append is already in
/// the group (commit_interval lingers; without it the writer often drains all three at
/// once). A clear that comes after an append of its group goes into `after` and is
/// applied at the start of the *next* commit (writer.rs: `let into = if appended { &mut
/// after } …`, `st.clears.append(&mut after)`; `commit` removes `clears` before any op).
/// The new message's mark, written by the append after that clear in the same group
/// (`seen.insert(…)`), is removed by it, so the resend finds no mark. Without `b0` the
/// clear opens the group and is applied first (the test above passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_clear_must_not_delete_the_mark_of_the_message_that_reused_the_id() {
    replay(
        true,
        &[
            arrives(0, Fresh),
            Acks { src: 0 },
            arrives(1, Fresh),
            arrives(0, PkidOwner),
            broken(0, 1),
        ],
    )
    .await;
}

/// Found by the model (fixed in src/source/mqtt.rs; rumqttc 0.25's event queue). Source `a` has a ping in
/// flight when `a0` arrives; `a0` is committed and acked (its PUBACK is written after the
/// PINGREQ). The broker answers the ping and breaks the connection at once; the PUBACK of
/// `a0` (after the ping) is lost with it, and `a0` is resent with DUP set after the
/// reconnect.
///
/// Expected: `a0` arrives once (its mark is carried over the break and meets the resend).
/// Observed: `a0` arrives twice.
///
/// Why: rumqttc read the PINGRESP and the end of the connection in one `readb`; the
/// PingResp event stays in its queue (`EventLoop::clean` does not empty `state.events`)
/// and `poll` hands it out *after* the ConnAck of the next connection. The source takes it
/// for the first ping answered on the new connection (mqtt.rs: `Packet::PingResp =>
/// acked.ping_answered(dups_open == 0)`, with no resend read yet, so `settled`), which
/// moves every carried mark to `written`; the resend's `old_mark(pkid, dup)` then finds its
/// id in `written` and hands the clear over before its own check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_answer_read_with_the_break_must_not_clear_the_carried_marks() {
    replay(
        false,
        &[
            AwaitPing { src: 0 },
            arrives(0, Fresh),
            Acks { src: 0 },
            broken(0, 1).pong(),
        ],
    )
    .await;
}

/// Found by the model (the two above together): a new message taken for a redelivery. Source `a`
/// publishes `a0` (packet id 1), reads its PUBACK and answers a ping that came after it
/// (so the PUBACK is known to have arrived: not the window the README documents). A new
/// message reuses packet id 1 with `a0`'s topic and payload and is lost in transit with a
/// break right after the ping answer; while `a` reconnects, `b` publishes `b0`; `a`
/// resends the new message with DUP set right after the CONNACK.
///
/// Expected: `a0` arrives twice. Was: once; roomhook logged "redelivery of a committed
/// message … source=a pkid=1" for the new message.
///
/// Why: the ping answer was read together with the break and handed out after the next
/// CONNACK; since the fix above it was ignored, so (a, 1) stayed carried and the resend
/// met `a0`'s mark. The late answer proves the broker read every PUBACK written before
/// that ping: it now confirms exactly those (mqtt.rs `AckedMarks::stale_ping`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_with_the_old_topic_and_payload_must_not_be_taken_for_a_redelivery() {
    replay(
        true,
        &[
            arrives(0, Fresh),
            Acks { src: 0 },
            AwaitPing { src: 0 },
            Pong { src: 0 },
            lost(0, PkidOwner),
            broken(0, 0).meanwhile(),
        ],
    )
    .await;
}
