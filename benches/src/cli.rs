//! Command line of `locsvc-load`, and its translation into run options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use locsvc::domain::KeyPolicy;
use locsvc::partition::HashMode;

use crate::load::{Bounds, ConnectOptions, Pacing};
use crate::preload::{PreloadOptions, Source};
use crate::workload::{Order, Users};

/// Load driver for locsvc: Location.Save/Lookup load over gRPC, and a
/// direct bulk preload of the member databases.
#[derive(Debug, Parser)]
#[command(name = "locsvc-load", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Location.Save: one contact per user, unique Call-ID per user and run,
    /// increasing CSeq (refreshes), or new users with --fresh.
    Save {
        #[command(flatten)]
        load: LoadArgs,
        /// Every Save registers a user not used before in this run
        /// ({prefix}{first}, {prefix}{first+1}, ...) instead of cycling.
        #[arg(long)]
        fresh: bool,
    },
    /// Location.Lookup over users 0..--users; reports the share that found
    /// at least one binding.
    Lookup {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, value_enum, default_value_t = Order::Random)]
        order: Order,
    },
    /// Saves and lookups mixed at random in the ratio --save-ratio.
    Mixed {
        #[command(flatten)]
        load: LoadArgs,
        /// Share of operations that are Saves (0..1).
        #[arg(long, default_value_t = 0.5)]
        save_ratio: f64,
        #[arg(long)]
        fresh: bool,
        #[arg(long, value_enum, default_value_t = Order::Random)]
        order: Order,
    },
    /// Bulk-load bindings straight into every member database (no gRPC),
    /// placed exactly as the server places them.
    Preload(PreloadArgs),
}

/// Which subscribers a command uses.
#[derive(Debug, Clone, Args)]
pub struct SubscriberArgs {
    /// Number of users: {prefix}{first} .. {prefix}{first+users-1}.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    #[arg(long, default_value = "user")]
    pub prefix: String,
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// Host[:port] of every contact: sip:{user}@{contact-host}.
    #[arg(long, default_value = "192.0.2.10:5060")]
    pub contact_host: String,
    /// Index of the first user.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Registration interval in seconds (Save's Expires; preload's row lifetime).
    #[arg(long, default_value_t = 3600)]
    pub expires: i64,
}

impl SubscriberArgs {
    pub fn users(&self) -> Users {
        Users {
            prefix: self.prefix.clone(),
            domain: self.domain.clone(),
            contact_host: self.contact_host.clone(),
        }
    }
}

/// Options of the gRPC subcommands.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// locsvc gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Bearer token (the server's grpc.token).
    #[arg(long, env = "LOCSVC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate, for an https:// target.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Location table; empty means the server's default (location).
    #[arg(long, default_value = "")]
    pub table: String,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// Deadline of every call.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Closed loop: this many calls outstanding at all times [default: 32].
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: this many calls per second on a fixed schedule; latency is
    /// measured from each call's due time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most calls outstanding; beyond it sends wait (and the
    /// wait counts as latency).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Stop after this many seconds [default: 10 when --count is not given].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many calls.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub subscribers: SubscriberArgs,
    /// Seed of the random lookup order and of the mixed ratio.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    pub fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        if self.channels == 0 {
            bail!("--channels must be at least 1");
        }
        if self.timeout_ms == 0 {
            bail!("--timeout-ms must be at least 1");
        }
        Ok(ConnectOptions {
            target: self.target.clone(),
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
            channels: self.channels,
            timeout: Duration::from_millis(self.timeout_ms),
            connect_timeout: Duration::from_secs(5),
        })
    }

    pub fn pacing(&self) -> anyhow::Result<Pacing> {
        match (self.rate, self.concurrency) {
            (Some(rate), _) => {
                if !(rate.is_finite() && rate > 0.0) {
                    bail!("--rate must be a positive number");
                }
                if !(1..=1_000_000).contains(&self.max_in_flight) {
                    bail!("--max-in-flight must be between 1 and 1000000");
                }
                Ok(Pacing::Open {
                    rate,
                    max_in_flight: self.max_in_flight,
                })
            }
            (None, c) => {
                let concurrency = c.unwrap_or(32);
                if concurrency == 0 {
                    bail!("--concurrency must be at least 1");
                }
                Ok(Pacing::Closed { concurrency })
            }
        }
    }

    pub fn bounds(&self) -> anyhow::Result<Bounds> {
        let duration = match (self.duration, self.count) {
            (Some(d), _) => {
                if !(d.is_finite() && d > 0.0) {
                    bail!("--duration must be a positive number of seconds");
                }
                Some(Duration::from_secs_f64(d))
            }
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        Ok(Bounds {
            duration,
            count: self.count,
        })
    }

    pub fn validate_users(&self) -> anyhow::Result<()> {
        if self.subscribers.users == 0 {
            bail!("--users must be at least 1");
        }
        Ok(())
    }
}

