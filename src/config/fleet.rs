//! The fleet document (`[fleet] config_url`): what a pulled document may hold
//! (`[[webhooks]]`, an MQTT source's `subscriptions`, a RoomOS source's `statuses` and
//! `events`, sources named as in the local file), what it may not (every local-only section
//! and key, secret values), and its merge into the local file, checked like `check-config`
//! with errors that point into the document. The last good one is kept in the data
//! directory ([`KEPT`]) and merged at every load.

use super::{locate, parse, ConfigError, ConfigErrors, RawConfig};
use super::{validate, Settings};
use std::path::{Path, PathBuf};

/// The last good document, in `[gateway] data_dir`.
pub(crate) const KEPT: &str = "fleet-config.toml";

/// What a fleet document is read with, after it: the local file's own model ([`RawConfig`])
/// needs a `[gateway]`, which a document never has. After, not before: a document's
/// top-level keys (`webhooks = []`) would land in a `[gateway]` put before them, and the
/// errors' line numbers stay the document's own.
const SUFFIX: &str = "\n[gateway]\ndata_dir = \".\"\n";

/// Where the last good document of the config `file` is kept, when `[fleet] config_url`
/// is set.
pub(crate) fn kept_path(raw: &RawConfig, file: &Path) -> Option<PathBuf> {
    raw.fleet.as_ref()?.config_url.as_ref()?;
    Some(super::base_dir(file).join(&raw.gateway.data_dir).join(KEPT))
}

/// What a document's source may set, by kind: its name (which local source) and these.
const SOURCE_KEYS: [(&str, &[&str]); 2] = [
    ("mqtt", &["name", "subscriptions"]),
    ("roomos", &["name", "statuses", "events"]),
];

/// The local-only keys a document names: (key, problem, fix): in `top` (the document's
/// TOML: its sections, and its sources' keys beside those of [`SOURCE_KEYS`], an allow list
/// so that a source key added later stays local until it is let in), and in `doc` (the
/// document as read: its webhooks' secret values, headers and file names).
fn local_only(
    top: Option<&toml_edit::Table>,
    doc: Option<&mut RawConfig>,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let local = |key: String, what: &str| {
        (
            key.clone(),
            format!("local-only: {what} stays in the gateway's own file"),
            format!("remove {key} from the fleet document"),
        )
    };
    for (name, _) in top.iter().flat_map(|t| t.iter()) {
        if !matches!(name, "webhooks" | "sources") {
            out.push(local(format!("[{name}]"), "this section"));
        }
    }
    let sources = top
        .and_then(|t| t.get("sources"))
        .and_then(|s| s.as_table_like());
    for (kind, _) in sources.iter().flat_map(|s| s.iter()) {
        if !SOURCE_KEYS.iter().any(|(k, _)| *k == kind) {
            out.push(local(format!("[sources.{kind}]"), "this section"));
        }
    }
    for (kind, allowed) in SOURCE_KEYS {
        let Some(item) = sources.and_then(|s| s.get(kind)) else {
            continue;
        };
        // `[[sources.mqtt]]` tables, or an inline array of inline tables.
        let entries: Vec<&dyn toml_edit::TableLike> = match item.as_array_of_tables() {
            Some(a) => a.iter().map(|t| t as &dyn toml_edit::TableLike).collect(),
            None => item
                .as_array()
                .iter()
                .flat_map(|a| a.iter())
                .filter_map(|v| v.as_inline_table())
                .map(|t| t as &dyn toml_edit::TableLike)
                .collect(),
        };
        for (i, entry) in entries.into_iter().enumerate() {
            for (k, _) in entry.iter().filter(|(k, _)| !allowed.contains(k)) {
                out.push(local(
                    format!("sources.{kind}[{i}].{k}"),
                    "a source's address, credentials and settings",
                ));
            }
        }
    }
    let Some(doc) = doc else { return out };
    for (i, h) in doc.webhooks.iter_mut().enumerate() {
        if h.headers.is_some() {
            out.push((
                format!("webhooks[{i}].headers"),
                "static headers may carry tokens, and secret values never travel in the fleet document".into(),
                "remove headers from the fleet document: name the token in authorization_file = \"<file on the gateway>\", or set the headers in the gateway's own file".into(),
            ));
        }
        for (k, p) in webhook_files(h) {
            let Some(p) = p.as_deref() else { continue };
            if !plain_name(p) {
                out.push((
                    format!("webhooks[{i}].{k}"),
                    format!("{p:?}: a fleet document names files on the gateway relatively, without '..' (absolute paths and '..' could reach any file the gateway can read)"),
                    format!("write {k} = \"<file name>\", the file in $CREDENTIALS_DIRECTORY (when set) or else beside the gateway's own config file"),
                ));
            }
        }
        let secrets = [
            ("authorization", h.authorization.is_some()),
            ("password", h.password.is_some()),
            ("signing_secret", h.signing_secret.is_some()),
        ];
        for (s, _) in secrets.iter().filter(|(_, set)| *set) {
            out.push((
                format!("webhooks[{i}].{s}"),
                "a secret value: secret values never travel in the fleet document".into(),
                format!("write {s}_file = \"<file on the gateway>\" instead"),
            ));
        }
    }
    out
}

