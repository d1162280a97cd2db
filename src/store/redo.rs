//! What one group commit changed in the store's tables, as the payload of a write-ahead log
//! record: written down by the writer as it applies a group to redb, replayed into redb after
//! a crash (or after redb was opened again following an I/O error). Replaying is idempotent:
//! every change names the key it sets or removes.
//!
//! An event queued for several webhooks is written once, with all its keys.

use super::schema::{DEAD, MQTT_SEEN, NEXT_SEQ, QUEUE};

const PUT: u8 = 1;
const DEL: u8 = 2;
const DEAD_PUT: u8 = 3;
const DEAD_DEL: u8 = 4;
const SEEN_PUT: u8 = 5;
const SEEN_DEL: u8 = 6;
const NEXT: u8 = 7;

/// The changes of one group, encoded as they are made.
#[derive(Default)]
pub(crate) struct Redo {
    buf: Vec<u8>,
    /// Where the last change starts, when it is a removal range that may grow: (offset of
    /// its `last` field, webhook, last).
    open_range: Option<(usize, u32, u64)>,
}

impl Redo {
    /// Starts the next record (the buffer is kept).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.open_range = None;
    }

    /// Nothing recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded changes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes recorded.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Queue entries with one value under several keys (webhook, sequence number).
    pub(crate) fn put(&mut self, keys: &[(u32, u64)], value: &[u8]) {
        self.open_range = None;
        self.buf.push(PUT);
        self.buf
            .extend_from_slice(&(keys.len() as u16).to_le_bytes());
        for (w, seq) in keys {
            self.buf.extend_from_slice(&w.to_le_bytes());
            self.buf.extend_from_slice(&seq.to_le_bytes());
        }
        self.bytes_field(value);
    }

    /// A queue entry removed; consecutive removals of one webhook become one range.
    pub(crate) fn del(&mut self, w: u32, seq: u64) {
        if let Some((at, rw, last)) = self.open_range {
            if rw == w && seq == last + 1 {
                self.buf[at..at + 8].copy_from_slice(&seq.to_le_bytes());
                self.open_range = Some((at, w, seq));
                return;
            }
        }
        self.buf.push(DEL);
        self.buf.extend_from_slice(&w.to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.open_range = Some((at, w, seq));
    }

    /// A dead letter stored.
    pub(crate) fn dead_put(&mut self, w: u32, seq: u64, value: &[u8]) {
        self.open_range = None;
        self.buf.push(DEAD_PUT);
        self.buf.extend_from_slice(&w.to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.bytes_field(value);
    }

    /// A dead letter removed.
    pub(crate) fn dead_del(&mut self, w: u32, seq: u64) {
        self.open_range = None;
        self.buf.push(DEAD_DEL);
        self.buf.extend_from_slice(&w.to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
    }

    /// An MQTT redelivery mark set.
    pub(crate) fn seen_put(&mut self, source: &str, pkid: u16, digest: u64) {
        self.open_range = None;
        self.buf.push(SEEN_PUT);
        self.bytes_field(source.as_bytes());
        self.buf.extend_from_slice(&pkid.to_le_bytes());
        self.buf.extend_from_slice(&digest.to_le_bytes());
    }

    /// An MQTT redelivery mark cleared.
    pub(crate) fn seen_del(&mut self, source: &str, pkid: u16) {
        self.open_range = None;
        self.buf.push(SEEN_DEL);
        self.bytes_field(source.as_bytes());
        self.buf.extend_from_slice(&pkid.to_le_bytes());
    }

    /// A webhook's next sequence number.
    pub(crate) fn next_seq(&mut self, w: u32, seq: u64) {
        self.open_range = None;
        self.buf.push(NEXT);
        self.buf.extend_from_slice(&w.to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
    }

    fn bytes_field(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v);
    }
}

/// A record whose checksum matched but whose content does not parse (a bug, not a torn
/// write).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    /// The record is malformed.
    #[error("a write-ahead log record is malformed at byte {0}")]
    Malformed(usize),
    /// redb refused a change.
    #[error("{0}")]
    Db(#[from] redb::Error),
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReplayError> {
        let s = self
            .data
            .get(self.at..self.at + n)
            .ok_or(ReplayError::Malformed(self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, ReplayError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, ReplayError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, ReplayError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], ReplayError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, ReplayError> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?).map_err(|_| ReplayError::Malformed(at))
    }
}

/// Applies one record's changes in `txn`.
pub(crate) fn replay(txn: &redb::WriteTransaction, record: &[u8]) -> Result<(), ReplayError> {
    let db = |e: redb::TableError| ReplayError::Db(e.into());
    let st = |e: redb::StorageError| ReplayError::Db(e.into());
    let mut q = txn.open_table(QUEUE).map_err(db)?;
    let mut dead = txn.open_table(DEAD).map_err(db)?;
    let mut seen = txn.open_table(MQTT_SEEN).map_err(db)?;
    let mut next = txn.open_table(NEXT_SEQ).map_err(db)?;
    let mut r = Reader {
        data: record,
        at: 0,
    };
    while r.at < record.len() {
        let tag = r.take(1)?[0];
        match tag {
            PUT => {
                let n = r.u16()? as usize;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push((r.u32()?, r.u64()?));
                }
                let v = r.bytes()?;
                for k in keys {
                    q.insert(k, v).map_err(st)?;
                }
            }
            DEL => {
                let (w, first, last) = (r.u32()?, r.u64()?, r.u64()?);
                if last < first {
                    return Err(ReplayError::Malformed(r.at));
                }
                q.retain_in((w, first)..=(w, last), |_, _| false)
                    .map_err(st)?;
            }
            DEAD_PUT => {
                let (w, seq) = (r.u32()?, r.u64()?);
                let v = r.bytes()?;
                dead.insert((w, seq), v).map_err(st)?;
            }
            DEAD_DEL => {
                let (w, seq) = (r.u32()?, r.u64()?);
                dead.remove((w, seq)).map_err(st)?;
            }
            SEEN_PUT => {
                let s = r.str()?;
                let (pkid, digest) = (r.u16()?, r.u64()?);
                seen.insert((s, pkid), digest).map_err(st)?;
            }
            SEEN_DEL => {
                let s = r.str()?;
                let pkid = r.u16()?;
                seen.remove((s, pkid)).map_err(st)?;
            }
            NEXT => {
                let (w, seq) = (r.u32()?, r.u64()?);
                next.insert(w, seq).map_err(st)?;
            }
            _ => return Err(ReplayError::Malformed(r.at - 1)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

    #[test]
    fn a_replayed_record_makes_the_same_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut redo = Redo::default();
        redo.put(&[(1, 1), (2, 1)], b"shared");
        redo.put(&[(1, 2)], b"a2");
        redo.put(&[(1, 3)], b"a3");
        redo.put(&[(1, 4)], b"a4");
        redo.del(1, 1);
        redo.del(1, 2);
        redo.del(1, 3);
        redo.dead_put(2, 1, b"dl");
        redo.seen_put("mqtt", 7, 99);
        redo.seen_put("mqtt", 8, 98);
        redo.seen_del("mqtt", 8);
        redo.next_seq(1, 5);
        // Consecutive removals are one range.
        let mut dels = Redo::default();
        for seq in 1..=3 {
            dels.del(1, seq);
        }
        assert_eq!(dels.len(), 1 + 4 + 8 + 8);
        for _ in 0..2 {
            let txn = db.begin_write().unwrap();
            replay(&txn, redo.bytes()).unwrap();
            txn.commit().unwrap();
        }
        let read = db.begin_read().unwrap();
        let q = read.open_table(QUEUE).unwrap();
        let keys: Vec<(u32, u64)> = q.iter().unwrap().map(|i| i.unwrap().0.value()).collect();
        assert_eq!(keys, vec![(1, 4), (2, 1)]);
        assert_eq!(q.get((2, 1)).unwrap().unwrap().value(), b"shared");
        let seen = read.open_table(MQTT_SEEN).unwrap();
        assert_eq!(seen.get(("mqtt", 7)).unwrap().unwrap().value(), 99);
        assert!(seen.get(("mqtt", 8)).unwrap().is_none());
        assert_eq!(read.open_table(DEAD).unwrap().len().unwrap(), 1);
        assert_eq!(
            read.open_table(NEXT_SEQ)
                .unwrap()
                .get(1)
                .unwrap()
                .unwrap()
                .value(),
            5
        );
        let txn = db.begin_write().unwrap();
        assert!(matches!(
            replay(&txn, &redo.bytes()[..redo.len() - 3]),
            Err(ReplayError::Malformed(_))
        ));
    }
}
