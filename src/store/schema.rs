//! What the store keeps on disk: the redb tables and their keys, the file's name, and the
//! limits and charges that bound it.

use redb::TableDefinition;

/// Queue entries: (webhook id, sequence number) → encoded [`Event`](crate::event::Event).
pub(crate) const QUEUE: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("queue");
/// Dead letters: (webhook id, sequence number) → encoded [`DeadLetter`](super::DeadLetter).
pub(crate) const DEAD: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("dead_letters");
/// Most dead letters kept per webhook; past it the oldest go.
pub(crate) const MAX_DEAD_LETTERS: u64 = 10_000;
/// Next sequence number per webhook (never reused, so `webhook-id`s stay unique).
pub(crate) const NEXT_SEQ: TableDefinition<u32, u64> = TableDefinition::new("next_seq");
/// MQTT redelivery guard: (source name, packet id) → digest of the last message committed
/// with that packet id, written in the same transaction as its events.
pub(crate) const MQTT_SEEN: TableDefinition<(&str, u16), u64> = TableDefinition::new("mqtt_seen");
/// Webhook name → id.
pub(crate) const WEBHOOKS: TableDefinition<&str, u32> = TableDefinition::new("webhooks");
/// Queues no configured webhook names any more (orphans): name → since when (unix ms).
pub(crate) const ORPHANS: TableDefinition<&str, i64> = TableDefinition::new("orphans");
/// The URL a kept (orphaned) queue's events were routed for: only a webhook with that URL
/// takes the queue back by its name.
pub(crate) const ORPHAN_URLS: TableDefinition<&str, &str> = TableDefinition::new("orphan_urls");
/// Store-wide values (`store_id`, [`WAL_GEN`]).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The write-ahead log generation whose records are not yet in redb's durable state.
pub(crate) const WAL_GEN: &str = "wal_gen";

/// The store file inside `data_dir`.
pub const FILE_NAME: &str = "roomhook.redb";

/// Page cache of the database.
pub(crate) const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Bytes an entry is charged beyond its value (key and B-tree overhead, estimated).
pub(crate) const ENTRY_OVERHEAD: u64 = 32;
