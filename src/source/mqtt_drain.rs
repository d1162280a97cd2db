//! Getting past an MQTT message too large to take. The MQTT source reads packets up to a
//! cap (`max_payload` plus room for the topic): rumqttc refuses a larger one at its fixed
//! header, before buffering any of it, and drops the connection. A broker keeps a QoS 1
//! message of a persistent session and sends it again first on every reconnect, so the
//! source would never get past it. This short second connection, under the same client
//! id, reads what the broker resends one packet at a time and never holds a packet whole:
//! an oversized PUBLISH is read past in 64 KiB pieces (discarded) and acknowledged, so the
//! broker forgets it; every other message is left unacknowledged, for the regular
//! connection to take (the broker sends it again). Then it disconnects.
//!
//! A plain MQTT 3.1.1 client of five packet types (CONNECT, CONNACK, PUBLISH, PUBACK,
//! PUBREL/PUBCOMP, DISCONNECT), written out here because rumqttc frames every packet
//! whole.

use crate::config::MqttSettings;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// Room above `max_payload` in the packet cap: a topic (up to 65,535 bytes and its length)
/// and a packet id.
pub(crate) const HEADROOM: usize = 65_535 + 2 + 2 + 1024;
/// How long the connection and the broker's CONNACK may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A broker resends what is in flight right after CONNACK: this long without a packet
/// means nothing more is coming.
const QUIET: Duration = Duration::from_secs(3);
/// Once an oversized message is acknowledged, how long to look for more of them.
const AFTER_LAST: Duration = Duration::from_secs(2);
/// The longest a drain runs (a regular connection follows; if the broker still has an
/// oversized message then, the next drain goes on from there).
const AT_MOST: Duration = Duration::from_secs(120);
/// The longest wait for the next piece of a packet being read.
const STALL: Duration = Duration::from_secs(30);
/// The keep-alive announced in CONNECT: longer than a drain lasts, so no pings are due.
const KEEP_ALIVE_S: u16 = 600;

/// An oversized message read past and acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// Its topic (lossy UTF-8, cut at 200 characters).
    pub(crate) topic: String,
    /// Its declared remaining length in bytes.
    pub(crate) bytes: usize,
}