/// The files a webhook of a document may name: (key, path), checked and then placed on
/// the gateway by the one list.
fn webhook_files(h: &mut super::RawWebhook) -> [(&'static str, &mut Option<PathBuf>); 6] {
    [
        ("authorization_file", &mut h.authorization_file),
        ("password_file", &mut h.password_file),
        ("signing_secret_file", &mut h.signing_secret_file),
        ("ca_file", &mut h.ca_file),
        ("client_cert_file", &mut h.client_cert_file),
        ("client_key_file", &mut h.client_key_file),
    ]
}

/// Whether `p` is a relative file name with no `..` (nor root or prefix) component.
fn plain_name(p: &Path) -> bool {
    !p.as_os_str().is_empty()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

/// Where a file a document names is: in `$CREDENTIALS_DIRECTORY` when it is set, else in
/// the directory of the local config `file`.
fn doc_file(file: &Path, p: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join(p),
        None => super::base_dir(file).join(p),
    }
}

/// The local file's `raw` with the document `doc_text` merged in, checked whole; errors in
/// what the document set name the document (`label`: its URL or kept file) and its line.
pub(crate) fn check(
    file: &Path,
    text: &str,
    mut raw: RawConfig,
    label: &Path,
    doc_text: &str,
) -> Result<Settings, ConfigErrors> {
    let at = |key: String, problem: String, fix: String| ConfigError {
        file: label.to_path_buf(),
        line: locate::line_of(doc_text, key.trim_matches(['[', ']'])),
        key,
        problem,
        fix,
    };
    // Its sections (a syntax error is reported by the parse after).
    let top = toml_edit::Document::parse(doc_text).ok();
    let refused: Vec<ConfigError> = local_only(top.as_ref().map(|d| d.as_table()), None)
        .into_iter()
        .map(|(k, p, f)| at(k, p, f))
        .collect();
    if !refused.is_empty() {
        return Err(ConfigErrors(refused));
    }
    let webhooks = top.as_ref().is_some_and(|d| d.contains_key("webhooks"));
    let mut doc: RawConfig = parse(label, &format!("{doc_text}{SUFFIX}"))?;
    let refused: Vec<ConfigError> = local_only(None, Some(&mut doc))
        .into_iter()
        .map(|(k, p, f)| at(k, p, f))
        .collect();
    if !refused.is_empty() {
        return Err(ConfigErrors(refused));
    }
    if !webhooks && doc.sources.mqtt.is_empty() && doc.sources.roomos.is_empty() {
        return Err(ConfigErrors(vec![at(
            String::new(),
            "the fleet document is empty".into(),
            "serve [[webhooks]] (webhooks = [] for none) or sources' subscriptions".into(),
        )]));
    }
    // Which local source each of the document's sources is: (kind, local index, doc index).
    let mut moved = Vec::new();
    let mut errs = Vec::new();
    let mut unknown = |kind: &str, j: usize, name: &str| {
        errs.push(at(
            format!("sources.{kind}[{j}].name"),
            format!("the local file has no {kind} source named {name:?}"),
            "name a source of the gateway's own file, or add it there".into(),
        ))
    };
    for (j, d) in doc.sources.mqtt.into_iter().enumerate() {
        match raw.sources.mqtt.iter().position(|m| m.name == d.name) {
            Some(i) => {
                raw.sources.mqtt[i].subscriptions = d.subscriptions;
                moved.push(("mqtt", i, j));
            }
            None => unknown("mqtt", j, &d.name),
        }
    }
    for (j, d) in doc.sources.roomos.into_iter().enumerate() {
        match raw.sources.roomos.iter().position(|r| r.name == d.name) {
            Some(i) => {
                let r = &mut raw.sources.roomos[i];
                r.statuses = d.statuses.or(r.statuses.take());
                r.events = d.events.or(r.events.take());
                moved.push(("roomos", i, j));
            }
            None => unknown("roomos", j, &d.name),
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    let from_doc = webhooks;
    if webhooks {
        raw.webhooks = doc.webhooks;
        for h in &mut raw.webhooks {
            for (_, p) in webhook_files(h) {
                if let Some(p) = p {
                    *p = doc_file(file, p);
                }
            }
        }
    }
    let mut settings = validate(&raw, super::base_dir(file), file).map_err(|mut errs| {
        for e in &mut errs.0 {
            if let Some(key) = doc_key(&e.key, from_doc, &moved) {
                *e = at(key, e.problem.clone(), e.fix.clone());
            } else if e.line.is_none() && !e.key.is_empty() {
                e.line = locate::line_of(text, &e.key);
            }
        }
        errs
    })?;
    settings.fleet_doc = Some(sha256_hex(doc_text.as_bytes()));
    settings.fleet_webhooks = from_doc;
    Ok(settings)
}

/// The key in the document of an error's key in the merged config, when the document set it.
fn doc_key(key: &str, webhooks: bool, moved: &[(&str, usize, usize)]) -> Option<String> {
    if webhooks && key.starts_with("webhooks") {
        return Some(key.to_string());
    }
    moved.iter().find_map(|(kind, i, j)| {
        let rest = key.strip_prefix(&format!("sources.{kind}[{i}]"))?;
        ["subscriptions", "statuses", "events"]
            .iter()
            .any(|k| rest.starts_with(&format!(".{k}")))
            .then(|| format!("sources.{kind}[{j}]{rest}"))
    })
}

/// Whether `signature` (base64) is `public`'s Ed25519 signature of `body`.
pub(crate) fn verify_signature(public: &[u8; 32], body: &[u8], signature: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .is_ok_and(|sig| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
                .verify(body, &sig)
                .is_ok()
        })
}

/// Where the signature of the kept document `kept` is kept (beside it, `.sig`).
pub(crate) fn kept_sig(kept: &Path) -> PathBuf {
    crate::files::with_suffix(kept, ".sig")
}

/// `s` merged with the kept document `doc` (from `kept`), when `[fleet] config_public_key`
/// is set, only with the kept signature valid for it: a key set after the document was
/// kept, or a document changed on disk, is not taken on trust.
pub(crate) fn check_kept_signature(
    s: Settings,
    kept: &Path,
    doc: &str,
) -> Result<Settings, ConfigErrors> {
    let Some(key) = s.fleet.as_ref().and_then(|f| f.public_key) else {
        return Ok(s);
    };
    let sig = std::fs::read_to_string(kept_sig(kept)).unwrap_or_default();
    if verify_signature(&key, doc.as_bytes(), &sig) {
        return Ok(s);
    }
    Err(ConfigErrors(vec![ConfigError {
        file: kept.to_path_buf(),
        line: None,
        key: String::new(),
        problem: format!(
            "no valid signature for [fleet] config_public_key in {} (the document was kept before the key was set, or changed since)",
            kept_sig(kept).display()
        ),
        fix: "the next pull verifies the document as served and keeps it with its signature".into(),
    }]))
}

/// SHA-256 of `bytes`, lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "[gateway]\ndata_dir = \"d\"\n\n[[sources.mqtt]]\nname = \"s\"\nurl = \"mqtt://127.0.0.1\"\n\n[[sources.mqtt.subscriptions]]\ntopic = \"local/#\"\nformat = \"zigbee2mqtt\"\n";

    fn check_doc(doc: &str) -> Result<Settings, ConfigErrors> {
        let file = Path::new("/etc/roomhook/roomhook.toml");
        let raw: RawConfig = parse(file, LOCAL).unwrap();
        check(file, LOCAL, raw, Path::new("https://fleet/gw.toml"), doc)
    }

    /// The one error of a refused document: (file, line, key).
    fn refused(doc: &str) -> (String, Option<usize>, String, String) {
        let errs = check_doc(doc).expect_err("refused");
        assert_eq!(errs.0.len(), 1, "{errs}");
        let e = &errs.0[0];
        (
            e.file.display().to_string(),
            e.line,
            e.key.clone(),
            e.to_string(),
        )
    }

    #[test]
    fn a_document_with_webhooks_and_subscriptions_replaces_them() {
        let s = check_doc(
            "[[webhooks]]\nname = \"central\"\nurl = \"https://hooks.example/x\"\nauth = \"none\"\nstatuses = [\"RoomAnalytics.PeopleCount.Current\"]\n\n[[sources.mqtt]]\nname = \"s\"\n[[sources.mqtt.subscriptions]]\ntopic = \"a/#\"\nformat = \"zigbee2mqtt\"\n[[sources.mqtt.subscriptions]]\ntopic = \"b/#\"\nformat = \"zigbee2mqtt\"\n",
        )
        .unwrap();
        assert_eq!(s.webhooks.len(), 1);
        assert_eq!(s.mqtt[0].subscriptions.len(), 2);
        assert_eq!(s.fleet_doc.as_deref().map(str::len), Some(64));
    }

    #[test]
    fn local_only_sections_and_secret_values_are_refused_at_their_line() {
        let (file, line, key, text) = refused("\n[gateway]\nid = \"x\"\n");
        assert_eq!(
            (file.as_str(), line, key.as_str()),
            ("https://fleet/gw.toml", Some(2), "[gateway]")
        );
        assert!(
            text.contains("local-only") && text.contains("fix: remove [gateway]"),
            "{text}"
        );
        let (_, line, key, _) = refused(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nauthorization = \"Bearer t\"\n",
        );
        assert_eq!((line, key.as_str()), (Some(4), "webhooks[0].authorization"));
        let (_, line, key, _) = refused("[[sources.mqtt]]\nname = \"s\"\npassword = \"p\"\n");
        assert_eq!((line, key.as_str()), (Some(3), "sources.mqtt[0].password"));
        let (_, _, key, _) = refused("[[sources.mqtt]]\nname = \"other\"\nsubscriptions = []\n");
        assert_eq!(key, "sources.mqtt[0].name");
        let (_, _, _, text) = refused("# nothing\n");
        assert!(text.contains("empty"), "{text}");
    }

    /// An allow list: a document's source sets its name and its subscriptions (MQTT) or
    /// statuses and events (RoomOS), nothing else, however it is written.
    #[test]
    fn a_documents_sources_set_only_subscriptions_statuses_and_events() {
        for (kind, key, value) in [
            ("mqtt", "url", "\"mqtts://broker:8883\""),
            ("mqtt", "client_id", "\"x\""),
            ("mqtt", "keep_alive", "\"30s\""),
            ("mqtt", "max_payload", "\"1MiB\""),
            ("roomos", "device", "\"d\""),
            ("roomos", "allow_plaintext", "true"),
            ("roomos", "workspace", "\"w\""),
            ("roomos", "max_frame", "\"1MiB\""),
            ("roomos", "anything_later", "1"),
        ] {
            let (_, line, k, text) = refused(&format!(
                "[[sources.{kind}]]\nname = \"s\"\n{key} = {value}\n"
            ));
            assert_eq!(
                (line, k.as_str()),
                (Some(3), format!("sources.{kind}[0].{key}").as_str())
            );
            assert!(text.contains("local-only"), "{text}");
        }
        let (_, _, k, _) = refused("[sources]\nmqtt = [{ name = \"s\", username = \"u\" }]\n");
        assert_eq!(k, "sources.mqtt[0].username");
        let (_, _, k, _) = refused("[sources.other]\nx = 1\n");
        assert_eq!(k, "[sources.other]");
    }

    #[test]
    fn a_document_names_files_relatively_without_dot_dot() {
        let hook = |k: &str, v: &str| {
            format!("[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\n{k} = \"{v}\"\nstatuses = [\"RoomAnalytics.PeopleCount.Current\"]\n")
        };
        for k in [
            "authorization_file",
            "password_file",
            "signing_secret_file",
            "ca_file",
            "client_cert_file",
            "client_key_file",
        ] {
            for v in ["/etc/shadow", "../x", "tokens/../../x", "a/.."] {
                let (file, line, key, text) = refused(&hook(k, v));
                assert_eq!(
                    (file.as_str(), line, key.clone()),
                    ("https://fleet/gw.toml", Some(4), format!("webhooks[0].{k}")),
                    "{k} = {v}"
                );
                assert!(
                    text.contains("relatively") && text.contains("fix: write"),
                    "{text}"
                );
            }
        }
        assert!(plain_name(Path::new("tokens/facilities.token")));
        assert!(plain_name(Path::new("facilities.token")));
        assert!(!plain_name(Path::new("")));
    }

    #[test]
    fn a_documents_files_are_found_in_the_credentials_or_the_local_directory() {
        let file = Path::new("/etc/roomhook/roomhook.toml");
        // The process's environment is shared by the tests: only read here.
        let expect = match std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            Some(d) => Path::new(&d).join("t"),
            None => PathBuf::from("/etc/roomhook/t"),
        };
        assert_eq!(doc_file(file, Path::new("t")), expect);
    }

    #[test]
    fn a_document_with_no_webhooks_takes_them_all_away() {
        let s = check_doc("webhooks = []\n").unwrap();
        assert!(s.webhooks.is_empty());
    }

    #[test]
    fn a_documents_static_headers_are_refused() {
        let (_, line, key, text) = refused(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nauth = \"none\"\nheaders = { x-api-key = \"t\" }\n",
        );
        assert_eq!((line, key.as_str()), (Some(5), "webhooks[0].headers"));
        assert!(
            text.contains("tokens") && text.contains("fix: remove headers"),
            "{text}"
        );
    }

    #[test]
    fn errors_in_what_the_document_set_point_into_it() {
        let (file, line, key, text) = refused(
            "[[webhooks]]\nname = \"a\"\nauth = \"none\"\nurl = \"http://x/\"\nstatuses = [\"RoomAnalytics.PeopleCount.Current\"]\n",
        );
        assert_eq!(
            (file.as_str(), line, key.as_str()),
            ("https://fleet/gw.toml", Some(4), "webhooks[0].url")
        );
        assert!(text.contains("plain http"), "{text}");
        let (file, line, key, _) = refused("[[sources.mqtt]]\nname = \"s\"\n\n[[sources.mqtt.subscriptions]]\ntopic = \"a/#\"\nformat = \"nope\"\n");
        assert_eq!(file, "https://fleet/gw.toml");
        assert!(key.starts_with("sources.mqtt[0].subscriptions[0]"), "{key}");
        assert_eq!(line, Some(6));
        let (_, line, _, _) = refused("[[webhooks]]\nname = \"a\"\nurl = \n");
        assert_eq!(line, Some(3));
    }
}
