//! The approved statuses and events (Webex xAPI names, without the `Status.` prefix) and
//! their value types: what a webhook may select and how source values are coerced.

use serde_json::Value;

/// Whether a catalog entry is a status (a value that changes) or an event (something that happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A status value; forwarded as `type: "status"` with `changes.updated`.
    Status,
    /// An event; forwarded as `type: "events"` with `events[]`.
    Event,
}

/// The value type of a catalog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// A whole number (numbers and numeric strings are accepted on input).
    Integer,
    /// A decimal number (numbers and numeric strings are accepted on input).
    Decimal,
    /// One of a fixed set of strings (matched case-insensitively on input; booleans map to
    /// the first two values when the set is a yes/no pair).
    Enum(&'static [&'static str]),
    /// Free text.
    Text,
    /// An event payload: a JSON object of named parameters (or any JSON value).
    Object,
}

/// One approved status or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Dotted path; array nodes written `[*]` (e.g. `Peripherals.ConnectedDevice[*].…`).
    pub(crate) path: &'static str,
    /// Status or event.
    pub(crate) kind: Kind,
    /// What values look like.
    pub value: ValueType,
}

const TRUE_FALSE: &[&str] = &["True", "False"];
const YES_NO: &[&str] = &["Yes", "No", "Unknown"];

const fn status(path: &'static str, value: ValueType) -> Entry {
    Entry {
        path,
        kind: Kind::Status,
        value,
    }
}

const fn event(path: &'static str) -> Entry {
    Entry {
        path,
        kind: Kind::Event,
        value: ValueType::Object,
    }
}

