//! Changes to the set of queues — register, rename, orphan marks, purge — and the register
//! of delivery loops. Every step of one [`Change`] commits in one durable transaction or none
//! does, and the in-memory queues follow only after that commit: a control-plane edit that
//! fails half-way (a disk full, a name taken) leaves the store as it was. A queue is read by
//! at most one delivery loop: [`Claims`] refuses a second one.

use super::schema::{DEAD, META, NEXT_SEQ, ORPHANS, ORPHAN_URLS, QUEUE, WEBHOOKS};
use super::shared::Shared;
use super::types::WebhookId;
use super::wal::Wal;
use super::Overflow;
use redb::{Database, ReadableTable};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One step of a [`Change`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Open (or create) the queue of a name with an overflow policy.
    Register {
        /// Webhook name.
        name: String,
        /// Its overflow policy.
        overflow: Overflow,
    },
    /// Give a queue a new name (same id, same entries); refused when the new name has a
    /// queue already (a kept one included).
    Rename {
        /// The current name.
        from: String,
        /// The new one.
        to: String,
    },
    /// A webhook left the config: keep its queue as an orphan for the receiver at `url` (a
    /// queue kept before keeps its first time and url), or purge it when it holds nothing
    /// (no queued event, no dead letter). Answers `Orphaned` or `Purged(0)`.
    Release {
        /// Webhook name.
        name: String,
        /// The URL its events were routed for.
        url: Option<String>,
        /// Now, unix ms.
        at_ms: i64,
    },
    /// Clear an orphan mark (a webhook of that name is back).
    Unorphan {
        /// Webhook name.
        name: String,
    },
    /// Delete a queue and its dead letters.
    Purge {
        /// Webhook name.
        name: String,
    },
}

/// What one step did, in the order of the steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Done {
    /// The queue's id.
    Registered(WebhookId),
    /// Renamed.
    Renamed,
    /// An orphan since (unix ms).
    Orphaned(i64),
    /// No orphan any more (whether it was one).
    Unorphaned(bool),
    /// Queued events discarded.
    Purged(u64),
}

/// A list of steps applied all together or not at all.
pub(crate) type Change = Vec<Step>;

/// A kept (orphaned) queue as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kept {
    /// Webhook name.
    pub(crate) name: String,
    /// Since when (unix ms).
    pub(crate) since_ms: i64,
    /// The URL its events were routed for, when known.
    pub(crate) url: Option<String>,
}

/// A registered queue: id, next sequence number, (depth, bytes, dead letters) when it was
/// not open yet, and its overflow policy.
struct Opened {
    id: WebhookId,
    next: u64,
    found: Option<(u64, u64, u64)>,
    overflow: Overflow,
}

/// What the commit changes in memory, in step order.
enum Effect {
    Open(Opened),
    Close(WebhookId),
}

/// Applies `steps` in one durable transaction (a checkpoint). Answers per step, or why
/// nothing was changed; the flag is `true` when an I/O error poisoned the database.
pub(super) fn apply(
    db: &Database,
    shared: &Shared,
    next: &mut HashMap<WebhookId, u64>,
    wal: &mut Wal,
    steps: &[Step],
) -> (Result<Vec<Done>, String>, bool) {
    let mut effects = Vec::new();
    let r = (|| -> Result<Result<Vec<Done>, String>, redb::Error> {
        let txn = db.begin_write()?;
        let mut answers = Vec::with_capacity(steps.len());
        {
            let mut names = txn.open_table(WEBHOOKS)?;
            let mut meta = txn.open_table(META)?;
            let mut orphans = txn.open_table(ORPHANS)?;
            let mut urls = txn.open_table(ORPHAN_URLS)?;
            let mut queue = txn.open_table(QUEUE)?;
            let mut dead = txn.open_table(DEAD)?;
            let mut seqs = txn.open_table(NEXT_SEQ)?;
            for step in steps {
                match step {
                    Step::Register { name, overflow } => {
                        let (id, n) =
                            super::recover::register_name(&mut names, &mut meta, &seqs, name)?;
                        let open = shared.queue(id).is_some()
                            || effects
                                .iter()
                                .any(|e| matches!(e, Effect::Open(o) if o.id == id));
                        let found = if open {
                            None
                        } else {
                            Some(super::recover::scan(&queue, &dead, id)?)
                        };
                        effects.push(Effect::Open(Opened {
                            id,
                            next: n,
                            found,
                            overflow: *overflow,
                        }));
                        answers.push(Done::Registered(id));
                    }
                    Step::Rename { from, to } => {
                        if names.get(to.as_str())?.is_some() {
                            let kept = orphans.get(to.as_str())?.is_some();
                            return Ok(Err(if kept {
                                format!("a kept queue named {to:?} exists (its webhook left the config)")
                            } else {
                                format!("a queue named {to:?} exists already")
                            }));
                        }
                        let Some(id) = names.remove(from.as_str())?.map(|v| v.value()) else {
                            return Ok(Err(format!("no queue named {from:?}")));
                        };
                        names.insert(to.as_str(), id)?;
                        answers.push(Done::Renamed);
                    }
                    Step::Release { name, url, at_ms } => {
                        let id = names.get(name.as_str())?.map(|v| v.value());
                        let empty = match id {
                            None => true,
                            Some(id) => {
                                queue.range((id, 0)..=(id, u64::MAX))?.next().is_none()
                                    && dead.range((id, 0)..=(id, u64::MAX))?.next().is_none()
                            }
                        };
                        if !empty {
                            let since = mark(&mut orphans, &mut urls, name, url, *at_ms)?;
                            answers.push(Done::Orphaned(since));
                            continue;
                        }
                        orphans.remove(name.as_str())?;
                        urls.remove(name.as_str())?;
                        if let Some(id) = id {
                            names.remove(name.as_str())?;
                            seqs.remove(id)?;
                            effects.push(Effect::Close(WebhookId(id)));
                        }
                        answers.push(Done::Purged(0));
                    }
                    Step::Unorphan { name } => {
                        let was = orphans.remove(name.as_str())?.is_some();
                        urls.remove(name.as_str())?;
                        answers.push(Done::Unorphaned(was));
                    }
                    Step::Purge { name } => {
                        orphans.remove(name.as_str())?;
                        urls.remove(name.as_str())?;
                        let Some(id) = names.remove(name.as_str())?.map(|v| v.value()) else {
                            answers.push(Done::Purged(0));
                            continue;
                        };
                        let mut n = 0u64;
                        queue.retain_in((id, 0)..=(id, u64::MAX), |_, _| {
                            n += 1;
                            false
                        })?;
                        dead.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
                        seqs.remove(id)?;
                        effects.push(Effect::Close(WebhookId(id)));
                        answers.push(Done::Purged(n));
                    }
                }
            }
        }
        super::recover::checkpoint(txn, wal)?;
        Ok(Ok(answers))
    })();
    match r {
        Ok(Ok(answers)) => {
            for effect in effects {
                match effect {
                    Effect::Open(o) => open(shared, next, o),
                    Effect::Close(id) => {
                        next.remove(&id);
                        shared.update_queues(|m| {
                            m.remove(&id);
                        });
                    }
                }
            }
            (Ok(answers), false)
        }
        Ok(Err(refused)) => (Err(refused), false),
        Err(e) => {
            let poisoned = super::writer::poisoning(&e);
            (Err(e.to_string()), poisoned)
        }
    }
}

