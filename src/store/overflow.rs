//! What gives way when the store is full: the overflow policies (`drop_oldest`,
//! `coalesce`, `block`) applied by the writer inside a group, before an append.

use super::redo::Redo;
use super::schema::ENTRY_OVERHEAD;
use super::shared::Shared;
use super::types::{DropReason, WebhookId};
use super::writer::{Delta, Queues};
use super::Overflow;
use crate::catalog::Kind;
use crate::event::Event;
use redb::ReadableTable;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

type Queue<'t> = redb::Table<'t, (u32, u64), &'static [u8]>;

/// Removes the oldest entries of `w` until `need` bytes are freed; returns the bytes freed.
/// The highest dropped sequence number is published, so that the worker skips the dropped
/// entries it already holds in memory.
fn drop_oldest(
    q: &mut Queue<'_>,
    w: WebhookId,
    need: i64,
    delta: &mut Delta,
    redo: &mut Redo,
) -> Result<i64, redb::Error> {
    let mut freed = 0i64;
    let mut victims = Vec::new();
    for item in q.range((w.0, 0)..=(w.0, u64::MAX))? {
        if freed >= need {
            break;
        }
        let (k, v) = item?;
        let len = v.value().len();
        victims.push((k.value().1, len));
        freed += len as i64 + ENTRY_OVERHEAD as i64;
    }
    for (seq, len) in victims {
        q.remove((w.0, seq))?;
        redo.del(w.0, seq);
        delta.removed(w, len);
        *delta.dropped.entry((w, DropReason::Overflow)).or_default() += 1;
        let through = delta.dropped_through.entry(w).or_default();
        *through = (*through).max(seq);
    }
    Ok(freed)
}

/// Removes status values of `w` that a newer value of the same device and path supersedes
/// (newest kept; events never touched) until `need` bytes are freed; returns bytes freed.
fn coalesce(
    q: &mut Queue<'_>,
    queues: &Queues,
    w: WebhookId,
    need: i64,
    delta: &mut Delta,
    redo: &mut Redo,
) -> Result<i64, redb::Error> {
    let window_end = queues
        .get(&w)
        .map_or(0, |q| q.stats.window_end.load(Ordering::Relaxed));
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut victims = Vec::new();
    let mut freed = 0i64;
    for item in q
        .range((w.0, window_end.saturating_add(1))..=(w.0, u64::MAX))?
        .rev()
    {
        let (k, v) = item?;
        let Ok(e) = Event::decode(v.value()) else {
            continue;
        };
        // Events, full syncs and messages of several changes (a removal) never give way.
        if e.kind != Kind::Status || !e.more.is_empty() || e.full_sync {
            continue;
        }
        if !seen.insert((e.device, e.path)) {
            let len = v.value().len();
            victims.push((k.value().1, len));
            freed += len as i64 + ENTRY_OVERHEAD as i64;
            if freed >= need {
                break;
            }
        }
    }
    for (seq, len) in victims {
        q.remove((w.0, seq))?;
        redo.del(w.0, seq);
        delta.removed(w, len);
        *delta.dropped.entry((w, DropReason::Coalesced)).or_default() += 1;
    }
    Ok(freed)
}

/// Makes room for `incoming` bytes under the budget; `false` when input must wait (block).
pub(super) fn make_room(
    q: &mut Queue<'_>,
    shared: &Shared,
    queues: &Queues,
    incoming: u64,
    delta: &mut Delta,
    redo: &mut Redo,
) -> Result<bool, redb::Error> {
    let max = shared.max_bytes as i64;
    if max == 0 {
        return Ok(true);
    }
    let over = delta.total_bytes(queues) + incoming as i64 - max;
    if over <= 0 {
        return Ok(true);
    }
    // Free down to 95 % of the budget, so that this does not run on every append.
    let mut need = over + max / 20;
    let mut exhausted: HashSet<WebhookId> = HashSet::new();
    while need > 0 {
        let victim = queues
            .iter()
            .filter(|(w, _)| !exhausted.contains(*w))
            .map(|(w, qu)| (delta.queue_bytes(queues, *w), *w, qu.overflow()))
            .filter(|(b, _, _)| *b > 0)
            .max_by_key(|(b, w, _)| (*b, std::cmp::Reverse(*w)));
        let Some((_, w, overflow)) = victim else {
            break;
        };
        let freed = match overflow {
            Overflow::Block => return Ok(delta.total_bytes(queues) + incoming as i64 <= max),
            Overflow::DropOldest => drop_oldest(q, w, need, delta, redo)?,
            Overflow::Coalesce => {
                let f = coalesce(q, queues, w, need, delta, redo)?;
                if f < need {
                    f + drop_oldest(q, w, need - f, delta, redo)?
                } else {
                    f
                }
            }
        };
        if freed == 0 {
            exhausted.insert(w);
        }
        need -= freed;
    }
    Ok(delta.total_bytes(queues) + incoming as i64 <= max)
}
