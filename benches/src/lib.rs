//! Benchmarks and load tools for locsvc: criterion micro-benchmarks live in
//! `benches/`, the gRPC load driver is the `locsvc-load` binary, whose parts
//! live here so they can be unit-tested.
//!
//! - `workload`: users, the Save/Lookup mix, CSeq numbering, the open-loop schedule;
//! - `load`: gRPC channels, calls with deadlines, closed and open loops;
//! - `preload`: direct bulk load of the member databases;
//! - `stats` and `report`: counting, percentiles, text and JSON output;
//! - `cli`: the command line;
//! - `sip_probe`: the `sip-probe` binary's open-loop SIP latency probe.

pub mod cli;
pub mod load;
pub mod preload;
pub mod report;
pub mod sip_probe;
pub mod stats;
pub mod workload;
