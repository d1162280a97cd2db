//! `[gateway] id` and `[fleet]`: the https URLs of the fleet's config document and of its
//! reports, how they are trusted and authenticated, the intervals, the document's Ed25519
//! public key and the reports' signing secret.

use super::Ctx;
use crate::config::{FleetEndpoint, FleetSettings, RawFleet, Secret, TlsTrust};
use std::path::PathBuf;
use std::time::Duration;

/// `[fleet] config_interval` when not set.
const CONFIG_INTERVAL: Duration = Duration::from_secs(300);
/// `[fleet] report_interval` when not set.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest interval accepted (tests poll every second).
const LEAST_INTERVAL: Duration = Duration::from_secs(1);

/// `[gateway] id`, or the host name: letters, digits, `.`, `_`, `-`, not starting with `.`
/// (it goes into URLs' paths: `.` and `..` would change them). The host name is checked only
/// when `fleet` (`[fleet]` is set): without a fleet, an odd host name is nobody's concern.
pub(super) fn gateway_id(cx: &mut Ctx<'_>, raw: Option<&String>, fleet: bool) -> String {
    // (Read once per process: every load, edit and pull validates the config.)
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let id = raw.cloned().unwrap_or_else(|| {
        HOST.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "roomhook".into())
        })
        .clone()
    });
    if (raw.is_some() || fleet) && !valid_id(&id) {
        let what = if raw.is_some() {
            ""
        } else {
            " (the host name, by default)"
        };
        cx.err(
            "gateway.id",
            format!("{id:?}{what} is not a gateway id (1 to 64 letters, digits, '.', '_', '-', not starting with '.')"),
            "write e.g. id = \"oslo-3\" in [gateway] (it replaces {gateway} in [fleet] config_url)",
        );
    }
    id
}

/// Whether `id` may be a gateway's id.
fn valid_id(id: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !id.is_empty() && id.len() <= 64 && !id.starts_with('.') && id.chars().all(ok)
}

/// `[fleet]`; `None` when it names no URL.
pub(super) fn fleet(cx: &mut Ctx<'_>, f: &RawFleet, id: &str) -> Option<FleetSettings> {
    let config = f.config_url.as_ref().and_then(|u| {
        endpoint(
            cx,
            ("config_url", &u.replace("{gateway}", id)),
            ("ca_file", &f.ca_file),
            ("authorization", &f.authorization, &f.authorization_file),
        )
    });
    let report = f.report_url.as_ref().and_then(|u| {
        endpoint(
            cx,
            ("report_url", u),
            ("report_ca_file", &f.report_ca_file),
            (
                "report_authorization",
                &f.report_authorization,
                &f.report_authorization_file,
            ),
        )
    });
    let config_interval = interval(
        cx,
        "config_interval",
        f.config_interval.as_ref(),
        CONFIG_INTERVAL,
    );
    let report_interval = interval(
        cx,
        "report_interval",
        f.report_interval.as_ref(),
        REPORT_INTERVAL,
    );
    let key = cx.secret(
        "fleet",
        "config_public_key",
        &f.config_public_key,
        &f.config_public_key_file,
    );
    let public_key = key.and_then(|k| match public_key(k.expose()) {
        Some(k) => Some(k),
        None => {
            cx.err(
                "fleet.config_public_key",
                "is not an Ed25519 public key (32 bytes, base64)",
                "paste the public key `roomhook fleet keygen` printed",
            );
            None
        }
    });
    let secret = f
        .report_signing_secret_file
        .as_ref()
        .and_then(|p| cx.secret_file("fleet.report_signing_secret_file", p));
    let report_signer =
        secret.and_then(|s| match crate::value::signing::parse_secret(s.expose()) {
            Ok(k) => Some(crate::value::signing::Signer::new(&k)),
            Err(e) => {
                cx.err(
                    "fleet.report_signing_secret_file",
                    e,
                    "generate one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\"",
                );
                None
            }
        });
    let unused = |set: bool, key: &str, needs: &str| (set, key.to_string(), needs.to_string());
    for (set, key, needs) in [
        unused(
            f.config_url.is_none()
                && (f.ca_file.is_some()
                    || f.authorization.is_some()
                    || f.authorization_file.is_some()
                    || f.config_public_key.is_some()
                    || f.config_public_key_file.is_some()),
            "fleet.config_url",
            "config_url",
        ),
        unused(
            f.report_url.is_none()
                && (f.report_ca_file.is_some()
                    || f.report_authorization.is_some()
                    || f.report_authorization_file.is_some()
                    || f.report_signing_secret_file.is_some()),
            "fleet.report_url",
            "report_url",
        ),
    ] {
        if set {
            cx.err(
                key,
                format!("keys that go with {needs} are set without it"),
                format!("set {needs}, or remove the keys that go with it"),
            );
        }
    }
    (config.is_some() || report.is_some()).then_some(FleetSettings {
        config,
        config_interval,
        public_key,
        report,
        report_interval,
        report_signer,
    })
}

/// An Ed25519 public key: 32 bytes, base64.
fn public_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

fn interval(cx: &mut Ctx<'_>, name: &str, raw: Option<&String>, default: Duration) -> Duration {
    let key = format!("fleet.{name}");
    let d = cx.duration(&key, raw, default);
    if d < LEAST_INTERVAL {
        cx.err(&key, "must be at least 1s", "write e.g. \"5m\"");
        return default;
    }
    d
}

/// One URL with its `ca_file` and `authorization` / `authorization_file` keys.
fn endpoint(
    cx: &mut Ctx<'_>,
    (url_key, url): (&str, &str),
    (ca_key, ca): (&str, &Option<PathBuf>),
    (auth_key, auth, auth_file): (&str, &Option<String>, &Option<PathBuf>),
) -> Option<FleetEndpoint> {
    let before = cx.errs.len();
    let url = cx.https_url(
        &format!("fleet.{url_key}"),
        url,
        "the fleet's config and reports go only over TLS with a trusted certificate",
    );
    let ca_file = ca
        .as_ref()
        .and_then(|p| cx.ca_file(&format!("fleet.{ca_key}"), p));
    let authorization: Option<Secret> = cx.secret("fleet", auth_key, auth, auth_file);
    if authorization
        .as_ref()
        .is_some_and(|a| hyper::header::HeaderValue::from_str(a.expose()).is_err())
    {
        cx.err(
            format!("fleet.{auth_key}"),
            "has characters an HTTP header cannot carry",
            "use printable ASCII, e.g. \"Bearer <token>\"",
        );
    }
    (cx.errs.len() == before).then_some(FleetEndpoint {
        url: url?,
        trust: TlsTrust {
            ca_file,
            client_identity: None,
        },
        authorization,
    })
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn a_gateway_id_never_starts_with_a_dot() {
        for ok in ["oslo-1", "oslo-1.site", "gw_2", "a"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
