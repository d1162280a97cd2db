//! The store's single writer thread: drains whatever ops are waiting, applies them in one
//! write transaction (group commit), makes the group durable with one write-ahead log record
//! (or, for a large group, a durable redb commit that is also a checkpoint), answers the
//! appenders, and publishes the new state. Removals of delivered entries wait for a group
//! with other work (or for [`LAZY_REMOVALS`] of them, or [`LAZY_WAIT`]), so that at a room's
//! pace an event costs one durable write, not two.

use super::cell::DbCell;
use super::lazy::LazyRemovals;
use super::overflow::make_room;
use super::redo::Redo;
use super::schema::{DEAD, ENTRY_OVERHEAD, MAX_DEAD_LETTERS, MQTT_SEEN, NEXT_SEQ, QUEUE};
use super::shared::Shared;
use super::types::{DropReason, Op, StoreError, WebhookId};
use super::wal::Wal;
use crate::ratelog::RateLog;
use redb::{Database, Durability, ReadableTable};
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most events appended in one transaction.
const MAX_GROUP: usize = 8192;
/// Delivered entries whose removal waits for a group with other work at most; this many
/// are committed on their own (half the worker's `REMOVAL_SLACK`, so delivery never stalls).
pub(crate) const LAZY_REMOVALS: usize = 32;
/// The same with `[gateway] commit_interval` set (half the worker's `REMOVAL_SLACK_GROUPED`).
pub(crate) const LAZY_REMOVALS_GROUPED: usize = 128;
/// How long a removal waits for a group with other work at most.
pub(crate) const LAZY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn spawn(
    cell: Arc<DbCell>,
    shared: Arc<Shared>,
    next: HashMap<WebhookId, u64>,
    rx: mpsc::Receiver<Op>,
    wal: Wal,
    finished: oneshot::Sender<()>,
) {
    let spawned = std::thread::Builder::new()
        .name("roomhook-store".into())
        .spawn(move || {
            // Removals left unwritten are answered (closed) when the writer goes, even by a
            // panic: never left waiting.
            struct Answer<'a>(&'a Shared);
            impl Drop for Answer<'_> {
                fn drop(&mut self) {
                    self.0.answer_removals();
                }
            }
            let answer = Answer(&shared);
            if let Ok(db) = cell.get() {
                run(&cell, db, &shared, next, rx, wal);
            }
            drop(answer);
            cell.clear();
            let _ = finished.send(());
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the store writer thread: {e}");
    }
}

/// Whether redb refuses every later operation after this error (it does after an I/O
/// error, e.g. a full disk) until the database is opened again.
pub(super) fn poisoning(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// Opens the database again after an I/O error: waits for readers to let go of the old
/// handle, then retries the open with backoff (the disk may still be full) until it works
/// or the store is closing. `None`: closing.
/// What redb lost (the groups committed since the last checkpoint, which live in the
/// write-ahead log) is replayed into the reopened database, and the sequence numbers are
/// read back from it.
fn reopen(
    cell: &DbCell,
    db: Arc<Database>,
    shared: &Shared,
    wal: &mut Wal,
    next: &mut HashMap<WebhookId, u64>,
) -> Option<Arc<Database>> {
    cell.clear();
    match super::cell::sole(db, std::time::Duration::from_secs(10)) {
        Ok(d) => drop(d),
        Err(_) => {
            tracing::error!("the store is still in use by a reader; it cannot be reopened");
            return None;
        }
    }
    let mut wait = crate::backoff::Doubling::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(30),
    );
    let mut log = RateLog::new(std::time::Duration::from_secs(30));
    loop {
        if shared.closing.load(Ordering::Relaxed) {
            return None;
        }
        let opened = super::recover::quietly(|| {
            Database::builder()
                .set_cache_size(super::schema::CACHE_BYTES)
                .create(&shared.path)
        });
        match opened {
            Some(Ok(d)) => match super::recover::recover(&d, wal).and_then(|n| {
                reload_next(&d, next)?;
                Ok(n)
            }) {
                Ok(replayed) => {
                    let d = Arc::new(d);
                    cell.set(d.clone());
                    tracing::info!(
                        replayed,
                        "store reopened after the I/O error; commits resume"
                    );
                    return Some(d);
                }
                Err(e) => {
                    if let Some(suppressed) = log.check(std::time::Instant::now()) {
                        tracing::error!(
                            suppressed,
                            "cannot bring the reopened store up to date yet, retrying: {e}"
                        );
                    }
                }
            },
            Some(Err(e)) => {
                if let Some(suppressed) = log.check(std::time::Instant::now()) {
                    tracing::error!(suppressed, "cannot reopen the store yet, retrying: {e}");
                }
            }
            None => {
                if let Some(suppressed) = log.check(std::time::Instant::now()) {
                    tracing::error!(
                        suppressed,
                        "cannot reopen the store yet (redb could not read it), retrying"
                    );
                }
            }
        }
        // Sleeps in small steps: a shutdown must not wait for the backoff. Waiting for the
        // disk is a rest for the watchdog: a restart would not make room.
        shared.pulse.rest();
        let until = std::time::Instant::now() + wait.current();
        while std::time::Instant::now() < until && !shared.closing.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        shared.pulse.step();
        wait.failed();
    }
}

