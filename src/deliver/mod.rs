//! Delivery: one worker per webhook takes its queue from the store and POSTs each message
//! to the receiver, paced by the scheduler, retried with backoff, removed on 2xx.

pub use crate::backoff;
pub mod client;
pub mod concurrency;
pub mod payload;
pub mod policy;
pub mod probe;
pub mod rate;
pub(crate) mod scheduler;
pub mod signing;
pub mod status;
pub(crate) mod throttle;
pub mod worker;
