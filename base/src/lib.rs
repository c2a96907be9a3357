//! Plumbing shared by the `locsvc` and `proxy-shim` binaries, so both read
//! configuration, serve metrics and stop the same way:
//!
//! - [`settings`]: layered settings (defaults < TOML file < environment <
//!   flags) and the one convention for keys, environment names, lists and
//!   problems, documented there;
//! - [`metrics`]: `GET /metrics` serving of an app's own registry, and the
//!   in-flight gauge guard;
//! - [`shutdown`]: the SIGTERM/Ctrl-C future an app drains on;
//! - [`notify`]: systemd readiness (`READY=1`, `STOPPING=1`) for
//!   `Type=notify` units;
//! - [`telemetry`]: log lines and OTLP traces, and the trace context that
//!   crosses the shim → locsvc gRPC hop.
//!
//! What each binary's settings *are* (keys, defaults, parsing, rules across
//! settings) stays in that binary.

pub mod metrics;
pub mod notify;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use shutdown::shutdown_signal;