/// Reads every open queue's next sequence number back from the database.
fn reload_next(db: &Database, next: &mut HashMap<WebhookId, u64>) -> Result<(), redb::Error> {
    let read = redb::ReadableDatabase::begin_read(db)?;
    let t = read.open_table(NEXT_SEQ)?;
    for (w, n) in next.iter_mut() {
        if let Some(v) = t.get(w.0)? {
            *n = v.value();
        }
    }
    Ok(())
}

/// The writer's own state between groups.
struct State {
    next: HashMap<WebhookId, u64>,
    log: RateLog,
    /// Sources whose append was refused: everything after it from them is refused too, until
    /// the refused message comes again (marked `resume`) and fits; this keeps their order.
    blocked: HashSet<String>,
    /// Redelivery marks to clear, waiting for a commit that has other work to do.
    clears: Vec<(String, u16)>,
    wal: Wal,
    /// The log record of the group being committed (its buffer kept between groups).
    redo: Redo,
}

/// Gives the disk back after a drain, without a restart: redb keeps freed pages in its file
/// until it is compacted.
#[derive(Default)]
struct Shrink {
    /// When the file size was last looked at.
    checked: Option<std::time::Instant>,
    /// The queues held something then.
    was_queued: bool,
}

impl Shrink {
    /// How often the file size is looked at, at most, while queues hold something.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Looks at the file once the queues ran empty (and once a minute otherwise), and
    /// compacts it when it is much larger than what it holds.
    fn after_commit(
        &mut self,
        cell: &DbCell,
        db: Arc<Database>,
        shared: &Shared,
        wal: &mut Wal,
    ) -> Arc<Database> {
        let queued = shared.queued_bytes();
        let ran_empty = queued == 0 && self.was_queued;
        let due = self.checked.is_none_or(|t| t.elapsed() >= Self::EVERY);
        self.was_queued = queued > 0;
        #[cfg(test)]
        let slow = shared.slow_compaction_ms.swap(0, Ordering::SeqCst);
        #[cfg(not(test))]
        let slow = 0;
        if !ran_empty && !due && slow == 0 {
            return db;
        }
        self.checked = Some(std::time::Instant::now());
        let size = std::fs::metadata(&shared.path).map_or(0, |m| m.len());
        if !super::recover::bloated(size, queued) && slow == 0 {
            return db;
        }
        // Compaction works on the durable state: everything goes there first.
        let durable = db
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|txn| super::recover::checkpoint(txn, wal));
        if let Err(e) = durable {
            tracing::warn!("store: cannot compact now (checkpoint failed): {e}");
            return db;
        }
        let (db, done) = cell.exclusive(db, std::time::Duration::from_secs(2), |d| {
            std::thread::sleep(std::time::Duration::from_millis(slow));
            super::recover::compact(d, &shared.path, size)
        });
        if done.is_none() {
            tracing::debug!("store: compaction skipped, readers kept the database busy");
        }
        db
    }
}

