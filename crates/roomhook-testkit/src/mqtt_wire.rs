//! MQTT 3.1.1 on the wire, for the tests that play a broker themselves
//! (`mqtt_redelivery.rs`, `mqtt_dupguard.rs`): packets read and QoS 1 PUBLISHes made.

use std::io::Read;
use std::net::TcpStream;

/// Reads one packet: its first byte and its body.
pub fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
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

/// The remaining-length field for `len` bytes.
pub fn remaining(len: usize) -> Vec<u8> {
    roomhook::source::mqtt_drain::remaining_length(len)
}

/// A QoS 1 PUBLISH.
pub fn publish_packet(pkid: u16, dup: bool, topic: &str, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload.as_bytes());
    let mut pkt = vec![0x32 | if dup { 0x08 } else { 0 }];
    pkt.extend(remaining(body.len()));
    pkt.extend(body);
    pkt
}
