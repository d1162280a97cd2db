//! Config files as TOML values (toml_edit), never edited as text: a test names what it
//! changes by path — `admin.listen`, `webhooks[facilities].url` (the element of an array of
//! tables whose `name` is `facilities`), `sources.mqtt[sensors].keep_alive` — and gets the
//! file back serialised, comments and order kept.

use toml_edit::{DocumentMut, Item, Table, Value};

/// A config being edited.
pub struct Doc(DocumentMut);

/// `text` with the edits `f` makes. Panics on a path that does not exist in it (a test's
/// mistake, never the daemon's).
pub fn edit(text: &str, f: impl FnOnce(&mut Doc)) -> String {
    let mut d = Doc(text.parse().expect("a test config that parses"));
    f(&mut d);
    d.0.to_string()
}

impl Doc {
    /// Sets `path` (its tables are made as needed; array elements must exist).
    pub fn set(&mut self, path: &str, v: impl Into<Value>) -> &mut Self {
        let (table, key) = self.parent(path);
        table.insert(key, Item::Value(v.into()));
        self
    }

    /// A comment line above the key at `path` (a test that the daemon's own edits keep
    /// comments).
    pub fn comment(&mut self, path: &str, text: &str) -> &mut Self {
        let (table, key) = self.parent(path);
        let mut k = table
            .key_mut(key)
            .unwrap_or_else(|| panic!("no {path} in the test config"));
        k.leaf_decor_mut().set_prefix(format!("# {text}\n"));
        self
    }

    /// Removes the key at `path`.
    pub fn remove(&mut self, path: &str) -> &mut Self {
        let (table, key) = self.parent(path);
        assert!(table.remove(key).is_some(), "no {path} in the test config");
        self
    }

    /// Sets every key of `snippet` (TOML, e.g. `"rate_limit = 5\nburst = 2"`) in the table
    /// at `path`.
    pub fn merge(&mut self, path: &str, snippet: &str) -> &mut Self {
        let extra: DocumentMut = snippet.parse().expect("a snippet that parses");
        let table = self.table(path);
        for (k, v) in extra.iter() {
            table.insert(k, v.clone());
        }
        self
    }

    /// The table at `path` (made if missing).
    pub fn table(&mut self, path: &str) -> &mut Table {
        let mut t = self.0.as_table_mut();
        for seg in path.split('.') {
            t = step(t, seg, path);
        }
        t
    }

    fn parent<'a>(&mut self, path: &'a str) -> (&mut Table, &'a str) {
        match path.rsplit_once('.') {
            Some((tables, key)) => (self.table(tables), key),
            None => (self.0.as_table_mut(), path),
        }
    }
}

/// One step down: `name` (a table, made if missing) or `name[element]` (the element of an
/// array of tables whose `name` key is `element`).
fn step<'t>(t: &'t mut Table, seg: &str, path: &str) -> &'t mut Table {
    match seg.split_once('[') {
        Some((array, rest)) => {
            let wanted = rest.trim_end_matches(']');
            t.get_mut(array)
                .and_then(Item::as_array_of_tables_mut)
                .and_then(|a| {
                    a.iter_mut()
                        .find(|e| e.get("name").and_then(Item::as_str) == Some(wanted))
                })
                .unwrap_or_else(|| panic!("no {seg} for {path} in the test config"))
        }
        None => {
            let item = t.entry(seg).or_insert_with(|| {
                let mut n = Table::new();
                n.set_implicit(false);
                Item::Table(n)
            });
            item.as_table_mut()
                .unwrap_or_else(|| panic!("{seg} of {path} is not a table in the test config"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::edit;

    #[test]
    fn paths_reach_tables_and_named_elements() {
        let text = "[gateway]\norg_id = \"o\"\n\n[[webhooks]]\nname = \"a\"\nurl = \"x\"\n\n[[webhooks]]\nname = \"b\"\nurl = \"y\"\n";
        let out = edit(text, |d| {
            d.set("webhooks[b].url", "z")
                .set("admin.listen", "127.0.0.1:1")
                .merge("gateway", "commit_interval = \"2s\"")
                .remove("webhooks[a].url");
        });
        let v: toml_edit::DocumentMut = out.parse().unwrap();
        assert_eq!(v["webhooks"][1]["url"].as_str(), Some("z"));
        assert!(v["webhooks"][0].get("url").is_none());
        assert_eq!(v["admin"]["listen"].as_str(), Some("127.0.0.1:1"));
        assert_eq!(v["gateway"]["commit_interval"].as_str(), Some("2s"));
    }
}
