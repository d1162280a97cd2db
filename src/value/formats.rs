//! What the built-in sensor payload formats map by default (field or metric → catalog
//! path): read by the config's validator and by the decoders alike (a leaf).

/// `zigbee2mqtt` default mapping: property → catalog path (the config's `fields` override it).
pub(crate) const ZIGBEE2MQTT: &[(&str, &str)] = &[
    ("occupancy", "RoomAnalytics.PeoplePresence"),
    ("presence", "RoomAnalytics.PeoplePresence"),
    ("temperature", "RoomAnalytics.AmbientTemperature"),
    ("humidity", "RoomAnalytics.RelativeHumidity"),
];

/// `meraki-mt` default mapping: metric → catalog path (the config's `fields` override it).
pub(crate) const MERAKI_MT: &[(&str, &str)] = &[
    ("temperature", "RoomAnalytics.AmbientTemperature"),
    ("humidity", "RoomAnalytics.RelativeHumidity"),
    ("ambientNoise", "RoomAnalytics.AmbientNoise.Level.A"),
    ("noise", "RoomAnalytics.AmbientNoise.Level.A"),
];

/// `meraki-mv` default mapping: object class → catalog path (the config's `fields` override it).
pub(crate) const MERAKI_MV: &[(&str, &str)] = &[("person", "RoomAnalytics.PeopleCount.Current")];
