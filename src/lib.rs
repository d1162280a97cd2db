//! roomhook: reads meeting-room status and events from local sources, keeps every accepted
//! event in an embedded store, and forwards the selected ones as Control Hub compatible
//! HTTPS webhooks. `main.rs` is the command line; this crate root only lists the modules,
//! layer by layer from the bottom (a module imports only from the layers above it here:
//! `tests/layers.rs` checks it, and the README's Layout draws the same table).

// 0–1: utilities that know nothing of the pipeline.
pub mod backoff;
pub mod files;
pub mod logging;
pub mod pulse;
pub mod ratelog;
pub mod redact;
pub mod timefmt;
pub mod version;

pub mod metrics;
pub mod tls;
pub mod wallclock;

// 2–4: the model: value types, the catalog, the normalised event, the devices seen.
pub mod catalog;
pub mod value;

pub mod event;

pub mod seen;

// 5–8: the configuration, the durable queues, routing and the one door into the store.
pub mod config;

pub mod store;

pub mod route;

pub mod ingest;

// 9: what reads events in and what sends them out.
pub mod deliver;
pub mod source;

// 10–15: the running set, the admin surfaces, the fleet, the daemon, the demo, the command
// line.
pub mod supervisor;

pub mod admin;

pub mod fleet;

pub mod daemon;

#[cfg(feature = "demo")]
pub mod demo;

pub mod cli;

pub use tls::install_crypto_provider;
