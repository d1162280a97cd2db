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
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if format == LogFormat::Json {
        registry.with(stderr.json().flatten_event(true)).init();
    } else {
        registry
            .with(stderr.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init();
    }
    if let Some(e) = fell_back {
        tracing::warn!("cannot reach the systemd journal ({e}); logging to stderr");
    }
    warn_bad_filter(filter, bad);
}

fn warn_bad_filter(filter: &str, bad: Option<tracing_subscriber::filter::ParseError>) {
    if let Some(e) = bad {
        tracing::warn!("log filter {filter:?} is not valid ({e}); using \"info\"");
    }
}
