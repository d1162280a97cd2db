//! Config files as TOML values (toml_edit), never edited as text: a test names what it
//! changes by path — `admin.listen`, `webhooks[facilities].url` (the element of an array of
//! tables whose `name` is `facilities`), `sources.mqtt[sensors].keep_alive` — and gets the
//! file back serialised, comments and order kept. Whole configs are built the same way:
//! [`Config`] with [`Section`]s (a webhook, an MQTT source and its subscriptions, a RoomOS
//! source, a `[[devices]]` entry), each with the tests' defaults.

use std::path::{Path, PathBuf};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

/// A config being edited.
#[derive(Clone)]
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

    /// Appends `section` to the array of tables it belongs in (`webhooks`, `sources.mqtt`,
    /// …), made if missing.
    pub fn add(&mut self, section: Section) -> &mut Self {
        let mut parent = self.0.as_table_mut();
        let mut path = section.array.split('.').peekable();
        while let Some(seg) = path.next() {
            if path.peek().is_none() {
                push(parent, seg, section.table);
                break;
            }
            // A table made only to hold the array has no header of its own (`[sources]`).
            parent = parent
                .entry(seg)
                .or_insert_with(|| {
                    let mut t = Table::new();
                    t.set_implicit(true);
                    Item::Table(t)
                })
                .as_table_mut()
                .unwrap_or_else(|| panic!("{seg} is not a table in the test config"));
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

/// Appends `table` to the array of tables `key` of `parent` (made if missing).
fn push(parent: &mut Table, key: &str, table: Table) {
    parent
        .entry(key)
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .unwrap_or_else(|| panic!("{key} is not an array of tables in the test config"))
        .push(table);
}

/// The value of a list of strings (`devices = ["*"]`).
pub fn list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(items.into_iter().map(|s| s.as_ref().to_string()).collect())
}

/// The path the standard subscription maps `/people` to.
pub const PEOPLE: &str = "RoomAnalytics.PeopleCount.Current";

/// The password of the tests' simulated RoomOS devices (user `roomhook`).
pub const DEVICE_PASSWORD: &str = "device-pass-123";

/// One entry of an array of tables of the config (a webhook, a source, a subscription, a
/// device), built as a value: a constructor gives the tests' defaults, [`set`](Self::set),
/// [`merge`](Self::merge) and [`remove`](Self::remove) change them.
#[derive(Debug, Clone)]
pub struct Section {
    /// Where it goes: `webhooks`, `sources.mqtt`, `sources.roomos`, `devices`,
    /// `subscriptions` (of an MQTT source).
    array: &'static str,
    table: Table,
}

impl Section {
    fn new(array: &'static str) -> Section {
        Section {
            array,
            table: Table::new(),
        }
    }

    /// A `[[webhooks]]` entry `name` to `url`, trusting `ca_file`, with the tests' defaults:
    /// the rig's [`TOKEN`](crate::TOKEN), every device, the people count, retries from
    /// 100 ms to 1 s, no drain jitter.
    pub fn webhook(name: &str, url: &str, ca_file: &Path) -> Section {
        Section::new("webhooks")
            .set("name", name)
            .set("url", url)
            .set("authorization", crate::TOKEN)
            .set("ca_file", ca_file.display().to_string())
            .set("devices", list(["*"]))
            .set("statuses", list([PEOPLE]))
            .set("retry_base", "100ms")
            .set("retry_max", "1s")
            .set("drain_start_jitter", "0s")
    }

    /// A `[[sources.mqtt]]` entry `name` on the broker at 127.0.0.1:`port`, with no
    /// subscription yet (client id `roomhook-<name>`).
    pub fn mqtt(name: &str, port: u16) -> Section {
        Section::new("sources.mqtt")
            .set("name", name)
            .set("url", format!("mqtt://127.0.0.1:{port}"))
            .set("client_id", format!("roomhook-{name}"))
    }

    /// The standard MQTT source: `sensors` on `port` with [`Section::people`].
    pub fn sensors(port: u16) -> Section {
        Section::mqtt("sensors", port)
            .set("client_id", "roomhook-test")
            .subscribe(Section::people())
    }

    /// A subscription of an MQTT source to `topic` in `format`.
    pub fn subscription(topic: &str, format: &str) -> Section {
        Section::new("subscriptions")
            .set("topic", topic)
            .set("format", format)
    }

    /// The standard subscription: `bench/<device>/status`, JSON, device and workspace
    /// (`ws-<device>`) from the topic, `/people` → [`PEOPLE`].
    pub fn people() -> Section {
        Section::subscription("bench/+/status", "json")
            .set("device", "{1}")
            .set("workspace", "ws-{1}")
            .field("/people", PEOPLE)
    }

    /// A `[[sources.roomos]]` entry `name` for the simulated `device` (its URL and pin; user
    /// `roomhook`, workspace `ws-<name>`, keep_alive 10 s: short only where a test is about
    /// it, a loaded CI machine must not see dead peers).
    pub fn roomos(name: &str, device: &roomhook::demo::device::DeviceSim) -> Section {
        Section::new("sources.roomos")
            .set("name", name)
            .set("url", device.url())
            .set("username", "roomhook")
            .set("password", DEVICE_PASSWORD)
            .set("pin_sha256", device.cert_sha256())
            .set("workspace", format!("ws-{name}"))
            .set("keep_alive", "10s")
    }

    /// A `[[devices]]` entry: `sensor` is device `device` in workspace `workspace`.
    pub fn device(sensor: &str, device: &str, workspace: &str) -> Section {
        Section::new("devices")
            .set("sensor", sensor)
            .set("device", device)
            .set("workspace", workspace)
    }

    /// Sets `key` (a key of this table).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Section {
        self.table.insert(key, Item::Value(v.into()));
        self
    }

    /// Sets every key of `snippet` (TOML, e.g. `"rate_limit = 5\nburst = 2"`; empty: none).
    pub fn merge(mut self, snippet: &str) -> Section {
        let extra: DocumentMut = snippet.parse().expect("a snippet that parses");
        for (k, v) in extra.iter() {
            self.table.insert(k, v.clone());
        }
        self
    }

    /// Removes `key`.
    pub fn remove(mut self, key: &str) -> Section {
        assert!(self.table.remove(key).is_some(), "no {key} to remove");
        self
    }

    /// Adds a subscription (of an MQTT source).
    pub fn subscribe(mut self, subscription: Section) -> Section {
        assert_eq!(subscription.array, "subscriptions", "not a subscription");
        push(&mut self.table, "subscriptions", subscription.table);
        self
    }

    /// Maps `pointer` to the catalog `path` (in a subscription's `fields`).
    pub fn field(mut self, pointer: &str, path: &str) -> Section {
        let fields = self
            .table
            .entry("fields")
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .expect("fields is a table");
        fields.insert(pointer, Item::Value(path.into()));
        self
    }
}

