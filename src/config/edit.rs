//! Edits of the config file made through the control API: add, change, rename or remove one
//! `[[webhooks]]` table with toml_edit, so that comments and everything else in the file
//! stay as the operator wrote them; the file is replaced atomically.

use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// Keys that together say how a webhook authenticates: changing one replaces them all.
const AUTH_KEYS: &[&str] = &[
    "auth",
    "authorization",
    "authorization_file",
    "username",
    "password",
    "password_file",
];
/// Pairs where setting one side removes the other.
const EITHER: &[(&str, &str)] = &[("signing_secret", "signing_secret_file")];

/// One change to the `[[webhooks]]` list. Values are config keys and values as JSON
/// (strings, numbers, booleans, arrays of strings, a table of strings for `headers`);
/// `null` removes a key.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// A new webhook (its `name` is among the values).
    Add(Map<String, Value>),
    /// Changes to the webhook named `name` (a `name` value renames it).
    Set {
        /// Current name.
        name: String,
        /// Keys to set or remove.
        changes: Map<String, Value>,
    },
    /// Removes the webhook named so.
    Remove(String),
}

/// Why an edit cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file is not valid TOML (a hand edit in progress?).
    #[error("the config file is not valid TOML now, fix it first: {0}")]
    Parse(String),
    /// No such webhook.
    #[error("no webhook named {0:?}")]
    Unknown(String),
    /// The name is taken.
    #[error("a webhook named {0:?} exists already")]
    Exists(String),
    /// A value that has no TOML form here.
    #[error("{key}: {problem}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// Applies an edit to config text and returns the new text (not yet checked as config).
pub(crate) fn apply(text: &str, edit: &Edit) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Parse(e.to_string()))?;
    let list = webhooks(&mut doc)?;
    let find = |list: &ArrayOfTables, name: &str| {
        list.iter()
            .position(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
    };
    match edit {
        Edit::Add(values) => {
            let name = values
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if find(list, name).is_some() {
                return Err(EditError::Exists(name.to_string()));
            }
            let mut table = Table::new();
            // `name` and `url` first, like a hand-written entry.
            for key in ["name", "url"] {
                if let Some(v) = values.get(key) {
                    set(&mut table, key, v)?;
                }
            }
            for (k, v) in values.iter().filter(|(k, _)| *k != "name" && *k != "url") {
                set(&mut table, k, v)?;
            }
            list.push(table);
        }
        Edit::Set { name, changes } => {
            let i = find(list, name).ok_or_else(|| EditError::Unknown(name.clone()))?;
            if let Some(new) = changes.get("name").and_then(Value::as_str) {
                if new != name && find(list, new).is_some() {
                    return Err(EditError::Exists(new.to_string()));
                }
            }
            let table = list
                .get_mut(i)
                .ok_or_else(|| EditError::Unknown(name.clone()))?;
            if changes.keys().any(|k| AUTH_KEYS.contains(&k.as_str())) {
                for k in AUTH_KEYS {
                    table.remove(k);
                }
            }
            for (a, b) in EITHER {
                if changes.contains_key(*a) {
                    table.remove(b);
                }
                if changes.contains_key(*b) {
                    table.remove(a);
                }
            }
            for (k, v) in changes {
                set(table, k, v)?;
            }
        }
        Edit::Remove(name) => {
            let i = find(list, name).ok_or_else(|| EditError::Unknown(name.clone()))?;
            list.remove(i);
        }
    }
    Ok(doc.to_string())
}

fn webhooks(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, EditError> {
    let item = doc
        .entry("webhooks")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut()
        .ok_or_else(|| EditError::Value {
            key: "webhooks".into(),
            problem: "is not written as [[webhooks]] tables; API edits need that form".into(),
        })
}

fn set(table: &mut Table, key: &str, v: &Value) -> Result<(), EditError> {
    if v.is_null() {
        table.remove(key);
        return Ok(());
    }
    table.insert(key, Item::Value(to_toml(key, v)?));
    Ok(())
}

fn to_toml(key: &str, v: &Value) -> Result<toml_edit::Value, EditError> {
    let bad = |problem: &str| EditError::Value {
        key: key.to_string(),
        problem: problem.to_string(),
    };
    Ok(match v {
        Value::String(s) => s.as_str().into(),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) => f.into(),
            _ => return Err(bad("is not a number TOML can hold")),
        },
        Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for item in items {
                a.push(to_toml(key, item)?);
            }
            toml_edit::Value::Array(a)
        }
        Value::Object(map) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, item) in map {
                t.insert(k, to_toml(key, item)?);
            }
            toml_edit::Value::InlineTable(t)
        }
        Value::Null => return Err(bad("null inside a value")),
    })
}

/// Replaces `path` with `text`: written to a temporary file beside it (same mode, owner
/// and group), flushed to disk, renamed over it, and the directory synced. A symlinked
/// config is followed: its target is replaced, the link stays.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let path = target.as_path();
    let dir = super::base_dir(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        tmp.as_file().set_permissions(meta.permissions())?;
        // Keeping owner and group needs the right to; a daemon editing its own file has it
        // for its own group, root for any.
        let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()));
    }
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TEXT: &str = r#"# site config
[gateway]
data_dir = "d"

# the BI team's receiver
[[webhooks]]
name = "bi"
url = "https://bi.example/hook"
username = "u"
password_file = "pw"   # from the vault
statuses = ["RoomAnalytics.*"]
"#;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn add_set_rename_remove_keep_comments() {
        let added = apply(
            TEXT,
            &Edit::Add(obj(json!({"url": "https://x.example/", "name": "x",
                "authorization": "Bearer t", "devices": ["room-*"], "max_in_flight": 4}))),
        )
        .unwrap();
        assert!(added.contains("# the BI team's receiver"));
        assert!(added.contains("password_file = \"pw\"   # from the vault"));
        assert!(added.contains("[[webhooks]]\nname = \"x\"\nurl = \"https://x.example/\""));
        assert!(added.contains("devices = [\"room-*\"]"));
        assert!(added.contains("max_in_flight = 4"));
        assert!(matches!(
            apply(&added, &Edit::Add(obj(json!({"name": "x"})))),
            Err(EditError::Exists(_))
        ));

        // Changing the kind of auth drops the other kind's keys.
        let set = apply(
            &added,
            &Edit::Set {
                name: "bi".into(),
                changes: obj(json!({"authorization_file": "/run/tok", "name": "bi2"})),
            },
        )
        .unwrap();
        assert!(!set.contains("password_file"));
        assert!(!set.contains("username"));
        assert!(set.contains("name = \"bi2\""));
        assert!(set.contains("authorization_file = \"/run/tok\""));
        assert!(matches!(
            apply(
                &set,
                &Edit::Set {
                    name: "bi2".into(),
                    changes: obj(json!({"name": "x"}))
                }
            ),
            Err(EditError::Exists(_))
        ));

        let removed = apply(&set, &Edit::Remove("x".into())).unwrap();
        assert!(!removed.contains("x.example"));
        assert!(removed.contains("bi2"));
        assert!(matches!(
            apply(&removed, &Edit::Remove("x".into())),
            Err(EditError::Unknown(_))
        ));
    }

    #[test]
    fn first_webhook_in_a_file_without_any() {
        let out = apply(
            "[gateway]\ndata_dir = \"d\"\n",
            &Edit::Add(obj(
                json!({"name": "a", "url": "https://a/", "auth": "none"}),
            )),
        )
        .unwrap();
        let cfg: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(cfg["webhooks"][0]["name"].as_str(), Some("a"));
    }

    #[test]
    fn atomic_write_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
}