/// Connects as the source does (TCP or TLS, same client id and credentials, persistent
/// session), reads past and acknowledges every PUBLISH over `cap` that the broker resends,
/// and disconnects. The oversized messages it skipped, or why it could not.
pub(crate) async fn drain(s: &MqttSettings, cap: usize) -> Result<Vec<Skipped>, String> {
    let tcp = timeout(
        CONNECT_WITHIN,
        tokio::net::TcpStream::connect((s.host.as_str(), s.port)),
    )
    .await
    .map_err(|_| {
        format!(
            "no connection to {}:{} within {CONNECT_WITHIN:?}",
            s.host, s.port
        )
    })?
    .map_err(|e| format!("cannot connect to {}:{}: {e}", s.host, s.port))?;
    let _ = tcp.set_nodelay(true);
    match &s.tls {
        None => session(tcp, s, cap).await,
        Some(trust) => {
            let cfg = crate::tls::client_config(trust, &[]).map_err(|e| e.to_string())?;
            let name = rustls_pki_types::ServerName::try_from(s.host.clone())
                .map_err(|e| format!("{}: {e}", s.host))?;
            let tls = timeout(
                CONNECT_WITHIN,
                tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
            session(tls, s, cap).await
        }
    }
}

/// The drain over an open stream (see [`drain`]).
pub(crate) async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    s: &MqttSettings,
    cap: usize,
) -> Result<Vec<Skipped>, String> {
    let creds = s
        .credentials
        .as_ref()
        .map(|(u, p)| (u.as_str(), p.expose()));
    io.write_all(&connect_packet(&s.client_id, creds))
        .await
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    let (first, len) = timeout(CONNECT_WITHIN, header(&mut io))
        .await
        .map_err(|_| "no CONNACK".to_string())??;
    let mut ack = [0u8; 2];
    if first >> 4 != 2 || len != 2 {
        return Err(format!("expected CONNACK, got packet type {}", first >> 4));
    }
    io.read_exact(&mut ack)
        .await
        .map_err(|e| format!("reading CONNACK: {e}"))?;
    if ack[1] != 0 {
        return Err(format!(
            "the broker refused the connection (code {})",
            ack[1]
        ));
    }
    let started = Instant::now();
    let mut skipped = Vec::new();
    let mut last_skip: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let wait = match last_skip {
            Some(t) => AFTER_LAST.saturating_sub(t.elapsed()),
            None => QUIET,
        };
        if started.elapsed() >= AT_MOST {
            break;
        }
        let (first, len) = match timeout(wait, header(&mut io)).await {
            Err(_) => break, // quiet: nothing more in flight
            Ok(r) => r?,
        };
        let mut left = len;
        match first >> 4 {
            // PUBLISH: topic, packet id (QoS 1 and 2), payload.
            3 => {
                let qos = (first >> 1) & 3;
                let topic_len = usize::from(u16::from_be_bytes(read2(&mut io, &mut left).await?));
                let topic_len = topic_len.min(left);
                let mut topic = vec![0u8; topic_len.min(200)];
                read_exact(&mut io, &mut topic, &mut left).await?;
                skip(&mut io, topic_len - topic.len(), &mut buf, &mut left).await?;
                let pkid = if qos > 0 {
                    Some(read2(&mut io, &mut left).await?)
                } else {
                    None
                };
                let rest = left;
                skip(&mut io, rest, &mut buf, &mut left).await?;
                if len > cap {
                    if let Some(id) = pkid {
                        // PUBACK (QoS 1) or PUBREC (QoS 2; PUBREL is answered below).
                        let kind = if qos == 1 { 0x40 } else { 0x50 };
                        io.write_all(&[kind, 0x02, id[0], id[1]])
                            .await
                            .map_err(|e| format!("writing PUBACK: {e}"))?;
                    }
                    skipped.push(Skipped {
                        topic: String::from_utf8_lossy(&topic).into_owned(),
                        bytes: len,
                    });
                    last_skip = Some(Instant::now());
                }
                // A message within the cap stays unacknowledged: the broker sends it
                // again to the regular connection.
            }
            // PUBREL (QoS 2 of an oversized message): PUBCOMP.
            6 => {
                let id = read2(&mut io, &mut left).await?;
                let rest = left;
                skip(&mut io, rest, &mut buf, &mut left).await?;
                io.write_all(&[0x70, 0x02, id[0], id[1]])
                    .await
                    .map_err(|e| format!("writing PUBCOMP: {e}"))?;
            }
            _ => {
                let rest = left;
                skip(&mut io, rest, &mut buf, &mut left).await?;
            }
        }
    }
    let _ = io.write_all(&[0xe0, 0x00]).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
    Ok(skipped)
}

/// CONNECT, MQTT 3.1.1, persistent session.
fn connect_packet(client_id: &str, credentials: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]);
    let flags = match credentials {
        Some(_) => 0x80 | 0x40,
        None => 0x00,
    };
    body.push(flags);
    body.extend_from_slice(&KEEP_ALIVE_S.to_be_bytes());
    let field = |body: &mut Vec<u8>, v: &[u8]| {
        let n = u16::try_from(v.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&n.to_be_bytes());
        body.extend_from_slice(&v[..usize::from(n)]);
    };
    field(&mut body, client_id.as_bytes());
    if let Some((user, pass)) = credentials {
        field(&mut body, user.as_bytes());
        field(&mut body, pass.as_bytes());
    }
    let mut pkt = vec![0x10];
    pkt.extend(remaining_length(body.len()));
    pkt.extend(body);
    pkt
}

