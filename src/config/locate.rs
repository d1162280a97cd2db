//! Finds the line of a key path (`webhooks[1].statuses[0]`) in the TOML text, so that
//! validation errors can point at it.

use toml_edit::{Item, TableLike, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Splits `a.b[2].c` into steps.
pub(crate) fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            steps.push(Step::Key(name.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                steps.push(Step::Index(n));
            }
        }
    }
    steps
}

enum Cursor<'a> {
    Item(&'a Item),
    Table(&'a dyn TableLike),
    Value(&'a Value),
}

/// The 1-based line of the deepest part of `path` present in `text`, if the text parses.
pub(crate) fn line_of(text: &str, path: &str) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut cursor = Cursor::Item(doc.as_item());
    let mut span = None;
    for step in parse_path(path) {
        let next = match (&step, &cursor) {
            (Step::Key(k), c) => {
                let table: Option<&dyn TableLike> = match c {
                    Cursor::Item(i) => i.as_table_like(),
                    Cursor::Table(t) => Some(*t),
                    Cursor::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
                };
                table.and_then(|t| t.get_key_value(k)).map(|(key, item)| {
                    span = key.span().or_else(|| item.span()).or(span.clone());
                    Cursor::Item(item)
                })
            }
            (Step::Index(n), Cursor::Item(i)) => {
                if let Some(aot) = i.as_array_of_tables() {
                    aot.get(*n).map(|t| {
                        span = t.span().or(span.clone());
                        Cursor::Table(t as &dyn TableLike)
                    })
                } else {
                    i.as_array().and_then(|a| a.get(*n)).map(|v| {
                        span = v.span().or(span.clone());
                        Cursor::Value(v)
                    })
                }
            }
            (Step::Index(n), Cursor::Value(v)) => v.as_array().and_then(|a| a.get(*n)).map(|v| {
                span = v.span().or(span.clone());
                Cursor::Value(v)
            }),
            (Step::Index(_), Cursor::Table(_)) => None,
        };
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    let start = span?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[gateway]\ndata_dir = \"x\"\n\n[[webhooks]]\nname = \"a\"\n\n[[webhooks]]\nname = \"b\"\nstatuses = [\n  \"A\",\n  \"B\",\n]\n";

    #[test]
    fn finds_keys_in_arrays_of_tables() {
        assert_eq!(line_of(TEXT, "gateway.data_dir"), Some(2));
        assert_eq!(line_of(TEXT, "webhooks[1].name"), Some(8));
        assert_eq!(line_of(TEXT, "webhooks[1].statuses[1]"), Some(11));
        // A missing key points at its parent.
        assert_eq!(line_of(TEXT, "webhooks[0].url"), Some(4));
    }
}
