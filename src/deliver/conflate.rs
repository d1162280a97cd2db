//! Conflation of one webhook (`conflate = true`): a queued status value that a newer value
//! of the same device and path supersedes leaves unsent, so that after an outage the
//! receiver gets each status's current value, not its history. Events, full syncs and
//! messages of several changes are never conflated; per-device order is kept (only older
//! values leave). Plain logic: no I/O, no clock.

use crate::catalog::Kind;
use crate::event::Event;
use std::collections::HashMap;

/// Most (device, path) pairs remembered; past it the memory starts again (a superseded
/// value may then go out once).
const MAX_REMEMBERED: usize = 100_000;

/// The newest entry of each (device, path) in the delivery loop's window.
#[derive(Debug, Default)]
pub(crate) struct Conflation {
    latest: HashMap<(String, String), u64>,
}

/// Whether a newer value of the same device and path may replace this entry.
pub(crate) fn conflatable(e: &Event) -> bool {
    e.kind == Kind::Status && !e.full_sync && e.more.is_empty()
}

impl Conflation {
    /// An entry joined the window; returns the entry it supersedes (the previous newest of
    /// its device and path), which should leave the window if it is not in flight.
    pub(crate) fn joined(&mut self, seq: u64, e: &Event) -> Option<u64> {
        if !conflatable(e) {
            return None;
        }
        let key = (e.device.clone(), e.path.clone());
        if self.latest.len() >= MAX_REMEMBERED && !self.latest.contains_key(&key) {
            self.latest.clear();
        }
        let last = self.latest.entry(key).or_insert(seq);
        if *last >= seq {
            return None;
        }
        Some(std::mem::replace(last, seq))
    }

    /// Whether a newer value of the entry's device and path is in the window.
    pub(crate) fn superseded(&self, seq: u64, e: &Event) -> bool {
        conflatable(e)
            && self
                .latest
                .get(&(e.device.clone(), e.path.clone()))
                .is_some_and(|l| *l > seq)
    }

    /// The entry left the window (delivered, dead-lettered, expired): forgotten if it was
    /// the newest of its device and path.
    pub(crate) fn left(&mut self, seq: u64, e: &Event) {
        if !conflatable(e) {
            return;
        }
        let key = (e.device.clone(), e.path.clone());
        if self.latest.get(&key) == Some(&seq) {
            self.latest.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn status(device: &str, path: &str, v: i64) -> Event {
        Event {
            device: device.into(),
            workspace: None,
            path: path.into(),
            kind: Kind::Status,
            value: Value::from(v),
            ts_ms: 0,
            full_sync: false,
            more: Vec::new(),
        }
    }

    #[test]
    fn a_newer_value_of_the_same_device_and_path_supersedes_the_older() {
        let mut c = Conflation::default();
        let a = status("d1", "RoomAnalytics.PeopleCount.Current", 1);
        let b = status("d1", "RoomAnalytics.PeopleCount.Current", 2);
        assert_eq!(c.joined(1, &a), None);
        assert!(!c.superseded(1, &a));
        assert_eq!(c.joined(5, &b), Some(1));
        assert!(c.superseded(1, &a));
        assert!(!c.superseded(5, &b));
        // An older entry read again (a restarted loop) supersedes nothing.
        assert_eq!(c.joined(1, &a), None);
        assert!(!c.superseded(5, &b));
    }

    #[test]
    fn other_devices_paths_events_and_full_syncs_are_never_superseded() {
        let mut c = Conflation::default();
        let a = status("d1", "RoomAnalytics.PeopleCount.Current", 1);
        assert_eq!(c.joined(1, &a), None);
        assert_eq!(
            c.joined(2, &status("d2", "RoomAnalytics.PeopleCount.Current", 1)),
            None
        );
        assert_eq!(
            c.joined(3, &status("d1", "RoomAnalytics.AmbientTemperature", 1)),
            None
        );
        let mut event = status("d1", "UserInterface.Extensions.Widget.Action", 1);
        event.kind = Kind::Event;
        assert_eq!(c.joined(4, &event), None);
        assert_eq!(c.joined(6, &event), None);
        assert!(!c.superseded(4, &event));
        let mut sync = status("d1", "RoomAnalytics.PeopleCount.Current", 3);
        sync.full_sync = true;
        assert_eq!(c.joined(7, &sync), None);
        assert!(!c.superseded(1, &a));
        let mut removal = a.clone();
        removal
            .more
            .push(("RoomAnalytics.PeopleCount.Capacity".into(), Value::Null));
        assert_eq!(c.joined(8, &removal), None);
        assert!(!c.superseded(1, &a));
    }

    #[test]
    fn the_newest_is_forgotten_when_it_leaves_and_not_before() {
        let mut c = Conflation::default();
        let a = status("d1", "p", 1);
        c.joined(1, &a);
        c.joined(2, &a);
        c.left(1, &a);
        assert!(c.superseded(1, &a));
        c.left(2, &a);
        assert!(c.latest.is_empty());
        assert_eq!(c.joined(3, &a), None);
    }
}
