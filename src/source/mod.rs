//! Inputs: each source turns what it receives into normalised events and hands them to
//! [`crate::ingest::Ingest`], acknowledging its input only after the commit.

pub mod decode;
pub(crate) mod mqtt;
pub mod mqtt_drain;
pub(crate) mod roomos;
#[cfg(feature = "demo")]
pub(crate) mod simulator;
pub mod status;
