//! The `roomhook` command line: `run`, `check-config`, `webhook`, `source`, `status`,
//! `store`, `fleet`, `completions`, `man`, `demo`.

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Forwards meeting-room status and events as durable, paced HTTPS webhooks.
#[derive(Parser)]
#[command(name = "roomhook", version = roomhook::version::LONG, about)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. "info" or "roomhook=debug" [default: [log] filter, else info].
    #[arg(long, global = true, env = "ROOMHOOK_LOG")]
    log: Option<String>,
    /// Log format [default: [log] format, else auto: journald under systemd, text otherwise].
    #[arg(long, global = true, env = "ROOMHOOK_LOG_FORMAT", value_enum)]
    log_format: Option<roomhook::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "/etc/roomhook/roomhook.toml")]
        config: PathBuf,
    },
    /// Check a config file and print every problem with its key, line and fix.
    CheckConfig {
        /// Config file.
        #[arg(short, long, default_value = "/etc/roomhook/roomhook.toml")]
        config: PathBuf,
    },
    /// Webhooks of the running daemon: list, show, add, set, delete, test, enable, disable,
    /// dead letters, replay.
    Webhook {
        /// Config file (it names the control socket).
        #[arg(
            short,
            long,
            global = true,
            default_value = "/etc/roomhook/roomhook.toml"
        )]
        config: PathBuf,
        /// The control socket, instead of reading it from the config.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: roomhook::cli::WebhookAction,
    },
    /// Sources: `source test NAME` connects to a RoomOS device as the daemon would and
    /// reports its certificate (SHA-256 for pin_sha256), identity and subscriptions.
    Source {
        /// Config file.
        #[arg(
            short,
            long,
            global = true,
            default_value = "/etc/roomhook/roomhook.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: roomhook::cli::SourceAction,
    },
    /// What the running daemon is doing: webhooks, sources, store, and what is wrong.
    Status {
        /// Config file (it names the control socket).
        #[arg(short, long, default_value = "/etc/roomhook/roomhook.toml")]
        config: PathBuf,
        /// The control socket, instead of reading it from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the JSON of the control API.
        #[arg(long)]
        json: bool,
        /// Redraw every N seconds (default 2) until Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Check or salvage the embedded store (stop the daemon first).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// The fleet's keys: make an Ed25519 key pair, sign a config document.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `source <(roomhook completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roomhook(1), one per verb, roomhook.toml(5)) into DIR.
    Man {
        /// Directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// Run the whole path on this machine: simulated rooms, the real store, a local HTTPS receiver.
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this long ("0" runs until Ctrl-C).
        #[arg(long, default_value = "20s")]
        duration: String,
        /// Number of simulated rooms.
        #[arg(long, default_value_t = 5)]
        rooms: usize,
        /// Time between two observations.
        #[arg(long, default_value = "300ms")]
        interval: String,
    },
}

/// Which store a `store` command works on.
#[derive(clap::Args)]
struct StoreTarget {
    /// Config file (its gateway.data_dir names the store).
    #[arg(short, long, default_value = "/etc/roomhook/roomhook.toml")]
    config: PathBuf,
    /// The data directory, instead of reading it from the config.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum StoreAction {
    /// Verify the store file and decode every entry; exit 1 when something is wrong.
    Check(StoreTarget),
    /// Move a damaged store aside and copy everything readable into a fresh one.
    Salvage(StoreTarget),
}

