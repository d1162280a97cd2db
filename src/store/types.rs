//! The store's value types — limits, ids, entries, figures, marks, errors, health — and
//! `Op`, what the façade asks of the writer thread.

use super::change;
use super::Overflow;
use crate::event::Event;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use tokio::sync::oneshot;

/// How the store is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Budget for all queued entries, in bytes (keys, values and per-entry overhead).
    pub max_bytes: u64,
    /// Each webhook's name and overflow policy.
    pub queues: Vec<(String, Overflow)>,
}

/// Why events were dropped (the `reason` label of `roomhook_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// The store was full: oldest first.
    Overflow,
    /// The store was full: a newer value of the same status superseded it.
    Coalesced,
    /// Older than the webhook's `max_queue_age`.
    Expired,
    /// A dead letter pushed out by newer ones past [`MAX_DEAD_LETTERS`](super::MAX_DEAD_LETTERS).
    DeadLetterEvicted,
    /// A queued entry that does not decode (a damaged store): skipped so the queue goes on.
    Undecodable,
}

impl DropReason {
    /// Every reason.
    pub(crate) const ALL: [DropReason; 5] = [
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
    pub(crate) fn describe(self) -> &'static str {
        match self {
            DropReason::Overflow => "store full (max_store_bytes), oldest first",
            DropReason::Coalesced => "store full, superseded status values",
            DropReason::Expired => "older than max_queue_age",
            DropReason::DeadLetterEvicted => "dead letters past the 10,000 kept, oldest first",
            DropReason::Undecodable => "entries that do not decode",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// The `reason` of events dropped because their webhook was removed before their commit
/// ([`Store::dropped_unregistered`](super::Store::dropped_unregistered)): the store's
/// count, in no webhook's figures (they were never counted as enqueued either).
pub(crate) const WEBHOOK_REMOVED: &str = "webhook_removed";

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
    /// The store is compacting (it holds its database to itself for a while); a read is
    /// answered at once with this rather than waiting; try again shortly.
    #[error("the store is compacting; try again shortly")]
    Busy,
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
    pub(crate) undecodable: Vec<(u64, String)>,
}

/// One queued entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its sequence number in the webhook's queue.
    pub seq: u64,
    /// The event.
    pub(crate) event: Event,
}

/// Per-webhook figures the writer keeps current.
#[derive(Debug, Default)]
pub(crate) struct QueueStats {
    /// Entries in the queue.
    pub(crate) depth: AtomicU64,
    /// Entries in the dead-letter queue.
    pub(crate) dead: AtomicU64,
    /// Bytes charged for the queued entries.
    pub(crate) bytes: AtomicU64,
    /// Highest sequence number the delivery worker holds in memory. `coalesce` leaves
    /// these entries alone; `drop_oldest` drops the oldest whatever the worker holds (that is
    /// what oldest means) and publishes [`QueueStats::dropped_through`], so that the worker
    /// does not send what was dropped.
    pub(crate) window_end: AtomicU64,
    /// Events dropped, by [`DropReason`].
    pub(crate) dropped: [AtomicU64; 5],
    /// Every entry at or below this sequence number that is still unsent was dropped as
    /// oldest; the worker skips such entries it already holds.
    pub(crate) dropped_through: AtomicU64,
    /// The oldest queued entry's event time (unix ms) as last read, plus one (0: none
    /// read yet, or the queue was empty): what a reader is told while a compaction holds
    /// the database.
    pub(crate) oldest_seen: std::sync::atomic::AtomicI64,
}

/// A message the receiver refused for good, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeadLetter {
    /// The event.
    pub(crate) event: Event,
    /// The receiver's HTTP status.
    pub(crate) status: Option<u16>,
    /// The receiver's answer (status line and the first bytes of the body).
    pub(crate) reason: String,
    /// When it was dead-lettered, unix milliseconds.
    pub(crate) at_ms: i64,
}

/// Marks an appended group as the content of one MQTT message, so that a redelivery of it
/// (same packet id, same digest, DUP flag set) after a crash can be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Source name.
    pub(crate) source: String,
    /// MQTT packet id.
    pub(crate) pkid: u16,
    /// Digest of topic and payload.
    pub(crate) digest: u64,
    /// A retry of a message the store refused: it may lift the source's refusal.
    pub(crate) resume: bool,
    /// The broker set DUP: if this packet id's mark holds the same digest, the message was
    /// committed before and its PUBACK never written: nothing is stored again.
    pub(crate) dup: bool,
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
        done: oneshot::Sender<Result<(), StoreError>>,
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

    /// How many queue entries it adds or removes (what a commit group is measured in).
    pub(crate) fn entries(&self) -> usize {
        match self {
            Op::Append { items, .. } => items.len(),
            Op::Remove { seqs, .. } => seqs.len(),
            Op::DeadLetter { items, .. } => items.len(),
            Op::Replay { .. } => 1,
            _ => 0,
        }
    }
}

/// How long after its last failed commit the store counts as healthy again.
pub(crate) const HEALTHY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What the store says about its own health.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StoreHealth {
    /// No commit failed in the last [`HEALTHY_AFTER`].
    pub(crate) ok: bool,
    /// Commits that failed since start.
    pub(crate) errors: u64,
    /// The last failure.
    pub(crate) last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub(crate) last_error_at: Option<String>,
}
