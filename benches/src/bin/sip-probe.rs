//! `sip-probe`: open-loop SIP latency with microsecond resolution (see
//! `locsvc_bench::sip_probe`). Prints one tab-separated line:
//! sent, ok, failed, achieved rate, p50, p90, p99, p99.9 and max in µs.
//! Exit code: 0 when every request got its expected answer in time.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use locsvc_bench::sip_probe::{self, Mode, Probe};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Register,
    Redirect,
    Relay,
}

/// Open-loop SIP latency probe.
#[derive(Debug, Parser)]
#[command(name = "sip-probe")]
struct Args {
    /// The proxy or registrar under test (UDP).
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum)]
    mode: ModeArg,
    /// Requests per second.
    #[arg(long)]
    rate: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    secs: u32,
    /// Users are PREFIX1..PREFIX<users> (INVITEs cycle over them).
    #[arg(long, default_value = "inv-")]
    prefix: String,
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// Relay: the port the users registered from (the probe's UAS binds it).
    #[arg(long)]
    uas_port: Option<u16>,
    /// A final answer later than this many ms is a failure.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Lists every success at least this many ms slow on stderr ("slow",
    /// ms from the start to its send, µs to its answer).
    #[arg(long)]
    slow_ms: Option<u64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let probe = Probe {
        target: a.target,
        mode: match a.mode {
            ModeArg::Register => Mode::Register,
            ModeArg::Redirect => Mode::Redirect,
            ModeArg::Relay => Mode::Relay,
        },
        rate: a.rate,
        requests: u64::from(a.rate) * u64::from(a.secs),
        prefix: a.prefix,
        users: a.users,
        domain: a.domain,
        uas_port: a.uas_port,
        timeout: Duration::from_millis(a.timeout_ms),
        slow: a.slow_ms.map(Duration::from_millis),
    };
    match sip_probe::run(&probe) {
        Ok(out) => {
            for (at_ms, took_us) in &out.slow {
                eprintln!("slow\t{at_ms}\t{took_us}");
            }
            println!("{}", out.tsv());
            if out.ok == out.sent {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sip-probe: {e}");
            ExitCode::from(2)
        }
    }
}
