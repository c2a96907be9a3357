//! locsvc: a partitioned SIP location service.
//!
//! An AoR is hashed (`partition`) onto a location group of SQL databases
//! listed in the master's `locdb` table (`cluster`). The registrar rules of
//! RFC 3261 §10.3 (`registrar`) decide what a REGISTER changes; the router
//! (`router`) writes every change to all active members of the group and
//! reads from one member that is known to be up to date; `store` speaks SQL to
//! MySQL/MariaDB, PostgreSQL and SQLite; `expiry` removes expired bindings;
//! `credentials` and `store::subscriber` hold SIP digest credentials;
//! `grpc` is the API edge; `aor_lock` serializes one AoR's writes across
//! instances.

pub mod aor_lock;
pub mod app;
pub mod census;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod credentials;
pub mod defaults;
pub mod domain;
pub mod expiry;
pub mod failover;
pub mod grpc;
pub mod location;
pub mod lookup_cache;
pub mod metrics;
pub mod mover;
pub mod partition;
pub mod placement;
pub mod registrar;
pub mod router;
pub mod settings;
pub mod store;
