//! The gRPC edge: request conversion and checks (`convert`), the one error
//! mapping (`status`), bearer auth with data and admin tokens (`auth`),
//! request deadlines (`deadline`) and the services (`service`, `cluster`,
//! `subscribers`).

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod deadline;
pub mod service;
pub mod status;
pub mod subscribers;

pub use auth::{BearerAuth, Level, Tokens};
pub use cluster::ClusterApi;
pub use service::LocationApi;
pub use subscribers::SubscribersApi;
