//! Value types shared by the config and the parts it configures (a leaf: it imports none
//! of them): topic filters and templates, device selections, value transforms, overflow
//! policies, signing keys, the built-in payload formats' default mappings.

pub mod devices;
pub mod formats;
pub mod overflow;
pub mod signing;
pub mod topic;
pub(crate) mod transform;
