//! The `proxy-shim` binary: parse flags, load settings, init tracing, run
//! the app until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use proxy_shim::app::App;
use proxy_shim::settings::Settings;

/// Thin SIP front (UDP and TCP) for the locsvc location service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (settings can also come from PROXY_SHIM_* variables).
    #[arg(long, short, env = "PROXY_SHIM_CONFIG")]
    config: Option<PathBuf>,
    /// UDP and TCP listen address [default: 127.0.0.1:5060].
    #[arg(long)]
    listen: Option<String>,
    /// Host or host:port put in our Via (needed when listening on 0.0.0.0) [default: the bound address].
    #[arg(long)]
    advertise: Option<String>,
    /// Prometheus metrics HTTP address, or `off` [default: 127.0.0.1:9465].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// locsvc gRPC endpoint; repeat for failover [default: http://127.0.0.1:50051].
    #[arg(long)]
    locsvc: Vec<String>,
    /// Domain served; repeat; none = every domain.
    #[arg(long)]
    domain: Vec<String>,
    /// proxy (forward statelessly) or redirect (answer 302) [default: proxy].
    #[arg(long)]
    mode: Option<String>,
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed here, before
/// the app starts, so a signal that arrives during start-up is not lost
/// (the default action would kill the process without draining).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Ok(async move {
        #[cfg(unix)]
        let term = term.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term => {},
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides: Vec<(&str, Vec<String>)> = Vec::new();
    if let Some(l) = cli.listen {
        overrides.push(("listen", vec![l]));
    }
    if let Some(a) = cli.advertise {
        overrides.push(("advertise", vec![a]));
    }
    if let Some(m) = cli.metrics_listen {
        overrides.push(("metrics_listen", vec![m]));
    }
    if !cli.locsvc.is_empty() {
        overrides.push(("locsvc", cli.locsvc));
    }
    if !cli.domain.is_empty() {
        overrides.push(("domains", cli.domain));
    }
    if let Some(m) = cli.mode {
        overrides.push(("mode", vec![m]));
    }
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let shutdown = shutdown_signal()?;
    let app = App::build(settings).await.context("starting proxy-shim")?;
    app.run(shutdown).await;
    Ok(())
}
