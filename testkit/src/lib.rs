//! Test support shared by the workspace's test suites (the root `it` and
//! `faults` binaries, locsvc's CLI tests, proxy-shim's end-to-end tests):
//! an in-process locsvc on loopback, the binaries as child processes
//! (`process`), an OTLP trace receiver (`otlp`), certificates made by
//! `openssl`, waiting on an observable condition, and builders for the
//! values tests write.
//!
//! Everything is real: a real server on a real socket, real certificates, a
//! real clock for deadlines. Nothing here sleeps a guessed time as
//! synchronization; [`eventually`] polls a condition the test can observe.

mod app;
mod fixtures;
pub mod otlp;
mod pki;
pub mod process;
mod serving;
mod wait;

pub use app::{TestApp, embedded_settings, scrape, test_settings};
pub use fixtures::{
    binding, contact, dump_all, locdb_row, lookup_bindings, lookup_contacts, register,
};
pub use pki::Pki;
pub use process::free_udp_port;
pub use serving::{Serving, StopSignal};
pub use wait::{eventually, eventually_every, init_tracing};
