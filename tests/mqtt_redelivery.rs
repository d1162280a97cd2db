//! The MQTT source against a tiny MQTT 3.1.1 server in the test (real TCP, real packets)
//! that plays a broker through disconnects:
//! - the redelivery guard: a new message that reuses the packet id and the payload of an
//!   acknowledged one and comes back with DUP set after a reconnect must be stored; a
//!   resend that crossed our PUBACK must not be stored twice;
//! - a message declared 256 MiB long (the most MQTT can declare) is never buffered: the
//!   connection drops at its header, a second connection reads past it and acks it (the
//!   broker would resend it forever), and the next message is stored.

use roomhook_testkit::mqtt_wire::*;
use roomhook_testkit::*;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn publish(s: &mut TcpStream, pkid: u16, dup: bool, topic: &str, payload: &str) {
    s.write_all(&publish_packet(pkid, dup, topic, payload))
        .unwrap();
}

/// Reads until the PUBACK of `pkid`, answering pings.
fn await_puback(s: &mut TcpStream, pkid: u16) {
    loop {
        let (h, body) = read_packet(s).expect("roomhook closed the connection");
        match h >> 4 {
            4 if body[..2] == pkid.to_be_bytes() => return,
            12 => s.write_all(&[0xd0, 0x00]).unwrap(),
            _ => {}
        }
    }
}

/// Takes a CONNECT and answers it (`session_present`), then the SUBSCRIBE.
fn handshake(s: &mut TcpStream, session_present: bool) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (h, body) = read_packet(s).unwrap();
    assert_eq!(h >> 4, 1, "CONNECT");
    // Protocol name (6) + level (1), then the flags: clean session must be off.
    assert_eq!(body[7] & 0x02, 0, "roomhook asks for a clean session");
    s.write_all(&[0x20, 0x02, u8::from(session_present), 0x00])
        .unwrap();
    let (h, body) = read_packet(s).unwrap();
    assert_eq!(h >> 4, 8, "SUBSCRIBE");
    s.write_all(&[0x90, 0x03, body[0], body[1], 0x01]).unwrap();
}

/// The topic the scripts publish on (the standard subscription's).
const TOPIC: &str = "bench/room-1/status";

/// Publishes and reads until its PUBACK (answering pings).
fn acked(s: &mut TcpStream, pkid: u16, dup: bool, topic: &str, payload: &str) {
    publish(s, pkid, dup, topic, payload);
    await_puback(s, pkid);
}

/// Takes the next connection and its handshake (`session_present`).
fn connection(listener: &TcpListener, session_present: bool) -> TcpStream {
    let (mut s, _) = listener.accept().unwrap();
    handshake(&mut s, session_present);
    s
}

/// Reads until a PINGREQ and answers it.
fn await_ping(s: &mut TcpStream) {
    loop {
        let (h, _) = read_packet(s).expect("roomhook closed the connection");
        if h >> 4 == 12 {
            s.write_all(&[0xd0, 0x00]).unwrap();
            return;
        }
    }
}