/// The approved list, in the order the README documents it.
///
/// Paths and value types are those of Cisco's xAPI reference (roomos.cisco.com/xapi, whose
/// schemas `cisco-ce/roomos.cisco.com` publishes per release under `schemas/`). Where the
/// reference types a reading `String` but it carries a number (`"22.5"`), the catalog says
/// decimal and accepts both on input; where the reference gives the string a sentinel of its
/// own (`"Unavailable"` for the `InsideRoom`/`OutsideRoom` readings), the catalog keeps it text,
/// so that the sentinel is forwarded rather than rejected.
pub(crate) const ENTRIES: &[Entry] = &[
    status("RoomAnalytics.PeopleCount.Current", ValueType::Integer),
    status("RoomAnalytics.PeopleCount.Capacity", ValueType::Integer),
    status("RoomAnalytics.PeoplePresence", ValueType::Enum(YES_NO)),
    status("RoomAnalytics.UltrasoundPresence", ValueType::Enum(YES_NO)),
    status("RoomAnalytics.RoomInUse", ValueType::Enum(TRUE_FALSE)),
    // Third-party occupancy sources an integration reports with `xCommand RoomAnalytics
    // RoomInUse Set ID: …` (RoomOS 26.8 schema); RoomOS adds them into `RoomInUse`.
    status("RoomAnalytics.OccupancySensor[*].ID", ValueType::Text),
    status(
        "RoomAnalytics.OccupancySensor[*].RoomInUse",
        ValueType::Enum(TRUE_FALSE),
    ),
    status("RoomAnalytics.AmbientTemperature", ValueType::Decimal),
    status("RoomAnalytics.RelativeHumidity", ValueType::Integer),
    status("RoomAnalytics.AirQuality.Index", ValueType::Decimal),
    // The room's readings from Room Navigators placed inside or outside it (RoomOS 26.5+):
    // `"Unavailable"` (humidity -1) when no such reading exists.
    status(
        "RoomAnalytics.InsideRoom.AmbientTemperature",
        ValueType::Text,
    ),
    status(
        "RoomAnalytics.InsideRoom.RelativeHumidity",
        ValueType::Integer,
    ),
    status("RoomAnalytics.InsideRoom.AirQualityIndex", ValueType::Text),
    status(
        "RoomAnalytics.OutsideRoom.AmbientTemperature",
        ValueType::Text,
    ),
    status(
        "RoomAnalytics.OutsideRoom.RelativeHumidity",
        ValueType::Integer,
    ),
    status("RoomAnalytics.OutsideRoom.AirQualityIndex", ValueType::Text),
    status("RoomAnalytics.AmbientNoise.Level.A", ValueType::Integer),
    status("RoomAnalytics.Sound.Level.A", ValueType::Integer),
    status(
        "RoomAnalytics.ReverberationTime.Middle.RT60",
        ValueType::Integer,
    ),
    status(
        "RoomAnalytics.ReverberationTime.Octaves[*].CenterFrequency",
        ValueType::Integer,
    ),
    status(
        "RoomAnalytics.ReverberationTime.Octaves[*].RT60",
        ValueType::Integer,
    ),
    status("RoomAnalytics.ReverberationTime.LastRun", ValueType::Text),
    status(
        "RoomAnalytics.ReverberationTime.MeasurementState",
        ValueType::Enum(&["Empty", "Measuring", "Measured"]),
    ),
    status(
        "RoomAnalytics.T3Alarm.Detected",
        ValueType::Enum(TRUE_FALSE),
    ),
    status(
        "RoomAnalytics.Engagement.CloseProximity",
        ValueType::Enum(TRUE_FALSE),
    ),
    status(
        "RoomAnalytics.LightingConditions",
        ValueType::Enum(&["Unknown", "Good", "Dark", "Backlight", "NotSupported"]),
    ),
    status(
        "Peripherals.ConnectedDevice[*].RoomAnalytics.AmbientTemperature",
        ValueType::Decimal,
    ),
    status(
        "Peripherals.ConnectedDevice[*].RoomAnalytics.RelativeHumidity",
        ValueType::Integer,
    ),
    status(
        "Peripherals.ConnectedDevice[*].RoomAnalytics.AirQuality.Index",
        ValueType::Decimal,
    ),
    status(
        "Standby.State",
        ValueType::Enum(&["Off", "Halfwake", "EnteringStandby", "Standby"]),
    ),
    status("SystemUnit.State.NumberOfActiveCalls", ValueType::Integer),
    status("SystemUnit.State.System", ValueType::Text),
    status(
        "Bookings.Availability.Status",
        ValueType::Enum(&["Free", "FreeUntil", "BookedUntil"]),
    ),
    status("Bookings.Availability.TimeStamp", ValueType::Text),
    status("Bookings.Current.Id", ValueType::Text),
    status(
        "Conference.Presentation.LocalInstance[*].SendingMode",
        ValueType::Enum(&["LocalOnly", "LocalRemote", "Off"]),
    ),
    status(
        "Webex.DevicePersonalization.Hotdesking.SessionStatus",
        ValueType::Text,
    ),
    status("MicrosoftTeams.Calling.InCall", ValueType::Enum(TRUE_FALSE)),
    status("MicrosoftTeams.Pairing.Active", ValueType::Enum(TRUE_FALSE)),
    status("MicrosoftTeams.User.SignedIn", ValueType::Enum(TRUE_FALSE)),
    event("BootEvent"),
    event("CallDisconnect"),
    event("CallSuccessful"),
    event("OutgoingCallIndication"),
    event("Bookings.Start"),
    event("Bookings.End"),
    event("Bookings.ExtensionRequested"),
    event("Bookings.Deleted"),
    event("Bookings.CheckedIn"),
    event("Bookings.BookingCreated"),
    event("Bookings.BookingMoved"),
    event("Bookings.Updated"),
    event("Bookings.StartTimeBuffer"),
    event("Bookings.EndTimeBuffer"),
    event("UserInterface.Extensions.Widget.Action"),
    event("UserInterface.Extensions.Panel.Clicked"),
    event("UserInterface.Extensions.Panel.Close"),
    event("UserInterface.Message.Prompt.Response"),
    event("UserInterface.Message.Prompt.Cleared"),
    event("UserInterface.Message.Rating.Response"),
    event("UserInterface.Message.Rating.Cleared"),
    event("UserInterface.Message.TextInput.Response"),
    event("UserInterface.Message.TextInput.Clear"),
    event("UserInterface.WebView.Display"),
    event("UserInterface.WebView.Cleared"),
    event("UserInterface.Assistant.Notification"),
];

/// Replaces every bracketed array id (`[1002]`, `[{2}]`) with `[*]`, the catalog's spelling.
pub(crate) fn generic_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_brackets = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_brackets = true;
                out.push_str("[*");
            }
            ']' => {
                in_brackets = false;
                out.push(']');
            }
            _ if in_brackets => {}
            _ => out.push(c),
        }
    }
    out
}

/// Looks up a concrete or generic path (`…ConnectedDevice[1002]…` or `…[*]…`).
pub fn lookup(path: &str) -> Option<&'static Entry> {
    if path.contains('[') {
        let generic = generic_path(path);
        ENTRIES.iter().find(|e| e.path == generic)
    } else {
        ENTRIES.iter().find(|e| e.path == path)
    }
}

