//! The xAPI query language: query paths (`*`, `**`, `Name[id]`) and the documents they name,
//! which paths a document has, what a role may not read, and the part of a tree a query selects.

use super::rpc::{RpcError, INVALID_PARAMS, NO_MATCH};
use super::tree::{entry_id, with_id};
use super::Role;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An xAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Doc {
    /// Status values.
    Status,
    /// Events.
    Event,
}

impl Doc {
    /// The document's name, as the first path element and the notification key.
    pub(super) fn name(self) -> &'static str {
        match self {
            Doc::Status => "Status",
            Doc::Event => "Event",
        }
    }
}

/// One element of a query path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Elem {
    /// A node name, or an array entry id after an array name.
    Key(String),
    /// `*`: any one level.
    Any,
    /// `**`: any depth, including none.
    Deep,
}

/// The Status paths an account may not read (relative to Status).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deny(pub(super) &'static [&'static [&'static str]]);

/// What an Integrator account may not read: the statuses the xAPI reference grants only the
/// Admin and User roles.
const INTEGRATOR_DENY: &[&[&str]] = &[
    &["RoomAnalytics", "AmbientTemperature"],
    &["RoomAnalytics", "RelativeHumidity"],
    &["RoomAnalytics", "AirQuality"],
    &["RoomAnalytics", "InsideRoom"],
    &["RoomAnalytics", "OutsideRoom"],
    &["Bookings"],
    &["SystemUnit", "State", "System"],
];

impl Deny {
    /// The paths `role` may not read.
    pub(super) fn for_role(role: Role) -> Deny {
        match role {
            Role::Integrator => Deny(INTEGRATOR_DENY),
            Role::Admin | Role::User => Deny(&[]),
        }
    }

    /// Whether the concrete path is (below) a forbidden node.
    fn path(&self, path: &[String]) -> bool {
        self.0
            .iter()
            .any(|f| path.len() >= f.len() && f.iter().zip(path).all(|(a, b)| *a == b.as_str()))
    }

    /// Whether a query names a forbidden node (or something below it) literally.
    pub(super) fn pattern(&self, pat: &[Elem]) -> bool {
        self.0.iter().any(|f| {
            pat.len() >= f.len()
                && f.iter()
                    .zip(pat)
                    .all(|(a, b)| matches!(b, Elem::Key(k) if k == a))
        })
    }
}

/// The shape of a document: which paths exist.
#[derive(Debug, Clone, Default)]
pub(super) enum Schema {
    /// A value.
    #[default]
    Leaf,
    /// An object with named children.
    Node(BTreeMap<String, Schema>),
    /// An array whose entries have this shape (a `Node`).
    List(Box<Schema>),
}

impl Schema {
    /// The shape of a value.
    pub(super) fn of(value: &Value) -> Schema {
        match value {
            Value::Object(m) => {
                Schema::Node(m.iter().map(|(k, v)| (k.clone(), Schema::of(v))).collect())
            }
            Value::Array(list) => {
                let mut element = Schema::Node(BTreeMap::new());
                for entry in list {
                    let mut s = Schema::of(entry);
                    if let Schema::Node(m) = &mut s {
                        m.remove("id");
                    }
                    element.merge(s);
                }
                Schema::List(Box::new(element))
            }
            _ => Schema::Leaf,
        }
    }

    /// Adds the paths of `other`.
    pub(super) fn merge(&mut self, other: Schema) {
        match (&mut *self, other) {
            (_, Schema::Leaf) => {}
            (Schema::Node(a), Schema::Node(b)) => {
                for (k, v) in b {
                    a.entry(k).or_default().merge(v);
                }
            }
            (Schema::List(a), Schema::List(b)) => a.merge(*b),
            (me, other) => *me = other,
        }
    }

    /// Whether a query matches at least one path of this shape.
    pub(super) fn matches(&self, pat: &[Elem]) -> bool {
        let Some((first, rest)) = pat.split_first() else {
            return true;
        };
        if *first == Elem::Deep {
            return self.matches(rest)
                || match self {
                    Schema::Leaf => false,
                    Schema::Node(m) => m.values().any(|c| c.matches(pat)),
                    Schema::List(e) => e.matches(pat),
                };
        }
        match self {
            Schema::Leaf => false,
            Schema::Node(m) => match first {
                Elem::Key(k) => m.get(k).is_some_and(|c| c.matches(rest)),
                _ => m.values().any(|c| c.matches(rest)),
            },
            Schema::List(e) => match first {
                Elem::Key(k) if is_index(k) => e.matches(rest),
                Elem::Any => e.matches(rest),
                _ => e.matches(pat),
            },
        }
    }
}

/// A query path: its document, the pattern below it and the elements as strings.
pub(super) fn parse_query(v: &Value) -> Result<(Doc, Vec<Elem>, Vec<String>), RpcError> {
    let list = v.as_array().ok_or(INVALID_PARAMS)?;
    let (first, rest) = list.split_first().ok_or(INVALID_PARAMS)?;
    let doc = match first.as_str().ok_or(INVALID_PARAMS)? {
        "Status" => Doc::Status,
        "Event" => Doc::Event,
        _ => return Err(NO_MATCH),
    };
    let mut strings = vec![doc.name().to_string()];
    let mut pattern = Vec::with_capacity(rest.len());
    for item in rest {
        match item {
            Value::String(s) => {
                strings.push(s.clone());
                match s.as_str() {
                    "*" => pattern.push(Elem::Any),
                    "**" => pattern.push(Elem::Deep),
                    _ => match split_indexed(s) {
                        Some((name, id)) => {
                            pattern.push(Elem::Key(name.to_string()));
                            pattern.push(Elem::Key(id.to_string()));
                        }
                        None => pattern.push(Elem::Key(s.clone())),
                    },
                }
            }
            Value::Number(n) => {
                let n = n.as_u64().ok_or(INVALID_PARAMS)?;
                strings.push(n.to_string());
                pattern.push(Elem::Key(n.to_string()));
            }
            _ => return Err(INVALID_PARAMS),
        }
    }
    Ok((doc, pattern, strings))
}

