//! The gRPC edge: request conversion and checks (`convert`), the one error
//! mapping (`status`), bearer auth (`auth`), request deadlines (`deadline`)
//! and the service (`service`).

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod deadline;
pub mod service;
pub mod status;

pub use auth::BearerAuth;
pub use cluster::ClusterApi;
pub use service::LocationApi;
