//! The store's single writer thread: drains whatever ops are waiting, applies them in one
//! write transaction (group commit), answers the appenders, and publishes the new state.

use super::{Op, Shared, WebhookId, DEAD, MAX_DEAD_LETTERS, MQTT_SEEN, NEXT_SEQ, QUEUE};
use redb::{Database, Durability, ReadableTable};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most events appended in one transaction.
const MAX_GROUP: usize = 8192;

pub(super) fn spawn(
    db: Arc<Database>,
    shared: Arc<Shared>,
    next: HashMap<WebhookId, u64>,
    rx: mpsc::Receiver<Op>,
    finished: oneshot::Sender<()>,
) {
    let spawned = std::thread::Builder::new()
        .name("roomhook-store".into())
        .spawn(move || {
            run(&db, &shared, next, rx);
            drop(db);
            let _ = finished.send(());
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the store writer thread: {e}");
    }
}

fn run(
    db: &Database,
    shared: &Shared,
    mut next: HashMap<WebhookId, u64>,
    mut rx: mpsc::Receiver<Op>,
) {
    // Every group is committed durably: removals too, so that after a power cut at most
    // the requests of one group are delivered again.
    while let Some(first) = rx.blocking_recv() {
        if matches!(first, Op::Close) {
            break;
        }
        let mut ops = vec![first];
        let mut closing = false;
        let mut appended = op_len(&ops[0]);
        while appended < MAX_GROUP {
            match rx.try_recv() {
                Ok(Op::Close) => {
                    closing = true;
                    break;
                }
                Ok(op) => {
                    appended += op_len(&op);
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        commit(db, shared, &mut next, ops);
        if closing {
            break;
        }
    }
}

fn op_len(op: &Op) -> usize {
    match op {
        Op::Append { items, .. } => items.len(),
        Op::Remove { seqs, .. } => seqs.len(),
        Op::DeadLetter { items, .. } => items.len(),
        Op::Close => 0,
    }
}

fn commit(db: &Database, shared: &Shared, next: &mut HashMap<WebhookId, u64>, ops: Vec<Op>) {
    let mut new_next = next.clone();
    let mut delta: HashMap<WebhookId, i64> = HashMap::new();
    let mut dead_delta: HashMap<WebhookId, i64> = HashMap::new();
    let result = (|| -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut q = txn.open_table(QUEUE)?;
            for op in &ops {
                match op {
                    Op::Append { items, mark, .. } => {
                        if let Some(m) = mark {
                            txn.open_table(MQTT_SEEN)?
                                .insert((m.source.as_str(), m.pkid), m.digest)?;
                        }
                        for (w, bytes) in items {
                            let seq = new_next.entry(*w).or_insert(1);
                            q.insert((w.0, *seq), bytes.as_slice())?;
                            *seq += 1;
                            *delta.entry(*w).or_default() += 1;
                        }
                    }
                    Op::Remove { webhook, seqs, .. } => {
                        for s in seqs {
                            if q.remove((webhook.0, *s))?.is_some() {
                                *delta.entry(*webhook).or_default() -= 1;
                            }
                        }
                    }
                    Op::DeadLetter { webhook, items } => {
                        let mut dead = txn.open_table(DEAD)?;
                        for (seq, bytes) in items {
                            if q.remove((webhook.0, *seq))?.is_some() {
                                *delta.entry(*webhook).or_default() -= 1;
                                dead.insert((webhook.0, *seq), bytes.as_slice())?;
                                *dead_delta.entry(*webhook).or_default() += 1;
                            }
                        }
                        // Keep the dead letters bounded: the oldest go first.
                        let held = shared
                            .queues
                            .get(webhook)
                            .map_or(0, |q| q.stats.dead.load(Ordering::Relaxed));
                        let now_held = held as i64 + dead_delta.get(webhook).copied().unwrap_or(0);
                        let excess = now_held - MAX_DEAD_LETTERS as i64;
                        if excess > 0 {
                            let old: Vec<u64> = dead
                                .range((webhook.0, 0)..=(webhook.0, u64::MAX))?
                                .take(excess as usize)
                                .filter_map(|r| r.ok().map(|(k, _)| k.value().1))
                                .collect();
                            for s in old {
                                dead.remove((webhook.0, s))?;
                                *dead_delta.entry(*webhook).or_default() -= 1;
                            }
                        }
                    }
                    Op::Close => {}
                }
            }
            let mut n = txn.open_table(NEXT_SEQ)?;
            for (w, seq) in &new_next {
                if next.get(w) != Some(seq) {
                    n.insert(w.0, *seq)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    })();
    let failure = result.err().map(|e| e.to_string());
    if let Some(e) = &failure {
        tracing::error!("store commit failed, nothing of this group was stored: {e}");
    } else {
        for (w, d) in &delta {
            if let Some(q) = shared.queues.get(w) {
                if *d >= 0 {
                    q.stats.depth.fetch_add(*d as u64, Ordering::Relaxed);
                } else {
                    q.stats.depth.fetch_sub(d.unsigned_abs(), Ordering::Relaxed);
                }
            }
        }
        for (w, d) in &dead_delta {
            if let Some(q) = shared.queues.get(w) {
                if *d >= 0 {
                    q.stats.dead.fetch_add(*d as u64, Ordering::Relaxed);
                } else {
                    q.stats.dead.fetch_sub(d.unsigned_abs(), Ordering::Relaxed);
                }
            }
        }
        for (w, seq) in &new_next {
            if next.get(w) != Some(seq) {
                if let Some(q) = shared.queues.get(w) {
                    q.committed.send_replace(seq - 1);
                }
            }
        }
        *next = new_next;
    }
    let answer = || match &failure {
        None => Ok(()),
        Some(e) => Err(e.clone()),
    };
    for op in ops {
        match op {
            Op::Append { done, .. }
            | Op::Remove {
                done: Some(done), ..
            } => {
                let _ = done.send(answer());
            }
            _ => {}
        }
    }
}
