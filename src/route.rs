//! Which webhooks want an event: device globs, status and event selections, the
//! change-only filter (a status equal to the last one forwarded is not forwarded again) and
//! per-path deadbands (a number that moved less than the deadband is not forwarded).

use crate::catalog::{self, Kind};
use crate::config::WebhookSettings;
use crate::event::Event;
use crate::store::WebhookId;
use crate::value::devices::DeviceSelector;
use serde_json::Value;
use std::collections::HashMap;

/// Most (device, path) values remembered per webhook for change-only filtering; past it
/// the memory is cleared (the next value of each path is forwarded once more).
const MAX_REMEMBERED: usize = 100_000;

struct Route {
    id: WebhookId,
    enabled: bool,
    devices: DeviceSelector,
    statuses: Vec<String>,
    events: Vec<String>,
    /// Generic status pattern → least change forwarded.
    deadbands: Vec<(String, f64)>,
    last: HashMap<(String, String), Value>,
}

/// What the change-only and deadband filters say of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    Unchanged,
    Deadband,
}

impl Route {
    fn selects_device(&self, e: &Event) -> bool {
        self.enabled && self.devices.matches(&e.device)
    }

    fn selects_path(&self, kind: Kind, generic: &str) -> bool {
        match kind {
            Kind::Status => &self.statuses,
            Kind::Event => &self.events,
        }
        .iter()
        .any(|p| catalog::pattern_matches(p, generic))
    }

    /// Whether a status value goes out (change-only, deadband), remembering it when it
    /// does. A full sync always goes out (it is the receiver's resync point); a removal
    /// (`null`) goes out and is forgotten, so the path's next value is new again.
    fn admit(
        &mut self,
        device: &str,
        path: &str,
        generic: &str,
        value: &Value,
        full_sync: bool,
    ) -> Admit {
        let key = (device.to_string(), path.to_string());
        if value.is_null() {
            self.last.remove(&key);
            return Admit::Yes;
        }
        if !full_sync {
            if let Some(last) = self.last.get(&key) {
                if last == value {
                    return Admit::Unchanged;
                }
                let band = self
                    .deadbands
                    .iter()
                    .find(|(p, _)| catalog::pattern_matches(p, generic))
                    .map(|(_, d)| *d);
                if let (Some(band), Some(a), Some(b)) = (band, last.as_f64(), value.as_f64()) {
                    // (A hair of tolerance: 22.5 → 22.8 is a change of 0.3.)
                    if (a - b).abs() < band - 1e-9 {
                        return Admit::Deadband;
                    }
                }
            }
        }
        if self.last.len() >= MAX_REMEMBERED && !self.last.contains_key(&key) {
            self.last.clear();
        }
        self.last.insert(key, value.clone());
        Admit::Yes
    }
}

/// Why an event went to no webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filtered {
    /// No (enabled) webhook selects this device and path.
    NotSelected = 0,
    /// Every webhook that selects it already got this value.
    Unchanged = 1,
    /// It moved less than the deadband of every webhook that selects it.
    Deadband = 2,
}

impl Filtered {
    /// The `reason` label of `roomhook_events_filtered_total`.
    pub fn label(self) -> &'static str {
        match self {
            Filtered::NotSelected => "not_selected",
            Filtered::Unchanged => "unchanged",
            Filtered::Deadband => "deadband",
        }
    }
}

fn deadbands(w: &WebhookSettings) -> Vec<(String, f64)> {
    w.filters
        .iter()
        .filter_map(|f| f.deadband.map(|d| (f.pattern.clone(), d)))
        .collect()
}

