//! Where logs go and how they look: journald under systemd (structured fields, falling
//! back to stderr when the journal cannot be reached), or stderr as text or JSON lines;
//! filtered with a `RUST_LOG`-style filter from the flag, the environment or the config.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when started by systemd with stderr on the journal, text otherwise.
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// The systemd journal (falls back to text on stderr if it cannot be reached).
    Journald,
}

/// Installs the global subscriber. `filter` is a `RUST_LOG`-style list of `level` and
/// `target=level` directives such as `info,roomhook::deliver=debug` (targets only: no span or
/// field filters, which would need a regex engine in the binary); an invalid one falls
/// back to `info` with a warning.
pub fn init(filter: &str, format: LogFormat) {
    let (env_filter, bad) = match filter.parse::<Targets>() {
        Ok(f) => (f, None),
        Err(e) => (Targets::new().with_default(tracing::Level::INFO), Some(e)),
    };
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        LogFormat::Text | LogFormat::Json => false,
    };
    let registry = tracing_subscriber::registry().with(env_filter);
    let mut fell_back = None;
    if journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                registry
                    .with(
                        layer
                            .with_syslog_identifier("roomhook".into())
                            .with_field_prefix(None),
                    )
                    .init();
                warn_bad_filter(filter, bad);
                return;
            }
            Err(e) => fell_back = Some(e),
        }
    }
    if format == LogFormat::Json {
        // JSON escapes control characters itself.
        let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        registry.with(stderr.json().flatten_event(true)).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(move || OneLine {
                out: std::io::stderr(),
                ansi,
            })
            .with_ansi(ansi);
        registry.with(stderr).init();
    }
    if let Some(e) = fell_back {
        tracing::warn!("cannot reach the systemd journal ({e}); logging to stderr");
    }
    warn_bad_filter(filter, bad);
}

/// Writes each text log line as one line: a control character inside it (a newline from a
/// topic, a device's message or a receiver's answer) becomes a space, so that nothing a peer
/// sends can forge a line of its own. The escape character stays only for the colours of a
/// terminal. (The formatter hands over one whole line per write.)
struct OneLine<W> {
    out: W,
    ansi: bool,
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write_all(&one_line(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `line` with every control byte but a final newline (and, with `ansi`, the escape
/// character) made a space.
fn one_line(line: &[u8], ansi: bool) -> Vec<u8> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let mut out: Vec<u8> = body
        .iter()
        .map(|&b| match b {
            0x1b if ansi => b,
            b'\t' => b,
            b if b < 0x20 || b == 0x7f => b' ',
            b => b,
        })
        .collect();
    if body.len() < line.len() {
        out.push(b'\n');
    }
    out
}

fn warn_bad_filter(filter: &str, bad: Option<tracing_subscriber::filter::ParseError>) {
    if let Some(e) = bad {
        tracing::warn!("log filter {filter:?} is not valid ({e}); using \"info\"");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_line_stays_one_line() {
        let line = b"WARN payload rejected topic=a\nERROR forged\r\x1b[31m\n";
        assert_eq!(
            super::one_line(line, false),
            b"WARN payload rejected topic=a ERROR forged  [31m\n".to_vec()
        );
        assert_eq!(
            super::one_line(line, true),
            b"WARN payload rejected topic=a ERROR forged \x1b[31m\n".to_vec()
        );
        assert_eq!(
            super::one_line("Zürich\n".as_bytes(), false),
            "Zürich\n".as_bytes()
        );
    }
}
