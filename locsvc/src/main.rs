//! The `locsvc` binary: parse flags, load settings, init tracing, then run
//! the app (telling systemd when it is ready and when it stops), a
//! migration, or a `ul` client command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use locsvc::app::{self, App};
use locsvc::cli::{ClientArgs, GroupsCommand, SubscriberCommand, UlCommand};
use locsvc::settings::{LogFormat, Settings};

/// Partitioned SIP location service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (settings can also come from LOCSVC_* variables).
    #[arg(long, short, global = true, env = "LOCSVC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Database flags shared by `serve` and `migrate`.
#[derive(Debug, clap::Args)]
struct DbArgs {
    /// Master database URL (holds locdb); default: embedded SQLite layout.
    #[arg(long)]
    master_url: Option<String>,
    /// Data directory of the embedded SQLite layout.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API.
    Serve {
        #[command(flatten)]
        db: DbArgs,
        /// gRPC listen address.
        #[arg(long)]
        listen: Option<String>,
        /// Prometheus listen address ("off" disables).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Allow a non-loopback listener without token or TLS.
        #[arg(long)]
        insecure: bool,
        /// Admin bearer token (grpc.admin_token): Cluster calls and
        /// subscriber administration.
        #[arg(long)]
        admin_token: Option<String>,
    },
    /// Create or upgrade the schema on the master and every member.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Registrations: save, show, rm, dump, stats (talks to a running locsvc).
    Ul {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: UlCommand,
    },
    /// Location groups: list members and their state, set a member's status.
    Groups {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Settings: `config defaults` prints every key at its default, with
    /// what it does (a file `--config` reads).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// SIP digest credentials: add, passwd, rm, list (talks to a running locsvc).
    Subscriber {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SubscriberCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print every setting at its default as TOML, with a line on each.
    Defaults,
}

fn overrides(db: &DbArgs) -> Vec<(&'static str, String)> {
    let mut o = Vec::new();
    if let Some(u) = &db.master_url {
        o.push(("master_url", u.clone()));
    }
    if let Some(d) = &db.data_dir {
        o.push(("data_dir", d.display().to_string()));
    }
    o
}

fn init_tracing(s: &Settings) -> anyhow::Result<svc_base::telemetry::Telemetry> {
    Ok(svc_base::telemetry::init(
        &s.log_level,
        s.log_format == LogFormat::Json,
        &s.traces,
    )?)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locsvc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            db,
            listen,
            metrics_listen,
            insecure,
            admin_token,
        } => {
            let mut o = overrides(&db);
            if let Some(l) = listen {
                o.push(("grpc.listen", l));
            }
            if let Some(m) = metrics_listen {
                o.push(("metrics.listen", m));
            }
            if insecure {
                o.push(("grpc.insecure", "true".into()));
            }
            if let Some(t) = admin_token {
                o.push(("grpc.admin_token", t));
            }
            let settings = Settings::load(cli.config.as_deref(), &o)?;
            let telemetry = init_tracing(&settings)?;
            let app = App::build(settings).await.context("locsvc cannot start")?;
            // Installed once built: a SIGTERM while starting (migrations,
            // an unreachable master) still ends the process. Without a
            // handler it still serves, stopping on Ctrl-C.
            let stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                match svc_base::shutdown_signal() {
                    Ok(s) => Box::pin(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "no SIGTERM handler: stopping on Ctrl-C only");
                        Box::pin(async {
                            let _ = tokio::signal::ctrl_c().await;
                        })
                    }
                };
            // The listeners are bound: a connection from now on is queued
            // until `run` serves it, so units ordered after us may start.
            svc_base::notify::ready(&format!("serving gRPC on {}", app.grpc_addr()));
            let served = app
                .run(async move {
                    stop.await;
                    svc_base::notify::stopping();
                })
                .await;
            // The last spans leave even when serving ended in an error.
            telemetry.shutdown().await;
            served?;
        }
        Command::Migrate { db } => {
            let settings = Settings::load(cli.config.as_deref(), &overrides(&db))?;
            // Logs only: a one-shot migration is no service to trace.
            let mut quiet = settings.clone();
            quiet.traces.otlp_endpoint = None;
            let _logs = init_tracing(&quiet)?;
            for line in app::migrate(&settings).await? {
                locsvc::cli::print_line(format_args!("{line}"));
            }
        }
        Command::Ul { client, command } => locsvc::cli::run(&client, &command).await?,
        Command::Groups { client, command } => locsvc::cli::run_groups(&client, &command).await?,
        Command::Subscriber { client, command } => {
            locsvc::cli::run_subscriber(&client, &command).await?
        }
        Command::Config {
            command: ConfigCommand::Defaults,
        } => print!("{}", locsvc::defaults::toml()),
    }
    Ok(())
}