/// Runs roomhook against a mock broker that takes the first connection (no session yet)
/// and plays `script` on it (and on the listener, for the next ones), waits
/// for the people count `last`, and checks what the receiver got (`want`, in order) and
/// how many resends roomhook recognised.
async fn against(
    script: impl FnOnce(TcpListener, TcpStream) + Send + 'static,
    last: i64,
    want: &[i64],
    resends: f64,
    too_large: f64,
) {
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path(), false).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let first = connection(&listener, false);
        script(listener, first)
    });
    let admin = free_port();
    let config = Config::new()
        .admin(admin)
        .with(Section::sensors(port).set("keep_alive", "5s"))
        .with(Section::webhook("facilities", &rx.url, &rx.ca_file))
        .write(dir.path());
    let mut daemon = Daemon::start(&config);
    let values = || {
        people_counts(&rx.receiver.accepted())
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<i64>>()
    };
    let end = rx
        .receiver
        .wait_for(Duration::from_secs(40), |r| {
            people_counts(r).iter().any(|(_, v)| *v == last)
        })
        .await;
    assert!(
        end,
        "the last message never arrived; got {:?}; log:\n{}",
        values(),
        daemon.logs()
    );
    assert_eq!(
        values(),
        want,
        "a message swallowed or stored twice; log:\n{}",
        daemon.logs()
    );
    assert_eq!(
        metric(
            admin,
            "roomhook_source_redelivered_total{source=\"sensors\"}"
        ),
        Some(resends),
        "resends recognised"
    );
    assert_eq!(
        metric(
            admin,
            "roomhook_source_decode_errors_total{source=\"sensors\",reason=\"too_large\"}"
        ),
        Some(too_large),
        "oversized messages counted"
    );
    daemon.kill9();
    // The mock broker's own checks (CONNECT, SUBSCRIBE) fail the test here.
    server.join().expect("the mock broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_packet_id_after_a_reconnect_is_a_new_message_and_a_crossed_resend_is_not() {
    let script = |listener: TcpListener, mut s: TcpStream| {
        // A: packet id 7, acked; B: another value, acked; a ping answered after both
        // PUBACKs tells roomhook they arrived.
        acked(&mut s, 7, false, TOPIC, r#"{"people":1}"#);
        acked(&mut s, 8, false, TOPIC, r#"{"people":2}"#);
        await_ping(&mut s);
        // C reuses packet id 7 (free again: A was acked) with A's payload — the sensor
        // went back to 1 person — and is lost with the connection, a moment later (the
        // script's pace: roomhook reads the ping answer before the connection goes).
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
        let mut s = connection(&listener, true);
        // The broker resends C, DUP set: a new message, not A again.
        acked(&mut s, 7, true, TOPIC, r#"{"people":1}"#);
        // D and E, acked; then D resent with DUP as if the resend had crossed our PUBACK
        // (a PUBACK queued before a break and written after it): the same message. (E
        // between them keeps change-only from hiding a second D.)
        acked(&mut s, 9, false, TOPIC, r#"{"people":3}"#);
        acked(&mut s, 10, false, TOPIC, r#"{"people":4}"#);
        acked(&mut s, 9, true, TOPIC, r#"{"people":3}"#);
        // F shows the end: everything before it was handled.
        acked(&mut s, 11, false, TOPIC, r#"{"people":5}"#);
        // Keep the connection until the test is done with it.
        let _ = read_packet(&mut s);
    };
    against(script, 5, &[1, 2, 1, 3, 4, 5], 1.0, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_of_pubacks_unconfirmed_at_a_break_meet_the_resends_then_go_at_the_first_ping() {
    let script = |listener: TcpListener, mut s: TcpStream| {
        // X: A and B acked, and the connection breaks before any ping.
        acked(&mut s, 7, false, TOPIC, r#"{"people":1}"#);
        acked(&mut s, 8, false, TOPIC, r#"{"people":2}"#);
        drop(s);
        // Y: the broker never read A's PUBACK: A comes again (DUP) and must meet its mark.
        // It did read B's. A ping answered, then D, then another break.
        let mut s = connection(&listener, true);
        acked(&mut s, 7, true, TOPIC, r#"{"people":1}"#);
        await_ping(&mut s);
        acked(&mut s, 9, false, TOPIC, r#"{"people":3}"#);
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
        // Z: C reused B's packet id 8 with B's payload and was lost with Y: it comes with
        // DUP and is new (B's mark went with Y's first ping answer).
        let mut s = connection(&listener, true);
        acked(&mut s, 8, true, TOPIC, r#"{"people":2}"#);
        acked(&mut s, 10, false, TOPIC, r#"{"people":4}"#);
        let _ = read_packet(&mut s);
    };
    against(script, 4, &[1, 2, 3, 2, 4], 1.0, 0.0).await;
}

/// The most MQTT 3.1.1 can declare (a four-byte remaining length); "300 MB" cannot be said.
const HUGE: usize = 268_435_455;

/// Sends a QoS 1 PUBLISH declared [`HUGE`] bytes long, then zeros, up to `send` bytes in
/// all or until the peer stops reading (closes); returns how many went out.
fn huge_publish(s: &mut TcpStream, pkid: u16, send: usize) -> usize {
    let mut head = vec![0x32];
    head.extend(remaining(HUGE));
    head.extend_from_slice(&[0x00, 0x05]);
    head.extend_from_slice(b"big/x");
    head.extend_from_slice(&pkid.to_be_bytes());
    let mut sent = 0;
    if s.write_all(&head).is_err() {
        return sent;
    }
    sent += head.len() - 1 - remaining(HUGE).len();
    let zeros = vec![0u8; 1 << 20];
    while sent < send.min(HUGE) {
        let n = (send.min(HUGE) - sent).min(zeros.len());
        if s.write_all(&zeros[..n]).is_err() {
            break;
        }
        sent += n;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_declared_256_mib_long_is_never_buffered_and_the_next_one_flows() {
    let script = |listener: TcpListener, mut s: TcpStream| {
        acked(&mut s, 6, false, TOPIC, r#"{"people":1}"#);
        // On main, rumqttc read all of it (it reserves the declared length); now the
        // connection drops at the header, and little more than the socket buffers goes out.
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let sent = huge_publish(&mut s, 7, 64 << 20);
        assert!(
            sent < 16 << 20,
            "roomhook read {} MiB of a message over its cap",
            sent >> 20
        );
        drop(s);
        // The second connection: CONNECT (same client id, no clean session), no SUBSCRIBE;
        // the broker resends the message in flight, all of it; it is acked.
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (h, body) = read_packet(&mut s).unwrap();
        assert_eq!(h >> 4, 1, "CONNECT");
        assert_eq!(body[7] & 0x02, 0, "the drain asks for a clean session");
        s.write_all(&[0x20, 0x02, 0x01, 0x00]).unwrap();
        let at = std::time::Instant::now();
        assert_eq!(huge_publish(&mut s, 7, HUGE), HUGE, "read past in full");
        let (h, body) = read_packet(&mut s).unwrap();
        assert_eq!(
            (h >> 4, &body[..]),
            (4, &7u16.to_be_bytes()[..]),
            "PUBACK 7"
        );
        let (h, _) = read_packet(&mut s).unwrap();
        assert_eq!(h >> 4, 14, "DISCONNECT");
        drop(s);
        // The regular connection again, after a pause (no tight loop), and the next message.
        let (mut s, _) = listener.accept().unwrap();
        assert!(
            at.elapsed() >= Duration::from_millis(900),
            "{:?}",
            at.elapsed()
        );
        handshake(&mut s, true);
        acked(&mut s, 8, false, TOPIC, r#"{"people":2}"#);
        let _ = read_packet(&mut s);
    };
    against(script, 2, &[1, 2], 0.0, 1.0).await;
}