/// A whole config, built as a value: `[gateway]` with `data_dir = "data"` and `org_id =
/// "test-org"`, then what is added.
#[derive(Clone)]
pub struct Config(Doc);

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// Only `[gateway]`.
    pub fn new() -> Config {
        Config(Doc(
            "[gateway]\ndata_dir = \"data\"\norg_id = \"test-org\"\n"
                .parse()
                .expect("the base config"),
        ))
    }

    /// With an `[admin]` listener on 127.0.0.1:`port`.
    pub fn admin(self, port: u16) -> Config {
        self.edit(|d| {
            d.set("admin.listen", format!("127.0.0.1:{port}"));
        })
    }

    /// With every key of `snippet` in `[gateway]`.
    pub fn gateway(self, snippet: &str) -> Config {
        self.edit(|d| {
            d.merge("gateway", snippet);
        })
    }

    /// With `section` appended where it belongs.
    pub fn with(self, section: Section) -> Config {
        self.edit(|d| {
            d.add(section);
        })
    }

    /// With any other change, by path.
    pub fn edit(mut self, f: impl FnOnce(&mut Doc)) -> Config {
        f(&mut self.0);
        self
    }

    /// Written to `dir/roomhook.toml`; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_as(dir, "roomhook.toml")
    }

    /// Written to `dir/name`; its path.
    pub fn write_as(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.to_string()).expect("write the config");
        path
    }
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0 .0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::{edit, Config, Section};

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

    #[test]
    fn a_config_built_from_sections_reads_as_the_daemon_reads_it() {
        let text = Config::new()
            .admin(9)
            .gateway("commit_interval = \"2s\"")
            .with(Section::sensors(1883))
            .with(
                Section::mqtt("zigbee", 1884)
                    .subscribe(Section::subscription("z/#", "zigbee2mqtt")),
            )
            .with(
                Section::webhook("a", "https://x/hook", std::path::Path::new("/ca.pem"))
                    .merge("max_in_flight = 4\nfilters.\"RoomAnalytics.AmbientTemperature\".deadband = 0.3"),
            )
            .with(Section::device("pir", "room-1", "ws-1"))
            .to_string();
        assert!(!text.contains("[sources]\n"), "{text}");
        let v: toml_edit::DocumentMut = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["gateway"]["org_id"].as_str(), Some("test-org"));
        assert_eq!(v["gateway"]["commit_interval"].as_str(), Some("2s"));
        assert_eq!(v["admin"]["listen"].as_str(), Some("127.0.0.1:9"));
        let mqtt = v["sources"]["mqtt"].as_array_of_tables().unwrap();
        assert_eq!(mqtt.len(), 2);
        let sensors = mqtt.get(0).unwrap();
        assert_eq!(sensors["client_id"].as_str(), Some("roomhook-test"));
        let sub = sensors["subscriptions"]
            .as_array_of_tables()
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(sub["topic"].as_str(), Some("bench/+/status"));
        assert_eq!(
            sub["fields"]["/people"].as_str(),
            Some("RoomAnalytics.PeopleCount.Current")
        );
        assert_eq!(
            mqtt.get(1).unwrap()["client_id"].as_str(),
            Some("roomhook-zigbee")
        );
        let hook = v["webhooks"].as_array_of_tables().unwrap().get(0).unwrap();
        assert_eq!(hook["max_in_flight"].as_integer(), Some(4));
        assert_eq!(hook["devices"][0].as_str(), Some("*"));
        assert_eq!(
            hook["filters"]["RoomAnalytics.AmbientTemperature"]["deadband"].as_float(),
            Some(0.3)
        );
        let devices = v["devices"].as_array_of_tables().unwrap();
        assert_eq!(devices.get(0).unwrap()["sensor"].as_str(), Some("pir"));
    }
}
