//! Opening the store: the write-ahead log opened and replayed into redb, checkpoints, the
//! recovery after an I/O error, the figures of a queue read back, and compaction.

use super::redo;
use super::schema::{DEAD, ENTRY_OVERHEAD, META, MQTT_SEEN, NEXT_SEQ, QUEUE, WAL_GEN, WEBHOOKS};
use super::types::{StoreError, WebhookId};
use super::wal;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::HashMap;
use std::path::Path;

/// Runs `f`, turning a panic (redb panics on some kinds of damaged pages) into `None`,
/// without printing the panic.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(hook);
    r
}

/// Whether a store file of `size` bytes holding `queued` bytes of queues is worth
/// compacting: it is more than twice what it holds, plus 4 MiB.
pub(crate) fn bloated(size: u64, queued: u64) -> bool {
    size > queued.saturating_mul(2) + 4 * 1024 * 1024
}

/// Gives free pages back to the file system (the file of `size` bytes is much larger than
/// what it holds, after a drained backlog): redb keeps freed pages in it until compacted.
pub(crate) fn compact(db: &mut Database, path: &Path, size: u64) {
    let started = std::time::Instant::now();
    match db.compact() {
        Ok(_) => {
            let after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            tracing::info!(
                "store compacted from {:.1} MiB to {:.1} MiB in {:?}",
                size as f64 / 1048576.0,
                after as f64 / 1048576.0,
                started.elapsed()
            );
        }
        Err(e) => tracing::warn!("store compaction failed (the store stays usable): {e}"),
    }
}

/// What opening found: the store id, the webhooks' ids, and their next sequence numbers.
pub(super) type Opened = (u64, Vec<WebhookId>, HashMap<WebhookId, u64>);

/// Opens the write-ahead log at the generation redb's durable state names, and returns the
/// records redb does not have yet (a crash came before their checkpoint).
pub(super) fn open_wal(
    db: &Database,
    dir: &Path,
    max_bytes: u64,
) -> Result<(wal::Wal, Vec<Vec<u8>>), StoreError> {
    let known = wal_generation(db)?;
    // A store without a generation yet (new, or made before the log existed) starts at a
    // random one, so that a log left over from another store is never replayed into it.
    let generation = known.unwrap_or_else(|| rand::random::<u64>() >> 1);
    let (wal, records, tail) =
        wal::Wal::open(dir, wal::size_for(max_bytes), generation).map_err(|source| {
            StoreError::Wal {
                path: dir.join(wal::WAL_FILE),
                source,
            }
        })?;
    if let wal::Tail::Torn { offset, reason } = &tail {
        tracing::warn!(
            "the store's write-ahead log ends in a torn record at byte {offset} ({reason}): a write cut short by a crash or power loss, never acknowledged; it is discarded"
        );
    }
    Ok((wal, if known.is_some() { records } else { Vec::new() }))
}

