//! `otlp-sink`: a minimal OTLP/gRPC trace receiver for the lab and the
//! trace benchmarks, where no collector is packaged: it accepts exports on
//! `--listen` and appends every span to `--out` as one JSON object per line
//! (`service`, `trace_id`, `span_id`, `parent_span_id`, `name`, `kind`,
//! `attributes`). Prints `listening on ADDR` once bound; stops on SIGTERM
//! or Ctrl-C. Not a collector to run in production: no retention, no
//! query, a file that only grows.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use testkit::otlp::OtlpSink;

/// OTLP/gRPC trace receiver writing spans as JSON lines.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// File the spans are appended to; `-` for stdout.
    #[arg(long, default_value = "-")]
    out: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = OtlpSink::start_on(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let mut out: Box<dyn Write + Send> = if args.out == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.out)
                .with_context(|| format!("opening {}", args.out))?,
        )
    };
    println!("listening on {}", sink.local_addr());
    let mut stop = std::pin::pin!(svc_base::shutdown_signal()?);
    let mut count = sink.counter();
    let mut stopping = false;
    loop {
        count.borrow_and_update();
        for s in sink.take_spans() {
            let line = serde_json::json!({
                "service": s.service,
                "trace_id": s.trace_id,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "name": s.name,
                "kind": s.kind,
                "attributes": s.attributes,
            });
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        if stopping {
            break;
        }
        // On a stop, one more pass writes what arrived meanwhile.
        tokio::select! {
            changed = count.changed() => stopping = changed.is_err(),
            () = &mut stop => stopping = true,
        }
    }
    Ok(())
}
