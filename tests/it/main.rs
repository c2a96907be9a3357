//! Integration tests: one binary for the store suite (every backend) and the
//! end-to-end tests that drive a real locsvc through a real gRPC client.

mod auth_admin;
mod cluster_admin;
mod e2e;
mod harness;
mod layout_epochs;
mod lookup_cache;
mod read_your_writes;
mod reload;
mod store_suite;
mod subscriber_store;
mod traces;
mod two_instances;
