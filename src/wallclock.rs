//! Ages of wall-clock stamps (`max_queue_age`, `orphan_retention`), less the wall clock's
//! forward jumps. A gateway without a real-time clock boots in 1970, or at the time it last
//! saved (fake-hwclock), and its clock jumps to today when NTP first answers: measured
//! across that jump, everything stamped before it would be years (or the hours it was off)
//! old and expire at once. [`Jumps`] compares how far the wall clock moved between two
//! readings with how far the monotonic clock moved, records a forward jump of more than
//! [`JUMP`], and ages a stamp made before a jump as if the jump had not happened.
//!
//! Only jumps seen while this process runs are taken out: across a restart there is no
//! monotonic reference, and a jump while roomhook was stopped cannot be told from the time
//! the gateway was off, which counts towards an event's age as it always has. A jump while
//! it runs is taken out of every stamp made before it, those kept from an earlier run too,
//! so after a boot at the last saved time the time the gateway was off does not count for
//! them: wrong on the side of keeping. A backward jump is not corrected (it makes stamps
//! look younger: they are kept longer, never lost).
//! Plain, clock-injected logic; [`ages`] is the process-wide reading the daemon uses.

use crate::ratelog::RateLog;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The smallest forward step taken for a jump. NTP slews drift (at most 0.5 ms a second,
/// under 2 s between the hourly readings the orphan check takes) and steps corrections of
/// seconds; a clock restarted at its last saved time is behind by the minutes or hours the
/// gateway was off, and those must not age anything.
pub(crate) const JUMP: Duration = Duration::from_secs(60);

/// Jumps remembered; past that the two oldest merge into one, which ages the stamps between
/// them less than it should, never more.
const KEPT: usize = 16;

/// One reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// Unix milliseconds.
    pub(crate) wall_ms: i64,
    /// The monotonic clock at the same moment.
    pub(crate) mono: Instant,
}

impl Reading {
    /// Both clocks now.
    pub(crate) fn now() -> Self {
        Self {
            wall_ms: crate::timefmt::now_ms(),
            mono: Instant::now(),
        }
    }
}

/// A forward jump of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Jump {
    /// The latest wall-clock time a stamp made before the jump can carry (unix ms).
    before_ms: i64,
    /// How far the clock jumped, in milliseconds.
    by_ms: i64,
}

/// The forward jumps seen between the readings taken so far.
#[derive(Debug, Default)]
pub(crate) struct Jumps {
    last: Option<Reading>,
    /// Oldest first.
    jumps: Vec<Jump>,
}

impl Jumps {
    /// Takes a reading; returns how far the wall clock jumped forward since the last one,
    /// when that is more than [`JUMP`] beyond what the monotonic clock counted.
    pub(crate) fn observe(&mut self, now: Reading) -> Option<Duration> {
        let last = self.last.replace(now)?;
        let counted = now.mono.saturating_duration_since(last.mono);
        let counted_ms = i64::try_from(counted.as_millis()).unwrap_or(i64::MAX);
        let by_ms = now
            .wall_ms
            .saturating_sub(last.wall_ms)
            .saturating_sub(counted_ms);
        if by_ms <= JUMP.as_millis() as i64 {
            return None;
        }
        // The jump came somewhere between the two readings: a stamp made before it is at
        // most what the old clock would read now. (A stamp made after it but close to the
        // last reading may be taken for an earlier one: it is kept longer, never less.)
        self.jumps.push(Jump {
            before_ms: now.wall_ms - by_ms,
            by_ms,
        });
        if self.jumps.len() > KEPT {
            let first = self.jumps.remove(0);
            self.jumps[0].by_ms = self.jumps[0].by_ms.saturating_add(first.by_ms);
        }
        Some(Duration::from_millis(by_ms as u64))
    }

    /// Ages as of `now_ms` (the wall clock of the latest reading).
    pub(crate) fn ages(&self, now_ms: i64) -> Ages {
        Ages {
            now_ms,
            jumps: self.jumps.clone(),
        }
    }
}

/// Ages of wall-clock stamps as of one reading.
#[derive(Debug, Clone)]
pub(crate) struct Ages {
    now_ms: i64,
    jumps: Vec<Jump>,
}

impl Ages {
    /// How old a wall-clock stamp (unix ms) is, in milliseconds, not counting the jumps
    /// after it. Negative for a stamp ahead of the clock.
    pub(crate) fn age_ms(&self, stamp_ms: i64) -> i64 {
        // Each jump moves the stamps made before it onto the clock after it, oldest jump
        // first (a later jump's `before_ms` is on the clock the earlier one left).
        let moved = self.jumps.iter().fold(stamp_ms, |t, j| {
            if t <= j.before_ms {
                t.saturating_add(j.by_ms)
            } else {
                t
            }
        });
        self.now_ms.saturating_sub(moved)
    }
}

/// The process's jumps, and the log line that reports one.
struct Clock {
    jumps: Jumps,
    log: RateLog,
}

