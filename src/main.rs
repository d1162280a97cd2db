//! The `roomhook` command line: `run`, `check-config`, `demo`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Forwards meeting-room status and events as durable, paced HTTPS webhooks.
#[derive(Parser)]
#[command(name = "roomhook", version, about)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. "info" or "roomhook=debug".
    #[arg(long, global = true, env = "ROOMHOOK_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

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
    /// Webhooks of the running daemon: list, show, dead letters, replay.
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
        action: WebhookAction,
    },
    /// Check or salvage the embedded store (stop the daemon first).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Run the whole path on this machine: simulated rooms, the real store, a local HTTPS receiver.
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

#[derive(Subcommand)]
enum WebhookAction {
    /// Every webhook: state, queue, dead letters, last error.
    List {
        /// Print the JSON the control API returns.
        #[arg(long)]
        json: bool,
    },
    /// One webhook's settings (secrets redacted) and live figures, as JSON.
    Show {
        /// Webhook name.
        name: String,
    },
    /// The messages the receiver refused for good, with its status and answer.
    DeadLetters {
        /// Webhook name.
        name: String,
    },
    /// Put dead letters back into the queue.
    Replay {
        /// Webhook name.
        name: String,
        /// Replay the dead letters (the only kind of replay: delivered events are not kept).
        #[arg(long)]
        dead_letters: bool,
        /// Only those that died at or after this time: RFC 3339, or an age such as "2h".
        #[arg(long)]
        since: Option<String>,
    },
}

fn parse_since(raw: &str) -> Result<i64, String> {
    if let Ok(d) = roomhook::config::units::parse_duration(raw) {
        return Ok(roomhook::timefmt::now_ms() - d.as_millis() as i64);
    }
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            format!(
                "--since {raw:?}: write an RFC 3339 time (2026-11-27T10:00:00Z) or an age (\"2h\")"
            )
        })
}

async fn webhook_command(
    config: PathBuf,
    socket: Option<PathBuf>,
    action: WebhookAction,
) -> ExitCode {
    use hyper::Method;
    let socket = match socket {
        Some(s) => s,
        None => match roomhook::config::load(&config) {
            Ok(s) => s.control_socket,
            Err(errs) => {
                eprintln!("{errs}\n(or name the control socket with --socket)");
                return ExitCode::from(2);
            }
        },
    };
    let (method, path) = match &action {
        WebhookAction::List { .. } => (Method::GET, "/v1/webhooks".to_string()),
        WebhookAction::Show { name } => (Method::GET, format!("/v1/webhooks/{name}")),
        WebhookAction::DeadLetters { name } => {
            (Method::GET, format!("/v1/webhooks/{name}/dead-letters"))
        }
        WebhookAction::Replay {
            name,
            dead_letters,
            since,
        } => {
            if !dead_letters {
                eprintln!("roomhook keeps no delivered events, so only dead letters can be replayed: add --dead-letters");
                return ExitCode::from(2);
            }
            let since_ms = match since.as_deref().map(parse_since).transpose() {
                Ok(s) => s.unwrap_or(0),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            (
                Method::POST,
                format!("/v1/webhooks/{name}/replay?since_ms={since_ms}"),
            )
        }
    };
    let (status, body) = match roomhook::admin::control::call(&socket, method, &path).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !status.is_success() {
        eprintln!("{}", body["error"].as_str().unwrap_or("request failed"));
        return ExitCode::FAILURE;
    }
    match action {
        WebhookAction::List { json: false } => {
            println!(
                "{:<20} {:<13} {:>8} {:>6}  LAST ERROR",
                "WEBHOOK", "STATE", "QUEUED", "DEAD"
            );
            for w in body["webhooks"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<13} {:>8} {:>6}  {}",
                    w["name"].as_str().unwrap_or(""),
                    w["status"]["state"].as_str().unwrap_or(""),
                    w["queue"]["events"],
                    w["queue"]["dead_letters"],
                    w["status"]["last_error"]["message"].as_str().unwrap_or("-"),
                );
            }
        }
        WebhookAction::DeadLetters { .. } => {
            for d in body["dead_letters"].as_array().into_iter().flatten() {
                println!(
                    "{}  HTTP {}  {} {}={}  {}",
                    d["at"].as_str().unwrap_or(""),
                    d["status"],
                    d["event"]["d"].as_str().unwrap_or(""),
                    d["event"]["p"].as_str().unwrap_or(""),
                    d["event"]["v"],
                    d["reason"].as_str().unwrap_or(""),
                );
            }
        }
        WebhookAction::Replay { name, .. } => println!(
            "{} dead letter(s) of {name} back in the queue",
            body["replayed"]
        ),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        ),
    }
    ExitCode::SUCCESS
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

fn data_dir(config: &std::path::Path, data_dir: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    if let Some(d) = data_dir {
        return Ok(d);
    }
    roomhook::config::load(config)
        .map(|s| s.data_dir)
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

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
}

fn duration_arg(name: &str, raw: &str) -> Result<Duration, ExitCode> {
    roomhook::config::units::parse_duration(raw).map_err(|e| {
        eprintln!("--{name}: {e} (write e.g. \"20s\")");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    roomhook::install_crypto_provider();
    let cli = Cli::parse();
    init_logging(&cli.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            Command::Store { .. } => ExitCode::SUCCESS,
            Command::Webhook { config, socket, action } => webhook_command(config, socket, action).await,
            Command::CheckConfig { config } => match roomhook::config::load(&config) {
                Ok(s) => {
                    println!(
                        "{}: OK ({} MQTT source(s), {} webhook(s), store in {})",
                        config.display(),
                        s.mqtt.len(),
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
                let settings = match roomhook::config::load(&config) {
                    Ok(s) => s,
                    Err(errs) => {
                        eprintln!("{errs}");
                        return ExitCode::from(2);
                    }
                };
                let shutdown = CancellationToken::new();
                stop_on_signals(shutdown.clone());
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
                stop_on_signals(shutdown.clone());
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
