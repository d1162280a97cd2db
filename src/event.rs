//! The normalised event every source produces and the store keeps: one status value or one
//! event of one device, already coerced to its catalog type.

use crate::catalog::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
}

impl Event {
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
        };
        let bytes = e.encode();
        assert_eq!(Event::decode(&bytes).ok(), Some(e));
    }
}
