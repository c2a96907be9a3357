//! The `proxy-shim` binary: parse flags, load settings, init tracing, run
//! the app until SIGTERM or Ctrl-C, telling systemd when it is ready and
//! when it stops.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use proxy_shim::app::App;
use proxy_shim::settings::Settings;

/// Thin SIP front (UDP and TCP) for the locsvc location service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// PEM CA that signed locsvc's certificate; turns TLS on for every locsvc address (http:// becomes https://). Required for https:// (no system roots).
    #[arg(long)]
    locsvc_ca: Option<String>,
    /// PEM client certificate for a locsvc that requires one (mTLS); with --locsvc-key.
    #[arg(long)]
    locsvc_cert: Option<String>,
    /// PEM private key of --locsvc-cert.
    #[arg(long)]
    locsvc_key: Option<String>,
    /// Name to verify in locsvc's certificate when it is not the address's host [default: the host].
    #[arg(long)]
    locsvc_tls_domain: Option<String>,
    /// Domain served; repeat. Required: `*` serves every domain.
    #[arg(long)]
    domain: Vec<String>,
    /// When a contact is reached through the REGISTER's source: auto (NAT detected per contact), always, never [default: auto].
    #[arg(long)]
    nat: Option<String>,
    /// Highest Max-Forwards let through [default: 70].
    #[arg(long)]
    max_forwards: Option<String>,
    /// digest (challenge REGISTER and calls from our domains) or off [default: digest].
    #[arg(long)]
    auth: Option<String>,
    /// Digest realm [default: the To (REGISTER) or From domain].
    #[arg(long)]
    realm: Option<String>,
    /// Key of the digest nonces; give every shim behind one name the same [default: random per process].
    #[arg(long)]
    auth_secret: Option<String>,
    /// proxy (forward statelessly) or redirect (answer 302) [default: proxy].
    #[arg(long)]
    mode: Option<String>,
    /// Trusted source (edge proxy, SBC) as an address or CIDR; repeat. Exempt from the flood limits.
    #[arg(long)]
    trusted: Vec<String>,
    /// Messages per second per source (IPv4 address, IPv6 /64), 0 = no limit [default: 50].
    #[arg(long)]
    rate_limit: Option<String>,
    /// Messages a quiet source may send at once [default: 100].
    #[arg(long)]
    rate_burst: Option<String>,
    /// Seconds a source over the rate is ignored, 0 = drop only what is over [default: 60].
    #[arg(long)]
    ban_secs: Option<String>,
    /// Open TCP connections at most; beyond, new ones are closed at once [default: 1024].
    #[arg(long)]
    tcp_max_connections: Option<String>,
    /// Open TCP connections per source at most [default: 32].
    #[arg(long)]
    tcp_max_per_source: Option<String>,
    /// Milliseconds from the first byte of a TCP message to its last [default: 10000].
    #[arg(long)]
    tcp_message_timeout_ms: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Settings: `config defaults` prints every key at its default, with
    /// what it does (a file `--config` reads).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Print every setting at its default as TOML, with a line on each.
    Defaults,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config {
        command: ConfigCommand::Defaults,
    }) = cli.command
    {
        print!("{}", proxy_shim::defaults::toml());
        return Ok(());
    }
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
    for (key, value) in [
        ("locsvc_ca", cli.locsvc_ca),
        ("locsvc_cert", cli.locsvc_cert),
        ("locsvc_key", cli.locsvc_key),
        ("locsvc_tls_domain", cli.locsvc_tls_domain),
    ] {
        if let Some(v) = value {
            overrides.push((key, vec![v]));
        }
    }
    if !cli.domain.is_empty() {
        overrides.push(("domains", cli.domain));
    }
    if let Some(m) = cli.mode {
        overrides.push(("mode", vec![m]));
    }
    if let Some(n) = cli.nat {
        overrides.push(("nat", vec![n]));
    }
    if let Some(m) = cli.max_forwards {
        overrides.push(("max_forwards", vec![m]));
    }
    for (key, value) in [
        ("auth", cli.auth),
        ("realm", cli.realm),
        ("auth_secret", cli.auth_secret),
    ] {
        if let Some(v) = value {
            overrides.push((key, vec![v]));
        }
    }
    if !cli.trusted.is_empty() {
        overrides.push(("trusted", cli.trusted));
    }
    for (key, value) in [
        ("rate_limit", cli.rate_limit),
        ("rate_burst", cli.rate_burst),
        ("ban_secs", cli.ban_secs),
        ("tcp_max_connections", cli.tcp_max_connections),
        ("tcp_max_per_source", cli.tcp_max_per_source),
        ("tcp_message_timeout_ms", cli.tcp_message_timeout_ms),
    ] {
        if let Some(v) = value {
            overrides.push((key, vec![v]));
        }
    }
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    let telemetry = svc_base::telemetry::init(&settings.log_level, false, &settings.traces)?;
    // Before the app starts: a SIGTERM while it starts is then drained on,
    // not the default action that kills the process undrained.
    let shutdown = svc_base::shutdown_signal()?;
    ignore_hangups();
    let app = App::build(settings).await.context("starting proxy-shim")?;
    // UDP and TCP are bound: what arrives from now on waits in the socket
    // until `run` serves it, so units ordered after us may start.
    svc_base::notify::ready(&format!("serving SIP on {} (udp+tcp)", app.local_addr()));
    app.run(async move {
        shutdown.await;
        svc_base::notify::stopping();
    })
    .await;
    telemetry.shutdown().await;
    Ok(())
}

/// A SIGHUP (a `kill -HUP` out of habit, a closing terminal) would end the
/// process undrained; the shim has nothing to reload, so it is logged and
/// otherwise ignored.
fn ignore_hangups() {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!(
                        "SIGHUP ignored: proxy-shim reloads nothing; restart it to apply changed settings"
                    );
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "no SIGHUP handler: a SIGHUP ends the process"),
    }
}
