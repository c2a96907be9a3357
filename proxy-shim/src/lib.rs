//! proxy-shim: a thin SIP front (UDP and TCP) for locsvc. SIP in, gRPC out,
//! SIP back: REGISTER becomes `Save`, other out-of-dialog requests become
//! `Lookup` and are forwarded statelessly (or redirected). Registrar rules
//! live in locsvc, not here.
//!
//! Layers, bottom up: `sip` (the parser facade) → `transport` (sockets,
//! framing) → `handler` (one message in, messages out) → `register` /
//! `forward` → `locsvc_client` (gRPC with deadlines and failover).

pub mod app;
pub mod forward;
pub mod handler;
pub mod locsvc_client;
pub mod metrics;
pub mod register;
pub mod settings;
pub mod sip;
pub mod transport;