/// Options of `preload`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("layout").required(true).args(["master_url", "data_dir"])))]
pub struct PreloadArgs {
    /// Master database holding locdb (mysql://, postgres://, sqlite://).
    #[arg(long)]
    pub master_url: Option<String>,
    /// The embedded SQLite layout of `locsvc serve --data-dir DIR`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run locsvc's migrations first (always done for --data-dir, as
    /// `locsvc serve` does; creates the embedded layout if missing).
    #[arg(long)]
    pub migrate: bool,
    #[command(flatten)]
    pub subscribers: SubscriberArgs,
    /// Share of rows written already expired (0..1), spread evenly.
    #[arg(long, default_value_t = 0.0)]
    pub expired_fraction: f64,
    /// The server's partition.hash.
    #[arg(long, default_value_t = HashMode::Xxh3)]
    pub hash: HashMode,
    /// The server's partition.use_domain (key user@domain or user alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub use_domain: bool,
    /// The server's partition.case_sensitive.
    #[arg(long)]
    pub case_sensitive: bool,
    /// Location table.
    #[arg(long, default_value = "location")]
    pub table: String,
    /// Rows per INSERT (at most 1820 on SQLite, 3640 on MySQL/PostgreSQL:
    /// 18 bind parameters per row).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batches in flight per member database [default: 1 on SQLite, 4 on
    /// MySQL/PostgreSQL].
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Deadline of one batch (and of waiting for a SQLite write lock).
    #[arg(long, default_value_t = 30_000)]
    pub query_timeout_ms: u64,
    /// Retries of a failed batch.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Also write members that are off or in maintenance.
    #[arg(long)]
    pub include_inactive: bool,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl PreloadArgs {
    pub fn options(&self) -> anyhow::Result<PreloadOptions> {
        let source = match (&self.master_url, &self.data_dir) {
            (Some(u), None) => Source::MasterUrl(u.clone()),
            (None, Some(d)) => Source::DataDir(d.clone()),
            _ => bail!("give exactly one of --master-url and --data-dir"),
        };
        if self.query_timeout_ms == 0 {
            bail!("--query-timeout-ms must be at least 1");
        }
        if self.subscribers.expires <= 0 {
            bail!("--expires must be positive");
        }
        let migrate = self.migrate || matches!(source, Source::DataDir(_));
        Ok(PreloadOptions {
            source,
            migrate,
            table: self.table.clone(),
            users: self.subscribers.users(),
            first: self.subscribers.first,
            count: self.subscribers.users,
            expires: self.subscribers.expires,
            expired_fraction: self.expired_fraction,
            hash: self.hash,
            key_policy: KeyPolicy {
                use_domain: self.use_domain,
                case_sensitive: self.case_sensitive,
            },
            batch: self.batch,
            in_flight: self.in_flight,
            query_timeout: Duration::from_millis(self.query_timeout_ms),
            retries: self.retries,
            include_inactive: self.include_inactive,
            progress: (self.progress_secs > 0).then(|| Duration::from_secs(self.progress_secs)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("locsvc-load").chain(args.iter().copied()))
    }

    #[test]
    fn a_closed_loop_for_ten_seconds_is_the_default() {
        let Command::Save { load, fresh } = parse(&["save"]).unwrap().command else {
            panic!("save");
        };
        assert!(!fresh);
        assert_eq!(load.pacing().unwrap(), Pacing::Closed { concurrency: 32 });
        let b = load.bounds().unwrap();
        assert_eq!((b.duration, b.count), (Some(Duration::from_secs(10)), None));
    }

    #[test]
    fn rate_and_concurrency_exclude_each_other() {
        assert!(parse(&["lookup", "--rate", "100", "--concurrency", "4"]).is_err());
        let Command::Lookup { load, .. } = parse(&["lookup", "--rate", "250", "--count", "9"])
            .unwrap()
            .command
        else {
            panic!("lookup");
        };
        assert!(matches!(load.pacing().unwrap(), Pacing::Open { rate, .. } if rate == 250.0));
        let b = load.bounds().unwrap();
        assert_eq!((b.duration, b.count), (None, Some(9)));
    }

    #[test]
    fn preload_needs_exactly_one_layout_source_and_parses_server_flags() {
        assert!(parse(&["preload"]).is_err());
        assert!(parse(&["preload", "--data-dir", "d", "--master-url", "sqlite:///x"]).is_err());
        let Command::Preload(p) = parse(&[
            "preload",
            "--data-dir",
            "/tmp/x",
            "--hash",
            "crc32-mod",
            "--use-domain",
            "false",
            "--expired-fraction",
            "0.25",
        ])
        .unwrap()
        .command
        else {
            panic!("preload");
        };
        let o = p.options().unwrap();
        assert!(o.migrate, "a data dir is migrated like `locsvc serve` does");
        assert_eq!(o.hash, HashMode::Crc32Mod);
        assert!(!o.key_policy.use_domain);
        assert_eq!(o.expired_fraction, 0.25);
        assert_eq!((o.batch, o.count), (1000, 10_000));
    }
}
