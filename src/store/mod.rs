//! The durable per-webhook FIFO queues on redb, with a write-ahead log in front. One writer
//! thread group-commits appends and removals (many events per transaction, one log record
//! each); readers take ordered windows of a queue; every commit wakes the delivery workers
//! of the webhooks it touched.

pub mod change;
mod redo;
pub mod salvage;
pub mod wal;
mod writer;

pub use writer::{LAZY_REMOVALS, LAZY_REMOVALS_GROUPED, LAZY_WAIT};

use crate::event::Event;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Queue entries: (webhook id, sequence number) → encoded [`Event`].
pub(crate) const QUEUE: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("queue");
/// Dead letters: (webhook id, sequence number) → encoded [`DeadLetter`].
pub(crate) const DEAD: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("dead_letters");
/// Most dead letters kept per webhook; past it the oldest go.
pub const MAX_DEAD_LETTERS: u64 = 10_000;
/// Next sequence number per webhook (never reused, so `webhook-id`s stay unique).
pub(crate) const NEXT_SEQ: TableDefinition<u32, u64> = TableDefinition::new("next_seq");
/// MQTT redelivery guard: (source name, packet id) → digest of the last message committed
/// with that packet id, written in the same transaction as its events.
pub(crate) const MQTT_SEEN: TableDefinition<(&str, u16), u64> = TableDefinition::new("mqtt_seen");
/// Webhook name → id.
pub(crate) const WEBHOOKS: TableDefinition<&str, u32> = TableDefinition::new("webhooks");
/// Queues no configured webhook names any more (orphans): name → since when (unix ms).
pub(crate) const ORPHANS: TableDefinition<&str, i64> = TableDefinition::new("orphans");
/// Store-wide values (`store_id`, [`WAL_GEN`]).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The write-ahead log generation whose records are not yet in redb's durable state.
pub(crate) const WAL_GEN: &str = "wal_gen";

/// The store file inside `data_dir`.
pub const FILE_NAME: &str = "roomhook.redb";

pub use crate::value::overflow::Overflow;

/// How the store is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Budget for all queued entries, in bytes (keys, values and per-entry overhead).
    pub max_bytes: u64,
    /// Each webhook's name and overflow policy.
    pub queues: Vec<(String, Overflow)>,
}

/// Bytes an entry is charged beyond its value (key and B-tree overhead, estimated).
pub const ENTRY_OVERHEAD: u64 = 32;

