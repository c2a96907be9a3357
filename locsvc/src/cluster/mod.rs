//! The cluster: what `locdb` says (`model`), the live snapshot the router
//! reads (`topology`), and the task that keeps it current (`watcher`).

pub mod model;
pub mod topology;
pub mod watcher;

pub use crate::store::StoreOptions;
pub use model::{ClusterConfig, ConfigProblem, GroupConfig, MemberConfig, MemberStatus};
pub use topology::{Group, Member, MemberHealth, Topology};
pub use watcher::ClusterWatcher;
