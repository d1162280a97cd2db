//! A webhook's request-body compression (`compression = "none" | "gzip"`), as the config
//! reads it and delivery applies it (`deliver::compress`).

/// How a webhook's request bodies go on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Compression {
    /// As they are (the default: every receiver reads them).
    #[default]
    None,
    /// `Content-Encoding: gzip` on bodies of at least 1 KiB (batches).
    Gzip,
}

impl Compression {
    /// Every config value, the default first.
    pub(crate) const VALUES: [&'static str; 2] = ["none", "gzip"];

    /// The value of a config string, if it is one.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_are_the_serialised_ones() {
        for v in Compression::VALUES {
            let c = Compression::parse(v).unwrap();
            assert_eq!(serde_json::to_value(c).unwrap(), v);
        }
        assert_eq!(Compression::parse("GZIP"), None);
        assert_eq!(
            Compression::parse(Compression::VALUES[0]),
            Some(Compression::default())
        );
    }
}
