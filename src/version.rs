//! What this binary is: version, git commit, target, profile and the optional features
//! built in, for `roomhook --version`, `roomhook_build_info` and `status`. Written by
//! `build.rs`; imports nothing.

/// The git commit built (12 hex digits, "-dirty" for uncommitted changes), or "unknown"
/// outside a checkout.
pub(crate) const COMMIT: &str = env!("ROOMHOOK_BUILD_COMMIT");
/// The target triple.
pub(crate) const TARGET: &str = env!("ROOMHOOK_BUILD_TARGET");
/// The cargo profile (`dev`, `release`, `gateway`, `ci`).
pub(crate) const PROFILE: &str = env!("ROOMHOOK_BUILD_PROFILE");

/// The optional features built in: "demo", "demo faults testkit" (the tests), or "none; no
/// demo" (the gateway builds).
pub const FEATURES: &str = env!("ROOMHOOK_BUILD_FEATURES");

/// `roomhook --version` after the name (the constants above, spelt out: `concat!` takes
/// only literals), e.g. `0.1.0 (commit 98d24b2c1f3e, target
/// aarch64-unknown-linux-musl, profile gateway, features: none; no demo)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ROOMHOOK_BUILD_COMMIT"),
    ", target ",
    env!("ROOMHOOK_BUILD_TARGET"),
    ", profile ",
    env!("ROOMHOOK_BUILD_PROFILE"),
    ", features: ",
    env!("ROOMHOOK_BUILD_FEATURES"),
    ")"
);
