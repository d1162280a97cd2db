//! The durable per-webhook FIFO queues on redb, with a write-ahead log in front. One writer
//! thread group-commits appends and removals (many events per transaction, one log record
//! each); readers take ordered windows of a queue; every commit wakes the delivery workers
//! of the webhooks it touched.
//!
//! This file is the [`Store`] façade. `schema.rs` says what is on disk, `types.rs` holds the
//! value types, `shared.rs` and `cell.rs` what the façade shares with the writer thread,
//! `recover.rs` the opening and recovery, `overflow.rs` what gives way when the store is full,
//! `lazy.rs` when removals are written (the writer thread, `writer.rs`, is the I/O around it).

mod cell;
pub(crate) mod change;
mod lazy;
mod overflow;
mod recover;
mod redo;
pub mod salvage;
mod schema;
mod shared;
mod types;
pub mod wal;
mod writer;

pub use crate::value::overflow::Overflow;
pub use schema::FILE_NAME;
#[cfg(test)]
use schema::MAX_DEAD_LETTERS;
pub(crate) use types::{
    DeadLetter, DropReason, Entry, Mark, QueueStats, StoreHealth, Window, HEALTHY_AFTER,
    WEBHOOK_REMOVED,
};
pub use types::{Limits, StoreError, WebhookId};
#[cfg(test)]
use writer::LAZY_WAIT;
pub(crate) use writer::{LAZY_REMOVALS, LAZY_REMOVALS_GROUPED};

use cell::DbCell;
use recover::{bloated, compact, init, open_wal, quietly, scan};
use schema::{CACHE_BYTES, DEAD, QUEUE, WEBHOOKS};
use shared::{Health, Queue, Shared};
use types::Op;

use crate::event::Event;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DbCell>,
    tx: mpsc::Sender<Op>,
    shared: Arc<Shared>,
}

/// Resolves when the writer answers an op: committed, refused (`block`), or failed.
async fn committed(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    rx.await.unwrap_or(Err(StoreError::Closed))
}

/// Commits the writer has outstanding at most (ops waiting in its channel).
const OP_CHANNEL: usize = 1024;

