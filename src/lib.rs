//! roomhook: reads meeting-room status and events from local sources, keeps every accepted
//! event in an embedded store, and forwards the selected ones as Control Hub compatible
//! HTTPS webhooks. `main.rs` is the command line; this crate root only lists the modules.

pub mod admin;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
#[cfg(feature = "demo")]
pub mod demo;
pub mod event;
pub mod files;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod pulse;
pub mod ratelog;
pub mod redact;
pub mod route;
pub mod seen;
pub mod source;
pub mod store;
pub mod supervisor;
pub mod timefmt;
pub mod tls;
pub mod value;
pub mod version;
pub mod wallclock;

pub use tls::install_crypto_provider;