/// What woke the writer.
enum Wake {
    Op(Op),
    /// Removals waited [`LAZY_WAIT`] for other work.
    Due,
    /// Every handle is gone.
    Closed,
}

fn run(
    cell: &DbCell,
    mut db: Arc<Database>,
    shared: &Shared,
    next: HashMap<WebhookId, u64>,
    mut rx: mpsc::Receiver<Op>,
    wal: Wal,
) {
    // A timer for the wait of lazy removals (the op channel is a tokio one).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the store writer's timer: {e}");
            return;
        }
    };
    let mut st = State {
        next,
        log: RateLog::new(std::time::Duration::from_secs(10)),
        blocked: HashSet::new(),
        clears: Vec::new(),
        wal,
        redo: Redo::default(),
    };
    // Removals waiting for a group with other work, and the writer's deadlines (lazy.rs).
    let mut lazy = LazyRemovals::new(LAZY_WAIT);
    let mut shrink = Shrink::default();
    let wedge = test_wedge();
    loop {
        shared.pulse.rest();
        let now = std::time::Instant::now();
        lazy.tick(now);
        // Enough removals came while the last group was written (no wake-up announces
        // those): no sleep, they are written now.
        let enough = shared.removals_waiting() >= shared.lazy_removals();
        if lazy.may_sleep(enough) {
            // About to sleep without a deadline: from now on a removal wakes the writer
            // (set before looking, so that one pushed meanwhile is seen or wakes it).
            shared.writer_idle.store(true, Ordering::SeqCst);
            let waiting = shared.take_removals();
            if !waiting.is_empty() {
                shared.writer_idle.store(false, Ordering::SeqCst);
                lazy.hold(waiting);
                lazy.wait_from(std::time::Instant::now());
            }
        }
        // Anything drained while removals were expected came after the commit that set the
        // expectation: its end bounds them too.
        let wake = match lazy.deadline(now, enough) {
            None => {
                let op = rx.blocking_recv();
                shared.writer_idle.store(false, Ordering::SeqCst);
                op.map_or(Wake::Closed, Wake::Op)
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(Some(op)) => Wake::Op(op),
                    Ok(None) => Wake::Closed,
                    Err(_) => Wake::Due,
                }
            }
        };
        shared.health.wakes.fetch_add(1, Ordering::Relaxed);
        let timed_out = matches!(wake, Wake::Due);
        shared.pulse.step();
        if let Some(file) = &wedge {
            wedged(file, shared);
        }
        let mut ops = Vec::new();
        let mut closing = false;
        let mut then = None;
        let mut due = false;
        match wake {
            Wake::Closed | Wake::Op(Op::Close) => closing = true,
            // A deadline: the lazy removals' (due), or the end of the expected ones (due
            // if any came; nothing else is a reason for a write).
            Wake::Due => due = lazy.due_at_deadline(),
            Wake::Op(op) if op.is_manage() => then = Some(op),
            Wake::Op(first) => {
                // commit_interval: let the group gather (an SD card then sees one durable
                // write per interval instead of one per message).
                let linger = shared.commit_interval_ns.load(Ordering::Relaxed);
                if linger > 0 && !matches!(first, Op::Remove { .. } | Op::ClearMarks { .. }) {
                    std::thread::sleep(std::time::Duration::from_nanos(linger));
                }
                let mut appended = first.entries();
                ops.push(first);
                while appended < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Op::Close) => {
                            closing = true;
                            break;
                        }
                        Ok(op) if op.is_manage() => {
                            then = Some(op);
                            break;
                        }
                        Ok(op) => {
                            appended += op.entries();
                            ops.push(op);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        // The removals left for this group ride on it.
        let removals = shared.take_removals();
        due |= timed_out && !removals.is_empty();
        // Whether removals follow the appends (a disabled webhook's queue, or none routed,
        // gets none): only then is it worth a deadline to wait for them.
        lazy.saw_removals(!removals.is_empty(), timed_out);
        ops.extend(removals);
        // Cleared marks join the stash, applied first in the next commit. Those that came
        // after an append of this group wait for the commit after it: a resend's check must
        // still see a mark that a later op clears (channel order). Alone they are no reason
        // for a durable write, unless a quiet source asks (an empty list).
        let mut appended = false;
        let mut after: Vec<(String, u16)> = Vec::new();
        ops.retain_mut(|op| match op {
            Op::ClearMarks { source, pkids } => {
                due |= pkids.is_empty();
                let into = if appended { &mut after } else { &mut st.clears };
                into.extend(pkids.drain(..).map(|p| (source.clone(), p)));
                false
            }
            Op::Append { mark, .. } => {
                appended = true;
                // A clear of this packet id held back in this group came before this append
                // (channel order): it cleared the old mark for this append, though it is
                // written later. So the append is not checked against the old mark (its
                // resend flag proves nothing then), and it writes its own mark, which the
                // held-back clear must not delete at the next commit (a broker that reuses
                // the id at once).
                if let Some(m) = mark.as_mut().filter(|_| !after.is_empty()) {
                    let before = after.len();
                    after.retain(|(source, pkid)| !(source == &m.source && *pkid == m.pkid));
                    if after.len() != before {
                        m.dup = false;
                    }
                }
                true
            }
            _ => true,
        });
        // Removals alone wait for other work (they ride on its write), a while at most.
        let work = ops.iter().any(|op| !matches!(op, Op::Remove { .. }));
        lazy.hold(ops);
        due |= closing || then.is_some() || lazy.must_commit(work, shared.lazy_removals());
        if !due {
            st.clears.append(&mut after);
            lazy.wait_from(std::time::Instant::now());
            continue;
        }
        let mut poisoned = false;
        if !lazy.is_empty() || !st.clears.is_empty() || (closing && st.wal.used() > 0) {
            let group = lazy.take();
            let removed: usize = group
                .iter()
                .filter(|op| matches!(op, Op::Remove { .. }))
                .map(Op::entries)
                .sum();
            // At close the last group is a checkpoint: the log is empty after a clean stop.
            poisoned = commit(&db, shared, &mut st, group, closing);
            shared.removals_written(removed);
            if !poisoned && !closing {
                // Compaction and purges are long but make progress (an SD card may take
                // tens of seconds on a big file): not a hang for the watchdog.
                shared.pulse.rest();
                db = shrink.after_commit(cell, db, shared, &mut st.wal);
                shared.pulse.step();
            }
        }
        // For the next commit (it is written when the source goes quiet at the latest).
        st.clears.append(&mut after);
        lazy.committed(std::time::Instant::now(), appended, !poisoned);
        if let Some(op) = then {
            shared.pulse.rest();
            poisoned |= manage(&db, shared, &mut st.next, &mut st.wal, op);
            shared.pulse.step();
        }
        if poisoned {
            match reopen(cell, db, shared, &mut st.wal, &mut st.next) {
                Some(d) => db = d,
                None => return,
            }
        }
        if closing {
            break;
        }
    }
}