/// Why events were dropped (the `reason` label of `roomhook_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The store was full: oldest first.
    Overflow,
    /// The store was full: a newer value of the same status superseded it.
    Coalesced,
    /// Older than the webhook's `max_queue_age`.
    Expired,
    /// A dead letter pushed out by newer ones past [`MAX_DEAD_LETTERS`].
    DeadLetterEvicted,
    /// A queued entry that does not decode (a damaged store): skipped so the queue goes on.
    Undecodable,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 5] = [
        DropReason::Overflow,
        DropReason::Coalesced,
        DropReason::Expired,
        DropReason::DeadLetterEvicted,
        DropReason::Undecodable,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Coalesced => "coalesced",
            DropReason::Expired => "expired",
            DropReason::DeadLetterEvicted => "dead_letter_evicted",
            DropReason::Undecodable => "undecodable",
        }
    }

    /// What it means, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::Overflow => "store full (max_store_bytes), oldest first",
            DropReason::Coalesced => "store full, superseded status values",
            DropReason::Expired => "older than max_queue_age",
            DropReason::DeadLetterEvicted => "dead letters past the 10,000 kept, oldest first",
            DropReason::Undecodable => "entries that do not decode",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Stable number of a webhook inside the store (survives restarts; names map to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebhookId(pub u32);

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error.
    #[error("store: {0}")]
    Redb(#[from] redb::Error),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The write-ahead log could not be made, read or written.
    #[error("the store's write-ahead log {path}: {source}")]
    Wal {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store is held by another process.
    #[error("the store {0} is already open in another roomhook process (one daemon per data_dir)")]
    Locked(PathBuf),
    /// The store file could not be opened.
    #[error("cannot open the store {path}: {source}. If the file is damaged, `roomhook store check -c <config>` tells what is readable and `roomhook store salvage -c <config>` copies it into a fresh store (the damaged file is kept aside)")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: redb::Error,
    },
    /// The store reached `max_store_bytes` and the largest queue's policy is `block`.
    #[error("the store is full (max_store_bytes) and the overflow policy is block: input waits")]
    Full,
    /// A group commit failed (disk full, I/O error); nothing of it was stored.
    #[error("store commit failed: {0}")]
    Commit(String),
    /// The writer thread is gone (the store was closed).
    #[error("the store is closed")]
    Closed,
    /// An MQTT redelivery (DUP) of a message committed before: nothing was stored; ack it.
    #[error("already committed (a broker redelivery)")]
    Redelivered,
    /// The store is being opened again after an I/O error; try again shortly.
    #[error("the store is being reopened after an I/O error")]
    Reopening,
    /// A committed entry could not be decoded.
    #[error("store entry {webhook}/{seq} is not a valid event: {reason}")]
    Corrupt {
        /// Webhook id.
        webhook: u32,
        /// Sequence number.
        seq: u64,
        /// Why it does not decode.
        reason: String,
    },
}

/// A window of a queue as read back: the entries, and those that do not decode.
#[derive(Debug, Default)]
pub struct Window {
    /// Decoded entries, in sequence order.
    pub entries: Vec<Entry>,
    /// Entries that do not decode: sequence number and why.
    pub undecodable: Vec<(u64, String)>,
}

/// One queued entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its sequence number in the webhook's queue.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

/// Per-webhook figures the writer keeps current.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Entries in the queue.
    pub depth: AtomicU64,
    /// Entries in the dead-letter queue.
    pub dead: AtomicU64,
    /// Bytes charged for the queued entries.
    pub bytes: AtomicU64,
    /// Highest sequence number the delivery worker holds in memory. `coalesce` leaves
    /// these entries alone; `drop_oldest` drops the oldest whatever the worker holds (that is
    /// what oldest means) and publishes [`QueueStats::dropped_through`], so that the worker
    /// does not send what was dropped.
    pub window_end: AtomicU64,
    /// Events dropped, by [`DropReason`].
    pub dropped: [AtomicU64; 5],
    /// Every entry at or below this sequence number that is still unsent was dropped as
    /// oldest; the worker skips such entries it already holds.
    pub dropped_through: AtomicU64,
}

/// A message the receiver refused for good, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// The event.
    pub event: Event,
    /// The receiver's HTTP status.
    pub status: Option<u16>,
    /// The receiver's answer (status line and the first bytes of the body).
    pub reason: String,
    /// When it was dead-lettered, unix milliseconds.
    pub at_ms: i64,
}

/// Marks an appended group as the content of one MQTT message, so that a redelivery of it
/// (same packet id, same digest, DUP flag set) after a crash can be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Source name.
    pub source: String,
    /// MQTT packet id.
    pub pkid: u16,
    /// Digest of topic and payload.
    pub digest: u64,
    /// A retry of a message the store refused: it may lift the source's refusal.
    pub resume: bool,
    /// The broker set DUP: if this packet id's mark holds the same digest, the message was
    /// committed before and its PUBACK never written: nothing is stored again.
    pub dup: bool,
}