/// Whether a selection pattern (`*`, `RoomAnalytics.*`, or an exact path) matches a path.
/// Wildcards only stand for whole segments at the end of the pattern.
pub(crate) fn pattern_matches(pattern: &str, generic: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            generic.len() > prefix.len()
                && generic.starts_with(prefix)
                && generic.as_bytes()[prefix.len()] == b'.'
        }
        None => pattern == generic,
    }
}

/// Catalog entries of the given kind that a selection pattern matches (empty: a bad pattern).
pub(crate) fn expand(pattern: &str, kind: Kind) -> Vec<&'static Entry> {
    ENTRIES
        .iter()
        .filter(|e| e.kind == kind && pattern_matches(pattern, e.path))
        .collect()
}

/// Up to three catalog paths closest to `wanted` (for "did you mean" hints).
pub(crate) fn suggest(wanted: &str, kind: Option<Kind>) -> Vec<&'static str> {
    let wanted_lower = wanted.to_ascii_lowercase();
    let mut scored: Vec<(usize, &'static str)> = ENTRIES
        .iter()
        .filter(|e| kind.is_none_or(|k| e.kind == k))
        .map(|e| {
            let p = e.path.to_ascii_lowercase();
            let last = p.rsplit('.').next().unwrap_or(&p);
            let wanted_last = wanted_lower.rsplit('.').next().unwrap_or(&wanted_lower);
            let d = strsim::levenshtein(&wanted_lower, &p)
                .min(strsim::levenshtein(wanted_last, last) + 3);
            (d, e.path)
        })
        .collect();
    scored.sort();
    let limit = (wanted.len() / 2).max(4);
    scored
        .into_iter()
        .filter(|(d, _)| *d <= limit)
        .take(3)
        .map(|(_, p)| p)
        .collect()
}

/// Why a source value could not be coerced to its catalog type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoerceError {
    /// The value is not a number (or numeric string).
    #[error("expected a number, got {0}")]
    NotANumber(String),
    /// The value is a number with a fraction where a whole number is required.
    #[error("expected a whole number, got {0}")]
    NotAnInteger(String),
    /// The value is not one of the allowed strings.
    #[error("expected one of {allowed:?}, got {got}")]
    NotInEnum {
        /// The allowed values.
        allowed: &'static [&'static str],
        /// What came in.
        got: String,
    },
    /// The value is null, an array or an object where a scalar is required.
    #[error("expected a scalar value, got {0}")]
    NotAScalar(String),
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