/// `ROOMHOOK_TEST_WEDGE_FILE`: a test hook. While the file it names exists, the writer
/// hangs in its step as on a storage device that stopped answering (the watchdog test).
fn test_wedge() -> Option<std::path::PathBuf> {
    #[cfg(feature = "testkit")]
    return std::env::var_os("ROOMHOOK_TEST_WEDGE_FILE").map(Into::into);
    #[cfg(not(feature = "testkit"))]
    None
}

fn wedged(file: &std::path::Path, shared: &Shared) {
    if file.exists() {
        tracing::warn!(
            "test hook: the store writer hangs while {} exists",
            file.display()
        );
    }
    while file.exists() && !shared.closing.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Tests: whether this group fails on purpose (it moves dead letters and
/// [`Store::fail_dead_letter_commits`](super::Store::fail_dead_letter_commits) asked for it).
#[cfg(test)]
fn injected_failure(shared: &Shared, ops: &[Op]) -> bool {
    ops.iter().any(|op| matches!(op, Op::DeadLetter { .. }))
        && shared
            .fail_dead_letters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}

#[cfg(not(test))]
fn injected_failure(_: &Shared, _: &[Op]) -> bool {
    false
}

/// Changes the set of queues, in a durable transaction of its own (a checkpoint); `true`
/// when an I/O error poisoned the database.
fn manage(
    db: &Database,
    shared: &Shared,
    next: &mut HashMap<WebhookId, u64>,
    wal: &mut Wal,
    op: Op,
) -> bool {
    let Op::Change { steps, done } = op else {
        return false;
    };
    let (answer, poisoned) = super::change::apply(db, shared, next, wal, &steps);
    let _ = done.send(answer);
    poisoned
}

/// What a group changes in the per-queue figures; applied once the commit succeeded.
#[derive(Default)]
pub(super) struct Delta {
    depth: HashMap<WebhookId, i64>,
    bytes: HashMap<WebhookId, i64>,
    dead: HashMap<WebhookId, i64>,
    pub(super) dropped: HashMap<(WebhookId, DropReason), u64>,
    pub(super) dropped_through: HashMap<WebhookId, u64>,
    /// Items appended for a queue that is gone (see `Store::dropped_unregistered`).
    unregistered: u64,
    /// Entries were removed: room was freed (see `Shared::room`).
    freed: bool,
}

impl Delta {
    pub(super) fn removed(&mut self, w: WebhookId, len: usize) {
        self.freed = true;
        *self.depth.entry(w).or_default() -= 1;
        *self.bytes.entry(w).or_default() -= len as i64 + ENTRY_OVERHEAD as i64;
    }

    pub(super) fn queue_bytes(&self, queues: &Queues, w: WebhookId) -> i64 {
        queues
            .get(&w)
            .map_or(0, |q| q.stats.bytes.load(Ordering::Relaxed) as i64)
            + self.bytes.get(&w).copied().unwrap_or(0)
    }

    pub(super) fn total_bytes(&self, queues: &Queues) -> i64 {
        queues.keys().map(|w| self.queue_bytes(queues, *w)).sum()
    }
}

fn add(counter: &std::sync::atomic::AtomicU64, d: i64) {
    if d >= 0 {
        counter.fetch_add(d as u64, Ordering::Relaxed);
    } else {
        counter.fetch_sub(d.unsigned_abs(), Ordering::Relaxed);
    }
}

/// The queues as of one commit.
pub(super) type Queues = HashMap<WebhookId, Arc<super::shared::Queue>>;

/// Why a group was not committed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// redb refused (nothing of the group is stored).
    #[error("{0}")]
    Db(redb::Error),
    /// The log record could not be written (nothing of the group is stored).
    #[error("write-ahead log {path}: {source}")]
    Wal {
        path: String,
        source: std::io::Error,
    },
}

/// Largest group written to the log; larger ones are committed to redb durably (a
/// checkpoint), which costs about as much at that size.
fn wal_record_max(wal: &Wal) -> usize {
    (wal.size() / 4) as usize
}

/// Makes an applied group durable: a log record (then redb commits without a durable write
/// of its own), or, when asked or when the record does not fit, a durable redb commit that
/// is a checkpoint of the log.
fn finish(
    txn: redb::WriteTransaction,
    wal: &mut Wal,
    redo: &Redo,
    durable: bool,
) -> Result<(), Failure> {
    if durable || redo.len() > wal_record_max(wal) || !wal.fits(redo.len()) {
        return super::recover::checkpoint(txn, wal).map_err(Failure::Db);
    }
    if redo.is_empty() {
        // Nothing changed (a group of refused appends).
        return txn.abort().map_err(|e| Failure::Db(e.into()));
    }
    let mut txn = txn;
    txn.set_durability(Durability::None)
        .map_err(|e| Failure::Db(e.into()))?;
    if let Err(source) = wal.append(redo.bytes()) {
        let _ = wal.void_last();
        let _ = txn.abort();
        return Err(Failure::Wal {
            path: wal.path().display().to_string(),
            source,
        });
    }
    if let Err(e) = txn.commit() {
        // The record must not be replayed: the group is answered as not stored.
        if let Err(v) = wal.void_last() {
            tracing::error!("cannot take back a write-ahead log record that redb did not apply (a restart may store that group although it was answered as not stored): {v}");
        }
        return Err(Failure::Db(e.into()));
    }
    Ok(())
}

/// Applies a group in one durable transaction and answers its ops; `true` when an I/O
/// error poisoned the database (it must be reopened).
fn commit(db: &Database, shared: &Shared, st: &mut State, ops: Vec<Op>, durable: bool) -> bool {
    let State {
        next,
        log,
        blocked,
        clears,
        wal,
        redo,
    } = st;
    redo.clear();
    // Keys of the run of identical bodies being appended (kept across items and ops).
    let mut keys: Vec<(u32, u64)> = Vec::new();
    let queues = shared.queues();
    let queues = &*queues;
    let mut new_next = next.clone();
    let mut delta = Delta::default();
    let mut refused = vec![false; ops.len()];
    let mut redelivered = vec![false; ops.len()];
    let mut replayed = vec![0u64; ops.len()];
    let started = std::time::Instant::now();
    let applied = (|| -> Result<redb::WriteTransaction, redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut q = txn.open_table(QUEUE)?;
            let mut seen = txn.open_table(MQTT_SEEN)?;
            for (source, pkid) in clears.iter() {
                seen.remove((source.as_str(), *pkid))?;
                redo.seen_del(source, *pkid);
            }
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Append { items, mark, .. } => {
                        let source = mark.as_ref().map(|m| (m.source.as_str(), m.resume));
                        // A redelivery of a committed message takes no room: checked first,
                        // even while the source is held back (it must meet its mark now).
                        if let Some(m) = mark.as_ref().filter(|m| m.dup) {
                            if seen
                                .get((m.source.as_str(), m.pkid))?
                                .is_some_and(|v| v.value() == m.digest)
                            {
                                redelivered[i] = true;
                                continue;
                            }
                        }
                        if let Some((src, false)) = source {
                            if blocked.contains(src) {
                                refused[i] = true;
                                continue;
                            }
                        }
                        // Items for a queue that is gone: routed before their webhook was
                        // removed, they came behind the purge. Written, they would count
                        // against nothing and never be purged: dropped (and counted) instead.
                        let live: Vec<&(WebhookId, Vec<u8>)> = items
                            .iter()
                            .filter(|(w, _)| queues.contains_key(w))
                            .collect();
                        let gone = (items.len() - live.len()) as u64;
                        let incoming: u64 = live
                            .iter()
                            .map(|(_, b)| b.len() as u64 + ENTRY_OVERHEAD)
                            .sum();
                        if !make_room(&mut q, shared, queues, incoming, &mut delta, redo)? {
                            refused[i] = true;
                            if let Some((src, _)) = source {
                                blocked.insert(src.to_string());
                            }
                            continue;
                        }
                        if let Some((src, true)) = source {
                            blocked.remove(src);
                        }
                        delta.unregistered += gone;
                        if let Some(m) = mark {
                            // Marked in the transaction that checked it: a mark means
                            // "committed, PUBACK not yet written".
                            seen.insert((m.source.as_str(), m.pkid), m.digest)?;
                            redo.seen_put(&m.source, m.pkid, m.digest);
                        }
                        // The same event for several webhooks goes into the log once.
                        for (i, (w, bytes)) in live.iter().enumerate() {
                            let seq = new_next.entry(*w).or_insert(1);
                            q.insert((w.0, *seq), bytes.as_slice())?;
                            keys.push((w.0, *seq));
                            *seq += 1;
                            *delta.depth.entry(*w).or_default() += 1;
                            *delta.bytes.entry(*w).or_default() +=
                                bytes.len() as i64 + ENTRY_OVERHEAD as i64;
                            if keys.len() == usize::from(u16::MAX)
                                || live.get(i + 1).is_none_or(|(_, b)| b != bytes)
                            {
                                redo.put(&keys, bytes);
                                keys.clear();
                            }
                        }
                    }
                    Op::Remove { webhook, seqs, .. } => {
                        for s in seqs {
                            if let Some(v) = q.remove((webhook.0, *s))? {
                                let len = v.value().len();
                                drop(v);
                                delta.removed(*webhook, len);
                                redo.del(webhook.0, *s);
                            }
                        }
                    }
                    Op::DeadLetter { webhook, items, .. } => {
                        let mut dead = txn.open_table(DEAD)?;
                        for (seq, bytes) in items {
                            if let Some(v) = q.remove((webhook.0, *seq))? {
                                let len = v.value().len();
                                drop(v);
                                delta.removed(*webhook, len);
                                redo.del(webhook.0, *seq);
                                dead.insert((webhook.0, *seq), bytes.as_slice())?;
                                redo.dead_put(webhook.0, *seq, bytes);
                                *delta.dead.entry(*webhook).or_default() += 1;
                            }
                        }
                        // Keep the dead letters bounded: the oldest go first.
                        let held = queues
                            .get(webhook)
                            .map_or(0, |q| q.stats.dead.load(Ordering::Relaxed));
                        let now_held = held as i64 + delta.dead.get(webhook).copied().unwrap_or(0);
                        let excess = now_held - MAX_DEAD_LETTERS as i64;
                        if excess > 0 {
                            let old: Vec<u64> = dead
                                .range((webhook.0, 0)..=(webhook.0, u64::MAX))?
                                .take(excess as usize)
                                .filter_map(|r| r.ok().map(|(k, _)| k.value().1))
                                .collect();
                            for s in old {
                                dead.remove((webhook.0, s))?;
                                redo.dead_del(webhook.0, s);
                                *delta.dead.entry(*webhook).or_default() -= 1;
                                *delta
                                    .dropped
                                    .entry((*webhook, DropReason::DeadLetterEvicted))
                                    .or_default() += 1;
                            }
                        }
                    }
                    Op::Replay {
                        webhook, since_ms, ..
                    } => {
                        let mut dead = txn.open_table(DEAD)?;
                        let mut back = Vec::new();
                        for item in dead.range((webhook.0, 0)..=(webhook.0, u64::MAX))? {
                            let (k, v) = item?;
                            if let Ok(d) =
                                serde_json::from_slice::<super::types::DeadLetter>(v.value())
                            {
                                if d.at_ms >= *since_ms {
                                    back.push((k.value().1, d.event.encode()));
                                }
                            }
                        }
                        for (old, bytes) in &back {
                            dead.remove((webhook.0, *old))?;
                            redo.dead_del(webhook.0, *old);
                            *delta.dead.entry(*webhook).or_default() -= 1;
                            let seq = new_next.entry(*webhook).or_insert(1);
                            q.insert((webhook.0, *seq), bytes.as_slice())?;
                            redo.put(&[(webhook.0, *seq)], bytes);
                            *seq += 1;
                            *delta.depth.entry(*webhook).or_default() += 1;
                            *delta.bytes.entry(*webhook).or_default() +=
                                bytes.len() as i64 + ENTRY_OVERHEAD as i64;
                        }
                        replayed[i] = back.len() as u64;
                    }
                    _ => {}
                }
            }
            let mut n = txn.open_table(NEXT_SEQ)?;
            for (w, seq) in &new_next {
                if next.get(w) != Some(seq) {
                    n.insert(w.0, *seq)?;
                    redo.next_seq(w.0, *seq);
                }
            }
        }
        Ok(txn)
    })();
    let result = match applied {
        Ok(txn) if injected_failure(shared, &ops) => {
            let _ = txn.abort();
            Err(Failure::Wal {
                path: wal.path().display().to_string(),
                source: std::io::Error::other("a failure injected by a test"),
            })
        }
        Ok(txn) => finish(txn, wal, redo, durable),
        Err(e) => Err(Failure::Db(e)),
    };
    let took = started.elapsed();
    if let Some(h) = shared.commit_duration.get() {
        h.observe(took.as_secs_f64());
    }
    shared.health.commits.fetch_add(1, Ordering::Relaxed);
    shared
        .health
        .commit_nanos
        .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    let poisoned = matches!(&result, Err(Failure::Db(e)) if poisoning(e));
    let failure = result.err().map(|e| e.to_string());
    let health = &shared.health;
    if let Some(e) = &failure {
        health.errors.fetch_add(1, Ordering::Relaxed);
        health.failing.store(true, Ordering::Relaxed);
        if let Ok(mut g) = health.last_error.lock() {
            *g = Some((e.clone(), crate::timefmt::now_ms()));
        }
        // Nothing was stored; sources blocked by this group must retry like any refusal.
        for op in &ops {
            if let Op::Append { mark: Some(m), .. } = op {
                blocked.insert(m.source.clone());
            }
        }
        if let Some(suppressed) = log.check(std::time::Instant::now()) {
            tracing::error!(
                suppressed,
                "store commit failed, nothing of this group was stored (input waits and is retried): {e}"
            );
        }
    } else {
        health.failing.store(false, Ordering::Relaxed);
        if delta.freed {
            shared.room.send_modify(|n| *n += 1);
        }
        for (w, qu) in queues {
            add(&qu.stats.depth, delta.depth.get(w).copied().unwrap_or(0));
            add(&qu.stats.bytes, delta.bytes.get(w).copied().unwrap_or(0));
            add(&qu.stats.dead, delta.dead.get(w).copied().unwrap_or(0));
        }
        for (w, seq) in &delta.dropped_through {
            if let Some(qu) = queues.get(w) {
                qu.stats.dropped_through.fetch_max(*seq, Ordering::Relaxed);
            }
        }
        for ((w, reason), n) in &delta.dropped {
            if let Some(qu) = queues.get(w) {
                qu.stats.dropped[*reason as usize].fetch_add(*n, Ordering::Relaxed);
            }
        }
        if delta.unregistered > 0 {
            shared
                .health
                .dropped_unregistered
                .fetch_add(delta.unregistered, Ordering::Relaxed);
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                tracing::warn!(
                    suppressed,
                    "{} event(s) routed to a webhook removed before their commit were dropped",
                    delta.unregistered
                );
            }
        }
        if !delta.dropped.is_empty() {
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                let what: Vec<String> = delta
                    .dropped
                    .iter()
                    .map(|((w, r), n)| {
                        format!(
                            "{n} from webhook #{} ({}: {})",
                            w.0,
                            r.label(),
                            r.describe()
                        )
                    })
                    .collect();
                tracing::warn!(suppressed, "events dropped: {}", what.join(", "));
            }
        }
        if refused.iter().any(|r| *r) {
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                tracing::warn!(suppressed, "store full (max_store_bytes) and the largest queue's overflow policy is block: input waits (MQTT messages stay with the broker)");
            }
        }
        for (w, seq) in &new_next {
            if next.get(w) != Some(seq) {
                if let Some(q) = queues.get(w) {
                    q.committed.send_replace(seq - 1);
                }
            }
        }
        *next = new_next;
    }
    if failure.is_none() {
        clears.clear();
    }
    for (((op, refused), replayed), redelivered) in
        ops.into_iter().zip(refused).zip(replayed).zip(redelivered)
    {
        if let Op::Replay { done, .. } = op {
            let _ = done.send(match &failure {
                None => Ok(replayed),
                Some(e) => Err(e.clone()),
            });
            continue;
        }
        let answer = match &failure {
            None if refused => Err(StoreError::Full),
            None if redelivered => Err(StoreError::Redelivered),
            None => Ok(()),
            Some(e) => Err(StoreError::Commit(e.clone())),
        };
        match op {
            Op::Append { done, .. } | Op::Remove { done, .. } | Op::DeadLetter { done, .. } => {
                let _ = done.send(answer);
            }
            _ => {}
        }
    }
    poisoned
}