pub(crate) enum Op {
    Append {
        items: Vec<(WebhookId, Vec<u8>)>,
        mark: Option<Mark>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Remove {
        webhook: WebhookId,
        seqs: Vec<u64>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The PUBACKs of these packet ids were written: their marks go (with the next commit,
    /// never in a commit of their own).
    ClearMarks { source: String, pkids: Vec<u16> },
    /// Move entries from the queue to the dead letters.
    DeadLetter {
        webhook: WebhookId,
        items: Vec<(u64, Vec<u8>)>,
    },
    /// Move dead letters (at or after `since_ms`) back into the queue as new entries.
    Replay {
        webhook: WebhookId,
        since_ms: i64,
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// Change the set of queues: every step commits together, or none does.
    Change {
        steps: change::Change,
        done: oneshot::Sender<Result<Vec<change::Done>, String>>,
    },
    /// Commit what came before, then stop.
    Close,
}

impl Op {
    /// Changes the set of queues: runs alone, in its own transaction.
    pub(crate) fn is_manage(&self) -> bool {
        matches!(self, Op::Change { .. })
    }
}

/// Page cache of the database.
pub(crate) const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The open database, shared by the writer and the readers; empty while the writer opens
/// it again after an I/O error (readers then get [`StoreError::Reopening`]).
pub(crate) struct DbCell(std::sync::RwLock<Option<Arc<Database>>>);

impl DbCell {
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    pub(crate) fn set(&self, db: Arc<Database>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
    }

    pub(crate) fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `f` with the database to itself: readers arriving meanwhile wait, readers
    /// already reading get until `patience` to finish (else `f` does not run). `own` is the
    /// caller's handle, given up for it; the returned handle replaces it.
    pub(crate) fn exclusive<T>(
        &self,
        own: Arc<Database>,
        patience: std::time::Duration,
        f: impl FnOnce(&mut Database) -> T,
    ) -> (Arc<Database>, Option<T>) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let Some(shared) = guard.take() else {
            return (own, None);
        };
        drop(own);
        match sole(shared, patience) {
            Ok(mut alone) => {
                let r = f(&mut alone);
                let back = Arc::new(alone);
                *guard = Some(back.clone());
                (back, Some(r))
            }
            Err(still) => {
                *guard = Some(still.clone());
                (still, None)
            }
        }
    }
}

/// The database itself, once every other handle is gone (readers finish within
/// `patience`); the handle back if they do not.
pub(crate) fn sole(
    mut db: Arc<Database>,
    patience: std::time::Duration,
) -> Result<Database, Arc<Database>> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match Arc::try_unwrap(db) {
            Ok(alone) => return Ok(alone),
            Err(still) if std::time::Instant::now() < deadline => {
                db = still;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(still) => return Err(still),
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DbCell>,
    tx: mpsc::Sender<Op>,
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) store_id: u64,
    pub(crate) max_bytes: u64,
    pub(crate) path: PathBuf,
    /// The open queues; replaced as a whole (copy on write) when webhooks come and go.
    pub(crate) queues: std::sync::RwLock<Arc<HashMap<WebhookId, Arc<Queue>>>>,
    pub(crate) finished: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    pub(crate) health: Health,
    /// Set by `close`: a writer that is reopening the database gives up.
    pub(crate) closing: std::sync::atomic::AtomicBool,
    /// `[gateway] commit_interval` in nanoseconds: a group gathers ops this long after its
    /// first one before it is committed (0: commit as soon as the writer is free).
    pub(crate) commit_interval_ns: AtomicU64,
    /// Observes every group commit's duration, once the metrics are attached.
    pub(crate) commit_duration:
        std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
    /// The writer's liveness mark (for the systemd watchdog).
    pub(crate) pulse: crate::pulse::Pulse,
    /// Removals of delivered entries waiting for the writer's next group. They do not wake
    /// it: at a room's pace they ride on the next append's write. Only a writer asleep
    /// without a deadline ([`Shared::writer_idle`]), or enough of them gathered, is woken.
    pub(crate) removals: std::sync::Mutex<Removals>,
    /// Set by the writer while it sleeps with no removal waiting (and so no deadline).
    pub(crate) writer_idle: std::sync::atomic::AtomicBool,
    /// The delivery loop reading each queue (one at most).
    pub(crate) claims: change::Claims,
}

/// See [`Shared::removals`].
#[derive(Default)]
pub(crate) struct Removals {
    /// `Op::Remove`s not yet taken by the writer, in the order they came.
    pub(crate) ops: Vec<Op>,
    /// Entries removed but not yet written: those waiting here and those the writer took
    /// and holds for a group.
    pub(crate) entries: usize,
}

/// Whether commits succeed, kept by the writer.
#[derive(Default)]
pub(crate) struct Health {
    /// Commits that failed, since start.
    pub(crate) errors: AtomicU64,
    /// Group commits attempted, since start.
    pub(crate) commits: AtomicU64,
    /// Times the writer woke (an op, or a deadline), since start.
    pub(crate) wakes: AtomicU64,
    /// Time spent in them, nanoseconds.
    pub(crate) commit_nanos: AtomicU64,
    /// Set by a failed commit, cleared by the next good one.
    pub(crate) failing: std::sync::atomic::AtomicBool,
    /// The last failure and when (unix ms).
    pub(crate) last_error: std::sync::Mutex<Option<(String, i64)>>,
}

/// How long after its last failed commit the store counts as healthy again.
pub const HEALTHY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What the store says about its own health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreHealth {
    /// No commit failed in the last [`HEALTHY_AFTER`].
    pub ok: bool,
    /// Commits that failed since start.
    pub errors: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub last_error_at: Option<String>,
}

pub(crate) struct Queue {
    overflow: std::sync::atomic::AtomicU8,
    pub(crate) stats: QueueStats,
    pub(crate) committed: watch::Sender<u64>,
}

impl Shared {
    /// Takes the removals waiting for the writer.
    pub(crate) fn take_removals(&self) -> Vec<Op> {
        let mut r = self.removals.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut r.ops)
    }

    /// `n` removed entries were written (or answered): they no longer count towards the
    /// number that wakes the writer.
    pub(crate) fn removals_written(&self, n: usize) {
        let mut r = self.removals.lock().unwrap_or_else(|p| p.into_inner());
        r.entries = r.entries.saturating_sub(n);
    }

    /// Removed entries not yet written (waiting here, or held by the writer).
    pub(crate) fn removals_waiting(&self) -> usize {
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
    }

    /// Answers (closed) every removal left waiting: the writer is gone.
    pub(crate) fn answer_removals(&self) {
        let mut r = self.removals.lock().unwrap_or_else(|p| p.into_inner());
        r.entries = 0;
        r.ops.clear();
    }

    /// The queues as of now.
    pub(crate) fn queues(&self) -> Arc<HashMap<WebhookId, Arc<Queue>>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes charged for all queues.
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queues()
            .values()
            .map(|q| q.stats.bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// See [`Store::lazy_removals`].
    pub(crate) fn lazy_removals(&self) -> usize {
        if self.commit_interval_ns.load(Ordering::Relaxed) > 0 {
            LAZY_REMOVALS_GROUPED
        } else {
            LAZY_REMOVALS
        }
    }

    /// One queue.
    pub(crate) fn queue(&self, w: WebhookId) -> Option<Arc<Queue>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&w)
            .cloned()
    }

    /// Changes the set of queues (writer thread only, between commits).
    pub(crate) fn update_queues(&self, f: impl FnOnce(&mut HashMap<WebhookId, Arc<Queue>>)) {
        let mut guard = self.queues.write().unwrap_or_else(|p| p.into_inner());
        let mut map = (**guard).clone();
        f(&mut map);
        *guard = Arc::new(map);
    }
}

impl Queue {
    pub(crate) fn new(overflow: Overflow, stats: QueueStats, last_seq: u64) -> Self {
        let (committed, _) = watch::channel(last_seq);
        Self {
            overflow: std::sync::atomic::AtomicU8::new(overflow as u8),
            stats,
            committed,
        }
    }