/// The remaining-length field of a fixed header for `len` bytes (1 to 4 bytes).
pub fn remaining_length(len: usize) -> Vec<u8> {
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

/// A fixed header: the first byte and the remaining length.
async fn header<S: AsyncRead + Unpin>(io: &mut S) -> Result<(u8, usize), String> {
    let first = io
        .read_u8()
        .await
        .map_err(|e| format!("the broker closed the connection: {e}"))?;
    let (mut len, mut mult) = (0usize, 1usize);
    for i in 0..4 {
        let b = io
            .read_u8()
            .await
            .map_err(|e| format!("reading a packet length: {e}"))?;
        len += usize::from(b & 0x7f) * mult;
        mult *= 128;
        if b & 0x80 == 0 {
            return Ok((first, len));
        }
        if i == 3 {
            break;
        }
    }
    Err("a malformed packet length (more than 4 bytes)".into())
}

async fn read2<S: AsyncRead + Unpin>(io: &mut S, left: &mut usize) -> Result<[u8; 2], String> {
    let mut b = [0u8; 2];
    read_exact(io, &mut b, left).await?;
    Ok(b)
}

async fn read_exact<S: AsyncRead + Unpin>(
    io: &mut S,
    into: &mut [u8],
    left: &mut usize,
) -> Result<(), String> {
    if into.len() > *left {
        return Err("a packet shorter than its fields".into());
    }
    timeout(STALL, io.read_exact(into))
        .await
        .map_err(|_| format!("the broker stalled for {STALL:?} within a packet"))?
        .map_err(|e| format!("reading a packet: {e}"))?;
    *left -= into.len();
    Ok(())
}

/// Reads `n` bytes into `buf` piece by piece, keeping none of them.
async fn skip<S: AsyncRead + Unpin>(
    io: &mut S,
    mut n: usize,
    buf: &mut [u8],
    left: &mut usize,
) -> Result<(), String> {
    while n > 0 {
        let piece = n.min(buf.len());
        read_exact(io, &mut buf[..piece], left).await?;
        n -= piece;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_is_mqtt_3_1_1_with_a_persistent_session() {
        let p = connect_packet("gw-1", Some(("u", "p")));
        assert_eq!(p[0], 0x10);
        assert_eq!(usize::from(p[1]), p.len() - 2);
        assert_eq!(&p[2..9], &[0, 4, b'M', b'Q', b'T', b'T', 4]);
        assert_eq!(p[9], 0xc0, "user and password, clean session off");
        assert_eq!(&p[12..18], &[0, 4, b'g', b'w', b'-', b'1']);
    }

    #[tokio::test]
    async fn an_oversized_publish_is_read_past_in_pieces_and_acked_others_are_not() {
        let (mut broker, ours) = tokio::io::duplex(4096);
        let text = "[gateway]\ndata_dir = 'd'\n[[sources.mqtt]]\nname = 'm'\nurl = 'mqtt://127.0.0.1:1883'\nclient_id = 'gw'\n[[sources.mqtt.subscriptions]]\ntopic = 'a/+'\nformat = 'json'\ndevice = '{1}'\n[sources.mqtt.subscriptions.fields]\n'/people' = 'RoomAnalytics.PeopleCount.Current'\n";
        let s = match crate::config::load_str(std::path::Path::new("t.toml"), text) {
            Ok(settings) => settings.mqtt[0].clone(),
            Err(e) => panic!("{e}"),
        };
        let peer = tokio::spawn(async move {
            let (first, len) = header(&mut broker).await.unwrap();
            assert_eq!(first, 0x10);
            let mut connect = vec![0u8; len];
            broker.read_exact(&mut connect).await.unwrap();
            broker.write_all(&[0x20, 0x02, 0x01, 0x00]).await.unwrap();
            // A small one (left alone), then one of 1 MiB (read past and acked).
            let small = [0x32, 0x08, 0x00, 0x01, b'a', 0x00, 0x07, b'{', b'}', b' '];
            broker.write_all(&small).await.unwrap();
            let big = 1024 * 1024;
            let mut head = vec![0x32];
            head.extend(remaining_length(big));
            head.extend_from_slice(&[0x00, 0x01, b'a', 0x00, 0x09]);
            broker.write_all(&head).await.unwrap();
            let zeros = vec![0u8; 64 * 1024];
            let mut sent = 5;
            while sent < big {
                let n = (big - sent).min(zeros.len());
                broker.write_all(&zeros[..n]).await.unwrap();
                sent += n;
            }
            let mut answers = Vec::new();
            broker.read_to_end(&mut answers).await.unwrap();
            answers
        });
        let skipped = session(ours, &s, 64 * 1024).await.unwrap();
        assert_eq!(
            skipped,
            vec![Skipped {
                topic: "a".into(),
                bytes: 1024 * 1024
            }]
        );
        let answers = peer.await.unwrap();
        assert_eq!(
            answers,
            vec![0x40, 0x02, 0x00, 0x09, 0xe0, 0x00],
            "PUBACK 9 only"
        );
    }
}
