//! Liveness marks for the systemd watchdog: every long-lived loop (the store writer, each
//! delivery loop, each source) says when it starts a step and when it waits by choice (for
//! input, a back-off, a pacing delay). A loop that is in one step for too long is stalled.
//! This is a leaf: the loops mark, the daemon's watchdog reads the register.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Milliseconds since the first use in this process, plus one (0 means "resting").
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

struct Beat {
    name: String,
    /// When the current step began ([`now_ms`]), or 0 while the loop waits by choice.
    busy_since: AtomicU64,
}

/// One loop's mark. Cheap to clone; dropped with the loop.
#[derive(Clone)]
pub(crate) struct Pulse(Arc<Beat>);

impl Pulse {
    /// A mark not (yet) in any register.
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Pulse(Arc::new(Beat {
            name: name.into(),
            busy_since: AtomicU64::new(0),
        }))
    }

    /// The loop starts a step (one that must end soon on its own).
    pub(crate) fn step(&self) {
        self.0.busy_since.store(now_ms(), Ordering::Relaxed);
    }

    /// The loop waits by choice (for input, a timer, the network with a timeout).
    pub(crate) fn rest(&self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }

    /// Awaits `f` resting: a wait on another part (the store writer, a bounded network
    /// send) whose own mark, or own timeout, tells whether it hangs. A full disk that the
    /// writer waits out must not make every loop waiting on it look stuck.
    pub(crate) async fn waiting<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rest();
        let out = f.await;
        self.step();
        out
    }

    /// How long the current step has lasted (`None` while resting).
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        match self.0.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// The loop's name, as the watchdog reports it.
    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }
}

/// The register of the loops that must turn. Loops that end (a webhook removed, a source
/// stopped) leave it by dropping their [`Pulse`].
#[derive(Clone, Default)]
pub(crate) struct Pulses(Arc<Mutex<Vec<Weak<Beat>>>>);

impl Pulses {
    /// A new mark named `name`, in the register.
    pub(crate) fn register(&self, name: impl Into<String>) -> Pulse {
        let p = Pulse::new(name);
        self.add(&p);
        p
    }

    /// Puts an existing mark in the register.
    pub(crate) fn add(&self, p: &Pulse) {
        if let Ok(mut list) = self.0.lock() {
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&p.0));
        }
    }

    /// The loops in one step for longer than `limit`, with how long.
    pub(crate) fn stalled(&self, limit: Duration) -> Vec<(String, Duration)> {
        let Ok(mut list) = self.0.lock() else {
            return Vec::new();
        };
        list.retain(|w| w.strong_count() > 0);
        list.iter()
            .filter_map(|w| w.upgrade().map(Pulse))
            .filter_map(|p| {
                p.busy_for()
                    .filter(|d| *d > limit)
                    .map(|d| (p.name().to_string(), d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_lasts_is_stalled_and_a_rest_is_not() {
        let pulses = Pulses::default();
        let a = pulses.register("a");
        let b = pulses.register("b");
        a.step();
        b.step();
        b.rest();
        std::thread::sleep(Duration::from_millis(30));
        let stalled = pulses.stalled(Duration::from_millis(10));
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(stalled[0].0, "a");
        assert!(stalled[0].1 >= Duration::from_millis(30));
        assert!(pulses.stalled(Duration::from_secs(10)).is_empty());
        a.step();
        assert!(pulses.stalled(Duration::from_millis(10)).is_empty());
    }

    #[test]
    fn a_dropped_pulse_leaves_the_register() {
        let pulses = Pulses::default();
        let a = pulses.register("a");
        a.step();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pulses.stalled(Duration::from_millis(5)).len(), 1);
        drop(a);
        assert!(pulses.stalled(Duration::from_millis(5)).is_empty());
    }
}
