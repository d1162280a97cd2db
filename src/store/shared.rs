//! The state the façade and the writer thread share: the queues in memory and their
//! accounting, the removals waiting for a group, the commit health.

use super::change;
use super::types::{Op, QueueStats, WebhookId};
use super::writer::{LAZY_REMOVALS, LAZY_REMOVALS_GROUPED};
use super::Overflow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

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
    /// Counts the commits that freed room (removed entries): input held because the store
    /// was full (`block`) is retried when it changes, not only on its timer.
    pub(crate) room: watch::Sender<u64>,
    /// Tests: groups that move dead letters fail this many more times (as on a full disk).
    #[cfg(test)]
    pub(crate) fail_dead_letters: std::sync::atomic::AtomicU32,
    /// Tests: after the next commit the writer compacts, holding the database this many
    /// milliseconds longer (a slow disk).
    #[cfg(test)]
    pub(crate) slow_compaction_ms: std::sync::atomic::AtomicU64,
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
    /// Events appended for a webhook whose queue was gone by their commit (routed before
    /// it was removed), dropped; since start.
    pub(crate) dropped_unregistered: AtomicU64,
    /// Set by a failed commit, cleared by the next good one.
    pub(crate) failing: std::sync::atomic::AtomicBool,
    /// The last failure and when (unix ms).
    pub(crate) last_error: std::sync::Mutex<Option<(String, i64)>>,
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

    /// See [`Store::lazy_removals`](super::Store::lazy_removals).
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