static CLOCK: LazyLock<Mutex<Clock>> = LazyLock::new(|| {
    Mutex::new(Clock {
        jumps: Jumps::default(),
        log: RateLog::new(Duration::from_secs(3600)),
    })
});

/// Reads the clocks now (a jump since the last reading is noted and logged) and returns
/// the ages as of now.
pub(crate) fn ages() -> Ages {
    let mut clock = CLOCK.lock().unwrap_or_else(|p| p.into_inner());
    // Read under the lock, so that the readings reach `observe` in the order taken.
    let now = Reading::now();
    if let Some(by) = clock.jumps.observe(now) {
        if let Some(suppressed) = clock.log.check(now.mono) {
            tracing::warn!(
                "the wall clock jumped {} ahead (a first NTP sync on a gateway without a real-time clock?): events and orphaned queues from before it do not age by it (max_queue_age, orphan_retention){}",
                crate::timefmt::human_duration(Duration::from_secs(by.as_secs())),
                if suppressed > 0 {
                    format!("; {suppressed} jumps since the last such line not logged")
                } else {
                    String::new()
                }
            );
        }
    }
    clock.jumps.ages(now.wall_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn at(t0: Reading, wall_ms: i64, mono: Duration) -> Reading {
        Reading {
            wall_ms: t0.wall_ms + wall_ms,
            mono: t0.mono + mono,
        }
    }

    #[test]
    fn a_clock_that_runs_with_the_monotonic_one_has_no_jumps() {
        let t0 = Reading {
            wall_ms: 1_700_000_000_000,
            mono: Instant::now(),
        };
        let mut j = Jumps::default();
        assert_eq!(j.observe(t0), None);
        // NTP's corrections: a slewed second an hour, a stepped half minute.
        assert_eq!(
            j.observe(at(t0, 3_601_000, Duration::from_secs(3600))),
            None
        );
        assert_eq!(
            j.observe(at(t0, 7_231_000, Duration::from_secs(7200))),
            None
        );
        let ages = j.ages(t0.wall_ms + 7_231_000);
        assert_eq!(ages.age_ms(t0.wall_ms), 7_231_000);
    }

    #[test]
    fn a_forward_jump_is_not_counted_in_the_age_of_what_was_stamped_before_it() {
        let t0 = Reading {
            wall_ms: 0,
            mono: Instant::now(),
        };
        let mut j = Jumps::default();
        j.observe(t0);
        let synced = at(t0, 2 * 365 * DAY_MS + 5_000, Duration::from_secs(5));
        assert_eq!(
            j.observe(synced),
            Some(Duration::from_millis(2 * 365 * DAY_MS as u64))
        );
        let ages = j.ages(synced.wall_ms + 1_000);
        assert_eq!(ages.age_ms(t0.wall_ms + 2_000), 4_000);
        // Stamped after it (on the new clock): aged as it reads.
        assert_eq!(ages.age_ms(synced.wall_ms), 1_000);
        // Ahead of the clock before the jump (kept from a run whose clock was right): the
        // jump is not theirs to take out, their age is what the clock says.
        assert_eq!(ages.age_ms(synced.wall_ms - DAY_MS), DAY_MS + 1_000);
    }

    #[test]
    fn two_jumps_are_both_taken_out_of_a_stamp_made_before_the_first() {
        let t0 = Reading {
            wall_ms: 1_600_000_000_000,
            mono: Instant::now(),
        };
        let mut j = Jumps::default();
        j.observe(t0);
        j.observe(at(t0, 3_600_000 + 10_000, Duration::from_secs(10)));
        let second = at(t0, 3_600_000 + DAY_MS + 20_000, Duration::from_secs(20));
        j.observe(second);
        let ages = j.ages(second.wall_ms);
        assert_eq!(ages.age_ms(t0.wall_ms), 20_000);
        assert_eq!(ages.age_ms(t0.wall_ms + 3_600_000 + 15_000), 5_000);
    }

    #[test]
    fn past_the_jumps_kept_the_oldest_merge_and_nothing_ages_more() {
        let t0 = Reading {
            wall_ms: 1_600_000_000_000,
            mono: Instant::now(),
        };
        let mut j = Jumps::default();
        j.observe(t0);
        let n = KEPT as i64 + 4;
        for k in 1..=n {
            j.observe(at(t0, k * (DAY_MS + 1_000), Duration::from_secs(k as u64)));
        }
        assert_eq!(j.jumps.len(), KEPT);
        let ages = j.ages(t0.wall_ms + n * (DAY_MS + 1_000));
        assert_eq!(ages.age_ms(t0.wall_ms), n * 1_000);
    }

    #[test]
    fn a_backward_jump_is_not_recorded() {
        let t0 = Reading {
            wall_ms: 1_600_000_000_000,
            mono: Instant::now(),
        };
        let mut j = Jumps::default();
        j.observe(t0);
        assert_eq!(j.observe(at(t0, -DAY_MS, Duration::from_secs(1))), None);
        assert!(j.jumps.is_empty());
    }
}
