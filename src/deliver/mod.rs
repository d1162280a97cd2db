//! Delivery: one worker per webhook takes its queue from the store and POSTs each message
//! to the receiver, paced by the scheduler, retried with backoff, removed on 2xx.

pub(crate) use crate::backoff;
pub(crate) mod aimd;
pub mod client;
pub(crate) mod compress;
pub(crate) mod concurrency;
pub(crate) mod conflate;
pub mod payload;
pub(crate) mod policy;
pub(crate) mod probe;
pub(crate) mod rate;
pub(crate) mod scheduler;
pub(crate) mod signing;
pub mod status;
pub(crate) mod throttle;
pub mod uplink;
pub mod worker;