#[derive(Subcommand)]
enum FleetAction {
    /// Write a new Ed25519 private key to FILE (mode 0600) and its public key to FILE.pub;
    /// print the public key for `[fleet] config_public_key`.
    Keygen {
        /// The private key file (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign the config document DOC with a private key: writes DOC.sig (serve it beside DOC).
    Sign {
        /// The private key file (from `roomhook fleet keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The document to sign.
        doc: PathBuf,
    },
}

fn fleet_command(action: FleetAction) -> ExitCode {
    let done = match action {
        FleetAction::Keygen { out } => roomhook::fleet::sign::keygen(&out).map(|public| {
            println!(
                "private key: {} (keep it on the fleet's server, never on a gateway)",
                out.display()
            );
            println!("[fleet] config_public_key = \"{public}\"");
        }),
        FleetAction::Sign { key, doc } => {
            roomhook::fleet::sign::sign(&key, &doc).map(|sig| println!("{}", sig.display()))
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomhook fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Roff that any troff reads: characters beyond ASCII (…, —) as `\[uXXXX]` escapes.
fn ascii_roff(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let _ = write!(out, "\\[u{:04X}]", c as u32);
        }
    }
    out
}

/// The command line as clap defines it, for the completions and the man pages alike (no
/// `help` verb: `--help` is on every one).
fn cli_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// `roomhook man DIR`: roomhook.1, roomhook-VERB.1 and roomhook-VERB-ACTION.1 from the
/// clap definitions, and roomhook.toml.5 (written by build.rs from the README's reference).
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    fn page(
        cmd: clap::Command,
        dir: &std::path::Path,
        out: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            page(sub, dir, out)?;
        }
        let man = clap_mangen::Man::new(cmd)
            .source(format!("roomhook {}", env!("CARGO_PKG_VERSION")))
            .manual("roomhook manual");
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let path = dir.join(man.get_filename());
        std::fs::write(&path, ascii_roff(&String::from_utf8_lossy(&roff)))?;
        out.push(path);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    page(cli_command(), dir, &mut out)?;
    let toml = dir.join("roomhook.toml.5");
    std::fs::write(
        &toml,
        ascii_roff(include_str!(concat!(env!("OUT_DIR"), "/roomhook.toml.5"))),
    )?;
    out.push(toml);
    Ok(out)
}

fn data_dir(config: &std::path::Path, data_dir: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    if let Some(d) = data_dir {
        return Ok(d);
    }
    roomhook::config::locations(config)
        .map(|(data_dir, _)| data_dir)
        .map_err(|errs| {
            eprintln!("{errs}\n(or name the store directly with --data-dir)");
            ExitCode::from(2)
        })
}

fn store_command(action: StoreAction) -> ExitCode {
    let (StoreAction::Check(target) | StoreAction::Salvage(target)) = &action;
    let dir = match data_dir(&target.config, target.data_dir.clone()) {
        Ok(d) => d,
        Err(c) => return c,
    };
    match action {
        StoreAction::Check(_) => match roomhook::store::salvage::check(&dir) {
            Ok(report) => {
                println!("{report}");
                if report.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("roomhook store check: {e}");
                ExitCode::FAILURE
            }
        },
        StoreAction::Salvage(_) => match roomhook::store::salvage::salvage(&dir) {
            Ok((report, aside)) => {
                println!("damaged store moved to {}", aside.display());
                println!("copied into a fresh {report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("roomhook store salvage: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(feature = "demo")]
fn duration_arg(name: &str, raw: &str) -> Result<Duration, ExitCode> {
    roomhook::config::units::parse_duration(raw).map_err(|e| {
        eprintln!("--{name}: {e} (write e.g. \"20s\")");
        ExitCode::from(2)
    })
}

/// glibc's libm.so is mapped into the process only for `pow` (called by prometheus-client
/// when it sets up histograms, and by tokio's multi-thread statistics). Defining it here,
/// from the pure-Rust `libm` crate, keeps libm.so out of the daemon: about 0.5 MiB less
/// resident memory on a small gateway, measured.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> ExitCode {
    roomhook::install_crypto_provider();
    let cli = Cli::parse();
    // What the binary says of itself needs no logging and no runtime.
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut cli_command(),
            "roomhook",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    if let Command::Man { dir } = &cli.command {
        return match write_man_pages(dir) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("roomhook man: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Fleet { action } = cli.command {
        return fleet_command(action);
    }
    // `run` reads its config first: the config may set the log filter and format.
    let run_settings = match &cli.command {
        Command::Run { config } => match roomhook::config::load(config) {
            Ok(s) => Some(s),
            Err(errs) => {
                eprintln!("{errs}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let filter = cli
        .log
        .clone()
        .or_else(|| run_settings.as_ref().and_then(|s| s.log_filter.clone()))
        .unwrap_or_else(|| "info".into());
    let format = cli
        .log_format
        .or_else(|| run_settings.as_ref().and_then(|s| s.log_format))
        .unwrap_or(roomhook::logging::LogFormat::Auto);
    roomhook::logging::init(&filter, format);
    // One runtime thread by default: on a small gateway it does the work with the fewest
    // hand-offs (the store writer has a thread of its own); `[gateway] threads` raises it.
    let threads = run_settings.as_ref().map_or(1, |s| s.threads);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // Blocking work (store reads of a backlog, DNS) on at most 16 threads; more waits its
    // turn. With `[gateway] threads` (at most 64), the store writer and the signal thread,
    // the process stays under the unit's TasksMax=128.
    let rt = match builder.enable_all().max_blocking_threads(16).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Store { action } = cli.command {
        return store_command(action);
    }

    rt.block_on(async move {
        match cli.command {
            Command::Store { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Fleet { .. } => {
                unreachable!("answered before the runtime starts")
            }
            Command::Status { config, socket, json, watch } => {
                let every = watch.map(|s| Duration::from_secs_f64(s.max(0.2)));
                roomhook::cli::status(config, socket, json, every).await
            }
            Command::Webhook { config, socket, action } => roomhook::cli::webhook(config, socket, action).await,
            Command::Source { config, action } => roomhook::cli::source(config, action).await,
            Command::CheckConfig { config } => match roomhook::config::load(&config) {
                Ok(s) => {
                    if let Some(why) = &s.fleet_kept_refused {
                        eprintln!("warning: {why}");
                    }
                    println!(
                        "{}: OK ({} MQTT source(s), {} RoomOS device(s), {} webhook(s), store in {})",
                        config.display(),
                        s.mqtt.len(),
                        s.roomos.len(),
                        s.webhooks.len(),
                        s.data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(errs) => {
                    eprintln!("{errs}");
                    eprintln!("{} problem(s) in {}", errs.0.len(), config.display());
                    ExitCode::from(2)
                }
            },
            Command::Run { config } => {
                let Some(settings) = run_settings else {
                    return ExitCode::FAILURE;
                };
                let shutdown = CancellationToken::new();
                roomhook::daemon::signals::stop_on_signals(shutdown.clone(), settings.shutdown_grace);
                match roomhook::daemon::start(&settings, shutdown).await {
                    Ok(running) => {
                        tracing::info!(config = %config.display(), "roomhook {} running", env!("CARGO_PKG_VERSION"));
                        running.wait().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("roomhook: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            #[cfg(feature = "demo")]
            Command::Demo { duration, rooms, interval } => {
                let duration = match duration_arg("duration", &duration) {
                    Ok(d) => (!d.is_zero()).then_some(d),
                    Err(c) => return c,
                };
                let interval = match duration_arg("interval", &interval) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => Duration::from_millis(300),
                    Err(c) => return c,
                };
                let shutdown = CancellationToken::new();
                roomhook::daemon::signals::stop_on_signals(shutdown.clone(), roomhook::config::SHUTDOWN_GRACE);
                let opts = roomhook::demo::DemoOptions { duration, rooms, interval };
                match roomhook::demo::run(opts, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("roomhook demo: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}
