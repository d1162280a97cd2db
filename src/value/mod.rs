//! Value types shared by the config and the parts it configures (a leaf: it imports none
//! of them): topic filters and templates, device selections, value transforms, overflow
//! policies, signing keys, request-body compression, the built-in payload formats' default
//! mappings.

pub(crate) mod compression;
pub(crate) mod devices;
pub(crate) mod formats;
pub(crate) mod overflow;
pub(crate) mod signing;
pub(crate) mod topic;
pub(crate) mod transform;