    pub(crate) fn set_overflow(&self, overflow: Overflow) {
        self.overflow.store(overflow as u8, Ordering::Relaxed);
    }

    pub(crate) fn overflow(&self) -> Overflow {
        match self.overflow.load(Ordering::Relaxed) {
            1 => Overflow::Coalesce,
            2 => Overflow::Block,
            _ => Overflow::DropOldest,
        }
    }
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
        let db = Arc::new(DbCell(std::sync::RwLock::new(Some(Arc::new(db)))));
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
        });
        let (tx, rx) = mpsc::channel(OP_CHANNEL);
        writer::spawn(db.clone(), shared.clone(), next, rx, wal, finished_tx);
        Ok((Store { db, tx, shared }, ids))
    }

    /// Trades a bounded delay of every commit (and so of MQTT acks) for fewer, larger
    /// durable commits: a group gathers ops for `interval` after its first one.
    pub fn set_commit_interval(&self, interval: std::time::Duration) {
        self.shared.commit_interval_ns.store(
            u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Removals of delivered entries the writer lets wait for a group with other work
    /// (more are committed on their own): [`LAZY_REMOVALS`], or [`LAZY_REMOVALS_GROUPED`]
    /// with a `commit_interval`.
    pub fn lazy_removals(&self) -> usize {
        self.shared.lazy_removals()
    }

    /// The `commit_interval` in force.
    pub fn commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.shared.commit_interval_ns.load(Ordering::Relaxed))
    }

    /// A random number fixed at store creation; part of every `webhook-id`.
    pub fn store_id(&self) -> u64 {
        self.shared.store_id
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queues encoded events; waits for room in the writer's channel (backpressure) and
    /// returns a future that resolves once they are durably committed.
    pub async fn submit(
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
    pub async fn clear_marks(&self, source: &str, pkids: Vec<u16>) {
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
    pub fn flush_marks(&self, source: &str) {
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

    /// Moves entries from a webhook's queue to its dead letters (committed with the next group).
    pub async fn dead_letter(
        &self,
        webhook: WebhookId,
        items: Vec<(u64, DeadLetter)>,
    ) -> Result<(), StoreError> {
        let items = items
            .into_iter()
            .map(|(seq, d)| (seq, serde_json::to_vec(&d).unwrap_or_default()))
            .collect();
        self.tx
            .send(Op::DeadLetter { webhook, items })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Re-enqueues a webhook's dead letters that died at or after `since_ms` (unix ms; 0 for
    /// all); returns how many. They keep their event and get new sequence numbers.
    pub async fn replay_dead_letters(
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
    pub fn dead_letters(
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
    pub fn bytes(&self, webhook: WebhookId) -> u64 {
        self.stat(webhook, |s| s.bytes.load(Ordering::Relaxed))
    }

    /// Bytes charged for all queues (what `max_store_bytes` bounds).
    pub fn total_bytes(&self) -> u64 {
        self.shared.queued_bytes()
    }

    /// Events dropped from a webhook's queue for a reason, since start.
    pub fn dropped(&self, webhook: WebhookId, reason: DropReason) -> u64 {
        self.stat(webhook, |s| {
            s.dropped[reason.index()].load(Ordering::Relaxed)
        })
    }

    /// Tells the store up to which sequence number the delivery worker holds entries.
    pub fn set_window_end(&self, webhook: WebhookId, seq: u64) {
        if let Some(q) = self.shared.queue(webhook) {
            q.stats.window_end.store(seq, Ordering::Relaxed);
        }
    }

    /// Entries at or below this sequence number were dropped as oldest (see `QueueStats`).
    pub fn dropped_through(&self, webhook: WebhookId) -> u64 {
        self.stat(webhook, |s| s.dropped_through.load(Ordering::Relaxed))
    }

    /// Counts events the worker dropped itself (expired before sending).
    pub fn count_dropped(&self, webhook: WebhookId, reason: DropReason, n: u64) {
        if let Some(q) = self.shared.queue(webhook) {
            q.stats.dropped[reason.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    fn stat(&self, webhook: WebhookId, f: impl Fn(&QueueStats) -> u64) -> u64 {
        self.shared.queue(webhook).map(|q| f(&q.stats)).unwrap_or(0)
    }

    /// Dead letters held for a webhook.
    pub fn dead_count(&self, webhook: WebhookId) -> u64 {
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
    pub async fn change(&self, steps: change::Change) -> Result<Vec<change::Done>, StoreError> {
        self.db.get()?;
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

    /// Opens the queue of a webhook (creating it for a new name) with an overflow policy.
    pub async fn register(&self, name: &str, overflow: Overflow) -> Result<WebhookId, StoreError> {
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
    pub async fn purge(&self, name: &str) -> Result<u64, StoreError> {
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
    pub fn orphans(&self) -> Result<Vec<change::Kept>, StoreError> {
        let db = self.db.get()?;
        Ok(change::kept(&db)?)
    }

    /// Takes `webhook`'s queue for one delivery loop, which holds the claim for as long as
    /// it runs; `None` (and counted) while another loop holds it: one loop per queue.
    pub fn claim(&self, webhook: WebhookId) -> Option<change::Claim> {
        change::Claims::take(&self.shared, webhook)
    }

    /// The queues held by a delivery loop now, in id order.
    pub fn claimed(&self) -> Vec<WebhookId> {
        self.shared.claims.held()
    }

    /// Second delivery loops refused since start (each one a bug; 0 expected).
    pub fn claims_refused(&self) -> u64 {
        self.shared.claims.refused()
    }

    /// Whether the writer thread still runs.
    pub fn writer_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The writer's liveness mark: busy while it applies a group, resting while it waits
    /// for work (or for a full disk to take writes again).
    pub fn pulse(&self) -> crate::pulse::Pulse {
        self.shared.pulse.clone()
    }

    /// The byte budget (`max_store_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    /// Whether commits succeed (for /readyz, metrics and `roomhook status`).
    pub fn health(&self) -> StoreHealth {
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
    pub fn observe_commits(&self, h: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.shared.commit_duration.set(h);
    }

    /// Event time (unix ms) of the oldest queued entry of a webhook. Blocking, one lookup.
    pub fn oldest_ts(&self, webhook: WebhookId) -> Option<i64> {
        let read = self.db.get().ok()?.begin_read().ok()?;
        let q = read.open_table(QUEUE).ok()?;
        let mut range = q.range((webhook.0, 0)..=(webhook.0, u64::MAX)).ok()?;
        let (_, v) = range.next()?.ok()?;
        Event::decode(v.value()).ok().map(|e| e.ts_ms)
    }

    /// Changes what gives way in a webhook's queue when the store is full.
    pub fn set_overflow(&self, webhook: WebhookId, overflow: Overflow) {
        if let Some(q) = self.shared.queue(webhook) {
            q.set_overflow(overflow);
        }
    }

    /// Every webhook name the store holds a queue for. Blocking.
    pub fn names(&self) -> Result<Vec<(String, WebhookId)>, StoreError> {
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
    pub fn watch(&self, webhook: WebhookId) -> Option<watch::Receiver<u64>> {
        self.shared.queue(webhook).map(|q| q.committed.subscribe())
    }

    /// Entries queued for a webhook.
    pub fn depth(&self, webhook: WebhookId) -> u64 {
        self.shared
            .queue(webhook)
            .map(|q| q.stats.depth.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The daemon is stopping: a writer that is reopening the database after an I/O error
    /// gives up (nothing can be committed then; unacknowledged input stays with its
    /// sender) instead of holding the shutdown up.
    pub fn stopping(&self) {
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
type Opened = (u64, Vec<WebhookId>, HashMap<WebhookId, u64>);

/// Opens the write-ahead log at the generation redb's durable state names, and returns the
/// records redb does not have yet (a crash came before their checkpoint).
fn open_wal(
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

fn init(
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
        store.dead_letter(a, letters).await.unwrap();
        // A later commit makes sure the dead-letter op was applied.
        store.append(vec![(a, event(-1))]).await.unwrap();
        assert_eq!(store.dead_count(a), MAX_DEAD_LETTERS);
        assert_eq!(store.dropped(a, DropReason::DeadLetterEvicted), 5);
        store.close().await;
    }
}
