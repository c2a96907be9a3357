//! `locsvc-load`: gRPC load driver and bulk preloader for locsvc.
//! See benches/README.md. Exit code: 0 when every operation succeeded,
//! 1 when any failed (or the run could not start).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use locsvc_bench::cli::{Cli, Command, LoadArgs};
use locsvc_bench::load::{self, Conn, Ctx};
use locsvc_bench::preload;
use locsvc_bench::report::{self, RunInfo};
use locsvc_bench::workload::{Mix, Order, Planner};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locsvc-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("locsvc-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(true) when nothing failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Save { load, fresh } => {
            grpc("save", &load, Mix::Save, fresh, Order::Sequential).await
        }
        Command::Lookup { load, order } => grpc("lookup", &load, Mix::Lookup, false, order).await,
        Command::Mixed {
            load,
            save_ratio,
            fresh,
            order,
        } => {
            if !(0.0..=1.0).contains(&save_ratio) {
                anyhow::bail!("--save-ratio must be between 0 and 1");
            }
            grpc("mixed", &load, Mix::Mixed { save_ratio }, fresh, order).await
        }
        Command::Preload(args) => {
            let report = preload::preload(args.options()?).await?;
            if args.json {
                println!("{}", report::preload_json(&report));
            } else {
                print!("{}", report::preload_text(&report));
            }
            Ok(report.row_writes_failed() == 0 && report.batches().error_count() == 0)
        }
    }
}

async fn grpc(
    command: &'static str,
    args: &LoadArgs,
    mix: Mix,
    fresh: bool,
    order: Order,
) -> anyhow::Result<bool> {
    args.validate_users()?;
    let pacing = args.pacing()?;
    let bounds = args.bounds()?;
    let connect = args.connect_options()?;
    let conn = Arc::new(Conn::connect(&connect).await?);
    let s = &args.subscribers;
    let planner = Arc::new(Planner::new(mix, s.users, fresh, s.first, order, args.seed));
    let ctx = Arc::new(Ctx {
        table: args.table.clone(),
        users: s.users(),
        expires: s.expires,
        run_id: run_id(),
    });
    let result = load::run(conn, planner, ctx, pacing, bounds)
        .await
        .context("running the load")?;
    let info = RunInfo {
        command,
        target: args.target.clone(),
        channels: args.channels,
        pacing,
        users: s.users,
        timeout_ms: args.timeout_ms,
    };
    if args.json {
        println!("{}", report::run_json(&info, &result));
    } else {
        print!("{}", report::run_text(&info, &result));
    }
    Ok(result.total().error_count() == 0)
}

/// A short id unique to this run, so Call-IDs never repeat across runs.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mixed = locsvc_bench::workload::splitmix64(
        u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id()),
    );
    format!("ld{mixed:012x}")
}