impl Store {
    /// Opens (or creates) the store in `data_dir` and maps each webhook name to its id.
    pub fn open(data_dir: &Path, limits: &Limits) -> Result<(Store, Vec<WebhookId>), StoreError> {
        let webhooks: Vec<String> = limits.queues.iter().map(|(n, _)| n.clone()).collect();
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let opened = quietly(|| {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
        })
        .ok_or_else(|| StoreError::Open {
            path: path.clone(),
            source: redb::Error::Corrupted(
                "the file is damaged (redb could not read its pages)".into(),
            ),
        })?;
        let db = opened.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.clone()),
            other => StoreError::Open {
                path: path.clone(),
                source: other.into(),
            },
        })?;
        let (mut wal, records) = open_wal(&db, data_dir, limits.max_bytes)?;
        let (store_id, ids, next) = init(&db, &webhooks, &mut wal, &records)?;
        let read = db.begin_read().map_err(redb::Error::from)?;
        let q = read.open_table(QUEUE).map_err(redb::Error::from)?;
        let d = read.open_table(DEAD).map_err(redb::Error::from)?;
        let mut queues = HashMap::new();
        for (id, (_, overflow)) in ids.iter().zip(&limits.queues) {
            let (depth, bytes, dead) = scan(&q, &d, *id)?;
            let last = next.get(id).copied().unwrap_or(1).saturating_sub(1);
            queues.insert(
                *id,
                Arc::new(Queue::new(
                    *overflow,
                    QueueStats {
                        depth: AtomicU64::new(depth),
                        dead: AtomicU64::new(dead),
                        bytes: AtomicU64::new(bytes),
                        ..QueueStats::default()
                    },
                    last,
                )),
            );
        }
        drop(q);
        drop(d);
        drop(read);
        let mut db = db;
        let queued: u64 = queues
            .values()
            .map(|q| q.stats.bytes.load(Ordering::Relaxed))
            .sum();
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        if bloated(size, queued) {
            compact(&mut db, &path, size);
        }
        let db = Arc::new(DbCell::new(db));
        let (finished_tx, finished_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            store_id,
            max_bytes: limits.max_bytes,
            path,
            queues: std::sync::RwLock::new(Arc::new(queues)),
            health: Health::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            commit_duration: std::sync::OnceLock::new(),
            commit_interval_ns: AtomicU64::new(0),
            finished: std::sync::Mutex::new(Some(finished_rx)),
            pulse: crate::pulse::Pulse::new("the store writer"),
            removals: Default::default(),
            writer_idle: std::sync::atomic::AtomicBool::new(false),
            claims: Default::default(),
            room: watch::channel(0).0,
            #[cfg(test)]
            fail_dead_letters: Default::default(),
            #[cfg(test)]
            slow_compaction_ms: Default::default(),
        });
        let (tx, rx) = mpsc::channel(OP_CHANNEL);
        writer::spawn(db.clone(), shared.clone(), next, rx, wal, finished_tx);
        Ok((Store { db, tx, shared }, ids))
    }

    /// Trades a bounded delay of every commit (and so of MQTT acks) for fewer, larger
    /// durable commits: a group gathers ops for `interval` after its first one.
    pub(crate) fn set_commit_interval(&self, interval: std::time::Duration) {
        self.shared.commit_interval_ns.store(
            u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Removals of delivered entries the writer lets wait for a group with other work
    /// (more are committed on their own): [`LAZY_REMOVALS`], or [`LAZY_REMOVALS_GROUPED`]
    /// with a `commit_interval`.
    pub(crate) fn lazy_removals(&self) -> usize {
        self.shared.lazy_removals()
    }

    /// A random number fixed at store creation; part of every `webhook-id`.
    pub(crate) fn store_id(&self) -> u64 {
        self.shared.store_id
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queues encoded events; waits for room in the writer's channel (backpressure) and
    /// returns a future that resolves once they are durably committed.
    pub(crate) async fn submit(
        &self,
        items: Vec<(WebhookId, Vec<u8>)>,
        mark: Option<Mark>,
    ) -> Result<impl std::future::Future<Output = Result<(), StoreError>>, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Append { items, mark, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(committed(rx))
    }

    /// Appends and waits for the commit.
    pub async fn append(&self, items: Vec<(WebhookId, Vec<u8>)>) -> Result<(), StoreError> {
        self.submit(items, None).await?.await
    }

    /// The PUBACKs of these packet ids of `source` were written: their redelivery marks are
    /// cleared with the next commit. Waits for room in the op channel: a mark left behind
    /// could swallow a new message that reuses the packet id with the same payload.
    pub(crate) async fn clear_marks(&self, source: &str, pkids: Vec<u16>) {
        if pkids.is_empty() {
            return;
        }
        let _ = self
            .tx
            .send(Op::ClearMarks {
                source: source.to_string(),
                pkids,
            })
            .await;
    }

    /// A quiet source asks for the cleared marks that wait to be committed now (an op
    /// with no packet ids; never worth a wait: a full channel means commits are coming).
    pub(crate) fn flush_marks(&self, source: &str) {
        let _ = self.tx.try_send(Op::ClearMarks {
            source: source.to_string(),
            pkids: Vec::new(),
        });
    }

    /// Removes delivered entries (committed with the next group); the returned future
    /// resolves once the removal is durable.
    pub async fn remove(
        &self,
        webhook: WebhookId,
        seqs: Vec<u64>,
    ) -> Result<
        impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        StoreError,
    > {
        let (done, rx) = oneshot::channel();
        if seqs.is_empty() {
            let _ = done.send(Ok(()));
            return Ok(committed(rx));
        }
        // Left for the writer's next group; the writer is woken only when it sleeps with
        // none waiting (it then commits them within LAZY_WAIT), or when enough gathered.
        let n = seqs.len();
        let gathered = {
            let mut r = self
                .shared
                .removals
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            r.ops.push(Op::Remove {
                webhook,
                seqs,
                done,
            });
            let before = r.entries;
            r.entries += n;
            let enough = self.shared.lazy_removals();
            before < enough && r.entries >= enough
        };
        let idle = self.shared.writer_idle.swap(false, Ordering::SeqCst);
        if idle || gathered {
            // An empty removal: a wake-up that carries nothing itself. Never awaited (a
            // dropped future must not leave the writer asleep with the flag cleared): a
            // full channel wakes the writer anyway, and it takes the removals then.
            let (nudge, _) = oneshot::channel();
            let wake = Op::Remove {
                webhook,
                seqs: Vec::new(),
                done: nudge,
            };
            if let Err(mpsc::error::TrySendError::Closed(_)) = self.tx.try_send(wake) {
                self.shared.answer_removals();
            }
        } else if self.tx.is_closed() {
            // The writer is gone (it answers what it left when it goes): answer this too.
            self.shared.answer_removals();
        }
        Ok(committed(rx))
    }

    /// Moves entries from a webhook's queue to its dead letters (committed with the next
    /// group); the returned future resolves once the move is durable, or failed (then the
    /// entries are still queued: the caller tries again).
    pub(crate) async fn dead_letter(
        &self,
        webhook: WebhookId,
        items: &[(u64, DeadLetter)],
    ) -> Result<
        impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        StoreError,
    > {
        let items = items
            .iter()
            .map(|(seq, d)| (*seq, serde_json::to_vec(d).unwrap_or_default()))
            .collect();
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::DeadLetter {
                webhook,
                items,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(committed(rx))
    }

    /// Re-enqueues a webhook's dead letters that died at or after `since_ms` (unix ms; 0 for
    /// all); returns how many. They keep their event and get new sequence numbers.
    pub(crate) async fn replay_dead_letters(
        &self,
        webhook: WebhookId,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Replay {
                webhook,
                since_ms,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(StoreError::Commit(e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Up to `limit` dead letters of a webhook, oldest first. Blocking.
    pub(crate) fn dead_letters(
        &self,
        webhook: WebhookId,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let read = self.db.get()?.begin_read().map_err(redb::Error::from)?;
        let t = read.open_table(DEAD).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t
            .range((webhook.0, 0)..=(webhook.0, u64::MAX))
            .map_err(redb::Error::from)?
            .take(limit)
        {
            let (k, v) = item.map_err(redb::Error::from)?;
            let (_, seq) = k.value();
            let d: DeadLetter =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    webhook: webhook.0,
                    seq,
                    reason: e.to_string(),
                })?;
            out.push((seq, d));
        }
        Ok(out)
    }

    /// Bytes charged for a webhook's queue.
    pub(crate) fn bytes(&self, webhook: WebhookId) -> u64 {
        self.stat(webhook, |s| s.bytes.load(Ordering::Relaxed))
    }

    /// Bytes charged for all queues (what `max_store_bytes` bounds).
    pub(crate) fn total_bytes(&self) -> u64 {
        self.shared.queued_bytes()
    }

    /// Events dropped from a webhook's queue for a reason, since start.
    pub(crate) fn dropped(&self, webhook: WebhookId, reason: DropReason) -> u64 {
        self.stat(webhook, |s| {
            s.dropped[reason.index()].load(Ordering::Relaxed)
        })
    }

    /// Tells the store up to which sequence number the delivery worker holds entries.
    pub(crate) fn set_window_end(&self, webhook: WebhookId, seq: u64) {
        if let Some(q) = self.shared.queue(webhook) {
            q.stats.window_end.store(seq, Ordering::Relaxed);
        }
    }

    /// Entries at or below this sequence number were dropped as oldest (see `QueueStats`).
    pub(crate) fn dropped_through(&self, webhook: WebhookId) -> u64 {
        self.stat(webhook, |s| s.dropped_through.load(Ordering::Relaxed))
    }

    /// Events dropped because their webhook was removed before their commit (routed before
    /// the removal, committed after it), since start: no queue's figures count them.
    pub(crate) fn dropped_unregistered(&self) -> u64 {
        self.shared
            .health
            .dropped_unregistered
            .load(Ordering::Relaxed)
    }

    /// Counts events the worker dropped itself (expired before sending).
    pub(crate) fn count_dropped(&self, webhook: WebhookId, reason: DropReason, n: u64) {
        if let Some(q) = self.shared.queue(webhook) {
            q.stats.dropped[reason.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    fn stat(&self, webhook: WebhookId, f: impl Fn(&QueueStats) -> u64) -> u64 {
        self.shared.queue(webhook).map(|q| f(&q.stats)).unwrap_or(0)
    }

    /// Dead letters held for a webhook.
    pub(crate) fn dead_count(&self, webhook: WebhookId) -> u64 {
        self.shared
            .queue(webhook)
            .map(|q| q.stats.dead.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Up to `limit` entries of a webhook's queue with a sequence number above `after`; an
    /// entry that does not decode is reported apart (one bad entry must not stop a queue).
    /// Blocking: call from a blocking context.
    pub fn read_after(
        &self,
        webhook: WebhookId,
        after: u64,
        limit: usize,
    ) -> Result<Window, StoreError> {
        let read = self.db.get()?.begin_read().map_err(redb::Error::from)?;
        let q = read.open_table(QUEUE).map_err(redb::Error::from)?;
        let mut out = Window::default();
        for item in q
            .range((webhook.0, after.saturating_add(1))..=(webhook.0, u64::MAX))
            .map_err(redb::Error::from)?
            .take(limit)
        {
            let (k, v) = item.map_err(redb::Error::from)?;
            let (_, seq) = k.value();
            match Event::decode(v.value()) {
                Ok(event) => out.entries.push(Entry { seq, event }),
                Err(e) => out.undecodable.push((seq, e.to_string())),
            }
        }
        Ok(out)
    }

    /// Applies a change to the set of queues: all its steps commit together or none does
    /// (a refused step, a full disk), and the queues in memory follow only a commit.
    /// Refused at once while the writer reopens the database after an I/O error (a full
    /// disk): an edit must not wait for the disk.
    /// A compaction in progress is waited out (asynchronously: the change queues behind it).
    pub(crate) async fn change(
        &self,
        steps: change::Change,
    ) -> Result<Vec<change::Done>, StoreError> {
        if let Err(StoreError::Reopening) = self.db.get() {
            return Err(StoreError::Reopening);
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Change { steps, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Commit(e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    async fn one(&self, step: change::Step) -> Result<change::Done, StoreError> {
        let mut done = self.change(vec![step]).await?;
        done.pop()
            .ok_or_else(|| StoreError::Commit("the change answered nothing".into()))
    }

    /// Opens the queue of a webhook (creating it for a new name) with an overflow policy
    /// (the supervisor does it in a change with its other steps).
    #[cfg(test)]
    pub(crate) async fn register(
        &self,
        name: &str,
        overflow: Overflow,
    ) -> Result<WebhookId, StoreError> {
        let step = change::Step::Register {
            name: name.to_string(),
            overflow,
        };
        match self.one(step).await? {
            change::Done::Registered(id) => Ok(id),
            other => Err(StoreError::Commit(format!("unexpected answer {other:?}"))),
        }
    }

    /// Deletes a webhook's queue and dead letters; returns how many queued events were
    /// discarded. Stop its delivery worker first.
    pub(crate) async fn purge(&self, name: &str) -> Result<u64, StoreError> {
        let step = change::Step::Purge {
            name: name.to_string(),
        };
        match self.one(step).await? {
            change::Done::Purged(n) => Ok(n),
            other => Err(StoreError::Commit(format!("unexpected answer {other:?}"))),
        }
    }

    /// The kept (orphaned) queues: name, since when (unix ms), and the URL their events
    /// were routed for. Blocking.
    pub(crate) fn orphans(&self) -> Result<Vec<change::Kept>, StoreError> {
        let db = self.db.get()?;
        Ok(change::kept(&db)?)
    }

    /// Takes `webhook`'s queue for one delivery loop, which holds the claim for as long as
    /// it runs; `None` (and counted) while another loop holds it: one loop per queue.
    pub(crate) fn claim(&self, webhook: WebhookId) -> Option<change::Claim> {
        change::Claims::take(&self.shared, webhook)
    }

    /// The queues held by a delivery loop now, in id order.
    pub(crate) fn claimed(&self) -> Vec<WebhookId> {
        self.shared.claims.held()
    }

    /// Second delivery loops refused since start (each one a bug; 0 expected).
    pub(crate) fn claims_refused(&self) -> u64 {
        self.shared.claims.refused()
    }

    /// Tests: the next `n` commits of a group that moves dead letters fail (nothing of the
    /// group is stored), as on a full disk.
    #[cfg(test)]
    pub(crate) fn fail_dead_letter_commits(&self, n: u32) {
        self.shared.fail_dead_letters.store(n, Ordering::SeqCst);
    }

    /// Tests: after the next commit the writer compacts the database, holding it to itself
    /// `ms` milliseconds longer than the compaction takes (a slow SD card).
    #[cfg(test)]
    pub(crate) fn compact_slowly_after_next_commit(&self, ms: u64) {
        self.shared.slow_compaction_ms.store(ms, Ordering::SeqCst);
    }

    /// Whether a compaction holds the database now (readers are answered
    /// [`StoreError::Busy`] meanwhile).
    #[cfg(test)]
    pub(crate) fn compacting(&self) -> bool {
        self.db.busy()
    }

    /// Whether the writer thread still runs.
    pub(crate) fn writer_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The writer's liveness mark: busy while it applies a group, resting while it waits
    /// for work (or for a full disk to take writes again).
    pub(crate) fn pulse(&self) -> crate::pulse::Pulse {
        self.shared.pulse.clone()
    }

    /// The byte budget (`max_store_bytes`).
    pub(crate) fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    /// Whether commits succeed (for /readyz, metrics and `roomhook status`).
    pub(crate) fn health(&self) -> StoreHealth {
        let h = &self.shared.health;
        let last = h.last_error.lock().ok().and_then(|g| g.clone());
        // A full disk lets some small commits through between failures: the store counts
        // as healthy only when no commit failed for a while.
        let recent = last.as_ref().is_some_and(|(_, at)| {
            crate::timefmt::now_ms() - at < HEALTHY_AFTER.as_millis() as i64
        });
        StoreHealth {
            ok: !h.failing.load(Ordering::Relaxed) && !recent,
            errors: h.errors.load(Ordering::Relaxed),
            last_error_at: last.as_ref().map(|(_, at)| crate::timefmt::rfc3339_ms(*at)),
            last_error: last.map(|(e, _)| e),
        }
    }

    /// Group commits attempted since start, and the seconds they took together.
    pub fn commits(&self) -> (u64, f64) {
        let h = &self.shared.health;
        (
            h.commits.load(Ordering::Relaxed),
            h.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    /// Records every group commit's duration in `h` from now on.
    pub(crate) fn observe_commits(&self, h: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.shared.commit_duration.set(h);
    }

    /// Event time (unix ms) of the oldest queued entry of a webhook. Blocking, one lookup.
    /// While a compaction holds the database, the last one read (no wait).
    pub(crate) fn oldest_ts(&self, webhook: WebhookId) -> Option<i64> {
        let queue = self.shared.queue(webhook);
        let seen = queue.as_ref().map(|q| &q.stats.oldest_seen);
        let db = match self.db.get() {
            Ok(db) => db,
            Err(StoreError::Busy) => {
                let t = seen?.load(Ordering::Relaxed);
                return (t != 0).then(|| t - 1);
            }
            Err(_) => return None,
        };
        let read = || {
            let read = db.begin_read().ok()?;
            let q = read.open_table(QUEUE).ok()?;
            let mut range = q.range((webhook.0, 0)..=(webhook.0, u64::MAX)).ok()?;
            let (_, v) = range.next()?.ok()?;
            Event::decode(v.value()).ok().map(|e| e.ts_ms)
        };
        let ts = read();
        if let Some(s) = seen {
            s.store(ts.map_or(0, |t| t.saturating_add(1)), Ordering::Relaxed);
        }
        ts
    }

    /// Changes what gives way in a webhook's queue when the store is full.
    pub(crate) fn set_overflow(&self, webhook: WebhookId, overflow: Overflow) {
        if let Some(q) = self.shared.queue(webhook) {
            q.set_overflow(overflow);
        }
    }

    /// Every webhook name the store holds a queue for. Blocking.
    pub(crate) fn names(&self) -> Result<Vec<(String, WebhookId)>, StoreError> {
        let read = self.db.get()?.begin_read().map_err(redb::Error::from)?;
        let t = read.open_table(WEBHOOKS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(redb::Error::from)? {
            let (k, v) = item.map_err(redb::Error::from)?;
            out.push((k.value().to_string(), WebhookId(v.value())));
        }
        Ok(out)
    }

    /// The last committed sequence number of a webhook's queue; changes on every commit.
    pub(crate) fn watch(&self, webhook: WebhookId) -> Option<watch::Receiver<u64>> {
        self.shared.queue(webhook).map(|q| q.committed.subscribe())
    }

    /// Changes whenever a commit freed room in the store (delivered, dropped or moved
    /// entries): what input held by a full store waits for.
    pub(crate) fn room_freed(&self) -> watch::Receiver<u64> {
        self.shared.room.subscribe()
    }

    /// Entries queued for a webhook.
    pub(crate) fn depth(&self, webhook: WebhookId) -> u64 {
        self.shared
            .queue(webhook)
            .map(|q| q.stats.depth.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The daemon is stopping: a writer that is reopening the database after an I/O error
    /// gives up (nothing can be committed then; unacknowledged input stays with its
    /// sender) instead of holding the shutdown up.
    pub(crate) fn stopping(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
    }

    /// Commits everything sent so far, stops the writer and waits for it. Later calls on
    /// any handle fail with [`StoreError::Closed`]. Call after sources and workers stopped.
    pub async fn close(self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Op::Close).await;
        let finished = self.shared.finished.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = finished {
            let _ = f.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> Vec<u8> {
        Event {
            device: "d".into(),
            workspace: None,
            path: "RoomAnalytics.PeopleCount.Current".into(),
            kind: crate::catalog::Kind::Status,
            value: n.into(),
            ts_ms: 0,
            full_sync: false,
            more: Vec::new(),
        }
        .encode()
    }

    /// A store in `dir` with one queue, "a", and a budget that never binds.
    fn one_queue(dir: &Path) -> (Store, WebhookId) {
        let limits = Limits {
            max_bytes: 1 << 30,
            queues: vec![("a".into(), Overflow::DropOldest)],
        };
        let (store, ids) = Store::open(dir, &limits).unwrap();
        (store, ids[0])
    }

    fn commits(store: &Store) -> u64 {
        store.shared.health.commits.load(Ordering::Relaxed)
    }

    fn seqs(store: &Store, w: WebhookId) -> Vec<u64> {
        let window = store.read_after(w, 0, 1000).unwrap();
        window.entries.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn a_removal_between_appends_rides_on_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        store.append(vec![(a, event(1))]).await.unwrap();
        let before = commits(&store);
        let first = seqs(&store, a);
        // Delivered: removed while the writer waits for the next event (room pace).
        let woke = store.shared.health.wakes.load(Ordering::Relaxed);
        let removed = store.remove(a, first.clone()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        store.append(vec![(a, event(2))]).await.unwrap();
        // Committed with the append, in the same write: not a commit of its own, and the
        // writer was not woken for it (only for the append).
        tokio::time::timeout(std::time::Duration::from_millis(100), removed)
            .await
            .expect("the removal was committed with the append")
            .unwrap();
        assert_eq!(commits(&store) - before, 1);
        assert_eq!(store.shared.health.wakes.load(Ordering::Relaxed) - woke, 1);
        assert_eq!(store.depth(a), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_removal_alone_is_committed_within_the_lazy_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        store
            .append(vec![(a, event(1)), (a, event(2))])
            .await
            .unwrap();
        let all = seqs(&store, a);
        // Right after the commit (the writer expects removals) and long after it (the
        // writer sleeps without a deadline and must be woken): both are written within
        // LAZY_WAIT, in one commit each.
        for (i, pause) in [0u64, 1500].into_iter().enumerate() {
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            let before = commits(&store);
            let started = std::time::Instant::now();
            let removed = store.remove(a, vec![all[i]]).await.unwrap();
            tokio::time::timeout(LAZY_WAIT * 3, removed)
                .await
                .expect("the removal was committed within the lazy wait")
                .unwrap();
            assert!(started.elapsed() <= LAZY_WAIT + std::time::Duration::from_millis(500));
            assert_eq!(commits(&store) - before, 1);
        }
        assert_eq!(store.depth(a), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn a_removal_after_the_writer_stopped_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        store.append(vec![(a, event(1))]).await.unwrap();
        let all = seqs(&store, a);
        store.clone().close().await;
        let removed = store.remove(a, all).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), removed)
            .await
            .expect("answered, not left waiting");
        assert!(answer.is_err(), "{answer:?}");
    }

    #[tokio::test]
    async fn many_removals_are_committed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        let n = LAZY_REMOVALS as i64 + 8;
        store
            .append((0..n).map(|i| (a, event(i))).collect())
            .await
            .unwrap();
        // Right after a commit the writer sleeps until its deadline: only the number of
        // removals gathered wakes it early.
        let all = seqs(&store, a);
        let before = commits(&store);
        let started = std::time::Instant::now();
        let mut pending = Vec::new();
        for s in &all[..LAZY_REMOVALS] {
            pending.push(store.remove(a, vec![*s]).await.unwrap());
        }
        for p in pending {
            p.await.unwrap();
        }
        assert!(
            started.elapsed() < LAZY_WAIT / 2,
            "{:?}: enough removals wake the writer",
            started.elapsed()
        );
        assert_eq!(commits(&store) - before, 1);
        assert_eq!(store.depth(a), 8);
        store.close().await;
    }

    #[tokio::test]
    async fn queues_come_go_and_keep_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 0,
            queues: vec![("a".into(), Overflow::DropOldest)],
        };
        let (store, ids) = Store::open(dir.path(), &limits).unwrap();
        let a = ids[0];
        let b = store.register("b", Overflow::Block).await.unwrap();
        assert_ne!(a, b);
        store
            .append(vec![(a, event(1)), (b, event(2)), (b, event(3))])
            .await
            .unwrap();
        assert_eq!(store.depth(b), 2);
        let rename = |from: &str, to: &str| {
            vec![change::Step::Rename {
                from: from.into(),
                to: to.into(),
            }]
        };
        store.change(rename("b", "c")).await.unwrap();
        assert!(store.change(rename("a", "c")).await.is_err());
        assert_eq!(store.register("c", Overflow::Block).await.unwrap(), b);
        assert_eq!(store.depth(b), 2);
        assert_eq!(store.purge("c").await.unwrap(), 2);
        assert_eq!(store.depth(b), 0);
        assert!(store.watch(b).is_none());
        // A new name never gets a purged id back.
        let d = store.register("d", Overflow::DropOldest).await.unwrap();
        assert!(d > b);
        let mut names = store.names().unwrap();
        names.sort();
        assert_eq!(names, vec![("a".to_string(), a), ("d".to_string(), d)]);
        assert_eq!(store.depth(a), 1);
        store.close().await;
    }

    /// One runtime thread (`threads = 1`, the default), as in the daemon: a reader that
    /// waited for a compaction would stop everything else on it (pings, the watchdog).
    #[tokio::test(flavor = "current_thread")]
    async fn readers_are_answered_at_once_while_a_slow_compaction_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        store.append(vec![(a, event(1))]).await.unwrap();
        assert_eq!(store.oldest_ts(a), Some(0), "read once, remembered");
        store.compact_slowly_after_next_commit(3_000);
        store.append(vec![(a, event(2))]).await.unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !store.compacting() {
            assert!(std::time::Instant::now() < until, "no compaction started");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let quick = std::time::Duration::from_millis(300);
        let t = std::time::Instant::now();
        assert!(matches!(store.read_after(a, 0, 10), Err(StoreError::Busy)));
        assert!(matches!(store.dead_letters(a, 10), Err(StoreError::Busy)));
        assert!(matches!(store.names(), Err(StoreError::Busy)));
        assert_eq!(store.oldest_ts(a), Some(0), "the last age read, not a wait");
        assert!(t.elapsed() < quick, "readers waited {:?}", t.elapsed());
        assert!(
            store.compacting(),
            "the readers did not overlap the compaction"
        );
        // An edit queues behind the compaction without holding the thread, and commits.
        let b = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            store.register("b", Overflow::DropOldest),
        )
        .await
        .expect("the edit committed once the compaction ended")
        .unwrap();
        assert!(!store.compacting());
        assert_eq!(seqs(&store, a), vec![1, 2]);
        assert_eq!(store.depth(b), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn an_append_committed_after_its_webhook_was_purged_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        let b = store.register("b", Overflow::DropOldest).await.unwrap();
        // Routed to "b" before it was removed, queued in the writer behind the purge.
        assert_eq!(store.purge("b").await.unwrap(), 0);
        store
            .append(vec![(a, event(1)), (b, event(2)), (b, event(3))])
            .await
            .unwrap();
        let stray = store.read_after(b, 0, 10).unwrap().entries.len();
        assert_eq!(stray, 0, "entries were written under the purged id {}", b.0);
        assert_eq!(store.dropped_unregistered(), 2);
        assert_eq!(store.depth(a), 1, "the rest of the group is stored");
        assert_eq!(seqs(&store, a), vec![1]);
        store.close().await;
    }

    #[tokio::test]
    async fn a_change_commits_all_its_steps_or_none() {
        use change::{Done, Step};
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 0,
            queues: vec![
                ("a".into(), Overflow::DropOldest),
                ("kept".into(), Overflow::DropOldest),
            ],
        };
        let (store, ids) = Store::open(dir.path(), &limits).unwrap();
        let (a, kept) = (ids[0], ids[1]);
        store
            .append(vec![(a, event(1)), (kept, event(2))])
            .await
            .unwrap();
        let done = store
            .change(vec![Step::Release {
                name: "kept".into(),
                url: Some("https://r.example/hook".into()),
                at_ms: 7,
            }])
            .await
            .unwrap();
        assert_eq!(done, vec![Done::Orphaned(7)]);
        // A new queue, then a rename onto the kept one: refused, and the new queue with it.
        let refused = store
            .change(vec![
                Step::Register {
                    name: "new".into(),
                    overflow: Overflow::Block,
                },
                Step::Rename {
                    from: "a".into(),
                    to: "kept".into(),
                },
            ])
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("a kept queue named \"kept\""), "{refused}");
        let mut names: Vec<String> = store.names().unwrap().into_iter().map(|n| n.0).collect();
        names.sort();
        assert_eq!(names, ["a", "kept"], "the refused change left no trace");
        assert_eq!(store.depth(a), 1);
        let kept_now = store.orphans().unwrap();
        assert_eq!(kept_now.len(), 1);
        assert_eq!(kept_now[0].url.as_deref(), Some("https://r.example/hook"));
        // An empty queue that is released goes at once; a full one is kept.
        let e = store.register("empty", Overflow::DropOldest).await.unwrap();
        let done = store
            .change(vec![Step::Release {
                name: "empty".into(),
                url: None,
                at_ms: 8,
            }])
            .await
            .unwrap();
        assert_eq!(done, vec![Done::Purged(0)]);
        assert!(store.watch(e).is_none());
        // Taking a kept queue back clears its mark and its url.
        let done = store
            .change(vec![
                Step::Register {
                    name: "kept".into(),
                    overflow: Overflow::DropOldest,
                },
                Step::Unorphan {
                    name: "kept".into(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(done, vec![Done::Registered(kept), Done::Unorphaned(true)]);
        assert!(store.orphans().unwrap().is_empty());
        assert_eq!(store.depth(kept), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_queue_has_one_delivery_loop_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        let first = store.claim(a).expect("the first loop takes the queue");
        assert!(store.claim(a).is_none(), "a second loop is refused");
        assert_eq!(store.claims_refused(), 1);
        assert_eq!(store.claimed(), vec![a]);
        drop(first);
        assert!(store.claimed().is_empty());
        let again = store
            .claim(a)
            .expect("free again once the first loop ended");
        assert_eq!(again.queue(), a);
        store.close().await;
    }

    #[tokio::test]
    async fn the_file_shrinks_after_a_drain_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        let padded = |n: i64| {
            let mut e = Event::decode(&event(n)).unwrap();
            e.device = format!("{n:0>400}");
            e.encode()
        };
        const N: u64 = 40_000;
        for chunk in 0..N / 1000 {
            let base = (chunk * 1000) as i64;
            store
                .append((0..1000).map(|i| (a, padded(base + i))).collect())
                .await
                .unwrap();
        }
        let size = || std::fs::metadata(store.path()).unwrap().len();
        let full = size();
        assert!(full > 16 << 20, "{full}");
        let seqs: Vec<u64> = (1..=N).collect();
        for part in seqs.chunks(1000) {
            store.remove(a, part.to_vec()).await.unwrap().await.unwrap();
        }
        assert_eq!(store.depth(a), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while size() > full / 4 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(size() <= full / 4, "{} of {full} bytes", size());
        // Still a working store.
        store.append(vec![(a, event(1))]).await.unwrap();
        assert_eq!(store.read_after(a, 0, 10).unwrap().entries.len(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn dead_letters_past_the_cap_are_counted_as_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = one_queue(dir.path());
        let n = MAX_DEAD_LETTERS + 5;
        store
            .append((0..n).map(|i| (a, event(i as i64))).collect())
            .await
            .unwrap();
        let letters: Vec<(u64, DeadLetter)> = (1..=n)
            .map(|seq| {
                (
                    seq,
                    DeadLetter {
                        event: Event::decode(&event(seq as i64)).unwrap(),
                        status: Some(422),
                        reason: "no".into(),
                        at_ms: 0,
                    },
                )
            })
            .collect();
        store.dead_letter(a, &letters).await.unwrap().await.unwrap();
        assert_eq!(store.dead_count(a), MAX_DEAD_LETTERS);
        assert_eq!(store.dropped(a, DropReason::DeadLetterEvicted), 5);
        store.close().await;
    }
}