/// "Name[id]" → ("Name", "id").
pub(super) fn split_indexed(s: &str) -> Option<(&str, &str)> {
    let (name, rest) = s.split_once('[')?;
    let id = rest.strip_suffix(']')?;
    (!name.is_empty() && !id.is_empty()).then_some((name, id))
}

/// Whether a path element is an array index (ids are numbers).
fn is_index(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())
}

/// A copy of `node` without what `deny` forbids (`path` is where `node` is); None if nothing is left.
pub(super) fn filter(node: &Value, path: &mut Vec<String>, deny: Deny) -> Option<Value> {
    if deny.path(path) {
        return None;
    }
    match node {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in m {
                path.push(k.clone());
                if let Some(v) = filter(child, path, deny) {
                    out.insert(k.clone(), v);
                }
                path.pop();
            }
            (m.is_empty() || !out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(list) => {
            let mut out = Vec::with_capacity(list.len());
            for entry in list {
                path.push(entry_id(entry).unwrap_or_default().to_string());
                if let Some(v) = filter(entry, path, deny) {
                    out.push(v);
                }
                path.pop();
            }
            (list.is_empty() || !out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

/// The part of `node` a query pattern matches, as a partial tree from `node`; None if nothing.
pub(super) fn select(
    node: &Value,
    pat: &[Elem],
    path: &mut Vec<String>,
    deny: Deny,
) -> Option<Value> {
    if deny.path(path) {
        return None;
    }
    let Some((first, rest)) = pat.split_first() else {
        return filter(node, path, deny);
    };
    match (first, node) {
        (Elem::Deep, _) => {
            if rest.is_empty() {
                return filter(node, path, deny);
            }
            let here = select(node, rest, path, deny);
            let deeper = match node {
                Value::Object(m) => select_children(m, pat, path, deny),
                Value::Array(list) => select_entries(list, None, pat, path, deny),
                _ => None,
            };
            match (here, deeper) {
                (Some(a), Some(b)) => Some(merge(a, b)),
                (a, b) => a.or(b),
            }
        }
        (Elem::Key(k), Value::Object(m)) => {
            let child = m.get(k)?;
            path.push(k.clone());
            let found = select(child, rest, path, deny);
            path.pop();
            let mut out = Map::new();
            out.insert(k.clone(), found?);
            Some(Value::Object(out))
        }
        (Elem::Any, Value::Object(m)) => select_children(m, rest, path, deny),
        (Elem::Key(k), Value::Array(list)) => {
            if is_index(k) || list.iter().any(|e| entry_id(e) == Some(k.as_str())) {
                select_entries(list, Some(k), rest, path, deny)
            } else {
                // An array name without an index: every entry.
                select_entries(list, None, pat, path, deny)
            }
        }
        (Elem::Any, Value::Array(list)) => select_entries(list, None, rest, path, deny),
        _ => None,
    }
}

/// `select` on every child of an object.
fn select_children(
    m: &Map<String, Value>,
    pat: &[Elem],
    path: &mut Vec<String>,
    deny: Deny,
) -> Option<Value> {
    let mut out = Map::new();
    for (k, child) in m {
        path.push(k.clone());
        if let Some(v) = select(child, pat, path, deny) {
            out.insert(k.clone(), v);
        }
        path.pop();
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// `select` on the entries of an array (only the one with id `only`, if given).
fn select_entries(
    list: &[Value],
    only: Option<&str>,
    pat: &[Elem],
    path: &mut Vec<String>,
    deny: Deny,
) -> Option<Value> {
    let mut out = Vec::new();
    for entry in list {
        let id = entry_id(entry).unwrap_or_default();
        if only.is_some_and(|o| o != id) {
            continue;
        }
        path.push(id.to_string());
        let found = select(entry, pat, path, deny);
        path.pop();
        if let Some(Value::Object(fields)) = found {
            out.push(with_id(id, fields));
        }
    }
    (!out.is_empty()).then_some(Value::Array(out))
}

/// Two partial trees as one (array entries joined by id).
fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut x), Value::Object(y)) => {
            for (k, v) in y {
                let joined = match x.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                x.insert(k, joined);
            }
            Value::Object(x)
        }
        (Value::Array(mut x), Value::Array(y)) => {
            for entry in y {
                let slot = entry_id(&entry)
                    .and_then(|id| x.iter().position(|o| entry_id(o) == Some(id)))
                    .and_then(|p| x.get_mut(p));
                match slot {
                    Some(slot) => {
                        let old = std::mem::take(slot);
                        *slot = merge(old, entry);
                    }
                    None => x.push(entry),
                }
            }
            Value::Array(x)
        }
        (_, b) => b,
    }
}
