//! Request-body compression on the wire: for a webhook with `compression = "gzip"`, bodies
//! of at least [`MIN_BYTES`] (batches) go gzip-compressed with `Content-Encoding: gzip`;
//! smaller ones go as they are (a gzip header and trailer cost more than they save there).
//! This module owns the threshold, the level, where the work runs and the header; it is
//! applied after signing, so the Standard Webhooks signature covers the uncompressed body
//! (what a receiver verifies once it has decoded the request).
//!
//! gzip is miniz_oxide's deflate (pure Rust: no C library) in gzip's framing.

use crate::value::compression::Compression;
use bytes::Bytes;

/// The smallest body worth compressing: 1 KiB. A single status or event message (200–400
/// bytes) stays below it; a batch of a few messages, or a full sync of many values, is
/// above it.
pub(crate) const MIN_BYTES: usize = 1024;

/// Level 1 (fast), not the default 6. Measured on this project's machine (2 cores, Intel Xeon;
/// miniz_oxide through flate2 at the release profile's opt-level "s") on 100-message batches of Control Hub
/// status messages (20–28 KiB): level 1 takes 75–92 µs and makes them 17–22× smaller, level
/// 6 takes 140–165 µs for 22–26×; an 820 KiB batch (near the default `batch_max_bytes`)
/// takes 0.7 ms at level 1 and 2.6–2.8 ms at level 6. The few hundred bytes level 6 saves
/// per batch are less than a TLS record's overhead, while level 1 halves the CPU per event
/// (a gateway's scarce resource) and keeps a usual batch well under a millisecond, short
/// enough to run on the async runtime itself.
const LEVEL: u32 = 1;

/// Bodies larger than this are compressed on the blocking pool: at level 1 that is more
/// than ~0.2 ms of work, too long to hold the runtime's one thread (the default) from every
/// other webhook and source. Only a `batch_max_bytes` above 256 KiB makes such bodies.
const INLINE_MAX: usize = 256 * 1024;

/// A body as it goes on the wire.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    /// The bytes sent.
    pub(crate) body: Bytes,
    /// `Content-Encoding` when they are compressed.
    pub(crate) encoding: Option<&'static str>,
}

/// `body` for the wire under `compression`: gzip when it is set and the body has at least
/// `min_bytes` ([`MIN_BYTES`] for deliveries; 0 for the healthCheck, which must show whether
/// the receiver reads gzip at all).
pub(crate) async fn encode(compression: Compression, body: Bytes, min_bytes: usize) -> Wire {
    if compression == Compression::None || body.len() < min_bytes {
        return Wire {
            body,
            encoding: None,
        };
    }
    let gz = if body.len() <= INLINE_MAX {
        gzip(&body)
    } else {
        let big = body.clone();
        match tokio::task::spawn_blocking(move || gzip(&big)).await {
            Ok(gz) => gz,
            // The blocking pool is shutting down: compress here rather than not at all.
            Err(_) => gzip(&body),
        }
    };
    Wire {
        body: Bytes::from(gz),
        encoding: Some("gzip"),
    }
}

/// gzip of `data` at [`LEVEL`]: RFC 1952's framing around miniz_oxide's raw deflate (a
/// 10-byte header, the deflate stream, the CRC-32 and the length of the input). Written
/// here rather than through flate2's stream types, which cost the gateway binary more than
/// these lines.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(data, LEVEL as u8);
    let mut out = Vec::with_capacity(deflated.len() + 18);
    // Magic, deflate, no flags, no modification time, no extra flags, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    // ISIZE: the input's length modulo 2^32.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    /// A batch of `n` status messages as the worker renders them (a JSON array).
    fn batch(n: usize) -> Vec<u8> {
        let mut out = b"[".to_vec();
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            let e = crate::event::Event {
                device: format!("room-{}", i % 10),
                workspace: Some(format!("workspace-{}", i % 10)),
                path: "RoomAnalytics.PeopleCount.Current".into(),
                kind: crate::catalog::Kind::Status,
                value: ((i * 7) % 23).into(),
                ts_ms: 1_796_000_000_000 + (i as i64) * 37,
                full_sync: false,
                more: Vec::new(),
            };
            out.extend(crate::deliver::payload::message(&e, "org-0042"));
        }
        out.push(b']');
        out
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn below_the_threshold_or_with_none_the_body_goes_as_it_is() {
        let small = Bytes::from(batch(1));
        assert!(small.len() < MIN_BYTES);
        let w = run(encode(Compression::Gzip, small.clone(), MIN_BYTES));
        assert_eq!((&w.body, w.encoding), (&small, None));
        let big = Bytes::from(batch(100));
        let w = run(encode(Compression::None, big.clone(), MIN_BYTES));
        assert_eq!((&w.body, w.encoding), (&big, None));
        // Exactly at the threshold it is compressed; the healthCheck (0) always is.
        let at = Bytes::from(vec![b' '; MIN_BYTES]);
        let w = run(encode(Compression::Gzip, at.clone(), MIN_BYTES));
        assert_eq!(w.encoding, Some("gzip"));
        assert_eq!(gunzip(&w.body), at);
        let w = run(encode(Compression::Gzip, small.clone(), 0));
        assert_eq!(w.encoding, Some("gzip"));
        assert_eq!(gunzip(&w.body), small);
    }

    #[test]
    fn a_100_message_batch_round_trips_at_least_5_times_smaller() {
        let body = Bytes::from(batch(100));
        let w = run(encode(Compression::Gzip, body.clone(), MIN_BYTES));
        assert_eq!(w.encoding, Some("gzip"));
        assert_eq!(gunzip(&w.body), body);
        let ratio = body.len() as f64 / w.body.len() as f64;
        assert!(
            ratio >= 5.0,
            "{} -> {} bytes: only {ratio:.1}x",
            body.len(),
            w.body.len()
        );
    }

    #[test]
    fn a_body_over_the_inline_limit_is_compressed_on_the_blocking_pool() {
        let body = Bytes::from(batch(2000));
        assert!(body.len() > INLINE_MAX);
        let w = run(encode(Compression::Gzip, body.clone(), MIN_BYTES));
        assert_eq!(w.encoding, Some("gzip"));
        assert_eq!(gunzip(&w.body), body);
    }
}
