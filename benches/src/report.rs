//! What a run prints: a short text block for people, or one JSON object
//! (`--json`) for scripts.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::load::{Pacing, RunResult};
use crate::preload::PreloadReport;
use crate::stats::{Recorder, counts_line, latency_line, rate, recorder_json};
use crate::workload::Kind;

/// Describes a gRPC run for the report header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub command: &'static str,
    pub target: String,
    pub channels: usize,
    pub pacing: Pacing,
    pub users: u64,
    pub timeout_ms: u64,
}

fn found_ratio(r: &Recorder) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    (r.ok > 0).then(|| r.found as f64 / r.ok as f64)
}

fn pacing_text(p: Pacing) -> String {
    match p {
        Pacing::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        Pacing::Open {
            rate,
            max_in_flight,
        } => format!("open loop, {rate} ops/s scheduled, at most {max_in_flight} in flight"),
    }
}

fn block(out: &mut String, indent: &str, r: &Recorder, result: &RunResult) {
    let _ = writeln!(out, "{indent}attempted   {}", r.finished());
    let _ = writeln!(out, "{indent}ok          {}", r.ok);
    let _ = writeln!(
        out,
        "{indent}errors      {} ({})",
        r.error_count(),
        counts_line(&r.errors)
    );
    if !r.reasons.is_empty() {
        let _ = writeln!(out, "{indent}reasons     {}", counts_line(&r.reasons));
    }
    for (code, msg) in &r.samples {
        let _ = writeln!(out, "{indent}  e.g. {code}: {msg}");
    }
    let _ = writeln!(
        out,
        "{indent}throughput  {} ops/s",
        rate(r.finished(), result.elapsed)
    );
    let _ = writeln!(out, "{indent}latency ms  {}", latency_line(r));
}

/// The text report of a gRPC run.
pub fn run_text(info: &RunInfo, result: &RunResult) -> String {
    let total = result.total();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "locsvc-load {}: {}, {} channel(s) to {}, {} users, timeout {} ms",
        info.command,
        pacing_text(info.pacing),
        info.channels,
        info.target,
        info.users,
        info.timeout_ms
    );
    let _ = writeln!(out, "  elapsed     {:.3} s", result.elapsed.as_secs_f64());
    block(&mut out, "  ", &total, result);
    if matches!(info.pacing, Pacing::Open { .. }) {
        let _ = writeln!(
            out,
            "  delayed     {} sends waited for a free in-flight slot",
            result.delayed_by_cap
        );
    }
    let lookups = &result.by_kind[Kind::Lookup.index()];
    if let Some(ratio) = found_ratio(lookups) {
        let _ = writeln!(
            out,
            "  found       {}/{} lookups returned a binding (ratio {ratio:.4})",
            lookups.found, lookups.ok
        );
    }
    if info.command == "mixed" {
        for kind in [Kind::Save, Kind::Lookup] {
            let _ = writeln!(out, "  {}:", kind.name());
            block(&mut out, "    ", &result.by_kind[kind.index()], result);
        }
    }
    let _ = writeln!(
        out,
        "  (latency of successful calls; closed loop from send, open loop from the scheduled send time)"
    );
    out
}

/// The JSON report of a gRPC run.
pub fn run_json(info: &RunInfo, result: &RunResult) -> Value {
    let total = result.total();
    let lookups = &result.by_kind[Kind::Lookup.index()];
    let (mode, concurrency, rate_target, max_in_flight) = match info.pacing {
        Pacing::Closed { concurrency } => ("closed", Some(concurrency), None, None),
        Pacing::Open {
            rate,
            max_in_flight,
        } => ("open", None, Some(rate), Some(max_in_flight)),
    };
    let mut v = recorder_json(&total, result.elapsed);
    let extra = json!({
        "command": info.command,
        "target": info.target,
        "channels": info.channels,
        "mode": mode,
        "concurrency": concurrency,
        "rate": rate_target,
        "max_in_flight": max_in_flight,
        "users": info.users,
        "timeout_ms": info.timeout_ms,
        "elapsed_s": result.elapsed.as_secs_f64(),
        "attempted": total.finished(),
        "delayed_by_cap": result.delayed_by_cap,
        "lookups_found": lookups.found,
        "found_ratio": found_ratio(lookups),
        "by_op": {
            "save": recorder_json(&result.by_kind[Kind::Save.index()], result.elapsed),
            "lookup": recorder_json(lookups, result.elapsed),
        },
    });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

/// The text report of a preload.
pub fn preload_text(r: &PreloadReport) -> String {
    let batches = r.batches();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "locsvc-load preload: {} rows ({} expired) into {} group(s) / {} member(s), batch {}",
        r.rows,
        r.expired_rows,
        r.rows_by_group.len(),
        r.members.len(),
        r.batch,
    );
    for line in &r.migrations {
        let _ = writeln!(out, "  migrate     {line}");
    }
    for p in &r.problems {
        let _ = writeln!(out, "  locdb       {p}");
    }
    for s in &r.skipped {
        let _ = writeln!(out, "  skipped     {s}");
    }
    for (g, n) in &r.rows_by_group {
        let members: Vec<String> = r
            .members
            .iter()
            .filter(|m| m.group == *g)
            .map(|m| {
                format!(
                    "{} ({} ok, {} failed, {} in flight)",
                    m.no, m.rows_ok, m.rows_failed, m.in_flight
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  group {g}     {n} rows -> member {}",
            members.join(", ")
        );
    }
    let _ = writeln!(out, "  elapsed     {:.3} s", r.elapsed.as_secs_f64());
    let _ = writeln!(
        out,
        "  rows        {} generated, {} row writes ok, {} failed, {} batch retries",
        r.rows,
        r.row_writes_ok(),
        r.row_writes_failed(),
        r.members.iter().map(|m| m.retries).sum::<u64>()
    );
    let _ = writeln!(
        out,
        "  throughput  {} rows/s ({} row writes/s over all members)",
        rate(r.rows, r.elapsed),
        rate(r.row_writes_ok(), r.elapsed)
    );
    let _ = writeln!(
        out,
        "  batches     {} attempted, {} ok, {} failed ({})",
        batches.finished(),
        batches.ok,
        batches.error_count(),
        counts_line(&batches.errors)
    );
    for (code, msg) in &batches.samples {
        let _ = writeln!(out, "    e.g. {code}: {msg}");
    }
    let _ = writeln!(out, "  batch ms    {}", latency_line(&batches));
    out
}

/// The JSON report of a preload.
pub fn preload_json(r: &PreloadReport) -> Value {
    let batches = r.batches();
    json!({
        "command": "preload",
        "rows": r.rows,
        "expired_rows": r.expired_rows,
        "rows_by_group": r.rows_by_group,
        "batch": r.batch,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "rows_per_s": rate(r.rows, r.elapsed),
        "row_writes_ok": r.row_writes_ok(),
        "row_writes_failed": r.row_writes_failed(),
        "row_writes_per_s": rate(r.row_writes_ok(), r.elapsed),
        "members": r.members.iter().map(|m| json!({
            "group": m.group,
            "no": m.no,
            "url": m.url,
            "status": m.status,
            "in_flight": m.in_flight,
            "rows_ok": m.rows_ok,
            "rows_failed": m.rows_failed,
            "retries": m.retries,
        })).collect::<Vec<_>>(),
        "skipped": r.skipped,
        "locdb_problems": r.problems,
        "migrations": r.migrations,
        "batches": recorder_json(&batches, r.elapsed),
    })
}
