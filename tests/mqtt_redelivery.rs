//! The MQTT redelivery guard against a broker that reuses packet ids: a tiny MQTT 3.1.1
//! server in the test (real TCP, real packets) sends a message, takes its PUBACK, and later
//! sends another message with the same packet id, the same payload and DUP set — a new
//! message, which must be stored and delivered, not taken for a redelivery.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 1];
    s.read_exact(&mut h)?;
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        len += (b[0] & 0x7f) as usize * mult;
        mult *= 128;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((h[0], body))
}

fn remaining(len: usize) -> Vec<u8> {
    let (mut out, mut n) = (Vec::new(), len);
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

fn publish(s: &mut TcpStream, pkid: u16, dup: bool, topic: &str, payload: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload.as_bytes());
    let mut pkt = vec![0x32 | if dup { 0x08 } else { 0 }];
    pkt.extend(remaining(body.len()));
    pkt.extend(body);
    s.write_all(&pkt).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_packet_id_with_dup_and_the_same_payload_is_a_new_message() {
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path(), false).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (h, _) = read_packet(&mut s).unwrap();
        assert_eq!(h >> 4, 1, "CONNECT");
        s.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
        let (h, body) = read_packet(&mut s).unwrap();
        assert_eq!(h >> 4, 8, "SUBSCRIBE");
        s.write_all(&[0x90, 0x03, body[0], body[1], 0x01]).unwrap();
        let topic = "bench/room-1/status";
        // A: packet id 7, acked.
        publish(&mut s, 7, false, topic, r#"{"people":1}"#);
        await_puback(&mut s, 7);
        // B: another value.
        publish(&mut s, 8, false, topic, r#"{"people":2}"#);
        await_puback(&mut s, 8);
        // C: packet id 7 again, DUP set, the same payload as A — but a new message (A was
        // acknowledged): the sensor went back to 1 person.
        publish(&mut s, 7, true, topic, r#"{"people":1}"#);
        await_puback(&mut s, 7);
        // Keep the connection until the test is done with it.
        let _ = read_packet(&mut s);
    });
    let config = write_config(dir.path(), &standard_config(port, &rx.url, &rx.ca_file, ""));
    let mut daemon = Daemon::start(&config);
    assert!(
        rx.receiver.wait_accepted(3, Duration::from_secs(20)).await,
        "the third message was swallowed as a redelivery; got {:?}; log:\n{}",
        rx.receiver
            .accepted()
            .iter()
            .map(|r| r.json()["changes"]["updated"].clone())
            .collect::<Vec<_>>(),
        daemon.logs()
    );
    let values: Vec<i64> = rx
        .receiver
        .accepted()
        .iter()
        .map(|r| {
            r.json()["changes"]["updated"]["RoomAnalytics.PeopleCount.Current"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(values, vec![1, 2, 1]);
    daemon.kill9();
    // The mock broker's own checks (CONNECT, SUBSCRIBE) fail the test here.
    server.join().expect("the mock broker");
}
