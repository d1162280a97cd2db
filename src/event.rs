//! The normalised event every source produces and the store keeps: one status value or one
//! event of one device, already coerced to its catalog type.

use crate::catalog::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest device id, workspace id or path a source may hand in, in bytes. Longer ones
/// come from a publisher or device that is broken or hostile, and are refused where they
/// are decoded (`reason="too_long"`): the router, the throttle and the devices-seen map
/// bound how many keys they hold, and this bounds what each key can cost.
pub(crate) const MAX_ID_BYTES: usize = 256;

/// One normalised observation. Stored as compact JSON (short field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Device id (`deviceId` in the payload).
    #[serde(rename = "d")]
    pub device: String,
    /// Workspace id (`workspaceId`), when the source knows it.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Concrete dotted path, array ids in brackets (`Peripherals.ConnectedDevice[1002]…`).
    #[serde(rename = "p")]
    pub path: String,
    /// Status or event.
    #[serde(rename = "k")]
    pub kind: Kind,
    /// The value, already of the catalog type.
    #[serde(rename = "v")]
    pub value: Value,
    /// When the source observed it, unix milliseconds.
    #[serde(rename = "t")]
    pub ts_ms: i64,
    /// Part of a full snapshot taken after a (re)connect (`isFullSync`).
    #[serde(rename = "f", default, skip_serializing_if = "std::ops::Not::not")]
    pub full_sync: bool,
    /// Further status changes carried by the same message (`path`/`value` is the first):
    /// a full sync holds every current value, a removed array entry every path it had.
    /// A `null` value means removed (`changes.removed`). Empty for single values.
    #[serde(rename = "m", default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<(String, Value)>,
}

impl Event {
    /// Every (path, value) change the event carries: `path`/`value` first, then `more`.
    pub(crate) fn changes(&self) -> impl Iterator<Item = (&str, &Value)> {
        std::iter::once((self.path.as_str(), &self.value))
            .chain(self.more.iter().map(|(p, v)| (p.as_str(), v)))
    }

    /// A status message made of several changes (full sync, removal); `None` when empty.
    pub(crate) fn with_changes(
        device: String,
        workspace: Option<String>,
        ts_ms: i64,
        full_sync: bool,
        changes: Vec<(String, Value)>,
    ) -> Option<Self> {
        let mut it = changes.into_iter();
        let (path, value) = it.next()?;
        Some(Self {
            device,
            workspace,
            path,
            kind: Kind::Status,
            value,
            ts_ms,
            full_sync,
            more: it.collect(),
        })
    }

    /// Encodes the event for the store.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of strings and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an event written by [`Event::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_store_encoding() {
        let e = Event {
            device: "room-1".into(),
            workspace: Some("lobby".into()),
            path: "RoomAnalytics.PeopleCount.Current".into(),
            kind: Kind::Status,
            value: Value::from(3),
            ts_ms: 1_764_000_000_123,
            full_sync: false,
            more: Vec::new(),
        };
        let bytes = e.encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("\"m\""));
        assert_eq!(Event::decode(&bytes).ok(), Some(e));
        let sync = Event::with_changes(
            "room-1".into(),
            None,
            1,
            true,
            vec![
                ("RoomAnalytics.PeopleCount.Current".into(), Value::from(2)),
                ("Standby.State".into(), Value::from("Off")),
            ],
        )
        .unwrap();
        assert_eq!(sync.changes().count(), 2);
        assert_eq!(Event::decode(&sync.encode()).ok(), Some(sync));
    }
}
