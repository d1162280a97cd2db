//! MQTT topic filters (`+`, `#`) and the `{n}` templates that take device ids, workspace ids
//! or array ids from topic levels.

use std::fmt;

/// A validated MQTT subscription filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    raw: String,
    levels: Vec<String>,
}

/// Why a topic filter or template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    /// The filter is empty.
    #[error("the filter is empty")]
    Empty,
    /// `#` is not the whole last level.
    #[error("'#' must be the whole last level (e.g. \"sensors/#\")")]
    MisplacedHash,
    /// `+` is not a whole level.
    #[error("'+' must be a whole level (e.g. \"sensors/+/status\")")]
    MisplacedPlus,
    /// The filter contains a NUL character.
    #[error("the filter contains a NUL character")]
    Nul,
    /// A `{` without a matching `}` or a non-numeric placeholder.
    #[error("bad placeholder in {0:?}: use {{n}} with n a topic level number (0-based)")]
    BadPlaceholder(String),
    /// The placeholder names a level the filter does not have.
    #[error("{{{level}}} names topic level {level}, but the filter has only levels 0..{max}")]
    LevelOutOfRange {
        /// The level asked for.
        level: usize,
        /// The number of levels the filter has.
        max: usize,
    },
}

impl TopicFilter {
    /// Parses and checks a filter.
    pub(crate) fn parse(raw: &str) -> Result<Self, TopicError> {
        if raw.is_empty() {
            return Err(TopicError::Empty);
        }
        if raw.contains('\0') {
            return Err(TopicError::Nul);
        }
        let levels: Vec<String> = raw.split('/').map(str::to_string).collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (level != "#" || i + 1 != levels.len()) {
                return Err(TopicError::MisplacedHash);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::MisplacedPlus);
            }
        }
        Ok(Self {
            raw: raw.to_string(),
            levels,
        })
    }

    /// The filter as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether a concrete topic matches the filter.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            if level == "#" {
                // `#` matches the parent level too, but not topics starting with `$` at level 0.
                return !(i == 0 && topic.starts_with('$'));
            }
            match parts.next() {
                None => return false,
                Some(p) if level == "+" => {
                    if i == 0 && p.starts_with('$') {
                        return false;
                    }
                }
                Some(p) if p == level => {}
                Some(_) => return false,
            }
        }
        parts.next().is_none()
    }

    /// Whether topic level `n` always exists in a matching topic.
    fn has_level(&self, n: usize) -> bool {
        n < self.levels.len() && self.levels[n] != "#"
            || self.levels.last().is_some_and(|l| l == "#")
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Level(usize),
}

/// A string with `{n}` placeholders filled from topic levels (`"{1}"`, `"room-{2}"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template and checks its levels against the filter it is used with.
    pub(crate) fn parse(raw: &str, filter: &TopicFilter) -> Result<Self, TopicError> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TopicError::BadPlaceholder(raw.to_string()))?;
            let level: usize = after[..close]
                .trim()
                .parse()
                .map_err(|_| TopicError::BadPlaceholder(raw.to_string()))?;
            if !filter.has_level(level) {
                return Err(TopicError::LevelOutOfRange {
                    level,
                    max: filter.levels.len().saturating_sub(1),
                });
            }
            parts.push(Part::Level(level));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(TopicError::BadPlaceholder(raw.to_string()));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// Whether the template takes anything from the topic.
    #[cfg(test)]
    pub(crate) fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Fills the template from a topic; `None` when a named level is missing or empty.
    pub(crate) fn render(&self, topic: &str) -> Option<String> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Level(n) => {
                    let level = levels.get(*n).filter(|l| !l.is_empty())?;
                    out.push_str(level);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_a_broker() {
        let f = TopicFilter::parse("bench/+/status").unwrap();
        assert!(f.matches("bench/room-1/status"));
        assert!(!f.matches("bench/room-1/status/x"));
        assert!(!f.matches("bench/status"));
        let f = TopicFilter::parse("zigbee2mqtt/#").unwrap();
        assert!(f.matches("zigbee2mqtt/a/b"));
        assert!(f.matches("zigbee2mqtt"));
        assert!(!TopicFilter::parse("#").unwrap().matches("$SYS/x"));
    }

    #[test]
    fn rejects_bad_filters() {
        assert_eq!(TopicFilter::parse("a/#/b"), Err(TopicError::MisplacedHash));
        assert_eq!(TopicFilter::parse("a/b+"), Err(TopicError::MisplacedPlus));
        assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn templates_take_topic_levels() {
        let f = TopicFilter::parse("bench/+/status").unwrap();
        let t = Template::parse("room-{1}", &f).unwrap();
        assert_eq!(t.render("bench/7/status").as_deref(), Some("room-7"));
        assert!(Template::parse("{3}", &f).is_err());
        assert!(Template::parse("{x}", &f).is_err());
        assert!(Template::parse("lobby", &f).unwrap().is_literal());
        let deep = TopicFilter::parse("z/#").unwrap();
        let t = Template::parse("{2}", &deep).unwrap();
        assert_eq!(t.render("z/a"), None);
        assert_eq!(t.render("z/a/b").as_deref(), Some("b"));
    }
}