/// The write-ahead log generation redb's durable state names (`None`: a store made before
/// the log, or a new one).
pub(crate) fn wal_generation(db: &Database) -> Result<Option<u64>, redb::Error> {
    let read = db.begin_read()?;
    match read.open_table(META) {
        Ok(t) => Ok(t.get(WAL_GEN)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Applies write-ahead log records in `txn`; stops at one that does not parse (a bug: its
/// checksum matched), saying so. Returns how many were applied.
fn replay_all(txn: &redb::WriteTransaction, records: &[Vec<u8>]) -> Result<usize, StoreError> {
    for (i, r) in records.iter().enumerate() {
        match redo::replay(txn, r) {
            Ok(()) => {}
            Err(redo::ReplayError::Db(e)) => return Err(e.into()),
            Err(e) => {
                tracing::error!(
                    "write-ahead log record {} of {} cannot be replayed ({e}); it and the {} after it are skipped",
                    i + 1,
                    records.len(),
                    records.len() - i - 1
                );
                return Ok(i);
            }
        }
    }
    Ok(records.len())
}

/// Commits `txn` durably and starts the write-ahead log's next generation: everything the
/// log held is in redb's durable state now.
pub(crate) fn checkpoint(
    mut txn: redb::WriteTransaction,
    wal: &mut wal::Wal,
) -> Result<(), redb::Error> {
    let next = wal.generation().wrapping_add(1);
    txn.open_table(META)?.insert(WAL_GEN, next)?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.commit()?;
    wal.restart(next);
    Ok(())
}

/// Brings a database opened again (after an I/O error) up to date with the log; returns how
/// many records were replayed.
pub(crate) fn recover(db: &Database, wal: &mut wal::Wal) -> Result<usize, StoreError> {
    let records = wal.records().map_err(|source| StoreError::Wal {
        path: wal.path().to_path_buf(),
        source,
    })?;
    let txn = db.begin_write().map_err(redb::Error::from)?;
    let n = replay_all(&txn, &records)?;
    checkpoint(txn, wal)?;
    Ok(n)
}

pub(super) fn init(
    db: &Database,
    webhooks: &[String],
    wal: &mut wal::Wal,
    records: &[Vec<u8>],
) -> Result<Opened, StoreError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    let replayed = replay_all(&txn, records)?;
    if replayed > 0 {
        tracing::info!(
            replayed,
            "store: replayed the write-ahead log (the last stop was not clean)"
        );
    }
    let mut ids = Vec::new();
    let mut next = HashMap::new();
    let store_id;
    {
        txn.open_table(QUEUE).map_err(redb::Error::from)?;
        txn.open_table(DEAD).map_err(redb::Error::from)?;
        txn.open_table(MQTT_SEEN).map_err(redb::Error::from)?;
        let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
        let existing = meta
            .get("store_id")
            .map_err(redb::Error::from)?
            .map(|v| v.value());
        store_id = match existing {
            Some(id) => id,
            None => {
                let id: u64 = rand::random::<u64>() >> 1;
                meta.insert("store_id", id).map_err(redb::Error::from)?;
                id
            }
        };
        let mut names = txn.open_table(WEBHOOKS).map_err(redb::Error::from)?;
        let seqs = txn.open_table(NEXT_SEQ).map_err(redb::Error::from)?;
        for name in webhooks {
            let (id, n) = register_name(&mut names, &mut meta, &seqs, name)?;
            ids.push(id);
            next.insert(id, n);
        }
    }
    checkpoint(txn, wal)?;
    Ok((store_id, ids, next))
}

/// Queued entries, their charged bytes, and dead letters of one webhook.
pub(crate) fn scan(
    q: &impl ReadableTable<(u32, u64), &'static [u8]>,
    d: &impl ReadableTable<(u32, u64), &'static [u8]>,
    id: WebhookId,
) -> Result<(u64, u64, u64), redb::Error> {
    let (mut depth, mut bytes) = (0u64, 0u64);
    for item in q.range((id.0, 0)..=(id.0, u64::MAX))? {
        let (_, v) = item?;
        depth += 1;
        bytes += v.value().len() as u64 + ENTRY_OVERHEAD;
    }
    let dead = d.range((id.0, 0)..=(id.0, u64::MAX))?.count() as u64;
    Ok((depth, bytes, dead))
}

/// The id of a webhook name (a new one if unknown: ids are never reused, so `webhook-id`s
/// of a deleted webhook never come back) and its next sequence number.
pub(crate) fn register_name(
    names: &mut redb::Table<'_, &'static str, u32>,
    meta: &mut redb::Table<'_, &'static str, u64>,
    seqs: &impl ReadableTable<u32, u64>,
    name: &str,
) -> Result<(WebhookId, u64), redb::Error> {
    let found = names.get(name)?.map(|v| v.value());
    let id = match found {
        Some(id) => id,
        None => {
            let mut max_id = meta.get("next_webhook_id")?.map_or(1, |v| v.value()) as u32;
            for item in names.iter()? {
                let (_, v) = item?;
                max_id = max_id.max(v.value() + 1);
            }
            names.insert(name, max_id)?;
            meta.insert("next_webhook_id", u64::from(max_id) + 1)?;
            max_id
        }
    };
    let n = seqs.get(id)?.map_or(1, |v| v.value());
    Ok((WebhookId(id), n))
}