/// Routes events to webhooks; owns the change-only memory.
pub(crate) struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router for these webhooks.
    pub(crate) fn new<'a>(
        webhooks: impl IntoIterator<Item = (WebhookId, &'a WebhookSettings)>,
    ) -> Self {
        let mut router = Self { routes: Vec::new() };
        for (id, w) in webhooks {
            router.upsert(id, w);
        }
        router
    }

    /// Adds a webhook, or changes its selection (keeping its change-only memory).
    pub(crate) fn upsert(&mut self, id: WebhookId, w: &WebhookSettings) {
        match self.routes.iter_mut().find(|r| r.id == id) {
            Some(r) => {
                r.enabled = w.enabled;
                r.devices = w.devices.clone();
                r.statuses = w.statuses.clone();
                r.events = w.events.clone();
                r.deadbands = deadbands(w);
            }
            None => self.routes.push(Route {
                id,
                enabled: w.enabled,
                devices: w.devices.clone(),
                statuses: w.statuses.clone(),
                events: w.events.clone(),
                deadbands: deadbands(w),
                last: HashMap::new(),
            }),
        }
    }

    /// Removes a webhook.
    pub fn remove(&mut self, id: WebhookId) {
        self.routes.retain(|r| r.id != id);
    }

    /// Forgets every remembered value (after a failed commit: the input comes again).
    pub(crate) fn forget(&mut self) {
        for r in &mut self.routes {
            r.last.clear();
        }
    }

    /// The webhooks this event goes to (and remembers it as forwarded), or why none. An
    /// event of several changes is narrowed per webhook to the paths it selects (and, unless
    /// a full sync, that changed): `Some(event)` is that webhook's part, `None` the whole.
    pub(crate) fn route(&mut self, e: &Event) -> Result<Vec<(WebhookId, Option<Event>)>, Filtered> {
        let mut targets = Vec::new();
        let mut selected = false;
        let mut banded = false;
        if e.more.is_empty() && !e.full_sync {
            let generic = catalog::generic_path(&e.path);
            for r in &mut self.routes {
                if !(r.selects_device(e) && r.selects_path(e.kind, &generic)) {
                    continue;
                }
                selected = true;
                if e.kind == Kind::Status {
                    match r.admit(&e.device, &e.path, &generic, &e.value, e.full_sync) {
                        Admit::Yes => {}
                        Admit::Unchanged => continue,
                        Admit::Deadband => {
                            banded = true;
                            continue;
                        }
                    }
                }
                targets.push((r.id, None));
            }
        } else {
            let generic: Vec<String> = e.changes().map(|(p, _)| catalog::generic_path(p)).collect();
            // Only a full sync needs the set of paths it carries.
            let present: std::collections::HashSet<&str> = if e.full_sync {
                e.changes().map(|(p, _)| p).collect()
            } else {
                std::collections::HashSet::new()
            };
            for r in &mut self.routes {
                if !r.selects_device(e) {
                    continue;
                }
                if e.full_sync {
                    // A full sync is everything the device has: what it no longer reports
                    // is forgotten, so that it counts as new when it comes back.
                    r.last
                        .retain(|(d, p), _| d != &e.device || present.contains(p.as_str()));
                }
                let mut part = Vec::new();
                for ((path, value), g) in e.changes().zip(&generic) {
                    if !r.selects_path(e.kind, g) {
                        continue;
                    }
                    selected = true;
                    match r.admit(&e.device, path, g, value, e.full_sync) {
                        Admit::Yes => part.push((path.to_string(), value.clone())),
                        Admit::Unchanged => {}
                        Admit::Deadband => banded = true,
                    }
                }
                if part.len() == generic.len() {
                    targets.push((r.id, None));
                } else if let Some(narrowed) = Event::with_changes(
                    e.device.clone(),
                    e.workspace.clone(),
                    e.ts_ms,
                    e.full_sync,
                    part,
                ) {
                    targets.push((r.id, Some(narrowed)));
                }
            }
        }
        match (targets.is_empty(), selected) {
            (false, _) => Ok(targets),
            (true, true) if banded => Err(Filtered::Deadband),
            (true, true) => Err(Filtered::Unchanged),
            (true, false) => Err(Filtered::NotSelected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(device: &str, path: &str, v: i64) -> Event {
        Event {
            device: device.into(),
            workspace: None,
            path: path.into(),
            kind: catalog::lookup(path)
                .map(|e| e.kind)
                .unwrap_or(Kind::Status),
            value: Value::from(v),
            ts_ms: 0,
            full_sync: false,
            more: Vec::new(),
        }
    }

    fn settings(devices: &[&str], statuses: &[&str]) -> WebhookSettings {
        let text = format!(
            "[gateway]\ndata_dir='d'\n[[webhooks]]\nname='a'\nurl='https://x/'\nauth='none'\ndevices={devices:?}\nstatuses={statuses:?}\n"
        );
        let s = crate::config::load_str(std::path::Path::new("t.toml"), &text).unwrap();
        s.webhooks[0].clone()
    }

    fn ids(
        r: Result<Vec<(WebhookId, Option<Event>)>, Filtered>,
    ) -> Result<Vec<WebhookId>, Filtered> {
        r.map(|t| t.into_iter().map(|(id, _)| id).collect())
    }

    #[test]
    fn a_deadband_holds_small_moves_of_a_number_per_webhook() {
        let text = "[gateway]\ndata_dir='d'\n[[webhooks]]\nname='a'\nurl='https://x/'\nauth='none'\nstatuses=['RoomAnalytics.*']\n[webhooks.filters.'RoomAnalytics.AmbientTemperature']\ndeadband = 0.3\n";
        let a = crate::config::load_str(std::path::Path::new("t.toml"), text).unwrap();
        let b = settings(&["*"], &["RoomAnalytics.AmbientTemperature"]);
        let mut r = Router::new([(WebhookId(1), &a.webhooks[0]), (WebhookId(2), &b)]);
        let t = "RoomAnalytics.AmbientTemperature";
        let temp = |v: f64| Event {
            value: Value::from(v),
            ..ev("room-1", t, 0)
        };
        let both = Ok(vec![WebhookId(1), WebhookId(2)]);
        assert_eq!(ids(r.route(&temp(22.5))), both);
        // Within the band for webhook 1 (measured from the last value it got).
        assert_eq!(ids(r.route(&temp(22.6))), Ok(vec![WebhookId(2)]));
        assert_eq!(ids(r.route(&temp(22.7))), Ok(vec![WebhookId(2)]));
        assert_eq!(ids(r.route(&temp(22.8))), both);
        assert_eq!(ids(r.route(&temp(22.8))), Err(Filtered::Unchanged));
        assert_eq!(ids(r.route(&temp(22.6))), Ok(vec![WebhookId(2)]));
        let mut only_a = Router::new([(WebhookId(1), &a.webhooks[0])]);
        assert!(only_a.route(&temp(20.0)).is_ok());
        assert_eq!(ids(only_a.route(&temp(20.1))), Err(Filtered::Deadband));
        // Other paths of the webhook are change-only as before.
        let pc = "RoomAnalytics.PeopleCount.Current";
        assert!(only_a.route(&ev("room-1", pc, 3)).is_ok());
        assert!(only_a.route(&ev("room-1", pc, 4)).is_ok());
    }

    #[test]
    fn routes_by_device_and_path_and_filters_unchanged() {
        let a = settings(&["room-*"], &["RoomAnalytics.*"]);
        let b = settings(&["*"], &["RoomAnalytics.PeopleCount.Current"]);
        let mut r = Router::new([(WebhookId(1), &a), (WebhookId(2), &b)]);
        let pc = "RoomAnalytics.PeopleCount.Current";
        assert_eq!(
            ids(r.route(&ev("room-1", pc, 1))),
            Ok(vec![WebhookId(1), WebhookId(2)])
        );
        assert_eq!(ids(r.route(&ev("room-1", pc, 1))), Err(Filtered::Unchanged));
        assert_eq!(
            ids(r.route(&ev("room-1", pc, 2))),
            Ok(vec![WebhookId(1), WebhookId(2)])
        );
        assert_eq!(ids(r.route(&ev("hall", pc, 2))), Ok(vec![WebhookId(2)]));
        assert_eq!(
            ids(r.route(&ev("hall", "RoomAnalytics.RelativeHumidity", 40))),
            Err(Filtered::NotSelected)
        );
        let mut sync = ev("room-1", pc, 2);
        sync.full_sync = true;
        assert_eq!(ids(r.route(&sync)), Ok(vec![WebhookId(1), WebhookId(2)]));

        // Changing a selection keeps the memory; removing a webhook stops its routing.
        let mut a2 = a.clone();
        a2.devices = DeviceSelector::parse(vec!["hall".into()]).unwrap();
        r.upsert(WebhookId(1), &a2);
        assert_eq!(ids(r.route(&ev("room-1", pc, 3))), Ok(vec![WebhookId(2)]));
        assert_eq!(ids(r.route(&ev("hall", pc, 2))), Ok(vec![WebhookId(1)]));
        r.upsert(WebhookId(1), &a2);
        assert_eq!(ids(r.route(&ev("hall", pc, 2))), Err(Filtered::Unchanged));
        r.remove(WebhookId(2));
        assert_eq!(
            ids(r.route(&ev("room-1", pc, 4))),
            Err(Filtered::NotSelected)
        );
        a2.enabled = false;
        r.upsert(WebhookId(1), &a2);
        assert_eq!(ids(r.route(&ev("hall", pc, 5))), Err(Filtered::NotSelected));
    }

    #[test]
    fn full_syncs_and_removals_are_narrowed_per_webhook() {
        let a = settings(&["*"], &["RoomAnalytics.PeopleCount.Current"]);
        let b = settings(&["*"], &["RoomAnalytics.*", "Peripherals.*"]);
        let mut r = Router::new([(WebhookId(1), &a), (WebhookId(2), &b)]);
        let pc = "RoomAnalytics.PeopleCount.Current";
        let nav = "Peripherals.ConnectedDevice[1115].RoomAnalytics.AmbientTemperature";
        assert!(r.route(&ev("room-1", pc, 2)).is_ok());
        let sync = Event::with_changes(
            "room-1".into(),
            None,
            0,
            true,
            vec![
                (pc.into(), Value::from(2)),
                (nav.into(), Value::from(22.5)),
                ("Standby.State".into(), Value::from("Off")),
            ],
        )
        .unwrap();
        let t = r.route(&sync).unwrap();
        assert_eq!(t.len(), 2);
        // Webhook 1 gets only its path, although unchanged: a full sync is a resync point.
        let part = t[0].1.as_ref().unwrap();
        assert_eq!((t[0].0, part.changes().count()), (WebhookId(1), 1));
        assert!(part.full_sync);
        let part = t[1].1.as_ref().unwrap();
        assert_eq!(
            part.changes().map(|(p, _)| p).collect::<Vec<_>>(),
            vec![pc, nav]
        );
        // After the sync, the same values are unchanged; a removal goes out and is forgotten.
        assert_eq!(ids(r.route(&ev("room-1", pc, 2))), Err(Filtered::Unchanged));
        let mut gone = ev("room-1", nav, 0);
        gone.value = Value::Null;
        assert_eq!(ids(r.route(&gone)), Ok(vec![WebhookId(2)]));
        let mut back = ev("room-1", nav, 0);
        back.value = Value::from(22.5);
        assert_eq!(ids(r.route(&back)), Ok(vec![WebhookId(2)]));
        let only_standby = Event::with_changes(
            "room-1".into(),
            None,
            0,
            true,
            vec![("Standby.State".into(), Value::from("Off"))],
        )
        .unwrap();
        assert_eq!(ids(r.route(&only_standby)), Err(Filtered::NotSelected));
        // A full sync without a path the memory holds forgets it: the same value is new
        // again afterwards (the device lost and regained it while roomhook was away).
        let without_nav = Event::with_changes(
            "room-1".into(),
            None,
            0,
            true,
            vec![(pc.into(), Value::from(2))],
        )
        .unwrap();
        assert!(r.route(&without_nav).is_ok());
        assert_eq!(ids(r.route(&back)), Ok(vec![WebhookId(2)]));
        assert_eq!(ids(r.route(&back)), Err(Filtered::Unchanged));
    }
}