/// Marks `name` kept for `url` (a queue marked before keeps its first time and URL);
/// answers since when.
fn mark(
    orphans: &mut redb::Table<'_, &'static str, i64>,
    urls: &mut redb::Table<'_, &'static str, &'static str>,
    name: &str,
    url: &Option<String>,
    at_ms: i64,
) -> Result<i64, redb::Error> {
    if let Some(since) = orphans.get(name)?.map(|v| v.value()) {
        return Ok(since);
    }
    orphans.insert(name, at_ms)?;
    match url {
        Some(u) => {
            urls.insert(name, u.as_str())?;
        }
        None => {
            urls.remove(name)?;
        }
    }
    Ok(at_ms)
}

/// A committed registration takes effect in memory.
fn open(shared: &Shared, next: &mut HashMap<WebhookId, u64>, o: Opened) {
    next.entry(o.id).or_insert(o.next);
    match (shared.queue(o.id), o.found) {
        (Some(q), _) => q.set_overflow(o.overflow),
        (None, found) => {
            let (depth, bytes, dead) = found.unwrap_or_default();
            shared.update_queues(|m| {
                let stats = super::types::QueueStats {
                    depth: depth.into(),
                    dead: dead.into(),
                    bytes: bytes.into(),
                    ..Default::default()
                };
                m.insert(
                    o.id,
                    Arc::new(super::shared::Queue::new(
                        o.overflow,
                        stats,
                        o.next.saturating_sub(1),
                    )),
                );
            });
        }
    }
}

/// The kept queues: name, since when, and the URL their events were routed for. Blocking.
pub(super) fn kept(db: &Database) -> Result<Vec<Kept>, redb::Error> {
    use redb::ReadableDatabase;
    let read = db.begin_read()?;
    let t = match read.open_table(ORPHANS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let urls = match read.open_table(ORPHAN_URLS) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        let name = k.value().to_string();
        let url = match &urls {
            Some(u) => u.get(name.as_str())?.map(|v| v.value().to_string()),
            None => None,
        };
        out.push(Kept {
            since_ms: v.value(),
            url,
            name,
        });
    }
    Ok(out)
}

/// The delivery loops reading each queue: at most one per queue, always.
#[derive(Default)]
pub(crate) struct Claims {
    held: Mutex<HashSet<WebhookId>>,
    refused: AtomicU64,
}

/// The right to read (deliver and remove from) one queue, held by its delivery loop for as
/// long as it runs; dropping it lets the next loop take the queue.
pub(crate) struct Claim {
    shared: Arc<Shared>,
    id: WebhookId,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim({})", self.id.0)
    }
}

impl Claim {
    /// The queue it holds.
    #[cfg(test)]
    pub(crate) fn queue(&self) -> WebhookId {
        self.id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared
            .claims
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Claims {
    /// Takes `id` for one delivery loop; `false` (counted) while another holds it.
    pub(crate) fn take(shared: &Arc<Shared>, id: WebhookId) -> Option<Claim> {
        let fresh = shared
            .claims
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        if !fresh {
            shared.claims.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Claim {
            shared: shared.clone(),
            id,
        })
    }

    /// The queues held now, in id order.
    pub(crate) fn held(&self) -> Vec<WebhookId> {
        let mut v: Vec<WebhookId> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort();
        v
    }

    /// Second loops refused since start (each one a bug).
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
