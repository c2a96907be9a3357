//! proxy-shim: a thin SIP front (UDP and TCP) for locsvc. SIP in, gRPC out,
//! SIP back: REGISTER becomes `Save`, other out-of-dialog requests become
//! `Lookup` and are forwarded statelessly (or redirected). Registrar rules
//! live in locsvc, not here.
//!
//! A request's path, each step its own module, the decisions pure where
//! possible: `transport` (sockets, framing) → `limits` (per-source rate,
//! bans, connection caps) → `sip` (the parser facade) → `sanity` (headers
//! present and consistent, Max-Forwards capped) → `auth` (digest, with
//! `digest` doing the arithmetic) → `route` (not a relay: what may go
//! where) → `register` (REGISTER → Save, with `nat` deciding each contact's
//! next hop) or `forward` (Lookup, then 302 or a stateless forward whose Via
//! branch carries a `hop_mac`) → `locsvc_client` (gRPC with deadlines and
//! failover). `handler` ties the steps together and relays responses; they
//! share `state::Core`, exchange `envelope`s, and ask `identity` what names
//! us and `netaddr` which addresses are private or trusted.

pub mod app;
pub mod auth;
pub mod defaults;
pub mod digest;
pub mod envelope;
pub mod forward;
pub mod handler;
pub mod hop_mac;
pub mod identity;
pub mod limits;
pub mod locsvc_client;
pub mod metrics;
pub mod nat;
pub mod netaddr;
pub mod register;
pub mod route;
pub mod sanity;
pub mod settings;
pub mod sip;
pub mod state;
pub mod transport;
