//! Which devices a webhook selects: ids and globs (`*` any run, `?` one character, `\` makes
//! the next character literal, so that an id holding `*` or `?` can be named alone).

/// A list of device ids and globs (`*` any run, `?` one character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceSelector(Vec<String>);

impl DeviceSelector {
    /// Checks a list of patterns.
    pub(crate) fn parse(patterns: Vec<String>) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("the device list is empty, so the webhook would get nothing".into());
        }
        if let Some(p) = patterns.iter().find(|p| p.trim().is_empty()) {
            return Err(format!("{p:?} is an empty device pattern"));
        }
        Ok(Self(patterns))
    }

    /// The patterns as written.
    pub(crate) fn patterns(&self) -> &[String] {
        &self.0
    }

    /// Whether a device id is selected.
    pub fn matches(&self, device: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), device.as_bytes()))
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        // The pattern's next literal byte and its width (`\x` is x); None for `*`, `?`, end.
        let literal = match p.get(pi) {
            Some(b'\\') if pi + 1 < p.len() => Some((p[pi + 1], 2)),
            Some(b'*' | b'?') | None => None,
            Some(&c) => Some((c, 1)),
        };
        if p.get(pi) == Some(&b'?') {
            pi += 1;
            si += 1;
        } else if let Some((_, width)) = literal.filter(|(c, _)| *c == s[si]) {
            pi += width;
            si += 1;
        } else if p.get(pi) == Some(&b'*') {
            star = Some(pi);
            pi += 1;
            mark = si;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let d = DeviceSelector::parse(vec!["room-*".into(), "lobby-?".into()]).unwrap();
        assert!(d.matches("room-12"));
        assert!(d.matches("lobby-1"));
        assert!(!d.matches("lobby-12"));
        assert!(!d.matches("hall"));
        assert!(DeviceSelector::parse(vec![]).is_err());
    }

    #[test]
    fn an_escaped_glob_character_matches_itself_alone() {
        // What the console writes for a device whose id is `x, *`.
        let d = DeviceSelector::parse(vec![r"x, \*".into()]).unwrap();
        assert!(d.matches("x, *"));
        assert!(!d.matches("x, y"));
        assert!(!d.matches("x, "));
        let d = DeviceSelector::parse(vec![r"a\?b\\c*".into()]).unwrap();
        assert!(d.matches(r"a?b\c-1"));
        assert!(!d.matches(r"axb\c"));
        // A lone backslash at the end is itself.
        assert!(DeviceSelector::parse(vec![r"x\".into()])
            .unwrap()
            .matches(r"x\"));
    }
}
