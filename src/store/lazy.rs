//! When removals are written: the lazy-removal policy as plain, clock-injected code (the
//! writer thread in `writer.rs` is the I/O around it). Delivered events are removed from
//! their queue in the writer's next group commit with other work, so that at a room's pace
//! an event costs one durable write, not two; alone they wait for [`LAZY_WAIT`](super::writer::LAZY_WAIT), or until
//! enough of them gather.
//!
//! After a commit with appends the writer expects their removals (the events go out at
//! once and come back as removals): it sleeps with a deadline instead of being woken by
//! each of them. A webhook that is disabled, or events routed nowhere, bring no removals:
//! once a wait ends with none, no deadline is set after the next commits until removals
//! flow again.

use super::types::Op;
use std::time::{Duration, Instant};

/// The removals (and other ops) held for the next commit, and the writer's deadlines.
pub(super) struct LazyRemovals {
    /// The longest a held removal waits for other work.
    wait: Duration,
    /// Held ops, in arrival order.
    ops: Vec<Op>,
    /// How many entries they remove or add.
    entries: usize,
    /// Since when ops are held.
    since: Option<Instant>,
    /// Until when the removals of what was just committed are expected.
    expect_until: Option<Instant>,
    /// Whether removals follow the appends (else no deadline is worth setting).
    flow: bool,
}

impl LazyRemovals {
    pub(super) fn new(wait: Duration) -> Self {
        LazyRemovals {
            wait,
            ops: Vec::new(),
            entries: 0,
            since: None,
            expect_until: None,
            flow: true,
        }
    }

    /// A new turn of the writer's loop: an expectation that ran out is dropped.
    pub(super) fn tick(&mut self, now: Instant) {
        if self.expect_until.is_some_and(|t| t <= now) {
            self.expect_until = None;
        }
    }

    /// Whether the writer may sleep without a deadline (nothing held, nothing expected,
    /// not `enough` removals waiting); a removal then wakes it.
    pub(super) fn may_sleep(&self, enough: bool) -> bool {
        self.since.is_none() && self.expect_until.is_none() && !enough
    }

    /// When the writer must wake up at the latest (`None`: only for an op); `enough`:
    /// enough removals wait to be written now.
    pub(super) fn deadline(&self, now: Instant, enough: bool) -> Option<Instant> {
        if enough {
            return Some(now);
        }
        match (self.since, self.expect_until) {
            (Some(since), Some(until)) => Some((since + self.wait).min(until)),
            (Some(since), None) => Some(since + self.wait),
            (None, until) => until,
        }
    }

    /// Whether a wake-up at the deadline must commit (held ops waited long enough).
    pub(super) fn due_at_deadline(&self) -> bool {
        self.since.is_some()
    }

    /// Ops to hold; counts their entries.
    pub(super) fn hold(&mut self, ops: impl IntoIterator<Item = Op>) {
        for op in ops {
            self.entries += op.entries();
            self.ops.push(op);
        }
    }

    /// The removals taken this turn (`got`), after a wait that ended by its deadline or
    /// not (`timed_out`): whether removals still follow the appends.
    pub(super) fn saw_removals(&mut self, got: bool, timed_out: bool) {
        if got {
            self.flow = true;
        } else if timed_out && self.ops.is_empty() {
            self.flow = false;
        }
    }

    /// Whether the held ops must be committed now: other work came (`work`), or enough
    /// entries are held (`threshold`).
    pub(super) fn must_commit(&self, work: bool, threshold: usize) -> bool {
        work || self.entries >= threshold
    }

    /// No commit this turn: held ops wait from now (if they did not already).
    pub(super) fn wait_from(&mut self, now: Instant) {
        if !self.ops.is_empty() && self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// Whether ops are held.
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The held ops, for a commit.
    pub(super) fn take(&mut self) -> Vec<Op> {
        self.entries = 0;
        std::mem::take(&mut self.ops)
    }

    /// A commit was written at `now` (`appended`: it held appends; `ok`: it succeeded):
    /// their removals are expected for a while, if removals flow.
    pub(super) fn committed(&mut self, now: Instant, appended: bool, ok: bool) {
        self.since = None;
        if appended && ok && self.flow {
            self.expect_until = Some(now + self.wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WebhookId;

    fn removal(n: usize) -> Op {
        Op::Remove {
            webhook: WebhookId(1),
            seqs: (0..n as u64).collect(),
            done: tokio::sync::oneshot::channel().0,
        }
    }

    const W: Duration = Duration::from_secs(1);

    #[test]
    fn a_removal_alone_waits_for_other_work_or_the_wait() {
        let t0 = Instant::now();
        let mut l = LazyRemovals::new(W);
        assert!(l.may_sleep(false));
        assert_eq!(l.deadline(t0, false), None);
        l.hold([removal(1)]);
        assert!(!l.must_commit(false, 32));
        l.wait_from(t0);
        assert!(!l.may_sleep(false));
        assert_eq!(l.deadline(t0, false), Some(t0 + W));
        // Waiting longer does not move the deadline.
        l.wait_from(t0 + Duration::from_millis(300));
        assert_eq!(l.deadline(t0, false), Some(t0 + W));
        assert!(l.due_at_deadline());
        // Other work takes it along.
        assert!(l.must_commit(true, 32));
        assert_eq!(l.take().len(), 1);
        l.committed(t0 + W, false, true);
        assert!(l.may_sleep(false));
    }

    #[test]
    fn enough_removals_are_written_at_once() {
        let t0 = Instant::now();
        let mut l = LazyRemovals::new(W);
        assert_eq!(l.deadline(t0, true), Some(t0));
        assert!(!l.may_sleep(true));
        l.hold([removal(20), removal(12)]);
        assert!(l.must_commit(false, 32));
        assert!(!l.must_commit(false, 33));
    }

    #[test]
    fn after_appends_their_removals_are_expected_until_the_wait_ends() {
        let t0 = Instant::now();
        let mut l = LazyRemovals::new(W);
        l.committed(t0, true, true);
        assert!(!l.may_sleep(false));
        assert_eq!(l.deadline(t0, false), Some(t0 + W));
        // Nothing held: the deadline alone is no reason to commit.
        assert!(!l.due_at_deadline());
        l.tick(t0 + W);
        assert!(l.may_sleep(false));
        // A failed commit expects nothing.
        l.committed(t0, true, false);
        assert!(l.may_sleep(false));
    }

    #[test]
    fn held_ops_and_an_expectation_take_the_earlier_deadline() {
        let t0 = Instant::now();
        let mut l = LazyRemovals::new(W);
        l.committed(t0, true, true);
        l.hold([removal(1)]);
        l.wait_from(t0 + Duration::from_millis(500));
        assert_eq!(l.deadline(t0, false), Some(t0 + W));
    }

    #[test]
    fn no_expectation_while_appends_bring_no_removals() {
        let t0 = Instant::now();
        let mut l = LazyRemovals::new(W);
        // A wait ran out with no removal and nothing held: removals do not flow.
        l.saw_removals(false, true);
        l.committed(t0, true, true);
        assert!(l.may_sleep(false));
        // A removal comes: they flow again.
        l.saw_removals(true, false);
        l.committed(t0, true, true);
        assert_eq!(l.deadline(t0, false), Some(t0 + W));
    }
}