impl ValueType {
    /// Coerces an input value to this type (numbers or strings in, the catalog type out).
    pub fn coerce(self, v: &Value) -> Result<Value, CoerceError> {
        match self {
            ValueType::Object => Ok(v.clone()),
            ValueType::Integer => {
                let f = as_f64(v).ok_or_else(|| CoerceError::NotANumber(short(v)))?;
                if f.fract() != 0.0 || f.abs() > 9.0e15 {
                    return Err(CoerceError::NotAnInteger(short(v)));
                }
                Ok(Value::from(f as i64))
            }
            ValueType::Decimal => {
                let f = as_f64(v).ok_or_else(|| CoerceError::NotANumber(short(v)))?;
                Ok(serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null))
            }
            ValueType::Text => match v {
                Value::String(s) => Ok(Value::String(s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok(Value::String(v.to_string())),
                _ => Err(CoerceError::NotAScalar(short(v))),
            },
            ValueType::Enum(allowed) => {
                let text = match v {
                    Value::Bool(b) if allowed.len() >= 2 => {
                        return Ok(Value::from(if *b { allowed[0] } else { allowed[1] }));
                    }
                    Value::String(s) => s.as_str(),
                    _ => {
                        return Err(CoerceError::NotInEnum {
                            allowed,
                            got: short(v),
                        })
                    }
                };
                allowed
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(text.trim()))
                    .map(|a| Value::from(*a))
                    .ok_or_else(|| CoerceError::NotInEnum {
                        allowed,
                        got: short(v),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The README's catalog lists every entry, in this order, and no other.
    #[test]
    fn the_readme_lists_every_entry_in_order() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("### Catalog (approved statuses and events)")
            .unwrap();
        let section = &readme[start..];
        let section = &section[..section.find("\n## ").unwrap()];
        let listed: Vec<&str> = section
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|p| lookup(p).is_some())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let listed: Vec<&str> = listed.into_iter().filter(|p| seen.insert(*p)).collect();
        let entries: Vec<&str> = ENTRIES.iter().map(|e| e.path).collect();
        assert_eq!(
            listed, entries,
            "README's catalog section differs from ENTRIES"
        );
    }

    #[test]
    fn looks_up_concrete_and_generic_paths() {
        let e = lookup("Peripherals.ConnectedDevice[1002].RoomAnalytics.AirQuality.Index");
        assert_eq!(e.map(|e| e.value), Some(ValueType::Decimal));
        assert!(lookup("RoomAnalytics.PeopleCount.Current").is_some());
        assert!(lookup("RoomAnalytics.PeopleCount.Max").is_none());
        let e = lookup("RoomAnalytics.ReverberationTime.Octaves[3].CenterFrequency");
        assert_eq!(e.map(|e| e.value), Some(ValueType::Integer));
        let e = lookup("RoomAnalytics.OccupancySensor[1].RoomInUse");
        assert_eq!(e.map(|e| e.value), Some(ValueType::Enum(TRUE_FALSE)));
    }

    #[test]
    fn catalog_paths_are_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for e in ENTRIES {
            assert!(seen.insert(e.path), "{} twice", e.path);
            assert_eq!(generic_path(e.path), e.path, "array nodes are [*]");
            assert!(
                e.path.split('.').all(|s| !s.is_empty() && !s.contains(' ')),
                "{}",
                e.path
            );
            assert_eq!(e.kind == Kind::Event, e.value == ValueType::Object);
            assert_eq!(lookup(e.path), Some(e));
        }
    }

    #[test]
    fn catalog_room_readings_keep_the_reference_sentinel() {
        // The reference types the InsideRoom/OutsideRoom readings String, "Unavailable" when
        // there is none (humidity: Integer, -1): forwarded as they are.
        let t = lookup("RoomAnalytics.OutsideRoom.AmbientTemperature").unwrap();
        assert_eq!(
            t.value.coerce(&json!("Unavailable")),
            Ok(json!("Unavailable"))
        );
        assert_eq!(t.value.coerce(&json!("21.5")), Ok(json!("21.5")));
        let h = lookup("RoomAnalytics.OutsideRoom.RelativeHumidity").unwrap();
        assert_eq!(h.value.coerce(&json!(-1)), Ok(json!(-1)));
        let b = lookup("Bookings.Availability.Status").unwrap();
        assert_eq!(
            b.value.coerce(&json!("bookeduntil")),
            Ok(json!("BookedUntil"))
        );
        assert!(b.value.coerce(&json!("Booked")).is_err());
    }

    #[test]
    fn wildcards_only_at_a_segment_boundary() {
        assert!(pattern_matches(
            "RoomAnalytics.*",
            "RoomAnalytics.PeopleCount.Current"
        ));
        assert!(!pattern_matches(
            "Room.*",
            "RoomAnalytics.PeopleCount.Current"
        ));
        assert!(!pattern_matches("RoomAnalytics.*", "RoomAnalytics"));
        assert_eq!(expand("UserInterface.*", Kind::Event).len(), 12);
        assert!(expand("UserInterface.*", Kind::Status).is_empty());
    }

    #[test]
    fn coerces_to_the_catalog_type() {
        assert_eq!(ValueType::Integer.coerce(&json!("3")), Ok(json!(3)));
        assert_eq!(ValueType::Integer.coerce(&json!(3.0)), Ok(json!(3)));
        assert!(ValueType::Integer.coerce(&json!(3.5)).is_err());
        assert!(ValueType::Integer.coerce(&json!("many")).is_err());
        assert_eq!(ValueType::Decimal.coerce(&json!("22.5")), Ok(json!(22.5)));
        assert_eq!(
            ValueType::Enum(YES_NO).coerce(&json!(true)),
            Ok(json!("Yes"))
        );
        assert_eq!(
            ValueType::Enum(TRUE_FALSE).coerce(&json!("false")),
            Ok(json!("False"))
        );
        assert!(ValueType::Enum(TRUE_FALSE).coerce(&json!("maybe")).is_err());
        assert!(ValueType::Text.coerce(&json!({"a": 1})).is_err());
    }

    #[test]
    fn suggests_near_names() {
        let s = suggest("RoomAnalytics.PeopleCount.Curent", Some(Kind::Status));
        assert_eq!(s.first(), Some(&"RoomAnalytics.PeopleCount.Current"));
        let s = suggest("RoomAnalytics.AmbientTemp", None);
        assert!(s.contains(&"RoomAnalytics.AmbientTemperature"), "{s:?}");
    }
}
