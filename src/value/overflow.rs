//! A webhook's overflow policy: what gives way when the store is full (configured per
//! webhook, applied by the store).

/// What gives way when the store reaches its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The oldest queued events go first.
    DropOldest,
    /// Status values superseded by a newer value of the same device and path go first
    /// (events never), then the oldest.
    Coalesce,
    /// Input stops (appends fail with `StoreError::Full`; MQTT stops acking).
    Block,
}
